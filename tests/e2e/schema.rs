//! The shipped JSON Schema and the validator agree on a corpus of good and
//! bad events.

use anyhow::Result;
use cortex::event::Validator;
use serde_json::{Value, json};

fn corpus() -> Vec<(&'static str, Value)> {
    let base = json!({
        "event_id": "evt_20251201_120000_abc123",
        "event_type": "worker.completed",
        "timestamp": "2025-12-01T12:00:00-06:00",
        "source": "worker-implementation-042",
    });
    let with = |k: &str, v: Value| {
        let mut e = base.clone();
        e[k] = v;
        e
    };
    let without = |k: &str| {
        let mut e = base.clone();
        e.as_object_mut().unwrap().remove(k);
        e
    };
    let mut all = vec![
        ("good: minimal", base.clone()),
        (
            "good: seed example",
            json!({
            "event_id": "evt_20251201_120000_abc123", "event_type": "worker.completed",
            "timestamp": "2025-12-01T12:00:00-06:00", "source": "worker-implementation-042",
            "correlation_id": "task-security-scan-001",
            "metadata": {"master": "security-master", "priority": "high", "tags": ["production", "critical"]},
            "payload": {"worker_id": "worker-implementation-042", "duration_ms": 45230}}),
        ),
        ("good: utc Z", with("timestamp", json!("2025-12-01T18:00:00Z"))),
        ("good: fraction", with("timestamp", json!("2025-12-01T18:00:00.123456+05:30"))),
        ("good: long id", with("event_id", json!("evt_20251201_120000_abcdefghij0123456789"))),
        ("good: metadata extra keys", with("metadata", json!({"priority": "low", "replay": {"count": 2}}))),
        ("good: empty payload", with("payload", json!({}))),
        ("good: empty tags", with("metadata", json!({"tags": []}))),
        ("bad: not an object", json!([1, 2])),
        ("bad: string", json!("evt")),
        ("bad: short id", with("event_id", json!("evt_20251201_120000_abc12"))),
        ("bad: uppercase id", with("event_id", json!("evt_20251201_120000_ABC123"))),
        ("bad: id prefix", with("event_id", json!("event_20251201_120000_abc123"))),
        ("bad: numeric id", with("event_id", json!(12))),
        ("bad: unknown type", with("event_type", json!("worker.exploded"))),
        ("bad: no offset", with("timestamp", json!("2025-12-01T12:00:00"))),
        ("bad: space separator", with("timestamp", json!("2025-12-01 12:00:00Z"))),
        ("bad: impossible date", with("timestamp", json!("2025-02-30T12:00:00Z"))),
        ("bad: compact offset", with("timestamp", json!("2025-12-01T12:00:00+0600"))),
        ("bad: date only", with("timestamp", json!("2025-12-01"))),
        ("bad: empty source", with("source", json!(""))),
        ("bad: blank source", with("source", json!("   "))),
        ("bad: source number", with("source", json!(7))),
        ("bad: correlation number", with("correlation_id", json!(7))),
        ("bad: metadata array", with("metadata", json!([]))),
        ("bad: priority", with("metadata", json!({"priority": "urgent"}))),
        ("bad: tags string", with("metadata", json!({"tags": "a"}))),
        ("bad: tag number", with("metadata", json!({"tags": ["a", 1]}))),
        ("bad: master number", with("metadata", json!({"master": 1}))),
        ("bad: payload array", with("payload", json!([1]))),
        ("bad: payload string", with("payload", json!("x"))),
        ("bad: unknown field", with("evnt_type", json!("x"))),
    ];
    for field in ["event_id", "event_type", "timestamp", "source"] {
        all.push((Box::leak(format!("bad: missing {field}").into_boxed_str()), without(field)));
    }
    for (t, _) in cortex::event::CATALOGUE {
        all.push((Box::leak(format!("good: type {t}").into_boxed_str()), with("event_type", json!(t))));
    }
    all
}

#[test]
fn schema_and_validator_agree() -> Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../runtime/schema/event-schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let schema = jsonschema::options().should_validate_formats(true).build(&schema)?;
    let validator = Validator::default();
    for (label, doc) in corpus() {
        let by_schema = schema.is_valid(&doc);
        let by_validator = validator.problems(&doc).is_empty();
        assert_eq!(by_schema, by_validator, "{label}: schema says {by_schema}, validator says {by_validator}");
        assert_eq!(by_schema, label.starts_with("good"), "{label}: corpus label disagrees");
    }
    Ok(())
}
