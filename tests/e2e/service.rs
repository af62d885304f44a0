//! `cortex serve` as a child process: dispatch while running, hot reload
//! under a stream, broken components, SIGTERM mid-stream, and /metrics.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use cortex_tests::{Root, component, metric, parse_metrics, replace_atomically, wait_for};

fn archived_count(root: &Root) -> usize {
    root.archived().map(|a| a.len()).unwrap_or(0)
}

/// (id, version) lines the reload fixtures appended.
fn reload_log(root: &Root) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(root.join("state/reload/log.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            Ok((v["id"].as_str().unwrap_or("").to_string(), v["version"].as_str().unwrap_or("").to_string()))
        })
        .collect()
}

fn reload_root() -> Result<Root> {
    let root = Root::with_handlers(
        r#"
[handlers.reload]
component = "handlers/reload.wasm"
events = ["task.*"]
grants = [{ dir = "state/reload", mode = "rw" }]
"#,
    )?;
    std::fs::copy(component("reload-v1"), root.join("handlers/reload.wasm"))?;
    Ok(root)
}

#[test]
fn events_emitted_while_it_runs_are_handled_and_archived() -> Result<()> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    let svc = root.serve()?;
    let ids: Vec<String> =
        (0..10).map(|i| root.emit("task.created", &format!("{{\"n\": {i}}}"))).collect::<Result<_>>()?;
    wait_for(Duration::from_secs(20), || Ok(archived_count(&root) == 10))?;
    for id in &ids {
        assert!(root.archived_record(id)?.is_some());
    }
    assert!(root.files("events/queue").is_empty());
    let (status, body) = cortex_tests::http_get(&svc.addr, "/healthz")?;
    assert_eq!((status, body.trim()), (200, "ok"));
    assert_eq!(svc.stop()?, 0);
    Ok(())
}

#[test]
fn hot_reload_under_a_stream_switches_version_and_handles_each_event_once() -> Result<()> {
    let root = reload_root()?;
    let svc = root.serve()?;
    let mut ids = Vec::new();
    for round in 0..40 {
        if round == 15 {
            replace_atomically(&root.join("handlers/reload.wasm"), &std::fs::read(component("reload-v2"))?)?;
        }
        let batch: String = (0..10).map(|i| format!("{{\"event_type\": \"task.created\", \"source\": \"s\", \"payload\": {{\"r\": {round}, \"i\": {i}}}}}\n")).collect();
        ids.extend(root.batch(&batch)?);
        std::thread::sleep(Duration::from_millis(25));
    }
    wait_for(Duration::from_secs(30), || Ok(archived_count(&root) == ids.len()))?;
    let log = reload_log(&root)?;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (id, _) in &log {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    assert_eq!(log.len(), ids.len(), "every event handled exactly once");
    assert!(ids.iter().all(|id| seen.get(id.as_str()) == Some(&1)));
    let versions: Vec<&str> = log.iter().map(|(_, v)| v.as_str()).collect();
    let first_v2 = versions.iter().position(|v| *v == "v2").expect("v2 never served");
    assert!(first_v2 > 0, "v1 never served");
    assert!(versions[first_v2..].iter().all(|v| *v == "v2"), "v1 served after v2 took over");
    assert!(root.dead_letters()?.is_empty(), "an event failed during the reload");
    let samples = parse_metrics(&svc.metrics()?)?;
    assert!(metric(&samples, &["cortex_reloads_total", "result=\"ok\""]).unwrap_or(0.0) >= 1.0);
    let v2_sha = cortex::sandbox::sha256_file(std::path::Path::new(&component("reload-v2")))?;
    assert_eq!(metric(&samples, &["cortex_handler_active_version", &v2_sha]), Some(1.0));
    let listed: serde_json::Value = serde_json::from_str(&root.ok(&["handlers", "list", "--json"])?)?;
    assert_eq!(listed[0]["serving_sha256"], v2_sha);
    assert_eq!(svc.stop()?, 0);
    Ok(())
}

#[test]
fn a_handler_added_while_serving_starts_when_its_component_arrives() -> Result<()> {
    let root = reload_root()?;
    let svc = root.serve()?;
    // The table first: its component is not there yet, so the handler is
    // reported as not loading (a failed reload) while the others serve.
    root.configure("\n[handlers.late]\ncomponent = \"handlers/late.wasm\"\nevents = [\"learning.*\"]\n")?;
    wait_for(Duration::from_secs(10), || {
        Ok(metric(&parse_metrics(&svc.metrics()?)?, &["cortex_reloads_total", "result=\"failed\""]).unwrap_or(0.0)
            >= 1.0)
    })?;
    // Then the component, dropped into handlers/ as deploys do: that alone
    // brings the new config and the handler in, with no SIGHUP.
    replace_atomically(&root.join("handlers/late.wasm"), &std::fs::read(component("noop"))?)?;
    wait_for(Duration::from_secs(10), || Ok(!root.serving_sha("late")?.is_empty()))?;
    let id = root.emit("learning.pattern_detected", r#"{"pattern": "p"}"#)?;
    wait_for(Duration::from_secs(10), || Ok(root.archived_record(&id)?.is_some()))?;
    let record = root.archived_record(&id)?.unwrap_or_default();
    assert_eq!(record["handlers"][0]["name"], "late", "{record}");
    assert_eq!(svc.stop()?, 0);
    Ok(())
}

#[test]
fn a_broken_component_leaves_the_old_version_serving_until_a_good_one_arrives() -> Result<()> {
    let root = reload_root()?;
    let svc = root.serve()?;
    let target = root.join("handlers/reload.wasm");
    replace_atomically(&target, b"\0asm garbage that is not a component")?;
    wait_for(Duration::from_secs(10), || {
        Ok(metric(&parse_metrics(&svc.metrics()?)?, &["cortex_reloads_total", "result=\"failed\""]).unwrap_or(0.0)
            >= 1.0)
    })?;
    let a = root.emit("task.created", "{}")?;
    wait_for(Duration::from_secs(10), || Ok(archived_count(&root) == 1))?;
    assert_eq!(reload_log(&root)?, vec![(a, "v1".to_string())]);
    assert!(svc.log_text().contains("reload failed"), "the failure was not logged");

    replace_atomically(&target, &std::fs::read(component("reload-v2"))?)?;
    wait_for(Duration::from_secs(10), || {
        Ok(metric(&parse_metrics(&svc.metrics()?)?, &["cortex_reloads_total", "result=\"ok\""]).unwrap_or(0.0) >= 1.0)
    })?;
    let b = root.emit("task.created", "{}")?;
    wait_for(Duration::from_secs(10), || Ok(archived_count(&root) == 2))?;
    assert_eq!(reload_log(&root)?.last(), Some(&(b, "v2".to_string())));

    // An invalid cortex.toml is refused whole; the service keeps going.
    let config = std::fs::read_to_string(root.join("cortex.toml"))?;
    std::fs::write(root.join("cortex.toml"), format!("{config}\nbogus_key = 1\n"))?;
    svc.signal(1);
    wait_for(Duration::from_secs(10), || Ok(svc.log_text().contains("cortex.toml is invalid")))?;
    // Producers need a valid config too; the service kept the one it had.
    std::fs::write(root.join("cortex.toml"), config)?;
    let c = root.emit("task.created", "{}")?;
    wait_for(Duration::from_secs(10), || Ok(archived_count(&root) == 3))?;
    assert_eq!(reload_log(&root)?.last(), Some(&(c, "v2".to_string())));
    assert_eq!(svc.stop()?, 0);
    Ok(())
}

#[test]
fn sigterm_mid_stream_exits_cleanly_and_a_restart_handles_the_rest() -> Result<()> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    let svc = root.serve()?;
    let batch: String = (0..3000)
        .map(|i| format!("{{\"event_type\": \"task.created\", \"source\": \"s\", \"payload\": {{\"n\": {i}}}}}\n"))
        .collect();
    let ids = root.batch(&batch)?;
    wait_for(Duration::from_secs(20), || Ok(archived_count(&root) > 0))?;
    assert_eq!(svc.stop()?, 0, "SIGTERM must exit 0");
    assert!(root.files("events/claimed").is_empty(), "claims left behind by a graceful stop");
    let svc = root.serve()?;
    wait_for(Duration::from_secs(60), || Ok(archived_count(&root) >= ids.len()))?;
    let mut archived: Vec<String> =
        root.archived()?.iter().map(|r| r["event"]["event_id"].as_str().unwrap().to_string()).collect();
    archived.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(archived, expected, "lost or duplicated events across the restart");
    assert_eq!(svc.stop()?, 0);
    Ok(())
}

#[test]
fn metrics_parse_and_count_what_was_processed() -> Result<()> {
    let root = Root::with_handlers(
        r#"
[handlers.poison]
component = "{fail-poison}"
events = ["task.*"]
max_attempts = 2
backoff_ms = 10
"#,
    )?;
    let svc = root.serve()?;
    for i in 0..7 {
        root.emit("task.created", &format!("{{\"n\": {i}}}"))?;
    }
    root.emit("task.created", r#"{"poison": true}"#)?;
    root.emit("daemon.started", "{}")?;
    wait_for(
        Duration::from_secs(20),
        || Ok(archived_count(&root) == 8 && root.files("events/dead-letter").len() == 1),
    )?;
    // Counters move right after the batch they count is durable: wait for
    // the last one rather than racing it.
    wait_for(Duration::from_secs(5), || {
        Ok(metric(&parse_metrics(&svc.metrics()?)?, &["cortex_dead_lettered_total"]) == Some(1.0))
    })?;
    for (sample, value) in [
        (&["cortex_events_total", "task.created", "outcome=\"handled\""][..], 7.0),
        (&["cortex_events_total", "daemon.started", "outcome=\"unhandled\""][..], 1.0),
    ] {
        wait_for(Duration::from_secs(5), || Ok(metric(&parse_metrics(&svc.metrics()?)?, sample) == Some(value)))?;
    }
    let text = svc.metrics()?;
    let samples = parse_metrics(&text)?;
    let get = |parts: &[&str]| metric(&samples, parts).unwrap_or_else(|| panic!("no sample {parts:?} in\n{text}"));
    assert_eq!(get(&["cortex_events_total", "task.created", "outcome=\"handled\""]), 7.0);
    assert_eq!(get(&["cortex_events_total", "daemon.started", "outcome=\"unhandled\""]), 1.0);
    assert_eq!(get(&["cortex_events_total", "outcome=\"retried\""]), 1.0);
    assert_eq!(get(&["cortex_dead_lettered_total"]), 1.0);
    assert_eq!(get(&["cortex_retries_total"]), 1.0);
    assert_eq!(get(&["cortex_handler_invocations_total", "poison", "result=\"ok\""]), 7.0);
    assert_eq!(get(&["cortex_handler_invocations_total", "poison", "result=\"error\""]), 2.0);
    assert_eq!(get(&["cortex_handler_duration_seconds_count", "poison"]), 9.0);
    assert_eq!(get(&["cortex_queue_depth"]), 0.0);
    assert_eq!(get(&["cortex_dead_letters"]), 1.0);
    assert_eq!(get(&["cortex_handler_active_version", "handler=\"poison\""]), 1.0);
    assert_eq!(svc.stop()?, 0);
    Ok(())
}

#[test]
fn a_handler_that_does_not_load_is_reported_while_the_others_serve_and_runs_once_it_loads() -> Result<()> {
    let root = Root::with_handlers(
        "[handlers.good]\ncomponent = \"{noop}\"\nevents = [\"worker.*\"]\n\
         [handlers.late]\ncomponent = \"handlers/late.wasm\"\nevents = [\"task.*\"]\n",
    )?;
    std::fs::copy(component("describe-trap"), root.join("handlers/late.wasm"))?;
    let svc = root.serve()?;
    let waiting = root.emit("task.created", "{}")?;
    let served = root.emit("worker.started", "{}")?;
    wait_for(Duration::from_secs(20), || Ok(root.archived_record(&served)?.is_some()))?;
    assert!(root.archived_record(&waiting)?.is_none(), "the broken handler's event must wait");
    let (code, body) = cortex_tests::http_get(&svc.addr, "/readyz")?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("degraded") && body.contains("handler late does not load"), "{body}");
    let metrics = cortex_tests::http_get(&svc.addr, "/metrics")?.1;
    assert!(metrics.contains("cortex_handler_load_failed{handler=\"late\"} 1"), "{metrics}");
    let status = root.ok(&["status"])?;
    assert!(status.contains("NOT LOADING:   handler late"), "{status}");
    // A good component arrives: the waiting event runs, nothing was lost.
    replace_atomically(&root.join("handlers/late.wasm"), &std::fs::read(component("noop"))?)?;
    wait_for(Duration::from_secs(20), || Ok(root.archived_record(&waiting)?.is_some()))?;
    let (_, body) = cortex_tests::http_get(&svc.addr, "/readyz")?;
    assert_eq!(body.trim(), "ready");
    assert!(root.files("events/dead-letter").is_empty());
    assert_eq!(svc.stop()?, 0);
    Ok(())
}
