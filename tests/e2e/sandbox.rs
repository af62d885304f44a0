//! The sandbox holds: deadlines (in host calls too), memory limits (over
//! all of a component's memories), traps, grants, and caps on files written,
//! created and held open; the next event still runs after each.

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

#[test]
fn a_sleep_in_a_host_call_is_stopped_at_its_deadline_and_the_next_event_runs() -> Result<()> {
    let root = limited("sleep-poll", "limits = { deadline_ms = 500 }")?;
    root.emit("task.failed", "{}")?;
    let next = root.emit("task.created", "{}")?;
    let f = only_failure(&root)?;
    assert_eq!(f["kind"], "timeout", "{f}");
    assert!(f["message"].as_str().unwrap().contains("500 ms"), "{f}");
    let ms = f["duration_ms"].as_f64().unwrap();
    assert!(ms < 5000.0, "the 10 s sleep ran {ms} ms past a 500 ms deadline");
    assert!(root.archived_record(&next)?.is_some());
    Ok(())
}

#[test]
fn a_handler_opening_files_without_end_is_refused_at_its_cap_and_the_dispatcher_survives() -> Result<()> {
    let root = Root::with_handlers(
        r#"
[handlers.hog]
component = "{fd-hog}"
events = ["task.failed"]
max_attempts = 1
grants = [{ dir = "state/fds", mode = "rw" }]
limits = { max_open_files = 16 }
[handlers.next]
component = "{noop}"
events = ["task.created"]
"#,
    )?;
    let first = root.emit("task.failed", "{}")?;
    let second = root.emit("task.failed", "{}")?;
    let next = root.emit("task.created", "{}")?;
    root.dispatch()?;
    let dead = root.dead_letters()?;
    for id in [&first, &second] {
        let d = dead.iter().find(|d| d["event"]["event_id"] == id.as_str()).expect("dead-lettered");
        let f = &d["history"][0]["failures"][0];
        assert_eq!(f["kind"], "fd-limit", "{f}");
        let message = f["message"].as_str().unwrap();
        assert!(message.contains("16 files") && message.contains("limits.max_open_files"), "{f}");
        // The second invocation got the same 16: descriptors do not leak
        // from one invocation into the next.
        assert!(message.contains("open 16 failed"), "{f}");
    }
    assert!(root.archived_record(&next)?.is_some(), "the next event did not run");
    Ok(())
}

/// A root whose `sparse-write` handler may write `state/sparse`, 1 MiB and
/// 50 new entries per invocation.
fn sparse_root() -> Result<Root> {
    Root::with_handlers(
        r#"
[handlers.sparse]
component = "{sparse-write}"
events = ["task.created"]
max_attempts = 1
grants = [{ dir = "state/sparse", mode = "rw" }]
limits = { write_bytes = 1048576, max_new_files = 50 }
[handlers.next]
component = "{noop}"
events = ["task.assigned"]
"#,
    )
}

/// The first failure of each event, by id (`Null` if it did not fail).
fn failures(root: &Root, ids: &[String]) -> Result<Vec<Value>> {
    let dead = root.dead_letters()?;
    Ok(ids
        .iter()
        .map(|id| {
            dead.iter()
                .find(|d| d["event"]["event_id"] == id.as_str())
                .map_or(Value::Null, |d| d["history"][0]["failures"][0].clone())
        })
        .collect())
}

#[test]
fn a_write_far_past_the_end_of_a_file_is_charged_for_the_gap() -> Result<()> {
    let root = sparse_root()?;
    let ids = vec![root.emit("task.created", r#"{"op": "pwrite"}"#)?, root.emit("task.created", r#"{"op": "seek"}"#)?];
    let next = root.emit("task.assigned", "{}")?;
    root.dispatch()?;
    for (op, f) in ["pwrite", "seek"].iter().zip(failures(&root, &ids)?) {
        assert_eq!(f["kind"], "write-limit", "{op}: {f}");
        let message = f["message"].as_str().unwrap();
        assert!(message.contains("1048576 bytes") && message.contains("at 2^40 failed"), "{op}: {f}");
    }
    let far = std::fs::metadata(root.join("state/sparse/far.bin"))?;
    assert_eq!(far.len(), 0, "the file was extended to {} bytes", far.len());
    assert!(root.archived_record(&next)?.is_some(), "the next event did not run");
    Ok(())
}

#[test]
fn creating_files_and_directories_is_capped_per_invocation() -> Result<()> {
    let root = sparse_root()?;
    let ids = vec![root.emit("task.created", r#"{"op": "files"}"#)?, root.emit("task.created", r#"{"op": "dirs"}"#)?];
    root.dispatch()?;
    let f = failures(&root, &ids)?;
    for (f, what) in f.iter().zip(["creating file 50 failed", "creating directory 50 failed"]) {
        assert_eq!(f["kind"], "write-limit", "{f}");
        let message = f["message"].as_str().unwrap();
        assert!(message.contains("50 files, directories and links") && message.contains(what), "{f}");
    }
    let names = root.files("state/sparse");
    assert_eq!(names.iter().filter(|n| n.starts_with('f')).count(), 50, "files made: {}", names.len());
    assert_eq!(names.iter().filter(|n| n.starts_with('d')).count(), 50, "entries made: {}", names.len());
    Ok(())
}

/// A component fitting the `handler` world whose `handle` grows each of
/// `hogs` memories (one per core instance) by `pages` 64 KiB pages.
fn memory_hogs(hogs: usize, pages: u32) -> Result<Vec<u8>> {
    let instances: String = (0..hogs).map(|i| format!("(core instance $h{i} (instantiate $Hog))\n")).collect();
    let imports: String =
        (0..hogs).map(|i| format!("(import \"h{i}\" \"grow\" (func $g{i} (param i32) (result i32)))\n")).collect();
    let grows: String = (0..hogs).map(|i| format!("(drop (call $g{i} (i32.const {pages})))\n")).collect();
    let with: String = (0..hogs).map(|i| format!("(with \"h{i}\" (instance $h{i}))")).collect();
    let text = format!(
        r#"(component
  (core module $Hog
    (memory (export "mem") 1)
    (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))
  {instances}
  (core module $Main
    {imports}
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 1024))
    ;; info {{ name: "multi-memory", version: "1.0.0", events: ["*"] }} at 48
    (data (i32.const 0) "multi-memory")
    (data (i32.const 16) "1.0.0")
    (data (i32.const 32) "*")
    (data (i32.const 40) "\20\00\00\00\01\00\00\00")
    (data (i32.const 48) "\00\00\00\00\0c\00\00\00\10\00\00\00\05\00\00\00\28\00\00\00\01\00\00\00")
    ;; ok(outcome {{ summary: "grew" }}) at 88
    (data (i32.const 80) "grew")
    (data (i32.const 88) "\00\00\00\00\50\00\00\00\04\00\00\00")
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $bump) (i32.sub (local.get 2) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get 2))))
      (global.set $bump (i32.add (local.get $p) (local.get 3)))
      (local.get $p))
    (func (export "describe") (result i32) (i32.const 48))
    (func (export "handle") (param i32) (result i32)
      {grows}
      (i32.const 88)))
  (core instance $main (instantiate $Main {with}))
  (type $priority (enum "critical" "high" "medium" "low"))
  (export $priority-e "priority" (type $priority))
  (type $event (record
    (field "event-id" string) (field "event-type" string) (field "timestamp" string)
    (field "source" string) (field "correlation-id" (option string)) (field "master" (option string))
    (field "priority" $priority-e) (field "tags" (list string)) (field "metadata" string)
    (field "payload" string) (field "attempt" u32)))
  (export $event-e "event" (type $event))
  (type $outcome (record (field "summary" string)))
  (export $outcome-e "outcome" (type $outcome))
  (type $info (record (field "name" string) (field "version" string) (field "events" (list string))))
  (export $info-e "info" (type $info))
  (func $describe (result $info-e) (canon lift (core func $main "describe") (memory $main "memory")))
  (func $handle (param "event" $event-e) (result (result $outcome-e (error string)))
    (canon lift (core func $main "handle") (memory $main "memory") (realloc (func $main "realloc"))))
  (export "describe" (func $describe))
  (export "handle" (func $handle)))"#
    );
    Ok(wat::parse_str(&text)?)
}

/// A root with `memory_hogs` as handler `hogs` (limits.memory_mb = 40) and
/// `noop` after it.
fn hogs_root(component: &[u8]) -> Result<Root> {
    let root = limited("noop", "limits = { memory_mb = 40 }")?;
    let text = std::fs::read_to_string(root.join("cortex.toml"))?;
    std::fs::write(root.join("cortex.toml"), text.replacen(&cortex_tests::component("noop"), "hogs.wasm", 1))?;
    std::fs::write(root.join("hogs.wasm"), component)?;
    Ok(root)
}

#[test]
fn memory_mb_caps_all_of_a_components_memories_together() -> Result<()> {
    // Three memories grown to 16 MiB each (and a fourth of 64 KiB): every
    // one under the 40 MiB cap, together over it.
    let root = hogs_root(&memory_hogs(3, 256)?)?;
    root.emit("task.failed", "{}")?;
    let next = root.emit("task.created", "{}")?;
    let f = only_failure(&root)?;
    assert_eq!(f["kind"], "memory", "{f}");
    assert!(f["message"].as_str().unwrap().contains("40 MiB"), "{f}");
    assert!(root.archived_record(&next)?.is_some(), "the next event did not run");
    Ok(())
}

#[test]
fn a_component_with_more_memories_than_the_pool_allows_is_refused_at_load() -> Result<()> {
    let root = hogs_root(&memory_hogs(8, 0)?)?;
    root.emit("task.failed", "{}")?;
    let out = root.run(&["dispatch"])?;
    assert_ne!(out.code, 0, "dispatch loaded a component with 9 memories:\n{}", out.stdout);
    assert!(out.stderr.contains("9 Wasm linear memories"), "{}", out.stderr);
    Ok(())
}
