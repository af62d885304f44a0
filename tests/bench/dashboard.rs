//! Dashboard figures (issue 17): dispatch latency at 1,000 events/s
//! offered with no dashboard client and with 100 clients following the live
//! stream (`/api/stream`), side by side. The goal is that watching costs
//! dispatch under 10% at p99: publishing to the stream never waits for a
//! reader. The two set-ups alternate for [`ROUNDS`] rounds and each figure
//! is the median of its rounds, so a disk or a neighbour that slows down
//! for a while weighs on both sides alike. Run alone with `cortex-bench
//! dashboard`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use cortex_tests::{Root, wait_for};

use crate::service::{offer, prepare};
use crate::{Row, percentile};

const EVENTS: usize = 3000;
const CLIENTS: usize = 100;
const ROUNDS: usize = 3;

/// Opens `n` clients of the live stream, each read (and discarded) by its
/// own thread as a browser would; returns the count of bytes they got.
fn followers(addr: &str, n: usize) -> Result<(Vec<TcpStream>, Arc<AtomicU64>)> {
    let bytes = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(addr)?;
        write!(s, "GET /api/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")?;
        let (mut reader, counter) = (s.try_clone()?, bytes.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        streams.push(s);
    }
    Ok((streams, bytes))
}

/// Rename → archived latencies (p50, p99) of EVENTS events at 1,000/s,
/// with `clients` following the stream; and the bytes they were sent.
fn measure(clients: usize) -> Result<(Duration, Duration, u64)> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    let svc = root.serve()?;
    let (streams, bytes) = followers(&svc.addr, clients)?;
    let prepared = prepare(&root, EVENTS, "task.created")?;
    offer(&root.path, prepared, 1000)?;
    wait_for(Duration::from_secs(60), || Ok(root.archived()?.len() >= EVENTS))?;
    let mut lat: Vec<Duration> =
        root.archived()?.iter().filter_map(|r| r["latency_us"].as_u64()).map(Duration::from_micros).collect();
    ensure!(lat.len() == EVENTS, "latency missing from archive records");
    // Let the followers drain what was sent before counting it.
    std::thread::sleep(Duration::from_millis(500));
    let sent = bytes.load(Ordering::Relaxed);
    ensure!(clients == 0 || sent > (EVENTS * clients) as u64 * 100, "the followers got only {sent} bytes");
    for s in &streams {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    svc.stop()?;
    Ok((percentile(&mut lat, 0.50), percentile(&mut lat, 0.99), sent))
}

pub fn run() -> Result<Vec<Row>> {
    let (mut none, mut many) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        none.push(measure(0)?);
        many.push(measure(CLIENTS)?);
    }
    let median_of = |v: &[(Duration, Duration, u64)], f: fn(&(Duration, Duration, u64)) -> Duration| {
        crate::median(v.iter().map(f).collect())
    };
    let (p50_0, p99_0) = (median_of(&none, |r| r.0), median_of(&none, |r| r.1));
    let (p50_n, p99_n) = (median_of(&many, |r| r.0), median_of(&many, |r| r.1));
    let sent = many.iter().map(|r| r.2).sum::<u64>() / ROUNDS as u64;
    let all: Vec<String> =
        none.iter().zip(&many).map(|(a, b)| format!("{} / {}", crate::ms(a.1), crate::ms(b.1))).collect();
    eprintln!("dashboard rounds, p99 with 0 / {CLIENTS} clients: {}", all.join(", "));
    let ratio = p99_n.as_secs_f64() / p99_0.as_secs_f64();
    Ok(vec![Row {
        area: "dashboard",
        metric: format!(
            "rename → archived p99, {EVENTS} events at 1,000/s: 0 vs {CLIENTS} clients on /api/stream (medians of {ROUNDS} alternating rounds; p50 {} vs {}; the clients read {:.1} MB a round)",
            crate::ms(p50_0),
            crate::ms(p50_n),
            sent as f64 / 1e6
        ),
        target: "within 10%".into(),
        measured: format!("{} vs {}", crate::ms(p99_0), crate::ms(p99_n)),
        ratio: format!("{:+.0}% with {CLIENTS} clients", (ratio - 1.0) * 100.0),
        met: Some(ratio <= 1.10),
    }])
}
