//! Dispatcher figures (issue: sandboxed handlers): `cortex dispatch` of
//! 10,000 queued events, and the per-event cost against the floor of a bare
//! instantiate + call of a no-op component from its `InstancePre`.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use cortex::config::Config;
use cortex::event::NewEvent;
use cortex::layout::Layout;
use cortex::queue::{FsQueue, Queue};
use cortex::sandbox::Sandbox;
use cortex_tests::Root;
use serde_json::{Value, json};

use crate::{Row, median};

const N: usize = 10_000;

/// Queues `n` events built by `f` in one group commit.
pub fn queue(root: &Root, n: usize, f: impl Fn(usize) -> (String, Value)) -> Result<()> {
    let config = Config::load(&root.path)?;
    let validator = config.validator();
    let q = FsQueue::open(Layout::new(&root.path), validator.clone())?;
    let events = (0..n)
        .map(|i| {
            let (t, payload) = f(i);
            let Value::Object(payload) = payload else { unreachable!("payloads are objects") };
            validator
                .validate(
                    NewEvent { event_type: t, source: "bench".into(), payload, ..Default::default() }.into_value(),
                )
                .map_err(anyhow::Error::from)
        })
        .collect::<Result<Vec<_>>>()?;
    q.enqueue(&events)
}

/// Runs `cortex dispatch --json`; returns (summary, process wall time).
pub fn dispatch(root: &Root) -> Result<(Value, Duration)> {
    let start = Instant::now();
    let out = root.command().args(["dispatch", "--json"]).stderr(std::process::Stdio::null()).output()?;
    let wall = start.elapsed();
    ensure!(out.status.success(), "dispatch failed");
    Ok((serde_json::from_slice(&out.stdout)?, wall))
}

pub fn floor() -> Result<Duration> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    let config = Config::load(&root.path)?;
    let sandbox = Sandbox::new(&root.path, config.validator(), false)?;
    let loaded = sandbox.load("sink", &config.handlers["sink"])?;
    let event = config.validator().validate(
        NewEvent { event_type: "task.created".into(), source: "bench".into(), ..Default::default() }.into_value(),
    )?;
    let mut times = Vec::with_capacity(3000);
    for i in 0..3300 {
        let t = Instant::now();
        let inv = sandbox.invoke(&loaded, &event, 1);
        let took = t.elapsed();
        ensure!(inv.result.is_ok(), "noop failed");
        if i >= 300 {
            times.push(took);
        }
    }
    Ok(median(times))
}

pub fn run() -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let floor = floor()?;
    rows.push(Row {
        area: "dispatch",
        metric: "floor: instantiate + call of a no-op component from its InstancePre (fresh store + WASI context)"
            .into(),
        target: "(reference)".into(),
        measured: format!("{:.1} µs", floor.as_secs_f64() * 1e6),
        ratio: "—".into(),
        met: None,
    });

    // No-op handler, stateless, so two lanes.
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\nconcurrency = 2\n")?;
    queue(&root, N, |i| ("task.created".into(), json!({"n": i})))?;
    let (s, wall) = dispatch(&root)?;
    ensure!(s["handled"] == N, "not all handled: {s}");
    let secs = s["elapsed_ms"].as_f64().unwrap_or(0.0) / 1000.0;
    let rate = N as f64 / secs;
    let per_event = Duration::from_secs_f64(secs / N as f64);
    rows.push(Row {
        area: "dispatch",
        metric: format!("`cortex dispatch` of {N} queued events, no-op handler, fresh instance per event, durable"),
        target: "≥ 10,000 events/s".into(),
        measured: format!("{rate:.0} events/s ({:.2} s; process {:.2} s)", secs, wall.as_secs_f64()),
        ratio: format!("{:.2}× the target; {:.0}× the seed's 100/s", rate / 10_000.0, rate / 100.0),
        met: Some(rate >= 10_000.0),
    });
    let ratio = per_event.as_secs_f64() / floor.as_secs_f64();
    rows.push(Row {
        area: "dispatch",
        metric: "per-event cost in that run (wall / events) against the floor".into(),
        target: "≤ 3× the floor".into(),
        measured: format!("{:.1} µs", per_event.as_secs_f64() * 1e6),
        ratio: format!("{ratio:.2}× the floor"),
        met: Some(ratio <= 3.0),
    });
    drop(root);

    // The seven built-in handlers on a mixed stream (their follow-ups included).
    let root = Root::new()?;
    queue(&root, N, |i| match i % 4 {
        0 => ("worker.heartbeat".into(), json!({"worker_id": format!("w-{}", i % 32)})),
        1 => (
            "routing.decision_made".into(),
            json!({"master": format!("m-{}", i % 8), "expert": "e", "confidence": 0.9}),
        ),
        2 => (
            "worker.completed".into(),
            json!({"worker_id": format!("w-{}", i % 32), "tokens_used": 10, "duration_ms": 5}),
        ),
        _ => ("security.scan_completed".into(), json!({"scanner": "s", "findings": {"low": 1}})),
    })?;
    let (s, _) = dispatch(&root)?;
    ensure!(s["dead_lettered"] == 0, "dead letters in the mixed run: {s}");
    let secs = s["elapsed_ms"].as_f64().unwrap_or(0.0) / 1000.0;
    // Events settled for good (follow-ups included), not claims: an event
    // run again after a state conflict is claimed twice but counts once.
    let count = |k: &str| s[k].as_u64().unwrap_or(0);
    let events = count("handled") + count("unhandled");
    ensure!(events >= N as u64, "not all handled: {s}");
    let rate = events as f64 / secs;
    rows.push(Row {
        area: "dispatch",
        metric: format!(
            "`cortex dispatch` of {N} mixed events through the seven built-in handlers (stateful, one lane each), durable"
        ),
        target: "≥ 5,000 events/s (seed: 100 events/s)".into(),
        measured: format!(
            "{rate:.0} events/s ({events} events incl. follow-ups, {} reruns, {secs:.2} s)",
            count("rerun")
        ),
        ratio: format!("{:.2}× the target; {:.0}× the seed's 100/s", rate / 5000.0, rate / 100.0),
        met: Some(rate >= 5000.0),
    });
    Ok(rows)
}
