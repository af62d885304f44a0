//! The `cortex:events` worlds: components built against 0.1.0 keep loading
//! and running; a 0.2.0 handler error that says a retry cannot help
//! dead-letters its event at once; `describe()`'s declared emits and payload
//! contracts are checked by `cortex handlers check` and shown by `cortex
//! handlers list --verbose`; the Python and JavaScript handlers accept the
//! shapes producers send and refuse the rest as not retryable.

use anyhow::Result;
use cortex_tests::{Root, without_tables};
use serde_json::Value;

/// The one dead letter of an event id.
fn dead_letter_of(root: &Root, id: &str) -> Result<Value> {
    let letters = root.dead_letters()?;
    let found: Vec<&Value> = letters.iter().filter(|d| d["event"]["event_id"] == id).collect();
    assert_eq!(found.len(), 1, "expected one dead letter of {id}: {letters:?}");
    Ok(found[0].clone())
}

#[test]
fn a_component_built_against_0_1_loads_runs_emits_and_its_errors_are_retried() -> Result<()> {
    let root = Root::with_handlers(
        "[handlers.legacy]\ncomponent = \"{legacy-v01}\"\nevents = [\"task.failed\"]\nmax_attempts = 2\nbackoff_ms = 1\n",
    )?;
    let list: Value = serde_json::from_str(&root.ok(&["handlers", "list", "--json"])?)?;
    assert_eq!(list[0]["loads"], true, "{list}");
    assert_eq!(list[0]["declared_events"], serde_json::json!(["task.failed"]));
    assert_eq!((&list[0]["emits"], &list[0]["contracts"]), (&serde_json::json!([]), &serde_json::json!([])));

    let ok = root.emit("task.failed", r#"{"task_id": "t1"}"#)?;
    let bad = root.emit("task.failed", r#"{"fail": true}"#)?;
    let out = root.run(&["dispatch", "--json"])?;
    assert_eq!(out.code, 3, "a dead letter exits 3: {}", out.stderr);
    let summary: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!((summary["handled"].as_u64(), summary["retried"].as_u64()), (Some(1), Some(1)), "{summary}");
    assert!(out.stderr.contains("legacy-v01 handles"), "its log line reached the host log: {}", out.stderr);

    let record = root.archived_record(&ok)?.expect("the good event is archived");
    let summary_text = record["handlers"][0]["summary"].as_str().unwrap_or("");
    let follow_up = summary_text.strip_prefix("legacy-v01 emitted ").expect("summary names the emitted id");
    let created = root.archive_records_of("task.created")?;
    assert_eq!(created.len(), 1, "its emit was queued and dispatched");
    assert_eq!(created[0]["event"]["event_id"], follow_up);
    assert_eq!(created[0]["event"]["source"], "legacy");

    // Under 0.1.0 every Err is retried: two attempts, then the dead letter.
    let dl = dead_letter_of(&root, &bad)?;
    assert_eq!(dl["attempts"], 2, "{dl}");
    let kinds: Vec<&Value> = dl["history"].as_array().unwrap().iter().map(|h| &h["failures"][0]["kind"]).collect();
    assert_eq!(kinds, ["error", "error"]);
    assert_eq!(dl["history"][1]["failures"][0]["message"], "asked to fail on attempt 2");
    Ok(())
}

#[test]
fn an_error_that_is_not_retryable_dead_letters_at_once_and_says_so() -> Result<()> {
    let root = Root::with_handlers(
        r#"
[handlers.refuse]
component = "{refuse-payload}"
events = ["task.failed"]
max_attempts = 3
backoff_ms = 300
[handlers.also]
component = "{noop}"
events = ["task.failed"]
"#,
    )?;
    let good = root.emit("task.failed", r#"{"count": 3}"#)?;
    let bad = root.emit("task.failed", r#"{"count": "many"}"#)?;
    let out = root.run(&["dispatch", "--json"])?;
    assert_eq!(out.code, 3, "a dead letter exits 3 as any: {}", out.stderr);
    let summary: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!((summary["retried"].as_u64(), summary["dead_lettered"].as_u64()), (Some(0), Some(1)), "{summary}");
    assert_eq!(summary["handlers"]["refuse"]["invocations"], 2, "one attempt each");
    assert!(root.archived_record(&good)?.is_some());

    let dl = dead_letter_of(&root, &bad)?;
    assert_eq!((dl["attempts"].as_u64(), dl["max_attempts"].as_u64()), (Some(1), Some(3)), "{dl}");
    let failure = &dl["history"][0]["failures"][0];
    assert_eq!(failure["kind"], "refused");
    assert_eq!(failure["message"], r#"not retryable: payload.count must be a non-negative integer, found "many""#);
    assert_eq!(dl["succeeded_handlers"], serde_json::json!(["also"]), "the other handler ran once and is kept");

    let shown = root.ok(&["dlq", "show", &bad])?;
    assert!(shown.contains("refuse: refused: not retryable: payload.count"), "{shown}");
    assert!(shown.contains("attempts:        1 (max_attempts 3)"), "{shown}");

    // A retryable error of the same world is still retried.
    let busy = root.emit("task.failed", r#"{"count": 1, "busy": true}"#)?;
    let out = root.run(&["dispatch", "--json"])?;
    let summary: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(summary["retried"], 2, "{summary}");
    assert_eq!(dead_letter_of(&root, &busy)?["attempts"], 3);
    Ok(())
}

#[test]
fn handlers_check_refuses_declared_emits_that_would_be_refused_and_list_shows_contracts() -> Result<()> {
    let root =
        Root::with_handlers("[handlers.refuse]\ncomponent = \"{refuse-payload}\"\nevents = [\"task.failed\"]\n")?;
    let out = root.fails(&["handlers", "check"])?;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("handler refuse declares that it emits notification.requested, which is neither a built-in event type nor in [events] custom_types"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("task.created"), "a built-in type is fine: {}", out.stderr);

    let toml = std::fs::read_to_string(root.join("cortex.toml"))?;
    let declared = toml.replace("custom_types = []", "custom_types = [\"notification.requested\"]");
    assert_ne!(declared, toml, "the default config declares custom_types");
    std::fs::write(root.join("cortex.toml"), &declared)?;
    assert!(root.ok(&["handlers", "check"])?.contains("all 1 handlers load"));

    std::fs::write(
        root.join("cortex.toml"),
        declared.replace("events = [\"task.failed\"]\n", "events = [\"task.failed\"]\nemits = [\"task.*\"]\n"),
    )?;
    let out = root.fails(&["handlers", "check"])?;
    assert!(
        out.stderr.contains("emits notification.requested, which handlers.refuse.emits (task.*) does not allow"),
        "{}",
        out.stderr
    );

    let text = root.ok(&["handlers", "list", "--verbose"])?;
    assert!(text.contains("    emits:     task.created, notification.requested"), "{text}");
    assert!(text.contains("    contract:  task.failed\n"), "{text}");
    assert!(text.contains("\"minimum\": 0"), "the schema is printed: {text}");
    assert!(!root.ok(&["handlers", "list"])?.contains("contract:"), "only with --verbose");
    let list: Value = serde_json::from_str(&root.ok(&["handlers", "list", "--json"])?)?;
    assert_eq!(list[0]["contracts"][0]["event_type"], "task.failed");
    assert_eq!(list[0]["contracts"][0]["schema"]["properties"]["count"]["type"], "integer", "{list}");
    Ok(())
}

#[test]
fn python_and_javascript_accept_producer_shapes_and_refuse_the_rest_at_once() -> Result<()> {
    let root = Root::with_extras()?;
    // The built-in Rust handler of worker.completed has its own rules for
    // these payloads; this test is about the Python and JavaScript ones.
    let toml = without_tables(&std::fs::read_to_string(root.join("cortex.toml"))?, "[handlers.on-worker-complete");
    // Issue 16: enabling the notifier without declaring its type passed
    // `check`, then every notification was refused.
    let undeclared = toml.replace(r#"custom_types = ["notification.requested"]"#, "custom_types = []");
    assert_ne!(undeclared, toml);
    std::fs::write(root.join("cortex.toml"), undeclared)?;
    let out = root.fails(&["handlers", "check"])?;
    assert!(
        out.stderr.contains("handler on-alert-notify declares that it emits notification.requested, which is neither a built-in event type nor in [events] custom_types"),
        "{}",
        out.stderr
    );
    std::fs::write(root.join("cortex.toml"), toml)?;
    let out = root.ok(&["handlers", "check"])?;
    assert!(out.contains("all 8 handlers load"), "their declared emits pass check: {out}");
    let list: Value = serde_json::from_str(&root.ok(&["handlers", "list", "--json"])?)?;
    for (name, emits) in [("on-cost-tracking", "system.health_alert"), ("on-alert-notify", "notification.requested")] {
        let row = list.as_array().unwrap().iter().find(|r| r["name"] == name).expect("listed");
        assert_eq!(row["emits"], serde_json::json!([emits]), "{row}");
        assert_eq!(row["contracts"][0]["schema"]["type"], "object", "{row}");
    }

    let worker = |payload: &str| root.emit("worker.completed", payload);
    let as_string = worker(r#"{"worker_id": "w1", "tokens_used": "1500", "model": "claude-haiku"}"#)?;
    let openai = worker(
        r#"{"worker_id": "w2", "usage": {"prompt_tokens": 1000, "completion_tokens": 500}, "model": "claude-sonnet", "repo": "api"}"#,
    )?;
    let refused_py = worker(r#"{"worker_id": "w3", "tokens_used": [1500]}"#)?;
    let count = root.emit(
        "system.health_alert",
        r#"{"severity": "high", "component": "security", "scan": {"scan_id": "s1", "findings": 4}}"#,
    )?;
    let refused_js = root.emit(
        "system.health_alert",
        r#"{"severity": "high", "component": "security", "scan": {"scan_id": "s2", "findings": "lots"}}"#,
    )?;
    let out = root.run(&["dispatch", "--json"])?;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let summary: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!((summary["retried"].as_u64(), summary["dead_lettered"].as_u64()), (Some(0), Some(2)), "{summary}");
    assert!(
        out.stderr.contains("ignored payload fields: repo"),
        "the py handler warns naming the field: {}",
        out.stderr
    );

    let cost = |key: &str| root.state_value("cost", key).map(|v| v.and_then(|v| v.as_u64()));
    assert_eq!(cost("tokens")?, Some(3000), "1500 from a string, 1000 + 500 from usage");
    assert_eq!(cost("model/claude-sonnet/cost_micro_usd")?, Some(1000 * 3 + 500 * 15), "split prices");
    for id in [&as_string, &openai, &count] {
        assert!(root.archived_record(id)?.is_some(), "{id} not archived");
    }
    let note = root.archive_records_of("notification.requested")?;
    assert_eq!(note.len(), 1);
    assert_eq!(note[0]["event"]["payload"]["title"], "[HIGH] security scan s1 found 4 findings");

    for (id, message) in [
        (
            &refused_py,
            "not retryable: payload.tokens_used must be a non-negative integer or a string of digits, found [1500]",
        ),
        (
            &refused_js,
            r#"not retryable: payload.scan.findings must be a count or an object of severity = count, found "lots""#,
        ),
    ] {
        let dl = dead_letter_of(&root, id)?;
        assert_eq!(dl["attempts"], 1, "{dl}");
        assert_eq!(dl["history"][0]["failures"][0]["kind"], "refused", "{dl}");
        assert_eq!(dl["history"][0]["failures"][0]["message"], message);
    }
    Ok(())
}
