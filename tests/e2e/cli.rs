//! What a user meets at the command line, part two: every flag and
//! positional described in `--help`, `cortex handler` named as typed, a
//! hint towards `--handler NAME` in `handler test`, and log lines and errors
//! a person can read (no float noise, no `Some(..)`, one line per record,
//! bad input quoted in part).

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use cortex_tests::{Root, component, cortex_bin, event, jsonl, wait_for};
use serde_json::json;

/// `cortex ARGS --help`, which must succeed; its stdout.
fn help(args: &[&str]) -> Result<String> {
    let out = Command::new(cortex_bin()).args(args).arg("--help").env_remove("CORTEX_ROOT").output()?;
    anyhow::ensure!(out.status.success(), "cortex {args:?} --help exited {}", out.status);
    Ok(String::from_utf8(out.stdout)?)
}

/// The flags and positionals of a clap help text that have no description:
/// an item line (`  -x, --flag`, `  <ARG>`, `  [ARG]`) with nothing after
/// its name and no indented description on the next line.
fn undescribed(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut missing = Vec::new();
    let mut in_items = false;
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with(' ') {
            in_items = matches!(line.trim_end(), "Options:" | "Arguments:");
            continue;
        }
        let item = line.trim_start();
        if !in_items || !item.starts_with(['-', '<', '[']) {
            continue;
        }
        let described_here = item.split_once("  ").is_some_and(|(_, rest)| !rest.trim().is_empty());
        let described_below = lines.get(i + 1).is_some_and(|next| {
            let t = next.trim_start();
            !t.is_empty() && !t.starts_with(['-', '<', '[']) && next.len() - t.len() > line.len() - item.len()
        });
        if !described_here && !described_below {
            missing.push(item.to_string());
        }
    }
    missing
}

#[test]
fn every_flag_and_positional_of_every_command_is_described_in_help() -> Result<()> {
    let commands: &[&[&str]] = &[
        &[],
        &["init"],
        &["emit"],
        &["validate"],
        &["status"],
        &["dispatch"],
        &["serve"],
        &["handlers"],
        &["handlers", "list"],
        &["handlers", "check"],
        &["handlers", "new"],
        &["handlers", "test"],
        &["replay"],
        &["dlq"],
        &["dlq", "list"],
        &["dlq", "show"],
        &["dlq", "retry"],
        &["dlq", "purge"],
    ];
    let mut missing = Vec::new();
    for args in commands {
        let text = help(args)?;
        assert!(text.contains("Options:"), "cortex {args:?} --help has no options section:\n{text}");
        for item in undescribed(&text) {
            missing.push(format!("cortex {}: {item}", args.join(" ")));
        }
    }
    assert!(missing.is_empty(), "undescribed in --help:\n{}", missing.join("\n"));
    // The parser itself notices a bare item.
    assert_eq!(undescribed("Options:\n      --json\n  -h, --help  Print help\n"), ["--json"]);
    Ok(())
}

#[test]
fn cortex_handler_help_names_the_command_as_typed() -> Result<()> {
    let text = help(&["handler"])?;
    assert!(text.contains("Usage: cortex handler [OPTIONS] <COMMAND>"), "{text}");
    assert!(text.starts_with("Show the configured handlers"), "{text}");
    let text = help(&["handler", "test"])?;
    assert!(text.contains("Usage: cortex handler test "), "{text}");
    // The plural stays the documented name.
    assert!(help(&["handlers"])?.contains("Usage: cortex handlers [OPTIONS] <COMMAND>"));
    assert!(!help(&[])?.contains("  handler "), "the singular is not listed twice");
    Ok(())
}

fn heartbeat_event(root: &Root, source: &str) -> Result<std::path::PathBuf> {
    let path = root.scratch().join("heartbeat.json");
    let event = event("worker.heartbeat")
        .id("evt_20251201_120000_beat01")
        .at("2025-12-01T12:00:00Z")
        .source(source)
        .payload(json!({"worker_id": "w-1"}));
    std::fs::write(&path, event.to_string())?;
    Ok(path)
}

#[test]
fn handler_test_without_handler_points_to_the_roots_table_when_the_handler_fails() -> Result<()> {
    let root = Root::new()?;
    let event = heartbeat_event(&root, "worker-1")?;
    let event = event.to_str().unwrap_or_default();
    let wasm = component("on-worker-heartbeat");
    let out = root.run(&["handler", "test", &wasm, "--event", event])?;
    assert_eq!(out.code, 1, "without its grant the handler cannot write its state:\n{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(
            "hint: the root's cortex.toml has [handlers.on-worker-heartbeat]; run with --handler on-worker-heartbeat to use its grants and settings"
        ),
        "{}",
        out.stderr
    );
    // As the hint says: it passes, and no hint.
    let out = root.run(&["handler", "test", &wasm, "--event", event, "--handler", "on-worker-heartbeat"])?;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(!out.stderr.contains("hint:"), "{}", out.stderr);
    Ok(())
}

/// The digits after the decimal point of the number that follows `key`.
fn decimals_after(text: &str, key: &str) -> Vec<usize> {
    text.match_indices(key)
        .map(|(i, _)| {
            let number: String =
                text[i + key.len()..].chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
            number.split_once('.').map_or(0, |(_, d)| d.len())
        })
        .collect()
}

#[test]
fn durations_in_dispatch_logs_and_summaries_have_no_float_noise() -> Result<()> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\n")?;
    for n in 0..5 {
        root.emit("task.created", &format!("{{\"n\": {n}}}"))?;
    }
    let out = root.run(&["dispatch", "--json"])?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let logged = decimals_after(&out.stderr, "duration_ms=");
    assert_eq!(logged.len(), 5, "one completed line per event:\n{}", out.stderr);
    assert!(logged.iter().all(|d| *d <= 3), "duration_ms with more than 3 decimals:\n{}", out.stderr);
    let summary = decimals_after(&out.stdout, "\"elapsed_ms\": ");
    assert!(summary.len() == 1 && summary[0] <= 3, "{}", out.stdout);
    Ok(())
}

#[test]
fn serve_logs_its_address_plainly_and_what_a_reload_changed() -> Result<()> {
    let root = Root::with_handlers("[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"task.*\"]\n")?;
    let svc = root.serve()?;
    let log = svc.log_text();
    let start = log.lines().find(|l| l.contains("cortex serving")).unwrap_or_default();
    assert!(start.contains(&format!("listen={}", svc.addr)), "{log}");
    assert!(!log.contains("Some("), "{log}");
    assert!(decimals_after(&log, "ready_ms=").iter().all(|d| *d <= 3), "{log}");

    root.configure(&format!("\n[handlers.other]\ncomponent = \"{}\"\nevents = [\"learning.*\"]\n", component("noop")))?;
    wait_for(Duration::from_secs(15), || Ok(svc.log_text().contains("cortex.toml reloaded")))?;
    let log = svc.log_text();
    let line = log.lines().find(|l| l.contains("cortex.toml reloaded")).unwrap_or_default();
    assert!(line.contains("handlers added: other"), "{line}");
    let loaded = log.lines().find(|l| l.contains("handler reloaded") && l.contains("other")).unwrap_or_default();
    assert!(loaded.contains("was=(new)"), "{log}");

    // A changed table and a changed section are named too.
    let toml = std::fs::read_to_string(root.join("cortex.toml"))?;
    let toml = toml.replace("events = [\"task.*\"]", "events = [\"task.*\", \"worker.*\"]");
    std::fs::write(root.join("cortex.toml"), toml + "\n[archive]\nretention_days = 9\n")?;
    wait_for(Duration::from_secs(15), || Ok(svc.log_text().matches("cortex.toml reloaded").count() == 2))?;
    let log = svc.log_text();
    let line = log.lines().filter(|l| l.contains("cortex.toml reloaded")).nth(1).unwrap_or_default();
    assert!(line.contains("handlers changed: sink") && line.contains("archive"), "{line}");
    assert_eq!(svc.stop()?, 0);
    Ok(())
}

#[test]
fn errors_quote_at_most_a_few_hundred_bytes_of_a_bad_input() -> Result<()> {
    let root = Root::new()?;
    let huge = "x".repeat(100_000);
    // A payload that is not JSON.
    let out = root.fails(&["emit", "task.created", "producer", &format!("{{{huge}")])?;
    assert!(out.stderr.len() < 1024, "{} bytes of error", out.stderr.len());
    assert!(out.stderr.contains("PAYLOAD_JSON is not valid JSON") && out.stderr.contains("(100001 bytes)"));
    // An event whose type and id are 100 KB each.
    let event = json!({"event_id": huge, "event_type": huge, "timestamp": huge, "source": "p", "payload": {}});
    let out = root.run_with(&["validate"], event.to_string().as_bytes())?;
    assert_eq!(out.code, 1);
    assert!(out.stdout.len() < 2048, "{} bytes of problems:\n{:.2000}", out.stdout.len(), out.stdout);
    assert!(out.stdout.contains("event_id: \"xxx") && out.stdout.contains("(100000 bytes) does not match"));
    Ok(())
}

#[test]
fn control_characters_in_a_producers_source_do_not_split_log_lines() -> Result<()> {
    let root = Root::with_handlers(
        "[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\nmax_attempts = 1\n\
         [handlers.probe]\ncomponent = \"{emit-probe}\"\nevents = [\"worker.started\"]\nmax_attempts = 1\n",
    )?;
    let hostile = "a\nb\u{1b}[2J\rc";
    let batch = jsonl([
        event("task.created").source(hostile),
        event("worker.started").source(hostile).payload(json!({"worker_id": hostile})),
    ]);
    let out = root.run_with(&["emit", "--batch"], batch.as_bytes())?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = root.run(&["dispatch"])?;
    for line in out.stderr.lines() {
        // Every line a tracing record (it starts with its timestamp) or the
        // CLI's own `cortex:` message.
        assert!(
            line.starts_with(|c: char| c.is_ascii_digit()) || line.starts_with("cortex:"),
            "a log line was split: {line:?}\n{}",
            out.stderr
        );
        assert!(!line.contains(['\u{1b}', '\r']), "raw control character in {line:?}");
    }
    Ok(())
}
