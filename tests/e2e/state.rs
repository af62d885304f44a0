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

/// The analysis demo's livelock, forced: `counter` reads `rmw` and writes
/// it back plus one on every event, and `rival` does the same to the same
/// key on half of them, so they refuse each other's writes all the time;
/// and the events `rival` also handles finish after `counter`'s next ones,
/// which were built on their pending writes. Under the first lane overlay
/// the re-runs were built on writes that were themselves refused and the
/// run never settled; now every conflict drains the lane, the run ends
/// (the guard below kills it otherwise) and no update is lost or doubled.
#[test]
fn forced_conflicts_of_a_read_then_write_handler_settle_with_exact_state() -> Result<()> {
    let root = Root::with_handlers(
        r#"
[handlers.counter]
component = "{kv-counter}"
events = ["task.*"]
keyvalue = ["counters"]
[handlers.rival]
component = "{kv-counter}"
events = ["task.failed"]
keyvalue = ["counters"]
"#,
    )?;
    let n: u64 = 300;
    let kinds = ["task.created", "task.failed"];
    root.batch(&jsonl(
        (0..n).map(|i| event(kinds[(i % 2) as usize]).payload(serde_json::json!({"rmw": true, "gets": i % 7 * 50}))),
    ))?;
    let mut child = root
        .command()
        .args(["dispatch", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let guard = std::time::Instant::now();
    while child.try_wait()?.is_none() {
        if guard.elapsed() > Duration::from_secs(300) {
            child.kill()?;
            anyhow::bail!("the dispatch did not settle {n} events in 300 s: the re-runs refuse each other");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "dispatch failed: {:?}", out.status);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!((s["handled"].as_u64(), s["dead_lettered"].as_u64()), (Some(n), Some(0)), "{s}");
    assert!(s["rerun"].as_u64().unwrap_or(0) > 0, "the rivals never conflicted, so this proves nothing: {s}");
    let runs = n + n / 2;
    assert_eq!(number(&root, "rmw")?, runs, "each read-then-write applied exactly once ({} reruns)", s["rerun"]);
    assert_eq!(number(&root, "total")?, runs, "each increment applied exactly once");
    assert_eq!(number(&root, "counts/task.failed")?, n, "both handlers, once each");
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
fn a_crash_at_any_step_applies_each_event_once() -> Result<()> {
    let points = [
        "dispatch.handler-done",
        "state.before-commit",
        "state.committed",
        "settle.written",
        "settle.synced",
        "settle.renamed",
        "settle.dir-synced",
        "settle.archived",
    ];
    for point in points {
        let root = counter_root("")?;
        let config = std::fs::read_to_string(root.join("cortex.toml"))?.replace("lease_secs = 300", "lease_secs = 1");
        std::fs::write(root.join("cortex.toml"), config)?;
        root.batch(&jsonl((0..5).map(|_| event("task.created").payload(serde_json::json!({"rmw": true})))))?;
        let out: cortex_tests::Out = root.failpoint_command(point).args(["dispatch"]).output()?.into();
        assert_ne!(out.code, 0, "{point}: the fail point did not fire: {}", out.stderr);
        if point == "state.committed" {
            assert!(number(&root, "total")? > 0, "{point}: the state commit happened before the crash");
            assert!(root.archived()?.is_empty(), "{point}: the crash came before the first settlement");
        }
        std::thread::sleep(Duration::from_millis(1100));
        let s = root.dispatch()?;
        assert_eq!(s["dead_lettered"], 0, "{point}: {s}");
        assert!(root.files("events/queue").is_empty() && root.files("events/claimed").is_empty(), "{point}");
        assert_eq!(number(&root, "total")?, 5, "{point}: each event applied exactly once");
        assert_eq!(number(&root, "rmw")?, 5, "{point}: each read-then-write applied exactly once");
    }
    Ok(())
}

/// A small xorshift generator: the kill test's moments, reproducible from
/// the seed it prints.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn fifty_random_kill_9_of_the_service_lose_and_double_no_state_change() -> Result<()> {
    let root = counter_root("")?;
    // An event in flight at several kills is delivered as often: it must
    // not be dead-lettered for it.
    let config = std::fs::read_to_string(root.join("cortex.toml"))?.replace("max_attempts = 3", "max_attempts = 1000");
    std::fs::write(root.join("cortex.toml"), config)?;
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64 | 1;
    eprintln!("kill -9 test seed: {seed}");
    let mut rng = Rng(seed);
    let mut emitted = 0u64;
    for round in 0..50 {
        let svc = root.serve()?;
        // Events arrive while the service runs; it dies at a random moment
        // of handling them (or of the next start's recovery).
        let n = 10 + rng.below(30);
        let ids =
            root.batch(&jsonl((0..n).map(|_| event("task.created").payload(serde_json::json!({"rmw": true})))))?;
        assert_eq!(ids.len() as u64, n, "round {round}: every event was queued");
        emitted += n;
        std::thread::sleep(Duration::from_millis(rng.below(60)));
        drop(svc); // SIGKILL
    }
    let svc = root.serve()?;
    cortex_tests::wait_for(Duration::from_secs(60), || {
        Ok(root.files("events/queue").is_empty() && root.claims().is_empty())
    })
    .map_err(|e| anyhow::anyhow!("{e}: the queue did not drain:\n{}", svc.log_text()))?;
    assert_eq!(svc.stop()?, 0);
    assert!(root.dead_letters()?.is_empty(), "seed {seed}");
    assert_eq!(number(&root, "total")?, emitted, "seed {seed}: every distinct event counted exactly once");
    assert_eq!(number(&root, "counts/task.created")?, emitted, "seed {seed}");
    assert_eq!(number(&root, "rmw")?, emitted, "seed {seed}: every read-then-write applied exactly once");
    Ok(())
}

#[test]
fn state_set_and_delete_repair_one_key_and_are_refused_while_a_service_runs() -> Result<()> {
    let root = counter_root("")?;
    root.ok(&["state", "set", "counters", "total", "41"])?;
    assert_eq!(root.ok(&["state", "get", "counters", "total"])?, "41\n");
    root.emit("task.created", "{}")?;
    root.dispatch()?;
    assert_eq!(number(&root, "total")?, 42, "the handler counts on from the repaired value");
    // JSON is checked unless --raw; `-` reads stdin.
    let out = root.fails(&["state", "set", "counters", "note", "not json"])?;
    assert!(out.stderr.contains("not JSON") && out.stderr.contains("--raw"), "{}", out.stderr);
    root.ok(&["state", "set", "counters", "note", "--raw", "not json"])?;
    assert_eq!(root.ok(&["state", "get", "counters", "note"])?, "not json\n");
    let out = root.run_with(&["state", "set", "counters", "doc", "-"], br#"{"a": [1, 2]}"#)?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(root.ok(&["state", "get", "counters", "doc"])?, "{\"a\": [1, 2]}\n");
    root.ok(&["state", "delete", "counters", "note"])?;
    let out = root.fails(&["state", "get", "counters", "note"])?;
    assert!(out.stderr.contains("has no key note"), "{}", out.stderr);
    let out = root.fails(&["state", "delete", "counters", "note"])?;
    assert!(out.stderr.contains("has no key note"), "{}", out.stderr);
    let out = root.fails(&["state", "set", "Bad", "k", "1"])?;
    assert!(out.stderr.contains("bad bucket name"), "{}", out.stderr);

    // While a service holds the root: refused, naming it, unless --force.
    let svc = root.serve()?;
    let pid = svc.child.id().to_string();
    for args in [vec!["state", "set", "counters", "total", "0"], vec!["state", "delete", "counters", "doc"]] {
        let out = root.fails(&args)?;
        assert!(out.stderr.contains("cortex serve") && out.stderr.contains(&pid), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("--force"), "{}", out.stderr);
    }
    assert_eq!(number(&root, "total")?, 42, "nothing was written");
    assert!(root.ok(&["state", "get", "counters", "doc"]).is_ok(), "nothing was deleted");
    root.ok(&["state", "set", "counters", "total", "7", "--force"])?;
    root.ok(&["state", "delete", "counters", "doc", "--force"])?;
    assert_eq!(number(&root, "total")?, 7);
    assert!(root.fails(&["state", "get", "counters", "doc"]).is_ok());
    assert_eq!(svc.stop()?, 0);
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
        after: vec![],
        fence: None,
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
