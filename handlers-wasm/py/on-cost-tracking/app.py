"""on-cost-tracking: prices the tokens each worker reports, per model and per
master, into /state/cost, the data the cost report reads.

Grant: `state/cost` read-write. Settings: `prices` (a table of model = USD per
million tokens, or {input, output}), `default_model`, `daily_budget_usd`.

Errors follow cortex:events@0.2.0: a payload it cannot price is refused as
not retryable (the host dead-letters it at once); a bad setting or a state
file it cannot use is retryable. Payload fields it ignores are logged as a
warning, naming them.
"""

import json
import os

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

import cost

STATE = "/state/cost"
VERSION = "0.2.0"
EVENTS = ["worker.completed", "worker.failed"]
EMITS = ["system.health_alert"]


def _error(message, retryable):
    return Err(types.HandlerError(message=message, retryable=retryable))


def _load(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def _save(path, value):
    # Whole-file replace: a crash leaves the old file or the new, never half.
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.rename(tmp, path)


def _settings():
    budget = wit_world.config("daily_budget_usd")
    try:
        budget = None if budget is None else float(budget)
    except ValueError:
        raise cost.BadSetting(f"setting daily_budget_usd must be a number, found {budget!r}") from None
    return {
        "prices": cost.parse_prices(wit_world.config("prices")),
        "default_model": wit_world.config("default_model"),
        "daily_budget_usd": budget,
    }


_PRIORITY = {"critical": types.Priority.CRITICAL, "high": types.Priority.HIGH,
             "medium": types.Priority.MEDIUM, "low": types.Priority.LOW}


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.Info:
        schema = json.dumps(cost.SCHEMA, sort_keys=True)
        return types.Info(name="on-cost-tracking", version=VERSION, events=EVENTS, emits=EMITS,
                          contracts=[types.Contract(event_type=t, schema=schema) for t in EVENTS])

    def handle(self, event: types.Event) -> types.Outcome:
        try:
            payload = json.loads(event.payload)
            ignored = cost.ignored_fields(payload)
            if ignored:
                wit_world.log(types.Level.WARN, f"ignored payload fields: {', '.join(ignored)}")
            settings = _settings()
            os.makedirs(f"{STATE}/ledger", exist_ok=True)
            totals = _load(f"{STATE}/totals.json", None) or cost.empty_totals()
            ledger, follow_ups, summary = cost.account(totals, {
                "event_id": event.event_id,
                "event_type": event.event_type,
                "timestamp": event.timestamp,
                "source": event.source,
                "master": event.master,
                "payload": payload,
            }, settings)
        except cost.BadSetting as e:
            raise _error(str(e), retryable=True)
        except cost.BadEvent as e:
            raise _error(str(e), retryable=False)
        except OSError as e:
            raise _error(f"cannot use {STATE} (is state/cost granted read-write?): {e}", retryable=True)
        if ledger is None:
            return types.Outcome(summary=summary)
        # The ledger line first: a crash before totals.json is replaced means a
        # redelivery appends it again, so ledger readers keep one line per id.
        with open(f"{STATE}/ledger/{ledger['timestamp'][:10]}.jsonl", "a") as f:
            f.write(json.dumps(ledger, sort_keys=True) + "\n")
        for follow_up in follow_ups:
            try:
                wit_world.emit(types.NewEvent(
                    event_type=follow_up["event_type"],
                    payload=json.dumps(follow_up["payload"]),
                    source=None, correlation_id=None,
                    priority=_PRIORITY[follow_up["priority"]],
                    master=event.master, tags=["cost"],
                ))
            except Err as e:
                raise _error(f"could not raise the budget alert: {e.value}", retryable=True)
        _save(f"{STATE}/totals.json", totals)
        if ledger["cost_usd"] is None:
            wit_world.log(types.Level.WARN, f"no price for model {ledger['model']}: add it to prices")
        return types.Outcome(summary=summary)
