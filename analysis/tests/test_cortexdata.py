"""Unit tests of cortexdata on small hand-made roots and frames: loading
(period bounds, torn lines, day files), and each area's statistics and the
rules behind its recommendations."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3

import polars as pl
import pytest

import cortexdata as cd

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 23, tzinfo=UTC)


def at(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


def stamp(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def record(event_type, t, payload, *, source="producer", master=None, outcome="handled", caused_by=None, handlers=()):
    meta = {"priority": "medium"}
    if master:
        meta["master"] = master
    if caused_by:
        meta["caused_by"] = {"event_id": "evt_20261123_000000_aaaaaa", "handler": caused_by, "hops": 1}
    return {"event": {"event_id": f"evt_{t:%Y%m%d_%H%M%S}_abcdef", "event_type": event_type, "timestamp": stamp(t),
                      "source": source, "metadata": meta, "payload": payload},
            "outcome": outcome, "attempts": 1, "latency_us": 1500,
            "handlers": [{"name": h, "duration_ms": 2.0, "emitted": []} for h in handlers]}


def write_buckets(path, buckets):
    """`kv/state.db` with the runtime's schema, holding `buckets` (name -> key -> JSON value)."""
    (path / "kv").mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path / "kv" / "state.db")
    db.execute("CREATE TABLE kv (bucket TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, "
               "version INTEGER NOT NULL, PRIMARY KEY (bucket, key)) WITHOUT ROWID")
    db.executemany("INSERT INTO kv VALUES (?, ?, ?, 1)",
                   [(b, k, json.dumps(v).encode()) for b, keys in buckets.items() for k, v in keys.items()])
    db.commit()
    db.close()


def write_root(path, records, *, state=None, ledger=(), dead=(), buckets=None):
    archive = path / "events" / "archive"
    archive.mkdir(parents=True)
    by_day = {}
    for r in records:
        by_day.setdefault(r["event"]["timestamp"][:10], []).append(json.dumps(r))
    for day, lines in by_day.items():
        (archive / f"{day}.jsonl").write_text("\n".join(lines) + "\n")
    for rel, value in (state or {}).items():
        (path / "state" / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / "state" / rel).write_text(json.dumps(value))
    if ledger:
        (path / "state" / "cost" / "ledger").mkdir(parents=True, exist_ok=True)
        (path / "state" / "cost" / "ledger" / "2026-11-23.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in ledger))
    if buckets:
        write_buckets(path, buckets)
    (path / "events" / "dead-letter").mkdir(parents=True)
    for i, d in enumerate(dead):
        (path / "events" / "dead-letter" / f"{i}.json").write_text(json.dumps(d))
    return path


def test_period_parse_dates_include_the_last_day():
    p = cd.Period.parse("2026-11-23", "2026-11-29")
    assert p.start == T0 and p.end == dt.datetime(2026, 11, 30, tzinfo=UTC)
    assert p.days == 7
    q = cd.Period.parse(None, "2026-11-30T00:00:00Z", days=2)
    assert q.start == dt.datetime(2026, 11, 28, tzinfo=UTC)
    with pytest.raises(ValueError, match="not a date"):
        cd.Period.parse("2026-13-01", None)
    with pytest.raises(ValueError, match="empty"):
        cd.Period.parse("2026-11-30", "2026-11-20")
    with pytest.raises(ValueError, match="offset"):
        cd.Period.parse("2026-11-23T00:00:00", None)


def test_archive_is_read_by_event_time_and_torn_lines_are_skipped(tmp_path):
    root = write_root(tmp_path, [
        record("task.created", at(1), {"task_id": "t1"}),
        record("task.created", at(30), {"task_id": "t2"}),
        record("task.completed", at(2), {"task_id": "t1"}, caused_by="on-worker-complete"),
    ])
    with (root / "events" / "archive" / "2026-11-23.jsonl").open("a") as f:
        f.write('{"event": {"event_type": "task.cr')  # a crash mid-append
    data = cd.Dataset(root, cd.Period(T0, at(24)))
    assert data.events["event_type"].to_list() == ["task.created", "task.completed"]
    assert data.events["follow_up"].to_list() == [False, True]
    assert data.events["latency_ms"].to_list() == [1.5, 1.5]
    with pytest.raises(FileNotFoundError, match="not a coordination root"):
        cd.Root(tmp_path / "nothing")


def pack_day(text: bytes, covered: bytes) -> bytes:
    """A compressed day as the host writes it (runtime/src/archive/index.rs):
    zstd frames of whole lines, then the seek index in a skippable frame
    (frame and id tables left empty: readers of whole days skip them)."""
    import struct
    import zstandard
    lines = text.splitlines(keepends=True)
    frames = b"".join(zstandard.ZstdCompressor().compress(b"".join(lines[i:i + 2])) for i in range(0, len(lines), 2))
    head = struct.pack("<IQQQQQII", 1, len(covered), cd.load._fnv1a(covered), len(text), len(lines), len(lines), 0, 0)
    data = head + struct.pack("<I", 8 + len(head) + 16) + b"CXSEEK01" + struct.pack("<I", 1)
    return frames + struct.pack("<II", 0x184D2A5E, len(data)) + data


def test_compressed_days_read_like_plain_ones_and_a_leftover_plain_day_once(tmp_path):
    records = [record("task.created", at(h), {"task_id": f"t{h}"}) for h in range(1, 6)]
    root = write_root(tmp_path, records)
    archive = root / "events" / "archive"
    plain = (archive / "2026-11-23.jsonl").read_bytes()
    expected = cd.Dataset(root, cd.Period(T0, at(24))).events["event_id"].to_list()
    assert len(expected) == 5

    # Compressed, the plain file gone: the same events.
    (archive / "2026-11-23.jsonl.zst").write_bytes(pack_day(plain, plain))
    (archive / "2026-11-23.jsonl").unlink()
    assert cd.Dataset(root, cd.Period(T0, at(24))).events["event_id"].to_list() == expected

    # A crash left the plain file too, and one more line was appended: each once.
    extra = record("task.created", at(7), {"task_id": "late"})
    extra["event"]["event_id"] = "evt_20261123_070000_late01"
    (archive / "2026-11-23.jsonl").write_bytes(plain + json.dumps(extra).encode() + b"\n")
    got = cd.Dataset(root, cd.Period(T0, at(24))).events["event_id"].to_list()
    assert got == expected + ["evt_20261123_070000_late01"]

    # A plain file that does not start with what was compressed is read whole.
    (archive / "2026-11-23.jsonl").write_bytes(json.dumps(extra).encode() + b"\n")
    assert len(cd.Dataset(root, cd.Period(T0, at(24))).events) == 6


def test_empty_root_gives_empty_frames_and_plain_advice(tmp_path):
    data = cd.Dataset(write_root(tmp_path, []), cd.Period(T0, at(24)))
    for frame in (data.events, data.runs, data.decisions, data.scans, data.sightings, data.register, data.ledger):
        assert frame.is_empty()
    assert cd.routing.recommendations(data) == ["No routing decisions in this period: nothing to recommend."]
    assert "nothing to recommend" in cd.workers.recommendations(data)[0]
    assert "not enabled" in cd.cost.recommendations(data)[0]
    assert cd.summary.figures(data)["events"] == 0


def test_drift_compares_the_halves_and_needs_enough_decisions():
    rows = [(at(h), "code", "refactor", 0.8) for h in range(0, 10)] + \
           [(at(h), "code", "refactor", 0.6) for h in range(14, 24)] + \
           [(at(h), "code", "rust", 0.9) for h in (1, 2, 20)]
    frame = pl.DataFrame(rows, schema=["time", "master", "expert", "confidence"], orient="row")
    drift = cd.routing.drift(frame, cd.Period(T0, at(24)))
    assert drift["expert"].to_list() == ["refactor"], "rust has too few decisions to judge"
    assert drift["change_pct"][0] == pytest.approx(-25.0)


def test_hot_spots_flag_pairs_with_many_low_decisions():
    rows = [(at(h), "test", "e2e", 0.3 if h % 2 else 0.7) for h in range(10)] + \
           [(at(h), "test", "unit", 0.9) for h in range(10)]
    frame = pl.DataFrame(rows, schema=["time", "master", "expert", "confidence"], orient="row")
    hot = cd.routing.hot_spots(frame)
    assert hot.select("expert", "low", "decisions").rows() == [("e2e", 5, 10)]


def runs(rows):
    return pl.DataFrame([{"worker_id": w, "master": "code", "model": m, "status": s, "duration_ms": d, "tokens": 100}
                         for w, m, s, d in rows])


def test_outliers_are_slow_or_failing_against_their_peers():
    rows = [("w1", "sonnet", "completed", 100_000)] * 20 + [("w2", "sonnet", "completed", 110_000)] * 20 + \
           [("w3", "sonnet", "completed", 400_000)] * 16 + [("w3", "sonnet", "failed", 300_000)] * 4
    flagged = cd.workers.outliers(runs(rows))
    assert flagged.select("worker_id", "reason").rows() == [("w3", "failing"), ("w3", "slow")]
    stats = cd.workers.stats(runs(rows))
    assert stats.filter(pl.col("worker_id") == "w3")["failure_rate"][0] == pytest.approx(0.2)


def test_error_shapes_mask_numbers():
    assert cd.workers.error_shape("retry after 20s (429)") == cd.workers.error_shape("retry after 35s (429)")


def test_security_age_fixed_and_gaps(tmp_path):
    register = {
        "vuln/CVE-1|openssl|api": {"id": "CVE-1", "severity": "critical", "package": "openssl", "target": "api",
                              "scanner": "trivy", "first_seen": stamp(at(0)), "last_seen": stamp(at(48)),
                              "occurrences": 3, "status": "open"},
        "vuln/CVE-2|zlib|api": {"id": "CVE-2", "severity": "low", "package": "zlib", "target": "api", "scanner": "trivy",
                           "first_seen": stamp(at(0)), "last_seen": stamp(at(24)), "occurrences": 2,
                           "status": "open"},
        "summary": {"open": {"critical": 1, "low": 1}, "total": 2, "updated_at": stamp(at(48))}}
    scans = [record("security.scan_completed", at(h), {"scanner": "trivy", "target": "api",
                                                       "findings": {"critical": 1}}) for h in (0, 24, 48)]
    scans.append(record("security.scan_completed", at(0), {"scanner": "semgrep", "target": "api", "findings": 3}))
    data = cd.Dataset(write_root(tmp_path, scans, buckets={"security": register}),
                      cd.Period(T0, at(72)))
    aged = cd.security.with_age(data.register, at(72))
    assert aged["id"].to_list() == ["CVE-1", "CVE-2"]
    assert aged["age_days"][0] == pytest.approx(3.0)
    assert data.scans.filter(pl.col("scanner") == "semgrep")["critical"].to_list() == [0], "a count is no map"
    assert cd.security.probably_fixed(data.register, data.scans)["id"].to_list() == ["CVE-2"]
    gaps = cd.security.scan_gaps(data.scans)
    assert gaps.select("scanner", "days_scanned", "expected").rows() == [("semgrep", 1, 3)]
    advice = cd.security.recommendations(data)
    assert advice[0].startswith("1 open critical finding(s) older than the 2-day target: CVE-1 in openssl on api")


def test_cost_prices_like_the_handler_and_finds_the_cheaper_model(tmp_path):
    prices = {"opus": {"input": 15.0, "output": 75.0}, "sonnet": {"input": 3.0, "output": 15.0}, "default": 1.0}
    assert cd.cost.price_of(prices, "opus", 1_000_000, 100_000) == pytest.approx(22.5)
    assert cd.cost.price_of(prices, "other", 500_000, 500_000) == pytest.approx(1.0)
    assert cd.cost.price_of({}, "x", 1, 1) is None
    ledger = [{"event_id": f"e{i}", "timestamp": stamp(at(i)), "model": "opus", "master": "docs", "worker_id": "w",
               "status": "completed", "input_tokens": 100_000, "output_tokens": 10_000, "tokens": 110_000,
               "cost_usd": 2.25} for i in range(4)]
    ledger.append({**ledger[0], "event_id": "e0"})  # a redelivery appended twice
    ledger.append({"event_id": "e9", "timestamp": stamp(at(5)), "model": "sonnet", "master": "code", "worker_id": "v",
                   "status": "failed", "input_tokens": 100_000, "output_tokens": 0, "tokens": 100_000,
                   "cost_usd": 0.3})
    root = write_root(tmp_path, [], ledger=ledger)
    (root / "cortex.toml").write_text(
        '[handlers.on-cost-tracking.settings]\ndaily_budget_usd = 5.0\n'
        'prices = { opus = { input = 15.0, output = 75.0 }, sonnet = { input = 3.0, output = 15.0 } }\n')
    data = cd.Dataset(root, cd.Period(T0, at(24)))
    assert data.ledger.height == 5, "one line per event id"
    saving = cd.cost.cheaper_model(data.ledger, cd.cost.settings(data.root)["prices"])
    assert [(r["master"], r["model"], r["cheaper"]) for r in saving] == [("docs", "opus", "sonnet")]
    assert saving[0]["would_cost_usd"] == pytest.approx(4 * 0.45)
    advice = cd.cost.recommendations(data)
    assert advice[0] == "1 day(s) over the $5.00 daily budget: 2026-11-23 ($9.30)."
    assert any(a.startswith("Failed runs cost $0.30") for a in advice)


def test_liveness_reads_the_heartbeat_state():
    state = {"w2": {"last_seen": stamp(at(1)), "beats": 3, "flagged": True},
             "w1": {"last_seen": stamp(at(2)), "beats": 9, "flagged": False}}
    frame = cd.workers.liveness(state, at(3))
    assert frame.select("worker_id", "beats", "silent_min", "flagged").rows() == [
        ("w1", 9, 60.0, False), ("w2", 3, 120.0, True)]
    assert cd.workers.liveness(None, at(3)).is_empty()
