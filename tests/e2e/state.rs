//! Handler state (`wasi:keyvalue`, issue 12): the `kv-counter` fixture
//! counts events in bucket `counters`, and the totals are read back from
//! `<root>/kv/state.db` after the run. They must equal the number of
//! distinct events that succeeded: a failed, refused or trapped invocation
//! changes nothing, a retried one applies once, concurrent lanes lose no
//! increment, and a crash between the state commit and the settlement does
//! not apply an event twice. Grants and limits are checked as a handler
//! sees them.

use std::time::Duration;

use anyhow::{Context, Result};
use cortex::kv::sqlite::SqliteBackend;
use cortex::kv::{Backend, Changes, Mark, Op};
use cortex_tests::{Root, event, jsonl};

/// The counter handler, granted `counters` read-write and `settings`
/// read-only; `extra` goes into its table.
fn counter_root(extra: &str) -> Result<Root> {
    Root::with_handlers(&format!(
        r#"
[handlers.counter]
component = "{{kv-counter}}"
events = ["task.*"]
keyvalue = ["counters"]
keyvalue_read = ["settings"]
max_attempts = 3
backoff_ms = 20
{extra}
"#
    ))
}

/// The decimal number stored at `key` of bucket `counters` (0 when absent).
fn number(root: &Root, key: &str) -> Result<u64> {
    let db = SqliteBackend::open(&root.join("kv/state.db"))?;
    match db.get("counters", key)? {
        None => Ok(0),
        Some(v) => String::from_utf8(v.value)?.parse().with_context(|| format!("counters/{key} is not a number")),
    }
}

#[test]
fn n_distinct_events_count_exactly_n_and_failures_change_nothing() -> Result<()> {
    let root = counter_root("")?;
    let good: Vec<_> = (0..20).map(|_| event("task.created").payload(serde_json::json!({}))).collect();
    let bad =
        [serde_json::json!({"fail": true}), serde_json::json!({"refuse": true}), serde_json::json!({"trap": true})]
            .map(|p| event("task.failed").payload(p));
    let retried = event("task.completed").payload(serde_json::json!({"fail_attempts": 1}));
    root.batch(&jsonl(good.into_iter().chain(bad).chain([retried])))?;
    let s = root.dispatch()?;
    assert_eq!((s["handled"].as_u64(), s["dead_lettered"].as_u64()), (Some(21), Some(3)), "{s}");
    assert_eq!(s["retried"].as_u64(), Some(5), "fail and trap: twice each; the retried one: once: {s}");

    assert_eq!(number(&root, "total")?, 21, "20 good events and the retried one, once");
    assert_eq!(number(&root, "counts/task.created")?, 20);
    assert_eq!(number(&root, "counts/task.completed")?, 1, "a retried event applies once");
    assert_eq!(number(&root, "counts/task.failed")?, 0, "failed, refused and trapped invocations change nothing");
    let dead = root.dead_letters()?;
    let kinds: Vec<&str> = dead.iter().filter_map(|d| d["history"][0]["failures"][0]["kind"].as_str()).collect();
    assert_eq!(kinds.len(), 3, "{dead:?}");
    assert!(kinds.contains(&"trap") && kinds.contains(&"refused") && kinds.contains(&"error"), "{kinds:?}");

    // Running again finds nothing new to count.
    root.dispatch()?;
    assert_eq!(number(&root, "total")?, 21);

    // What an operator reads.
    assert_eq!(root.ok(&["state", "get", "counters", "total"])?, "21\n");
    assert_eq!(root.ok(&["state", "buckets"])?, "counters\t4 keys\n");
    assert_eq!(
        root.ok(&["state", "list", "counters", "--prefix", "counts/"])?,
        "counts/task.completed\ncounts/task.created\n"
    );
    let dump: serde_json::Value = serde_json::from_str(&root.ok(&["state", "dump", "counters", "--json"])?)?;
    assert_eq!((dump["total"].as_str(), dump["counts/task.created"].as_str()), (Some("21"), Some("20")), "{dump}");
    let out = root.fails(&["state", "get", "counters", "nothing"])?;
    assert!(out.stderr.contains("bucket counters has no key nothing"), "{}", out.stderr);
    Ok(())
}

#[test]
fn concurrent_lanes_and_read_then_write_lose_no_update() -> Result<()> {
    let root = Root::with_handlers(
        r#"
[handlers.counter]
component = "{kv-counter}"
events = ["task.*"]
keyvalue = ["counters"]
concurrency = 3
[handlers.second]
component = "{kv-counter}"
events = ["task.*"]
keyvalue = ["counters"]
concurrency = 2
"#,
    )?;
    let config = std::fs::read_to_string(root.join("cortex.toml"))?;
    std::fs::write(root.join("cortex.toml"), config.replace("workers = 0", "workers = 4"))?;
    let n = 60;
    root.batch(&jsonl((0..n).map(|_| event("task.created").payload(serde_json::json!({"rmw": true})))))?;
    let s = root.dispatch()?;
    assert_eq!(s["handled"].as_u64(), Some(n), "{s}");
    assert_eq!(s["dead_lettered"].as_u64(), Some(0), "{s}");
    // Two handlers on every event, five invocations at a time.
    assert_eq!(number(&root, "total")?, 2 * n, "increments are deltas: none is lost");
    assert_eq!(
        number(&root, "rmw")?,
        2 * n,
        "a read-then-write that raced another is run again, not lost ({} reruns)",
        s["rerun"]
    );
    Ok(())
}

#[test]
fn ungranted_and_read_only_buckets_are_refused_and_limits_fail_cleanly() -> Result<()> {
    let root = counter_root("[handlers.counter.limits]\nkv_value_bytes = 1000\n")?;
    root.emit("task.created", r#"{"open": "secret"}"#)?;
    root.emit("task.created", r#"{"write_read_only": true}"#)?;
    let big = root.emit("task.failed", r#"{"big": 2000}"#)?;
    let out = root.run(&["dispatch", "--json"])?;
    assert_eq!(out.code, 3, "the over-limit event is dead-lettered: {}", out.stderr);
    assert!(out.stderr.contains("open secret: no-such-store"), "{}", out.stderr);
    assert!(out.stderr.contains("settings/mode is unset"), "a read-only bucket reads: {}", out.stderr);
    assert!(out.stderr.contains("set settings/mode: access-denied"), "{}", out.stderr);
    assert_eq!(number(&root, "total")?, 2, "the refused calls do not fail the handler that goes on");
    assert_eq!(number(&root, "counts/task.failed")?, 0, "the over-limit invocation changed nothing");
    let dead = root.dead_letters()?;
    let message = dead[0]["history"][0]["failures"][0]["message"].as_str().unwrap_or_default();
    assert_eq!(dead[0]["event"]["event_id"], big.as_str());
    assert!(message.contains("set big: other: value of 2000 bytes") && message.contains("kv_value_bytes"), "{message}");
    Ok(())
}

#[test]
fn bucket_names_are_checked_and_the_database_directory_is_the_runtimes() -> Result<()> {
    let root = counter_root("")?;
    let text = std::fs::read_to_string(root.join("cortex.toml"))?;
    std::fs::write(root.join("cortex.toml"), text.replace(r#"keyvalue = ["counters"]"#, r#"keyvalue = ["Bad/Name"]"#))?;
    let out = root.fails(&["handlers", "check"])?;
    assert!(
        out.stderr.contains("handlers.counter.keyvalue") && out.stderr.contains("bad bucket name"),
        "{}",
        out.stderr
    );
    std::fs::write(
        root.join("cortex.toml"),
        text.replace(
            r#"keyvalue = ["counters"]"#,
            "keyvalue = [\"counters\"]\ngrants = [{dir = \"kv\", mode = \"ro\"}]",
        ),
    )?;
    let out = root.fails(&["handlers", "check"])?;
    assert!(out.stderr.contains("runtime's own (kv/)"), "{}", out.stderr);
    // Reading state where none was ever written creates nothing.
    assert_eq!(root.ok(&["state", "buckets"])?, "");
    assert!(!root.join("kv").exists());
    Ok(())
}

#[test]
fn a_crash_after_the_state_commit_applies_each_event_once() -> Result<()> {
    let root = counter_root("")?;
    let config = std::fs::read_to_string(root.join("cortex.toml"))?.replace("lease_secs = 300", "lease_secs = 1");
    std::fs::write(root.join("cortex.toml"), config)?;
    root.batch(&jsonl((0..5).map(|_| event("task.created").payload(serde_json::json!({})))))?;
    let out: cortex_tests::Out = root.failpoint_command("state.committed").args(["dispatch"]).output()?.into();
    assert_ne!(out.code, 0, "the fail point did not fire: {}", out.stderr);
    let applied = number(&root, "total")?;
    assert!(applied > 0, "the state commit happened before the crash");
    assert!(root.archived()?.is_empty(), "the crash came before the settlement of the first batch");
    std::thread::sleep(Duration::from_millis(1100));
    let s = root.dispatch()?;
    assert_eq!(s["dead_lettered"], 0, "{s}");
    assert_eq!(root.archived()?.len(), 5);
    assert_eq!(number(&root, "total")?, 5, "redelivered events found their marks: none applied twice");
    Ok(())
}

#[test]
fn replay_applies_again_on_purpose_and_a_dead_letter_retry_applies_once() -> Result<()> {
    let root = counter_root("")?;
    let id = root.emit("task.created", "{}")?;
    let failing = root.emit("task.failed", r#"{"fail_unless": "ready"}"#)?;
    root.dispatch()?;
    assert_eq!(number(&root, "total")?, 1, "the failing event is dead-lettered, its writes dropped");

    // Each queued replay is a new generation: its writes commit again.
    for (replays, total) in [(1, 2), (2, 3)] {
        root.ok(&["replay", "--event-id", &id])?;
        let s = root.dispatch()?;
        assert_eq!(s["handled"].as_u64(), Some(1), "replay {replays}: {s}");
        assert_eq!(number(&root, "total")?, total, "replay {replays} re-applies");
    }

    // A dead-letter retry keeps generation 0 (its failed attempts applied
    // nothing): once it succeeds it applies once, and only once.
    let db = SqliteBackend::open(&root.join("kv/state.db"))?;
    let mark = Mark { event_id: "test-setup".into(), handler: "test".into(), generation: 0 };
    db.commit(&[Changes {
        mark,
        ops: vec![("settings".into(), "ready".into(), Op::Set(b"1".to_vec()))],
        reads: vec![],
    }])?;
    root.ok(&["dlq", "retry", &failing])?;
    let s = root.dispatch()?;
    assert_eq!(s["handled"].as_u64(), Some(1), "{s}");
    assert_eq!((number(&root, "counts/task.failed")?, number(&root, "total")?), (1, 4), "{s}");
    root.ok(&["replay", "--event-id", &failing, "--dry-run"])?;
    root.dispatch()?;
    assert_eq!(number(&root, "total")?, 4, "nothing more");
    Ok(())
}

#[test]
fn a_state_database_planted_as_a_link_is_never_opened_through_it() -> Result<()> {
    let root = counter_root("")?;
    let outside = tempfile::tempdir()?;
    // A dangling link: opened through, SQLite would create the target.
    let target = outside.path().join("victim.db");
    std::fs::create_dir_all(root.join("kv"))?;
    std::os::unix::fs::symlink(&target, root.join("kv/state.db"))?;
    root.batch(&jsonl([event("task.created").payload(serde_json::json!({}))]))?;
    let out = std::process::Command::new(cortex_tests::cortex_bin())
        .args(["dispatch", "--no-wait", "--root"])
        .arg(&root.path)
        .env("CORTEX_CACHE", cortex_tests::shared_cache())
        .output()?;
    assert!(
        root.archive_records_of("task.created")?.is_empty(),
        "nothing is acknowledged whose state could not be stored: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!target.exists(), "no database was created through the link");
    assert!(std::fs::symlink_metadata(root.join("kv/state.db"))?.file_type().is_symlink());
    Ok(())
}
