"""Routing optimization: the MoE routing decisions of a coordination root —
confidence trends per master and expert, drift between the halves of the
period, low-confidence hot spots — ending in computed recommendations.

    marimo run analysis/routing-optimization.py -- --root coordination --days 7
    python analysis/routing-optimization.py --root R --figures out.json   # headless

The analysis lives in `cortexdata.routing` (unit-tested); this notebook
only lays it out.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="Cortex: routing optimization")


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
    decisions = data.decisions
    mo.md(f"""
    # Routing optimization

    Root `{data.root.path}`, {data.period.label}: **{decisions.height}** routing decisions
    by {decisions["master"].n_unique()} masters to {decisions["expert"].n_unique()} experts,
    mean confidence **{decisions["confidence"].mean() or 0:.2f}**.
    """)
    return data, decisions


@app.cell
def _(decisions, mo):
    master = mo.ui.dropdown(options=sorted(decisions["master"].unique().to_list()), label="master (all when empty)")
    return (master,)


@app.cell
def _(cd, decisions, master, mo):
    experts = cd.routing.by_expert(decisions)
    picked = decisions if master.value is None else decisions.filter(decisions["master"] == master.value)
    mo.vstack([
        mo.md("## Confidence per master and expert"),
        master,
        mo.ui.altair_chart(cd.charts.confidence_trend(cd.routing.confidence_by_day(picked))),
        mo.ui.table(cd.charts.rows(experts), selection=None),
    ])
    return (experts,)


@app.cell
def _(cd, data, decisions, mo):
    drift = cd.routing.drift(decisions, data.period)
    mo.vstack([
        mo.md(f"""## Drift
    Mean confidence in each half of the period; a change of {cd.routing.DRIFT_PCT:.0f}% or more with
    {cd.routing.MIN_DECISIONS}+ decisions in each half is reported below."""),
        mo.ui.table(cd.charts.rows(drift), selection=None),
    ])
    return (drift,)


@app.cell
def _(cd, decisions, experts, mo):
    hot = cd.routing.hot_spots(decisions)
    mo.vstack([
        mo.md(f"""## Low-confidence hot spots
    Pairs with {cd.routing.HOT_RATE:.0%}+ of decisions below {cd.routing.LOW}."""),
        mo.ui.altair_chart(cd.charts.low_rate(experts)),
        mo.ui.table(cd.charts.rows(hot), selection=None),
    ])
    return (hot,)


@app.cell
def _(cd, data, mo):
    handler = cd.routing.handler_stats(data.root.bucket("routing"))
    mo.vstack([mo.md("## The routing handler's statistics (all time, its `routing` bucket)"),
               mo.ui.table(cd.charts.rows(handler), selection=None)])
    return


@app.cell
def _(cd, data, mo):
    advice = cd.routing.recommendations(data)
    summary = cd.llm.summarize("Routing optimization", advice)
    mo.md("## Recommendations\n\n" + "\n".join(f"- {a}" for a in advice)
          + (f"\n\n### Summary (language model)\n\n{summary}" if summary else ""))
    return advice, summary


@app.cell
def _(advice, args, cd, decisions, drift, hot, summary):
    cd.options.write_figures(args, {
        "notebook": "routing-optimization",
        "decisions": decisions.height,
        "by_master": cd.routing.by_master(decisions).to_dicts(),
        "drift": drift.to_dicts(),
        "hot_spots": hot.to_dicts(),
        "recommendations": advice,
        "llm_summary": summary,
    })
    return


if __name__ == "__main__":
    app.run()
