"""Bench fixture: the Python counterpart of the Rust `noop` fixture. It
parses the payload and returns, so a dispatch of it measures the cost of a
Python component per event, not the handler's work."""

import json

import wit_world
from wit_world.imports import types


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.Info:
        return types.Info(name="noop-py", version="0.1.0", events=["*"], emits=[], contracts=[])

    def handle(self, event: types.Event) -> types.Outcome:
        payload = json.loads(event.payload)
        return types.Outcome(summary=f"noop {event.event_id} ({len(payload)} fields)")
