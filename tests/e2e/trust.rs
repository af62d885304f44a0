//! The host boundary holds against hostile handlers and forged files: log
//! floods are capped before they reach the host's log, event loops are cut
//! at `dispatch.max_hops`, emits stay within the handler's config, replayed
//! and retried events are validated, and terminal escapes are escaped.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use cortex_tests::{Out, Root, component, event};
use serde_json::{Value, json};

/// Runs `cortex ARGS`, killing it if it has not finished within `limit`
/// (so that a test of a runaway fails instead of hanging).
fn run_within(root: &Root, args: &[&str], limit: Duration) -> Result<Out> {
    let dir = tempfile::tempdir()?;
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = root
        .command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > limit {
            child.kill()?;
            child.wait()?;
            let err = std::fs::read(&err_path)?;
            bail!(
                "cortex {args:?} did not finish within {limit:?}; its stderr ends:\n{}",
                String::from_utf8_lossy(&err[err.len().saturating_sub(2000)..])
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Out {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&std::fs::read(out_path)?).into_owned(),
        stderr: String::from_utf8_lossy(&std::fs::read(err_path)?).into_owned(),
    })
}

/// The raw terminal controls of the `ansi-inject` fixture (ESC, BEL, CR).
fn assert_no_terminal_controls(what: &str, text: &str) {
    let raw: Vec<char> = text.chars().filter(|c| matches!(c, '\x1b' | '\x07' | '\r' | '\u{9b}')).collect();
    assert!(raw.is_empty(), "{what} printed raw terminal controls {raw:?}:\n{text}");
}

#[test]
fn a_log_flood_is_capped_before_it_reaches_the_host_log_and_the_event_completes() -> Result<()> {
    let root = Root::with_handlers(
        "[handlers.flood]\ncomponent = \"{log-flood}\"\nevents = [\"task.created\"]\nmax_attempts = 1\nlimits = { deadline_ms = 120000 }\n",
    )?;
    // 20 000 lines of 4 KiB: 80 MiB if each line were forwarded.
    let id = root.emit("task.created", r#"{"lines": 20000, "bytes": 4096}"#)?;
    let out = run_within(&root, &["dispatch", "--json"], Duration::from_secs(120))?;
    assert_eq!(out.code, 0, "{}", &out.stderr[..out.stderr.len().min(2000)]);
    assert!(out.stderr.len() < 10 << 20, "the dispatcher's log grew to {} bytes", out.stderr.len());
    let summary: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(summary["handled"], 1, "{summary}");
    assert_eq!(
        root.archived_record(&id)?.expect("archived")["handlers"][0]["summary"],
        "logged 20000 lines of 4096 bytes"
    );
    assert!(
        out.stderr.contains("log lines (") && out.stderr.contains("were dropped: over the per-invocation cap"),
        "no line says what was dropped:\n{}",
        &out.stderr[out.stderr.len().saturating_sub(1000)..]
    );

    // The test report keeps as much, and says so too.
    let event = root.scratch().join("event.json");
    std::fs::write(
        &event,
        cortex_tests::event("task.created")
            .id("evt_20251201_120000_abc123")
            .at("2025-12-01T12:00:00Z")
            .payload(json!({"lines": 5000}))
            .to_string(),
    )?;
    let out =
        root.run(&["handler", "test", &component("log-flood"), "--event", event.to_str().unwrap_or(""), "--json"])?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout)?;
    let logs = report["runs"][0]["logs"].as_array().cloned().unwrap_or_default();
    assert!(logs.len() <= 1001, "{} log lines kept", logs.len());
    assert!(logs.last().and_then(|l| l["message"].as_str()).is_some_and(|m| m.contains("were dropped")));
    Ok(())
}

#[test]
fn an_event_loop_is_cut_at_max_hops_dead_lettered_and_reported_by_status() -> Result<()> {
    let root = Root::with_handlers("[handlers.looper]\ncomponent = \"{emit-loop}\"\nevents = [\"task.created\"]\n")?;
    let first = root.emit("task.created", r#"{"n": 1}"#)?;
    let out = run_within(&root, &["dispatch", "--json"], Duration::from_secs(60))?;
    assert_eq!(out.code, 3, "a run that dead-lettered exits 3: {}", out.stderr);

    // The producer's event (0 hops) and 16 generations of follow-ups ran;
    // the 17th generation was dead-lettered without running.
    let archived = root.archive_records_of("task.created")?;
    assert_eq!(archived.len(), 17, "default dispatch.max_hops is 16");
    assert!(archived.iter().any(|r| r["event"]["event_id"] == first.as_str()));
    let dead = root.dead_letters()?;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let reason = dead[0]["reason"].as_str().unwrap_or("");
    assert!(reason.starts_with("event loop: 17 hops"), "{reason}");
    assert!(reason.contains("dispatch.max_hops = 16") && reason.contains("handler looper"), "{reason}");
    assert_eq!(dead[0]["event"]["metadata"]["caused_by"]["hops"], 17);
    assert!(dead[0]["history"].as_array().is_none_or(Vec::is_empty), "the looping event never ran");
    assert!(root.files("events/queue").is_empty());

    let status = root.ok(&["status"])?;
    assert!(status.contains("event loops:   1 cut at dispatch.max_hops"), "{status}");
    assert!(status.contains("looper: task.created -> task.created"), "{status}");
    let json: Value = serde_json::from_str(&root.ok(&["status", "--json"])?)?;
    assert_eq!(json["loops"][0]["handler"], "looper");
    assert_eq!(json["loops"][0]["count"], 1);

    // A lower limit cuts sooner; a producer cannot pass a loop off as fresh
    // by forging the hop count.
    let root = Root::with_handlers("[handlers.looper]\ncomponent = \"{emit-loop}\"\nevents = [\"task.created\"]\n")?;
    let text = std::fs::read_to_string(root.join("cortex.toml"))?.replace("max_hops = 16", "max_hops = 3");
    std::fs::write(root.join("cortex.toml"), text)?;
    root.emit("task.created", "{}")?;
    run_within(&root, &["dispatch"], Duration::from_secs(60))?;
    assert_eq!(root.archive_records_of("task.created")?.len(), 4);
    assert_eq!(root.dead_letters()?.len(), 1);
    let forged = json!({"event_id": "evt_20251201_120000_f0f0f0", "event_type": "task.created",
        "timestamp": "2025-12-01T12:00:00Z", "source": "test",
        "metadata": {"caused_by": {"event_id": "evt_20251201_120000_abc123", "handler": "looper", "hops": -5}}});
    let out = root.run_with(&["emit", "--batch"], format!("{forged}\n").as_bytes())?;
    assert_ne!(out.code, 0, "a negative hop count was accepted");
    assert!(out.stderr.contains("metadata.caused_by.hops"), "{}", out.stderr);
    Ok(())
}

/// The dead-letter reason of the event whose payload is `payload`.
fn reason_for(dead: &[Value], payload: &Value) -> String {
    dead.iter()
        .find(|d| d["event"]["payload"] == *payload)
        .and_then(|d| d["reason"].as_str())
        .unwrap_or("(not dead-lettered)")
        .to_string()
}

#[test]
fn emits_beyond_the_handlers_config_are_refused_with_a_clear_error() -> Result<()> {
    let root = Root::with_handlers(
        r#"
[handlers.forge]
component = "{emit-forge}"
events = ["task.failed"]
max_attempts = 1
emits = ["task.*"]
[handlers.trusted]
component = "{emit-forge}"
events = ["worker.failed"]
max_attempts = 1
max_priority = "critical"
may_set_source = true
may_set_master = true
"#,
    )?;
    let refused = [
        (json!({"source": "security-scanner"}), "source \"security-scanner\" is not this handler's name"),
        (json!({"master": "security-master"}), "master \"security-master\" is not the triggering event's"),
        (json!({"priority": "critical"}), "priority critical is above this handler's max_priority high"),
        (json!({"type": "system.health_alert"}), "event type \"system.health_alert\" is not in handlers.forge.emits"),
    ];
    for (payload, _) in &refused {
        root.emit("task.failed", &payload.to_string())?;
    }
    let allowed = json!({"source": "forge", "priority": "high"});
    let allowed_id = root.emit("task.failed", &allowed.to_string())?;
    let trusted = json!({"source": "security-scanner", "master": "security-master", "priority": "critical",
        "type": "system.health_alert"});
    let trusted_id = root.emit("worker.failed", &trusted.to_string())?;
    root.dispatch()?;

    let dead = root.dead_letters()?;
    for (payload, why) in &refused {
        let reason = reason_for(&dead, payload);
        assert!(reason.contains("emit refused: ") && reason.contains(why), "{payload}: {reason}");
    }
    assert_eq!(dead.len(), refused.len(), "only the refusals failed: {dead:?}");

    let follow_up = |trigger: &str| -> Result<Value> {
        root.archived()?
            .into_iter()
            .map(|r| r["event"].clone())
            .find(|e| e["metadata"]["caused_by"]["event_id"] == trigger)
            .ok_or_else(|| anyhow::anyhow!("no follow-up of {trigger}"))
    };
    let own = follow_up(&allowed_id)?;
    assert_eq!((own["source"].as_str(), own["metadata"]["priority"].as_str()), (Some("forge"), Some("high")));
    let granted = follow_up(&trusted_id)?;
    assert_eq!(granted["source"], "security-scanner");
    assert_eq!(granted["metadata"]["master"], "security-master");
    assert_eq!(granted["metadata"]["priority"], "critical");
    Ok(())
}

#[test]
fn replay_refuses_forged_archive_lines_and_requeues_only_the_valid_ones() -> Result<()> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"task.*\"]\n")?;
    let task = |id: &str| {
        event("task.created")
            .id(id)
            .at("2025-12-01T12:00:00Z")
            .source("producer")
            .set("metadata", json!({"priority": "medium"}))
            .json()
    };
    let valid = task("evt_20251201_120000_aaaaaa");
    let mut traversal = task("../../escaped");
    traversal["metadata"]["priority"] = json!("critical");
    let mut bad_priority = task("evt_20251201_120000_bbbbbb");
    bad_priority["metadata"]["priority"] = json!("urgent");
    let mut forged_cause = task("evt_20251201_120000_cccccc");
    forged_cause["metadata"]["caused_by"] = json!({"event_id": "../x", "handler": "a b", "hops": "0"});
    let lines: String = [&valid, &traversal, &bad_priority, &forged_cause]
        .iter()
        .map(|e| json!({"event": e, "outcome": "handled", "handlers": []}).to_string() + "\n")
        .collect();
    std::fs::create_dir_all(root.join("events/archive"))?;
    std::fs::write(root.join("events/archive/2025-12-01.jsonl"), lines)?;

    let out = root.run(&["replay", "--date", "2025-12-01", "--json"])?;
    assert_ne!(out.code, 0, "refusing lines is a failure to report: {}", out.stdout);
    let report: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(report["requeued"], 1, "{report}");
    let refused: Vec<&str> = report["refused"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert_eq!(refused.len(), 2, "{report}");
    assert!(refused[0].contains("2025-12-01.jsonl:2: refused") && refused[0].contains("event_id"), "{refused:?}");
    assert!(refused[1].contains(":4: refused") && refused[1].contains("metadata.caused_by.event_id"), "{refused:?}");
    assert!(refused[1].contains("metadata.caused_by.handler") && refused[1].contains("metadata.caused_by.hops"));
    let skipped = report["skipped_lines"].to_string();
    assert!(skipped.contains(":3: skipped") && skipped.contains("urgent"), "{skipped}");
    let queued = root.files("events/queue");
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert!(queued[0].contains("evt_20251201_120000_aaaaaa"));
    assert!(
        !root.join("events/escaped").exists() && !root.join("escaped").exists(),
        "an event id wrote outside the queue"
    );
    let text = root.run(&["replay", "--date", "2025-12-01", "--dry-run"])?;
    assert!(text.stdout.contains("refused 2 selected lines that are not valid events"), "{}", text.stdout);

    // `dlq retry` validates a (forged) dead letter the same way.
    let letter = json!({"event": forged_cause, "reason": "x", "attempts": 1});
    std::fs::write(root.join("events/dead-letter/2-0000000000000001-forged-a1.json"), letter.to_string())?;
    let out = root.fails(&["dlq", "retry", "--all"])?;
    assert!(out.stderr.contains("metadata.caused_by"), "{}", out.stderr);
    assert_eq!(root.files("events/queue").len(), 1, "nothing more was queued");
    Ok(())
}

#[test]
fn terminal_escapes_from_a_handler_are_escaped_wherever_they_are_printed() -> Result<()> {
    let root = Root::with_handlers(
        "[handlers.inject]\ncomponent = \"{ansi-inject}\"\nevents = [\"task.failed\"]\nmax_attempts = 1\ngrants = [{ dir = \"state/inject\", mode = \"rw\" }]\n",
    )?;
    let id = root.emit("task.failed", r#"{"fail": true}"#)?;
    let out = root.run(&["dispatch"])?;
    assert_no_terminal_controls("dispatch's log", &out.stderr);
    assert!(
        out.stderr.contains(r"error \u{1b}[2J\u{1b}]0;pwned\u{7}\u{d}forged line\u{a}second line"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(r"log \u{1b}[2J") && out.stderr.contains(r"stdout \u{1b}[2J"), "{}", out.stderr);

    let show = root.ok(&["dlq", "show", &id])?;
    assert_no_terminal_controls("dlq show", &show);
    assert!(show.contains(r"error \u{1b}[2J"), "{show}");
    assert!(!show.contains("\nsecond line"), "a newline in the error forged a line:\n{show}");
    let list = root.ok(&["dlq", "list"])?;
    assert_no_terminal_controls("dlq list", &list);
    // JSON stays JSON: the text as written, escaped by JSON.
    let json: Value = serde_json::from_str(&root.ok(&["dlq", "show", &id, "--json"])?)?;
    assert!(json["reason"].as_str().is_some_and(|r| r.contains("\x1b[2J")));

    let event = root.scratch().join("event.json");
    for fail in [false, true] {
        std::fs::write(
            &event,
            json!({"event_id": "evt_20251201_120000_abc123", "event_type": "task.failed",
                   "timestamp": "2025-12-01T12:00:00Z", "source": "test", "payload": {"fail": fail}})
            .to_string(),
        )?;
        let args = [
            "handler",
            "test",
            &component("ansi-inject"),
            "--event",
            event.to_str().unwrap_or(""),
            "--grant",
            "state/inject:rw",
        ];
        let out = root.run(&args)?;
        assert_no_terminal_controls("handler test", &out.stdout);
        let said = if fail { r"FAILED (error): error \u{1b}[2J" } else { r"outcome  ok: summary \u{1b}[2J" };
        assert!(out.stdout.contains(said), "{}", out.stdout);
        assert!(out.stdout.contains(r"log      warn  log \u{1b}[2J"), "{}", out.stdout);
        assert!(out.stdout.contains(r"wrote    + state/inject/file\u{1b}[2J\u{7}"), "{}", out.stdout);
    }
    Ok(())
}
