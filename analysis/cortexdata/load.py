"""Reading a coordination root into polars frames, for one period.

The sources, as the runtime and the handlers write them (see
`runtime/src/layout.rs` and each `handlers-wasm/*/README.md`):

* `events/archive/YYYY-MM-DD.jsonl`: one record per processed event
  (`event`, `outcome`, `attempts`, `latency_us`, `handlers`, ...), the day
  file named by the event's own date; days the host compressed are
  `YYYY-MM-DD.jsonl.zst` (read alike by `archive_days`). Every frame of
  events comes from here.
* `events/dead-letter/*.json`: events that failed for good, with forensics.
* `events/<category>-events.jsonl`: every event as it was queued (what is
  logged but neither archived nor dead-lettered is still pending).
* `state/<handler>/...`: the files handlers keep for people (the cost
  ledger).
* `kv/state.db`: the handlers' key-value buckets (SQLite, table
  `kv(bucket, key, value, version)`; values JSON text, counters decimal
  text): heartbeats, workers, routing statistics, failure signatures, the
  cost totals, the security register. Opened read-only, so a running service is not disturbed.

A `Dataset` is one root seen over one `Period` (by event timestamp, start
inclusive, end exclusive). Frames have fixed schemas, so an empty root gives
empty frames rather than errors, and every analysis works on both.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import polars as pl

UTC = dt.timezone.utc
SEVERITIES = ["critical", "high", "medium", "low", "info"]
TIME = pl.Datetime("us", "UTC")


def parse_time(text: str) -> dt.datetime | None:
    """An RFC 3339 timestamp in UTC, or None when it does not parse."""
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    return t.astimezone(UTC) if t.tzinfo else None


@dataclass(frozen=True)
class Period:
    """A half-open time range [start, end) in UTC."""

    start: dt.datetime
    end: dt.datetime

    @classmethod
    def parse(cls, start: str | None = None, end: str | None = None, *, days: int = 7,
              now: dt.datetime | None = None) -> Period:
        """From `--from`/`--to` values: a date (YYYY-MM-DD; `end` then
        includes that whole day) or an RFC 3339 time. Missing `end` is now;
        missing `start` is `days` before `end`."""
        now = now or dt.datetime.now(UTC)
        stop = cls._bound(end, inclusive_day=True) if end else now
        begin = cls._bound(start, inclusive_day=False) if start else stop - dt.timedelta(days=days)
        if begin >= stop:
            raise ValueError(f"the period is empty: {begin:%Y-%m-%d %H:%M} is not before {stop:%Y-%m-%d %H:%M}")
        return cls(begin, stop)

    @staticmethod
    def _bound(text: str, *, inclusive_day: bool) -> dt.datetime:
        if len(text) == 10:
            try:
                day = dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
            except ValueError:
                raise ValueError(f"{text!r} is not a date (YYYY-MM-DD)") from None
            return day + dt.timedelta(days=1) if inclusive_day else day
        t = parse_time(text)
        if t is None:
            raise ValueError(f"{text!r} is neither a date (YYYY-MM-DD) nor an RFC 3339 time with an offset")
        return t

    def __contains__(self, t: dt.datetime) -> bool:
        return self.start <= t < self.end

    @property
    def days(self) -> float:
        return (self.end - self.start) / dt.timedelta(days=1)

    def halves(self) -> tuple[Period, Period]:
        middle = self.start + (self.end - self.start) / 2
        return Period(self.start, middle), Period(middle, self.end)

    @property
    def label(self) -> str:
        last = self.end - dt.timedelta(microseconds=1)
        return f"{self.start:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC"


def _parse_lines(lines) -> list[dict]:
    rows = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            # A torn last line (a crash mid-append) is not a record.
            continue
    return rows


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return _parse_lines(f)


# A compressed archive day (`YYYY-MM-DD.jsonl.zst`, runtime/src/archive/index.rs):
# zstd frames of whole lines, then a skippable frame holding the seek index,
# whose footer (the file's last 16 bytes) is its length, this magic and a version.
_INDEX_MAGIC = b"CXSEEK01"


def _fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _covered(path: Path) -> tuple[int, int]:
    """The plain prefix (length, FNV-1a hash) a compressed day holds."""
    with path.open("rb") as f:
        f.seek(0, 2)
        size = f.tell()
        if size < 16:
            raise ValueError(f"{path}: no seek index (cut short?)")
        f.seek(size - 16)
        footer = f.read(16)
        frame = int.from_bytes(footer[0:4], "little")
        if footer[4:12] != _INDEX_MAGIC or frame > size:
            raise ValueError(f"{path}: no seek index cortex wrote (cut short?)")
        f.seek(size - frame)
        head = f.read(28)
    return int.from_bytes(head[12:20], "little"), int.from_bytes(head[20:28], "little")


def _zst_lines(path: Path):
    import zstandard  # only roots with compressed days need it

    with path.open("rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        import io
        yield from io.TextIOWrapper(reader, encoding="utf-8", errors="replace")


def _plain_lines(path: Path, covered: tuple[int, int] | None):
    """A plain day's lines, past the prefix its compressed part holds (a
    crash between writing the segment and removing the plain file)."""
    data = path.read_bytes()
    if covered and covered[0] and len(data) >= covered[0] and _fnv1a(data[:covered[0]]) == covered[1]:
        data = data[covered[0]:]
    return data.decode("utf-8", "replace").splitlines()


def archive_days(archive: Path):
    """Each archive day (or `undated`, or a compacted month) as (stem, a
    function returning its lines), in name order: every line once, whether
    the day is plain JSONL, compressed by the host (`.jsonl.zst`), or both."""
    stems: dict[str, set[str]] = {}
    for path in archive.glob("*.jsonl*"):
        if not path.is_file() or path.is_symlink():
            continue
        for suffix in (".jsonl.zst", ".jsonl"):
            if path.name.endswith(suffix):
                stems.setdefault(path.name[: -len(suffix)], set()).add(suffix)
                break
    for stem in sorted(stems):
        kinds = stems[stem]

        def lines(stem=stem, kinds=kinds):
            covered = None
            if ".jsonl.zst" in kinds:
                packed = archive / f"{stem}.jsonl.zst"
                covered = _covered(packed)
                yield from _zst_lines(packed)
            if ".jsonl" in kinds:
                yield from _plain_lines(archive / f"{stem}.jsonl", covered)

        yield stem, lines


def _frame(rows: list[dict], schema: dict) -> pl.DataFrame:
    return pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema, orient="row") \
        if rows else pl.DataFrame(schema=schema)


EVENT_SCHEMA = {
    "event_id": pl.String, "event_type": pl.String, "time": TIME, "source": pl.String,
    "correlation_id": pl.String, "master": pl.String, "priority": pl.String,
    "follow_up": pl.Boolean, "caused_by": pl.String, "outcome": pl.String, "attempts": pl.Int64,
    "latency_ms": pl.Float64, "handler_ms": pl.Float64,
}


class Root:
    """A coordination root on disk (read only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "events").is_dir():
            raise FileNotFoundError(f"{self.path} is not a coordination root (it has no events/ directory)")

    def state(self, rel: str, default=None):
        """A handler's JSON state file under `state/`, or `default`."""
        path = self.path / "state" / rel
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return default

    def bucket(self, name: str) -> dict:
        """Every key of a key-value bucket in `kv/state.db`, its value parsed
        as JSON (a counter is a number), or as text when it is not JSON; an
        empty dict when the root has no state database yet."""
        path = self.path / "kv" / "state.db"
        if not path.is_file():
            return {}
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT key, value FROM kv WHERE bucket = ? ORDER BY key", (name,)).fetchall()
        finally:
            db.close()
        out = {}
        for key, value in rows:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            try:
                out[key] = json.loads(text)
            except ValueError:
                out[key] = text
        return out

    def archive_records(self, period: Period) -> list[dict]:
        """Archive records whose event time is in `period`. Day files are
        named by the event's own (possibly non-UTC) date, so one day either
        side is read too; plain and compressed days alike (`archive_days`)."""
        first = (period.start - dt.timedelta(days=1)).date().isoformat()
        last = (period.end + dt.timedelta(days=1)).date().isoformat()
        records = []
        for stem, lines in archive_days(self.path / "events" / "archive"):
            if stem != "undated" and not first <= stem <= last:
                continue
            for record in _parse_lines(lines()):
                t = parse_time(record.get("event", {}).get("timestamp", ""))
                if t is not None and t in period:
                    record["_time"] = t
                    records.append(record)
        return records

    def logged(self, period: Period) -> list[dict]:
        """Events of the category logs (`events/<category>-events.jsonl`,
        written when an event is queued) whose time is in `period`."""
        rows = []
        for path in sorted((self.path / "events").glob("*-events.jsonl")):
            for event in _read_jsonl(path):
                t = parse_time(event.get("timestamp", ""))
                if t is not None and t in period:
                    rows.append(event)
        return rows

    def dead_letters(self) -> list[dict]:
        rows = []
        for path in sorted((self.path / "events" / "dead-letter").glob("*.json")):
            try:
                rows.append(json.loads(path.read_text(encoding="utf-8")))
            except ValueError:
                continue
        return rows

    def ledger(self, period: Period) -> list[dict]:
        """The cost handler's ledger lines in `period`, one per event id
        (a redelivered event may have appended its line twice)."""
        seen, rows = set(), []
        for path in sorted((self.path / "state" / "cost" / "ledger").glob("*.jsonl")):
            for row in _read_jsonl(path):
                t = parse_time(row.get("timestamp", ""))
                if t is None or t not in period or row.get("event_id") in seen:
                    continue
                seen.add(row.get("event_id"))
                row["time"] = t
                rows.append(row)
        return rows


class Dataset:
    """One root over one period: the frames every notebook and report uses."""

    def __init__(self, root: Root | str | Path, period: Period):
        self.root = root if isinstance(root, Root) else Root(root)
        self.period = period
        self.records = self.root.archive_records(period)

    def _of(self, *types: str) -> list[tuple[dict, dict]]:
        out = []
        for r in self.records:
            e = r["event"]
            if e.get("event_type") in types:
                out.append((r, e))
        return out

    @cached_property
    def events(self) -> pl.DataFrame:
        rows = []
        for r in self.records:
            e, meta = r["event"], r["event"].get("metadata") or {}
            caused = meta.get("caused_by") or {}
            rows.append({
                "event_id": e.get("event_id"), "event_type": e.get("event_type"), "time": r["_time"],
                "source": e.get("source"), "correlation_id": e.get("correlation_id"), "master": meta.get("master"),
                "priority": meta.get("priority", "medium"), "follow_up": bool(caused),
                "caused_by": caused.get("handler"),
                "outcome": r.get("outcome"), "attempts": r.get("attempts"),
                "latency_ms": (r.get("latency_us") or 0) / 1000,
                "handler_ms": float(sum(h.get("duration_ms") or 0 for h in r.get("handlers") or [])),
            })
        return _frame(rows, EVENT_SCHEMA)

    @cached_property
    def invocations(self) -> pl.DataFrame:
        """One row per successful handler invocation in the archive (an
        event's failed attempts are in its delivery history, not here)."""
        schema = {"time": TIME, "handler": pl.String, "version": pl.String, "event_type": pl.String,
                  "duration_ms": pl.Float64, "emitted": pl.Int64}
        rows = [{"time": r["_time"], "handler": h.get("name"), "version": h.get("version"),
                 "event_type": r["event"].get("event_type"), "duration_ms": h.get("duration_ms"),
                 "emitted": len(h.get("emitted") or [])}
                for r in self.records for h in r.get("handlers") or []]
        return _frame(rows, schema)

    @cached_property
    def runs(self) -> pl.DataFrame:
        """Finished worker runs: `worker.completed` and `worker.failed`
        events that name a task (a heartbeat timeout names none)."""
        schema = {"time": TIME, "worker_id": pl.String, "task_id": pl.String, "master": pl.String,
                  "model": pl.String, "status": pl.String, "attempt": pl.Int64, "duration_ms": pl.Int64,
                  "tokens": pl.Int64, "input_tokens": pl.Int64, "output_tokens": pl.Int64, "error": pl.String}
        rows = []
        for r, e in self._of("worker.completed", "worker.failed"):
            p = e.get("payload") or {}
            if not p.get("task_id"):
                continue
            rows.append({
                "time": r["_time"], "worker_id": p.get("worker_id") or e.get("source"), "task_id": p["task_id"],
                "master": (e.get("metadata") or {}).get("master") or "unassigned", "model": p.get("model") or "unknown",
                "status": "completed" if e["event_type"] == "worker.completed" else "failed",
                "attempt": _int(p.get("attempt")) or 1, "duration_ms": _int(p.get("duration_ms")),
                "tokens": _int(p.get("tokens_used")), "input_tokens": _int(p.get("input_tokens")),
                "output_tokens": _int(p.get("output_tokens")), "error": p.get("error"),
            })
        return _frame(rows, schema)

    @cached_property
    def failures(self) -> pl.DataFrame:
        """Every `task.failed` and `worker.failed`, with its kind: `run` (a
        worker run that failed), `heartbeat` (a silence the heartbeat
        handler reported) or `task` (failed before reaching a worker)."""
        schema = {"time": TIME, "event_type": pl.String, "kind": pl.String, "worker_id": pl.String,
                  "task_id": pl.String, "error": pl.String, "priority": pl.String, "source": pl.String}
        rows = []
        for r, e in self._of("task.failed", "worker.failed"):
            p = e.get("payload") or {}
            error = p.get("error") or "unknown error"
            if e["event_type"] == "task.failed":
                kind = "task"
            elif error == "heartbeat timeout":
                kind = "heartbeat"
            else:
                kind = "run"
            rows.append({"time": r["_time"], "event_type": e["event_type"], "kind": kind,
                         "worker_id": p.get("worker_id") or (e.get("source") if kind == "run" else None),
                         "task_id": p.get("task_id"), "error": error,
                         "priority": (e.get("metadata") or {}).get("priority", "medium"), "source": e.get("source")})
        return _frame(rows, schema)

    @cached_property
    def decisions(self) -> pl.DataFrame:
        """`routing.decision_made` events the routing handler accepted
        (archived as handled; refused ones are in the dead-letter queue)."""
        schema = {"time": TIME, "master": pl.String, "expert": pl.String, "confidence": pl.Float64,
                  "task_id": pl.String, "source": pl.String}
        rows = []
        for r, e in self._of("routing.decision_made"):
            p = e.get("payload") or {}
            conf = p.get("confidence")
            if not isinstance(conf, (int, float)) or isinstance(conf, bool) or not 0 <= conf <= 1:
                continue
            rows.append({"time": r["_time"], "master": p.get("master") or (e.get("metadata") or {}).get("master")
                         or "unknown", "expert": p.get("expert"), "confidence": float(conf),
                         "task_id": p.get("task_id"), "source": e.get("source")})
        return _frame(rows, schema)

    @cached_property
    def scans(self) -> pl.DataFrame:
        schema = {"time": TIME, "scan_id": pl.String, "scanner": pl.String, "target": pl.String,
                  "duration_ms": pl.Int64, **{s: pl.Int64 for s in SEVERITIES}}
        rows = []
        for r, e in self._of("security.scan_completed"):
            p = e.get("payload") or {}
            findings = p.get("findings")
            counts = findings if isinstance(findings, dict) else {}
            row = {"time": r["_time"], "scan_id": p.get("scan_id") or e.get("event_id"), "scanner": p.get("scanner"),
                   "target": p.get("target"), "duration_ms": _int(p.get("duration_ms"))}
            row |= {s: _int(counts.get(s)) or 0 for s in SEVERITIES}
            rows.append(row)
        return _frame(rows, schema)

    @cached_property
    def sightings(self) -> pl.DataFrame:
        """Every `security.vulnerability_found`, with the register's key
        (`id|package|target`)."""
        schema = {"time": TIME, "key": pl.String, "id": pl.String, "severity": pl.String, "package": pl.String,
                  "target": pl.String, "scanner": pl.String, "title": pl.String}
        rows = []
        for r, e in self._of("security.vulnerability_found"):
            p = e.get("payload") or {}
            ident = p.get("id") or p.get("cve")
            if not ident or str(p.get("severity", "")).lower() not in SEVERITIES:
                continue
            rows.append({"time": r["_time"], "key": f"{ident}|{p.get('package') or ''}|{p.get('target') or ''}",
                         "id": ident, "severity": str(p["severity"]).lower(), "package": p.get("package"),
                         "target": p.get("target"), "scanner": p.get("scanner"), "title": p.get("title")})
        return _frame(rows, schema)

    @cached_property
    def register(self) -> pl.DataFrame:
        """The security handler's register of findings (its current state,
        not limited to the period): the `vuln/<id>|<package>|<target>` keys
        of bucket `security`."""
        schema = {"key": pl.String, "id": pl.String, "severity": pl.String, "package": pl.String,
                  "target": pl.String, "scanner": pl.String, "title": pl.String, "first_seen": TIME,
                  "last_seen": TIME, "occurrences": pl.Int64, "status": pl.String}
        register = {k.removeprefix("vuln/"): v for k, v in self.root.bucket("security").items()
                    if k.startswith("vuln/") and isinstance(v, dict)}
        rows = [{**v, "key": k, "first_seen": parse_time(v.get("first_seen", "")),
                 "last_seen": parse_time(v.get("last_seen", ""))}
                for k, v in register.items()]
        return _frame(rows, schema)

    @cached_property
    def alerts(self) -> pl.DataFrame:
        schema = {"time": TIME, "component": pl.String, "severity": pl.String, "source": pl.String,
                  "message": pl.String}
        rows = []
        for r, e in self._of("system.health_alert"):
            p = e.get("payload") or {}
            rows.append({"time": r["_time"], "component": p.get("component") or "unknown",
                         "severity": p.get("severity") or (e.get("metadata") or {}).get("priority"),
                         "source": e.get("source"),
                         "message": _alert_message(p)})
        return _frame(rows, schema)

    @cached_property
    def ledger(self) -> pl.DataFrame:
        schema = {"time": TIME, "event_id": pl.String, "worker_id": pl.String, "task_id": pl.String,
                  "status": pl.String, "model": pl.String, "master": pl.String, "input_tokens": pl.Int64,
                  "output_tokens": pl.Int64, "tokens": pl.Int64, "cost_usd": pl.Float64}
        return _frame(self.root.ledger(self.period), schema)

    @cached_property
    def pending(self) -> list[dict]:
        """Logged events of the period that are neither archived nor
        dead-lettered: still queued, being handled, or waiting for a retry."""
        done = {r["event"].get("event_id") for r in self.records}
        done |= {(d.get("event") or {}).get("event_id") for d in self.dead_letters}
        return [e for e in self.root.logged(self.period) if e.get("event_id") not in done]

    @cached_property
    def dead_letters(self) -> list[dict]:
        """Dead-lettered events whose time is in the period."""
        out = []
        for d in self.root.dead_letters():
            t = parse_time((d.get("event") or {}).get("timestamp", ""))
            if t is not None and t in self.period:
                out.append(d)
        return out


def _alert_message(p: dict) -> str | None:
    """What an alert is about: its message or error, else the finding or
    scan the security handler attached."""
    if p.get("message") or p.get("error"):
        return p.get("message") or p.get("error")
    for key in ("vulnerability", "scan"):
        if isinstance(p.get(key), dict):
            v = p[key]
            return f"{key} {v.get('id') or v.get('scan_id')} on {v.get('target')}"
    return None


def _int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None
