//! Archive figures (issue 14, archive lifecycle): the compression ratio of
//! archive days on a demo-like archive (the seven handlers' event types
//! with realistic payloads and handler runs) and on an archive of
//! 1,000,000 events; `replay --date` (dry run) and `replay --event-id` on
//! one day plain, then the same day compressed. Archives are written
//! directly as archive lines (not dispatched) and compressed by the
//! runtime's own compressor (`cortex::archive`), as `cortex dispatch` runs it.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cortex::archive::Archive;
use cortex::layout::Layout;
use cortex_tests::Root;

use crate::{Row, median};

const DEMO_EVENTS: usize = 60_000;
const BIG_DAYS: usize = 10;
const BIG_PER_DAY: usize = 100_000;

/// One archive line of the `i`th event of `date`, shaped as the dispatcher
/// writes it, for one of the seven default handlers' event types.
fn demo_line(date: &str, i: usize, rng: &mut fastrand::Rng) -> String {
    let compact = date.replace('-', "");
    let (h, m, s) = (i / 3600 % 24, i / 60 % 60, i % 60);
    let id = format!("evt_{compact}_{h:02}{m:02}{s:02}_{:06x}", rng.u32(..0xff_ffff));
    let worker = format!("worker-{:02}", rng.usize(..24));
    let task = format!("task-{:05}", rng.usize(..20_000));
    let (kind, handler, payload) = match rng.usize(..100) {
        0..=39 => (
            "worker.heartbeat",
            "on-worker-heartbeat",
            format!(
                r#"{{"worker_id":"{worker}","status":"{}","cpu_percent":{:.1},"memory_mb":{},"active_tasks":{}}}"#,
                ["idle", "busy", "busy", "draining"][rng.usize(..4)],
                rng.f64() * 100.0,
                256 + rng.usize(..4096),
                rng.usize(..8)
            ),
        ),
        40..=59 => (
            "worker.completed",
            "on-worker-complete",
            format!(
                r#"{{"worker_id":"{worker}","task_id":"{task}","duration_ms":{},"tokens_in":{},"tokens_out":{},"model":"{}","result":"ok"}}"#,
                rng.usize(..90_000),
                rng.usize(..8000),
                rng.usize(..2000),
                ["claude-sonnet", "claude-haiku", "claude-opus"][rng.usize(..3)]
            ),
        ),
        60..=69 => (
            "task.failed",
            "on-task-failure",
            format!(
                r#"{{"task_id":"{task}","worker_id":"{worker}","error":"{}","retryable":{}}}"#,
                [
                    "timeout after 300s",
                    "rate limited by upstream",
                    "tool call failed: exit 2",
                    "context window exceeded"
                ][rng.usize(..4)],
                rng.bool()
            ),
        ),
        70..=84 => (
            "routing.decision_made",
            "on-routing-decision",
            format!(
                r#"{{"task_id":"{task}","chosen_master":"master-{}","candidates":["master-1","master-2","master-3"],"confidence":{:.3},"reason":"lowest queue depth with matching skills"}}"#,
                1 + rng.usize(..3),
                rng.f64()
            ),
        ),
        85..=92 => (
            "learning.pattern_detected",
            "on-learning-pattern",
            format!(
                r#"{{"pattern":"{}","confidence":{:.3},"samples":{},"master":"master-{}"}}"#,
                ["slow-on-large-repos", "retries-after-timeout", "skill-mismatch"][rng.usize(..3)],
                rng.f64(),
                rng.usize(..500),
                1 + rng.usize(..3)
            ),
        ),
        93..=98 => (
            "security.scan_completed",
            "on-security-alert",
            format!(
                r#"{{"scan_id":"scan-{:06}","target":"repo-{}","findings":{},"severity":"{}","cve":"CVE-2026-{:05}"}}"#,
                rng.usize(..1_000_000),
                rng.usize(..40),
                rng.usize(..5),
                ["low", "medium", "high", "critical"][rng.usize(..4)],
                rng.usize(..99_999)
            ),
        ),
        _ => (
            "system.cleanup_needed",
            "on-cleanup-needed",
            r#"{"retention_days":30,"schedule":"daily-cleanup"}"#.to_string(),
        ),
    };
    let corr = format!("corr-{:08x}", rng.u32(..));
    format!(
        concat!(
            r#"{{"event":{{"event_id":"{id}","event_type":"{kind}","timestamp":"{date}T{h:02}:{m:02}:{s:02}.{ms:03}+00:00","source":"{worker}","#,
            r#""correlation_id":"{corr}","metadata":{{"priority":"medium","tags":["demo"]}},"payload":{payload}}},"outcome":"handled","#,
            r#""entry":"2-{entry:016x}-{id}","attempts":1,"archived_at":"{date}T{h:02}:{m:02}:{s:02}.{ms2:03}+00:00","latency_us":{lat},"#,
            r#""handlers":[{{"name":"{handler}","version":"0.1.0","component_sha256":"{sha}","summary":"ok","duration_ms":{dur:.3},"emitted":[]}}]}}"#
        ),
        id = id,
        kind = kind,
        date = date,
        h = h,
        m = m,
        s = s,
        worker = worker,
        corr = corr,
        payload = payload,
        handler = handler,
        ms = rng.usize(..1000),
        ms2 = rng.usize(..1000),
        entry = rng.u64(..),
        lat = 200 + rng.usize(..5000),
        sha = "9f2c4e1a7b3d5f60".repeat(4),
        dur = rng.f64() * 20.0,
    )
}

/// The compact line of the big archive (the replay bench's shape).
fn big_line(date: &str, d: usize, i: usize) -> String {
    let compact = date.replace('-', "");
    let (h, m, s) = (i / 3600 % 24, i / 60 % 60, i % 60);
    let id = format!("evt_{compact}_{h:02}{m:02}{s:02}_{i:05x}{d}");
    format!(
        r#"{{"event":{{"event_id":"{id}","event_type":"worker.heartbeat","timestamp":"{date}T{h:02}:{m:02}:{s:02}.000+00:00","source":"bench","metadata":{{"priority":"medium"}},"payload":{{"worker_id":"w-{}"}}}},"outcome":"handled","entry":"2-0000000000000000-{id}","attempts":1,"archived_at":"{date}T{h:02}:{m:02}:{s:02}.001+00:00","latency_us":500,"handlers":[]}}"#,
        i % 64
    )
}

fn write_day(root: &Root, date: &str, lines: impl Iterator<Item = String>) -> Result<u64> {
    let path = root.join(&format!("events/archive/{date}.jsonl"));
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
    for line in lines {
        w.write_all(line.as_bytes())?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(std::fs::metadata(&path)?.len())
}

/// Compresses every day of `root` (as `cortex dispatch` does); (plain bytes, packed bytes, time).
fn pack_all(root: &Root) -> Result<(u64, u64, Duration)> {
    let archive = Archive::open(&Layout::new(root.path.clone()))?.context("no archive")?;
    let start = Instant::now();
    let packed = archive.pack_before(chrono::NaiveDate::from_ymd_opt(2026, 1, 1).context("date")?)?;
    Ok((packed.plain_bytes, packed.packed_bytes, start.elapsed()))
}

/// Median wall time of `cortex ARGS` over `n` runs, checking each output.
fn timed(root: &Root, args: &[&str], n: usize, check: impl Fn(&str) -> bool) -> Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let out = root.run(args)?;
        times.push(start.elapsed());
        ensure!(out.code == 0 && check(&out.stdout), "cortex {args:?} failed: {}", out.stderr);
    }
    Ok(median(times))
}

fn ratio_row(what: String, plain: u64, packed: u64, took: Duration) -> Row {
    let ratio = plain as f64 / packed.max(1) as f64;
    Row {
        area: "archive",
        metric: what,
        target: "(smaller is better)".into(),
        measured: format!(
            "{:.1} MB → {:.1} MB, {ratio:.1}:1 ({:.0} MB/s)",
            plain as f64 / 1e6,
            packed as f64 / 1e6,
            plain as f64 / 1e6 / took.as_secs_f64()
        ),
        ratio: format!("{:.0}% saved", 100.0 - 100.0 * packed as f64 / plain.max(1) as f64),
        met: None,
    }
}

pub fn run() -> Result<Vec<Row>> {
    let mut rows = Vec::new();

    let demo = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    let mut rng = fastrand::Rng::with_seed(14);
    for (d, date) in ["2025-11-01", "2025-11-02", "2025-11-03"].iter().enumerate() {
        let n = DEMO_EVENTS / 3 + d;
        let mut lines: Vec<String> = (0..n).map(|i| demo_line(date, i * 86_400 / n, &mut rng)).collect();
        lines.sort();
        write_day(&demo, date, lines.into_iter())?;
    }
    let (plain, packed, took) = pack_all(&demo)?;
    rows.push(ratio_row(
        format!("zstd archive days, demo-like archive ({DEMO_EVENTS} events of the seven handlers' types over 3 days)"),
        plain,
        packed,
        took,
    ));

    let big = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    let dates: Vec<String> = (0..BIG_DAYS).map(|d| format!("2025-11-{:02}", d + 1)).collect();
    for (d, date) in dates.iter().enumerate() {
        write_day(&big, date, (0..BIG_PER_DAY).map(|i| big_line(date, d, i)))?;
    }
    let day = &dates[4];
    let needle = format!("evt_{}_{:02}{:02}{:02}_{:05x}4", day.replace('-', ""), 13, 53, 20, 50_000);
    let by_date = ["replay", "--dry-run", "--date", day.as_str()];
    let by_id = ["replay", "--dry-run", "--json", "--event-id", needle.as_str()];
    let date_plain = timed(&big, &by_date, 3, |_| true)?;
    let id_plain = timed(&big, &by_id, 5, |o| o.contains(&needle))?;
    let (plain, packed, took) = pack_all(&big)?;
    rows.push(ratio_row(
        format!("zstd archive days, {} events in {BIG_DAYS} days", BIG_DAYS * BIG_PER_DAY),
        plain,
        packed,
        took,
    ));
    let date_packed = timed(&big, &by_date, 3, |_| true)?;
    let id_packed = timed(&big, &by_id, 5, |o| o.contains(&needle))?;
    for (what, p, z) in [
        (
            format!("`cortex replay --date` dry run of one day ({BIG_PER_DAY} events), plain day vs compressed day"),
            date_plain,
            date_packed,
        ),
        (
            format!(
                "`cortex replay --event-id` dry run in a day of {BIG_PER_DAY} events, plain day vs compressed day (seek index)"
            ),
            id_plain,
            id_packed,
        ),
    ] {
        rows.push(Row {
            area: "archive",
            metric: what,
            target: "compressed ≈ plain".into(),
            measured: format!("{} plain, {} compressed", crate::ms(p), crate::ms(z)),
            ratio: format!("{:.2}× the plain day's time", z.as_secs_f64() / p.as_secs_f64()),
            met: None,
        });
    }
    Ok(rows)
}
