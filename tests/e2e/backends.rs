//! The same user journeys on both backends (issue 13): each test runs its
//! steps on a filesystem root, then on a root whose `[backend]` is the
//! test Redis under a fresh prefix (deleted afterwards). Only commands are
//! used to look — `status`, `dlq`, `replay`, `trace`, `export`, `state` —
//! never the files, so what passes here is what a user sees on either.

use anyhow::{Context, Result};
use cortex_tests::{RedisPrefix, Root, event};
use serde_json::Value;

const COUNTER: &str = r#"
[handlers.counter]
component = "{kv-counter}"
events = ["task.*"]
keyvalue = ["counters"]
keyvalue_read = ["settings"]
max_attempts = 2
backoff_ms = 20
"#;

/// Runs `journey` on a filesystem root, then on a Redis one.
fn on_both(name: &str, journey: impl Fn(&Root) -> Result<()>) -> Result<()> {
    let fs = Root::with_handlers(COUNTER)?;
    journey(&fs).context("on the filesystem backend")?;
    let redis = RedisPrefix::new(name)?;
    let root = Root::with_handlers(COUNTER)?;
    root.configure(&format!("\n[backend]\nurl = \"{}\"\nprefix = \"{}\"\n", redis.url, redis.prefix))?;
    journey(&root).context("on the Redis backend")?;
    anyhow::ensure!(
        !redis.keys()?.is_empty(),
        "the Redis journey kept nothing under its prefix: it ran on the filesystem"
    );
    assert!(root.files("events/archive").is_empty(), "a Redis root archived on its filesystem");
    Ok(())
}

fn json(root: &Root, args: &[&str]) -> Result<Value> {
    let out = root.ok(args)?;
    serde_json::from_str(&out).with_context(|| format!("cortex {args:?} printed: {out}"))
}

fn status(root: &Root) -> Result<Value> {
    json(root, &["status", "--json"])
}

fn total(root: &Root) -> Result<u64> {
    let out = root.ok(&["state", "get", "counters", "total"])?;
    out.trim().parse().with_context(|| format!("state get printed {out:?}"))
}

fn dead_letter_ids(root: &Root) -> Result<Vec<String>> {
    let listed = json(root, &["dlq", "list", "--json"])?;
    Ok(listed
        .as_array()
        .context("dlq list --json is an array")?
        .iter()
        .filter_map(|r| r["record"]["event"]["event_id"].as_str().map(str::to_string))
        .collect())
}

#[test]
fn emit_dispatch_status_trace_state_and_export_agree_on_both_backends() -> Result<()> {
    on_both("journey", |root| {
        let lines: String = (0..5).map(|i| event("task.created").source(&format!("s{i}")).line()).collect();
        let ids = root.batch(&lines)?;
        let refused = root.emit("task.created", r#"{"refuse": true}"#)?;
        let s = status(root)?;
        assert_eq!(s["queue_depth"], 6, "{s}");

        let summary = root.dispatch()?;
        assert_eq!((summary["handled"].as_u64(), summary["dead_lettered"].as_u64()), (Some(5), Some(1)), "{summary}");
        let s = status(root)?;
        assert_eq!((s["queue_depth"].as_u64(), s["dead_letters"].as_u64()), (Some(0), Some(1)), "{s}");
        assert_eq!(total(root)?, 5, "the counter applied each handled event once");

        let traced = json(root, &["trace", &ids[0], "--json"])?;
        assert_eq!(traced["events"], 1, "{traced}");
        assert!(traced.to_string().contains("handled"), "{traced}");
        let out = root.fails(&["trace", "evt_20991231_000000_nobody"])?;
        assert!(out.stderr.contains("no event or correlation id"), "{}", out.stderr);

        let exported = root.ok(&["export", "--format", "jsonl"])?;
        let exported: Vec<&str> = exported.lines().collect();
        assert_eq!(exported.len(), 5, "{exported:?}");
        assert!(ids.iter().all(|id| exported.iter().any(|l| l.contains(id.as_str()))));
        assert_eq!(dead_letter_ids(root)?, vec![refused]);
        Ok(())
    })
}

#[test]
fn replay_filters_dry_runs_requeue_and_direct_on_both_backends() -> Result<()> {
    on_both("replay", |root| {
        let lines: String = [
            event("task.created").source("a").at("2025-11-30T10:00:00Z").line(),
            event("task.created").source("a").at("2025-11-30T11:00:00Z").line(),
            event("task.assigned").source("b").at("2025-12-01T10:00:00Z").line(),
            event("task.assigned").source("b").at("2025-12-01T11:00:00Z").line(),
        ]
        .concat();
        let ids = root.batch(&lines)?;
        assert_eq!(root.dispatch()?["handled"], 4);

        let selected = |args: &[&str]| -> Result<Vec<String>> {
            let mut all = vec!["replay", "--dry-run", "--json"];
            all.extend_from_slice(args);
            let report = json(root, &all)?;
            let mut got: Vec<String> = report["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["event_id"].as_str().map(str::to_string))
                .collect();
            got.sort();
            Ok(got)
        };
        let sorted = |v: &[&String]| -> Vec<String> {
            let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            v.sort();
            v
        };
        assert_eq!(selected(&["--source", "a"])?, sorted(&[&ids[0], &ids[1]]));
        assert_eq!(selected(&["--date", "2025-12-01"])?, sorted(&[&ids[2], &ids[3]]));
        assert_eq!(selected(&["--type", "task.assigned"])?, sorted(&[&ids[2], &ids[3]]));
        assert_eq!(selected(&["--event-id", &ids[1]])?, vec![ids[1].clone()]);
        assert_eq!(status(root)?["queue_depth"], 0, "a dry run queued nothing");

        root.ok(&["replay", "--source", "a"])?;
        assert_eq!(status(root)?["queue_depth"], 2);
        assert_eq!(root.dispatch()?["handled"], 2);
        assert_eq!(total(root)?, 6, "a replay applies its state change again, on purpose");

        root.ok(&["replay", "--mode", "direct", "--event-id", &ids[3]])?;
        assert_eq!(total(root)?, 7, "a direct replay commits its state change too");
        Ok(())
    })
}

#[test]
fn dlq_lists_shows_retries_and_purges_on_both_backends() -> Result<()> {
    on_both("dlq", |root| {
        let r1 = root.emit("task.created", r#"{"refuse": true}"#)?;
        let r2 = root.emit("task.created", r#"{"refuse": true, "n": 2}"#)?;
        assert_eq!(root.dispatch()?["dead_lettered"], 2);
        let mut listed = dead_letter_ids(root)?;
        listed.sort();
        let mut want = vec![r1.clone(), r2.clone()];
        want.sort();
        assert_eq!(listed, want);
        let shown = root.ok(&["dlq", "show", &r1])?;
        assert!(shown.contains(&r1) && shown.contains("attempt 1"), "{shown}");

        let out = root.ok(&["dlq", "retry", &r1])?;
        assert!(out.contains("put 1 dead letters back in the queue"), "{out}");
        assert_eq!((status(root)?["queue_depth"].as_u64(), dead_letter_ids(root)?), (Some(1), vec![r2.clone()]));
        // Still refused: back among the dead letters, with its retry counted.
        assert_eq!(root.dispatch()?["dead_lettered"], 1);
        let shown = json(root, &["dlq", "show", &r1, "--json"])?;
        assert_eq!(shown["event"]["metadata"]["dlq_retry"]["count"], 1, "{shown}");

        root.ok(&["dlq", "purge", &r2, "--yes"])?;
        assert_eq!(dead_letter_ids(root)?, vec![r1.clone()]);
        assert_eq!(total(root).ok(), None, "refused invocations changed no state");
        Ok(())
    })
}

/// A repair (`cortex state set/delete`) is refused while a service serves
/// the root, on either backend: on the filesystem the root's own services
/// count; on Redis those of every host, each listed under the prefix while
/// it runs and taken off when it stops.
#[test]
fn a_repair_is_refused_while_a_service_on_another_host_serves_the_redis_root() -> Result<()> {
    let redis = RedisPrefix::new("presence")?;
    let backend = format!("\n[backend]\nurl = \"{}\"\nprefix = \"{}\"\n", redis.url, redis.prefix);
    let (serving, repairing) = (Root::with_handlers(COUNTER)?, Root::with_handlers(COUNTER)?);
    serving.configure(&backend)?;
    repairing.configure(&backend)?;
    let svc = serving.serve()?;
    cortex_tests::wait_for(std::time::Duration::from_secs(10), || {
        Ok(redis.keys()?.iter().any(|k| k.starts_with(&format!("{}:host:", redis.prefix))))
    })?;
    let refused = repairing.fails(&["state", "set", "counters", "total", "7"])?;
    assert!(
        refused.stderr.contains("refusing to change handler state while `cortex serve` runs"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains(&format!(":{}", svc.child.id())),
        "the refusal names the service: {}",
        refused.stderr
    );
    // --force writes anyway; a stop takes the service off the list.
    repairing.ok(&["state", "set", "counters", "total", "7", "--force"])?;
    assert_eq!(svc.stop()?, 0);
    repairing.ok(&["state", "set", "counters", "total", "8"])?;
    assert_eq!(repairing.ok(&["state", "get", "counters", "total"])?.trim(), "8");
    Ok(())
}
