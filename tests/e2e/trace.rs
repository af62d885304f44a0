//! `cortex trace ID` on trees the built-in handlers really make: a
//! transient `task.failed` whose retry (`task.created`) a failing runner
//! dead-letters, and a critical vulnerability whose `system.health_alert`
//! no handler takes, both of one correlation id; a payload the task-failure
//! handler refuses; an event still waiting in the queue; an unknown id.

use anyhow::{Context, Result};
use cortex_tests::{Root, component, event, jsonl};
use serde_json::{Value, json};

/// The default root, plus a task runner that traps on every
/// `task.created`, once: a retry the task-failure handler queues is
/// dead-lettered.
fn root() -> Result<Root> {
    let root = Root::new()?;
    root.configure(&format!(
        "\n[handlers.task-runner]\ncomponent = \"{}\"\nevents = [\"task.created\"]\nmax_attempts = 1\n",
        component("trap-panic")
    ))?;
    Ok(root)
}

/// `cortex trace --json ID`, parsed.
fn trace_json(root: &Root, id: &str) -> Result<Value> {
    let out = root.ok(&["trace", "--json", id])?;
    serde_json::from_str(&out).with_context(|| format!("trace --json printed: {out}"))
}

/// The handlers of a JSON node as (handler, outcome, fault) strings.
fn steps(node: &Value) -> Vec<(String, String, String)> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    node["handlers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| (text(&s["handler"]), text(&s["outcome"]), text(&s["fault"])))
        .collect()
}

fn step(handler: &str, outcome: &str, fault: &str) -> (String, String, String) {
    (handler.into(), outcome.into(), fault.into())
}

#[test]
fn one_correlation_makes_two_trees_with_a_dead_lettered_retry_and_an_unhandled_alert() -> Result<()> {
    let root = root()?;
    let ids = root.batch(&jsonl([
        event("task.failed").correlation("incident-7").priority("high").payload(json!({
            "task_id": "t-1", "error": "ECONNRESET: socket hang up", "attempt": 1
        })),
        event("security.vulnerability_found").correlation("incident-7").payload(json!({
            "cve_id": "CVE-2025-55555", "severity": "critical", "package": "openssl", "target": "api"
        })),
    ]))?;
    let (failed, vuln) = (ids[0].as_str(), ids[1].as_str());
    let s = root.dispatch()?;
    assert_eq!(s["dead_lettered"], 1, "{s}");
    let retry = root.dead_letters()?[0]["event"]["event_id"].as_str().unwrap_or_default().to_string();
    let alert = root.archive_records_of("system.health_alert")?[0]["event"]["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // The retry's id shows its root's tree, the retry marked.
    let out = root.ok(&["trace", &retry])?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("trace of event {retry}: 2 events"), "{out}");
    let top = lines.iter().position(|l| l.starts_with(failed)).context(out.clone())?;
    assert!(lines[top].contains("task.failed  from test") && lines[top].contains("handled"), "{out}");
    assert!(lines[top + 1].contains("· on-task-failure: ok"), "{out}");
    let kid = lines.iter().position(|l| l.starts_with(&format!("└─ {retry}"))).context(out.clone())?;
    assert!(kid > top, "{out}");
    assert!(lines[kid].contains("task.created  from on-task-failure  +"), "{out}");
    assert!(lines[kid].contains("dead-lettered") && lines[kid].ends_with("<- asked"), "{out}");
    assert!(lines[kid + 1].contains("· task-runner: dead-lettered (trap)"), "{out}");
    assert!(!out.contains(vuln), "the other tree of the correlation is not shown: {out}");

    // The correlation id shows both trees, oldest root first.
    let t = trace_json(&root, "incident-7")?;
    assert_eq!((t["named"].as_str(), t["events"].as_u64()), (Some("correlation"), Some(4)), "{t}");
    let trees = t["trees"].as_array().context("trees")?;
    let roots: Vec<&str> = trees.iter().filter_map(|n| n["event_id"].as_str()).collect();
    assert_eq!(roots, [failed, vuln]);

    let (f, retried) = (&trees[0], &trees[0]["children"][0]);
    assert_eq!((f["status"].as_str(), f["attempts"].as_u64()), (Some("handled"), Some(1)), "{f}");
    assert_eq!(steps(f), [step("on-task-failure", "ok", "")]);
    // When the run started, from its archive record, in both forms.
    let started = f["handlers"][0]["started"].as_str().context("an archived run says when it started")?;
    let at = chrono::DateTime::parse_from_rfc3339(started).with_context(|| format!("started: {started}"))?;
    assert!(at <= chrono::Utc::now(), "{started}");
    let time_of_day = started.get(11..).unwrap_or_default().trim_end_matches('Z');
    assert!(lines[top + 1].contains(&format!(" from {time_of_day}")), "{out}");
    assert!(f["duration_ms"].as_f64().is_some_and(|d| d > 0.0), "{f}");
    assert_eq!(f["children"].as_array().map(Vec::len), Some(1), "{f}");
    assert_eq!(retried["event_id"], retry.as_str());
    assert_eq!(retried["status"], "dead-lettered");
    assert_eq!(retried["caused_by"]["event_id"], failed);
    assert_eq!(retried["caused_by"]["handler"], "on-task-failure");
    assert_eq!(steps(retried), [step("task-runner", "dead-lettered", "trap")]);
    assert!(retried["reason"].as_str().is_some_and(|r| r.contains("task-runner")), "{retried}");
    // Queued when its parent's verdict was committed: after the parent's
    // time from queue to verdict, on the same clock.
    let after = retried["since_parent_ms"].as_f64().context("since_parent_ms")?;
    let parent_took = f["duration_ms"].as_f64().context("duration_ms")?;
    assert!(after >= parent_took, "queued {after} ms after its parent, which took {parent_took} ms");

    let (v, alerted) = (&trees[1], &trees[1]["children"][0]);
    assert_eq!(steps(v), [step("on-security-alert", "ok", "")]);
    assert_eq!((alerted["event_id"].as_str(), alerted["status"].as_str()), (Some(alert.as_str()), Some("unhandled")));
    assert_eq!(alerted["source"], "on-security-alert");
    assert!(steps(alerted).is_empty(), "{alerted}");
    for n in [f, retried, v, alerted] {
        assert_eq!(n["asked"], true, "every event of the correlation is marked: {n}");
    }
    Ok(())
}

#[test]
fn a_refused_event_a_waiting_one_and_an_unknown_id() -> Result<()> {
    let root = root()?;
    let refused = root.batch(&event("task.failed").payload(json!({"task_id": "t-2"})).line())?.remove(0);
    root.dispatch()?;
    let waiting = root.batch(&event("task.failed").payload(json!({"task_id": "t-3", "error": "x"})).line())?.remove(0);

    let t = trace_json(&root, &refused)?;
    assert_eq!((t["named"].as_str(), t["events"].as_u64()), (Some("event"), Some(1)), "{t}");
    let n = &t["trees"][0];
    assert_eq!((n["status"].as_str(), n["asked"].as_bool()), (Some("dead-lettered"), Some(true)), "{n}");
    assert_eq!(steps(n), [step("on-task-failure", "refused", "refused")]);
    assert!(n["handlers"][0]["message"].as_str().is_some_and(|m| m.contains("payload.error")), "{n}");

    let n = &trace_json(&root, &waiting)?["trees"][0];
    assert_eq!(n["status"], "waiting", "{n}");
    assert_eq!(steps(n), [step("on-task-failure", "waiting", "")]);
    let out = root.ok(&["trace", &waiting])?;
    assert!(out.contains("  waiting") && out.contains("· on-task-failure: waiting"), "{out}");

    let out = root.fails(&["trace", "evt_20991231_000000_nobody"])?;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("no event or correlation id evt_20991231_000000_nobody in the queue"),
        "{}",
        out.stderr
    );
    let help = root.ok(&["trace", "--help"])?;
    assert!(help.contains("correlation id") && help.contains("--json"), "{help}");
    Ok(())
}
