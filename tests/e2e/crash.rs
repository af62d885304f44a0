//! The crash-point matrix: abort the process after each step of the
//! delivery protocol (fail points armed only in the tests' `cortex-failpoints`
//! binary), restart, and check the invariants.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use cortex_tests::Root;
use serde_json::Value;

fn short_lease(root: &Root) -> Result<()> {
    let config = std::fs::read_to_string(root.join("cortex.toml"))?.replace("lease_secs = 300", "lease_secs = 1");
    std::fs::write(root.join("cortex.toml"), config)?;
    Ok(())
}

#[test]
fn a_producer_crash_at_any_step_leaves_a_whole_event_or_none() -> Result<()> {
    for point in ["emit.written", "emit.synced", "emit.renamed", "emit.dir-synced"] {
        let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
        short_lease(&root)?;
        let out: cortex_tests::Out =
            root.failpoint_command(point).args(["emit", "task.created", "s", r#"{"n": 1}"#]).output()?.into();
        assert_ne!(out.code, 0, "{point}: the fail point did not fire");
        assert!(out.stdout.trim().is_empty(), "{point}: an id was reported for an event that may not exist");
        // Whatever is in the queue is whole and valid.
        let queued = root.files("events/queue");
        assert!(queued.len() <= 1, "{point}: {queued:?}");
        for f in &queued {
            let text = std::fs::read_to_string(root.join(&format!("events/queue/{f}")))?;
            let v = root.run_with(&["validate", "-"], text.as_bytes())?;
            assert_eq!(v.code, 0, "{point}: a torn queue file: {text}");
        }
        let expect_queued = matches!(point, "emit.renamed" | "emit.dir-synced");
        assert_eq!(queued.len(), usize::from(expect_queued), "{point}");
        // After a restart, what was queued is handled and the garbage goes.
        std::thread::sleep(Duration::from_millis(1100));
        let s = root.dispatch()?;
        assert_eq!(s["handled"].as_u64(), Some(u64::from(expect_queued)), "{point}: {s}");
        assert!(root.files("events/tmp").is_empty(), "{point}: temp files left: {:?}", root.files("events/tmp"));
        assert!(root.files("events/queue").is_empty() && root.files("events/claimed").is_empty(), "{point}");
    }
    Ok(())
}

#[test]
fn a_dispatcher_crash_at_any_step_loses_no_event_and_no_follow_up() -> Result<()> {
    let points = [
        "dispatch.handler-done",
        "settle.written",
        "settle.synced",
        "settle.renamed",
        "settle.dir-synced",
        "settle.archived",
    ];
    for point in points {
        let root = Root::with_handlers(
            r#"
[handlers.emitter]
component = "{emit-probe}"
events = ["worker.started"]
[handlers.sink]
component = "{noop}"
events = ["task.*"]
"#,
        )?;
        short_lease(&root)?;
        let triggers: Vec<String> =
            (0..5).map(|_| root.emit("worker.started", r#"{"count": 2}"#)).collect::<Result<_>>()?;
        let out: cortex_tests::Out = root.failpoint_command(point).args(["dispatch"]).output()?.into();
        assert_ne!(out.code, 0, "{point}: the fail point did not fire: {}", out.stderr);
        std::thread::sleep(Duration::from_millis(1100));
        let s = root.dispatch()?;
        assert_eq!(s["dead_lettered"], 0, "{point}: {s}");
        let archived = root.archived()?;
        let mut seen: HashMap<String, usize> = HashMap::new();
        for r in &archived {
            *seen.entry(r["event"]["event_id"].as_str().unwrap_or("").to_string()).or_default() += 1;
        }
        for t in &triggers {
            assert_eq!(seen.get(t), Some(&1), "{point}: trigger {t} archived {:?} times", seen.get(t));
            // Every trigger's follow-ups exist (a re-run may add more: at-least-once).
            let follow_ups =
                archived.iter().filter(|r| r["event"]["metadata"]["caused_by"]["event_id"] == t.as_str()).count();
            assert!(follow_ups >= 2, "{point}: trigger {t} has {follow_ups} follow-ups archived, expected at least 2");
        }
        let doubled: usize = seen.values().filter(|n| **n > 1).count();
        assert_eq!(doubled, 0, "{point}: an archived event was archived again");
        assert!(root.files("events/queue").is_empty() && root.files("events/claimed").is_empty(), "{point}");
        let _: Vec<Value> = root.dead_letters()?;
    }
    Ok(())
}

#[test]
fn the_shipped_binary_has_no_armed_crash_points() -> Result<()> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    for (args, point) in
        [(vec!["emit", "task.created", "s", r#"{"n": 1}"#], "emit.written"), (vec!["dispatch"], "settle.written")]
    {
        let out: cortex_tests::Out = root.command().args(&args).env("CORTEX_FAILPOINT", point).output()?.into();
        assert_eq!(out.code, 0, "{point}: the shipped cortex aborted at a crash point: {}", out.stderr);
    }
    assert_eq!(root.archived()?.len(), 1, "the event was emitted and handled");
    Ok(())
}
