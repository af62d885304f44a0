//! `make bench`: measures the figures the issues name, prints a table and
//! writes BENCHMARKS.md at the repository root. Not a test: nothing here
//! asserts on time; the table states each target next to what was measured.

mod archive;
mod dashboard;
mod dispatch;
mod ingest;
mod languages;
mod redis;
mod redis_dispatch;
mod replay;
mod service;
mod state;
mod store;
mod webhooks;

use std::fmt::Write as _;
use std::time::Duration;

/// One measured figure against its target.
pub struct Row {
    pub area: &'static str,
    pub metric: String,
    pub target: String,
    pub measured: String,
    /// Measured against the baseline the issue names, e.g. "510× the seed's 100/s".
    pub ratio: String,
    pub met: Option<bool>,
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<u64>().ok()))
        .map(|kb| format!("{} GiB", kb / 1024 / 1024))
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem} RAM, Linux")
}

/// The disk's latency for what a durable step costs: a small write,
/// `fdatasync`, and a directory `fsync`, in the temp directory's filesystem
/// (where the bench's roots live). Every durable figure depends on it, and on
/// a shared virtual disk it changes from hour to hour.
fn disk_probe() -> anyhow::Result<Row> {
    use std::io::Write as _;
    let dir = tempfile::tempdir()?;
    let mut times = Vec::new();
    for i in 0..200 {
        let t = std::time::Instant::now();
        let mut f = std::fs::File::create(dir.path().join(format!("p{i}")))?;
        f.write_all(&[b'x'; 600])?;
        f.sync_data()?;
        std::fs::File::open(dir.path())?.sync_all()?;
        times.push(t.elapsed());
    }
    let p99 = percentile(&mut times.clone(), 0.99);
    Ok(Row {
        area: "disk",
        metric: "600-byte file: create + write + fdatasync + directory fsync (median of 200; the cost under every durable figure)".into(),
        target: "(environment)".into(),
        measured: format!("{} (p99 {})", ms(median(times)), ms(p99)),
        ratio: "—".into(),
        met: None,
    })
}

/// Dirty and under-writeback page cache, in KiB (`/proc/meminfo`).
fn unwritten_kib() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .filter(|l| l.starts_with("Dirty:") || l.starts_with("Writeback:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// Lets the disk finish what earlier work left in the page cache before a
/// measurement: `sync`, then waits (up to 30 s) until under 16 MiB is dirty
/// or being written back. Without it, the background writeback of one
/// section (or of a build just before `make bench`) lands on the fsyncs of
/// the next and swings a durable figure several times over. Returns how
/// long it waited.
pub fn settle_disk() -> Duration {
    let start = std::time::Instant::now();
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    while unwritten_kib() > 16 * 1024 && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

fn main() -> anyhow::Result<()> {
    let only: Vec<String> = std::env::args().skip(1).collect();
    let mut rows = vec![disk_probe()?];
    type Section = fn() -> anyhow::Result<Vec<Row>>;
    let sections: Vec<(&str, Section)> = vec![
        ("store", store::run),
        ("dispatch", dispatch::run),
        ("state", state::run),
        ("service", service::run),
        ("ingest", ingest::run),
        ("replay", replay::run),
        ("dashboard", dashboard::run),
        ("languages", languages::run),
        ("archive", archive::run),
        ("webhooks", webhooks::run),
        ("redis", redis::run),
        ("redis-dispatch", redis_dispatch::run),
    ];
    for (name, f) in sections {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let waited = settle_disk();
        eprintln!("== bench: {name} (waited {:.1} s for the disk to settle)", waited.as_secs_f64());
        rows.extend(f()?);
    }
    let date = chrono::Local::now().format("%Y-%m-%d %H:%M %Z");
    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(md, "Measured by `make bench` on {date}, {}.", machine())?;
    writeln!(md, "Release build; medians unless stated; the same run measures every row.\n")?;
    writeln!(md, "| area | metric | target | measured | against the baseline | met |")?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    for r in &rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "n/a",
        };
        writeln!(md, "| {} | {} | {} | {} | {} | {met} |", r.area, r.metric, r.target, r.measured, r.ratio)?;
    }
    print!("{md}");
    if only.is_empty() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../BENCHMARKS.md");
        std::fs::write(path, &md)?;
        eprintln!("wrote BENCHMARKS.md");
    }
    Ok(())
}
