"""End to end: a demo root built through the real pipeline, every notebook
run headless as a script and every report rendered from it, and the figures
they show checked against counts taken here from the archive, the
dead-letter queue and the cost ledger with plain `json` (not through
cortexdata, whose results are under test).
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import re
import sqlite3
import subprocess
import sys

import pytest
import zstandard

from conftest import ANALYSIS, REPO

import simulation

NOTEBOOKS = ["routing-optimization", "security-dashboard", "worker-performance"]
REPORTS = ["weekly-summary", "security-audit", "cost-report"]


def ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.timezone.utc)


def unzstd(data: bytes) -> bytes:
    """Every frame of a zstd stream, one at a time (the index frame at the
    end is a skippable one and yields nothing)."""
    out = []
    while data:
        d = zstandard.ZstdDecompressor().decompressobj()
        out.append(d.decompress(data))
        data = d.unused_data
    return b"".join(out)


def archived(demo) -> list[dict]:
    """Every archived event in the demo's period."""
    events = []
    archive = demo.root / "events" / "archive"
    texts = [p.read_text() for p in sorted(archive.glob("*.jsonl"))]
    # Days the host compressed (whole-file decompression, independent of
    # cortexdata's reader); the demo leaves no day in both forms.
    texts += [unzstd(p.read_bytes()).decode() for p in sorted(archive.glob("*.jsonl.zst"))]
    for text in texts:
        for line in text.splitlines():
            event = json.loads(line)["event"]
            if demo.start <= ts(event["timestamp"]) < demo.end:
                events.append(event)
    return events


def of(events, *types):
    return [e for e in events if e["event_type"] in types]


@pytest.fixture(scope="module")
def figures(demo, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("figures")
    result = {}
    for name in NOTEBOOKS:
        target = out / f"{name}.json"
        done = subprocess.run([sys.executable, str(ANALYSIS / f"{name}.py"), "--root", str(demo.root),
                               *demo.period_args, "--figures", str(target)],
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, f"notebook {name} failed:\n{done.stderr}"
        result[name] = json.loads(target.read_text())
    return result


@pytest.fixture(scope="module")
def reports(demo, tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("reports")
    done = subprocess.run([sys.executable, str(REPO / "reports" / "render.py"), "--root", str(demo.root),
                           *demo.period_args, "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, f"render failed:\n{done.stderr}"
    return {name: (out / f"{name}.html").read_text() for name in REPORTS}


def shown(page: str) -> dict[str, str]:
    """The figures a report shows: name -> raw value."""
    return dict(re.findall(r'data-figure="([a-z_]+)" data-value="([^"]*)"', page))


def runs_by_worker(events):
    runs = collections.Counter()
    failed = collections.Counter()
    for e in of(events, "worker.completed", "worker.failed"):
        if e["payload"].get("task_id"):
            runs[e["payload"]["worker_id"]] += 1
            failed[e["payload"]["worker_id"]] += e["event_type"] == "worker.failed"
    return runs, failed


def findings_by_severity(events):
    keys = {}
    for e in of(events, "security.vulnerability_found"):
        p = e["payload"]
        keys[f"{p['id']}|{p.get('package') or ''}|{p.get('target') or ''}"] = p["severity"]
    return collections.Counter(keys.values())


def test_the_demo_went_through_the_pipeline(demo):
    events = archived(demo)
    assert len(of(events, "task.created")) > 50
    assert of(events, "task.completed"), "on-worker-complete should have emitted task.completed follow-ups"
    assert list((demo.root / "state" / "cost" / "ledger").glob("*.jsonl")), "the cost handler wrote no ledger"
    dead = [json.loads(p.read_text()) for p in (demo.root / "events" / "dead-letter").glob("*.json")]
    assert [d["event"]["source"] for d in dead] == ["moe-router-canary"] * 2


def test_routing_notebook_counts_the_archived_decisions(demo, figures):
    decisions = [e for e in of(archived(demo), "routing.decision_made") if 0 <= e["payload"]["confidence"] <= 1]
    fig = figures["routing-optimization"]
    assert fig["decisions"] == len(decisions)
    per_master = collections.Counter(e["payload"]["master"] for e in decisions)
    assert {r["master"]: r["decisions"] for r in fig["by_master"]} == per_master
    code = [e["payload"]["confidence"] for e in decisions if e["payload"]["master"] == "code-master"]
    mean = next(r["mean_confidence"] for r in fig["by_master"] if r["master"] == "code-master")
    assert mean == pytest.approx(sum(code) / len(code))
    assert any("dead-lettered" in r for r in fig["recommendations"])
    assert fig["llm_summary"] is None, "no endpoint is configured: no summary, no call"


def test_worker_notebook_counts_runs_and_failures_per_worker(demo, figures):
    runs, failed = runs_by_worker(archived(demo))
    fig = figures["worker-performance"]
    assert {r["worker_id"]: r["runs"] for r in fig["per_worker"]} == runs
    assert {r["worker_id"]: r["failed"] for r in fig["per_worker"]} == {w: failed[w] for w in runs}
    durations = sorted(e["payload"]["duration_ms"] / 1000
                       for e in of(archived(demo), "worker.completed", "worker.failed")
                       if e["payload"].get("worker_id") == "worker-implementation-001" and e["payload"].get("task_id"))
    p50 = next(r["p50_s"] for r in fig["per_worker"] if r["worker_id"] == "worker-implementation-001")
    middle = len(durations) // 2
    expected = durations[middle] if len(durations) % 2 else (durations[middle - 1] + durations[middle]) / 2
    assert p50 == pytest.approx(expected)


def test_security_notebook_counts_scans_and_findings(demo, figures):
    events = archived(demo)
    fig = figures["security-dashboard"]
    assert fig["scans"] == len(of(events, "security.scan_completed"))
    assert fig["sightings"] == len(of(events, "security.vulnerability_found"))
    by_severity = findings_by_severity(events)
    assert fig["new_by_severity"] == {s: by_severity.get(s, 0) for s in fig["new_by_severity"]}
    assert by_severity["critical"] >= 1


def test_weekly_summary_shows_the_archive_counts(demo, reports):
    events = archived(demo)
    fig = shown(reports["weekly-summary"])
    runs, failed = runs_by_worker(events)
    assert int(fig["events"]) == len(events)
    assert int(fig["tasks_created"]) == len([e for e in of(events, "task.created")
                                             if "caused_by" not in e.get("metadata", {})])
    assert int(fig["runs"]) == sum(runs.values())
    assert int(fig["runs_failed"]) == sum(failed.values())
    assert int(fig["scans"]) == len(of(events, "security.scan_completed"))
    assert int(fig["health_alerts"]) == len(of(events, "system.health_alert")) > 0
    assert int(fig["dead_letters"]) == len(list((demo.root / "events" / "dead-letter").glob("*.json")))
    logged = [json.loads(line) for p in (demo.root / "events").glob("*-events.jsonl")
              for line in p.read_text().splitlines()]
    assert int(fig["events_logged"]) == len([e for e in logged if demo.start <= ts(e["timestamp"]) < demo.end])
    assert int(fig["events_pending"]) == 0, "the demo dispatched everything it emitted"
    timeouts = [e for e in of(events, "worker.failed") if e["payload"].get("error") == "heartbeat timeout"]
    assert int(fig["heartbeat_timeouts"]) == len(timeouts)
    assert [e["payload"]["worker_id"] for e in timeouts] == ["worker-ops-002"], "the planted silence"


def test_security_audit_shows_findings_by_severity(demo, reports):
    by_severity = findings_by_severity(archived(demo))
    fig = shown(reports["security-audit"])
    for severity in ("critical", "high", "medium", "low", "info"):
        assert int(fig[f"findings_{severity}"]) == by_severity.get(severity, 0), severity
        # Every finding of a two-day demo was seen in the period, and none is closed.
        assert int(fig[f"open_{severity}"]) == by_severity.get(severity, 0), severity
    assert int(fig["scans"]) == len(of(archived(demo), "security.scan_completed"))


def test_cost_report_matches_the_ledger_and_the_prices(demo, reports):
    fig = shown(reports["cost-report"])
    ledger = [json.loads(line) for p in (demo.root / "state" / "cost" / "ledger").glob("*.jsonl")
              for line in p.read_text().splitlines()]
    assert float(fig["cost_usd"]) == pytest.approx(sum(r["cost_usd"] for r in ledger), abs=1e-6)
    assert int(fig["priced_events"]) == len(ledger)
    # Priced again here from the archived worker events and the demo's prices.
    expected = 0.0
    for e in of(archived(demo), "worker.completed", "worker.failed"):
        p = e["payload"]
        if "input_tokens" in p:
            price = simulation.PRICES[p["model"]]
            expected += (p["input_tokens"] * price["input"] + p["output_tokens"] * price["output"]) / 1e6
    assert float(fig["cost_usd"]) == pytest.approx(expected, abs=0.01)
    db = sqlite3.connect(f"{(demo.root / 'kv' / 'state.db').resolve().as_uri()}?mode=ro", uri=True)
    try:
        (micros,) = db.execute("SELECT value FROM kv WHERE bucket = 'cost' AND key = 'cost_micro_usd'").fetchone()
    finally:
        db.close()
    assert float(fig["all_time_cost_usd"]) == pytest.approx(int(micros) / 1e6)


@pytest.mark.parametrize("name", REPORTS)
def test_reports_are_self_contained(reports, name):
    page = reports[name]
    assert "<svg" in page, "charts are inlined as SVG"
    assert not re.search(r"<script|<link|<img|\bsrc=|\bhref=|@import|url\(", page), "a reference outside the file"


def test_a_second_demo_into_the_same_root_is_refused(demo):
    done = subprocess.run([sys.executable, str(ANALYSIS / "demo.py"), "--root", str(demo.root),
                           "--cortex", os.environ["CORTEX"], "--days", "1"], capture_output=True, text=True)
    assert done.returncode == 1
    assert "already holds events: use an empty root (ROOT=...) or --append" in done.stderr
