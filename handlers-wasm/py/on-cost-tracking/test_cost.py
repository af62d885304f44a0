"""Native unit tests of the pricing logic: `python3 -m unittest` here."""

import json
import unittest

import cost


class Bucket:
    """The `cost` bucket as the host shows it to one handler: counters as
    decimal text, values as bytes (app.py's Bucket over wasi:keyvalue)."""

    def __init__(self):
        self.values = {}

    def get(self, key):
        return self.values.get(key)

    def set(self, key, value):
        assert isinstance(value, bytes), value
        self.values[key] = value

    def increment(self, key, delta):
        assert isinstance(delta, int) and delta >= 0, delta
        n = int(self.values.get(key, b"0")) + delta
        self.values[key] = str(n).encode()
        return n

    def counter(self, key):
        return int(self.values.get(key, b"0"))


def event(n, tokens=1500, model="claude-sonnet", master="security-master", day="2025-12-01", **extra):
    payload = {"worker_id": "worker-001", "task_id": f"task-{n}", "tokens_used": tokens, **extra}
    if model is not None:
        payload["model"] = model
    return {"event_id": f"evt_20251201_120000_{n:06d}", "event_type": "worker.completed",
            "timestamp": f"{day}T12:00:00-06:00", "source": "worker-001", "master": master, "payload": payload}


SETTINGS = {"prices": cost.parse_prices('{"claude-sonnet": 3.0, "big": {"input": 15, "output": 75}}'),
            "default_model": None, "daily_budget_usd": None}


class Account(unittest.TestCase):
    def test_prices_tokens_per_model_and_master_in_micro_dollars(self):
        t = Bucket()
        ledger, follow_ups, summary = cost.account(t, event(1), SETTINGS)
        self.assertEqual(ledger["cost_usd"], 0.0045)
        self.assertEqual(follow_ups, [])
        self.assertEqual(
            {k: t.counter(f"model/claude-sonnet/{k}") for k in ("events", "tokens", "cost_micro_usd")},
            {"events": 1, "tokens": 1500, "cost_micro_usd": 4500})
        self.assertEqual(t.counter("master/security-master/tokens"), 1500)
        self.assertEqual(t.counter("day/2025-12-01/cost_micro_usd"), 4500)
        self.assertIn("1500 tokens on claude-sonnet", summary)
        for n in range(2, 1002):
            cost.account(t, event(n, tokens=1), SETTINGS)
        self.assertEqual(t.counter("cost_micro_usd"), 4500 + 1000 * 3, "no float drift")
        self.assertEqual((t.counter("events"), t.counter("tokens")), (1001, 2500))
        self.assertEqual(t.get("cost_micro_usd"), b"7500", "counters are decimal text, as the host's increment stores them")

    def test_the_keys_are_the_documented_ones(self):
        t = Bucket()
        cost.account(t, event(1, model="mystery"), dict(SETTINGS, daily_budget_usd=0.0))
        cost.account(t, event(2), dict(SETTINGS, daily_budget_usd=0.0))
        per = [f"{p}/{k}" for p in ("model/mystery", "model/claude-sonnet", "master/security-master", "day/2025-12-01")
               for k in ("events", "tokens", "cost_micro_usd")]
        self.assertEqual(sorted(t.values), sorted(["events", "tokens", "cost_micro_usd", "unpriced_tokens",
                                                   "alerted/2025-12-01", *per]))

    def test_split_prices_use_input_and_output_tokens(self):
        t = Bucket()
        ledger, _, _ = cost.account(t, event(1, tokens=None, model="big", input_tokens=1000, output_tokens=100), SETTINGS)
        self.assertEqual((ledger["tokens"], ledger["cost_usd"]), (1100, 0.0225))

    def test_unknown_models_are_counted_unpriced_or_fall_back_to_default(self):
        t = Bucket()
        ledger, _, summary = cost.account(t, event(1, model="mystery"), SETTINGS)
        self.assertIsNone(ledger["cost_usd"])
        self.assertEqual((t.counter("unpriced_tokens"), t.counter("model/mystery/cost_micro_usd")), (1500, 0))
        self.assertIn("unpriced", summary)
        with_default = dict(SETTINGS, prices={"default": 1.0})
        ledger, _, _ = cost.account(Bucket(), event(2, model=None), with_default)
        self.assertEqual((ledger["model"], ledger["cost_usd"]), ("unknown", 0.0015))

    def test_the_daily_budget_alerts_once_per_day(self):
        s = dict(SETTINGS, daily_budget_usd=0.005)
        t = Bucket()
        self.assertEqual(cost.account(t, event(1), s)[1], [])
        _, follow_ups, summary = cost.account(t, event(2), s)
        self.assertEqual(len(follow_ups), 1)
        alert = follow_ups[0]
        self.assertEqual(alert["event_type"], "system.health_alert")
        self.assertEqual(alert["payload"]["component"], "cost")
        self.assertEqual(alert["payload"]["cost_usd"], 0.009)
        self.assertIn("alert raised", summary)
        self.assertEqual(cost.account(t, event(3), s)[1], [], "one alert per day")
        self.assertEqual(len(cost.account(t, event(4, day="2025-12-02", tokens=5000), s)[1]), 1, "a new day alerts again")
        self.assertEqual((t.get("alerted/2025-12-01"), t.get("alerted/2025-12-02")), (b"true", b"true"))

    def test_bad_input_is_refused_with_the_field(self):
        for bad in (-1, "many", 1.5, True):
            with self.assertRaisesRegex(cost.BadEvent, "payload.tokens_used must be a non-negative integer"):
                cost.account(Bucket(), event(1, tokens=bad), SETTINGS)
        with self.assertRaisesRegex(cost.BadEvent, "setting prices.x"):
            cost.parse_prices('{"x": "cheap"}')
        for model, message in ((7, "payload.model must be a string"), ("m" * 257, "payload.model must be at most 256 bytes")):
            t = Bucket()
            with self.assertRaisesRegex(cost.BadEvent, message):
                cost.account(t, event(1, model=model), SETTINGS)
            self.assertEqual(t.values, {}, "a refused event counts nothing")

    def test_events_without_usage_are_skipped(self):
        t = Bucket()
        ledger, _, summary = cost.account(t, event(1, tokens=None), SETTINGS)
        self.assertIsNone(ledger)
        self.assertEqual(t.values, {})
        self.assertIn("no token usage", summary)



class Shapes(unittest.TestCase):
    """The usage shapes producers send: each accepted one, each refusal."""

    def priced(self, **payload):
        e = event(1, tokens=None, model="big", **payload)
        ledger, _, _ = cost.account(Bucket(), e, SETTINGS)
        return (ledger["input_tokens"], ledger["output_tokens"], ledger["tokens"])

    def test_tokens_used_may_be_a_numeric_string_or_an_integral_float(self):
        self.assertEqual(self.priced(tokens_used="1500"), (None, None, 1500))
        self.assertEqual(self.priced(tokens_used=" 1500 "), (None, None, 1500))
        self.assertEqual(self.priced(tokens_used=1500.0), (None, None, 1500))

    def test_usage_in_anthropic_and_openai_spellings(self):
        self.assertEqual(self.priced(usage={"input_tokens": 1000, "output_tokens": 100}), (1000, 100, 1100))
        self.assertEqual(self.priced(usage={"prompt_tokens": "1000", "completion_tokens": 100}), (1000, 100, 1100))
        self.assertEqual(self.priced(usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 20}), (10, 5, 20))
        self.assertEqual(self.priced(tokens_used=50, usage={"input_tokens": 30, "output_tokens": 20}), (30, 20, 50))
        ledger, _, _ = cost.account(Bucket(), event(1, tokens=None, model="big",
                                    usage={"input_tokens": 1000, "output_tokens": 100}), SETTINGS)
        self.assertEqual(ledger["cost_usd"], 0.0225, "split prices apply to usage tokens too")

    def test_other_shapes_are_refused_naming_the_field(self):
        cases = [
            ({"tokens_used": "1.5k"}, "payload.tokens_used must be a non-negative integer or a string of digits"),
            ({"tokens_used": [1500]}, "payload.tokens_used"),
            ({"tokens_used": "-5"}, "payload.tokens_used"),
            ({"usage": 1500}, "payload.usage must be an object"),
            ({"usage": "lots"}, "payload.usage must be an object"),
            ({"usage": {"prompt_tokens": -1}}, "payload.usage.prompt_tokens"),
            ({"usage": {"completion_tokens": True}}, "payload.usage.completion_tokens"),
            ({"usage": {"total_tokens": {"n": 1}}}, "payload.usage.total_tokens"),
        ]
        for payload, message in cases:
            with self.subTest(payload=payload), self.assertRaisesRegex(cost.BadEvent, message):
                cost.account(Bucket(), event(1, tokens=None, **payload), SETTINGS)

    def test_a_bad_setting_is_not_the_events_fault(self):
        with self.assertRaises(cost.BadSetting):
            cost.parse_prices('{"x": "cheap"}')
        with self.assertRaises(cost.BadSetting):
            cost.parse_prices("[1]")

    def test_ignored_fields_are_named(self):
        payload = event(1, usage={"input_tokens": 1, "cache_read_input_tokens": 5}, repo="r", recommendation="x")["payload"]
        self.assertEqual(cost.ignored_fields(payload), ["recommendation", "repo", "usage.cache_read_input_tokens"])
        known = {"worker_id": "w", "task_id": "t", "status": "completed", "duration_ms": 1, "tokens_used": 1,
                 "input_tokens": 1, "output_tokens": 1, "model": "m", "error": "e", "usage": {"total_tokens": 1}}
        self.assertEqual(cost.ignored_fields(known), [])

    def test_the_contract_is_a_json_schema_of_every_field_read(self):
        self.assertEqual(cost.SCHEMA["type"], "object")
        self.assertEqual(set(cost.SCHEMA["properties"]), cost.USED)
        json.dumps(cost.SCHEMA)


if __name__ == "__main__":
    unittest.main()
