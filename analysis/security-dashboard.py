"""Security dashboard: scans and findings of a coordination root — open
findings by severity and age (the security handler's register), findings
first seen per day, what the scans reported, scan gaps and findings that
look fixed — ending in computed recommendations.

    marimo run analysis/security-dashboard.py -- --root coordination --days 7
    python analysis/security-dashboard.py --root R --figures out.json   # headless

The analysis lives in `cortexdata.security` (unit-tested); this notebook
only lays it out.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="Cortex: security dashboard")


@app.cell
def _():
    import sys

    import marimo as mo

    sys.path.insert(0, str(mo.notebook_dir()))
    import cortexdata as cd

    args = mo.cli_args()
    return args, cd, mo


@app.cell
def _(args, cd, mo):
    data = cd.Dataset(cd.options.root(args), cd.options.period(args))
    aged = cd.security.with_age(data.register, data.period.end)
    open_counts = cd.security.by_severity(aged)
    new_counts = cd.security.by_severity(cd.security.first_sightings(data.sightings))
    mo.vstack([
        mo.md(f"""
    # Security dashboard

    Root `{data.root.path}`, {data.period.label}: **{data.scans.height}** scans,
    **{data.sightings.height}** sightings of **{sum(new_counts.values())}** distinct findings.
    The register (bucket `security`, `cortex state list security --prefix vuln/`) holds **{aged.height}** open findings.
    """),
        mo.hstack([mo.stat(value=str(n), label=f"open {s}") for s, n in open_counts.items()]),
    ])
    return aged, data, new_counts, open_counts


@app.cell
def _(aged, cd, mo):
    mo.vstack([
        mo.md("## Open findings by severity and age"),
        mo.ui.altair_chart(cd.charts.open_by_severity(aged)),
        mo.ui.altair_chart(cd.charts.finding_age(aged)),
        mo.ui.table(cd.charts.rows(aged.select("id", "severity", "target", "package", "scanner", "age_days",
                                               "occurrences", "last_seen")), selection=None),
    ])
    return


@app.cell
def _(cd, data, mo):
    scans_daily = cd.security.scans_by_day(data.scans)
    mo.vstack([
        mo.md("## Trends"),
        mo.ui.altair_chart(cd.charts.new_findings(cd.security.new_by_day(data.sightings))),
        mo.ui.altair_chart(cd.charts.scan_findings(scans_daily)),
        mo.ui.table(cd.charts.rows(scans_daily), selection=None),
    ])
    return


@app.cell
def _(cd, data, mo):
    fixed = cd.security.probably_fixed(data.register, data.scans)
    gaps = cd.security.scan_gaps(data.scans)
    mo.vstack([
        mo.md("## Probably fixed (not seen by the latest scan of their target)"),
        mo.ui.table(fixed.select("id", "severity", "target", "scanner", "last_seen", "last_scan").to_dicts(),
                    selection=None),
        mo.md("## Scan gaps"),
        mo.ui.table(cd.charts.rows(gaps), selection=None),
    ])
    return fixed, gaps


@app.cell
def _(cd, data, mo):
    advice = cd.security.recommendations(data)
    summary = cd.llm.summarize("Security posture", advice)
    mo.md("## Recommendations\n\n" + "\n".join(f"- {a}" for a in advice)
          + (f"\n\n### Summary (language model)\n\n{summary}" if summary else ""))
    return advice, summary


@app.cell
def _(advice, aged, args, cd, data, fixed, gaps, new_counts, open_counts, summary):
    cd.options.write_figures(args, {
        "notebook": "security-dashboard",
        "scans": data.scans.height,
        "sightings": data.sightings.height,
        "new_by_severity": new_counts,
        "open_by_severity": open_counts,
        "open": aged.height,
        "probably_fixed": fixed["key"].to_list(),
        "scan_gaps": gaps.to_dicts(),
        "recommendations": advice,
        "llm_summary": summary,
    })
    return


if __name__ == "__main__":
    app.run()
