"""The demo's simulated week: deterministic, valid envelopes inside the
period, the planted patterns present, and the configuration edit that
enables the cost handler."""

from __future__ import annotations

import collections
import datetime as dt
import re
import tomllib

from conftest import REPO

import demo
import simulation

END = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)
ID = re.compile(r"^evt_\d{8}_\d{6}_[a-z0-9]{6,}$")


def test_the_same_plan_gives_the_same_events():
    plan = simulation.Plan(end=END, days=2, tasks_per_day=20)
    assert simulation.simulate(plan) == simulation.simulate(plan)
    assert simulation.simulate(plan) != simulation.simulate(simulation.Plan(end=END, days=2, tasks_per_day=20, seed=1))


def test_events_are_valid_sorted_and_inside_the_period():
    plan = simulation.Plan(end=END, days=3, tasks_per_day=30)
    events = simulation.simulate(plan)
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps)
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == len(ids) and all(ID.match(i) for i in ids)
    for e in events:
        t = dt.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00"))
        assert plan.start <= t < plan.end
        assert e["event_id"][4:19] == t.strftime("%Y%m%d_%H%M%S")
    types = collections.Counter(e["event_type"] for e in events)
    for t in ("task.created", "routing.decision_made", "worker.completed", "worker.failed", "worker.heartbeat",
              "security.scan_completed", "security.vulnerability_found"):
        assert types[t] > 0, t
    percent = [e for e in events if e["event_type"] == "routing.decision_made" and e["payload"]["confidence"] > 1]
    assert len(percent) == 2


def test_configure_enables_the_cost_handler_and_sets_the_heartbeat_threshold():
    default = (REPO / "runtime" / "src" / "default-cortex.toml").read_text()
    plan = simulation.Plan(end=END, heartbeat_minutes=20)
    text, problems = demo.configure(default, plan)
    assert problems == []
    config = tomllib.loads(text)
    cost = config["handlers"]["on-cost-tracking"]
    assert cost["component"] == "handlers/on-cost-tracking.wasm"
    assert cost["settings"]["prices"]["claude-opus"] == simulation.PRICES["claude-opus"]
    assert config["handlers"]["on-worker-heartbeat"]["settings"]["threshold_secs"] == 3000
    again, _ = demo.configure(text, plan)
    assert again == text, "configuring twice changes nothing"
    _, problems = demo.configure("[events]\n", plan)
    assert len(problems) == 2
