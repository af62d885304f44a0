//! What a user meets at the command line: idempotent batches, emits the host
//! can read back, empty correlation ids, `validate` and `emit` inputs,
//! relative replay times, `dlq show` by the id `dlq list` prints, and the
//! exit code of a `dispatch` that dead-lettered events.

use anyhow::Result;
use cortex_tests::{Root, event};
use serde_json::{Value, json};

/// A payload object whose nesting (see `cortex::event::nesting`) is `depth`.
fn nested_payload(depth: usize) -> String {
    let inner = "[".repeat(depth - 1) + "1" + &"]".repeat(depth - 1);
    format!("{{\"a\": {inner}}}")
}

/// A task.created event with every envelope field a producer sets.
fn full_event(id: &str, n: u32) -> String {
    event("task.created").id(id).at("2025-12-01T12:00:00-06:00").source("producer").payload(json!({"n": n})).to_string()
}

#[test]
fn an_event_id_is_queued_once_in_a_batch_and_against_the_root() -> Result<()> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    let (a, b) = ("evt_20251201_120000_dupaaa", "evt_20251201_120000_dupbbb");
    let batch = [full_event(a, 1), full_event(b, 2), full_event(a, 3)].join("\n") + "\n";
    let out = root.run_with(&["emit", "--batch"], batch.as_bytes())?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), [a, b]);
    assert!(
        out.stderr.contains(&format!("line 3: skipped event {a}: already on line 1 of this batch")),
        "{}",
        out.stderr
    );
    assert_eq!(root.files("events/queue").len(), 2);

    // The producer sends the batch again: nothing is queued twice.
    let out = root.run_with(&["emit", "--batch"], batch.as_bytes())?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains(&format!("line 1: skipped event {a}: already queued")), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("line 2: skipped event {b}: already queued")), "{}", out.stderr);
    assert_eq!(root.files("events/queue").len(), 2);

    // Once handled and archived, still known; a new event in the batch goes through.
    root.dispatch()?;
    let again = format!("{}\n{}\n", full_event(b, 2), full_event("evt_20251201_120000_newccc", 4));
    let out = root.run_with(&["emit", "--batch"], again.as_bytes())?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "evt_20251201_120000_newccc");
    assert!(out.stderr.contains(&format!("line 1: skipped event {b}: already archived")), "{}", out.stderr);
    root.dispatch()?;
    let archived: Vec<Value> = root.archived()?;
    assert_eq!(archived.len(), 3, "each id archived once: {archived:?}");

    // An invalid line still rejects the whole batch.
    let bad = format!("{}\n{{\"event_type\": \"task.created\"}}\n", full_event("evt_20251201_120000_newddd", 5));
    let out = root.run_with(&["emit", "--batch"], bad.as_bytes())?;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("line 2: source: required field is missing"), "{}", out.stderr);
    assert!(root.files("events/queue").is_empty());
    Ok(())
}

#[test]
fn a_payload_nested_too_deeply_is_refused_at_emit_for_producers_and_handlers() -> Result<()> {
    let root = Root::with_handlers(
        "[handlers.emitter]\ncomponent = \"{emit-probe}\"\nevents = [\"worker.started\"]\nmax_attempts = 1\n",
    )?;
    // Deep enough that the queue's reader would refuse it with its envelope.
    let deep = nested_payload(127);
    let out = root.fails(&["emit", "task.created", "producer", &deep])?;
    assert!(out.stderr.contains("payload: nested 127 levels deep, over the limit of 64"), "{}", out.stderr);
    let line =
        format!("{{\"event_type\": \"task.created\", \"source\": \"p\", \"payload\": {}}}\n", nested_payload(100));
    let out = root.run_with(&["emit", "--batch"], line.as_bytes())?;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("line 1: payload: nested 100 levels deep, over the limit of 64"), "{}", out.stderr);
    assert!(root.files("events/queue").is_empty(), "nothing was queued");
    // At the limit it is accepted and handled like any other event.
    root.emit("task.created", &nested_payload(64))?;

    // A handler's emit is held to the same limit.
    let trigger = root.emit("worker.started", r#"{"nest": 100}"#)?;
    let s = root.dispatch()?;
    assert_eq!((s["dead_lettered"].as_u64(), s["emitted"].as_u64()), (Some(1), Some(0)), "{s}");
    let dead = root.dead_letters()?;
    assert_eq!(dead[0]["event"]["event_id"], trigger.as_str());
    let message = dead[0]["history"][0]["failures"][0]["message"].as_str().unwrap_or("");
    assert!(message.contains("payload: nested 101 levels deep, over the limit of 64"), "{}", dead[0]);
    // Nothing unreadable was left behind for the dlq commands to warn about.
    let out = root.run(&["dlq", "list"])?;
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    Ok(())
}

#[test]
fn an_empty_correlation_id_is_absent_and_follow_ups_fall_back_to_the_trigger() -> Result<()> {
    let root = Root::with_handlers(
        "[handlers.emitter]\ncomponent = \"{emit-probe}\"\nevents = [\"worker.started\"]\n[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"task.*\"]\n",
    )?;
    let id = root.ok(&["emit", "task.created", "producer", "{}", ""])?.trim().to_string();
    let logged = root.log("task")?;
    let line = logged.iter().find(|l| l["event_id"] == id.as_str()).expect("logged");
    assert!(line.get("correlation_id").is_none(), "{line}");

    // The trigger has none, and the handler passes "" for its follow-up.
    let trigger = root.ok(&["emit", "worker.started", "w", r#"{"correlation_id": ""}"#, ""])?.trim().to_string();
    root.dispatch()?;
    let follow_ups: Vec<Value> = root
        .archive_records_of("task.created")?
        .into_iter()
        .filter(|r| r["event"]["metadata"]["caused_by"]["event_id"] == trigger.as_str())
        .collect();
    assert_eq!(follow_ups.len(), 1);
    assert_eq!(follow_ups[0]["event"]["correlation_id"], trigger.as_str(), "{}", follow_ups[0]);
    Ok(())
}

#[test]
fn dispatch_exits_3_when_it_dead_letters_events() -> Result<()> {
    let root =
        Root::with_handlers("[handlers.poison]\ncomponent = \"{fail-poison}\"\nevents = [\"*\"]\nmax_attempts = 1\n")?;
    root.emit("task.created", r#"{"poison": true}"#)?;
    root.emit("task.created", "{}")?;
    let out = root.run(&["dispatch"])?;
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("1 dead-lettered"), "{}", out.stdout);
    assert!(out.stderr.contains("1 events were dead-lettered in this run"), "{}", out.stderr);
    // A run that dead-letters nothing succeeds, whatever the queue held before.
    root.emit("task.created", "{}")?;
    let out = root.run(&["dispatch"])?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let help = root.ok(&["dispatch", "--help"])?;
    assert!(help.contains("Exits 3 when events were dead-lettered"), "{help}");
    Ok(())
}

#[test]
fn validate_takes_an_argument_jsonl_with_line_numbers_and_a_byte_order_mark() -> Result<()> {
    let root = Root::new()?;
    let good = full_event("evt_20251201_120000_valid1", 1);
    // As the seed calls it: validate "$(cat e.json)".
    let out = root.ok(&["validate", &good])?;
    assert!(out.contains("valid: evt_20251201_120000_valid1 task.created"), "{out}");

    let bad = json!({"event_id": "evt_20251201_120000_valid2", "event_type": "task.created",
        "timestamp": "2025-12-01T12:00:00Z", "source": ""})
    .to_string();
    let file = root.scratch().join("events.jsonl");
    std::fs::write(&file, format!("{good}\n\n{bad}\n{good}\n"))?;
    let out = root.run(&["validate", file.to_str().unwrap_or_default()])?;
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("line 3: source: must not be empty"), "{}", out.stdout);
    assert!(out.stdout.contains("1 of 3 events are invalid"), "{}", out.stdout);

    std::fs::write(&file, format!("\u{feff}{good}\n{good}\n"))?;
    let out = root.ok(&["validate", file.to_str().unwrap_or_default()])?;
    assert!(out.contains("valid: 2 events"), "{out}");
    // A pretty-printed event with a BOM, on stdin.
    let pretty = format!("\u{feff}{}", serde_json::to_string_pretty(&serde_json::from_str::<Value>(&good)?)?);
    let out = root.run_with(&["validate"], pretty.as_bytes())?;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    // And a batch that starts with one.
    let batch = "\u{feff}{\"event_type\": \"task.created\", \"source\": \"s\"}\n";
    assert_eq!(root.batch(batch)?.len(), 1);
    Ok(())
}

#[test]
fn emit_reads_a_large_payload_from_a_file_or_stdin() -> Result<()> {
    let root = Root::new()?;
    // Over the 128 KiB the OS allows one argument.
    let blob = "x".repeat(200 * 1024);
    let file = root.scratch().join("payload.json");
    std::fs::write(&file, format!("\u{feff}{{\"blob\": \"{blob}\"}}"))?;
    let id = root.ok(&["emit", "task.created", "producer", &format!("@{}", file.display())])?.trim().to_string();
    let out = root.run_with(&["emit", "task.created", "producer", "-"], br#"{"from": "stdin"}"#)?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let logged = root.log("task")?;
    assert_eq!(logged[0]["event_id"], id.as_str());
    assert_eq!(logged[0]["payload"]["blob"].as_str().map(str::len), Some(blob.len()));
    assert_eq!(logged[1]["payload"]["from"], "stdin");

    let out = root.fails(&["emit", "task.created", "producer", "@/nonexistent/payload.json"])?;
    assert!(out.stderr.contains("failed to read the payload file /nonexistent/payload.json"), "{}", out.stderr);
    let help = root.ok(&["emit", "--help"])?;
    assert!(help.contains("@FILE") && help.contains("128 KiB"), "{help}");
    Ok(())
}

#[test]
fn replay_and_dlq_take_times_relative_to_now() -> Result<()> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    let id = root.emit("task.created", "{}")?;
    root.dispatch()?;
    let out = root.ok(&["replay", "--dry-run", "-v", "--since", "10m"])?;
    assert!(out.contains(&id) && out.contains("would requeue 1 events"), "{out}");
    let out = root.ok(&["replay", "--dry-run", "--until", "2h"])?;
    assert!(!out.contains(&id), "{out}");
    root.ok(&["dlq", "list", "--since", "3d"])?;
    let out = root.run(&["replay", "--since", "10 minutes"])?;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("30s, 10m, 2h, 3d or 1w"), "{}", out.stderr);
    Ok(())
}

#[test]
fn dlq_show_accepts_the_id_dlq_list_prints() -> Result<()> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    // A queue entry that is not an event (written by hand, or by an old version).
    let id = "evt_20251201_120000_broken";
    std::fs::write(root.join(&format!("events/queue/2-0000000000000001-{id}-a1.json")), b"{\"event_id\": ")?;
    root.dispatch()?;
    let listed = root.ok(&["dlq", "list"])?;
    let first = listed.lines().next().unwrap_or_default();
    assert!(first.starts_with(&format!("{id}  (not an event")), "{listed}");
    assert!(first.ends_with('…'), "a long reason is marked as cut: {first}");
    let shown = root.ok(&["dlq", "show", id])?;
    assert!(shown.contains("invalid queued event"), "{shown}");
    root.ok(&["dlq", "purge", id, "--yes"])?;

    // A dead letter nested deeper than the reader goes is listed, not warned about.
    let deep = format!("{{\"event\": {}}}", nested_payload(130));
    std::fs::write(root.join("events/dead-letter/2-0000000000000002-evt_20251201_120000_deeper.json"), deep)?;
    let out = root.run(&["dlq", "list"])?;
    assert_eq!(out.code, 0);
    assert!(!out.stderr.contains("skipped"), "{}", out.stderr);
    assert!(out.stdout.contains("evt_20251201_120000_deeper  (not an event"), "{}", out.stdout);
    assert!(root.ok(&["dlq", "show", "evt_20251201_120000_deeper"])?.contains("nested too deeply"));
    Ok(())
}
