//! The seven built-in handlers, as `cortex init` configures them, through
//! `cortex dispatch`: their state (files, and key-value buckets) and the
//! events they emit.

use anyhow::{Context, Result};
use cortex_tests::{Root, event};
use serde_json::{Value, json};

// Handlers judge time windows by event time, so every event here has an
// explicit timestamp.

/// The events (not the archive records around them) of one type, in
/// archive order.
fn archived_events_of(root: &Root, event_type: &str) -> Result<Vec<Value>> {
    Ok(root.archive_records_of(event_type)?.into_iter().map(|r| r["event"].clone()).collect())
}

fn dispatched(root: &Root) -> Result<Value> {
    let s = root.dispatch()?;
    assert_eq!(s["dead_lettered"], 0, "{s}");
    assert!(root.dead_letters()?.is_empty());
    Ok(s)
}

#[test]
fn init_configures_the_seven_and_they_all_load() -> Result<()> {
    let root = Root::new()?;
    let out = root.ok(&["handlers", "check"])?;
    assert!(out.contains("all 7 handlers load"), "{out}");
    for name in [
        "on-worker-complete",
        "on-task-failure",
        "on-security-alert",
        "on-worker-heartbeat",
        "on-cleanup-needed",
        "on-learning-pattern",
        "on-routing-decision",
    ] {
        assert!(root.join(&format!("handlers/{name}.wasm")).is_file(), "{name} not copied by init");
        assert!(out.contains(name));
    }
    Ok(())
}

#[test]
fn worker_complete_keeps_records_and_completes_tasks() -> Result<()> {
    let root = Root::new()?;
    let mut lines = String::new();
    lines += &event("worker.started")
        .at("2025-12-01T12:00:00Z")
        .payload(json!({"worker_id": "w-1", "task_id": "t-1"}))
        .line();
    lines += &event("worker.completed")
        .at("2025-12-01T12:01:00Z")
        .payload(json!({"worker_id": "w-1", "task_id": "t-1", "tokens_used": 100, "duration_ms": 60000}))
        .line();
    lines += &event("worker.started")
        .at("2025-12-01T12:02:00Z")
        .payload(json!({"worker_id": "w-1", "task_id": "t-2"}))
        .line();
    lines += &event("worker.failed").at("2025-12-01T12:03:00Z").payload(json!({"worker_id": "w-1", "task_id": "t-2", "error": "disk full", "tokens_used": 50, "duration_ms": 20000})).line();
    let ids = root.batch(&lines)?;
    dispatched(&root)?;
    let w = root.state_value("workers", "w-1")?.expect("a record for w-1");
    assert_eq!(w["status"], "failed");
    assert_eq!((w["runs"].as_u64(), w["completed"].as_u64(), w["failed"].as_u64()), (Some(2), Some(1), Some(1)));
    assert_eq!(w["tokens_used"], 150);
    assert_eq!(w["duration_ms"]["min"], 20000);
    assert_eq!(w["duration_ms"]["max"], 60000);
    assert_eq!(w["duration_ms"]["avg"].as_f64().unwrap() as u64, 40000);
    assert_eq!(w["last_task"], "t-2");
    assert!(w["current_task"].is_null());
    let completed = archived_events_of(&root, "task.completed")?;
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0]["payload"]["task_id"], "t-1");
    assert_eq!(completed[0]["payload"]["tokens_used"], 100);
    assert_eq!(completed[0]["metadata"]["caused_by"]["event_id"], ids[1].as_str());

    // At-least-once redelivery of the same event changes nothing.
    let again = root.archived_record(&ids[1])?.unwrap()["event"].to_string() + "\n";
    root.batch(&again)?;
    dispatched(&root)?;
    assert_eq!(root.state_value("workers", "w-1")?.unwrap()["tokens_used"], 150);
    assert_eq!(archived_events_of(&root, "task.completed")?.len(), 1);
    Ok(())
}

#[test]
fn task_failure_retries_transient_errors_spots_patterns_and_alerts_on_permanent_ones() -> Result<()> {
    let root = Root::new()?;
    let mut lines = String::new();
    for (i, minute) in ["00", "10", "20"].iter().enumerate() {
        lines += &event("task.failed")
            .at(&format!("2025-12-01T12:{minute}:00Z"))
            .payload(
                json!({"task_id": format!("t-{i}"), "error": format!("Timeout after {}s connecting to db", 30 + i)}),
            )
            .line();
    }
    lines += &event("task.failed")
        .at("2025-12-01T12:30:00Z")
        .priority("high")
        .payload(json!({"task_id": "t-9", "error": "schema validation failed: column \"x\" missing"}))
        .line();
    lines += &event("task.failed")
        .at("2025-12-01T12:40:00Z")
        .payload(json!({"task_id": "t-last", "error": "timeout", "attempt": 3}))
        .line();
    root.batch(&lines)?;
    dispatched(&root)?;

    let retries = archived_events_of(&root, "task.created")?;
    let retried: Vec<&str> = retries.iter().map(|e| e["payload"]["task_id"].as_str().unwrap()).collect();
    assert_eq!(retried, ["t-0", "t-1", "t-2"], "attempt 3 of 3 must not be retried");
    assert!(retries.iter().all(|e| e["payload"]["attempt"] == 2));
    assert_eq!(retries[0]["correlation_id"], "t-0");

    let patterns = archived_events_of(&root, "learning.pattern_detected")?;
    assert_eq!(patterns.len(), 1, "three failures with one signature within an hour: one pattern");
    let signature = patterns[0]["payload"]["pattern"].as_str().unwrap();
    assert!(signature.starts_with("timeout after <n>s"), "{signature}");
    let pattern = root.state_value("failures", &format!("pattern/{signature}"))?.expect("the signature's record");
    assert_eq!(pattern["count"], 3);

    let alerts = archived_events_of(&root, "system.health_alert")?;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["payload"]["task_id"], "t-9");
    assert_eq!(alerts[0]["metadata"]["priority"], "critical");
    // The pattern reached the learning handler too.
    assert!(root.state_value("learning", &format!("pattern/{signature}"))?.is_some());
    Ok(())
}

#[test]
fn security_alert_deduplicates_and_alerts_on_critical_findings() -> Result<()> {
    let root = Root::new()?;
    let mut lines = String::new();
    lines += &event("security.vulnerability_found")
        .at("2025-12-01T12:00:00Z")
        .payload(json!({"cve": "CVE-2025-0001", "severity": "critical", "package": "openssl", "target": "api"}))
        .line();
    lines += &event("security.vulnerability_found")
        .at("2025-12-01T12:05:00Z")
        .payload(json!({"cve": "CVE-2025-0001", "severity": "critical", "package": "openssl", "target": "api"}))
        .line();
    lines += &event("security.vulnerability_found")
        .at("2025-12-01T12:06:00Z")
        .payload(json!({"id": "LOW-1", "severity": "low", "package": "left-pad"}))
        .line();
    lines += &event("security.scan_completed")
        .at("2025-12-01T12:10:00Z")
        .payload(json!({"scan_id": "s-1", "scanner": "trivy", "findings": {"high": 2, "low": 1}}))
        .line();
    lines += &event("security.scan_completed")
        .at("2025-12-01T12:20:00Z")
        .payload(json!({"scan_id": "s-2", "scanner": "trivy", "findings": {"low": 1}}))
        .line();
    root.batch(&lines)?;
    dispatched(&root)?;
    assert_eq!(root.ok(&["state", "list", "security", "--prefix", "vuln/"])?.lines().count(), 2);
    let openssl = root.state_value("security", "vuln/CVE-2025-0001|openssl|api")?.context("no register entry")?;
    assert_eq!(openssl["occurrences"], 2);
    let summary = root.state_value("security", "summary")?.context("no summary")?;
    assert_eq!(summary["open"]["critical"], 1);
    assert_eq!(summary["total"], 2);
    assert_eq!(root.state_value("security", "scans")?, Some(json!(2)));
    let last = root.state_value("security", "scan/001")?.context("no second scan")?;
    assert_eq!(last["scan_id"], "s-2");
    let alerts = archived_events_of(&root, "system.health_alert")?;
    assert_eq!(alerts.len(), 2, "one for the new critical CVE (not its repeat), one for the scan with high findings");
    assert!(alerts.iter().all(|a| a["metadata"]["priority"] == "critical" && a["payload"]["component"] == "security"));
    Ok(())
}

#[test]
fn heartbeat_reports_each_silence_once() -> Result<()> {
    let root = Root::new()?;
    // Beats arrive over minutes, so each is dispatched (and its record
    // committed) before the next: a beat sees the records committed before
    // it, not those of events settled in the same group commit.
    let beat = |w: &str, ts: &str| -> Result<()> {
        root.batch(&event("worker.heartbeat").at(ts).payload(json!({"worker_id": w})).line())?;
        dispatched(&root).map(drop)
    };
    beat("w-1", "2025-12-01T12:00:00Z")?;
    beat("w-2", "2025-12-01T12:00:30Z")?;
    beat("w-2", "2025-12-01T12:01:40Z")?; // w-1 silent 100 s > 90 s: one report
    beat("w-2", "2025-12-01T12:02:40Z")?; // still silent: no second report
    beat("w-1", "2025-12-01T12:03:00Z")?; // back
    beat("w-2", "2025-12-01T12:05:00Z")?; // w-1 silent 120 s again: second report
    let failed = archived_events_of(&root, "worker.failed")?;
    let who: Vec<&str> = failed.iter().map(|e| e["payload"]["worker_id"].as_str().unwrap()).collect();
    assert_eq!(who, ["w-1", "w-1"], "{failed:?}");
    assert_eq!(failed[0]["payload"]["error"], "heartbeat timeout");
    assert_eq!(root.state_value("heartbeats", "w-2")?.unwrap()["beats"], 4);
    assert_eq!(root.state_value("heartbeats", "w-1")?.unwrap()["flagged"], true);
    // The timeout flows on to the worker record.
    assert_eq!(root.state_value("workers", "w-1")?.unwrap()["status"], "failed");
    Ok(())
}

#[test]
fn cleanup_reports_the_archive_and_the_host_keeps_it_by_last_append() -> Result<()> {
    let root = Root::new()?;
    let old = "{\"event\": {\"event_id\": \"evt_20200101_000000_aaaaaa\"}, \"outcome\": \"handled\"}\n";
    let age = |name: &str, days: u64| -> Result<()> {
        let at = std::time::SystemTime::now() - std::time::Duration::from_secs(days * 86_400 + 60);
        std::fs::File::options().write(true).open(root.join(&format!("events/archive/{name}")))?.set_modified(at)?;
        Ok(())
    };
    // Last appended to 40 and 35 days ago: past the retention of 30.
    std::fs::write(root.join("events/archive/2020-01-01.jsonl"), old.repeat(3))?;
    age("2020-01-01.jsonl", 40)?;
    std::fs::write(root.join("events/archive/2026-11-30.jsonl"), old)?;
    age("2026-11-30.jsonl", 35)?;
    // Named for an old date but appended to yesterday: kept.
    std::fs::write(root.join("events/archive/2020-01-02.jsonl"), old)?;
    age("2020-01-02.jsonl", 1)?;

    root.emit("system.cleanup_needed", r#"{"retention_days": 30}"#)?;
    dispatched(&root)?;
    assert!(!root.join("events/archive/2020-01-01.jsonl").exists());
    assert!(!root.join("events/archive/2026-11-30.jsonl").exists());
    // Kept, and compressed (named for a date past `compress_after_days`).
    let kept = root.join("events/archive/2020-01-02.jsonl.zst");
    assert!(kept.exists(), "an archive file appended to yesterday went");
    let idle = std::fs::metadata(&kept)?.modified()?.elapsed()?;
    assert!(idle > std::time::Duration::from_secs(86_400), "the compressed day keeps its last append");

    let run = root.read_json("state/cleanup/last-run.json")?;
    assert_eq!(run["retention_days"], 30);
    let names: Vec<&str> = run["files"].as_array().into_iter().flatten().filter_map(|f| f["name"].as_str()).collect();
    assert!(names.contains(&"2020-01-02.jsonl.zst"), "{run}");
    assert_eq!(run["files_expired"], 0, "{run}");

    root.emit("system.cleanup_needed", "{}")?;
    dispatched(&root)?;
    assert_eq!(root.read_json("state/cleanup/history.json")?["runs"].as_array().map(Vec::len), Some(2));
    Ok(())
}

#[test]
fn learning_promotes_a_pattern_once_it_is_confident() -> Result<()> {
    let root = Root::new()?;
    let lines: String = (0..10)
        .map(|i| {
            event("learning.pattern_detected")
                .at(&format!("2025-12-01T12:{i:02}:00Z"))
                .payload(json!({"pattern": "flaky db", "suggested_fix": "add retries"}))
                .line()
        })
        .collect();
    root.batch(&lines)?;
    dispatched(&root)?;
    let p = &root.state_value("learning", "pattern/flaky db")?.expect("a record for the pattern");
    assert_eq!(p["occurrences"], 10);
    assert_eq!(p["promoted"], true);
    assert!(p["confidence"].as_f64().unwrap() >= 0.8);
    let updates = archived_events_of(&root, "learning.model_updated")?;
    assert_eq!(updates.len(), 1, "promoted once, not on every later sighting");
    assert_eq!(updates[0]["payload"]["pattern"], "flaky db");
    let models = root.state_value("learning", "models")?.expect("the models record");
    assert_eq!(models["version"], 1);
    Ok(())
}

#[test]
fn routing_tracks_confidence_and_flags_drift() -> Result<()> {
    let root = Root::new()?;
    let mut lines = String::new();
    lines += &event("routing.decision_made")
        .at("2025-12-01T12:00:00Z")
        .payload(json!({"master": "m-1", "expert": "e-a", "confidence": 0.9}))
        .line();
    for i in 0..5 {
        lines += &event("routing.decision_made")
            .at(&format!("2025-12-01T12:0{}:00Z", i + 1))
            .payload(json!({"master": "m-1", "expert": "e-b", "confidence": 0.2}))
            .line();
    }
    lines += &event("routing.decision_made")
        .at("2025-12-01T12:10:00Z")
        .payload(json!({"master": "m-2", "expert": "e-a", "confidence": 0.1}))
        .line();
    root.batch(&lines)?;
    dispatched(&root)?;
    let m1 = &root.state_value("routing", "m-1")?.expect("a record for m-1");
    assert_eq!(m1["decisions"], 6);
    assert_eq!(m1["experts"], json!({"e-a": 1, "e-b": 5}));
    assert_eq!(m1["low_confidence"], 5);
    assert!((m1["mean_confidence"].as_f64().unwrap() - 0.3166).abs() < 0.01);
    assert!((m1["low_confidence_rate"].as_f64().unwrap() - 5.0 / 6.0).abs() < 0.01);
    let drift = archived_events_of(&root, "learning.pattern_detected")?;
    assert_eq!(drift.len(), 1, "m-2 has one low decision, not five");
    assert_eq!(drift[0]["payload"]["pattern"], "routing drift: m-1");
    Ok(())
}
