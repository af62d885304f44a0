//! Webhook figures (issue 14, outbound webhooks): what the outbox costs the
//! settling group commit (`cortex dispatch` of unhandled events with one
//! matching endpoint against none), and how fast `cortex serve` drains an
//! outbox to a receiver on loopback (HTTP/1.1 keep-alive, answers 204).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use cortex_tests::{Root, event, jsonl, wait_for};

use crate::Row;

const N: usize = 2_000;

/// A receiver on 127.0.0.1 that answers every request 204 and counts them.
fn receiver() -> Result<(String, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let Ok(mut out) = stream.try_clone() else { return };
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                loop {
                    let mut len = 0usize;
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end().to_ascii_lowercase();
                        if l.is_empty() {
                            break;
                        }
                        if let Some(v) = l.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    seen.fetch_add(1, Ordering::Relaxed);
                    if out.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((url, count))
}

/// A root without handlers holding `N` queued `hook.ping` events, and
/// `webhooks` in its config.
fn root(webhooks: &str) -> Result<Root> {
    let root = Root::with_handlers("")?;
    let text = std::fs::read_to_string(root.join("cortex.toml"))?
        .replace("custom_types = []", "custom_types = [\"hook.ping\"]");
    std::fs::write(root.join("cortex.toml"), format!("{text}\n{webhooks}"))?;
    root.batch(&jsonl((0..N).map(|_| event("hook.ping"))))?;
    Ok(root)
}

fn dispatch_rate(root: &Root) -> Result<f64> {
    let start = Instant::now();
    root.dispatch()?;
    Ok(N as f64 / start.elapsed().as_secs_f64())
}

pub fn run() -> Result<Vec<Row>> {
    let (url, count) = receiver()?;
    let table = |concurrency: usize| {
        format!("[webhooks.sink]\nurl = \"{url}\"\nevents = [\"hook.*\"]\nconcurrency = {concurrency}\n")
    };
    let bare = dispatch_rate(&root("")?)?;
    let with = root(&table(16))?;
    let outboxed = dispatch_rate(&with)?;
    let written = with.files("events/outbox/sink").len();
    ensure!(written == N, "the outbox holds {written} of {N} deliveries");
    let mut rows = vec![Row {
        area: "webhooks",
        metric: format!(
            "`cortex dispatch` of {N} unhandled events with one matching endpoint (outbox records in the group commit) vs none"
        ),
        target: "(cost of durability)".into(),
        measured: format!("{outboxed:.0} events/s vs {bare:.0} events/s"),
        ratio: format!("{:.2}× the rate without webhooks", outboxed / bare),
        met: None,
    }];

    for concurrency in [4, 16] {
        let root = root(&table(concurrency))?;
        root.dispatch()?;
        let before = count.load(Ordering::Relaxed);
        let svc = root.serve()?;
        let start = Instant::now();
        wait_for(Duration::from_secs(600), || Ok(root.files("events/outbox/sink").is_empty()))?;
        let took = start.elapsed();
        drop(svc);
        let sent = count.load(Ordering::Relaxed) - before;
        ensure!(sent >= N, "the receiver got {sent} of {N}");
        let rate = N as f64 / took.as_secs_f64();
        rows.push(Row {
            area: "webhooks",
            metric: format!(
                "`cortex serve` draining an outbox of {N} CloudEvent deliveries to a loopback receiver, concurrency {concurrency} (from ready to an empty outbox)"
            ),
            target: "(throughput)".into(),
            measured: format!("{rate:.0} deliveries/s"),
            ratio: "—".into(),
            met: None,
        });
    }
    Ok(rows)
}
