"""Worker performance: the runs of a coordination root's workers — tokens,
run-time percentiles, failure rates and outliers per worker and per model,
heartbeat timeouts and recurring errors — ending in computed
recommendations.

    marimo run analysis/worker-performance.py -- --root coordination --days 7
    python analysis/worker-performance.py --root R --figures out.json   # headless

The analysis lives in `cortexdata.workers` (unit-tested); this notebook
only lays it out.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="Cortex: worker performance")


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
    runs = data.runs
    failed = runs.filter(runs["status"] == "failed").height
    mo.md(f"""
    # Worker performance

    Root `{data.root.path}`, {data.period.label}: **{runs.height}** finished runs by
    {runs["worker_id"].n_unique()} workers on {runs["model"].n_unique()} models, **{failed}** failed
    ({failed / max(runs.height, 1):.1%}), **{runs["tokens"].sum() or 0:,}** tokens.
    """)
    return data, runs


@app.cell
def _(cd, mo, runs):
    per_worker = cd.workers.stats(runs)
    mo.vstack([
        mo.md("## Per worker"),
        mo.ui.altair_chart(cd.charts.run_time(per_worker)),
        mo.ui.altair_chart(cd.charts.failure_rate(per_worker)),
        mo.ui.table(cd.charts.rows(per_worker), selection=None),
    ])
    return (per_worker,)


@app.cell
def _(cd, mo, runs):
    per_model = cd.workers.stats(runs, "model")
    mo.vstack([
        mo.md("## Per model"),
        mo.ui.altair_chart(cd.charts.run_time(per_model, "model")),
        mo.ui.table(cd.charts.rows(per_model), selection=None),
        mo.md("## Per day"),
        mo.ui.altair_chart(cd.charts.runs_per_day(cd.workers.by_day(runs))),
    ])
    return (per_model,)


@app.cell
def _(cd, data, mo, runs):
    flagged = cd.workers.outliers(runs)
    errors = cd.workers.recurring_errors(data.failures)
    mo.vstack([
        mo.md(f"""## Outliers
    Slow: p95 run time over {cd.workers.SLOW_FACTOR}x the median p95 of the master's workers.
    Failing: failure rate over {cd.workers.FAIL_FACTOR}x the fleet's, with {cd.workers.FAIL_MIN}+ failures."""),
        mo.ui.table(cd.charts.rows(flagged), selection=None),
        mo.md("## Recurring errors (numbers masked)"),
        mo.ui.table(cd.charts.rows(errors), selection=None),
        mo.md("## Liveness (the heartbeat handler's state, its `heartbeats` bucket)"),
        mo.ui.table(cd.charts.rows(cd.workers.liveness(data.root.bucket("heartbeats"), data.period.end)),
                    selection=None),
    ])
    return errors, flagged


@app.cell
def _(cd, data, mo):
    advice = cd.workers.recommendations(data)
    summary = cd.llm.summarize("Worker performance", advice)
    mo.md("## Recommendations\n\n" + "\n".join(f"- {a}" for a in advice)
          + (f"\n\n### Summary (language model)\n\n{summary}" if summary else ""))
    return advice, summary


@app.cell
def _(advice, args, cd, data, flagged, per_model, per_worker, summary):
    cd.options.write_figures(args, {
        "notebook": "worker-performance",
        "runs": per_worker["runs"].sum(),
        "per_worker": per_worker.to_dicts(),
        "per_model": per_model.to_dicts(),
        "outliers": flagged.to_dicts(),
        "heartbeat_timeouts": data.failures.filter(data.failures["kind"] == "heartbeat")["worker_id"].to_list(),
        "recommendations": advice,
        "llm_summary": summary,
    })
    return


if __name__ == "__main__":
    app.run()
