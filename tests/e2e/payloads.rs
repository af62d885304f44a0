//! The built-in handlers take the payloads producers really send (issue 16
//! item 6): synonyms and numbers as text are handled, an unknown field is
//! named in one warn line, and an unusable payload is refused as not
//! retryable, so it is dead-lettered after one attempt instead of
//! `max_attempts`. Each handler's published JSON Schemas (`src/schema/` in
//! its crate, returned by `describe()`) accept its fixtures and the synonym
//! shapes, checked here with a real validator.

use anyhow::{Context, Result};
use cortex_tests::Root;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// Dispatches and requires that nothing was dead-lettered.
fn handled(root: &Root) -> Result<Value> {
    let s = root.dispatch()?;
    assert_eq!(s["dead_lettered"], 0, "{s}: {:?}", root.dead_letters()?);
    Ok(s)
}

#[test]
fn a_critical_cve_sent_as_cve_id_raises_the_alert() -> Result<()> {
    let root = Root::new()?;
    let id = root.emit(
        "security.vulnerability_found",
        r#"{"cve_id": "CVE-2025-55555", "severity": "critical", "package": "openssl", "target": "api"}"#,
    )?;
    handled(&root)?;
    let alerts = root.archive_records_of("system.health_alert")?;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0]["event"];
    assert_eq!(alert["payload"]["vulnerability"]["id"], "CVE-2025-55555", "{alert}");
    assert_eq!(alert["payload"]["source_event"], id.as_str());
    assert_eq!(alert["metadata"]["priority"], "critical");
    let entry = root.state_value("security", "vuln/CVE-2025-55555|openssl|api")?;
    assert!(entry.is_some_and(|v| v.is_object()), "not registered");
    Ok(())
}

#[test]
fn worker_tokens_as_text_or_usage_are_counted() -> Result<()> {
    let root = Root::new()?;
    root.emit(
        "worker.completed",
        r#"{"worker_id": "w-7", "task_id": "t-1", "tokens_used": "1500", "status": "completed"}"#,
    )?;
    root.emit(
        "worker.completed",
        r#"{"worker_id": "w-7", "task_id": "t-2", "usage": {"input_tokens": 1000, "output_tokens": 234}}"#,
    )?;
    root.emit("worker.completed", r#"{"worker_id": "w-7", "usage": {"prompt_tokens": "10", "completion_tokens": 6}}"#)?;
    handled(&root)?;
    let record = root.state_value("workers", "w-7")?.expect("a record for w-7");
    assert_eq!(record["completed"], 3, "{record}");
    assert_eq!(record["tokens_used"], 1500 + 1234 + 16, "{record}");
    assert_eq!((record["input_tokens"].as_u64(), record["output_tokens"].as_u64()), (Some(1010), Some(240)));

    let completed = root.archive_records_of("task.completed")?;
    let tokens = |task: &str| {
        completed
            .iter()
            .find(|r| r["event"]["payload"]["task_id"] == task)
            .map(|r| r["event"]["payload"]["tokens_used"].clone())
    };
    assert_eq!(tokens("t-1"), Some(json!(1500)), "{completed:?}");
    assert_eq!(tokens("t-2"), Some(json!(1234)), "{completed:?}");
    Ok(())
}

#[test]
fn a_task_failure_with_an_error_object_is_classified_and_retried() -> Result<()> {
    let root = Root::new()?;
    root.emit(
        "task.failed",
        r#"{"task_id": "t-9", "error": {"message": "socket hang up", "code": "ECONNRESET", "type": "NetworkError"}}"#,
    )?;
    handled(&root)?;
    let signature = "networkerror: socket hang up (econnreset)";
    let pattern = root.state_value("failures", &format!("pattern/{signature}"))?.expect("the signature's record");
    assert_eq!(pattern["example"], "NetworkError: socket hang up (ECONNRESET)", "{pattern}");
    let retries = root.archive_records_of("task.created")?;
    assert_eq!(retries.len(), 1, "a network reset is transient: {retries:?}");
    assert_eq!(retries[0]["event"]["payload"]["task_id"], "t-9");
    assert_eq!(retries[0]["event"]["payload"]["attempt"], 2);
    Ok(())
}

#[test]
fn a_cleanup_retention_sent_as_text_is_used() -> Result<()> {
    let root = Root::new()?;
    root.emit("system.cleanup_needed", r#"{"retention_days": "7"}"#)?;
    handled(&root)?;
    assert_eq!(root.read_json("state/cleanup/last-run.json")?["retention_days"], 7);
    root.emit("system.cleanup_needed", r#"{"older_than_days": 3}"#)?;
    handled(&root)?;
    assert_eq!(root.read_json("state/cleanup/last-run.json")?["retention_days"], 3);
    Ok(())
}

#[test]
fn an_unusable_payload_is_dead_lettered_after_one_attempt() -> Result<()> {
    let root = Root::new()?;
    let id = root.emit("security.scan_completed", r#"{"scan_id": "s-1", "findings": "lots"}"#)?;
    let summary = root.dispatch()?;
    assert_eq!(summary["dead_lettered"], 1, "{summary}");
    let dead = root.dead_letters()?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["event"]["event_id"], id.as_str());
    let history = dead[0]["history"].as_array().context("no history")?;
    assert_eq!(history.len(), 1, "refused, not retried: {}", dead[0]);
    let failure = &history[0]["failures"][0];
    assert_eq!(failure["kind"], "refused", "{failure}");
    let message = failure["message"].as_str().unwrap_or("");
    assert!(
        message.contains("payload.findings must be a count, an object of counts per severity or a list"),
        "{failure}"
    );
    assert!(message.contains(r#"got "lots""#), "{failure}");
    assert!(root.state_value("security", "scans")?.is_none(), "a refused scan is not logged");
    Ok(())
}

#[test]
fn an_unknown_field_is_named_in_one_warn_line() -> Result<()> {
    let root = Root::new()?;
    root.emit(
        "security.vulnerability_found",
        r#"{"cve_id": "CVE-2025-1", "severity": "low", "recommendation": "upgrade to 3.0.14 and rotate the keys"}"#,
    )?;
    let out = root.run(&["dispatch"])?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().filter(|l| l.contains("unknown field")).collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(lines[0].to_lowercase().contains("warn"), "{}", lines[0]);
    assert!(
        lines[0].contains("security.vulnerability_found payload: ignored 1 unknown field: recommendation"),
        "{}",
        lines[0]
    );
    assert!(!out.stderr.contains("rotate the keys"), "the value is not logged:\n{}", out.stderr);
    // The event itself was handled.
    assert!(root.state_value("security", "vuln/CVE-2025-1||")?.is_some_and(|v| v.is_object()));
    Ok(())
}

/// A seed-style chain with a synonym: the alert for a vulnerability sent
/// with `cve_id` reaches the JavaScript notifier with the id.
#[test]
fn a_cve_id_alert_reaches_the_notifier() -> Result<()> {
    let root = Root::with_extras()?;
    root.emit(
        "security.vulnerability_found",
        r#"{"cve_id": "CVE-2025-7777", "severity": "CRITICAL", "package": "libxml2", "target": "web"}"#,
    )?;
    handled(&root)?;
    let notes = root.archive_records_of("notification.requested")?;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0]["event"]["payload"]["dedupe_key"], "security:CVE-2025-7777:libxml2:web", "{}", notes[0]);
    Ok(())
}

#[test]
fn handlers_list_verbose_shows_the_contracts() -> Result<()> {
    let root = Root::new()?;
    let out = root.ok(&["handlers", "list", "--verbose"])?;
    for field in ["cve_id", "selected_master", "error_message", "usage", "older_than_days"] {
        assert!(out.contains(field), "{field} is not in the published contracts:\n{out}");
    }
    Ok(())
}

/// One handler's schema files, by event type.
fn schemas(handler: &str) -> Result<Vec<(String, Value)>> {
    let dir = repo().join(format!("handlers-wasm/{handler}/src/schema"));
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("no schemas in {}", dir.display()))? {
        let path = entry?.path();
        let event_type = path.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_string();
        let text = std::fs::read_to_string(&path)?;
        out.push((event_type, serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?));
    }
    Ok(out)
}

#[test]
fn the_published_schemas_accept_the_fixtures_and_the_synonyms_and_not_the_unusable() -> Result<()> {
    let handlers = [
        "on-cleanup-needed",
        "on-learning-pattern",
        "on-routing-decision",
        "on-security-alert",
        "on-task-failure",
        "on-worker-complete",
        "on-worker-heartbeat",
    ];
    // Payloads each type's schema must accept, beyond the fixtures.
    let good: &[(&str, Value)] = &[
        ("security.vulnerability_found", json!({"cve_id": "CVE-1", "severity": "critical"})),
        ("security.vulnerability_found", json!({"vulnerability_id": "V-1", "severity": "Moderate", "repo": "x"})),
        ("security.scan_completed", json!({"findings": 3})),
        ("security.scan_completed", json!({"findings": "3"})),
        ("security.scan_completed", json!({"findings": {"critical": 1, "High": "2"}})),
        ("security.scan_completed", json!({"findings": [{"id": "CVE-1", "severity": "high"}]})),
        ("routing.decision_made", json!({"selected_master": "security-master", "confidence": "0.92"})),
        ("task.failed", json!({"task_id": "t", "error": {"message": "socket hang up", "code": "ECONNRESET"}})),
        ("task.failed", json!({"task_id": "t", "error_message": "boom", "attempt": "2"})),
        ("worker.completed", json!({"tokens_used": "1500"})),
        ("worker.completed", json!({"usage": {"input_tokens": 1, "output_tokens": 2}})),
        ("worker.completed", json!({"usage": {"prompt_tokens": 1, "completion_tokens": 2}})),
        ("system.cleanup_needed", json!({"retention_days": "7"})),
        ("system.cleanup_needed", json!({"older_than_days": 30, "schedule": "daily-cleanup", "tick": "t"})),
    ];
    let bad: &[(&str, Value)] = &[
        ("security.vulnerability_found", json!({"severity": "high"})),
        ("security.scan_completed", json!({"findings": "lots"})),
        ("routing.decision_made", json!({"expert": "x"})),
        ("routing.decision_made", json!({"expert": "x", "confidence": 7})),
        ("task.failed", json!({"task_id": "t"})),
        ("task.failed", json!({"task_id": "t", "error": {"stack": "..."}})),
        ("worker.completed", json!({"tokens_used": "many"})),
        ("system.cleanup_needed", json!({"retention_days": "a week"})),
    ];
    let mut checked = 0;
    for handler in handlers {
        let fixtures_dir = repo().join(format!("handlers-wasm/{handler}/fixtures"));
        let mut fixtures = Vec::new();
        for entry in std::fs::read_dir(&fixtures_dir)? {
            let path = entry?.path();
            let name = path.to_string_lossy().into_owned();
            if name.ends_with(".json") && !name.ends_with(".expect.json") {
                fixtures.push(serde_json::from_str::<Value>(&std::fs::read_to_string(&path)?)?);
            }
        }
        for (event_type, schema) in schemas(handler)? {
            let validator = jsonschema::options()
                .build(&schema)
                .map_err(|e| anyhow::anyhow!("{handler} {event_type}: not a valid schema: {e}"))?;
            assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema", "{handler} {event_type}");
            let from_fixtures =
                fixtures.iter().filter(|f| f["event_type"] == event_type.as_str()).map(|f| &f["payload"]);
            let from_list = good.iter().filter(|(t, _)| *t == event_type).map(|(_, p)| p);
            for payload in from_fixtures.chain(from_list) {
                let errors: Vec<String> = validator.iter_errors(payload).map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "{handler} {event_type} refuses {payload}: {errors:?}");
                checked += 1;
            }
            for (_, payload) in bad.iter().filter(|(t, _)| *t == event_type) {
                assert!(!validator.is_valid(payload), "{handler} {event_type} accepts the unusable {payload}");
                checked += 1;
            }
        }
    }
    // The twelve fixture events, and every listed payload met its type's schema.
    assert_eq!(checked, 12 + good.len() + bad.len(), "a payload matched no schema");
    Ok(())
}
