//! Handlers in Python (componentize-py) and JavaScript (componentize-js)
//! next to the Rust ones: through `cortex dispatch` and `cortex serve`, and
//! every handler's fixtures through `cortex handler test --expect`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use cortex_tests::{Root, event, handlers_dir, jsonl, wait_for};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// A worker event with token usage, at a fixed time.
fn worker_event(n: u32, tokens: u64, model: &str, master: &str) -> String {
    event("worker.completed")
        .source(&format!("worker-{n}"))
        .at("2025-12-01T12:00:00-06:00")
        .master(master)
        .correlation(&format!("task-{n}"))
        .payload(json!({"worker_id": format!("worker-{n}"), "task_id": format!("task-{n}"), "tokens_used": tokens, "model": model}))
        .line()
}

/// A counter of the Python cost handler's `cost` bucket (0 when absent).
fn cost(root: &Root, key: &str) -> Result<u64> {
    root.state_value("cost", key)?
        .map_or(Some(0), |v| v.as_u64())
        .with_context(|| format!("cost/{key} is not a counter"))
}

#[test]
fn python_prices_tokens_and_javascript_notifies_through_dispatch() -> Result<()> {
    let root = Root::with_extras()?;
    let out = root.ok(&["handlers", "check"])?;
    assert!(out.contains("all 9 handlers load"), "{out}");

    // 50 M tokens at $3 per million: $150, over the default $50 budget. The
    // cheap events are settled first, so the alert's spend includes them
    // (an event sees the counters committed before it, not those of events
    // settled in the same group commit).
    let mut lines = String::new();
    for n in 0..4 {
        lines += &worker_event(n, 1_000_000, "claude-haiku", "data-master");
    }
    let mut ids = root.batch(&lines)?;
    let summary = root.dispatch()?;
    assert_eq!(summary["dead_lettered"], 0, "{summary}");
    ids.extend(root.batch(&worker_event(9, 50_000_000, "claude-sonnet", "security-master"))?);
    let summary = root.dispatch()?;
    assert_eq!(summary["dead_lettered"], 0, "{summary}");

    // Python: counters by model, master and day in the cost bucket, in
    // micro-dollars, and a ledger.
    assert_eq!(cost(&root, "events")?, 5);
    assert_eq!(cost(&root, "tokens")?, 54_000_000);
    assert_eq!(cost(&root, "model/claude-haiku/cost_micro_usd")?, 4_000_000);
    assert_eq!(cost(&root, "model/claude-sonnet/cost_micro_usd")?, 150_000_000, "tokens_used priced at input");
    assert_eq!(cost(&root, "master/data-master/tokens")?, 4_000_000);
    assert_eq!(cost(&root, "day/2025-12-01/cost_micro_usd")?, 154_000_000);
    assert_eq!(root.state_value("cost", "alerted/2025-12-01")?, Some(json!(true)));
    let ledger = std::fs::read_to_string(root.join("state/cost/ledger/2025-12-01.jsonl"))?;
    let ledger_ids: Vec<String> = ledger
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).map(|v| v["event_id"].as_str().unwrap_or("").to_string()))
        .collect::<Result<_, _>>()?;
    assert_eq!(ledger_ids, ids, "one ledger line per event, in queue order");

    // Python's budget alert, handled by JavaScript into a notification
    // (a custom type), all on one correlation chain.
    let alerts = root.archive_records_of("system.health_alert")?;
    assert_eq!(alerts.len(), 1, "one alert for the day");
    let alert = &alerts[0];
    assert_eq!(alert["event"]["source"], "on-cost-tracking");
    assert_eq!(alert["event"]["payload"]["component"], "cost");
    assert_eq!(alert["event"]["correlation_id"], "task-9");
    assert_eq!(alert["handlers"][0]["name"], "on-alert-notify", "{alert}");
    assert!(alert["handlers"][0]["summary"].as_str().unwrap_or("").starts_with("high alert to #ops"), "{alert}");
    let notes = root.archive_records_of("notification.requested")?;
    assert_eq!(notes.len(), 1);
    let note = &notes[0]["event"];
    assert_eq!(note["correlation_id"], "task-9");
    assert_eq!(note["metadata"]["caused_by"]["handler"], "on-alert-notify");
    assert_eq!(note["payload"]["channel"], "#ops");
    assert_eq!(note["payload"]["severity"], "high");
    assert_eq!(note["payload"]["title"], "[HIGH] token spend $154.00 on 2025-12-01 is over the $50.00 daily budget");
    assert_eq!(note["payload"]["dedupe_key"], "cost:2025-12-01");
    assert_eq!(note["payload"]["alert_event_id"], alert["event"]["event_id"]);

    // A replay re-applies on purpose (HANDLERS.md, "State"): each replayed
    // event counts once more, and the day's alert is not raised again.
    root.ok(&["replay", "--type", "worker.completed"])?;
    root.dispatch()?;
    assert_eq!(cost(&root, "tokens")?, 2 * 54_000_000);
    assert_eq!(root.archive_records_of("system.health_alert")?.len(), 1);

    // Bad input is the handler's Err with the field, then a dead letter.
    root.emit("worker.completed", r#"{"worker_id": "w", "tokens_used": -5}"#)?;
    root.dispatch()?;
    let dead = root.dead_letters()?;
    assert_eq!(dead.len(), 1);
    let failure = dead[0].to_string();
    assert!(failure.contains("payload.tokens_used must be a non-negative integer"), "{failure}");
    Ok(())
}

#[test]
fn python_and_javascript_handlers_serve_and_restart_from_the_compiled_cache() -> Result<()> {
    let root = Root::with_extras()?;
    // Compile (or find in the shared cache) before the timed start.
    root.ok(&["handlers", "check"])?;
    let svc = root.serve()?;
    root.batch(&(worker_event(1, 2_000, "claude-sonnet", "m") + &worker_event(2, 3_000, "claude-sonnet", "m")))?;
    root.batch(
        &event("system.health_alert")
            .source("disk-monitor")
            .priority("critical")
            .payload(json!({"severity": "critical", "component": "disk", "message": "/var at 99%"}))
            .line(),
    )?;
    // 2 worker events, 2 task.completed from on-worker-complete, the alert
    // and its notification.
    wait_for(Duration::from_secs(30), || Ok(root.archived()?.len() == 6))?;
    let notes = root.archive_records_of("notification.requested")?;
    assert_eq!(notes[0]["event"]["payload"]["channel"], "#incidents");
    assert!(
        notes[0]["event"]["payload"]["text"].as_str().unwrap_or("").starts_with("@oncall [CRITICAL] disk: /var at 99%")
    );
    assert_eq!(cost(&root, "tokens")?, 5_000);
    assert_eq!(svc.stop()?, 0);

    // A second start loads every component from the cache: none compiled.
    let svc = root.serve()?;
    root.batch(&worker_event(3, 1_000, "claude-sonnet", "m"))?;
    wait_for(Duration::from_secs(30), || Ok(root.archived()?.len() == 8))?;
    let log = svc.log_text();
    assert!(!log.contains("handler compiled"), "second start compiled again:\n{log}");
    assert_eq!(svc.stop()?, 0);
    assert_eq!(cost(&root, "tokens")?, 6_000);
    Ok(())
}

/// Every handler folder's fixtures: `<case>.json` (or `.jsonl`) run with
/// `cortex handler test --handler NAME [--seed <case>.seed]` against
/// `<case>.expect.json`.
#[test]
fn every_handler_fixture_meets_its_expectation() -> Result<()> {
    let root = Root::with_extras()?;
    let mut cases = 0;
    let mut failures = Vec::new();
    let dirs = ["handlers-wasm", "handlers-wasm/py", "handlers-wasm/js"];
    for handler_dir in dirs.iter().flat_map(|d| std::fs::read_dir(repo().join(d)).into_iter().flatten().flatten()) {
        let name = handler_dir.file_name().to_string_lossy().into_owned();
        let fixtures = handler_dir.path().join("fixtures");
        if !name.starts_with("on-") || !fixtures.is_dir() {
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&fixtures)?.flatten().map(|e| e.path()).collect();
        files.sort();
        for expect in files.iter().filter(|p| p.to_string_lossy().ends_with(".expect.json")) {
            let case = expect.to_string_lossy().trim_end_matches(".expect.json").to_string();
            let event = [format!("{case}.json"), format!("{case}.jsonl")]
                .into_iter()
                .find(|p| Path::new(p).is_file())
                .with_context(|| format!("{} has no {case}.json or .jsonl", expect.display()))?;
            let component = handlers_dir().join(format!("{name}.wasm"));
            let mut args =
                vec!["handler", "test", component.to_str().unwrap_or(""), "--handler", &name, "--event", &event];
            let seed = format!("{case}.seed");
            if Path::new(&seed).is_dir() {
                args.extend(["--seed", &seed]);
            }
            let expect = expect.to_string_lossy().into_owned();
            args.extend(["--expect", &expect]);
            let out = root.run(&args)?;
            cases += 1;
            if out.code != 0 {
                failures.push(format!("{expect}:\n{}{}", out.stdout, out.stderr));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {cases} fixture cases failed:\n{}", failures.len(), failures.join("\n"));
    assert!(cases >= 17, "only {cases} fixture cases found");
    Ok(())
}

#[test]
fn handler_test_names_each_difference_and_fails() -> Result<()> {
    let root = Root::with_extras()?;
    let dir = repo().join("handlers-wasm/on-task-failure/fixtures");
    let mut expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("task-failed-permanent.expect.json"))?)?;
    expected["runs"][0]["outcome"] = json!("error");
    expected["runs"][0]["emitted"][0]["payload"]["task_id"] = json!("task_0000");
    let wrong = root.scratch().join("wrong.expect.json");
    std::fs::write(&wrong, expected.to_string())?;
    let component = handlers_dir().join("on-task-failure.wasm");
    let event = dir.join("task-failed-permanent.json");
    let args = |expect: &Path| {
        vec![
            "handler".to_string(),
            "test".into(),
            component.display().to_string(),
            "--handler".into(),
            "on-task-failure".into(),
            "--event".into(),
            event.display().to_string(),
            "--expect".into(),
            expect.display().to_string(),
        ]
    };
    let a = args(&wrong);
    let out = root.fails(&a.iter().map(String::as_str).collect::<Vec<_>>())?;
    assert!(out.stderr.contains("2 difference(s)"), "{}", out.stderr);
    assert!(out.stderr.contains(r#"runs[0].outcome: expected "error", got "ok""#), "{}", out.stderr);
    assert!(
        out.stderr.contains(r#"runs[0].emitted[0].payload.task_id: expected "task_0000", got "task_8850""#),
        "{}",
        out.stderr
    );
    // The report still shows what happened, for people.
    assert!(out.stdout.contains("emitted  system.health_alert (critical)"), "{}", out.stdout);
    // Its state goes to the failures bucket, not to files.
    assert!(!out.stdout.contains("wrote "), "{}", out.stdout);

    // Without --expect: a failing handler fails the command, with its error.
    let poison = handlers_dir().join("fail-poison.wasm");
    let poisoned = root.scratch().join("poison.json");
    std::fs::write(
        &poisoned,
        r#"{"event_id": "evt_20251201_120000_poison", "event_type": "task.failed", "timestamp": "2025-12-01T12:00:00Z", "source": "t", "payload": {"poison": true}}"#,
    )?;
    let out =
        root.fails(&["handler", "test", poison.to_str().unwrap_or(""), "--event", poisoned.to_str().unwrap_or("")])?;
    assert!(out.stdout.contains("outcome  FAILED (error): poison event evt_20251201_120000_poison"), "{}", out.stdout);
    assert!(out.stderr.contains("1 event(s) failed"), "{}", out.stderr);

    // Bad usage names what to fix.
    let out = root.fails(&[
        "handler",
        "test",
        poison.to_str().unwrap_or(""),
        "--event",
        event.to_str().unwrap_or(""),
        "--grant",
        "../etc:rw",
    ])?;
    assert!(out.stderr.contains("must be a relative directory without '..'"), "{}", out.stderr);
    let out = root.fails(&["handler", "test", "/nonexistent.wasm", "--event", event.to_str().unwrap_or("")])?;
    assert!(out.stderr.contains("/nonexistent.wasm"), "{}", out.stderr);
    Ok(())
}

/// `cortex handler new` in each language: the folder builds and passes its
/// own test unchanged (its Makefile runs `cortex handler test --expect`).
/// The toolchains are the ones `make handlers` installed; Rust builds share
/// one target directory so wit-bindgen compiles once.
#[test]
fn scaffolds_in_each_language_build_and_pass_their_own_test() -> Result<()> {
    let bin = cortex_tests::cortex_bin();
    let bin_dir = bin.parent().expect("binary dir").to_path_buf();
    let target = bin_dir.parent().expect("target dir").to_path_buf();
    let tmp = tempfile::tempdir()?;
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    for (lang, tool) in [
        ("rust", format!("CARGO_TARGET_DIR={}", target.join("scaffold-wasm").display())),
        ("python", format!("COMPONENTIZE_PY={}", target.join("tools/py/bin/componentize-py").display())),
        ("js", format!("COMPONENTIZE_JS={}", target.join("tools/js/node_modules/.bin/componentize-js").display())),
    ] {
        let name = format!("on-scaffold-{lang}");
        let dir = tmp.path().join(&name);
        let out = std::process::Command::new(&bin)
            .args(["handler", "new", &name, "--lang", lang, "--events", "worker.*", "--dir"])
            .arg(&dir)
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "handler new --lang {lang}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(
            stdout.contains(&format!("[handlers.{name}]")) && stdout.contains("events = [\"worker.*\"]"),
            "{stdout}"
        );
        for file in
            ["Makefile", "README.md", "wit/cortex-events.wit", "fixtures/example.json", "fixtures/example.expect.json"]
        {
            assert!(dir.join(file).is_file(), "{lang} scaffold has no {file}");
        }
        let out = std::process::Command::new("make")
            .arg("-C")
            .arg(&dir)
            .arg("test")
            .arg(&tool)
            .env("PATH", &path)
            .env("CORTEX_CACHE", cortex_tests::shared_cache())
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CORTEX_ROOT")
            .output()?;
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{lang} scaffold failed its own test:\n{log}");
        assert!(log.contains("fixtures/example.expect.json: as expected"), "{lang}:\n{log}");
        assert!(dir.join(format!("{name}.wasm")).is_file());

        // The scaffold is a real handler: enabled in a root, it runs under dispatch.
        let root = Root::new()?;
        let config = stdout[stdout.find("[handlers.").unwrap_or(0)..]
            .replace(&format!("handlers/{name}.wasm"), &dir.join(format!("{name}.wasm")).display().to_string());
        root.configure(&format!("\n{config}"))?;
        let mut root = root;
        root.cache = Some(cortex_tests::shared_cache());
        let id = root.emit("worker.completed", r#"{"worker_id": "w-1"}"#)?;
        root.dispatch()?;
        let record = root.archived_record(&id)?.context("not archived")?;
        let summary = record["handlers"][0]["summary"].as_str().unwrap_or("");
        assert_eq!(summary, format!("handled worker.completed {id} (1 payload fields)"), "{lang}: {record}");
    }
    Ok(())
}

/// The security chain with the shapes the built-in handlers really emit:
/// `on-security-alert` puts a scan's `findings` in the alert as a
/// per-severity object, and the JavaScript notifier counts it.
#[test]
fn security_alerts_reach_the_javascript_notifier_with_their_counts() -> Result<()> {
    let root = Root::with_extras()?;
    let batch = jsonl([
        event("security.scan_completed").source("trivy").correlation("scan-chain").payload(
            json!({"scan_id": "scan-42", "scanner": "trivy", "target": "api", "findings": {"critical": 1, "high": 2, "medium": 5}}),
        ),
        event("security.vulnerability_found")
            .source("trivy")
            .payload(json!({"id": "CVE-2025-1234", "severity": "high", "package": "openssl", "target": "api"})),
    ]);
    let ids = root.batch(&batch)?;
    let summary = root.dispatch()?;
    assert_eq!(summary["dead_lettered"], 0, "{summary}");

    let alerts = root.archive_records_of("system.health_alert")?;
    assert_eq!(alerts.len(), 2, "one alert per trigger: {alerts:?}");
    let scan_alert = alerts.iter().find(|a| a["event"]["payload"]["scan"].is_object()).context("no scan alert")?;
    assert_eq!(scan_alert["event"]["payload"]["scan"]["findings"]["high"], 2, "{scan_alert}");
    assert_eq!(scan_alert["event"]["correlation_id"], "scan-chain");

    let notes = root.archive_records_of("notification.requested")?;
    assert_eq!(notes.len(), 2, "{notes:?}");
    for n in &notes {
        let text = n["event"]["payload"].to_string();
        assert!(!text.contains("[object Object]"), "{text}");
    }
    let scan_note = notes
        .iter()
        .find(|n| n["event"]["payload"]["dedupe_key"] == "security-scan:scan-42")
        .context("no notification for the scan")?;
    assert_eq!(
        scan_note["event"]["payload"]["title"],
        "[CRITICAL] security scan scan-42 of api found 8 findings (1 critical, 2 high, 5 medium)"
    );
    assert_eq!(scan_note["event"]["correlation_id"], "scan-chain");
    let vuln_note = notes
        .iter()
        .find(|n| n["event"]["payload"]["dedupe_key"] == "security:CVE-2025-1234:openssl:api")
        .context("no notification for the vulnerability")?;
    assert_eq!(vuln_note["event"]["payload"]["title"], "[CRITICAL] CVE-2025-1234 (high) — openssl in api");
    // Without a correlation id of its own, the chain is traced to its trigger.
    assert_eq!(vuln_note["event"]["correlation_id"], ids[1].as_str());
    Ok(())
}

/// The JavaScript state example of HANDLERS.md, compiled as the fixture
/// `kv-counter-js`: it opens its granted bucket through the host's
/// `wasi:keyvalue`, increments a counter (a BigInt) and sets a value, and
/// both are committed with each event's settlement.
#[test]
fn a_javascript_handler_keeps_state_through_wasi_keyvalue() -> Result<()> {
    let root = Root::with_handlers(
        "[handlers.kv-counter-js]\ncomponent = \"{kv-counter-js}\"\nevents = [\"task.*\"]\nkeyvalue = [\"alerts\"]\n\
         [handlers.kv-counter-js.limits]\nmemory_mb = 128\n",
    )?;
    let lines: String = (0..3).map(|n| event("task.created").source(&format!("js-{n}")).line()).collect();
    let ids = root.batch(&lines)?;
    let summary = root.dispatch()?;
    assert_eq!((summary["handled"].as_u64(), summary["dead_lettered"].as_u64()), (Some(3), Some(0)), "{summary}");
    assert_eq!(root.state_value("alerts", "sent/task.created")?, Some(json!(3)));
    let last = root.state_value("alerts", "last")?.context("the handler set `last`")?;
    assert!(ids.iter().any(|id| last["eventId"] == json!(id)), "{last} names none of {ids:?}");
    let summaries: Vec<String> = root
        .archive_records_of("task.created")?
        .iter()
        .flat_map(|r| r["handlers"].as_array().cloned().unwrap_or_default())
        .filter_map(|h| h["summary"].as_str().map(str::to_string))
        .collect();
    assert!(summaries.iter().any(|s| s == "3 alerts of task.created"), "{summaries:?}");
    Ok(())
}
