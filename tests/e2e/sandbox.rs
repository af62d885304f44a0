//! The sandbox holds: deadlines, memory limits, traps and grants, and the
//! next event still runs after each.

use anyhow::Result;
use cortex_tests::Root;
use serde_json::Value;

/// Dispatches and returns the single dead letter's first failure.
fn only_failure(root: &Root) -> Result<Value> {
    root.dispatch()?;
    let dl = root.dead_letters()?;
    assert_eq!(dl.len(), 1, "expected one dead letter, found {dl:?}");
    Ok(dl[0]["history"][0]["failures"][0].clone())
}

fn limited(component: &str, extra: &str) -> Result<Root> {
    Root::with_handlers(&format!(
        "[handlers.bad]\ncomponent = \"{{{component}}}\"\nevents = [\"task.failed\"]\nmax_attempts = 1\n{extra}\n[handlers.next]\ncomponent = \"{{noop}}\"\nevents = [\"task.created\"]\n"
    ))
}

#[test]
fn an_infinite_loop_is_stopped_at_its_deadline_and_the_next_event_runs() -> Result<()> {
    let root = limited("loop-forever", "limits = { deadline_ms = 500 }")?;
    root.emit("task.failed", "{}")?;
    let next = root.emit("task.created", "{}")?;
    let f = only_failure(&root)?;
    assert_eq!(f["kind"], "timeout");
    assert!(f["message"].as_str().unwrap().contains("500 ms"), "{f}");
    let ms = f["duration_ms"].as_f64().unwrap();
    assert!((500.0..1000.0).contains(&ms), "stopped after {ms} ms, not within 2x its deadline");
    assert!(root.archived_record(&next)?.is_some());
    Ok(())
}

#[test]
fn fuel_bounds_instructions() -> Result<()> {
    let root = limited("loop-forever", "limits = { fuel = 5000000, deadline_ms = 60000 }")?;
    root.emit("task.failed", "{}")?;
    let f = only_failure(&root)?;
    assert_eq!(f["kind"], "fuel");
    Ok(())
}

#[test]
fn a_memory_bomb_traps_at_its_limit_and_the_next_event_runs() -> Result<()> {
    let root = limited("memory-bomb", "limits = { memory_mb = 24 }")?;
    root.emit("task.failed", "{}")?;
    let next = root.emit("task.created", "{}")?;
    let f = only_failure(&root)?;
    assert_eq!(f["kind"], "memory");
    assert!(f["message"].as_str().unwrap().contains("24 MiB"), "{f}");
    assert!(root.archived_record(&next)?.is_some());
    Ok(())
}

#[test]
fn a_panic_and_unbounded_recursion_are_traps_not_host_crashes() -> Result<()> {
    for fixture in ["trap-panic", "deep-recursion"] {
        let root = limited(fixture, "")?;
        root.emit("task.failed", "{}")?;
        let next = root.emit("task.created", "{}")?;
        let f = only_failure(&root)?;
        assert_eq!(f["kind"], "trap", "{fixture}: {f}");
        assert!(f["detail"].as_str().unwrap().contains("wasm backtrace"), "{fixture}: forensic detail missing");
        assert!(root.archived_record(&next)?.is_some(), "{fixture}: the next event did not run");
    }
    Ok(())
}

/// A root whose probe may read `state/ro` and write `state/rw`, with a
/// canary file outside both grants.
fn probe_root() -> Result<Root> {
    let root = Root::with_handlers(
        r#"
[handlers.probe]
component = "{escape-probe}"
events = ["task.*"]
max_attempts = 1
grants = [{ dir = "state/ro", mode = "ro" }, { dir = "state/rw", mode = "rw" }]
"#,
    )?;
    std::fs::create_dir_all(root.join("state/ro"))?;
    std::fs::create_dir_all(root.join("state/rw"))?;
    std::fs::write(root.join("state/ro/readable.txt"), "inside")?;
    std::fs::write(root.join("state/canary.txt"), "canary")?;
    std::fs::write(root.scratch().join("outside.txt"), "outside")?;
    Ok(root)
}

/// Runs the probe once per payload; returns each outcome (`Ok` summary or
/// the `Err` message), in order.
fn probe(root: &Root, payloads: &[&str]) -> Result<Vec<Result<String, String>>> {
    let ids: Vec<String> = payloads.iter().map(|p| root.emit("task.created", p)).collect::<Result<_>>()?;
    root.dispatch()?;
    let dead = root.dead_letters()?;
    ids.iter()
        .map(|id| {
            if let Some(r) = root.archived_record(id)? {
                return Ok(Ok(r["handlers"][0]["summary"].as_str().unwrap_or("").to_string()));
            }
            let d = dead.iter().find(|d| d["event"]["event_id"] == id.as_str()).expect("archived or dead-lettered");
            Ok(Err(d["history"][0]["failures"][0]["message"].as_str().unwrap_or("").to_string()))
        })
        .collect()
}

#[test]
fn grants_allow_what_they_say() -> Result<()> {
    let root = probe_root()?;
    let out = probe(
        &root,
        &[
            r#"{"op": "read", "path": "/state/ro/readable.txt"}"#,
            r#"{"op": "write", "path": "/state/rw/new.txt"}"#,
            r#"{"op": "list", "path": "/state/ro"}"#,
        ],
    )?;
    assert_eq!(out[0], Ok("escaped: inside".into()));
    assert_eq!(out[1], Ok("escaped: wrote".into()));
    assert_eq!(out[2], Ok("escaped: readable.txt".into()));
    assert_eq!(std::fs::read_to_string(root.join("state/rw/new.txt"))?, "escaped");
    Ok(())
}

#[test]
fn nothing_outside_the_grants_can_be_reached() -> Result<()> {
    let root = probe_root()?;
    let outside = root.scratch().join("outside.txt");
    // Symlinks planted inside the grants, pointing out of them.
    std::os::unix::fs::symlink(&outside, root.join("state/ro/abs-link"))?;
    std::os::unix::fs::symlink("../canary.txt", root.join("state/ro/rel-link"))?;
    std::os::unix::fs::symlink("../..", root.join("state/rw/dir-link"))?;
    std::os::unix::fs::symlink("sub/../../canary.txt", root.join("state/rw/dotdot-link"))?;
    std::fs::create_dir_all(root.join("state/rw/sub"))?;
    let attempts = [
        r#"{"op": "read", "path": "/state/ro/../canary.txt"}"#,
        r#"{"op": "read", "path": "/state/ro/../../cortex.toml"}"#,
        r#"{"op": "read", "path": "/etc/passwd"}"#,
        r#"{"op": "read", "path": "/state/canary.txt"}"#,
        r#"{"op": "read", "path": "/state/ro/abs-link"}"#,
        r#"{"op": "read", "path": "/state/ro/rel-link"}"#,
        r#"{"op": "list", "path": "/state/rw/dir-link/"}"#,
        r#"{"op": "read", "path": "/state/rw/dir-link/cortex.toml"}"#,
        r#"{"op": "read", "path": "/state/rw/dotdot-link"}"#,
        r#"{"op": "write", "path": "/state/rw/dotdot-link"}"#,
        r#"{"op": "write", "path": "/state/ro/readable.txt"}"#,
        r#"{"op": "write", "path": "/state/ro/new.txt"}"#,
        r#"{"op": "truncate", "path": "/state/ro/readable.txt"}"#,
        r#"{"op": "append", "path": "/state/ro/readable.txt"}"#,
        r#"{"op": "remove", "path": "/state/ro/readable.txt"}"#,
        r#"{"op": "rename", "path": "/state/ro/readable.txt", "to": "/state/rw/stolen.txt"}"#,
        r#"{"op": "hardlink", "path": "/state/ro/readable.txt", "to": "/state/rw/hard.txt"}"#,
        r#"{"op": "write", "path": "/state/rw/../canary.txt"}"#,
        r#"{"op": "env", "path": ""}"#,
        r#"{"op": "connect", "path": "127.0.0.1:9464"}"#,
        r#"{"op": "connect", "path": "[::1]:9464"}"#,
    ];
    let out = probe(&root, &attempts)?;
    for (payload, result) in attempts.iter().zip(&out) {
        match result {
            Err(msg) => assert!(msg.starts_with("denied:"), "{payload}: {msg}"),
            Ok(seen) => panic!("{payload} escaped the sandbox: {seen}"),
        }
    }
    assert_eq!(std::fs::read_to_string(root.join("state/canary.txt"))?, "canary");
    assert_eq!(std::fs::read_to_string(&outside)?, "outside");
    assert_eq!(std::fs::read_to_string(root.join("state/ro/readable.txt"))?, "inside");
    assert!(!root.join("state/rw/stolen.txt").exists() && !root.join("state/rw/hard.txt").exists());
    Ok(())
}

#[test]
fn output_floods_are_capped_or_refused_with_a_clear_error() -> Result<()> {
    let root = Root::with_handlers(
        r#"
[handlers.flood]
component = "{output-flood}"
events = ["task.*"]
max_attempts = 1
grants = [{ dir = "state/flood", mode = "rw" }]
limits = { output_bytes = 65536, memory_mb = 64, write_bytes = 4194304 }
"#,
    )?;
    let stdout = root.emit("task.created", r#"{"flood": "stdout"}"#)?;
    let file = root.emit("task.created", r#"{"flood": "file"}"#)?;
    let grow = root.emit("task.created", r#"{"flood": "grow"}"#)?;
    let summary = root.emit("task.created", r#"{"flood": "summary"}"#)?;
    let error = root.emit("task.created", r#"{"flood": "error"}"#)?;
    let emit = root.emit("task.created", r#"{"flood": "emit"}"#)?;
    let next = root.emit("task.assigned", "{}")?;
    root.dispatch()?;
    let dead = root.dead_letters()?;
    let failure = |id: &str| -> Value {
        dead.iter()
            .find(|d| d["event"]["event_id"] == id)
            .map(|d| d["history"][0]["failures"][0].clone())
            .unwrap_or(Value::Null)
    };
    let f = failure(&stdout);
    assert_eq!(f["kind"], "output-limit", "{f}");
    assert!(f["message"].as_str().unwrap().contains("65536 bytes"), "{f}");
    let rec = root.archived_record(&summary)?.expect("a huge summary is capped, not fatal");
    let text = rec["handlers"][0]["summary"].as_str().unwrap();
    assert!(text.len() < 5000 && text.ends_with("bytes cut)"), "{}", &text[text.len().saturating_sub(80)..]);
    let f = failure(&error);
    assert!(f["message"].as_str().unwrap().len() < 5000, "the error message was not capped");
    let f = failure(&emit);
    assert!(f["message"].as_str().unwrap().contains("over the 1048576 byte limit"), "{f}");
    // A file filling its grant: refused with ENOSPC past limits.write_bytes.
    let f = failure(&file);
    assert_eq!(f["kind"], "write-limit", "{f}");
    assert!(f["message"].as_str().unwrap().contains("4194304 bytes"), "{f}");
    assert!(f["message"].as_str().unwrap().contains("write of chunk 4 failed"), "{f}");
    assert_eq!(std::fs::metadata(root.join("state/flood/big.bin"))?.len(), 4 << 20, "exactly the budget was written");
    let f = failure(&grow);
    assert_eq!(f["kind"], "write-limit", "{f}");
    assert!(f["message"].as_str().unwrap().contains("set_len failed"), "{f}");
    assert_eq!(std::fs::metadata(root.join("state/flood/sparse.bin"))?.len(), 0, "the file was not extended");
    assert!(root.archived_record(&next)?.is_some(), "the next event did not run");
    assert!(
        std::fs::metadata(root.join(&format!("events/archive/{}", root.files("events/archive")[0])))?.len() < 1 << 20
    );
    Ok(())
}
