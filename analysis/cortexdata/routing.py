"""MoE routing: confidence per master and expert, its trend over the period,
drift, and low-confidence hot spots, from `Dataset.decisions` (the
`routing.decision_made` events) and the routing handler's
`routing` bucket (`kv/state.db`).

The rules behind the recommendations, so a reader can check them:

* **drift**: an expert's mean confidence in the second half of the period
  against the first half; a change of `DRIFT_PCT` or more, with at least
  `MIN_DECISIONS` decisions in each half, is reported;
* **hot spot**: a (master, expert) pair whose share of decisions below
  `LOW` is at least `HOT_RATE`, with at least `MIN_DECISIONS` decisions;
* **drift alerts**: runs of low-confidence decisions the routing handler
  turned into `learning.pattern_detected` events (its `drift_alerts`).
"""

from __future__ import annotations

import polars as pl

from .load import Dataset, Period

#: A decision below this confidence is low (the routing handler's default).
LOW = 0.5
#: Change of mean confidence between the halves worth reporting, in percent.
DRIFT_PCT = 10.0
#: A low-confidence rate that makes a hot spot.
HOT_RATE = 0.3
#: Decisions needed before a statistic is trusted.
MIN_DECISIONS = 5


def confidence_by_day(decisions: pl.DataFrame) -> pl.DataFrame:
    """Mean confidence and count per day, master and expert."""
    return (
        decisions.with_columns(day=pl.col("time").dt.date())
        .group_by("day", "master", "expert")
        .agg(mean_confidence=pl.col("confidence").mean(), decisions=pl.len())
        .sort("day", "master", "expert")
    )


def by_master(decisions: pl.DataFrame) -> pl.DataFrame:
    """Per master: decisions and mean confidence."""
    return (
        decisions.group_by("master")
        .agg(decisions=pl.len(), mean_confidence=pl.col("confidence").mean())
        .sort("master")
    )


def by_expert(decisions: pl.DataFrame, low: float = LOW) -> pl.DataFrame:
    """Per master and expert: decisions, mean confidence, low-confidence
    count and rate."""
    return (
        decisions.group_by("master", "expert")
        .agg(
            decisions=pl.len(),
            mean_confidence=pl.col("confidence").mean(),
            low=(pl.col("confidence") < low).sum(),
        )
        .with_columns(low_rate=pl.col("low") / pl.col("decisions"))
        .sort("master", "expert")
    )


def drift(decisions: pl.DataFrame, period: Period, min_decisions: int = MIN_DECISIONS) -> pl.DataFrame:
    """Per master and expert: mean confidence in each half of the period and
    the change in percent, largest falls first; pairs with fewer than
    `min_decisions` in either half are left out."""
    early, late = period.halves()
    half = pl.when(pl.col("time") < late.start).then(pl.lit("early")).otherwise(pl.lit("late"))
    stats = (
        decisions.with_columns(half=half)
        .group_by("master", "expert", "half")
        .agg(mean=pl.col("confidence").mean(), n=pl.len())
    )
    e = stats.filter(pl.col("half") == "early").select("master", "expert", early_mean="mean", early_n="n")
    lt = stats.filter(pl.col("half") == "late").select("master", "expert", late_mean="mean", late_n="n")
    return (
        e.join(lt, on=["master", "expert"], how="inner")
        .filter((pl.col("early_n") >= min_decisions) & (pl.col("late_n") >= min_decisions))
        .with_columns(change_pct=(pl.col("late_mean") - pl.col("early_mean")) / pl.col("early_mean") * 100)
        .sort("change_pct", "master", "expert")
    )


def hot_spots(decisions: pl.DataFrame, low: float = LOW, rate: float = HOT_RATE,
              min_decisions: int = MIN_DECISIONS) -> pl.DataFrame:
    """(master, expert) pairs where low-confidence decisions are common."""
    return (
        by_expert(decisions, low)
        .filter((pl.col("decisions") >= min_decisions) & (pl.col("low_rate") >= rate))
        .sort("low_rate", descending=True)
    )


def handler_stats(stats: dict | None) -> pl.DataFrame:
    """The routing handler's per-master statistics (all time): its
    `routing` bucket, master -> statistics."""
    schema = {"master": pl.String, "decisions": pl.Int64, "mean_confidence": pl.Float64,
              "low_confidence_rate": pl.Float64, "drift_alerts": pl.Int64}
    rows = [{"master": m, **{k: s.get(k) for k in list(schema)[1:]}}
            for m, s in (stats or {}).items() if isinstance(s, dict)]
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


def recommendations(data: Dataset) -> list[str]:
    """Concrete, computed advice on routing, most urgent first."""
    out = []
    d = data.decisions
    if d.is_empty():
        return ["No routing decisions in this period: nothing to recommend."]
    for row in drift(d, data.period).iter_rows(named=True):
        if abs(row["change_pct"]) < DRIFT_PCT:
            continue
        verb = "fell" if row["change_pct"] < 0 else "rose"
        line = (f"{row['expert']} ({row['master']}): mean confidence {verb} {abs(row['change_pct']):.0f}% "
                f"between the halves of the period ({row['early_mean']:.2f} over {row['early_n']} decisions, "
                f"then {row['late_mean']:.2f} over {row['late_n']})")
        if verb == "fell":
            line += "; review its routing rules or retrain it before more work goes to it."
        out.append(line + ("" if verb == "fell" else "."))
    for row in hot_spots(d).iter_rows(named=True):
        out.append(f"{row['expert']} ({row['master']}) is a low-confidence hot spot: {row['low']} of "
                   f"{row['decisions']} decisions ({row['low_rate']:.0%}) below {LOW}; add a fallback expert "
                   f"or a clarifying step for these tasks.")
    alerts = handler_stats(data.root.bucket("routing"))
    for row in alerts.filter(pl.col("drift_alerts") > 0).sort("drift_alerts", descending=True).iter_rows(named=True):
        out.append(f"{row['master']}: the routing handler raised {row['drift_alerts']} drift alert(s) "
                   f"(runs of low-confidence decisions) so far.")
    refused = [x for x in data.dead_letters if (x.get("event") or {}).get("event_type") == "routing.decision_made"]
    if refused:
        sources = sorted({(x.get("event") or {}).get("source", "?") for x in refused})
        out.append(f"{len(refused)} routing decision(s) from {', '.join(sources)} were dead-lettered "
                   f"(see `cortex dlq list`): fix the producer, then `cortex dlq retry`.")
    if not out:
        overall = d["confidence"].mean()
        out.append(f"Routing is steady: mean confidence {overall:.2f} over {d.height} decisions, "
                   f"no expert moved by {DRIFT_PCT:.0f}% or more.")
    return out
