//! Property tests (the fuzzing of the reliability issue, run by `make fuzz`
//! with many more cases): the validator never panics, and what it accepts
//! survives a round trip.
use super::*;
use proptest::prelude::*;
use serde_json::json;

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("event_id".to_string()),
        Just("event_type".to_string()),
        Just("timestamp".to_string()),
        Just("source".to_string()),
        Just("correlation_id".to_string()),
        Just("metadata".to_string()),
        Just("payload".to_string()),
        Just("priority".to_string()),
        Just("tags".to_string()),
        Just("master".to_string()),
        "[a-z_]{0,12}",
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        "evt_[0-9]{8}_[0-9]{6}_[a-z0-9]{4,14}".prop_map(Value::String),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})?"
            .prop_map(Value::String),
        prop::sample::select(CATALOGUE.map(|(t, _)| t).to_vec()).prop_map(|t| json!(t)),
        prop::sample::select(vec!["critical", "high", "medium", "low", "urgent"]).prop_map(|p| json!(p)),
    ];
    leaf.prop_recursive(3, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn good() -> Value {
    json!({
        "event_id": "evt_20251201_120000_abc123",
        "event_type": "worker.completed",
        "timestamp": "2025-12-01T12:00:00-06:00",
        "source": "w",
        "metadata": {"priority": "high", "tags": ["a"]},
        "payload": {"n": 1}
    })
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        let _ = Validator::default().parse(&text);
    }

    #[test]
    fn arbitrary_json_is_judged_consistently(v in value()) {
        let validator = Validator::default();
        let problems = validator.problems(&v);
        let verdict = validator.validate(v.clone());
        // No problems means valid; problems mean each names a field and says why.
        prop_assert_eq!(problems.is_empty(), verdict.is_ok());
        for p in &problems {
            prop_assert!(!p.path.is_empty() && !p.message.is_empty());
        }
        if let Ok(event) = verdict {
            let again = validator.parse(&event.to_json()).expect("a valid event parses again");
            prop_assert_eq!(again, event);
        }
    }

    #[test]
    fn one_bad_field_is_caught_and_named(field in key(), v in value()) {
        let mut doc = good();
        doc[field.as_str()] = v;
        let validator = Validator::default();
        match validator.validate(doc.clone()) {
            Ok(e) => prop_assert_eq!(validator.parse(&e.to_json()).ok(), Some(e)),
            Err(Invalid(problems)) => prop_assert!(!problems.is_empty()),
        }
    }
}
