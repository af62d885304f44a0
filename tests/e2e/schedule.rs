//! `[schedules]`: `cortex serve` queues timer events once per tick, across
//! several services on one root, across several hosts on one Redis, and
//! across restarts, without a burst of missed ticks after a stop.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use cortex_tests::{RedisPrefix, Root, wait_for};
use serde_json::Value;

fn scheduled(root: &Root) -> Result<Vec<Value>> {
    Ok(root.archive_records_of("task.created")?.into_iter().map(|r| r["event"].clone()).collect())
}

/// The scheduled events archived on a Redis root, as `export` prints them.
fn exported_ticks(root: &Root) -> Result<Vec<Value>> {
    let lines = root.ok(&["export", "--format", "jsonl"])?;
    let events: Vec<Value> = lines.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    Ok(events.into_iter().filter(|e| e["event_type"] == "task.created").collect())
}

/// Three hosts (a root each, as on three machines) on one Redis prefix,
/// each with the same schedule: every host's scheduler fires every tick,
/// and the store queues each tick once (the first host to offer its id).
#[test]
fn hosts_on_one_redis_fire_each_tick_once() -> Result<()> {
    let redis = RedisPrefix::new("schedule")?;
    let hosts: Vec<Root> = (0..3)
        .map(|_| {
            let root = Root::with_handlers(
                "[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n\
                 [schedules.tick]\nevery = \"1s\"\nevent_type = \"task.created\"\n",
            )?;
            root.configure(&format!("\n[backend]\nurl = \"{}\"\nprefix = \"{}\"\n", redis.url, redis.prefix))?;
            Ok(root)
        })
        .collect::<Result<_>>()?;
    let services = hosts.iter().map(Root::serve).collect::<Result<Vec<_>>>()?;
    wait_for(Duration::from_secs(30), || Ok(exported_ticks(&hosts[0])?.len() >= 5))?;
    for s in services {
        assert_eq!(s.stop()?, 0);
    }
    let events = exported_ticks(&hosts[0])?;
    let ticks: Vec<&str> = events.iter().map(|e| e["payload"]["tick"].as_str().unwrap_or("")).collect();
    let unique: BTreeSet<&str> = ticks.iter().copied().collect();
    assert_eq!(unique.len(), ticks.len(), "a tick was queued by more than one host: {ticks:?}");
    Ok(())
}

#[test]
fn two_services_fire_each_tick_once_and_a_restart_fires_missed_ticks_once() -> Result<()> {
    let root = Root::with_handlers(
        "[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n\
         [schedules.tick]\nevery = \"1s\"\nevent_type = \"task.created\"\npayload = { job = \"sweep\" }\n",
    )?;
    let (a, b) = (root.serve()?, root.serve()?);
    wait_for(Duration::from_secs(20), || Ok(scheduled(&root)?.len() >= 5))?;
    assert_eq!(a.stop()?, 0);
    assert_eq!(b.stop()?, 0);
    let events = scheduled(&root)?;
    let ticks: Vec<&str> = events.iter().map(|e| e["payload"]["tick"].as_str().unwrap_or("")).collect();
    let unique: BTreeSet<&str> = ticks.iter().copied().collect();
    assert_eq!(unique.len(), ticks.len(), "a tick fired twice: {ticks:?}");
    let ids: BTreeSet<&str> = events.iter().map(|e| e["event_id"].as_str().unwrap_or("")).collect();
    assert_eq!(ids.len(), events.len());
    for e in &events {
        assert_eq!(e["source"], "cortex-scheduler");
        assert_eq!(e["payload"]["job"], "sweep");
        assert_eq!(e["payload"]["schedule"], "tick");
        assert_eq!(e["metadata"]["tags"], serde_json::json!(["scheduled"]));
    }
    let status = root.ok(&["status"])?;
    assert!(status.contains("schedule:      tick (every 1s): last tick"), "{status}");

    // Stopped for a few ticks: the restart fires one event for the latest
    // tick, saying how many it skipped, not a burst.
    let before = scheduled(&root)?.len();
    std::thread::sleep(Duration::from_secs(4));
    let c = root.serve()?;
    wait_for(Duration::from_secs(20), || Ok(scheduled(&root)?.len() > before))?;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.stop()?, 0);
    let after = scheduled(&root)?;
    let first_after = after
        .iter()
        .filter(|e| !events.iter().any(|old| old["event_id"] == e["event_id"]))
        .min_by_key(|e| e["payload"]["tick"].as_str().unwrap_or("").to_string())
        .cloned()
        .unwrap_or_default();
    assert!(first_after["payload"]["missed"].as_u64().unwrap_or(0) >= 2, "{first_after}");
    let new_ticks = after.len() - before;
    assert!(new_ticks <= 3, "a burst of {new_ticks} events after the restart");
    Ok(())
}

#[test]
fn a_bad_schedule_is_refused_with_its_name() -> Result<()> {
    let root = Root::with_handlers("[schedules.nightly]\ncron = \"61 3 * * *\"\nevent_type = \"task.created\"\n")?;
    let out = root.fails(&["status"])?;
    assert!(out.stderr.contains("schedules.nightly") && out.stderr.contains("does not parse"), "{}", out.stderr);
    let root = Root::with_handlers("[schedules.x]\nevery = \"5m\"\nevent_type = \"billing.paid\"\n")?;
    let out = root.fails(&["status"])?;
    assert!(out.stderr.contains("custom_types"), "{}", out.stderr);
    Ok(())
}
