"""on-cost-tracking: prices the tokens each worker reports, per model, per
master and per day: totals as counters in the key-value bucket `cost` (keys in
cost.py), and one line per priced event in the daily ledger
/state/cost/ledger/YYYY-MM-DD.jsonl, the file a person and the cost report
read.

Config: `keyvalue = ["cost"]` and the grant `state/cost` read-write. Settings:
`prices` (a table of model = USD per million tokens, or {input, output}),
`default_model`, `daily_budget_usd`.

Errors follow cortex:events@0.2.0: a payload it cannot price is refused as
not retryable (the host dead-letters it at once); a bad setting, a bucket or
ledger it cannot use is retryable. Payload fields it ignores are logged as a
warning, naming them.
"""

import json
import os

import wit_world
from componentize_py_types import Err
from wit_world.imports import atomics, store, types

import cost

STATE = "/state/cost"
BUCKET = "cost"
VERSION = "0.2.0"
EVENTS = ["worker.completed", "worker.failed"]
EMITS = ["system.health_alert"]


def _error(message, retryable):
    return Err(types.HandlerError(message=message, retryable=retryable))


class StateError(Exception):
    """The host refused a key-value call: the bucket is not granted or is
    read-only, a per-invocation limit, the backend. The event is fine, so
    the error is retryable (as a bad setting is)."""


def _kv_error(e, what):
    if isinstance(e.value, store.Error_NoSuchStore):
        why = f"bucket {BUCKET!r} is not granted (add keyvalue = [\"{BUCKET}\"] to [handlers.on-cost-tracking])"
    elif isinstance(e.value, store.Error_AccessDenied):
        why = f"bucket {BUCKET!r} is granted read-only"
    elif isinstance(e.value, store.Error_Other):
        why = e.value.value
    else:
        why = type(e.value).__name__
    return StateError(f"cannot {what}: {why}")


class Bucket:
    """The `cost` bucket through wasi:keyvalue (store, atomics), in the shape
    cost.account uses. The host commits the writes with the event."""

    def __init__(self):
        try:
            self.bucket = store.open(BUCKET)
        except Err as e:
            raise _kv_error(e, f"open bucket {BUCKET!r}") from None

    def get(self, key):
        try:
            return self.bucket.get(key)
        except Err as e:
            raise _kv_error(e, f"get {BUCKET}/{key}") from None

    def set(self, key, value):
        try:
            self.bucket.set(key, value)
        except Err as e:
            raise _kv_error(e, f"set {BUCKET}/{key}") from None

    def increment(self, key, delta):
        try:
            return atomics.increment(self.bucket, key, delta)
        except Err as e:
            raise _kv_error(e, f"increment {BUCKET}/{key}") from None


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
            ledger, follow_ups, summary = cost.account(Bucket(), {
                "event_id": event.event_id,
                "event_type": event.event_type,
                "timestamp": event.timestamp,
                "source": event.source,
                "master": event.master,
                "payload": payload,
            }, settings)
        except (cost.BadSetting, StateError) as e:
            raise _error(str(e), retryable=True)
        except cost.BadEvent as e:
            raise _error(str(e), retryable=False)
        except OSError as e:
            raise _error(f"cannot use {STATE} (is state/cost granted read-write?): {e}", retryable=True)
        if ledger is None:
            return types.Outcome(summary=summary)
        # The counters are committed with the event, the ledger line is not: a
        # crash after this append and before the commit means a redelivery
        # appends it again, so ledger readers keep one line per event id.
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
        if ledger["cost_usd"] is None:
            wit_world.log(types.Level.WARN, f"no price for model {ledger['model']}: add it to prices")
        return types.Outcome(summary=summary)
