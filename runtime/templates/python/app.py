"""{{name}}: a Cortex event handler.

The host calls `handle` once per event, each time in a fresh instance, so
anything to remember goes to a file under a read-write grant (plain open()
on /<dir>). To fail, raise Err(types.HandlerError(message, retryable)):
retryable=True has the event retried (then dead-lettered after
max_attempts), retryable=False dead-letters it at once (a payload no retry
can fix).
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

EVENTS = [{{events_py}}]
# Event types it may emit; `cortex handlers check` compares them with
# [events] custom_types and this handler's emits setting.
EMITS = ["{{forward_example}}"]
# The payload contract of each exact type it handles (a JSON Schema);
# `cortex handlers list --verbose` shows it.
SCHEMA = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"}


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.Info:
        contracts = [types.Contract(event_type=e, schema=json.dumps(SCHEMA)) for e in EVENTS if "*" not in e]
        return types.Info(name="{{name}}", version="0.1.0", events=EVENTS, emits=EMITS, contracts=contracts)

    def handle(self, event: types.Event) -> types.Outcome:
        try:
            payload = json.loads(event.payload)
        except ValueError as e:
            raise Err(types.HandlerError(message=f"payload is not JSON: {e}", retryable=False))
        wit_world.log(types.Level.INFO, f"handling {event.event_type} {event.event_id} (attempt {event.attempt})")

        # Optional: pass the event on as another type, set in cortex.toml:
        # [handlers.{{name}}.settings] forward_as = "{{forward_example}}"
        forward_as = wit_world.config("forward_as")
        if forward_as is not None:
            body = {"original_event_id": event.event_id, "original": payload}
            try:
                wit_world.emit(types.NewEvent(
                    event_type=forward_as, payload=json.dumps(body), source=None, correlation_id=None,
                    priority=types.Priority.MEDIUM, master=event.master, tags=[],
                ))
            except Err as e:
                raise Err(types.HandlerError(message=f"could not forward: {e.value}", retryable=True))
            return types.Outcome(summary=f"forwarded {event.event_id} as {forward_as}")
        return types.Outcome(summary=f"handled {event.event_type} {event.event_id} ({len(payload)} payload fields)")
