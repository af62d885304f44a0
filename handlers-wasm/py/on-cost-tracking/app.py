"""on-cost-tracking: prices the tokens each worker reports, per model and per
master, into /state/cost, the data the cost report reads.

Grant: `state/cost` read-write. Settings: `prices` (a table of model = USD per
million tokens, or {input, output}), `default_model`, `daily_budget_usd`.
"""

import json
import os

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

import cost

STATE = "/state/cost"
VERSION = "0.1.0"
EVENTS = ["worker.completed", "worker.failed"]


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
        raise cost.BadEvent(f"setting daily_budget_usd must be a number, found {budget!r}") from None
    return {
        "prices": cost.parse_prices(wit_world.config("prices")),
        "default_model": wit_world.config("default_model"),
        "daily_budget_usd": budget,
    }


_PRIORITY = {"critical": types.Priority.CRITICAL, "high": types.Priority.HIGH,
             "medium": types.Priority.MEDIUM, "low": types.Priority.LOW}


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.Info:
        return types.Info(name="on-cost-tracking", version=VERSION, events=EVENTS)

    def handle(self, event: types.Event) -> types.Outcome:
        try:
            payload = json.loads(event.payload)
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
        except cost.BadEvent as e:
            raise Err(str(e))
        except OSError as e:
            raise Err(f"cannot use {STATE} (is state/cost granted read-write?): {e}")
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
                raise Err(f"could not raise the budget alert: {e.value}")
        _save(f"{STATE}/totals.json", totals)
        if ledger["cost_usd"] is None:
            wit_world.log(types.Level.WARN, f"no price for model {ledger['model']}: add it to prices")
        return types.Outcome(summary=summary)
