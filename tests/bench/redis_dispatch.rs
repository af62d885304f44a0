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
//!   events the processes settled for good (follow-ups included). The
//!   no-op runs take [`N_NOOP`] events, so that the start (a tenth of a
//!   second) does not hide how the processes share the work.
//!
//! Scaling on one machine is bounded by its cores: Redis, the producer
//! and every dispatch process share them. So each run also measures the
//! CPU it took — the dispatch processes' (`getrusage` of the waited
//! children) and the Redis server's (`INFO cpu`) — and the row gives what
//! one process keeps busy and the ceilings that leaves for any number of
//! processes on this machine: cores ÷ cores busy with one, and, since a
//! Redis server executes commands on one thread, 1 ÷ the share of that
//! thread one process keeps busy.
//!
//! Every key is under a fresh prefix on the test Redis, deleted afterwards.

use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use cortex_tests::{RedisPrefix, Root, event, shared_cache};
use serde_json::{Value, json};

use crate::Row;

const N: usize = 10_000;
/// Events of the no-op runs.
const N_NOOP: usize = 50_000;
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

/// CPU seconds (user + system) of the children this process has waited for.
fn children_cpu() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage the call fills.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &raw mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU seconds the Redis server has used (`INFO cpu`: user + system).
fn redis_cpu(scratch: &RedisPrefix) -> Result<f64> {
    let info: String = scratch
        .server
        .run("INFO cpu", cortex::store::redis::Budget::Once, |c| ::redis::cmd("INFO").arg("cpu").query(c))?;
    let field = |name: &str| -> f64 {
        info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok()).unwrap_or(0.0)
    };
    Ok(field("used_cpu_user") + field("used_cpu_sys"))
}

/// One run of `k` dispatch processes.
struct Run {
    settled: u64,
    secs: f64,
    reruns: u64,
    /// CPU seconds of the dispatch processes and of the Redis server.
    cortex_cpu: f64,
    redis_cpu: f64,
}

/// `k` dispatch processes at once on `k` roots of one prefix.
fn dispatch_by(handlers: Option<&str>, lines: &str, k: usize) -> Result<Run> {
    let scratch = RedisPrefix::new(&format!("bench-dispatch-{k}"))?;
    let roots: Vec<Root> = (0..k).map(|_| root_on(&scratch, handlers)).collect::<Result<_>>()?;
    // Warm: each root compiles (or reads from the shared cache) its handlers.
    for r in &roots {
        r.ok(&["dispatch"])?;
    }
    emit(&roots[0], lines)?;
    let (cpu_before, redis_before) = (children_cpu(), redis_cpu(&scratch)?);
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
    let (cortex_cpu, redis_cpu) = (children_cpu() - cpu_before, redis_cpu(&scratch)? - redis_before);
    let left: Value = serde_json::from_str(&roots[0].ok(&["status", "--json"])?)?;
    ensure!(left["queue_depth"] == 0 && left["claimed"] == 0, "events left after dispatch: {left}");
    let queued = lines.lines().count() as u64;
    ensure!(settled >= queued, "only {settled} of {queued} settled");
    Ok(Run { settled, secs, reruns, cortex_cpu, redis_cpu })
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

    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
    for (what, handlers, lines) in
        [("no-op handler", Some(NOOP), noops(N_NOOP)), ("the seven built-in handlers, mixed stream", None, mixed(N))]
    {
        let mut rates = Vec::new();
        for k in 1..=3 {
            let run = dispatch_by(handlers, &lines, k)?;
            let rate = run.settled as f64 / run.secs;
            eprintln!(
                "   dispatch on Redis, {what}, {k} process(es): {rate:.0}/s; CPU {:.2} s cortex, {:.2} s Redis",
                run.cortex_cpu, run.redis_cpu
            );
            rates.push((k, rate, run));
        }
        let one = rates[0].1;
        let measured = rates
            .iter()
            .map(|(k, r, run)| {
                format!(
                    "{k}: {r:.0}/s ({} events, {:.2} s{})",
                    run.settled,
                    run.secs,
                    if run.reruns > 0 { format!(", {} reruns", run.reruns) } else { String::new() }
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let two = rates[1].1 / one;
        let first = &rates[0].2;
        let per_event = |cpu: f64| cpu / first.settled as f64 * 1e6;
        let busy = (first.cortex_cpu + first.redis_cpu) / first.secs;
        let redis_busy = first.redis_cpu / first.secs;
        let n = lines.lines().count();
        rows.push(Row {
            area: "redis",
            metric: format!(
                "`cortex dispatch` of {n} events on Redis, {what}: 1, 2 and 3 processes at once on roots of their own (process start included). CPU per event with 1 process: {:.1} µs in cortex, {:.1} µs in Redis; 1 process keeps {busy:.2} of this machine's {cores:.0} cores busy and Redis's one thread {:.0}% busy, so no number of processes here can exceed {:.2}× it",
                per_event(first.cortex_cpu),
                per_event(first.redis_cpu),
                redis_busy * 100.0,
                (cores / busy).min(1.0 / redis_busy)
            ),
            target: "≥ 1.6× from 1 to 2 processes".into(),
            measured,
            ratio: format!("{two:.2}× from 1 to 2, {:.2}× from 1 to 3", rates[2].1 / one),
            met: Some(two >= 1.6),
        });
    }
    Ok(rows)
}
