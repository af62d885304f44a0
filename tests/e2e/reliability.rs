//! Breaking delivery on purpose: stale claims, emit storms, several
//! dispatchers, `kill -9` while events flow, and a watcher that overflows.
//! Each checks the total-queue invariant: every emitted id archived, none
//! lost, none unexpected, duplicates counted.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use cortex_tests::{Root, wait_for};
use serde_json::Value;

/// Every id archived exactly once: returns (lost, duplicated, unexpected).
fn audit(root: &Root, ids: &[String]) -> Result<(usize, usize, usize)> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in root.archived()? {
        *seen.entry(r["event"]["event_id"].as_str().unwrap_or("").to_string()).or_default() += 1;
    }
    let lost = ids.iter().filter(|id| !seen.contains_key(*id)).count();
    let duplicated = seen.values().filter(|n| **n > 1).count();
    let unexpected = seen.keys().filter(|k| !ids.contains(k)).count();
    Ok((lost, duplicated, unexpected))
}

fn batch_of(n: usize, tag: &str) -> String {
    (0..n)
        .map(|i| format!("{{\"event_type\": \"task.created\", \"source\": \"{tag}\", \"payload\": {{\"n\": {i}}}}}\n"))
        .collect()
}

#[test]
fn a_stale_claim_is_reclaimed_after_its_lease_with_the_attempt_raised() -> Result<()> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    let config = std::fs::read_to_string(root.join("cortex.toml"))?.replace("lease_secs = 300", "lease_secs = 1");
    std::fs::write(root.join("cortex.toml"), config)?;
    let id = root.emit("task.created", "{}")?;
    // A dispatcher that claimed the event and died.
    let name = root.files("events/queue").pop().unwrap();
    std::fs::rename(root.join(&format!("events/queue/{name}")), root.join(&format!("events/claimed/{name}")))?;
    std::fs::write(root.join("events/tmp/12345.0.deadbeef.half-written"), b"{\"event_id\": \"evt_")?;
    // Within the lease nobody touches it.
    let s = root.dispatch()?;
    assert_eq!((s["claimed"].as_u64(), s["recovered_claims"].as_u64()), (Some(0), Some(0)), "{s}");
    assert_eq!(root.files("events/claimed"), std::slice::from_ref(&name));
    std::thread::sleep(Duration::from_millis(1100));
    let s = root.dispatch()?;
    assert_eq!(s["recovered_claims"], 1);
    assert_eq!(s["handled"], 1);
    let rec = root.archived_record(&id)?.expect("archived after recovery");
    assert_eq!(rec["attempts"], 2, "the crashed delivery counts as an attempt");
    assert!(root.files("events/claimed").is_empty() && root.files("events/tmp").is_empty());
    Ok(())
}

#[test]
fn an_emit_storm_is_cut_off_by_the_per_invocation_limit() -> Result<()> {
    let root = Root::with_handlers(
        r#"
[handlers.storm]
component = "{emit-probe}"
events = ["worker.started"]
max_attempts = 1
limits = { max_emits = 10 }
"#,
    )?;
    let failing = root.emit("worker.started", r#"{"count": 100000}"#)?;
    let tolerant = root.emit("worker.started", r#"{"count": 100000, "tolerate": true}"#)?;
    let s = root.dispatch()?;
    assert_eq!(s["emitted"], 10, "only the tolerant run's 10 follow-ups are queued: {s}");
    let dl = root.dead_letters()?;
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0]["event"]["event_id"], failing);
    let msg = dl[0]["history"][0]["failures"][0]["message"].as_str().unwrap();
    assert!(msg.contains("already emitted 10 events") && msg.contains("limits.max_emits"), "{msg}");
    let rec = root.archived_record(&tolerant)?.unwrap();
    assert!(rec["handlers"][0]["summary"].as_str().unwrap().starts_with("emitted 10 then refused"));
    Ok(())
}

#[test]
fn three_dispatchers_on_ten_thousand_events_handle_each_once() -> Result<()> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\nconcurrency = 2\n")?;
    let ids = root.batch(&batch_of(10_000, "s"))?;
    let children: Vec<_> = (0..3)
        .map(|_| root.command().args(["dispatch", "--json"]).stderr(std::process::Stdio::null()).spawn())
        .collect::<std::io::Result<_>>()?;
    for c in children {
        let out = c.wait_with_output()?;
        assert!(out.status.success());
    }
    assert_eq!(audit(&root, &ids)?, (0, 0, 0), "(lost, duplicated, unexpected)");
    assert!(root.files("events/queue").is_empty() && root.files("events/claimed").is_empty());
    Ok(())
}

#[test]
fn kill_9_at_random_moments_loses_nothing() -> Result<()> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    let config = std::fs::read_to_string(root.join("cortex.toml"))?.replace("lease_secs = 300", "lease_secs = 1");
    std::fs::write(root.join("cortex.toml"), config)?;
    let mut ids = Vec::new();
    for round in 0..50 {
        let mut svc = root.serve()?;
        ids.extend(root.batch(&batch_of(40, &format!("r{round}")))?);
        std::thread::sleep(Duration::from_millis(fastrand_ms(round)));
        svc.child.kill()?; // SIGKILL
        svc.child.wait()?;
    }
    // Claims of the killed processes are reclaimed once their lease is over.
    std::thread::sleep(Duration::from_millis(1100));
    root.dispatch()?;
    // An event in flight during several crashes uses up its attempts (each
    // lease expiry counts, as an SQS receive does) and is dead-lettered as
    // exhausted: accounted for, not lost.
    let exhausted: Vec<String> = root
        .dead_letters()?
        .iter()
        .map(|d| {
            assert!(d["reason"].as_str().unwrap_or("").contains("over max_attempts"), "unexpected dead letter: {d}");
            d["event"]["event_id"].as_str().unwrap_or("").to_string()
        })
        .collect();
    let (lost, duplicated, unexpected) = audit(&root, &ids)?;
    let lost = lost - ids.iter().filter(|id| exhausted.contains(id)).count();
    eprintln!(
        "kill -9 x50: {} events, {lost} lost, {duplicated} duplicated, {unexpected} unexpected, {} dead-lettered after exhausting their attempts in crashes",
        ids.len(),
        exhausted.len()
    );
    assert_eq!((lost, unexpected), (0, 0));
    assert_eq!(duplicated, 0, "a settled event ran again: recovery must see its archive record");
    assert!(root.files("events/queue").is_empty() && root.files("events/claimed").is_empty());
    Ok(())
}

/// A spread of kill moments, 0–60 ms, without a random crate.
fn fastrand_ms(round: u64) -> u64 {
    (round * 37 + 11) % 61
}

#[test]
fn a_stopped_service_with_an_overflowed_watch_handles_everything_on_resume() -> Result<()> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\nconcurrency = 2\n")?;
    let svc = root.serve()?;
    svc.signal(19); // SIGSTOP
    let ids = root.batch(&batch_of(20_000, "burst"))?;
    svc.signal(18); // SIGCONT
    wait_for(Duration::from_secs(90), || Ok(root.archived()?.len() >= ids.len()))?;
    assert_eq!(audit(&root, &ids)?, (0, 0, 0), "(lost, duplicated, unexpected)");
    assert_eq!(svc.stop()?, 0);
    Ok(())
}

/// A small tmpfs, unmounted on drop (the test runs as root, as CI does).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> Result<SmallDisk> {
        let dir = tempfile::tempdir()?;
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()?;
        anyhow::ensure!(st.success(), "mounting a tmpfs failed: this test needs root (CI runs as root)");
        Ok(SmallDisk { dir })
    }

    /// Fills the disk to the last byte with a file that `free` removes.
    fn fill(&self) -> Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.path().join("filler"))?;
        for chunk in [1 << 20, 4096, 1] {
            let buf = vec![0u8; chunk];
            while f.write_all(&buf).is_ok() {}
        }
        Ok(())
    }

    fn free(&self) -> Result<()> {
        std::fs::remove_file(self.dir.path().join("filler"))?;
        Ok(())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_refuses_emits_and_never_acks_what_it_could_not_write() -> Result<()> {
    let disk = SmallDisk::new("8m")?;
    let path = disk.dir.path().join("coordination");
    let run = |args: &[&str]| -> Result<cortex_tests::Out> {
        Ok(std::process::Command::new(cortex_tests::cortex_bin())
            .arg("--root")
            .arg(&path)
            .args(args)
            .env_remove("RUST_LOG")
            .output()?
            .into())
    };
    assert_eq!(run(&["init", "--handlers", "/nonexistent"])?.code, 0);
    let base = std::fs::read_to_string(path.join("cortex.toml"))?;
    let cut = base.find("[handlers.").unwrap_or(base.len());
    let config = format!(
        "{}\n[handlers.sink]\ncomponent = \"{}\"\nevents = [\"*\"]\n",
        base[..cut].replace("lease_secs = 300", "lease_secs = 1"),
        cortex_tests::component("noop")
    );
    std::fs::write(path.join("cortex.toml"), config)?;

    // A producer on a full disk gets an error and no id; nothing torn appears.
    disk.fill()?;
    let out = run(&["emit", "task.created", "s", "{}"])?;
    assert_ne!(out.code, 0);
    assert!(out.stdout.trim().is_empty(), "an event id was printed: {}", out.stdout);
    assert!(out.stderr.contains("No space left"), "{}", out.stderr);
    assert!(cortex_tests::list(&path.join("events/queue")).is_empty());
    assert!(cortex_tests::list(&path.join("events/tmp")).is_empty(), "a partial temp file was left");

    // Events queued while there was room; then the disk fills before they settle.
    disk.free()?;
    let mut ids = Vec::new();
    for i in 0..20 {
        let out = run(&["emit", "task.created", "s", &format!("{{\"n\": {i}}}")])?;
        assert_eq!(out.code, 0, "{}", out.stderr);
        ids.push(out.stdout.trim().to_string());
    }
    disk.fill()?;
    let out = run(&["dispatch"])?;
    assert_ne!(out.code, 0, "dispatch must report that it could not settle");
    assert!(out.stderr.contains("could not be settled") || out.stderr.contains("No space left"), "{}", out.stderr);
    let archive = path.join("events/archive");
    let archived_text: String = cortex_tests::list(&archive)
        .iter()
        .map(|f| std::fs::read_to_string(archive.join(f)).unwrap_or_default())
        .collect();
    let unacked = cortex_tests::list(&path.join("events/queue")).len() + cortex_tests::claims_under(&path).len();
    let acked = ids.iter().filter(|id| archived_text.contains(id.as_str())).count();
    assert_eq!(unacked + acked, ids.len(), "an event was acknowledged without its archive record");

    // With room again (and the lease over), everything is handled.
    disk.free()?;
    std::thread::sleep(Duration::from_millis(1100));
    let out = run(&["dispatch"])?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let archived_text: String = cortex_tests::list(&archive)
        .iter()
        .map(|f| std::fs::read_to_string(archive.join(f)).unwrap_or_default())
        .collect();
    for id in &ids {
        assert!(archived_text.contains(id.as_str()), "{id} lost after the disk filled");
    }
    Ok(())
}

#[test]
fn a_slow_producer_is_never_read_half_written() -> Result<()> {
    use std::io::Write;
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    let svc = root.serve()?;
    let event = cortex_tests::event("task.created")
        .id("evt_20251201_120000_slow01")
        .at("2025-12-01T12:00:00Z")
        .source("slow")
        .payload(serde_json::json!({"blob": "x".repeat(5000)}))
        .to_string();
    // Our own producer's protocol: a temp file is never read, however long it takes.
    std::fs::write(root.join("events/tmp/999.0.cafe.slow"), &event[..event.len() / 2])?;
    // A hand-rolled producer writing straight into the queue, slowly.
    let mut f = std::fs::File::create(root.join("events/queue/slow.json"))?;
    for chunk in event.as_bytes().chunks(event.len() / 4 + 1).take(3) {
        f.write_all(chunk)?;
        f.flush()?;
        std::thread::sleep(Duration::from_millis(600));
        assert!(
            root.archived()?.is_empty() && root.files("events/dead-letter").is_empty(),
            "a half-written event was taken"
        );
    }
    let written: usize = event.as_bytes().chunks(event.len() / 4 + 1).take(3).map(<[u8]>::len).sum();
    f.write_all(&event.as_bytes()[written..])?;
    drop(f);
    wait_for(Duration::from_secs(10), || Ok(root.archived()?.len() == 1))?;
    assert_eq!(root.archived()?[0]["event"]["payload"]["blob"].as_str().map(str::len), Some(5000));
    assert!(root.dead_letters()?.is_empty());
    assert!(root.join("events/tmp/999.0.cafe.slow").exists(), "the dispatcher touched a temp file");

    // A producer that died mid-write: its file is dead-lettered with the reason, not lost.
    std::fs::write(root.join("events/queue/torn.json"), &event[..event.len() / 3])?;
    wait_for(Duration::from_secs(15), || Ok(root.files("events/dead-letter").len() == 1))?;
    let dl = &root.dead_letters()?[0];
    assert!(dl["reason"].as_str().unwrap().contains("invalid event"), "{dl}");
    assert_eq!(dl["raw"].as_str().map(str::len), Some(event.len() / 3));
    assert_eq!(svc.stop()?, 0);
    Ok(())
}

#[test]
fn a_killed_services_claims_are_taken_back_in_seconds_not_after_the_lease() -> Result<()> {
    // The default lease (300 s) stays: only the dead owners' free locks can
    // bring their claims back this fast.
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    let mut ids = Vec::new();
    for round in 0..10 {
        let mut svc = root.serve()?;
        ids.extend(root.batch(&batch_of(100, &format!("k{round}")))?);
        std::thread::sleep(Duration::from_millis(fastrand_ms(round)));
        svc.child.kill()?; // SIGKILL
        svc.child.wait()?;
    }
    let left = root.claims().len();
    let svc = root.serve()?;
    // Drained within seconds: every event archived, or dead-lettered after
    // using up its attempts in the crashes.
    wait_for(Duration::from_secs(15), || {
        Ok(root.files("events/queue").is_empty() && root.claims().is_empty() && {
            let done = root.archived()?.len() + root.dead_letters()?.len();
            done >= ids.len()
        })
    })?;
    assert_eq!(svc.stop()?, 0);
    let exhausted: Vec<String> =
        root.dead_letters()?.iter().map(|d| d["event"]["event_id"].as_str().unwrap_or("").to_string()).collect();
    let (lost, duplicated, unexpected) = audit(&root, &ids)?;
    let lost = lost - ids.iter().filter(|id| exhausted.contains(id)).count();
    eprintln!(
        "kill -9 x10 with the default lease: {left} claims of dead services, {lost} lost, {duplicated} duplicated"
    );
    assert_eq!((lost, duplicated, unexpected), (0, 0, 0));
    assert!(root.files("events/claimed").is_empty(), "dead services' claim directories are removed");
    Ok(())
}

#[test]
fn a_live_dispatchers_claim_is_never_taken_and_every_service_is_listed() -> Result<()> {
    let root = Root::with_handlers(
        "[handlers.slow]\ncomponent = \"{loop-forever}\"\nevents = [\"task.created\"]\nmax_attempts = 1\n\
         [handlers.slow.limits]\ndeadline_ms = 3000\n",
    )?;
    let (a, b) = (root.serve()?, root.serve()?);
    root.emit("task.created", "{}")?;
    wait_for(Duration::from_secs(10), || Ok(root.claims().len() == 1))?;
    // A one-shot dispatcher at the same moment leaves the live claim alone.
    let out = root.run(&["dispatch", "--no-wait", "--json"])?;
    let summary: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(summary["recovered_claims"], 0, "{summary}");
    assert_eq!(root.claims().len(), 1, "the live service's claim was taken");
    let status = root.ok(&["status"])?;
    let services = status.lines().filter(|l| l.starts_with("service:")).count();
    assert_eq!(services, 2, "{status}");
    // Stopping one leaves the other's record.
    assert_eq!(b.stop()?, 0);
    let status = root.ok(&["status"])?;
    assert_eq!(status.lines().filter(|l| l.starts_with("service:")).count(), 1, "{status}");
    wait_for(Duration::from_secs(15), || Ok(root.files("events/dead-letter").len() == 1))?;
    assert_eq!(a.stop()?, 0);
    let status = root.ok(&["status"])?;
    assert!(status.contains("services:      none running"), "{status}");
    Ok(())
}
