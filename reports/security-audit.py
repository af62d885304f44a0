"""Security audit: the posture over the period — open findings by severity
and age, what the scans reported, new findings per day, findings that look
fixed, a computed compliance checklist and recommendations.
"""

import cortexdata as cd
import polars as pl

TITLE = "Cortex security audit"


def checks(data: cd.Dataset, aged: pl.DataFrame) -> list[tuple[str, bool, str]]:
    """The compliance checklist: each rule, whether it holds, and why."""
    gaps = cd.security.scan_gaps(data.scans)
    out = [("Every scanner ran on every target each day", gaps.is_empty(),
            "no gaps" if gaps.is_empty() else
            "; ".join(f"{r['scanner']} on {r['target']}: {r['days_scanned']}/{r['expected']} days"
                      for r in gaps.iter_rows(named=True)))]
    for severity, days in cd.security.SLA_DAYS.items():
        late = aged.filter((pl.col("severity") == severity) & (pl.col("age_days") > days))
        out.append((f"No {severity} finding open longer than {days} days", late.is_empty(),
                    f"{late.height} open: {', '.join(late['id'].head(6).to_list())}" if late.height else "none"))
    secrets = aged.filter(pl.col("scanner") == "gitleaks")
    out.append(("No committed secret open", secrets.is_empty(),
                f"{secrets.height} open" if secrets.height else "none"))
    latest = data.scans["time"].max()
    fresh = latest is not None and (data.period.end - latest).total_seconds() < 36 * 3600
    out.append(("A scan ran within 36 hours of the period's end", fresh,
                f"last scan {latest:%Y-%m-%d %H:%M} UTC" if latest is not None else "no scans"))
    return out


def build(data: cd.Dataset, page) -> None:
    aged = cd.security.with_age(data.register, data.period.end)
    # The register is all-time: the audit covers what was seen in the period.
    seen = aged.filter(pl.col("last_seen") >= pl.lit(data.period.start))
    new = cd.security.by_severity(cd.security.first_sightings(data.sightings))
    open_ = cd.security.by_severity(seen)
    page.heading("Posture")
    page.figure("scans", data.scans.height, "scans in the period")
    page.figure("open_total", seen.height, "open findings seen in the period")
    for severity in cd.SEVERITIES:
        page.figure(f"open_{severity}", open_[severity], f"open {severity}",
                    tone="bad" if severity in ("critical", "high") and open_[severity] else "")
    for severity in cd.SEVERITIES:
        page.figure(f"findings_{severity}", new[severity], f"{severity} findings reported")

    page.heading("Recommendations")
    advice = cd.security.recommendations(data)
    page.bullets(advice)
    summary = cd.llm.summarize("Security posture", advice)
    if summary:
        page.para("Language-model summary: " + summary)

    page.heading("Compliance checklist")
    page.checklist(checks(data, seen))

    page.heading("Open findings")
    if not seen.is_empty():
        page.chart(cd.charts.svg(cd.charts.open_by_severity(seen)))
        page.chart(cd.charts.svg(cd.charts.finding_age(seen)))
    page.table(seen.select("id", "severity", "target", "package", "scanner", "age_days", "occurrences"),
               name="open", empty="No open findings.")

    page.heading("Vulnerability trends")
    if not data.sightings.is_empty():
        page.chart(cd.charts.svg(cd.charts.new_findings(cd.security.new_by_day(data.sightings))))
    if not data.scans.is_empty():
        page.chart(cd.charts.svg(cd.charts.scan_findings(cd.security.scans_by_day(data.scans))))
    page.table(cd.security.scans_by_day(data.scans), name="scans_by_day", empty="No scans.")

    page.heading("Probably fixed")
    page.table(cd.security.probably_fixed(data.register, data.scans).select("id", "severity", "target", "scanner",
                                                                            "last_seen", "last_scan"),
               name="fixed", empty="Every open finding was seen by the latest scan of its target.")
