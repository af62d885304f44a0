"""Token cost: spend by day, model, master and worker, from the Python cost
handler's ledger (`state/cost/ledger/YYYY-MM-DD.jsonl`, one line per priced
worker event) and its totals (the `cost` bucket); prices and the
daily budget from the handler's settings in the root's `cortex.toml`.

Rules behind the recommendations:

* **over budget**: days whose spend passed `daily_budget_usd`;
* **cheaper model**: a master whose spend is mostly on the most expensive
  model, priced again at the next cheaper model's price for the same
  tokens (what switching its routine work would save, at equal tokens);
* **concentration**: a model's share of the cost against its share of runs;
* **failed spend**: tokens paid for on runs that failed.
"""

from __future__ import annotations

import tomllib

import polars as pl

from .load import Dataset, Root


def settings(root: Root) -> dict:
    """The cost handler's settings table (empty when it is not enabled)."""
    try:
        config = tomllib.loads((root.path / "cortex.toml").read_text(encoding="utf-8"))
    except (FileNotFoundError, tomllib.TOMLDecodeError):
        return {}
    return ((config.get("handlers") or {}).get("on-cost-tracking") or {}).get("settings") or {}


def price_of(prices: dict, model: str, input_tokens: int, output_tokens: int) -> float | None:
    """USD for the tokens at the handler's price of `model` (as the handler
    prices them: a number for all tokens, or input/output per million)."""
    price = prices.get(model, prices.get("default"))
    if price is None:
        return None
    if isinstance(price, dict):
        return (input_tokens * price.get("input", 0) + output_tokens * price.get("output", 0)) / 1e6
    return (input_tokens + output_tokens) * price / 1e6


def spend(ledger: pl.DataFrame, by: str | list[str]) -> pl.DataFrame:
    """Cost, tokens and priced events per group, largest spend first."""
    keys = [by] if isinstance(by, str) else list(by)
    return (
        ledger.group_by(keys)
        .agg(cost_usd=pl.col("cost_usd").sum(), tokens=pl.col("tokens").sum(), events=pl.len())
        .sort(["cost_usd", *keys], descending=[True, *[False] * len(keys)])
    )


def by_day(ledger: pl.DataFrame) -> pl.DataFrame:
    return (
        ledger.with_columns(day=pl.col("time").dt.date())
        .group_by("day", "model")
        .agg(cost_usd=pl.col("cost_usd").sum(), tokens=pl.col("tokens").sum())
        .sort("day", "model")
    )


def daily_totals(ledger: pl.DataFrame) -> pl.DataFrame:
    return (
        ledger.with_columns(day=pl.col("time").dt.date())
        .group_by("day")
        .agg(cost_usd=pl.col("cost_usd").sum(), tokens=pl.col("tokens").sum(), events=pl.len())
        .sort("day")
    )


def cheaper_model(ledger: pl.DataFrame, prices: dict) -> list[dict]:
    """Per master whose spend is mostly on the priciest model: what its
    tokens on that model would cost on the next cheaper one."""
    models = [m for m in ledger["model"].unique().to_list() if price_of(prices, m, 1_000_000, 0) is not None]
    if len(models) < 2:
        return []
    ranked = sorted(models, key=lambda m: price_of(prices, m, 700_000, 300_000), reverse=True)
    priciest, cheaper = ranked[0], ranked[1]
    out = []
    per = spend(ledger, ["master", "model"])
    for master in sorted(per["master"].unique().to_list()):
        rows = per.filter(pl.col("master") == master)
        total = rows["cost_usd"].sum()
        on = ledger.filter((pl.col("master") == master) & (pl.col("model") == priciest))
        cost_on = on["cost_usd"].sum()
        if total <= 0 or cost_on / total < 0.5:
            continue
        again = sum(price_of(prices, cheaper, r["input_tokens"] or r["tokens"] or 0, r["output_tokens"] or 0) or 0
                    for r in on.iter_rows(named=True))
        out.append({"master": master, "model": priciest, "cheaper": cheaper, "cost_usd": cost_on,
                    "would_cost_usd": again, "saving_usd": cost_on - again, "share": cost_on / total})
    return sorted(out, key=lambda r: -r["saving_usd"])


def recommendations(data: Dataset) -> list[str]:
    """Concrete, computed advice on token spend, largest saving first."""
    ledger = data.ledger
    conf = settings(data.root)
    if ledger.is_empty():
        if not conf:
            return ["The cost handler is not enabled (no [handlers.on-cost-tracking] in cortex.toml): no cost data."]
        return ["No priced worker events in this period."]
    out = []
    total = ledger["cost_usd"].sum()
    budget = conf.get("daily_budget_usd")
    if budget is not None:
        over = daily_totals(ledger).filter(pl.col("cost_usd") > budget)
        if not over.is_empty():
            days = ", ".join(f"{r['day']} (${r['cost_usd']:.2f})" for r in over.iter_rows(named=True))
            out.append(f"{over.height} day(s) over the ${budget:.2f} daily budget: {days}.")
    for r in cheaper_model(ledger, conf.get("prices") or {}):
        out.append(f"{r['master']} spent ${r['cost_usd']:.2f} ({r['share']:.0%} of its spend) on {r['model']}; "
                   f"the same tokens on {r['cheaper']} would cost ${r['would_cost_usd']:.2f}, saving "
                   f"${r['saving_usd']:.2f} this period: route its routine tasks to {r['cheaper']}.")
    models = spend(ledger, "model").with_columns(cost_share=pl.col("cost_usd") / total,
                                                  run_share=pl.col("events") / ledger.height)
    for r in models.iter_rows(named=True):
        if r["cost_share"] > 2 * r["run_share"] and r["cost_share"] > 0.25:
            out.append(f"{r['model']} is {r['run_share']:.0%} of priced runs but {r['cost_share']:.0%} of the cost "
                       f"(${r['cost_usd']:.2f} of ${total:.2f}).")
    failed = ledger.filter(pl.col("status") == "failed")
    if not failed.is_empty():
        out.append(f"Failed runs cost ${failed['cost_usd'].sum():.2f} ({failed['cost_usd'].sum() / total:.1%} of the "
                   f"spend, {failed.height} runs): fewer retries of permanent errors would save part of it.")
    if not out:
        out.append(f"Spend is ${total:.2f} over {ledger.height} priced events, within budget.")
    return out
