//! The floor under the Redis backend (issue 13): raw Redis Streams commands
//! through the redis crate, with nothing of Cortex in between, measured in
//! the same run as the backend's own figures so each can be read against
//! what the server allows on this machine.
//!
//! - **XADD**: one connection adds [`N`] entries in pipelines of [`BATCH`],
//!   the floor under `emit --batch` (which must reach 50,000 events/s).
//! - **XADD + XREADGROUP + XACK**: a producer thread adds [`N`] entries in
//!   pipelines of [`BATCH`] while 1 or 2 consumer *threads*, each with its
//!   own connection and consumer name in one consumer group, read up to
//!   [`BATCH`] entries at a time and acknowledge each batch in the same
//!   round trip as their next read, as a dispatcher would. Events/s run
//!   from the first XADD until every entry is acknowledged; the group's
//!   pending list is then checked to be empty. Threads rather than
//!   processes: the client side is a few µs of parsing per entry, and the
//!   server, single-threaded, is what the figure measures.
//!
//! Each entry is one field holding a 300-byte event, about what `emit`
//! queues. Every key is under a fresh prefix on the test Redis
//! (127.0.0.1:6379 or `CORTEX_TEST_REDIS`), deleted at the end.
//! `cortex-bench redis` runs this section alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ::redis::streams::StreamReadReply;
use anyhow::{Context, Result, ensure};
use cortex_tests::{RedisPrefix, event, jsonl};

use crate::Row;

/// Entries per measured run.
const N: usize = 100_000;
/// Commands per pipeline, and entries per XREADGROUP.
const BATCH: usize = 100;
/// Runs per figure; the median is reported.
const RUNS: usize = 3;
/// The emit --batch target the XADD floor sits under.
const EMIT_TARGET: f64 = 50_000.0;

/// A queued event as one line of JSON, padded to about 300 bytes.
fn body() -> String {
    let line = event("worker.completed")
        .source("worker-001")
        .correlation("task-123")
        .payload(serde_json::json!({
            "worker_id": "worker-001",
            "task_id": "task-123",
            "status": "completed",
            "tokens_used": 1500,
            "duration_ms": 45230,
        }))
        .set("event_id", "0193a2b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b")
        .set("timestamp", "2026-12-01T12:00:00.000Z");
    let mut text = jsonl([line]).trim_end().to_string();
    while text.len() < 300 {
        text.push(' ');
    }
    text
}

fn connect(scratch: &RedisPrefix) -> Result<::redis::Connection> {
    let client = ::redis::Client::open(scratch.url.as_str()).context("bad test Redis URL")?;
    client.get_connection_with_timeout(Duration::from_secs(10)).with_context(|| format!("no Redis at {}", scratch.url))
}

/// XADDs `n` entries of `body` to `stream`, [`BATCH`] per pipeline.
fn add(conn: &mut ::redis::Connection, stream: &str, body: &str, n: usize) -> Result<()> {
    for start in (0..n).step_by(BATCH) {
        let mut pipe = ::redis::pipe();
        for _ in start..(start + BATCH).min(n) {
            pipe.cmd("XADD").arg(stream).arg("*").arg("event").arg(body).ignore();
        }
        pipe.query::<()>(conn).with_context(|| format!("failed to XADD to {stream}"))?;
    }
    Ok(())
}

fn delete(conn: &mut ::redis::Connection, key: &str) -> Result<()> {
    ::redis::cmd("DEL").arg(key).query::<()>(conn).with_context(|| format!("failed to delete {key}"))
}

/// Events/s of [`add`] alone, one run.
fn xadd(scratch: &RedisPrefix, body: &str, run: usize) -> Result<f64> {
    let mut conn = connect(scratch)?;
    let stream = format!("{}:bench:xadd-{run}", scratch.prefix);
    let start = Instant::now();
    add(&mut conn, &stream, body, N)?;
    let secs = start.elapsed().as_secs_f64();
    let len: usize = ::redis::cmd("XLEN").arg(&stream).query(&mut conn)?;
    delete(&mut conn, &stream)?;
    ensure!(len == N, "{stream} holds {len} entries, not {N}");
    Ok(N as f64 / secs)
}

/// One consumer: reads and acknowledges until every entry is acknowledged.
fn consume(mut conn: ::redis::Connection, stream: String, name: String, acked: Arc<AtomicUsize>) -> Result<()> {
    let mut ids: Vec<String> = Vec::new();
    loop {
        let mut pipe = ::redis::pipe();
        if !ids.is_empty() {
            pipe.cmd("XACK").arg(&stream).arg("g").arg(&ids).ignore();
        }
        pipe.cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg(&name)
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(20)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">");
        let (reply,): (Option<StreamReadReply>,) =
            pipe.query(&mut conn).with_context(|| format!("{name}: XREADGROUP/XACK on {stream}"))?;
        acked.fetch_add(ids.len(), Ordering::Relaxed);
        ids = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).map(|e| e.id).collect();
        if ids.is_empty() && acked.load(Ordering::Relaxed) >= N {
            return Ok(());
        }
    }
}

/// Events/s of XADD + XREADGROUP + XACK with `consumers` consumer threads, one run.
fn through(scratch: &RedisPrefix, body: &str, consumers: usize, run: usize) -> Result<f64> {
    let mut conn = connect(scratch)?;
    let stream = format!("{}:bench:flow-{consumers}-{run}", scratch.prefix);
    ::redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query::<()>(&mut conn)
        .with_context(|| format!("failed to create the consumer group of {stream}"))?;
    let acked = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let threads = (0..consumers)
        .map(|i| {
            let (c, s, a) = (connect(scratch)?, stream.clone(), acked.clone());
            Ok(std::thread::spawn(move || consume(c, s, format!("c{i}"), a)))
        })
        .collect::<Result<Vec<_>>>()?;
    add(&mut conn, &stream, body, N)?;
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("a consumer thread panicked"))??;
    }
    let secs = start.elapsed().as_secs_f64();
    // The summary form: [count, lowest id, highest id, consumers].
    let (pending, _, _, _): (usize, ::redis::Value, ::redis::Value, ::redis::Value) =
        ::redis::cmd("XPENDING").arg(&stream).arg("g").query(&mut conn)?;
    delete(&mut conn, &stream)?;
    ensure!(pending == 0, "{pending} entries of {stream} were never acknowledged");
    ensure!(acked.load(Ordering::Relaxed) == N, "acknowledged {} of {N}", acked.load(Ordering::Relaxed));
    Ok(N as f64 / secs)
}

/// The median of [`RUNS`] runs of `f`.
fn median_of(mut f: impl FnMut(usize) -> Result<f64>) -> Result<f64> {
    let mut rates = (0..RUNS).map(&mut f).collect::<Result<Vec<f64>>>()?;
    rates.sort_by(f64::total_cmp);
    Ok(rates[RUNS / 2])
}

pub fn run() -> Result<Vec<Row>> {
    let scratch = RedisPrefix::new("bench")?;
    let body = body();
    let adds = median_of(|run| xadd(&scratch, &body, run))?;
    eprintln!("   XADD: {adds:.0}/s");
    let one = median_of(|run| through(&scratch, &body, 1, run))?;
    eprintln!("   XADD+XREADGROUP+XACK, 1 consumer: {one:.0}/s");
    let two = median_of(|run| through(&scratch, &body, 2, run))?;
    eprintln!("   XADD+XREADGROUP+XACK, 2 consumers: {two:.0}/s");
    let runs = format!("median of {RUNS} runs of {N} {}-byte entries", body.len());
    Ok(vec![
        Row {
            area: "redis floor",
            metric: format!(
                "raw XADD, pipelines of {BATCH}, one connection (the floor under `emit --batch` into Redis)"
            ),
            target: "(environment; `emit --batch` must reach ≥ 50,000 events/s)".into(),
            measured: format!("{adds:.0} events/s ({runs})"),
            ratio: format!("{:.1}× the 50,000/s `emit --batch` needs", adds / EMIT_TARGET),
            met: None,
        },
        Row {
            area: "redis floor",
            metric: format!(
                "raw XADD + XREADGROUP (COUNT {BATCH}) + XACK, producer and 1 consumer thread at once (the floor under `dispatch` on Redis)"
            ),
            target: "(environment)".into(),
            measured: format!("{one:.0} events/s ({runs})"),
            ratio: "—".into(),
            met: None,
        },
        Row {
            area: "redis floor",
            metric: format!(
                "raw XADD + XREADGROUP (COUNT {BATCH}) + XACK, producer and 2 consumer threads (own connections, one group)"
            ),
            target: "(environment)".into(),
            measured: format!("{two:.0} events/s ({runs})"),
            ratio: format!("{:.2}× 1 consumer", two / one),
            met: None,
        },
    ])
}
