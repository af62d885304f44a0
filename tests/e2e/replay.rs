//! `cortex replay` and `cortex dlq`: selecting archived events by each
//! filter, dry runs that change nothing, requeue and direct runs with their
//! effects, replay counts, and a poison event fixed by a candidate
//! component, retried from the dead-letter queue and archived.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use cortex_tests::{Root, component, event, snapshot};
use serde_json::{Value, json};

/// A batch line with explicit envelope fields.
fn line(event_type: &str, source: &str, ts: &str, priority: &str, corr: Option<&str>) -> String {
    let e = event(event_type).source(source).at(ts).priority(priority);
    match corr {
        Some(c) => e.correlation(c).line(),
        None => e.line(),
    }
}

/// `replay --dry-run --json ARGS`: the report.
fn dry_run(root: &Root, args: &[&str]) -> Result<Value> {
    let mut all = vec!["replay", "--dry-run", "--json"];
    all.extend_from_slice(args);
    let out = root.ok(&all)?;
    serde_json::from_str(&out).with_context(|| format!("replay printed: {out}"))
}

/// The event ids a dry run selects.
fn selected(root: &Root, args: &[&str]) -> Result<BTreeSet<String>> {
    let report = dry_run(root, args)?;
    Ok(report["events"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap().to_string()).collect())
}

fn ids(of: &[&String]) -> BTreeSet<String> {
    of.iter().map(|s| s.to_string()).collect()
}

/// Archive records of one event, in archive order.
fn records_of(root: &Root, id: &str) -> Result<Vec<Value>> {
    Ok(root.archived()?.into_iter().filter(|r| r["event"]["event_id"] == id).collect())
}

fn count(root: &Root) -> Result<u64> {
    Ok(root.read_json("state/poison/count.json")?.as_u64().unwrap_or(0))
}

const COUNTER: &str = r#"
[handlers.poison]
component = "{fail-poison}"
events = ["task.*", "worker.*"]
max_attempts = 1
grants = [{ dir = "state/poison", mode = "rw" }]
[handlers.poison.settings]
count = true
"#;

#[test]
fn each_filter_selects_alone_and_they_combine_with_and() -> Result<()> {
    let root = Root::with_handlers(
        r#"
[handlers.sink]
component = "{noop}"
events = ["*"]
[handlers.workers]
component = "{noop}"
events = ["worker.*"]
"#,
    )?;
    let batch = [
        line("worker.completed", "w-1", "2025-12-01T10:00:00Z", "high", Some("c-1")),
        // Written on Dec 1 in its own zone; Dec 2 05:30 in UTC.
        line("worker.failed", "w-2", "2025-12-01T23:30:00-06:00", "low", Some("c-2")),
        line("task.created", "t-1", "2025-12-02T08:00:00Z", "high", Some("c-1")),
        line("task.failed", "w-1", "2025-12-03T12:00:00+02:00", "medium", None),
    ]
    .concat();
    let v = root.batch(&batch)?;
    let (a, b, c, d) = (&v[0], &v[1], &v[2], &v[3]);
    root.dispatch()?;
    assert_eq!(root.files("events/archive"), ["2025-12-01.jsonl", "2025-12-02.jsonl", "2025-12-03.jsonl"]);

    assert_eq!(selected(&root, &["--type", "*"])?, ids(&[a, b, c, d]));
    assert_eq!(selected(&root, &["--date", "2025-12-01"])?, ids(&[a, b]));
    assert_eq!(selected(&root, &["--since", "2025-12-02T00:00:00Z"])?, ids(&[b, c, d]));
    assert_eq!(selected(&root, &["--until", "2025-12-02T00:00:00Z"])?, ids(&[a]));
    assert_eq!(selected(&root, &["--type", "worker.*"])?, ids(&[a, b]));
    assert_eq!(selected(&root, &["--type", "task.failed"])?, ids(&[d]));
    assert_eq!(selected(&root, &["--source", "w-1"])?, ids(&[a, d]));
    assert_eq!(selected(&root, &["--priority", "high"])?, ids(&[a, c]));
    assert_eq!(selected(&root, &["--correlation-id", "c-1"])?, ids(&[a, c]));
    assert_eq!(selected(&root, &["--event-id", c])?, ids(&[c]));

    assert_eq!(selected(&root, &["--type", "worker.*", "--priority", "high"])?, ids(&[a]));
    assert_eq!(selected(&root, &["--source", "w-1", "--date", "2025-12-03"])?, ids(&[d]));
    assert_eq!(
        selected(&root, &["--since", "2025-12-01T12:00:00Z", "--until", "2025-12-02T06:00:00Z"])?,
        ids(&[b]),
        "since is inclusive, until exclusive, both in absolute time"
    );
    assert_eq!(
        selected(&root, &["--correlation-id", "c-1", "--type", "task.*", "--since", "2025-12-02T00:00:00Z"])?,
        ids(&[c])
    );
    assert!(selected(&root, &["--priority", "low", "--source", "w-1"])?.is_empty());
    let out = root.ok(&["replay", "--priority", "low", "--source", "w-1"])?;
    assert!(out.contains("no events match --source w-1 --priority low"), "{out}");
    assert!(root.files("events/queue").is_empty());
    assert_eq!(selected(&root, &["--event-id", a, "--type", "worker.*"])?, ids(&[a]));
    let out = root.fails(&["replay", "--dry-run", "--event-id", a, "--type", "task.*"])?;
    assert!(out.stderr.contains("does not match the other filters"), "{}", out.stderr);

    // A date reads that day's file only.
    let report = dry_run(&root, &["--date", "2025-12-02"])?;
    assert_eq!(report["files_read"], 1);
    assert_eq!(report["full_scan"], false);

    // The listing names each event's type, time and the handlers it would reach.
    let out = root.ok(&["replay", "--dry-run", "--type", "*"])?;
    let a_line = out.lines().find(|l| l.contains(a.as_str())).expect("event listed");
    assert!(a_line.contains("worker.completed") && a_line.contains("2025-12-01T10:00:00Z"), "{a_line}");
    assert!(a_line.contains("sink, workers"), "{a_line}");
    let c_line = out.lines().find(|l| l.contains(c.as_str())).unwrap();
    assert!(c_line.contains("-> sink") && !c_line.contains("workers"), "{c_line}");
    assert!(out.contains("would requeue 4 events") && out.contains("sink (4)") && out.contains("workers (2)"), "{out}");
    Ok(())
}

#[test]
fn by_id_reads_the_events_day_and_finds_the_rest_by_a_fallback_scan() -> Result<()> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    // Five old days, and one event of today.
    let old: String =
        (1..=5).map(|d| line("task.created", "s", &format!("2025-11-0{d}T12:00:00Z"), "medium", None)).collect();
    let old_ids = root.batch(&old)?;
    let now = root.emit("task.created", "{}")?;
    root.dispatch()?;
    assert_eq!(root.files("events/archive").len(), 6);

    let report = dry_run(&root, &["--event-id", &now])?;
    assert_eq!(report["selected"], 1);
    assert_eq!(report["events"][0]["event_id"], now.as_str());
    assert_eq!(report["files_read"], 1, "{report}");
    assert_eq!(report["full_scan"], false);

    // A batch event's id carries today's date, its timestamp an old one:
    // not in the day its id names, so the whole archive is read.
    let report = dry_run(&root, &["--event-id", &old_ids[2]])?;
    assert_eq!(report["events"][0]["timestamp"], "2025-11-03T12:00:00Z");
    assert_eq!(report["full_scan"], true);

    // A cleanup's compact file holds bare events; a torn or garbled line is
    // skipped with a warning.
    let compact = json!({
        "event_id": "evt_20251015_090000_cmpct1", "event_type": "task.failed",
        "timestamp": "2025-10-15T09:00:00Z", "source": "old", "metadata": {"priority": "high"}, "payload": {}
    });
    std::fs::write(
        root.join("events/archive/2025-10.compact.jsonl"),
        format!("{compact}\n{{\"event_id\": garbled\n{{\"event_id\": \"evt_2025"),
    )?;
    let out = root.run(&["replay", "--dry-run", "--json", "--event-id", "evt_20251015_090000_cmpct1"])?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(report["events"][0]["event_type"], "task.failed");
    assert_eq!(report["full_scan"], false, "the month's compact file comes before a full scan");
    let out = root.run(&["replay", "--dry-run", "--date", "2025-10-15"])?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("evt_20251015_090000_cmpct1"), "{}", out.stdout);
    assert!(out.stderr.contains("2025-10.compact.jsonl:2: skipped"), "{}", out.stderr);
    assert!(out.stderr.contains("partial last line"), "{}", out.stderr);

    // Requeued from the compact file, it is archived into its day again.
    root.ok(&["replay", "--event-id", "evt_20251015_090000_cmpct1"])?;
    root.dispatch()?;
    // (root.archived() would trip over the garbled compact lines.)
    let day = std::fs::read_to_string(root.join("events/archive/2025-10-15.jsonl"))?;
    let rec: Value = serde_json::from_str(day.trim())?;
    assert_eq!(rec["event"]["event_id"], "evt_20251015_090000_cmpct1");
    assert_eq!(rec["event"]["metadata"]["replay"]["count"], 1);
    Ok(())
}

#[test]
fn requeue_and_direct_produce_the_handler_effects_and_replays_are_counted() -> Result<()> {
    let root = Root::with_handlers(COUNTER)?;
    let ids: Vec<String> =
        (0..3).map(|i| root.emit("task.created", &format!("{{\"n\": {i}}}"))).collect::<Result<_>>()?;
    root.dispatch()?;
    assert_eq!(count(&root)?, 3);

    let out = root.ok(&["replay", "--event-id", &ids[1]])?;
    assert!(out.contains("requeued 1 events"), "{out}");
    assert_eq!(out.lines().count(), 1, "without --verbose, a one-line summary: {out}");
    let queued = root.files("events/queue");
    assert_eq!(queued.len(), 1);
    assert!(queued[0].contains(&ids[1]), "the copy keeps its event_id: {queued:?}");
    root.dispatch()?;
    assert_eq!(count(&root)?, 4);

    root.ok(&["replay", "--event-id", &ids[1]])?;
    root.dispatch()?;
    assert_eq!(count(&root)?, 5);
    let records = records_of(&root, &ids[1])?;
    assert_eq!(records.len(), 3, "the original and two replays");
    assert!(records[0]["event"]["metadata"].get("replay").is_none());
    assert_eq!(records[1]["event"]["metadata"]["replay"]["count"], 1);
    let replay = &records[2]["event"]["metadata"]["replay"];
    assert_eq!(replay["count"], 2, "{replay}");
    assert_eq!(replay["history"].as_array().unwrap().len(), 2);
    assert_eq!(replay["last_at"], replay["history"][1]);
    assert_eq!(records[2]["outcome"], "handled");
    // A scan selects each event once, in its latest copy: a third replay
    // would be the third.
    let report = dry_run(&root, &["--type", "task.*"])?;
    assert_eq!(report["selected"], 3);
    let again = report["events"].as_array().unwrap().iter().find(|e| e["event_id"] == ids[1].as_str()).unwrap();
    assert_eq!(again["replay_count"], 3, "{again}");

    // Direct: the handler runs now, once per event (not once per archived
    // copy), and nothing is queued or archived.
    let archived = root.archived()?.len();
    let out = root.ok(&["replay", "--mode", "direct", "--type", "task.*", "--verbose"])?;
    assert!(out.contains("3 invocations, 3 ok, 0 failed"), "{out}");
    assert_eq!(out.lines().filter(|l| l.contains("  poison  ok")).count(), 3, "{out}");
    assert_eq!(count(&root)?, 8);
    assert_eq!(root.archived()?.len(), archived);
    assert!(root.files("events/queue").is_empty());

    let report: Value =
        serde_json::from_str(&root.ok(&["replay", "--mode", "direct", "--event-id", &ids[0], "--json"])?)?;
    assert_eq!(report["succeeded"], 1);
    assert_eq!(report["events"][0]["runs"][0]["handler"], "poison");
    assert_eq!(report["events"][0]["runs"][0]["ok"], true);
    assert_eq!(count(&root)?, 9);
    Ok(())
}

#[test]
fn handler_limits_a_replay_and_direct_queues_the_follow_ups() -> Result<()> {
    let root = Root::with_handlers(&format!(
        "{COUNTER}\n[handlers.emitter]\ncomponent = \"{{emit-probe}}\"\nevents = [\"worker.started\"]\n"
    ))?;
    let w = root.emit("worker.started", r#"{"count": 2}"#)?;
    let s = root.dispatch()?;
    assert_eq!(s["emitted"], 2);
    assert_eq!(count(&root)?, 3, "the trigger and its two follow-ups");

    // Limited to one handler: the emitter does not run again.
    let report = dry_run(&root, &["--event-id", &w, "--handler", "poison"])?;
    assert_eq!(report["events"][0]["handlers"], json!(["poison"]));
    let report = dry_run(&root, &["--event-id", &w])?;
    assert_eq!(report["events"][0]["handlers"], json!(["emitter", "poison"]));
    root.ok(&["replay", "--event-id", &w, "--handler", "poison"])?;
    let s = root.dispatch()?;
    assert_eq!((s["emitted"].as_u64(), s["handlers"]["emitter"]["invocations"].as_u64()), (Some(0), None));
    assert_eq!(count(&root)?, 4);
    let last = records_of(&root, &w)?.pop().unwrap();
    assert_eq!(last["handlers"].as_array().unwrap().len(), 1);
    assert_eq!(last["handlers"][0]["name"], "poison");
    // --handler also narrows the selection to the events that reach it.
    assert_eq!(dry_run(&root, &["--type", "*", "--handler", "emitter"])?["selected"], 1);

    // Direct, every handler: the follow-ups go into the queue, the trigger
    // is not archived again.
    let archived = root.archived()?.len();
    let out = root.ok(&["replay", "--mode", "direct", "--event-id", &w, "--verbose"])?;
    assert!(out.contains("emitted: task.created, task.created"), "{out}");
    assert!(out.contains("2 follow-up events emitted, 2 queued"), "{out}");
    assert_eq!(count(&root)?, 5);
    assert_eq!(root.files("events/queue").len(), 2);
    assert_eq!(root.archived()?.len(), archived);
    root.dispatch()?;
    assert_eq!(count(&root)?, 7);
    assert_eq!(root.archived()?.len(), archived + 2);
    Ok(())
}

#[test]
fn dry_runs_leave_the_tree_byte_identical() -> Result<()> {
    let root = Root::with_handlers(COUNTER)?;
    for i in 0..3 {
        root.emit("task.created", &format!("{{\"n\": {i}}}"))?;
    }
    root.emit("task.created", r#"{"poison": true}"#)?;
    root.dispatch()?;
    assert_eq!(root.dead_letters()?.len(), 1);
    let before = snapshot(&root.path);

    let out = root.ok(&["replay", "--dry-run", "--type", "*"])?;
    assert!(out.contains("would requeue 3 events"), "{out}");
    let out = root.ok(&["replay", "--dry-run", "--mode", "direct", "--type", "*"])?;
    assert!(out.contains("would run directly 3 events"), "{out}");
    // The candidate counts in its state: it writes to a copy of the grant.
    let out = root.ok(&["replay", "--dry-run", "--type", "*", "--component", &component("fail-poison")])?;
    assert!(out.contains("3 ok, 0 failed") && out.contains("nothing was changed"), "{out}");
    root.ok(&["dlq", "list"])?;
    root.fails(&["dlq", "purge", "--older-than", "0"])?;

    assert_eq!(count(&root)?, 3);
    assert!(snapshot(&root.path) == before, "a dry run changed the coordination root");
    Ok(())
}

#[test]
fn a_poison_event_is_fixed_by_a_candidate_then_retried_and_archived() -> Result<()> {
    let root = Root::with_handlers(COUNTER)?;
    let poison = root.emit("task.created", r#"{"poison": true}"#)?;
    let s = root.dispatch()?;
    assert_eq!(s["dead_lettered"], 1);

    let shown = root.ok(&["dlq", "show", &poison])?;
    let bad_sha = cortex::sandbox::sha256_file(std::path::Path::new(&component("fail-poison")))?;
    for want in ["reason:", &format!("poison event {poison} (attempt 1)"), "attempt 1 at", "poison: error:", &bad_sha] {
        assert!(shown.contains(want), "dlq show lacks {want:?}:\n{shown}");
    }
    let raw: Value = serde_json::from_str(&root.ok(&["dlq", "show", &poison, "--json"])?)?;
    assert_eq!(raw["history"][0]["failures"][0]["component_sha256"], bad_sha.as_str());
    let listed = root.ok(&["dlq", "list", "--type", "task.*"])?;
    assert!(listed.contains(&poison) && listed.contains("1 of 1 dead letters"), "{listed}");

    // Try components on the dead letter without deploying them.
    let before = snapshot(&root.path);
    let out = root.fails(&[
        "replay",
        "--dead-letters",
        "--event-id",
        &poison,
        "--component",
        &component("fail-poison"),
        "--dry-run",
    ])?;
    assert!(out.stdout.contains("FAILED (error): poison event"), "{}", out.stdout);
    let out = root.run(&[
        "replay",
        "--dead-letters",
        "--event-id",
        &poison,
        "--component",
        &component("noop"),
        "--dry-run",
        "--json",
    ])?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!((report["succeeded"].as_u64(), report["failed"].as_u64()), (Some(1), Some(0)));
    assert_eq!(report["candidate"]["handler"], "poison");
    assert_eq!(report["events"][0]["runs"][0]["candidate"], true);
    assert!(snapshot(&root.path) == before, "trying a candidate changed the coordination root");

    // Deploy the fix, retry, dispatch: archived.
    let config = std::fs::read_to_string(root.join("cortex.toml"))?;
    std::fs::write(root.join("cortex.toml"), config.replace(&component("fail-poison"), &component("noop")))?;
    let out = root.ok(&["dlq", "retry", &poison])?;
    assert!(out.contains("put 1 dead letters back in the queue"), "{out}");
    assert!(root.dead_letters()?.is_empty());
    let queued = root.files("events/queue");
    assert_eq!(queued.len(), 1);
    assert!(queued[0].ends_with("-a1.json"), "a retry is a new entry, attempt 1: {queued:?}");
    let s = root.dispatch()?;
    assert_eq!(s["handled"], 1);
    let rec = root.archived_record(&poison)?.expect("the retried event is archived");
    assert_eq!(rec["outcome"], "handled");
    assert_eq!(rec["attempts"], 1);
    assert_eq!(rec["event"]["metadata"]["dlq_retry"]["count"], 1);
    let good_sha = cortex::sandbox::sha256_file(std::path::Path::new(&component("noop")))?;
    assert_eq!(rec["handlers"][0]["component_sha256"], good_sha.as_str());
    assert!(root.ok(&["dlq", "list"])?.contains("0 of 0 dead letters"));
    Ok(())
}

#[test]
fn dlq_lists_with_filters_retries_only_events_and_purges_with_yes() -> Result<()> {
    let root = Root::with_handlers(COUNTER)?;
    let t = root.emit("task.created", r#"{"poison": true}"#)?;
    let w = root.emit("worker.failed", r#"{"poison": true}"#)?;
    root.dispatch()?;
    std::fs::write(
        root.join("events/dead-letter/invalid-1-dropped.json"),
        serde_json::to_string_pretty(&json!({
            "raw": "{not json", "file": "events/queue/dropped.json",
            "dead_lettered_at": "2025-01-01T00:00:00Z", "reason": "invalid event dropped into the queue: malformed JSON"
        }))?,
    )?;

    let out = root.ok(&["dlq", "list"])?;
    assert!(out.contains(&t) && out.contains(&w) && out.contains("(not an event)"), "{out}");
    let out = root.ok(&["dlq", "list", "--type", "worker.*"])?;
    assert!(out.contains(&w) && !out.contains(&t) && out.contains("1 of 3"), "{out}");
    let listed: Value = serde_json::from_str(&root.ok(&["dlq", "list", "--json", "--priority", "medium"])?)?;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let shown = root.ok(&["dlq", "show", "invalid-1-dropped"])?;
    assert!(shown.contains("malformed JSON") && shown.contains("{not json"), "{shown}");

    let out = root.fails(&["dlq", "retry"])?;
    assert!(out.stderr.contains("an ID") && out.stderr.contains("--all"), "{}", out.stderr);
    let out = root.fails(&["dlq", "retry", "invalid-1-dropped"])?;
    assert!(out.stderr.contains("not an event") && out.stderr.contains("nothing was retried"), "{}", out.stderr);
    let out = root.run(&["dlq", "retry", "--all", "--type", "worker.*"])?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(root.files("events/queue").len(), 1);
    assert!(root.files("events/queue")[0].contains(&w));
    assert_eq!(root.dead_letters()?.len(), 2);
    let queued = root.read_json(&format!("events/queue/{}", root.files("events/queue")[0]))?;
    assert_eq!(queued["metadata"]["dlq_retry"]["count"], 1);

    // Purge asks first, saying what it would delete.
    let out = root.fails(&["dlq", "purge", &t])?;
    assert!(out.stdout.contains("would delete 1 dead letters") && out.stdout.contains(&t), "{}", out.stdout);
    assert!(out.stderr.contains("--yes"), "{}", out.stderr);
    assert_eq!(root.dead_letters()?.len(), 2);
    let out = root.fails(&["dlq", "purge", "--older-than", "30"])?;
    assert!(out.stdout.contains("would delete 1 dead letters"), "{}", out.stdout);
    assert!(out.stdout.contains("invalid-1-dropped") && !out.stdout.contains(&t), "{}", out.stdout);
    root.ok(&["dlq", "purge", "--older-than", "30", "--yes"])?;
    assert_eq!(root.files("events/dead-letter").len(), 1, "only the old record is gone");
    root.ok(&["dlq", "purge", &t, "--yes"])?;
    assert!(root.files("events/dead-letter").is_empty());
    Ok(())
}

#[test]
fn bad_arguments_get_a_clear_error_and_write_nothing() -> Result<()> {
    let root = Root::with_handlers(COUNTER)?;
    let id = root.emit("task.created", "{}")?;
    root.dispatch()?;
    let before = snapshot(&root.path);
    let cases: &[(&[&str], &[&str])] = &[
        (&["replay", "--date", "2025/12/01"], &["--date", "YYYY-MM-DD"]),
        (&["replay", "--date", "2025-13-01"], &["--date", "YYYY-MM-DD"]),
        (&["replay", "--event-id"], &["--event-id", "a value is required"]),
        (&["replay", "--event-id", "42"], &["--event-id", "evt_YYYYMMDD_HHMMSS"]),
        (&["replay", "--since", "yesterday"], &["--since", "RFC 3339"]),
        (&["replay", "--until", "2025-12-01"], &["--until", "RFC 3339"]),
        (&["replay"], &["nothing selected", "--event-id"]),
        (
            &["replay", "--event-id", "evt_20240101_000000_nosuch"],
            &["evt_20240101_000000_nosuch", "not in the archive"],
        ),
        (&["replay", "--type", "*", "--handler", "nope"], &["--handler nope", "no such handler", "poison"]),
        (&["replay", "--type", "*", "--mode", "requeue", "--component", "x.wasm"], &["--mode direct"]),
        (
            &["replay", "--type", "*", "--since", "2025-12-02T00:00:00Z", "--until", "2025-12-01T00:00:00Z"],
            &["is not before"],
        ),
        (&["replay", "--type", "*", "--priority", "urgent"], &["--priority", "critical, high, medium, low"]),
        (&["replay", "--dead-letters", "--type", "*"], &["cortex dlq retry", "--mode direct"]),
        (&["dlq", "show"], &["<ID>"]),
        (&["dlq", "show", &id], &["no dead letter", "dlq list"]),
        (&["dlq", "purge"], &["--older-than"]),
    ];
    for (args, wants) in cases {
        let out = root.fails(args)?;
        for want in *wants {
            assert!(out.stderr.contains(want), "cortex {args:?}: stderr lacks {want:?}:\n{}", out.stderr);
        }
    }
    assert!(snapshot(&root.path) == before, "a refused command changed the coordination root");
    Ok(())
}
