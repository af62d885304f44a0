//! Dashboard figures (issue 17): dispatch latency at 1,000 events/s
//! offered with no dashboard client and with 100 clients following the live
//! stream (`/api/stream`), side by side. The goal is that watching costs
//! dispatch under 10% at p99: publishing to the stream never waits for a
//! reader. The two set-ups alternate for [`ROUNDS`] rounds
//! (`CORTEX_BENCH_DASHBOARD_ROUNDS` to change it), in turn 0 first and 100
//! first, so that a disk or a neighbour that slows down for a while weighs
//! on both sides alike; each figure is the median of its rounds. On a
//! shared 2-core machine one round's p99 can be several times another's
//! with nothing changed, so the row also gives the range of the rounds
//! without clients: a difference smaller than that spread is noise. Run
//! alone with `cortex-bench dashboard`. The clients are threads of the bench's own process, on the
//! same cores as the service, as browsers on the same machine would be.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use cortex_tests::{Root, metric, parse_metrics, wait_for};

use crate::service::{offer, prepare};
use crate::{Row, percentile};

const EVENTS: usize = 5000;
const CLIENTS: usize = 100;
const ROUNDS: usize = 7;

/// What one follower received.
#[derive(Default)]
struct Received {
    bytes: AtomicU64,
    /// Server-Sent Events frames (each ends in a blank line).
    frames: AtomicU64,
}

/// Opens `n` clients of the live stream, each read by its own thread as a
/// browser would: every byte is read, and its frames counted.
fn followers(addr: &str, n: usize) -> Result<(Vec<TcpStream>, Vec<Arc<Received>>)> {
    let mut streams = Vec::new();
    let mut received = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(addr)?;
        write!(s, "GET /api/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")?;
        let (mut reader, got) = (s.try_clone()?, Arc::new(Received::default()));
        received.push(got.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            let mut prev = 0u8;
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut frames = 0;
                for &b in &buf[..n] {
                    frames += u64::from(b == b'\n' && prev == b'\n');
                    prev = b;
                }
                got.bytes.fetch_add(n as u64, Ordering::Relaxed);
                got.frames.fetch_add(frames, Ordering::Relaxed);
            }
        });
        streams.push(s);
    }
    Ok((streams, received))
}

/// CPU seconds (user + system) each thread name of process `pid` has used
/// so far, from `/proc` (threads of one name summed).
fn cpu_by_thread(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // The name is in parentheses and may hold spaces; the fields after
        // it are numbers: utime and stime are the 12th and 13th.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].trim_end_matches(|c: char| c.is_ascii_digit()).to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks: f64 = fields.get(11..13).unwrap_or_default().iter().filter_map(|f| f.parse::<f64>().ok()).sum();
        *out.entry(name).or_default() += ticks / 100.0;
    }
    out
}

/// Seconds the threads of process `pid` have spent ready to run but
/// waiting for a core (`/proc/…/task/*/schedstat`, second field), summed:
/// on a 2-core machine, what a thread hand-off costs the dispatcher.
fn waited_for_a_core(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}

/// What `before` → `after` used in all, and by thread name, largest first.
fn cpu_used(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> (Duration, String) {
    let mut used: Vec<(&String, f64)> =
        after.iter().map(|(k, v)| (k, v - before.get(k).copied().unwrap_or(0.0))).filter(|(_, v)| *v > 0.0).collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = used.iter().map(|(_, v)| v).sum();
    let parts: Vec<String> = used.iter().take(5).map(|(k, v)| format!("{k} {v:.2}")).collect();
    (Duration::from_secs_f64(total), format!("{total:.2} s ({})", parts.join(", ")))
}

/// One round's figures.
struct Round {
    p50: Duration,
    p99: Duration,
    /// Bytes the followers read.
    sent: u64,
    /// CPU the service used from the first event offered to the last archived.
    service_cpu: Duration,
    /// How long its threads waited for a core meanwhile, summed.
    service_waited: Duration,
}

/// Rename → archived latencies (p50, p99) of EVENTS events at 1,000/s,
/// with `clients` following the stream; the bytes they were sent, and the
/// CPU the service used.
fn measure(clients: usize) -> Result<Round> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    let svc = root.serve()?;
    let (streams, received) = followers(&svc.addr, clients)?;
    wait_for(Duration::from_secs(10), || {
        let samples = parse_metrics(&svc.metrics()?)?;
        Ok(metric(&samples, &["cortex_dashboard_stream_clients"]) == Some(clients as f64))
    })?;
    let prepared = prepare(&root, EVENTS, "task.created")?;
    // What setting up the root wrote is on the disk before the clock starts.
    crate::settle_disk();
    let (service_before, bench_before) = (cpu_by_thread(svc.child.id()), cpu_by_thread(std::process::id()));
    let waited_before = waited_for_a_core(svc.child.id());
    offer(&root.path, prepared, 1000)?;
    wait_for(Duration::from_secs(60), || Ok(root.archived()?.len() >= EVENTS))?;
    let (service_cpu, by_thread) = cpu_used(&service_before, &cpu_by_thread(svc.child.id()));
    let service_waited = Duration::from_secs_f64(waited_for_a_core(svc.child.id()) - waited_before);
    let (_, bench) = cpu_used(&bench_before, &cpu_by_thread(std::process::id()));
    eprintln!("{clients} clients: CPU of the service {by_thread}; of the bench {bench}");
    let mut lat: Vec<Duration> =
        root.archived()?.iter().filter_map(|r| r["latency_us"].as_u64()).map(Duration::from_micros).collect();
    ensure!(lat.len() == EVENTS, "latency missing from archive records");
    // Every follower got every event, and none was dropped.
    wait_for(Duration::from_secs(10), || {
        Ok(received.iter().all(|r| r.frames.load(Ordering::Relaxed) >= EVENTS as u64))
    })?;
    let samples = parse_metrics(&svc.metrics()?)?;
    let dropped = metric(&samples, &["cortex_dashboard_stream_dropped_clients_total"]);
    ensure!(dropped == Some(0.0), "followers were dropped: {dropped:?}");
    let sent = received.iter().map(|r| r.bytes.load(Ordering::Relaxed)).sum();
    for s in &streams {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    svc.stop()?;
    Ok(Round { p50: percentile(&mut lat, 0.50), p99: percentile(&mut lat, 0.99), sent, service_cpu, service_waited })
}

pub fn run() -> Result<Vec<Row>> {
    let (mut none, mut many) = (Vec::new(), Vec::new());
    let rounds = std::env::var("CORTEX_BENCH_DASHBOARD_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(ROUNDS);
    for round in 0..rounds {
        if round % 2 == 0 {
            none.push(measure(0)?);
            many.push(measure(CLIENTS)?);
        } else {
            many.push(measure(CLIENTS)?);
            none.push(measure(0)?);
        }
    }
    let median_of = |v: &[Round], f: fn(&Round) -> Duration| crate::median(v.iter().map(f).collect());
    let (p50_0, p99_0, cpu_0) =
        (median_of(&none, |r| r.p50), median_of(&none, |r| r.p99), median_of(&none, |r| r.service_cpu));
    let (p50_n, p99_n, cpu_n) =
        (median_of(&many, |r| r.p50), median_of(&many, |r| r.p99), median_of(&many, |r| r.service_cpu));
    let (waited_0, waited_n) = (median_of(&none, |r| r.service_waited), median_of(&many, |r| r.service_waited));
    let sent = many.iter().map(|r| r.sent).sum::<u64>() / rounds as u64;
    let all: Vec<String> =
        none.iter().zip(&many).map(|(a, b)| format!("{} / {}", crate::ms(a.p99), crate::ms(b.p99))).collect();
    eprintln!("dashboard rounds, p99 with 0 / {CLIENTS} clients: {}", all.join(", "));
    let ratio = p99_n.as_secs_f64() / p99_0.as_secs_f64();
    let (low, high) =
        none.iter().map(|r| r.p99).fold((Duration::MAX, Duration::ZERO), |(l, h), p| (l.min(p), h.max(p)));
    Ok(vec![Row {
        area: "dashboard",
        metric: format!(
            "rename → archived p99, {EVENTS} events at 1,000/s: 0 vs {CLIENTS} clients on /api/stream, each a thread of the bench that reads every byte and got every event, none dropped (medians of {rounds} alternating rounds; p99 of the rounds without clients ranged {} – {}; p50 {} vs {}; the clients read {:.1} MB a round; the service used {:.2} vs {:.2} s of CPU a round, and its threads waited {:.2} vs {:.2} s for a core)",
            crate::ms(low),
            crate::ms(high),
            crate::ms(p50_0),
            crate::ms(p50_n),
            sent as f64 / 1e6,
            cpu_0.as_secs_f64(),
            cpu_n.as_secs_f64(),
            waited_0.as_secs_f64(),
            waited_n.as_secs_f64()
        ),
        target: "within 10%".into(),
        measured: format!("{} vs {}", crate::ms(p99_0), crate::ms(p99_n)),
        ratio: format!("{:+.0}% with {CLIENTS} clients", (ratio - 1.0) * 100.0),
        met: Some(ratio <= 1.10),
    }])
}
