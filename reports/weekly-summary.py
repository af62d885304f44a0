"""Weekly summary: system performance (event volume, outcomes, handler
latency), task success, failures and alerts, learning, and an executive
summary of the top recommendation of each area — computed, plus a
language-model paragraph only when `CORTEX_LLM_BASE_URL` is configured.
"""

import cortexdata as cd
import polars as pl

TITLE = "Cortex weekly summary"


def build(data: cd.Dataset, page) -> None:
    f = cd.summary.figures(data)
    page.heading("At a glance")
    page.figure("events", f["events"], "events archived")
    page.figure("follow_up_events", f["follow_up_events"], "follow-ups from handlers")
    page.figure("tasks_created", f["tasks_created"], "tasks created")
    page.figure("runs", f["runs"], "worker runs")
    page.figure("runs_failed", f["runs_failed"], "runs failed", tone="bad" if f["runs_failed"] else "")
    page.figure("task_success_rate", f["task_success_rate"], "tasks whose last run completed",
                shown=f"{f['task_success_rate']:.1%}")
    page.figure("tokens", f["tokens"], "tokens used")
    page.figure("cost_usd", f["cost_usd"], "token cost (USD)", shown=f"${f['cost_usd']:,.2f}")
    page.figure("decisions", f["decisions"], "routing decisions")
    page.figure("mean_confidence", f["mean_confidence"], "mean routing confidence", shown=f"{f['mean_confidence']:.2f}")
    page.figure("scans", f["scans"], "security scans")
    page.figure("health_alerts", f["health_alerts"], "health alerts", tone="bad" if f["health_alerts"] else "")
    page.figure("heartbeat_timeouts", f["heartbeat_timeouts"], "heartbeat timeouts")
    page.figure("patterns_detected", f["patterns_detected"], "patterns detected")
    page.figure("model_updates", f["model_updates"], "learning model updates")
    page.figure("dead_letters", f["dead_letters"], "dead letters", tone="bad" if f["dead_letters"] else "good")
    page.figure("events_logged", f["events_logged"], "events logged when queued")
    page.figure("events_pending", f["events_pending"], "logged, not yet archived or dead-lettered",
                tone="bad" if f["events_pending"] else "good")

    page.heading("Executive summary")
    highlights = cd.summary.highlights(data)
    page.bullets(highlights)
    summary = cd.llm.summarize("Weekly summary of a Cortex deployment", highlights)
    if summary:
        page.para("Language-model summary: " + summary)

    page.heading("System performance")
    if not data.events.is_empty():
        page.chart(cd.charts.svg(cd.charts.events_per_day(data.events)))
    outcomes = data.events.group_by("outcome").agg(events=pl.len()).sort("outcome")
    page.table(outcomes, name="outcomes")
    page.para("Handler latency (successful invocations, from the archive):")
    page.table(cd.summary.handler_latency(data.invocations), name="handlers")

    page.heading("Task success")
    if not data.runs.is_empty():
        page.chart(cd.charts.svg(cd.charts.runs_per_day(cd.workers.by_day(data.runs))))
    page.table(cd.workers.stats(data.runs, "master").select("master", "runs", "failed", "failure_rate", "tokens",
                                                           "p50_s", "p95_s"), name="masters")

    page.heading("Failures and alerts")
    page.para("Most frequent failure signatures (the failure handler's counts, all time; last seen in the period):")
    page.table(cd.summary.failure_signatures(data), ["signature", "count", "retryable", "last_seen"],
               name="signatures")
    alerts = data.alerts.group_by("component", "severity").agg(alerts=pl.len()).sort("component", "severity")
    page.table(alerts, name="alerts", empty="No health alerts.")
    if data.dead_letters:
        rows = pl.DataFrame([{"event_type": d["event"].get("event_type"), "source": d["event"].get("source"),
                              "reason": str(d.get("reason", ""))[:160]} for d in data.dead_letters])
        page.para("Dead letters (`cortex dlq list`):")
        page.table(rows, name="dead_letters")
