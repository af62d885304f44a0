//! The host side of the sandbox: what a handler plants in the directories it
//! may write (symlinks above all) must never make the host read, write or
//! preopen anything through it; grants stay out of the runtime's own
//! directories; and the archive is kept by when events were archived.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use cortex_tests::{Root, component, event};
use serde_json::{Value, json};

/// Deep enough to climb from any temp directory to `/`.
const TO_FS_ROOT: &str = "../../../../../../../../../../../..";

fn is_symlink(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

#[test]
fn a_symlink_planted_as_an_archive_day_file_is_never_written_through() -> Result<()> {
    let root = Root::with_handlers(
        r#"
[handlers.planter]
component = "{escape-probe}"
events = ["task.*"]
max_attempts = 1
grants = [{ dir = "events/archive", mode = "rw", unsafe_allow = true }]
"#,
    )?;
    let victim = root.scratch().join("victim.txt");
    std::fs::write(&victim, "precious\n")?;
    let absent = root.scratch().join("created.txt");
    // The events' day file is archive/2025-12-01.jsonl; the handler swaps it
    // for a link out of the root before its event is settled.
    let plant = |file: &str| {
        event("task.created")
            .at("2025-12-01T10:00:00Z")
            .payload(
                json!({"op": "symlink", "path": "/events/archive/2025-12-01.jsonl", "to": format!("../../../{file}")}),
            )
            .to_string()
    };
    let ids = root.batch(&format!("{}\n", plant("victim.txt")))?;
    let s = root.dispatch()?;
    assert_eq!(s["dead_lettered"], 0, "{s}");
    assert_eq!(std::fs::read_to_string(&victim)?, "precious\n", "the host appended through the planted link");
    let day = root.join("events/archive/2025-12-01.jsonl");
    assert!(!is_symlink(&day), "the planted link is still there");
    assert!(std::fs::read_to_string(&day)?.contains(&ids[0]), "the event was not archived");

    // A link to a file that does not exist yet: the host must not create it.
    root.batch(&format!("{}\n", plant("created.txt")))?;
    root.dispatch()?;
    assert!(!absent.exists(), "the host created a file outside the root through a link");
    assert!(!is_symlink(&day));
    Ok(())
}

#[test]
fn handler_test_never_preopens_a_link_planted_over_a_nested_grant() -> Result<()> {
    let root = Root::new()?;
    let dir = root.scratch();
    // `/state/./b` reaches `b` through the `state` grant (wasi-libc picks
    // the longest preopen prefix, and `/state/b` alone is the read-only one).
    let plant = dir.join("plant.json");
    std::fs::write(
        &plant,
        json!({"event_id": "evt_20251201_100000_plant1", "event_type": "task.created", "source": "t",
               "timestamp": "2025-12-01T10:00:00Z", "metadata": {"priority": "medium"},
               "payload": {"op": "symlink", "path": "/state/./b", "to": format!("{TO_FS_ROOT}/etc")}})
        .to_string(),
    )?;
    let read = dir.join("read.json");
    std::fs::write(
        &read,
        json!({"event_id": "evt_20251201_100001_read01", "event_type": "task.created", "source": "t",
               "timestamp": "2025-12-01T10:00:01Z", "metadata": {"priority": "medium"},
               "payload": {"op": "read", "path": "/state/b/passwd"}})
        .to_string(),
    )?;
    let (plant, read) = (plant.display().to_string(), read.display().to_string());
    let out = root.run(&[
        "handler",
        "test",
        &component("escape-probe"),
        "--grant",
        "state:rw",
        "--grant",
        "state/b:ro",
        "--event",
        &plant,
        "--event",
        &read,
        "--json",
    ])?;
    let report: Value = serde_json::from_str(&out.stdout).map_err(|e| anyhow::anyhow!("{e}: {out:?}"))?;
    let runs = report["runs"].as_array().cloned().unwrap_or_default();
    assert_eq!(runs[0]["outcome"], "ok", "{report}");
    // The report shows the link as a link, with its target.
    let planted = &runs[0]["files"]["state/b"];
    assert_eq!(planted["symlink"], format!("{TO_FS_ROOT}/etc"), "the report hides the planted link: {report}");
    // The next invocation's /state/b must not be the host's /etc.
    assert_ne!(runs[1]["outcome"], "ok", "read the host's /etc/passwd: {}", runs[1]);
    assert!(!runs[1].to_string().contains("root:"), "{}", runs[1]);
    assert!(runs[1]["error"].as_str().unwrap_or("").contains("symlink"), "{}", runs[1]);
    Ok(())
}

#[test]
fn a_grant_through_a_planted_symlink_is_refused() -> Result<()> {
    let root = Root::with_handlers(
        r#"
[handlers.reader]
component = "{escape-probe}"
events = ["task.*"]
max_attempts = 1
grants = [{ dir = "state/b", mode = "ro" }]
"#,
    )?;
    let outside = root.scratch().join("outside");
    std::fs::create_dir_all(&outside)?;
    std::fs::write(outside.join("secret.txt"), "host secret")?;
    root.emit("task.created", r#"{"op": "read", "path": "/state/b/secret.txt"}"#)?;
    std::fs::create_dir_all(root.join("state"))?;
    // What a handler that once had `state` rw could have left behind.
    std::os::unix::fs::symlink("../../outside", root.join("state/b"))?;
    let out = root.run(&["dispatch", "--json"])?;
    assert_ne!(out.code, 0, "dispatch ran with a grant through a symlink:\n{}", out.stdout);
    assert!(out.stderr.contains("symlink"), "{}", out.stderr);
    assert!(!root.archived()?.iter().any(|r| r.to_string().contains("host secret")));
    Ok(())
}

#[test]
fn replay_dry_run_never_copies_onto_the_host_through_a_link() -> Result<()> {
    let root = Root::with_handlers(
        r#"
[handlers.planter]
component = "{escape-probe}"
events = ["task.*"]
max_attempts = 1
grants = [{ dir = "state", mode = "rw" }, { dir = "state/a", mode = "ro" }]
"#,
    )?;
    let victim = root.scratch().join("victim");
    std::fs::create_dir_all(&victim)?;
    std::fs::write(victim.join("data.txt"), "precious")?;
    std::fs::create_dir_all(root.join("events/archive"))?;
    let line = json!({"event": {"event_id": "evt_20251201_100000_aaaaaa", "event_type": "task.created",
                      "timestamp": "2025-12-01T10:00:00Z", "source": "t", "metadata": {"priority": "medium"},
                      "payload": {"op": "list", "path": "/state"}}, "outcome": "handled"});
    std::fs::write(root.join("events/archive/2025-12-01.jsonl"), format!("{line}\n"))?;
    // A link that resolves to the victim both from the root and from the
    // dry run's scratch copy, as the handler's `state` rw lets it plant.
    std::fs::create_dir_all(root.join("state"))?;
    std::os::unix::fs::symlink(format!("{TO_FS_ROOT}{}", victim.display()), root.join("state/a"))?;
    let out = root.run(&[
        "replay",
        "--dry-run",
        "--component",
        &component("escape-probe"),
        "--handler",
        "planter",
        "--event-id",
        "evt_20251201_100000_aaaaaa",
    ])?;
    assert_eq!(std::fs::read_to_string(victim.join("data.txt"))?, "precious", "the dry run truncated a host file");
    // The nested grant is refused when the config loads; the copy would
    // refuse the link too (see the next test).
    assert_ne!(out.code, 0, "the nested read-write grant was accepted:\n{}", out.stdout);
    assert!(out.stderr.contains("overlaps"), "{}", out.stderr);
    Ok(())
}

#[test]
fn copies_follow_no_link_and_keep_sparse_files_sparse() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "precious")?;
    std::fs::create_dir_all(src.join("sub"))?;
    std::fs::write(src.join("sub/f.txt"), "new")?;
    std::os::unix::fs::symlink("../../victim.txt", src.join("link"))?;
    // A sparse file: 1 GiB long, one page of data.
    let big = std::fs::File::create(src.join("big"))?;
    big.set_len(1 << 30)?;
    std::io::Write::write_all(&mut &big, &[7u8; 4096])?;
    drop(big);
    // The destination already holds a link where a file is to be copied.
    std::fs::create_dir_all(dst.join("sub"))?;
    std::os::unix::fs::symlink(&victim, dst.join("sub/f.txt"))?;

    cortex::fsio::copy_tree(&src, &dst)?;
    assert_eq!(std::fs::read_to_string(&victim)?, "precious", "copied through a link in the destination");
    assert!(!is_symlink(&dst.join("sub/f.txt")));
    assert_eq!(std::fs::read_to_string(dst.join("sub/f.txt"))?, "new");
    assert_eq!(std::fs::read_link(dst.join("link"))?, Path::new("../../victim.txt"), "a link is copied as a link");
    let copied = std::fs::metadata(dst.join("big"))?;
    assert_eq!(copied.len(), 1 << 30);
    assert!(copied.blocks() * 512 < 16 << 20, "copied densely: {} bytes allocated", copied.blocks() * 512);

    // A source that is itself a link is refused, not followed.
    let linked = dir.path().join("linked");
    std::os::unix::fs::symlink(&src, &linked)?;
    let err = format!("{:#}", cortex::fsio::copy_tree(&linked, &dir.path().join("dst2")).unwrap_err());
    assert!(err.contains("symlink"), "{err}");
    Ok(())
}

#[test]
fn runtime_dirs_are_refused_as_grants_unless_opted_in_and_check_warns() -> Result<()> {
    for dir in ["cache", "handlers", "events", "events/queue", "."] {
        let root = Root::with_handlers(&format!(
            "[handlers.h]\ncomponent = \"{{noop}}\"\nevents = [\"task.*\"]\ngrants = [{{ dir = \"{dir}\", mode = \"rw\" }}]\n"
        ))?;
        let out = root.fails(&["handlers", "check"])?;
        assert!(out.stderr.contains("unsafe_allow"), "{dir}: {}", out.stderr);
    }
    let root = Root::with_handlers(
        "[handlers.h]\ncomponent = \"{noop}\"\nevents = [\"task.*\"]\ngrants = [{ dir = \"cache\", mode = \"ro\", unsafe_allow = true }]\n",
    )?;
    let out = root.run(&["handlers", "check"])?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("warning") && out.stderr.contains("cache"), "{}", out.stderr);
    Ok(())
}

#[test]
fn a_back_dated_event_stays_in_the_archive_through_a_cleanup() -> Result<()> {
    let root = Root::new()?;
    // The seed's example event, dated long before today.
    let line = json!({"event_type": "task.created", "source": "planner", "timestamp": "2025-12-01T10:00:00Z",
                      "payload": {"task_id": "t-1"}});
    let id = root.batch(&format!("{line}\n"))?.remove(0);
    root.dispatch()?;
    // A day file last appended to 40 days ago, named for yesterday.
    let stale = root.join("events/archive/2026-11-30.jsonl");
    std::fs::write(&stale, "{\"event\": {\"event_id\": \"evt_20261130_000000_aaaaaa\"}}\n")?;
    std::fs::File::options()
        .write(true)
        .open(&stale)?
        .set_modified(SystemTime::now() - Duration::from_secs(40 * 86_400))?;

    root.emit("system.cleanup_needed", "{}")?;
    let s = root.dispatch()?;
    assert_eq!(s["dead_lettered"], 0, "{s}");
    let out = root.run(&["replay", "--dry-run", "--json", "--event-id", &id])?;
    assert_eq!(out.code, 0, "the event archived minutes ago is gone: {}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(report["events"][0]["event_id"], id.as_str(), "{report}");
    assert!(!stale.exists(), "a day file past the retention since its last append was kept");
    Ok(())
}
