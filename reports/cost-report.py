"""Cost report: token spend from the Python cost handler's ledger
(`state/cost/ledger/*.jsonl`) — by day, model, master and worker, days over
budget, and where a cheaper model would save — with its all-time totals
(the `cost` bucket's counters in `kv/state.db`) for reference.
"""

import cortexdata as cd
import polars as pl

TITLE = "Cortex cost report"


def build(data: cd.Dataset, page) -> None:
    ledger = data.ledger
    settings = cd.cost.settings(data.root)
    total = float(ledger["cost_usd"].sum() or 0)
    tokens = int(ledger["tokens"].sum() or 0)
    budget = settings.get("daily_budget_usd")
    daily = cd.cost.daily_totals(ledger)
    over = daily.filter(pl.col("cost_usd") > budget) if budget is not None else daily.clear()
    page.heading("Spend")
    page.figure("cost_usd", round(total, 6), "token cost (USD)", shown=f"${total:,.2f}")
    page.figure("tokens", tokens, "tokens priced")
    page.figure("priced_events", ledger.height, "priced worker events")
    page.figure("cost_per_event", round(total / ledger.height, 6) if ledger.height else 0, "USD per event",
                shown=f"${total / ledger.height:,.4f}" if ledger.height else "-")
    page.figure("days_over_budget", over.height,
                f"days over the ${budget:,.2f} budget" if budget is not None else "days over budget (none set)",
                tone="bad" if over.height else "good")
    micros = data.root.bucket("cost").get("cost_micro_usd")
    if isinstance(micros, int):
        page.figure("all_time_cost_usd", micros / 1e6, "all-time cost (the cost bucket)",
                    shown=f"${micros / 1e6:,.2f}")

    page.heading("Optimization opportunities")
    advice = cd.cost.recommendations(data)
    page.bullets(advice)
    summary = cd.llm.summarize("Token cost", advice)
    if summary:
        page.para("Language-model summary: " + summary)

    page.heading("Cost trends")
    if not ledger.is_empty():
        page.chart(cd.charts.svg(cd.charts.cost_per_day(cd.cost.by_day(ledger), budget)))
    page.table(daily, name="daily", empty="No priced events.")

    page.heading("Token usage")
    for key in ("model", "master"):
        spend = cd.cost.spend(ledger, key)
        if not spend.is_empty():
            page.chart(cd.charts.svg(cd.charts.spend_by(spend, key)))
        page.table(spend, name=f"by_{key}")
    page.para("By worker:")
    page.table(cd.cost.spend(ledger, "worker_id"), name="by_worker")
