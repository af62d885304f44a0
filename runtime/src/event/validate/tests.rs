use super::*;
use serde_json::json;

fn good() -> Value {
    json!({
        "event_id": "evt_20251201_120000_abc123",
        "event_type": "worker.completed",
        "timestamp": "2025-12-01T12:00:00-06:00",
        "source": "worker-implementation-042",
        "correlation_id": "task-security-scan-001",
        "metadata": {"master": "security-master", "priority": "high", "tags": ["production", "critical"]},
        "payload": {"worker_id": "worker-implementation-042", "tokens_used": 12450}
    })
}

#[test]
fn seed_example_is_valid() {
    let e = Validator::default().validate(good()).unwrap();
    assert_eq!(e.priority(), Priority::High);
    assert_eq!(e.metadata.tags, vec!["production", "critical"]);
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let v = json!({"event_id": "x", "timestamp": "2025-12-01T12:00:00", "source": "", "metadata": {"priority": "urgent", "tags": ["a", 3]}, "payload": [], "extra": 1});
    let paths: Vec<String> = Validator::default().problems(&v).into_iter().map(|p| p.path).collect();
    assert_eq!(
        paths,
        ["extra", "event_id", "event_type", "timestamp", "source", "metadata.priority", "metadata.tags[1]", "payload"]
    );
}

#[test]
fn timestamp_needs_an_offset() {
    assert!(check_timestamp("2025-12-01T12:00:00Z").is_ok());
    assert!(check_timestamp("2025-12-01T12:00:00.123+05:30").is_ok());
    assert!(check_timestamp("2025-12-01T12:00:00").unwrap_err().contains("no UTC offset"));
    assert!(check_timestamp("2025-12-01 12:00:00Z").is_err());
    assert!(check_timestamp("2025-02-30T12:00:00Z").is_err());
    assert!(check_timestamp("2025-12-01T12:00:00z").is_err());
    assert!(check_timestamp("2025-12-01T12:00:00.Z").is_err());
    assert!(check_timestamp("2025-12-01T12:00:00+0600").is_err());
    assert!(check_timestamp("2025-12-01T12:00:00.5").unwrap_err().contains("no UTC offset"));
}

#[test]
fn custom_types_need_declaring() {
    let mut v = good();
    v["event_type"] = json!("billing.invoice_paid");
    assert!(Validator::default().validate(v.clone()).is_err());
    let custom = Validator::new(vec!["billing.invoice_paid".into()], DEFAULT_MAX_EVENT_BYTES);
    assert!(custom.validate(v).is_ok());
    assert_eq!(custom.category("billing.invoice_paid"), Some(Category::Custom));
}

#[test]
fn a_text_is_one_document_or_jsonl_with_line_numbers() {
    let v = Validator::default();
    let pretty = serde_json::to_string_pretty(&good()).unwrap();
    assert!(matches!(v.check_text(&pretty), Checked::One(Ok(_))), "a pretty-printed event is one document");
    assert!(matches!(v.check_text(&good().to_string()), Checked::One(Ok(_))), "one line is one document");
    let text = format!("{}\n\n{{\"event_type\": \"task.created\"}}\n{}\n", good(), good());
    let Checked::Lines { total, invalid } = v.check_text(&text) else { panic!("JSONL taken for one document") };
    assert_eq!(total, 3);
    assert_eq!(invalid.iter().map(|(line, _)| *line).collect::<Vec<_>>(), [3], "blank lines are counted");
}

#[test]
fn oversized_events_are_rejected() {
    let mut v = good();
    v["payload"] = json!({"blob": "x".repeat(2000)});
    let small = Validator::new(vec![], 1000);
    assert!(small.validate(v).unwrap_err().to_string().contains("over the 1000 byte limit"));
}

#[test]
fn caused_by_is_checked_and_counts_hops() {
    let mut v = good();
    let e = Validator::default().validate(v.clone()).unwrap();
    assert_eq!(e.hops(), 0);
    v["metadata"]["caused_by"] = json!({"event_id": "evt_20251201_120000_abc123", "handler": "h-1"});
    assert_eq!(Validator::default().validate(v.clone()).unwrap().hops(), 1, "a follow-up from before hops");
    v["metadata"]["caused_by"]["hops"] = json!(7);
    assert_eq!(Validator::default().validate(v.clone()).unwrap().hops(), 7);
    v["metadata"]["caused_by"] = json!({"event_id": "../x", "handler": "a b", "hops": -1});
    let paths: Vec<String> = Validator::default().problems(&v).into_iter().map(|p| p.path).collect();
    assert_eq!(paths, ["metadata.caused_by.event_id", "metadata.caused_by.handler", "metadata.caused_by.hops"]);
    v["metadata"]["caused_by"] = json!("evt");
    assert!(Validator::default().validate(v).is_err());
}

#[test]
fn deep_payloads_are_refused_with_their_depth() {
    let mut deep = json!(1);
    for _ in 0..MAX_NESTING {
        deep = json!([deep]);
    }
    let mut v = good();
    v["payload"] = json!({"ok": deep.clone()});
    let err = Validator::default().validate(v).unwrap_err().to_string();
    assert!(
        err.contains(&format!("payload: nested {} levels deep, over the limit of {MAX_NESTING}", MAX_NESTING + 1)),
        "{err}"
    );
    let mut v = good();
    v["payload"] = json!({"ok": deep[0].clone()});
    let e = Validator::default().validate(v).expect("exactly at the limit is fine");
    // What is accepted can be read back, envelope and all.
    assert!(Validator::default().parse(&e.to_json()).is_ok());
    assert_eq!(nesting(&json!({})), 1);
    assert_eq!(nesting(&json!({"a": [1, {"b": []}]})), 4);
}

#[test]
fn an_empty_correlation_id_is_absent() {
    let mut v = good();
    v["correlation_id"] = json!("");
    assert_eq!(Validator::default().validate(v).unwrap().correlation_id, None);
    let new = NewEvent {
        event_type: "task.failed".into(),
        source: "t".into(),
        correlation_id: Some(String::new()),
        ..Default::default()
    };
    assert!(new.into_value().get("correlation_id").is_none());
}

#[test]
fn built_events_validate() {
    let v = NewEvent { event_type: "task.failed".into(), source: "t".into(), ..Default::default() }.into_value();
    let e = Validator::default().validate(v).unwrap();
    assert_eq!(e.priority(), Priority::Medium);
}
