//! Producer figures (issue: foundation): batch throughput and one `emit`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cortex_tests::{Root, cortex_bin};

use crate::{Row, median, ms};

pub fn run() -> Result<Vec<Row>> {
    let mut rows = Vec::new();

    let n = 100_000;
    let root = Root::new()?;
    let input: String = (0..n)
        .map(|i| {
            format!(
                "{{\"event_type\": \"worker.heartbeat\", \"source\": \"bench\", \"payload\": {{\"worker_id\": \"w-{}\", \"seq\": {i}}}}}\n",
                i % 64
            )
        })
        .collect();
    let start = Instant::now();
    let mut child = root.command().args(["emit", "--batch"]).stdin(Stdio::piped()).stdout(Stdio::null()).spawn()?;
    child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    ensure!(child.wait()?.success(), "batch emit failed");
    let took = start.elapsed();
    ensure!(root.files("events/queue").len() == n, "not all events were queued");
    let rate = n as f64 / took.as_secs_f64();
    rows.push(Row {
        area: "store",
        metric: format!("`cortex emit --batch` of {n} events, durable"),
        target: "≥ 50,000 events/s".into(),
        measured: format!("{rate:.0} events/s ({:.2} s)", took.as_secs_f64()),
        ratio: format!("{:.2}× the target; {:.0}× the seed's 100 events/s", rate / 50_000.0, rate / 100.0),
        met: Some(rate >= 50_000.0),
    });
    drop(root);

    let root = Root::new()?;
    let bin = cortex_bin();
    let mut times = Vec::new();
    for i in 0..60 {
        let start = Instant::now();
        let st = Command::new(&bin)
            .arg("--root")
            .arg(&root.path)
            .args(["emit", "worker.completed", "worker-001", &format!("{{\"worker_id\": \"worker-001\", \"n\": {i}}}")])
            .stdout(Stdio::null())
            .status()?;
        ensure!(st.success(), "emit failed");
        if i >= 10 {
            times.push(start.elapsed());
        }
    }
    let med = median(times);
    rows.push(Row {
        area: "store",
        metric: "one `cortex emit` process, end to end (wall, median of 50)".into(),
        target: "≤ 5 ms".into(),
        measured: ms(med),
        ratio: format!("{:.2}× the 5 ms budget", med.as_secs_f64() / 0.005),
        met: Some(med <= Duration::from_millis(5)),
    });
    Ok(rows)
}
