"""Security posture: scans, findings by severity and age, new findings over
time, and findings that look fixed, from `Dataset.scans` and
`Dataset.sightings` (the events) and the security handler's register
(bucket `security`, keys `vuln/<id>|<package>|<target>`, which keeps every finding "open":
the handler has no "fixed" event).

Rules behind the recommendations:

* **overdue**: an open critical finding older than `SLA_DAYS["critical"]`
  days (high: `SLA_DAYS["high"]`), counted from its first sighting;
* **probably fixed**: a finding not in the latest scan of its target by
  its scanner, though that scan ran after the finding was last seen;
* **scan gaps**: a scanner/target pair that ran on fewer days than the
  best-covered pair;
* **hot target**: the target with the most open critical and high findings.
"""

from __future__ import annotations

import datetime as dt
import polars as pl

from .load import SEVERITIES, Dataset

#: Days an open finding of a severity may stay before it is overdue.
SLA_DAYS = {"critical": 2, "high": 7, "medium": 30}


def scans_by_day(scans: pl.DataFrame) -> pl.DataFrame:
    """Scans and their findings per day (long form: one row per severity)."""
    return (
        scans.with_columns(day=pl.col("time").dt.date())
        .group_by("day")
        .agg(scans=pl.len(), **{s: pl.col(s).sum() for s in SEVERITIES})
        .sort("day")
    )


def first_sightings(sightings: pl.DataFrame) -> pl.DataFrame:
    """Each finding (register key) once, at its first sighting in the period."""
    return sightings.sort("time").group_by("key", maintain_order=True).first()


def new_by_day(sightings: pl.DataFrame) -> pl.DataFrame:
    """Findings first seen in the period, per day and severity."""
    return (
        first_sightings(sightings)
        .with_columns(day=pl.col("time").dt.date())
        .group_by("day", "severity")
        .agg(findings=pl.len())
        .sort("day", "severity")
    )


def by_severity(frame: pl.DataFrame) -> dict[str, int]:
    """Rows per severity, every severity present (0 when none)."""
    counts = dict(frame.group_by("severity").agg(n=pl.len()).iter_rows()) if not frame.is_empty() else {}
    return {s: int(counts.get(s, 0)) for s in SEVERITIES}


def with_age(register: pl.DataFrame, now: dt.datetime) -> pl.DataFrame:
    """The register with each finding's age in days at `now`, oldest first
    within severity order."""
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return (
        register.filter(pl.col("status") == "open")
        .with_columns(
            age_days=(pl.lit(now) - pl.col("first_seen")).dt.total_seconds() / 86400,
            rank=pl.col("severity").replace_strict(order, default=len(order), return_dtype=pl.Int64),
        )
        .sort("rank", "age_days", descending=[False, True])
        .drop("rank")
    )


def latest_scans(scans: pl.DataFrame) -> pl.DataFrame:
    return scans.sort("time").group_by("scanner", "target", maintain_order=True).last()


def probably_fixed(register: pl.DataFrame, scans: pl.DataFrame) -> pl.DataFrame:
    """Open findings that the latest scan of their scanner and target did
    not see again (that scan ran after the finding's last sighting)."""
    latest = latest_scans(scans).select("scanner", "target", last_scan=pl.col("time"))
    return (
        register.filter(pl.col("status") == "open")
        .join(latest, on=["scanner", "target"], how="inner")
        .filter(pl.col("last_scan") > pl.col("last_seen") + pl.duration(minutes=5))
        .sort("severity", "id")
    )


def scan_gaps(scans: pl.DataFrame) -> pl.DataFrame:
    """Scanner/target pairs that ran on fewer days than the best-covered
    pair (so a period that starts or ends mid-day is not a gap), with that
    number as `expected`."""
    per = (
        scans.with_columns(day=pl.col("time").dt.date())
        .group_by("scanner", "target")
        .agg(days_scanned=pl.col("day").n_unique())
    )
    return (
        per.with_columns(expected=pl.col("days_scanned").max())
        .filter(pl.col("days_scanned") < pl.col("expected"))
        .sort("days_scanned", "scanner", "target")
    )


def recommendations(data: Dataset, now: dt.datetime | None = None) -> list[str]:
    """Concrete, computed advice on the security posture, most urgent first."""
    now = now or data.period.end
    out = []
    open_ = with_age(data.register, now)
    fixed = probably_fixed(data.register, data.scans)
    fixed_keys = set(fixed["key"].to_list())
    still = open_.filter(~pl.col("key").is_in(list(fixed_keys)))
    for severity, sla in SLA_DAYS.items():
        overdue = still.filter((pl.col("severity") == severity) & (pl.col("age_days") > sla))
        if overdue.is_empty() or severity == "medium":
            continue
        names = ", ".join(f"{r['id']} in {r['package']} on {r['target']} ({r['age_days']:.0f} d)"
                          for r in overdue.head(5).iter_rows(named=True))
        more = f" and {overdue.height - 5} more" if overdue.height > 5 else ""
        out.append(f"{overdue.height} open {severity} finding(s) older than the {sla}-day target: {names}{more}; "
                   f"fix these first.")
    serious = still.filter(pl.col("severity").is_in(["critical", "high"]))
    if not serious.is_empty():
        worst = serious.group_by("target").agg(n=pl.len()).sort(["n", "target"], descending=[True, False]).row(0)
        out.append(f"{worst[0]} carries the most open critical/high findings ({worst[1]} of {serious.height}): "
                   f"schedule its dependency upgrades first.")
    if not fixed.is_empty():
        out.append(f"{fixed.height} finding(s) were not seen by the latest scan of their target "
                   f"(e.g. {', '.join(fixed['id'].head(3).to_list())}): confirm they are fixed and close them "
                   f"in the register.")
    for row in scan_gaps(data.scans).head(5).iter_rows(named=True):
        out.append(f"{row['scanner']} scanned {row['target']} on {row['days_scanned']} day(s) where other "
                   f"scans ran on {row['expected']}: check its schedule.")
    halves = data.period.halves()
    new = first_sightings(data.sightings)
    early = new.filter(pl.col("time") < halves[1].start).height
    late = new.height - early
    if late > early and late >= 3:
        out.append(f"New findings are rising: {late} in the second half of the period against {early} in the first.")
    if not out:
        out.append(f"No open critical or high findings; {data.scans.height} scans ran in the period.")
    return out
