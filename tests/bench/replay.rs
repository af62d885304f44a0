//! Replay figures (issue: replay and dead letters): replay by id in an
//! archive of 1,000,000 events, and a requeue of one day of 100,000 events.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use cortex_tests::Root;

use crate::{Row, median};

const DAYS: usize = 10;
const PER_DAY: usize = 100_000;

/// Writes a synthetic archive: DAYS day files of PER_DAY records each, in
/// the format the dispatcher appends. Returns an id from the middle of day 5.
fn archive(root: &Root) -> Result<String> {
    let mut needle = String::new();
    for d in 0..DAYS {
        let date = format!("2025-11-{:02}", d + 1);
        let compact = date.replace('-', "");
        let file = std::fs::File::create(root.join(&format!("events/archive/{date}.jsonl")))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        for i in 0..PER_DAY {
            let (h, m, s) = (i / 3600 % 24, i / 60 % 60, i % 60);
            let id = format!("evt_{compact}_{h:02}{m:02}{s:02}_{i:08x}{d:02}");
            if d == 4 && i == PER_DAY / 2 {
                needle = id.clone();
            }
            writeln!(
                w,
                r#"{{"event":{{"event_id":"{id}","event_type":"worker.heartbeat","timestamp":"{date}T{h:02}:{m:02}:{s:02}.000+00:00","source":"bench","metadata":{{"priority":"medium"}},"payload":{{"worker_id":"w-{}"}}}},"outcome":"handled","entry":"2-0000000000000000-{id}","attempts":1,"archived_at":"{date}T{h:02}:{m:02}:{s:02}.001+00:00","latency_us":500,"handlers":[]}}"#,
                i % 64
            )?;
        }
        w.flush()?;
    }
    Ok(needle)
}

pub fn run() -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    let needle = archive(&root)?;

    let mut times = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        let out = root.run(&["replay", "--event-id", &needle, "--dry-run", "--json"])?;
        times.push(start.elapsed());
        ensure!(out.code == 0 && out.stdout.contains(&needle), "replay by id failed: {}", out.stderr);
    }
    let by_id = median(times);
    rows.push(Row {
        area: "replay",
        metric: format!(
            "`cortex replay --event-id` (dry run, whole process) in an archive of {} events",
            DAYS * PER_DAY
        ),
        target: "≤ 50 ms".into(),
        measured: crate::ms(by_id),
        ratio: format!("{:.2}× the 50 ms budget", by_id.as_secs_f64() / 0.05),
        met: Some(by_id <= Duration::from_millis(50)),
    });

    let start = Instant::now();
    let out = root.run(&["replay", "--date", "2025-11-03", "--mode", "requeue"])?;
    let took = start.elapsed();
    ensure!(out.code == 0, "requeue failed: {}", out.stderr);
    let queued = root.files("events/queue").len();
    ensure!(queued == PER_DAY, "requeued {queued} of {PER_DAY}");
    let rate = PER_DAY as f64 / took.as_secs_f64();
    rows.push(Row {
        area: "replay",
        metric: format!("`cortex replay --date` of one day ({PER_DAY} events), requeue mode, durable (whole process)"),
        target: "≥ 20,000 events/s".into(),
        measured: format!("{rate:.0} events/s ({:.2} s)", took.as_secs_f64()),
        ratio: format!("{:.2}× the target", rate / 20_000.0),
        met: Some(rate >= 20_000.0),
    });
    Ok(rows)
}
