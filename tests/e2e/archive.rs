//! The archive's life on the host: old days compressed into zstd segments
//! with a seek index, read by replay, trace, export, the idempotency check
//! and the cleanup handler exactly as before; a crash at each step of
//! compression; an append racing it; retention of compressed days; links
//! planted where the compressor looks.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use cortex_tests::{Root, event};
use serde_json::Value;

const SINK: &str = "[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n";
const DAYS: [&str; 3] = ["2025-11-01", "2025-11-02", "2025-11-03"];
/// Events per old day: several zstd frames' worth with the padding below.
const PER_DAY: usize = 400;

/// Sets the `[archive]` table (replacing the default config's, if the
/// root kept it).
fn archive_config(root: &Root, compress_after_days: u64, extra: &str) -> Result<()> {
    let path = root.join("cortex.toml");
    let mut text = std::fs::read_to_string(&path)?;
    if let Some(start) = text.find("\n[archive]\n") {
        let end = text[start + 1..].find("\n[").map_or(text.len(), |e| start + 1 + e);
        text.replace_range(start..end, "");
    }
    text.push_str(&format!("\n[archive]\nretention_days = 30\ncompress_after_days = {compress_after_days}\n{extra}"));
    std::fs::write(&path, text).context("failed to write cortex.toml")
}

/// A root whose archive holds DAYS × PER_DAY events in plain day files
/// (compression off), with ids that carry their own day; returns the ids.
fn archived_old_days(handlers: &str) -> Result<(Root, Vec<String>)> {
    let root = Root::with_handlers(handlers)?;
    archive_config(&root, 0, "")?;
    let mut lines = String::new();
    let mut ids = Vec::new();
    for (d, day) in DAYS.iter().enumerate() {
        for i in 0..PER_DAY {
            let id = format!("evt_{}_{:02}{:02}00_{d}{i:05}", day.replace('-', ""), i / 60 % 24, i % 60);
            let kind = if i % 2 == 0 { "task.created" } else { "worker.heartbeat" };
            let pad = "x".repeat(i % 200);
            let e = event(kind)
                .id(&id)
                .at(&format!("{day}T{:02}:{:02}:00Z", i / 60 % 24, i % 60))
                .source(&format!("w-{}", i % 7))
                .payload(
                    serde_json::json!({"task_id": format!("t-{i}"), "worker_id": format!("w-{}", i % 7), "pad": pad}),
                );
            lines.push_str(&e.line());
            ids.push(id);
        }
    }
    root.batch(&lines)?;
    root.dispatch()?;
    Ok((root, ids))
}

/// What each reader says about the archive, to compare before and after.
#[derive(Debug, PartialEq)]
struct Views {
    by_date: Vec<Value>,
    by_id: Vec<Value>,
    traces: Vec<Value>,
    export: String,
    cloudevents: String,
}

fn dry_run(root: &Root, args: &[&str]) -> Result<Value> {
    let mut all = vec!["replay", "--dry-run", "--json"];
    all.extend_from_slice(args);
    let out = root.ok(&all)?;
    serde_json::from_str(&out).with_context(|| format!("replay printed: {out}"))
}

fn views(root: &Root, ids: &[String]) -> Result<Views> {
    let picks = [&ids[0], &ids[PER_DAY + 123], &ids[3 * PER_DAY - 1]];
    let mut by_id = Vec::new();
    let mut traces = Vec::new();
    for id in picks {
        let report = dry_run(root, &["--event-id", id])?;
        assert_eq!(report["full_scan"], false, "{id}: found in its own day: {report}");
        by_id.push(report["events"].clone());
        traces.push(serde_json::from_str(&root.ok(&["trace", "--json", id])?)?);
    }
    Ok(Views {
        by_date: dry_run(root, &["--date", DAYS[1]])?["events"].as_array().cloned().unwrap_or_default(),
        by_id,
        traces,
        export: root.ok(&["export"])?,
        cloudevents: root.ok(&["export", "--format", "cloudevents", "--type", "task.*"])?,
    })
}

/// Lines of the archive as the runtime's one reader gives them (replay and
/// export keep one copy per id, so they cannot show a line read twice).
fn lines_read(root: &Root) -> Result<usize> {
    use std::io::BufRead;
    let layout = cortex::layout::Layout::new(root.path.clone());
    let archive = cortex::archive::Archive::open(&layout)?.context("no archive")?;
    let mut n = 0;
    for seg in archive.segments()? {
        for line in archive.lines(&seg)?.lines() {
            n += usize::from(!line?.trim().is_empty());
        }
    }
    Ok(n)
}

/// The archive's file names of 2025 (today's day file, of the events a
/// test emits now, is left out).
fn files(root: &Root) -> BTreeSet<String> {
    root.files("events/archive").into_iter().filter(|n| n.starts_with("2025-")).collect()
}

fn names(suffix: &str) -> BTreeSet<String> {
    DAYS.iter().map(|d| format!("{d}{suffix}")).collect()
}

#[test]
fn old_days_are_compressed_and_every_reader_gives_the_same_answers() -> Result<()> {
    let handlers = format!(
        "{SINK}[handlers.on-cleanup-needed]\ncomponent = \"{{on-cleanup-needed}}\"\nevents = [\"system.cleanup_needed\"]\n\
         grants = [{{ dir = \"events/archive\", mode = \"ro\" }}, {{ dir = \"state/cleanup\", mode = \"rw\" }}]\n"
    );
    let (root, ids) = archived_old_days(&handlers)?;
    assert_eq!(files(&root), names(".jsonl"));
    let before = views(&root, &ids)?;
    assert_eq!(before.by_date.len(), PER_DAY);
    assert_eq!(before.export.lines().count(), DAYS.len() * PER_DAY);
    let plain_bytes: u64 = names(".jsonl")
        .iter()
        .map(|n| std::fs::metadata(root.join(&format!("events/archive/{n}"))).map_or(0, |m| m.len()))
        .sum();

    archive_config(&root, 2, "")?;
    root.dispatch()?;
    assert_eq!(files(&root), names(".jsonl.zst"), "every old day compressed, no plain day left");
    let packed_bytes: u64 = names(".jsonl.zst")
        .iter()
        .map(|n| std::fs::metadata(root.join(&format!("events/archive/{n}"))).map_or(0, |m| m.len()))
        .sum();
    assert!(packed_bytes * 4 < plain_bytes, "{packed_bytes} bytes compressed of {plain_bytes}");
    let after = views(&root, &ids)?;
    assert_eq!(after, before);
    assert_eq!(lines_read(&root)?, DAYS.len() * PER_DAY);
    assert_eq!(root.archived()?.len(), DAYS.len() * PER_DAY, "any zstd decoder reads the days whole");

    // By id, one day is read, and of it only the frame the index names.
    let report = dry_run(&root, &["--event-id", &ids[PER_DAY + 5]])?;
    assert_eq!(report["files_read"], 1, "{report}");

    // An archived id is still known: emitting it again queues nothing.
    let again = event("task.created").id(&ids[PER_DAY + 5]).at("2025-11-02T00:05:00Z").line();
    let out = root.run_with(&["emit", "--batch"], again.as_bytes())?;
    assert!(out.stderr.contains("already archived"), "{}", out.stderr);
    assert!(root.files("events/queue").is_empty());

    // A back-dated event archived into a compressed day starts a plain
    // file; readers see both, and the next run merges it in.
    let late = event("task.created").id("evt_20251102_235900_late01").at("2025-11-02T23:59:00Z").line();
    root.batch(&late)?;
    archive_config(&root, 0, "")?;
    root.dispatch()?;
    assert!(files(&root).contains("2025-11-02.jsonl"));
    assert_eq!(dry_run(&root, &["--date", DAYS[1]])?["selected"], PER_DAY + 1);
    assert_eq!(dry_run(&root, &["--event-id", "evt_20251102_235900_late01"])?["selected"], 1);

    // The cleanup handler reports compressed days from their index, read-only.
    root.emit("system.cleanup_needed", "{}")?;
    archive_config(&root, 2, "")?;
    root.dispatch()?;
    assert_eq!(files(&root), names(".jsonl.zst"), "the late event merged into its day");
    assert_eq!(dry_run(&root, &["--date", DAYS[1]])?["selected"], PER_DAY + 1);
    let run = root.read_json("state/cleanup/last-run.json")?;
    let days: Vec<&Value> = run["files"].as_array().into_iter().flatten().filter(|f| f["compressed"] == true).collect();
    assert!(!days.is_empty(), "{run}");
    assert!(run["events_total"].as_u64().unwrap_or(0) >= (DAYS.len() * PER_DAY) as u64, "{run}");
    Ok(())
}

#[test]
fn a_crash_mid_compression_leaves_the_plain_day_and_readers_see_each_line_once() -> Result<()> {
    for point in ["archive.pack.written", "archive.pack.renamed", "archive.pack.done"] {
        let (root, ids) = archived_old_days(SINK)?;
        let before = views(&root, &ids)?;
        archive_config(&root, 2, "")?;
        let out: cortex_tests::Out = root.failpoint_command(point).args(["dispatch", "--json"]).output()?.into();
        assert_ne!(out.code, 0, "{point}: the fail point did not fire: {}", out.stderr);
        let left = files(&root);
        let first = format!("{}.jsonl", DAYS[0]);
        match point {
            "archive.pack.written" => {
                assert!(left.contains(&first) && !left.contains(&format!("{first}.zst")), "{point}: {left:?}")
            }
            "archive.pack.renamed" => {
                assert!(left.contains(&first) && left.contains(&format!("{first}.zst")), "{point}: {left:?}")
            }
            _ => assert!(!left.contains(&first) && left.contains(&format!("{first}.zst")), "{point}: {left:?}"),
        }
        // Every reader sees every line once, whichever files the crash left.
        archive_config(&root, 0, "")?;
        assert_eq!(lines_read(&root)?, DAYS.len() * PER_DAY, "{point}: each line once");
        assert_eq!(views(&root, &ids)?, before, "{point}");
        // A later append to the day the crash left in both forms counts too.
        root.batch(&event("task.created").id("evt_20251101_235900_late02").at("2025-11-01T23:59:00Z").line())?;
        root.dispatch()?;
        assert_eq!(dry_run(&root, &["--date", DAYS[0]])?["selected"], PER_DAY + 1, "{point}");
        assert_eq!(lines_read(&root)?, DAYS.len() * PER_DAY + 1, "{point}: each line once");
        // The next run finishes the job.
        archive_config(&root, 2, "")?;
        root.dispatch()?;
        assert_eq!(files(&root), names(".jsonl.zst"), "{point}");
        assert_eq!(dry_run(&root, &["--date", DAYS[0]])?["selected"], PER_DAY + 1, "{point}");
        assert_eq!(root.ok(&["export"])?.lines().count(), DAYS.len() * PER_DAY + 1, "{point}");
        assert_eq!(lines_read(&root)?, DAYS.len() * PER_DAY + 1, "{point}: merged, each line once");
    }
    Ok(())
}

#[test]
fn retention_removes_compressed_days_by_last_append_and_exports_them_first() -> Result<()> {
    let (root, _) = archived_old_days(SINK)?;
    // The compressed day keeps its plain day's last append.
    let appended = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 86_400);
    std::fs::File::options().write(true).open(root.join("events/archive/2025-11-01.jsonl"))?.set_modified(appended)?;
    archive_config(&root, 2, "")?;
    root.dispatch()?;
    assert_eq!(files(&root), names(".jsonl.zst"));
    let day = root.join("events/archive/2025-11-01.jsonl.zst");
    assert_eq!(std::fs::metadata(&day)?.modified()?, appended, "the segment keeps its plain day's last append");

    // Last appended 40 days ago: past the retention of 30.
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(40 * 86_400);
    std::fs::File::options().write(true).open(&day)?.set_modified(long_ago)?;
    archive_config(&root, 2, "export_before_delete = \"archive-export\"\n")?;
    root.dispatch()?;
    let left = files(&root);
    assert!(!left.contains("2025-11-01.jsonl.zst") && left.contains("2025-11-02.jsonl.zst"), "{left:?}");
    let exported = root.join("archive-export/2025-11-01.jsonl.zst");
    let text = String::from_utf8(zstd::stream::decode_all(std::fs::File::open(&exported)?)?)?;
    assert_eq!(text.lines().count(), PER_DAY, "exported whole before it was removed");
    Ok(())
}

#[test]
fn an_append_racing_compression_loses_nothing() -> Result<()> {
    let root = Root::with_handlers(SINK)?;
    archive_config(&root, 0, "")?;
    let layout = cortex::layout::Layout::new(root.path.clone());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let total = 20 * 25;
    let packs = std::thread::scope(|s| -> Result<usize> {
        let packer = s.spawn(|| -> Result<usize> {
            let cutoff = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).context("date")?;
            let mut packs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(archive) = cortex::archive::Archive::open(&layout)? {
                    packs += archive.pack_before(cutoff)?.days.len();
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Ok(packs)
        });
        // Back-dated events appended to one old day by dispatcher processes
        // while another thread keeps compressing that day.
        let result = (|| -> Result<()> {
            for round in 0..20 {
                let lines: String = (0..25)
                    .map(|i| {
                        event("task.created")
                            .id(&format!("evt_20251105_0000{round:02}_r{i:05}"))
                            .at("2025-11-05T00:00:00Z")
                            .line()
                    })
                    .collect();
                root.batch(&lines)?;
                root.dispatch()?;
            }
            Ok(())
        })();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let packs = packer.join().map_err(|_| anyhow::anyhow!("the packer panicked"))??;
        result?;
        Ok(packs)
    })?;
    assert!(packs > 1, "the day was compressed {packs} times: no race was run");
    let report = dry_run(&root, &["--date", "2025-11-05"])?;
    assert_eq!(report["selected"], total, "{}", report["skipped"]);
    let archived = root.archived()?;
    let unique: BTreeSet<&str> = archived.iter().filter_map(|r| r["event"]["event_id"].as_str()).collect();
    assert_eq!((archived.len(), unique.len()), (total, total), "each line once");
    Ok(())
}

#[test]
fn the_compressor_never_follows_a_link_planted_in_the_archive() -> Result<()> {
    let (root, _) = archived_old_days(SINK)?;
    let outside = root.scratch().join("outside.jsonl");
    let secret = std::fs::read(root.join("events/archive/2025-11-01.jsonl"))?;
    std::fs::write(&outside, &secret)?;
    // A link named like an old day, one named like a compressed day, and
    // one where the compressor writes its temp file.
    std::os::unix::fs::symlink(&outside, root.join("events/archive/2025-10-01.jsonl"))?;
    std::os::unix::fs::symlink(&outside, root.join("events/archive/2025-10-02.jsonl.zst"))?;
    std::os::unix::fs::symlink(&outside, root.join("events/archive/.2025-11-02.jsonl.zst.tmp"))?;
    archive_config(&root, 2, "")?;
    root.dispatch()?;
    assert_eq!(std::fs::read(&outside)?, secret, "nothing was written through a link");
    let left = files(&root);
    assert!(!left.contains("2025-10-01.jsonl.zst"), "a linked day is not compressed: {left:?}");
    assert!(left.contains("2025-11-02.jsonl.zst") && !left.contains("2025-11-02.jsonl"), "{left:?}");
    assert!(root.join("events/archive/2025-10-01.jsonl").is_symlink(), "left for a person to look at");
    // Readers do not read through them either.
    let report = dry_run(&root, &["--date", "2025-10-01"])?;
    assert_eq!(report["selected"], 0, "{report}");
    assert_eq!(root.ok(&["export"])?.lines().count(), DAYS.len() * PER_DAY);
    Ok(())
}
