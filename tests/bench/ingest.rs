//! HTTP ingest under load (issue 14): 50 keep-alive clients on loopback
//! post one event each at a fixed schedule, 1,000 events/s in all, for 30 s
//! (`CORTEX_BENCH_INGEST_SECS` to change it), against `cortex serve` with a
//! no-op handler and a bearer token. Reports errors, the achieved rate and
//! the p50/p99 of the `202 Accepted`, measured from each request's
//! scheduled time (so a stalled server is not hidden by clients that fall
//! behind), and checks that every event was dispatched.
//!
//! Two bodies: Cortex JSON without an id (the server makes one, no
//! look-up), and for a third of the time structured CloudEvents, whose ids
//! the producer gives, so each request also looks its id up in the queue,
//! the claims, the dead letters and the archive day being written.
//!
//! Run alone: `make build`, then `target/release/cortex-bench ingest`
//! (under `$CARGO_TARGET_DIR` when set).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cortex_tests::{Root, wait_for};

use crate::{Row, percentile};

const CLIENTS: u64 = 50;
const RATE: u64 = 1000;
const TOKEN: &str = "bench-ingest-token-0123456789";

/// What one client saw: each 202's latency, and the requests that failed.
struct Seen {
    latencies: Vec<Duration>,
    errors: Vec<String>,
}

/// One HTTP/1.1 response on a keep-alive connection: its status.
fn read_response(reader: &mut BufReader<TcpStream>) -> Result<u16> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no status line")?;
    let mut length = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("connection closed in the headers");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(status)
}

/// What the clients post.
#[derive(Clone, Copy)]
enum Body {
    /// A partial Cortex event, `application/json`.
    Cortex,
    /// A structured CloudEvent with its own id.
    CloudEvent,
}

impl Body {
    fn name(self) -> &'static str {
        match self {
            Body::Cortex => "Cortex JSON without ids",
            Body::CloudEvent => "structured CloudEvents, ids given, each looked up",
        }
    }

    fn request(self, addr: &str, c: u64, i: u64) -> String {
        let (content_type, body) = match self {
            Body::Cortex => (
                "application/json",
                format!(
                    r#"{{"event_type":"task.created","source":"bench-ingest","payload":{{"client":{c},"n":{i},"task_id":"t-{c}-{i}"}}}}"#
                ),
            ),
            Body::CloudEvent => (
                cortex::cloudevents::STRUCTURED,
                format!(
                    r#"{{"specversion":"1.0","id":"ce-{c}-{i}","source":"/bench/{c}","type":"task.created","data":{{"task_id":"t-{c}-{i}"}}}}"#
                ),
            ),
        };
        format!(
            "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }
}

/// Client `c` of [`CLIENTS`]: `n` requests, one every `CLIENTS / RATE`
/// seconds, its schedule offset so that together they send evenly.
fn client(addr: &str, kind: Body, c: u64, n: u64, start: Instant) -> Result<Seen> {
    let interval = Duration::from_micros(1_000_000 * CLIENTS / RATE);
    let offset = Duration::from_micros(c * 1_000_000 / RATE);
    let connect = || -> Result<(TcpStream, BufReader<TcpStream>)> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let r = BufReader::new(s.try_clone()?);
        Ok((s, r))
    };
    let (mut stream, mut reader) = connect()?;
    let mut seen = Seen { latencies: Vec::with_capacity(n as usize), errors: Vec::new() };
    for i in 0..n {
        let due = start + offset + interval * i as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let request = kind.request(addr, c, i);
        let answer =
            stream.write_all(request.as_bytes()).map_err(anyhow::Error::from).and_then(|()| read_response(&mut reader));
        match answer {
            Ok(202) => seen.latencies.push(due.elapsed()),
            Ok(status) => seen.errors.push(format!("status {status}")),
            Err(e) => {
                seen.errors.push(format!("{e:#}"));
                (stream, reader) = connect()?;
            }
        }
    }
    Ok(seen)
}

/// Lines in the archive's day files: events settled so far.
fn archived_lines(root: &Root) -> usize {
    root.files("events/archive")
        .iter()
        .filter(|f| f.ends_with(".jsonl"))
        .filter_map(|f| std::fs::read(root.join(&format!("events/archive/{f}"))).ok())
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .sum()
}

pub fn run() -> Result<Vec<Row>> {
    let secs: u64 = std::env::var("CORTEX_BENCH_INGEST_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let mut rows = load(Body::Cortex, secs)?;
    rows.extend(load(Body::CloudEvent, secs.div_ceil(3))?);
    Ok(rows)
}

/// One load run of `secs` seconds at [`RATE`] with `kind` bodies.
fn load(kind: Body, secs: u64) -> Result<Vec<Row>> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    root.configure(&format!("\n[http.tokens.bench]\nvalue = \"{TOKEN}\"\nscopes = [\"ingest\"]\n"))?;
    let svc = root.serve()?;
    let per_client = RATE * secs / CLIENTS;
    let start = Instant::now() + Duration::from_millis(200);
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let addr = svc.addr.clone();
            std::thread::spawn(move || client(&addr, kind, c, per_client, start))
        })
        .collect();
    let (mut latencies, mut errors) = (Vec::new(), Vec::new());
    for t in threads {
        let seen = t.join().map_err(|_| anyhow::anyhow!("a bench client panicked"))??;
        latencies.extend(seen.latencies);
        errors.extend(seen.errors);
    }
    let took = start.elapsed();
    let sent = per_client * CLIENTS;
    let ok = latencies.len();
    let rate = ok as f64 / took.as_secs_f64();
    let drained = wait_for(Duration::from_secs(120), || Ok(archived_lines(&root) >= ok)).is_ok();
    let (p50, p99) = (percentile(&mut latencies, 0.50), percentile(&mut latencies, 0.99));
    let max = latencies.last().copied().unwrap_or_default();
    if let Some(first) = errors.first() {
        eprintln!("ingest bench: {} errors, first: {first}", errors.len());
    }
    svc.stop()?;
    let load = format!("{sent} events, 50 keep-alive clients, 1,000/s offered for {secs} s");
    Ok(vec![
        Row {
            area: "ingest",
            metric: format!(
                "POST /v1/events ({}, bearer token, no-op handler): {load}; achieved rate, errors",
                kind.name()
            ),
            target: "1,000 events/s, 0 errors".into(),
            measured: format!(
                "{rate:.0} events/s, {} errors, {}",
                errors.len(),
                if drained { "all dispatched and archived" } else { "NOT all archived within 120 s" }
            ),
            ratio: format!("{:.2}× the 1,000/s target", rate / 1000.0),
            met: Some(errors.is_empty() && rate >= 990.0 && drained),
        },
        Row {
            area: "ingest",
            metric: "same run: 202 Accepted (durable) from the request's scheduled time, p50".into(),
            target: "(stated)".into(),
            measured: crate::ms(p50),
            ratio: "—".into(),
            met: None,
        },
        Row {
            area: "ingest",
            metric: "same run: 202 Accepted, p99 (max)".into(),
            target: "(stated)".into(),
            measured: format!("{} ({})", crate::ms(p99), crate::ms(max)),
            ratio: "—".into(),
            met: None,
        },
    ])
}
