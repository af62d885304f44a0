"""The week at a glance: event volume, outcomes, task success, handler
latency, alerts, learning and dead letters, for the weekly-summary report
and the top of each notebook.

`figures(data)` returns named numbers; the reports print them with their
names (`data-figure="..."`), and `make test` checks them against counts it
computes from the archive on its own.
"""

from __future__ import annotations

import polars as pl

from . import cost, routing, security, workers
from .load import Dataset, parse_time


def task_outcomes(runs: pl.DataFrame) -> pl.DataFrame:
    """Per task: its last run's status and how many runs it took."""
    return (
        runs.sort("time")
        .group_by("task_id")
        .agg(final=pl.col("status").last(), runs=pl.len())
    )


def handler_latency(invocations: pl.DataFrame) -> pl.DataFrame:
    """Per handler: invocations, p50 and p99 duration in ms, events emitted."""
    return (
        invocations.group_by("handler")
        .agg(invocations=pl.len(), p50_ms=pl.col("duration_ms").quantile(0.5, "linear"),
             p99_ms=pl.col("duration_ms").quantile(0.99, "linear"), emitted=pl.col("emitted").sum())
        .sort("handler")
    )


def figures(data: Dataset) -> dict[str, float | int]:
    """The named figures of the period (counts are of archived events)."""
    ev = data.events
    runs = data.runs
    tasks = task_outcomes(runs)
    count = lambda t: ev.filter(pl.col("event_type") == t).height  # noqa: E731
    ledger = data.ledger
    out = {
        "events": ev.height,
        "producer_events": ev.filter(~pl.col("follow_up")).height,
        "follow_up_events": ev.filter(pl.col("follow_up")).height,
        "unhandled_events": ev.filter(pl.col("outcome") == "unhandled").height,
        "dead_letters": len(data.dead_letters),
        "events_logged": len(data.root.logged(data.period)),
        "events_pending": len(data.pending),
        "tasks_created": ev.filter((pl.col("event_type") == "task.created") & ~pl.col("follow_up")).height,
        "retries_queued": ev.filter((pl.col("event_type") == "task.created") & pl.col("follow_up")).height,
        "runs": runs.height,
        "runs_failed": runs.filter(pl.col("status") == "failed").height,
        "tasks_run": tasks.height,
        "tasks_succeeded": tasks.filter(pl.col("final") == "completed").height,
        "task_success_rate": round(tasks.filter(pl.col("final") == "completed").height / tasks.height, 4)
        if tasks.height else 0.0,
        "tokens": int(runs["tokens"].sum() or 0),
        "decisions": data.decisions.height,
        "mean_confidence": round(float(data.decisions["confidence"].mean()), 4) if data.decisions.height else 0.0,
        "scans": data.scans.height,
        "health_alerts": count("system.health_alert"),
        "patterns_detected": count("learning.pattern_detected"),
        "model_updates": count("learning.model_updated"),
        "heartbeat_timeouts": data.failures.filter(pl.col("kind") == "heartbeat").height,
        "cost_usd": round(float(ledger["cost_usd"].sum() or 0), 6),
    }
    for severity, n in security.by_severity(security.first_sightings(data.sightings)).items():
        out[f"findings_{severity}"] = n
    return out


def failure_signatures(data: Dataset, limit: int = 5) -> pl.DataFrame:
    """The failure handler's signatures last seen in the period, by count
    (counts are all-time: the handler keeps no per-day history)."""
    schema = {"signature": pl.String, "count": pl.Int64, "retryable": pl.Boolean, "last_seen": pl.String,
              "example": pl.String}
    patterns = {k.removeprefix("pattern/"): v for k, v in data.root.bucket("failures").items()
                if k.startswith("pattern/") and isinstance(v, dict)}
    rows = []
    for sig, p in patterns.items():
        seen = parse_time(p.get("last_seen", ""))
        if seen is not None and seen in data.period:
            rows.append({"signature": sig, "count": p.get("count"), "retryable": p.get("retryable"),
                         "last_seen": p.get("last_seen"), "example": p.get("example")})
    frame = pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)
    return frame.sort(["count", "signature"], descending=[True, False]).head(limit)


def highlights(data: Dataset) -> list[str]:
    """The first recommendation of each area: the executive summary."""
    out = []
    for area, recommend in (("Routing", routing.recommendations), ("Workers", workers.recommendations),
                            ("Security", security.recommendations), ("Cost", cost.recommendations)):
        first = recommend(data)
        if first:
            out.append(f"{area}: {first[0]}")
    return out
