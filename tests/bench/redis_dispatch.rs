//! Cortex on Redis (issue 13), in the same run as the raw Redis floor
//! (`redis` section) and the filesystem's figures (`dispatch`, `store`):
//!
//! - `cortex emit --batch` of [`EMIT_N`] events into a Redis root, one
//!   process, wall time;
//! - `cortex dispatch` of [`N`] queued events by 1, 2 and 3 processes at
//!   once, each on a root of its own (as on separate hosts) on one Redis
//!   prefix, for a no-op handler and for the seven built-in handlers on the
//!   mixed stream the `dispatch` section uses. Events/s run from the first
//!   process's start to the last one's exit (process start and handler
//!   loading from a warm compiled-component cache included), counting the
//!   events the processes settled for good (follow-ups included).
//!
//! Every key is under a fresh prefix on the test Redis, deleted afterwards.

use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use cortex_tests::{RedisPrefix, Root, event, shared_cache};
use serde_json::{Value, json};

use crate::Row;

const N: usize = 10_000;
const EMIT_N: usize = 100_000;

const NOOP: &str = "[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n";

/// A root on `scratch`'s prefix: `handlers` (None: the default seven).
fn root_on(scratch: &RedisPrefix, handlers: Option<&str>) -> Result<Root> {
    let mut root = match handlers {
        Some(h) => Root::with_handlers(h)?,
        None => Root::new()?,
    };
    root.cache = Some(shared_cache());
    std::fs::create_dir_all(shared_cache())?;
    root.configure(&format!("\n[backend]\nurl = \"{}\"\nprefix = \"{}\"\n", scratch.url, scratch.prefix))?;
    Ok(root)
}

/// The mixed stream of the `dispatch` section, as JSONL.
fn mixed(n: usize) -> String {
    (0..n)
        .map(|i| {
            let (t, payload) = match i % 4 {
                0 => ("worker.heartbeat", json!({"worker_id": format!("w-{}", i % 32)})),
                1 => (
                    "routing.decision_made",
                    json!({"master": format!("m-{}", i % 8), "expert": "e", "confidence": 0.9}),
                ),
                2 => (
                    "worker.completed",
                    json!({"worker_id": format!("w-{}", i % 32), "tokens_used": 10, "duration_ms": 5}),
                ),
                _ => ("security.scan_completed", json!({"scanner": "s", "findings": {"low": 1}})),
            };
            event(t).source("bench").payload(payload).line()
        })
        .collect()
}

fn noops(n: usize) -> String {
    (0..n).map(|_| event("task.created").source("bench").line()).collect()
}

/// Queues `lines` through one `cortex emit --batch`; returns its wall time in s.
fn emit(root: &Root, lines: &str) -> Result<f64> {
    let start = Instant::now();
    let out = root.run_with(&["emit", "--batch"], lines.as_bytes())?;
    let secs = start.elapsed().as_secs_f64();
    ensure!(out.code == 0, "emit --batch failed: {}", out.stderr);
    Ok(secs)
}

/// `k` dispatch processes at once on `k` roots of one prefix; returns
/// (events settled for good, wall seconds, reruns).
fn dispatch_by(handlers: Option<&str>, lines: &str, k: usize) -> Result<(u64, f64, u64)> {
    let scratch = RedisPrefix::new(&format!("bench-dispatch-{k}"))?;
    let roots: Vec<Root> = (0..k).map(|_| root_on(&scratch, handlers)).collect::<Result<_>>()?;
    // Warm: each root compiles (or reads from the shared cache) its handlers.
    for r in &roots {
        r.ok(&["dispatch"])?;
    }
    emit(&roots[0], lines)?;
    let start = Instant::now();
    let children = roots
        .iter()
        .map(|r| r.command().args(["dispatch", "--json"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn())
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut settled = 0;
    let mut reruns = 0;
    for c in children {
        let out = c.wait_with_output()?;
        ensure!(out.status.success() || out.status.code() == Some(3), "a dispatch process failed");
        let s: Value = serde_json::from_slice(&out.stdout).context("dispatch --json")?;
        ensure!(s["dead_lettered"] == 0, "dead letters: {s}");
        let count = |key: &str| s[key].as_u64().unwrap_or(0);
        settled += count("handled") + count("unhandled");
        reruns += count("rerun");
    }
    let secs = start.elapsed().as_secs_f64();
    let left: Value = serde_json::from_str(&roots[0].ok(&["status", "--json"])?)?;
    ensure!(left["queue_depth"] == 0 && left["claimed"] == 0, "events left after dispatch: {left}");
    ensure!(settled >= N as u64, "only {settled} of {N} settled");
    Ok((settled, secs, reruns))
}

pub fn run() -> Result<Vec<Row>> {
    let mut rows = Vec::new();

    let scratch = RedisPrefix::new("bench-emit")?;
    let root = root_on(&scratch, Some(NOOP))?;
    let lines = noops(EMIT_N);
    let secs = emit(&root, &lines)?;
    let rate = EMIT_N as f64 / secs;
    eprintln!("   emit --batch into Redis: {rate:.0}/s");
    rows.push(Row {
        area: "redis",
        metric: format!("`cortex emit --batch` of {EMIT_N} events into Redis (one process, pipelined enqueue, wall)"),
        target: "≥ 50,000 events/s".into(),
        measured: format!("{rate:.0} events/s ({secs:.2} s)"),
        ratio: format!("{:.2}× the target", rate / 50_000.0),
        met: Some(rate >= 50_000.0),
    });
    drop(root);
    drop(scratch);

    for (what, handlers, lines) in
        [("no-op handler", Some(NOOP), noops(N)), ("the seven built-in handlers, mixed stream", None, mixed(N))]
    {
        let mut rates = Vec::new();
        for k in 1..=3 {
            let (settled, secs, reruns) = dispatch_by(handlers, &lines, k)?;
            let rate = settled as f64 / secs;
            eprintln!("   dispatch on Redis, {what}, {k} process(es): {rate:.0}/s");
            rates.push((k, rate, settled, secs, reruns));
        }
        let one = rates[0].1;
        let measured = rates
            .iter()
            .map(|(k, r, settled, secs, reruns)| {
                format!(
                    "{k}: {r:.0}/s ({settled} events, {secs:.2} s{})",
                    if *reruns > 0 { format!(", {reruns} reruns") } else { String::new() }
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let two = rates[1].1 / one;
        rows.push(Row {
            area: "redis",
            metric: format!(
                "`cortex dispatch` of {N} events on Redis, {what}: 1, 2 and 3 processes at once on roots of their own (process start included)"
            ),
            target: "≥ 1.6× from 1 to 2 processes".into(),
            measured,
            ratio: format!("{two:.2}× from 1 to 2, {:.2}× from 1 to 3", rates[2].1 / one),
            met: Some(two >= 1.6),
        });
    }
    Ok(rows)
}
