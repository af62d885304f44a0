//! Handler state figures (issue 12: `wasi:keyvalue`): the per-event cost of
//! a stateful handler with a bucket of 1,000 keys against one of 1,000,000
//! (it must not grow: a read or write is one B-tree descent), and the cost
//! of one key-value read and one write from a guest, per call.
//!
//! The handler is the `kv-counter` fixture: per event two increments and a
//! set in bucket `counters`; with `"gets": N` / `"sets": N` it first makes N
//! reads / N writes in the same invocation. The large bucket is filled
//! through the backend directly (`fill/NNNNNNN` keys), in one transaction.
//! `cortex-bench state` runs this section alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use cortex::config::Config;
use cortex::event::NewEvent;
use cortex::kv::sqlite::SqliteBackend;
use cortex::kv::{Backend, Changes, Mark, Op};
use cortex::sandbox::Sandbox;
use cortex_tests::Root;
use serde_json::{Map, Value, json};

use crate::Row;
use crate::dispatch::{dispatch, queue};

/// Events per dispatch run.
const N: usize = 5_000;
/// Calls per invocation for the per-call figures.
const CALLS: u64 = 20_000;

fn counter_root() -> Result<Root> {
    Root::with_handlers(
        "[handlers.counter]\ncomponent = \"{kv-counter}\"\nevents = [\"task.*\"]\nkeyvalue = [\"counters\"]\n",
    )
}

/// Fills bucket `counters` with `keys` keys `fill/NNNNNNN` (100-byte
/// values), in transactions of 100,000.
fn fill(root: &Root, keys: usize) -> Result<()> {
    let db = SqliteBackend::open(&root.join("kv/state.db"))?;
    let value = vec![b'x'; 100];
    for (chunk, start) in (0..keys).step_by(100_000).enumerate() {
        let ops = (start..(start + 100_000).min(keys))
            .map(|i| ("counters".to_string(), format!("fill/{i:07}"), Op::Set(value.clone())))
            .collect();
        let mark = Mark { event_id: format!("bench-fill-{chunk}"), handler: "bench".into(), generation: 0 };
        db.commit(&[Changes { mark, ops, reads: Vec::new(), after: Vec::new(), fence: None }])?;
    }
    Ok(())
}

/// `cortex dispatch` of [`N`] events through the counter with a bucket of
/// `keys` keys: µs per event.
fn per_event(keys: usize) -> Result<f64> {
    let root = counter_root()?;
    let start = Instant::now();
    fill(&root, keys)?;
    eprintln!("   filled {keys} keys in {:.1} s", start.elapsed().as_secs_f64());
    queue(&root, N, |i| ("task.created".into(), json!({"n": i})))?;
    let (s, _) = dispatch(&root)?;
    ensure!(s["handled"] == N, "not all handled: {s}");
    let db = SqliteBackend::open(&root.join("kv/state.db"))?;
    let total = db.get("counters", "total")?.map(|v| v.value);
    ensure!(total == Some(N.to_string().into_bytes()), "the counter is not {N}");
    Ok(s["elapsed_ms"].as_f64().unwrap_or(0.0) * 1000.0 / N as f64)
}

/// Median time of one invocation of the counter with `payload`, in-process
/// (no commit: the writes stay in the invocation's buffer).
fn invocation(sandbox: &Sandbox, root: &Root, payload: Value) -> Result<Duration> {
    let config = Config::load(&root.path)?;
    let loaded = sandbox.load("counter", &config.handlers["counter"])?;
    let Value::Object(payload) = payload else { anyhow::bail!("payloads are objects") };
    let event = config.validator().validate(
        NewEvent { event_type: "task.created".into(), source: "bench".into(), payload, ..Default::default() }
            .into_value(),
    )?;
    let mut times = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        let inv = sandbox.invoke(&loaded, &event, 1);
        times.push(t.elapsed());
        ensure!(inv.result.is_ok(), "the counter failed: {:?}", inv.result);
    }
    Ok(crate::median(times))
}

pub fn run() -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let small = per_event(1_000)?;
    let large = per_event(1_000_000)?;
    let growth = large / small;
    rows.push(Row {
        area: "state",
        metric: format!(
            "per-event cost of `cortex dispatch` of {N} events through a counter handler (2 increments + 1 set), bucket of 1k vs 1M keys"
        ),
        target: "does not grow with the keys".into(),
        measured: format!("{small:.0} µs (1k keys) vs {large:.0} µs (1M keys)"),
        ratio: format!("{growth:.2}× with 1,000× the keys"),
        met: Some(growth <= 1.5),
    });

    let root = counter_root()?;
    fill(&root, 1_000)?;
    let config = Config::load(&root.path)?;
    let backend: Arc<dyn Backend> = Arc::new(SqliteBackend::open(&root.join("kv/state.db"))?);
    let sandbox = Sandbox::new(&root.path, config.validator(), false)?.with_state(backend);
    let base = invocation(&sandbox, &root, Value::Object(Map::new()))?;
    let gets = invocation(&sandbox, &root, json!({"gets": CALLS}))?;
    let sets = invocation(&sandbox, &root, json!({"sets": CALLS}))?;
    let per = |d: Duration| d.saturating_sub(base).as_secs_f64() * 1e6 / CALLS as f64;
    rows.push(Row {
        area: "state",
        metric: format!(
            "one `wasi:keyvalue` get from a guest (a committed key: a SQLite read), per call ({CALLS} in one invocation, less an empty one)"
        ),
        target: "(reported)".into(),
        measured: format!("{:.2} µs", per(gets)),
        ratio: "—".into(),
        met: None,
    });
    rows.push(Row {
        area: "state",
        metric: format!(
            "one `wasi:keyvalue` set from a guest (buffered until the commit), per call ({CALLS} in one invocation, less an empty one)"
        ),
        target: "(reported)".into(),
        measured: format!("{:.2} µs", per(sets)),
        ratio: "—".into(),
        met: None,
    });
    Ok(rows)
}
