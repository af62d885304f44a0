"""Worker performance: runs, tokens, latency percentiles, failure rates and
outliers per worker and per model, from `Dataset.runs` (finished
`worker.completed` / `worker.failed` runs) and `Dataset.failures`.

Rules behind the recommendations:

* **slow**: a worker whose p95 run time is more than `SLOW_FACTOR` times
  the median p95 of the workers of its master;
* **failing**: a worker whose failure rate is more than `FAIL_FACTOR` times
  the fleet's and at least `FAIL_MIN` failures;
* **silent**: heartbeat timeouts the heartbeat handler reported;
* **recurring error**: an error text (numbers masked) seen `PATTERN_MIN`
  times or more, with the share that was retried.
"""

from __future__ import annotations

import re

import polars as pl

from .load import TIME, Dataset, parse_time

SLOW_FACTOR = 1.5
FAIL_FACTOR = 2.0
FAIL_MIN = 3
PATTERN_MIN = 3


def stats(runs: pl.DataFrame, by: str | list[str] = "worker_id") -> pl.DataFrame:
    """Per group: runs, failures and rate, tokens (total and per run), and
    run-time percentiles in seconds."""
    secs = pl.col("duration_ms") / 1000
    return (
        runs.group_by(by)
        .agg(
            runs=pl.len(),
            failed=(pl.col("status") == "failed").sum(),
            tokens=pl.col("tokens").sum(),
            tokens_per_run=pl.col("tokens").mean(),
            p50_s=secs.quantile(0.5, "linear"),
            p95_s=secs.quantile(0.95, "linear"),
            p99_s=secs.quantile(0.99, "linear"),
        )
        .with_columns(failure_rate=pl.col("failed") / pl.col("runs"))
        .sort(by)
    )


def by_day(runs: pl.DataFrame) -> pl.DataFrame:
    """Runs, failures, tokens and p50 run time per day."""
    return (
        runs.with_columns(day=pl.col("time").dt.date())
        .group_by("day")
        .agg(runs=pl.len(), failed=(pl.col("status") == "failed").sum(), tokens=pl.col("tokens").sum(),
             p50_s=(pl.col("duration_ms") / 1000).quantile(0.5, "linear"))
        .sort("day")
    )


def outliers(runs: pl.DataFrame) -> pl.DataFrame:
    """Workers flagged slow or failing, with the figure and the reference."""
    per = stats(runs, ["master", "worker_id"])
    if per.is_empty():
        return pl.DataFrame(schema={"worker_id": pl.String, "master": pl.String, "reason": pl.String,
                                    "value": pl.Float64, "reference": pl.Float64})
    fleet_rate = float(per["failed"].sum() / per["runs"].sum())
    per = per.with_columns(master_p95=pl.col("p95_s").median().over("master"))
    slow = per.filter(pl.col("p95_s") > SLOW_FACTOR * pl.col("master_p95")).select(
        "worker_id", "master", reason=pl.lit("slow"), value=pl.col("p95_s"), reference=pl.col("master_p95"))
    failing = per.filter((pl.col("failure_rate") > FAIL_FACTOR * fleet_rate) & (pl.col("failed") >= FAIL_MIN)).select(
        "worker_id", "master", reason=pl.lit("failing"), value=pl.col("failure_rate"),
        reference=pl.lit(fleet_rate))
    return pl.concat([slow, failing]).sort("worker_id", "reason")


def liveness(heartbeats: dict | None, now) -> pl.DataFrame:
    """The heartbeat handler's view (its `heartbeats` bucket, worker id ->
    record): per
    worker its beats, last beat, minutes since it at `now`, and whether it
    is flagged silent."""
    schema = {"worker_id": pl.String, "beats": pl.Int64, "last_seen": TIME, "silent_min": pl.Float64,
              "flagged": pl.Boolean}
    rows = []
    for worker, w in (heartbeats or {}).items():
        if not isinstance(w, dict):
            continue
        seen = parse_time(w.get("last_seen", ""))
        rows.append({"worker_id": worker, "beats": w.get("beats"), "last_seen": seen,
                     "silent_min": None if seen is None else (now - seen).total_seconds() / 60,
                     "flagged": bool(w.get("flagged"))})
    frame = pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)
    return frame.sort("worker_id")


def error_shape(error: str) -> str:
    """An error with its numbers masked, so "retry after 20s" and "retry
    after 30s" count as one."""
    return re.sub(r"\d+", "N", error)


def recurring_errors(failures: pl.DataFrame, minimum: int = PATTERN_MIN) -> pl.DataFrame:
    return (
        failures.filter(pl.col("kind") != "heartbeat")
        .with_columns(shape=pl.col("error").map_elements(error_shape, return_dtype=pl.String))
        .group_by("shape")
        .agg(count=pl.len(), workers=pl.col("worker_id").drop_nulls().n_unique(), first=pl.col("time").min(),
             last=pl.col("time").max())
        .filter(pl.col("count") >= minimum)
        .sort(["count", "shape"], descending=[True, False])
    )


def recommendations(data: Dataset) -> list[str]:
    """Concrete, computed advice on workers and models, most urgent first."""
    runs = data.runs
    if runs.is_empty():
        return ["No finished worker runs in this period: nothing to recommend."]
    out = []
    for row in outliers(runs).iter_rows(named=True):
        if row["reason"] == "slow":
            out.append(f"{row['worker_id']} is slow: p95 run time {row['value']:.0f} s against "
                       f"{row['reference']:.0f} s "
                       f"for {row['master']}'s workers ({row['value'] / row['reference']:.1f}x); check its host "
                       f"or move its tasks to its peers.")
        else:
            out.append(f"{row['worker_id']} fails {row['value']:.0%} of its runs against {row['reference']:.0%} "
                       f"for the fleet: inspect its last errors (`cortex state get workers {row['worker_id']}`).")
    models = stats(runs, "model")
    if models.height > 1:
        worst = models.sort("failure_rate", descending=True).row(0, named=True)
        best = models.sort("failure_rate").row(0, named=True)
        if worst["failure_rate"] > 1.5 * best["failure_rate"] and worst["failed"] >= FAIL_MIN:
            out.append(f"Runs on {worst['model']} fail {worst['failure_rate']:.1%} of the time against "
                       f"{best['failure_rate']:.1%} on {best['model']}.")
    silent = data.failures.filter(pl.col("kind") == "heartbeat")
    if not silent.is_empty():
        counts = silent.group_by("worker_id").agg(n=pl.len()).sort("n", "worker_id", descending=[True, False])
        names = ", ".join(f"{w} ({n}x)" for w, n in counts.iter_rows())
        out.append(f"Heartbeat timeouts: {names}; these workers went silent longer than the threshold.")
    for row in recurring_errors(data.failures).head(3).iter_rows(named=True):
        out.append(f"Recurring error ({row['count']}x on {row['workers']} worker(s), "
                   f"{row['first']:%m-%d %H:%M} to {row['last']:%m-%d %H:%M}): \"{row['shape']}\".")
    if not out:
        out.append(f"No outliers: {runs.height} runs, {runs.filter(pl.col('status') == 'failed').height} failed.")
    return out
