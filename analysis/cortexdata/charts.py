"""Altair charts of the analysis frames, shared by the notebooks (which
show them interactively) and the reports (which inline them as SVG with
`svg()`, rendered offline by vl-convert: no JavaScript, no network).

Each function takes a frame from `load`, `routing`, `security`, `workers` or
`cost` and returns an `alt.Chart`; data is embedded as plain values (dates
as ISO strings) so a chart renders the same anywhere.
"""

from __future__ import annotations

import datetime as dt

import altair as alt
import polars as pl

from .load import SEVERITIES

SEVERITY_COLORS = ["#7f0000", "#d7301f", "#fc8d59", "#fdcc8a", "#bdbdbd"]
WIDTH = 560


def _values(frame: pl.DataFrame) -> alt.Data:
    def plain(v):
        return v.isoformat() if isinstance(v, (dt.date, dt.datetime)) else v

    return alt.Data(values=[{k: plain(v) for k, v in row.items()} for row in frame.to_dicts()])


def _severity():
    return alt.Color("severity:N", scale=alt.Scale(domain=SEVERITIES, range=SEVERITY_COLORS), title="severity")


def confidence_trend(by_day: pl.DataFrame) -> alt.Chart:
    """Mean confidence per day, one line per expert (from routing.confidence_by_day)."""
    return alt.Chart(_values(by_day), title="Mean routing confidence per day").mark_line(point=True).encode(
        x=alt.X("day:T", title=None), y=alt.Y("mean_confidence:Q", title="mean confidence",
                                             scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("expert:N"), tooltip=["master:N", "expert:N", "day:T", "mean_confidence:Q", "decisions:Q"],
    ).properties(width=WIDTH, height=260)


def low_rate(by_expert: pl.DataFrame) -> alt.Chart:
    """Share of low-confidence decisions per expert (from routing.by_expert)."""
    return alt.Chart(_values(by_expert), title="Low-confidence decisions per expert").mark_bar().encode(
        x=alt.X("low_rate:Q", title="share below the threshold", axis=alt.Axis(format="%")),
        y=alt.Y("expert:N", sort="-x", title=None), color=alt.Color("master:N"),
        tooltip=["master:N", "expert:N", "decisions:Q", "low:Q", alt.Tooltip("low_rate:Q", format=".0%")],
    ).properties(width=WIDTH, height=alt.Step(16))


def open_by_severity(aged: pl.DataFrame) -> alt.Chart:
    """Open findings per target, by severity (from security.with_age)."""
    rank = pl.col("severity").replace_strict({s: i for i, s in enumerate(SEVERITIES)}, default=len(SEVERITIES),
                                             return_dtype=pl.Int64)
    return alt.Chart(_values(aged.select("target", "severity", "age_days", rank=rank)),
                     title="Open findings by target and severity").mark_bar().encode(
        x=alt.X("count():Q", title="open findings"), y=alt.Y("target:N", title=None),
        color=_severity(), order=alt.Order("rank:Q"),
    ).properties(width=WIDTH, height=alt.Step(22))


def finding_age(aged: pl.DataFrame) -> alt.Chart:
    """Age of open findings in days, by severity."""
    return alt.Chart(_values(aged.select("id", "target", "severity", "age_days")),
                     title="Age of open findings (days since first seen)").mark_tick(thickness=2).encode(
        x=alt.X("age_days:Q", title="days"), y=alt.Y("severity:N", sort=SEVERITIES, title=None), color=_severity(),
        tooltip=["id:N", "target:N", alt.Tooltip("age_days:Q", format=".1f")],
    ).properties(width=WIDTH, height=alt.Step(24))


def new_findings(new_by_day: pl.DataFrame) -> alt.Chart:
    """Findings first seen per day, by severity (from security.new_by_day)."""
    return alt.Chart(_values(new_by_day), title="Findings first seen per day").mark_bar().encode(
        x=alt.X("day:O", title=None), y=alt.Y("findings:Q", title="findings"),
        color=_severity(),
    ).properties(width=WIDTH, height=220)


def scan_findings(scans_by_day: pl.DataFrame) -> alt.Chart:
    """Findings reported by scans per day, by severity (from security.scans_by_day)."""
    long = scans_by_day.unpivot(index=["day", "scans"], on=SEVERITIES, variable_name="severity", value_name="findings")
    return alt.Chart(_values(long), title="Findings reported by scans per day").mark_bar().encode(
        x=alt.X("day:O", title=None), y=alt.Y("findings:Q"), color=_severity(),
        tooltip=["day:N", "severity:N", "findings:Q", "scans:Q"],
    ).properties(width=WIDTH, height=220)


def run_time(stats: pl.DataFrame, key: str = "worker_id") -> alt.Chart:
    """p50 and p95 run time per worker or model (from workers.stats)."""
    long = stats.select(key, "p50_s", "p95_s").unpivot(index=key, variable_name="percentile", value_name="seconds")
    return alt.Chart(_values(long), title="Run time percentiles (s)").mark_bar().encode(
        y=alt.Y(f"{key}:N", title=None), x=alt.X("seconds:Q"), yOffset="percentile:N",
        color=alt.Color("percentile:N"), tooltip=[f"{key}:N", "percentile:N", alt.Tooltip("seconds:Q", format=".0f")],
    ).properties(width=WIDTH, height=alt.Step(10))


def failure_rate(stats: pl.DataFrame, key: str = "worker_id") -> alt.Chart:
    return alt.Chart(_values(stats), title="Failure rate").mark_bar().encode(
        y=alt.Y(f"{key}:N", sort="-x", title=None),
        x=alt.X("failure_rate:Q", axis=alt.Axis(format="%"), title="failed runs"),
        tooltip=[f"{key}:N", "runs:Q", "failed:Q", alt.Tooltip("failure_rate:Q", format=".1%")],
    ).properties(width=WIDTH, height=alt.Step(16))


def runs_per_day(by_day: pl.DataFrame) -> alt.Chart:
    long = by_day.with_columns(completed=pl.col("runs") - pl.col("failed")).select("day", "completed", "failed") \
        .unpivot(index="day", variable_name="status", value_name="runs")
    return alt.Chart(_values(long), title="Worker runs per day").mark_bar().encode(
        x=alt.X("day:O", title=None), y=alt.Y("runs:Q"),
        color=alt.Color("status:N", scale=alt.Scale(domain=["completed", "failed"], range=["#4c78a8", "#e45756"])),
    ).properties(width=WIDTH, height=220)


def cost_per_day(by_day: pl.DataFrame, budget: float | None = None) -> alt.Chart:
    """Spend per day stacked by model, with the daily budget as a rule (from cost.by_day)."""
    bars = alt.Chart(_values(by_day)).mark_bar().encode(
        x=alt.X("day:O", title=None), y=alt.Y("sum(cost_usd):Q", title="USD"),
        color=alt.Color("model:N"), tooltip=["day:N", "model:N", alt.Tooltip("cost_usd:Q", format="$.2f")],
    )
    layers = [bars]
    if budget is not None:
        layers.append(alt.Chart(alt.Data(values=[{"budget": budget}])).mark_rule(strokeDash=[4, 4], color="black")
                      .encode(y="budget:Q"))
    return alt.layer(*layers, title="Spend per day by model").properties(width=WIDTH, height=240)


def spend_by(spend: pl.DataFrame, key: str) -> alt.Chart:
    """Spend per master, model or worker (from cost.spend)."""
    return alt.Chart(_values(spend), title=f"Spend by {key.replace('_id', '')}").mark_bar().encode(
        y=alt.Y(f"{key}:N", sort="-x", title=None), x=alt.X("cost_usd:Q", title="USD"),
        tooltip=[f"{key}:N", alt.Tooltip("cost_usd:Q", format="$.2f"), "tokens:Q", "events:Q"],
    ).properties(width=WIDTH, height=alt.Step(18))


def events_per_day(events: pl.DataFrame) -> alt.Chart:
    """Archived producer events per day by category (the event type's
    prefix). Follow-ups are left out: they carry the time a handler emitted
    them, which for back-dated events (a replay, the demo) is not their day."""
    daily = (events.filter(~pl.col("follow_up")).with_columns(day=pl.col("time").dt.date(),
                                 category=pl.col("event_type").str.split(".").list.first())
             .group_by("day", "category").agg(events=pl.len()).sort("day", "category"))
    return alt.Chart(_values(daily), title="Producer events per day by category").mark_bar().encode(
        x=alt.X("day:O", title=None), y=alt.Y("events:Q"), color=alt.Color("category:N"),
        tooltip=["day:N", "category:N", "events:Q"],
    ).properties(width=WIDTH, height=240)


def rows(frame: pl.DataFrame, digits: int = 2) -> list[dict]:
    """A frame as rows for a notebook table, floats rounded for reading."""
    return frame.with_columns(pl.col(pl.Float64).round(digits)).to_dicts()


def svg(chart: alt.TopLevelMixin) -> str:
    """The chart as an SVG document, rendered offline."""
    import vl_convert

    return vl_convert.vegalite_to_svg(chart.to_dict())
