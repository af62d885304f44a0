"""{{name}}: a Cortex event handler.

The host calls `handle` once per event, each time in a fresh instance, so
anything to remember goes to a file under a read-write grant (plain open()
on /<dir>). Raise Err to have the event retried (then dead-lettered after
max_attempts).
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

EVENTS = [{{events_py}}]


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.Info:
        return types.Info(name="{{name}}", version="0.1.0", events=EVENTS)

    def handle(self, event: types.Event) -> types.Outcome:
        try:
            payload = json.loads(event.payload)
        except ValueError as e:
            raise Err(f"payload is not JSON: {e}")
        wit_world.log(types.Level.INFO, f"handling {event.event_type} {event.event_id} (attempt {event.attempt})")

        # Optional: pass the event on as another type, set in cortex.toml:
        # [handlers.{{name}}.settings] forward_as = "{{forward_example}}"
        forward_as = wit_world.config("forward_as")
        if forward_as is not None:
            body = {"original_event_id": event.event_id, "original": payload}
            wit_world.emit(types.NewEvent(
                event_type=forward_as, payload=json.dumps(body), source=None, correlation_id=None,
                priority=types.Priority.MEDIUM, master=event.master, tags=[],
            ))
            return types.Outcome(summary=f"forwarded {event.event_id} as {forward_as}")
        return types.Outcome(summary=f"handled {event.event_type} {event.event_id} ({len(payload)} payload fields)")
