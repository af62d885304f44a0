"""Token cost accounting: the pure logic of the on-cost-tracking handler.

Nothing here touches WASI or the host, so it runs under plain CPython too
(`python3 -m unittest` in this folder); app.py connects it to the world.

Money is counted in integer micro-dollars: a price is USD per million
tokens, so `tokens * price` is already micro-dollars, and no float error
accumulates over millions of events.

The totals are counters in the key-value bucket `cost`, which `account`
reaches through a small bucket object (app.py wraps `wasi:keyvalue`; the
tests a dict). Keys: `events`, `tokens`, `cost_micro_usd`,
`unpriced_tokens`; the same three per model, master and day,
`model/<name>/events|tokens|cost_micro_usd` (and `master/`, `day/`); and
`alerted/<day>` once that day's budget alert is raised. Counters are added
as deltas, so events handled at once never lose one; the host commits them
with the event, so a redelivered event is counted once.
"""

import json

#: The longest model or master name used in a key (keys are at most 1024 bytes).
MAX_NAME = 256


class BadEvent(Exception):
    """The event cannot be priced; the message says which field and why.
    Delivering it again cannot help: app.py refuses it as not retryable."""


class BadSetting(BadEvent):
    """A setting is wrong: the event is fine, and a retry after the setting
    is fixed can succeed (app.py reports it as retryable)."""


#: Payload fields the handler reads.
USED = {"worker_id", "task_id", "model", "tokens_used", "input_tokens", "output_tokens", "usage"}
#: Worker-event fields it knows and has no use for: not warned about.
UNUSED = {"status", "duration_ms", "error", "error_message", "result"}
#: Keys of a `usage` object it reads (Anthropic and OpenAI spellings).
USAGE_KEYS = {"input_tokens", "output_tokens", "prompt_tokens", "completion_tokens", "total_tokens"}

_COUNT = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^\\s*[0-9]+\\s*$"}]}

#: The payload contract of worker.completed and worker.failed, published by
#: describe() (`cortex handlers list --verbose` shows it).
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "worker event with token usage",
    "description": "Token usage as tokens_used, input_tokens/output_tokens, or a usage object "
                   "({input_tokens, output_tokens} or {prompt_tokens, completion_tokens}); "
                   "a count may be a numeric string. Without any, the event is skipped.",
    "type": "object",
    "properties": {
        "worker_id": {"type": "string"},
        "task_id": {"type": "string"},
        "model": {"type": "string"},
        "tokens_used": _COUNT,
        "input_tokens": _COUNT,
        "output_tokens": _COUNT,
        "usage": {
            "type": "object",
            "properties": {k: _COUNT for k in sorted(USAGE_KEYS)},
        },
    },
}


def _count(value, field):
    """A token count: a non-negative integer (1500 or 1500.0) or a string of
    digits ("1500"), as producers send them."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadEvent(
            f"payload.{field} must be a non-negative integer or a string of digits, found {json.dumps(value)[:200]}"
        )
    return value


def _first(*pairs):
    """The first count present among (value, field) pairs."""
    for value, field in pairs:
        n = _count(value, field)
        if n is not None:
            return n
    return None


def usage(payload):
    """(input, output, total) tokens of a worker event; None where absent.

    Top-level input_tokens/output_tokens/tokens_used come first, then a
    `usage` object in either spelling ({input_tokens, output_tokens} or
    {prompt_tokens, completion_tokens}, with an optional total_tokens)."""
    u = payload.get("usage")
    if u is None:
        u = {}
    if not isinstance(u, dict):
        raise BadEvent(
            "payload.usage must be an object such as {\"input_tokens\": 10, \"output_tokens\": 2}, "
            f"found {json.dumps(u)[:200]}"
        )
    inp = _first((payload.get("input_tokens"), "input_tokens"), (u.get("input_tokens"), "usage.input_tokens"),
                 (u.get("prompt_tokens"), "usage.prompt_tokens"))
    out = _first((payload.get("output_tokens"), "output_tokens"), (u.get("output_tokens"), "usage.output_tokens"),
                 (u.get("completion_tokens"), "usage.completion_tokens"))
    total = _first((payload.get("tokens_used"), "tokens_used"), (u.get("total_tokens"), "usage.total_tokens"))
    if total is None and (inp is not None or out is not None):
        total = (inp or 0) + (out or 0)
    return inp, out, total


def ignored_fields(payload):
    """The payload fields (and `usage` keys) this handler neither reads nor
    knows to be irrelevant, sorted: app.py warns naming them, so a renamed
    field is noticed rather than dropped silently."""
    out = [k for k in payload if k not in USED and k not in UNUSED]
    u = payload.get("usage")
    if isinstance(u, dict):
        out += [f"usage.{k}" for k in u if k not in USAGE_KEYS]
    return sorted(out)


def parse_prices(text):
    """The `prices` setting: a JSON object of model -> USD per million tokens,
    either one number or {"input": x, "output": y}."""
    if text is None:
        return {}
    try:
        prices = json.loads(text)
    except ValueError as e:
        raise BadSetting(f"setting prices is not a table of model = price: {e}") from None
    if not isinstance(prices, dict):
        raise BadSetting("setting prices must be a table of model = USD per million tokens")
    for model, price in prices.items():
        ok = isinstance(price, (int, float)) and not isinstance(price, bool) and price >= 0
        if isinstance(price, dict):
            ok = set(price) <= {"input", "output"} and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in price.values()
            )
        if not ok:
            raise BadSetting(
                f"setting prices.{model}: expected a non-negative number or {{input = x, output = y}}, "
                f"found {json.dumps(price)}"
            )
    return prices


def price_micros(price, inp, out, total):
    """Cost in micro-dollars, or None when the price is unknown."""
    if price is None:
        return None
    if isinstance(price, dict):
        if inp is None and out is None:
            # Only a total is known: price it all as input, the cheaper side.
            return round(total * price.get("input", 0))
        return round((inp or 0) * price.get("input", 0) + (out or 0) * price.get("output", 0))
    return round(total * price)


def _add(bucket, prefix, tokens, micros):
    """Counts one event under `prefix` (`model/<name>/`, or "" for the
    whole); returns the new cost_micro_usd."""
    bucket.increment(f"{prefix}events", 1)
    bucket.increment(f"{prefix}tokens", tokens)
    return bucket.increment(f"{prefix}cost_micro_usd", micros or 0)


def _name(value, field):
    """A model or master name as a key segment."""
    if not isinstance(value, str):
        raise BadEvent(f"{field} must be a string, found {json.dumps(value)[:200]}")
    if len(value.encode()) > MAX_NAME or "\0" in value:
        raise BadEvent(f"{field} must be at most {MAX_NAME} bytes without NUL, found {json.dumps(value[:80])}...")
    return value


def usd(micros):
    return round(micros / 1_000_000, 6)


def money(dollars):
    """$12.50, or $0.0045 for amounts under a dollar."""
    return f"${dollars:.2f}" if dollars >= 1 else f"${dollars:.4f}"


def account(bucket, event, settings):
    """Adds one worker event to the counters in `bucket`.

    `bucket` has increment(key, delta) -> new value, get(key) -> bytes or
    None and set(key, bytes). `event` is a dict with event_id, event_type,
    timestamp, source, master and payload; `settings` has prices (parsed),
    default_model and daily_budget_usd. Returns (ledger_line or None,
    follow_ups, summary).
    """
    payload = event["payload"]
    inp, out, total = usage(payload)
    if total is None:
        return None, [], f"{event['event_type']} from {event['source']} reports no token usage"

    model = _name(payload.get("model") or settings.get("default_model") or "unknown", "payload.model")
    master = _name(event.get("master") or "unassigned", "metadata.master")
    prices = settings["prices"]
    price = prices.get(model, prices.get("default"))
    micros = price_micros(price, inp, out, total)
    day = event["timestamp"][:10]

    _add(bucket, "", total, micros)
    if micros is None:
        bucket.increment("unpriced_tokens", total)
    _add(bucket, f"model/{model}/", total, micros)
    _add(bucket, f"master/{master}/", total, micros)
    spent = _add(bucket, f"day/{day}/", total, micros)

    ledger = {
        "event_id": event["event_id"],
        "timestamp": event["timestamp"],
        "worker_id": payload.get("worker_id", event["source"]),
        "task_id": payload.get("task_id"),
        "status": event["event_type"].split(".")[-1],
        "model": model,
        "master": master,
        "input_tokens": inp,
        "output_tokens": out,
        "tokens": total,
        "cost_usd": None if micros is None else usd(micros),
    }

    follow_ups = []
    budget = settings.get("daily_budget_usd")
    # Read, then written: the host checks `alerted/<day>` at commit, so of
    # two events crossing the budget at once only one raises the alert.
    if budget is not None and spent > budget * 1_000_000 and bucket.get(f"alerted/{day}") is None:
        bucket.set(f"alerted/{day}", b"true")
        follow_ups.append({
            "event_type": "system.health_alert",
            "priority": "high",
            "payload": {
                "severity": "high",
                "component": "cost",
                "message": f"token spend on {day} is {money(usd(spent))}, over the daily budget of {money(budget)}",
                "day": day,
                "cost_usd": usd(spent),
                "budget_usd": budget,
                "source_event": event["event_id"],
            },
        })

    cost = "unpriced" if micros is None else money(usd(micros))
    summary = f"{total} tokens on {model} for {master}: {cost} (day {day}: {money(usd(spent))})"
    if follow_ups:
        summary += "; over the daily budget, alert raised"
    return ledger, follow_ups, summary
