//! The one-shot dispatcher: routing, follow-ups, retries, dead letters,
//! ordering, several dispatchers at once, and `handlers list|check`.

use anyhow::Result;
use cortex_tests::{Root, event, jsonl};
use serde_json::{Value, json};

#[test]
fn routes_by_pattern_to_every_matching_handler_and_archives_unhandled() -> Result<()> {
    let root = Root::with_handlers(
        r#"
[handlers.all]
component = "{noop}"
events = ["*"]
[handlers.workers]
component = "{noop}"
events = ["worker.*"]
"#,
    )?;
    let w = root.emit("worker.completed", "{}")?;
    let t = root.emit("task.created", "{}")?;
    let summary = root.dispatch()?;
    assert_eq!(summary["handled"], 2);
    assert_eq!(summary["handlers"]["all"]["invocations"], 2);
    assert_eq!(summary["handlers"]["workers"]["invocations"], 1);
    let rec = root.archived_record(&w)?.expect("worker event archived");
    let names: Vec<&str> = rec["handlers"].as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["all", "workers"]);
    assert_eq!(rec["outcome"], "handled");
    assert!(rec["handlers"][0]["component_sha256"].as_str().unwrap().len() == 64);
    assert_eq!(root.archived_record(&t)?.unwrap()["handlers"].as_array().unwrap().len(), 1);
    assert!(root.files("events/queue").is_empty() && root.files("events/claimed").is_empty());

    let root = Root::with_handlers("[handlers.workers]\ncomponent = \"{noop}\"\nevents = [\"worker.*\"]\n")?;
    let d = root.emit("daemon.started", "{}")?;
    let summary = root.dispatch()?;
    assert_eq!((summary["unhandled"].as_u64(), summary["handled"].as_u64()), (Some(1), Some(0)));
    assert_eq!(root.archived_record(&d)?.unwrap()["outcome"], "unhandled");
    assert!(root.dead_letters()?.is_empty(), "an unhandled event is not a failure");
    Ok(())
}

#[test]
fn follow_ups_are_queued_durably_keep_the_correlation_and_run_in_the_same_dispatch() -> Result<()> {
    let root = Root::with_handlers(
        r#"
[handlers.emitter]
component = "{emit-probe}"
events = ["worker.started"]
[handlers.sink]
component = "{noop}"
events = ["task.*"]
"#,
    )?;
    let out = root.ok(&["emit", "worker.started", "w", r#"{"count": 3}"#, "corr-7"])?;
    let trigger = out.trim().to_string();
    let other = root.emit("worker.started", r#"{"count": 1, "correlation_id": "explicit"}"#)?;
    let summary = root.dispatch()?;
    assert_eq!(summary["emitted"], 4);
    assert_eq!(summary["handlers"]["sink"]["invocations"], 4, "follow-ups handled in the same run");
    let tasks = root.archive_records_of("task.created")?;
    assert_eq!(tasks.len(), 4);
    let from_trigger: Vec<&Value> =
        tasks.iter().filter(|r| r["event"]["metadata"]["caused_by"]["event_id"] == trigger.as_str()).collect();
    assert_eq!(from_trigger.len(), 3);
    for r in &from_trigger {
        assert_eq!(r["event"]["correlation_id"], "corr-7");
        assert_eq!(r["event"]["source"], "emitter");
        assert_eq!(r["event"]["metadata"]["caused_by"]["handler"], "emitter");
    }
    let explicit = tasks.iter().find(|r| r["event"]["metadata"]["caused_by"]["event_id"] == other.as_str()).unwrap();
    assert_eq!(explicit["event"]["correlation_id"], "explicit");
    // Follow-ups are logged like any producer's events.
    assert_eq!(root.log("task")?.len(), 4);
    let rec = root.archived_record(&trigger)?.unwrap();
    assert_eq!(rec["handlers"][0]["emitted"].as_array().unwrap().len(), 3);
    Ok(())
}

#[test]
fn an_invalid_follow_up_is_an_err_for_the_handler_not_a_crash() -> Result<()> {
    let root = Root::with_handlers(
        "[handlers.emitter]\ncomponent = \"{emit-probe}\"\nevents = [\"worker.started\"]\nmax_attempts = 1\n",
    )?;
    let id = root.emit("worker.started", r#"{"type": "bogus.type"}"#)?;
    let summary = root.dispatch()?;
    assert_eq!(summary["dead_lettered"], 1);
    let dl = &root.dead_letters()?[0];
    assert_eq!(dl["event"]["event_id"], id);
    let failure = &dl["history"][0]["failures"][0];
    assert_eq!(failure["kind"], "error");
    assert!(
        failure["message"].as_str().unwrap().contains("emit refused")
            && failure["message"].as_str().unwrap().contains("bogus.type"),
        "{failure}"
    );
    Ok(())
}

#[test]
fn failures_are_retried_with_backoff_then_dead_lettered_with_forensics() -> Result<()> {
    let root = Root::with_handlers(
        r#"
[handlers.poison]
component = "{fail-poison}"
events = ["task.*"]
max_attempts = 3
backoff_ms = 20
"#,
    )?;
    let bad = root.emit("task.created", r#"{"poison": true}"#)?;
    let good: Vec<String> =
        (0..5).map(|i| root.emit("task.created", &format!("{{\"n\": {i}}}"))).collect::<Result<_>>()?;
    let start = std::time::Instant::now();
    let summary = root.dispatch()?;
    assert!(start.elapsed().as_millis() >= 60, "backoff of 20 ms then 40 ms was not waited for");
    assert_eq!(summary["handled"], 5);
    assert_eq!(summary["retried"], 2);
    assert_eq!(summary["dead_lettered"], 1);
    for id in &good {
        assert!(root.archived_record(id)?.is_some(), "{id} not archived");
    }
    let dl = root.dead_letters()?;
    assert_eq!(dl.len(), 1);
    let dl = &dl[0];
    assert_eq!(dl["event"]["event_id"], bad);
    assert_eq!(dl["attempts"], 3);
    let history = dl["history"].as_array().unwrap();
    assert_eq!(history.len(), 3);
    for (i, h) in history.iter().enumerate() {
        assert_eq!(h["attempt"], i + 1);
        let f = &h["failures"][0];
        assert_eq!(f["handler"], "poison");
        assert_eq!(f["kind"], "error");
        assert_eq!(f["component_sha256"].as_str().unwrap().len(), 64);
        assert!(f["message"].as_str().unwrap().contains(&format!("attempt {}", i + 1)), "{f}");
    }
    assert!(root.files("events/attempts").is_empty(), "delivery records left behind");
    assert!(root.files("events/queue").is_empty() && root.files("events/claimed").is_empty());
    Ok(())
}

#[test]
fn a_retry_runs_only_the_handlers_that_failed() -> Result<()> {
    let root = Root::with_handlers(
        r#"
[handlers.a-emitter]
component = "{emit-probe}"
events = ["worker.started"]
[handlers.b-poison]
component = "{fail-poison}"
events = ["worker.started"]
max_attempts = 2
backoff_ms = 1
"#,
    )?;
    root.emit("worker.started", r#"{"poison": true}"#)?;
    let summary = root.dispatch()?;
    assert_eq!(summary["handlers"]["a-emitter"]["invocations"], 1, "the successful handler ran again on retry");
    assert_eq!(summary["handlers"]["b-poison"]["invocations"], 2);
    assert_eq!(summary["emitted"], 1);
    let dl = &root.dead_letters()?[0];
    assert_eq!(dl["succeeded_handlers"], serde_json::json!(["a-emitter"]));
    Ok(())
}

#[test]
fn critical_events_go_first_and_fifo_holds_within_a_priority() -> Result<()> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    let input = jsonl((0..30).map(|i| {
        let p = match i % 3 {
            0 => "low",
            1 => "medium",
            _ => "critical",
        };
        event("task.created").source("s").priority(p).payload(json!({"n": i}))
    }));
    root.batch(&input)?;
    root.dispatch()?;
    let order: Vec<(String, u64)> = root
        .archived()?
        .iter()
        .map(|r| {
            (
                r["event"]["metadata"]["priority"].as_str().unwrap().to_string(),
                r["event"]["payload"]["n"].as_u64().unwrap(),
            )
        })
        .collect();
    let prios: Vec<&str> = order.iter().map(|(p, _)| p.as_str()).collect();
    let mut sorted = prios.clone();
    sorted.sort_by_key(|p| ["critical", "high", "medium", "low"].iter().position(|x| x == p));
    assert_eq!(prios, sorted, "not served by priority");
    for p in ["critical", "medium", "low"] {
        let ns: Vec<u64> = order.iter().filter(|(q, _)| q == p).map(|(_, n)| *n).collect();
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "{p} not FIFO: {ns:?}");
    }
    Ok(())
}

#[test]
fn three_dispatchers_at_once_handle_each_event_once() -> Result<()> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\nconcurrency = 2\n")?;
    let ids = root.batch(&jsonl((0..600).map(|i| event("task.created").source("s").payload(json!({"n": i})))))?;
    let children: Vec<_> =
        (0..3).map(|_| root.command().args(["dispatch", "--json"]).output()).collect::<std::io::Result<_>>()?;
    let mut handled = 0;
    for c in &children {
        assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
        let s: Value = serde_json::from_slice(&c.stdout)?;
        handled += s["handled"].as_u64().unwrap();
    }
    assert_eq!(handled, 600);
    let mut archived: Vec<String> =
        root.archived()?.iter().map(|r| r["event"]["event_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(archived.len(), 600, "an event was archived twice or not at all");
    archived.sort();
    let mut ids = ids;
    ids.sort();
    assert_eq!(archived, ids);
    Ok(())
}

#[test]
fn handlers_list_and_check_report_hash_grants_and_loading() -> Result<()> {
    let root = Root::with_handlers(
        r#"
[handlers.good]
component = "{noop}"
events = ["*"]
grants = [{ dir = "state/good", mode = "rw" }, { dir = "events/archive", mode = "ro" }]
[handlers.broken]
component = "handlers/broken.wasm"
events = ["task.*"]
"#,
    )?;
    std::fs::write(root.join("handlers/broken.wasm"), b"this is not wasm")?;
    let list: Value = serde_json::from_str(&root.ok(&["handlers", "list", "--json"])?)?;
    let good = list.as_array().unwrap().iter().find(|h| h["name"] == "good").unwrap();
    assert_eq!(good["loads"], true);
    assert_eq!(good["sha256"], cortex::sandbox::sha256_file(std::path::Path::new(&cortex_tests::component("noop")))?);
    assert_eq!(good["grants"], serde_json::json!(["state/good:rw", "events/archive:ro"]));
    assert_eq!(good["declared_events"], serde_json::json!(["*"]));
    let broken = list.as_array().unwrap().iter().find(|h| h["name"] == "broken").unwrap();
    assert_eq!(broken["loads"], false);
    assert!(broken["error"].as_str().unwrap().contains("not a WebAssembly file"), "{broken}");

    let out = root.fails(&["handlers", "check"])?;
    assert!(out.stderr.contains("1 of 2 handlers do not load"), "{}", out.stderr);
    let id = root.emit("task.created", "{}")?;
    let other = root.emit("worker.started", "{}")?;
    let out = root.fails(&["dispatch"])?;
    assert_eq!(out.code, 4, "a dispatch with handlers that do not load exits 4: {}", out.stderr);
    assert!(out.stderr.contains("handler broken") && out.stderr.contains("failed to load"), "{}", out.stderr);
    assert!(out.stdout.contains("1 events wait in the queue for handlers that do not load"), "{}", out.stdout);
    // The event the broken handler would take waits, unrun; the rest flow.
    assert!(root.files("events/queue").iter().any(|f| f.contains(&id)), "an event of a broken handler must wait");
    assert!(root.archived_record(&id)?.is_none() && root.files("events/dead-letter").is_empty());
    assert!(root.archived_record(&other)?.is_some(), "the good handler still serves");
    Ok(())
}

#[test]
fn a_handler_whose_describe_traps_leaves_the_others_serving_and_its_events_waiting() -> Result<()> {
    let root = Root::with_handlers(
        "[handlers.good]\ncomponent = \"{noop}\"\nevents = [\"worker.*\"]\n\
         [handlers.mute]\ncomponent = \"{describe-trap}\"\nevents = [\"task.*\"]\n",
    )?;
    let waiting = root.emit("task.created", "{}")?;
    let served = root.emit("worker.started", "{}")?;
    let out = root.run(&["dispatch", "--json"])?;
    assert_eq!(out.code, 4, "{}", out.stderr);
    let summary: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(summary["handled"], 1, "{summary}");
    assert_eq!(summary["deferred"], 1, "{summary}");
    assert!(summary["broken"]["mute"].as_str().unwrap_or("").contains("describe() failed"), "{summary}");
    assert!(root.archived_record(&served)?.is_some());
    let queued = root.files("events/queue");
    assert!(queued.len() == 1 && queued[0].contains(&waiting) && queued[0].contains("-a1-"), "{queued:?}");
    // Its attempt count is untouched: waiting is not failing.
    let out = root.run(&["dispatch"])?;
    assert_eq!(out.code, 4);
    assert!(root.files("events/queue")[0].contains("-a1-"));
    Ok(())
}

#[test]
fn compiled_components_are_cached_and_handler_completed_is_logged() -> Result<()> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    let id = root.emit("task.created", "{}")?;
    let out = root.run(&["dispatch"])?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("dispatched 1 events"), "{}", out.stdout);
    let line = out.stderr.lines().find(|l| l.contains("handler completed")).expect("a handler completed line");
    assert!(line.contains("handler=\"sink\"") || line.contains("handler=sink"), "{line}");
    assert!(line.contains(&id) && line.contains("duration_ms="), "{line}");
    let cache = root.files("cache");
    assert_eq!(cache.len(), 1, "{cache:?}");
    assert!(cache[0].ends_with(".cwasm"));
    // A second run uses the cache instead of compiling again.
    let modified = std::fs::metadata(root.join(&format!("cache/{}", cache[0])))?.modified()?;
    root.emit("task.created", "{}")?;
    root.dispatch()?;
    assert_eq!(std::fs::metadata(root.join(&format!("cache/{}", cache[0])))?.modified()?, modified);
    Ok(())
}

#[test]
fn a_component_that_does_not_declare_its_routed_events_is_refused_or_warned_about() -> Result<()> {
    // The heartbeat component declares worker.heartbeat; routing task.* to it
    // is the wrong component behind a table.
    let table = "[handlers.watch]\ncomponent = \"{on-worker-heartbeat}\"\nevents = [\"task.*\"]\n\
                 keyvalue = [\"heartbeats\"]\n";
    let root = Root::with_handlers(table)?;
    let out = root.fails(&["handlers", "check"])?;
    assert!(
        out.stdout.contains("cortex.toml routes task.* to it") && out.stdout.contains("declares only worker.heartbeat"),
        "{}",
        out.stdout
    );
    let id = root.emit("task.created", "{}")?;
    let out = root.run(&["dispatch"])?;
    assert_eq!(out.code, 4, "refused: its events wait: {}", out.stderr);
    assert!(root.archived_record(&id)?.is_none() && root.files("events/dead-letter").is_empty());
    // Told to warn, it loads (and says so) and the event runs.
    let config = std::fs::read_to_string(root.join("cortex.toml"))?
        .replace("describe_mismatch = \"refuse\"", "describe_mismatch = \"warn\"");
    std::fs::write(root.join("cortex.toml"), config)?;
    let out = root.run(&["dispatch"])?;
    assert!(out.stderr.contains("loading it anyway"), "{}", out.stderr);
    assert!(root.archived_record(&id)?.is_some());
    Ok(())
}

#[test]
fn a_first_compile_says_so_before_it_starts() -> Result<()> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    let out = root.run(&["handlers", "check"])?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("compiling handler sink") && out.stderr.contains("not in the compiled cache yet"),
        "{}",
        out.stderr
    );
    let out = root.run(&["handlers", "check"])?;
    assert!(!out.stderr.contains("compiling"), "the second load reads the cache: {}", out.stderr);
    Ok(())
}
