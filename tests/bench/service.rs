//! Service figures (issue: service mode): rename-to-done latency at 1,000
//! events/s offered, reload time, resident memory, and start-to-ready.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cortex::event::NewEvent;
use cortex::queue::{EntryName, now_us};
use cortex_tests::{Root, Service, component, http_get, wait_for};

use crate::{Row, median, percentile};

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// Writes `n` whole events to `events/tmp/` (flushed), ready to be renamed
/// into the queue one by one.
pub(crate) fn prepare(root: &Root, n: usize, event_type: &str) -> Result<Vec<(std::path::PathBuf, String)>> {
    let validator = cortex::config::Config::load(&root.path)?.validator();
    let tmp = root.join("events/tmp");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut payload = serde_json::Map::new();
        payload.insert("n".into(), i.into());
        payload.insert("worker_id".into(), format!("w-{}", i % 16).into());
        let e = validator.validate(
            NewEvent { event_type: event_type.into(), source: "bench".into(), payload, ..Default::default() }
                .into_value(),
        )?;
        let path = cortex::fsio::write_tmp(&tmp, "bench", e.to_json().as_bytes(), false)?;
        out.push((path, e.event_id));
    }
    cortex::fsio::sync_filesystem(&tmp)?;
    Ok(out)
}

/// Renames prepared events into the queue at `per_sec`, naming each with
/// the time of its rename, so an archive record's `latency_us` is exactly
/// rename → archived.
pub(crate) fn offer(root: &std::path::Path, prepared: Vec<(std::path::PathBuf, String)>, per_sec: u64) -> Result<()> {
    let queue = root.join("events/queue");
    let start = Instant::now();
    for (i, (tmp, id)) in prepared.into_iter().enumerate() {
        let due = start + Duration::from_micros(i as u64 * 1_000_000 / per_sec);
        // One sleep to the event's time, not a 100 µs poll: polling kept a
        // core's run queue busy ten thousand times a second, in the way of
        // the service being measured.
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let name = EntryName {
            priority: cortex::event::Priority::Medium,
            enqueued_us: now_us(),
            event_id: id,
            attempt: 1,
            due_ms: None,
        };
        std::fs::rename(&tmp, queue.join(name.file_name()))?;
    }
    Ok(())
}

/// Deploys `bytes` over `handler`'s component under a running `cortex
/// serve` (written beside it, renamed over it) and times the rename →
/// the service serving that version.
pub fn reload_time(
    root: &Root,
    handler: &str,
    target: &std::path::Path,
    bytes: &[u8],
    limit: Duration,
) -> Result<Duration> {
    let tmp = target.with_extension("wasm.new");
    std::fs::write(&tmp, bytes)?;
    let sha = cortex::sandbox::sha256_file(&tmp)?;
    let start = Instant::now();
    std::fs::rename(&tmp, target)?;
    wait_for(limit, || Ok(root.serving_sha(handler)? == sha))?;
    Ok(start.elapsed())
}

fn ready_time(root: &Root) -> Result<(Duration, Service)> {
    let start = Instant::now();
    let svc = root.serve()?;
    Ok((start.elapsed(), svc))
}

pub fn run() -> Result<Vec<Row>> {
    let mut rows = Vec::new();

    // Latency at 1,000 events/s offered, seven handlers' worth of routing
    // but one no-op lane, so the figure is the runtime's own.
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    let svc = root.serve()?;
    let n = 3000;
    let prepared = prepare(&root, n, "task.created")?;
    offer(&root.path, prepared, 1000)?;
    wait_for(Duration::from_secs(60), || Ok(root.archived()?.len() >= n))?;
    let mut lat: Vec<Duration> =
        root.archived()?.iter().filter_map(|r| r["latency_us"].as_u64()).map(Duration::from_micros).collect();
    ensure!(lat.len() == n, "latency missing from archive records");
    let (p50, p99) = (percentile(&mut lat, 0.50), percentile(&mut lat, 0.99));
    rows.push(Row {
        area: "service",
        metric: format!("rename into queue/ → archived (durable ack), {n} events at 1,000/s offered, p50"),
        target: "≤ 1 ms".into(),
        measured: crate::ms(p50),
        ratio: format!("{:.0}× better than the seed's 100 ms", 0.1 / p50.as_secs_f64()),
        met: Some(p50 <= Duration::from_millis(1)),
    });
    rows.push(Row {
        area: "service",
        metric: "same run, p99".into(),
        target: "≤ 5 ms".into(),
        measured: crate::ms(p99),
        ratio: format!("{:.0}× better than the seed's 100 ms", 0.1 / p99.as_secs_f64()),
        met: Some(p99 <= Duration::from_millis(5)),
    });
    svc.stop()?;
    drop(root);

    // Reload: atomic replace → new version serving, under a stream.
    let root = Root::with_handlers(
        "[handlers.reload]\ncomponent = \"handlers/reload.wasm\"\nevents = [\"*\"]\ngrants = [{ dir = \"state/reload\", mode = \"rw\" }]\n",
    )?;
    let target = root.join("handlers/reload.wasm");
    std::fs::copy(component("reload-v1"), &target)?;
    let svc = root.serve()?;
    let prepared = prepare(&root, 2000, "task.created")?;
    let streamer = {
        let root_path = root.path.clone();
        std::thread::spawn(move || offer(&root_path, prepared, 500))
    };
    let mut reloads = Vec::new();
    for i in 0..6 {
        let next = if i % 2 == 0 { "reload-v2" } else { "reload-v1" };
        reloads.push(reload_time(&root, "reload", &target, &std::fs::read(component(next))?, Duration::from_secs(10))?);
        std::thread::sleep(Duration::from_millis(300));
    }
    streamer.join().map_err(|_| anyhow::anyhow!("streamer panicked"))??;
    wait_for(Duration::from_secs(30), || Ok(root.archived()?.len() >= 2000))?;
    let dead = root.files("events/dead-letter").len();
    let med = median(reloads);
    rows.push(Row {
        area: "service",
        metric: "reload: atomic replace → new version serving (median of 6, under a 500/s stream)".into(),
        target: "≤ 500 ms, 0 failed events".into(),
        measured: format!("{} ms, {dead} failed events", med.as_millis()),
        ratio: format!("{:.2}× the 500 ms budget", med.as_secs_f64() / 0.5),
        met: Some(med <= Duration::from_millis(500) && dead == 0),
    });
    svc.stop()?;
    drop(root);

    // Memory and start-up with the seven built-in handlers.
    let root = Root::new()?;
    let (cold, svc) = ready_time(&root)?;
    svc.stop()?;
    let mut warm = Vec::new();
    for _ in 0..5 {
        let (t, svc) = ready_time(&root)?;
        warm.push(t);
        svc.stop()?;
    }
    let warm = median(warm);
    rows.push(Row {
        area: "service",
        metric: "start → /readyz 200 with a warm compiled-component cache, seven handlers (median of 5)".into(),
        target: "≤ 300 ms".into(),
        measured: format!("{} ms (cold cache: {} ms)", warm.as_millis(), cold.as_millis()),
        ratio: format!("{:.2}× the 300 ms budget", warm.as_secs_f64() / 0.3),
        met: Some(warm <= Duration::from_millis(300)),
    });
    let svc = root.serve()?;
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss_kib(svc.child.id())?;
    rows.push(Row {
        area: "service",
        metric: "resident memory, idle, seven handlers loaded".into(),
        target: "≤ 50 MB".into(),
        measured: format!("{:.1} MB", idle as f64 / 1024.0),
        ratio: format!("{:.2}× the 50 MB budget", idle as f64 / 1024.0 / 50.0),
        met: Some(idle as f64 / 1024.0 <= 50.0),
    });
    let prepared = prepare(&root, 6000, "worker.heartbeat")?;
    let pid = svc.child.id();
    let sampler = std::thread::spawn(move || {
        let mut max = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            max = max.max(rss_kib(pid).unwrap_or(0));
            std::thread::sleep(Duration::from_millis(50));
        }
        max
    });
    offer(&root.path, prepared, 2000)?;
    let loaded = sampler.join().map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    rows.push(Row {
        area: "service",
        metric: "resident memory under load (2,000 heartbeats/s for 3 s), peak".into(),
        target: "≤ 100 MB".into(),
        measured: format!("{:.1} MB", loaded as f64 / 1024.0),
        ratio: format!("{:.2}× the 100 MB budget", loaded as f64 / 1024.0 / 100.0),
        met: Some(loaded as f64 / 1024.0 <= 100.0),
    });
    let _ = http_get(&svc.addr, "/healthz");
    svc.stop()?;
    Ok(rows)
}
