//! Handlers in other languages (issue: any language): the per-event cost of
//! Python and JavaScript components next to Rust ones, start-up with a cold
//! versus a warm compiled cache, and reloading a Python component.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use cortex::config::Config;
use cortex::event::NewEvent;
use cortex::sandbox::Sandbox;
use cortex_tests::{Root, component};
use serde_json::{Value, json};

use crate::dispatch::queue;
use crate::{Row, median, ms};

/// Builds the i-th event of a stream: (type, payload).
type EventFn<'a> = &'a dyn Fn(usize) -> (String, Value);

/// Equivalent no-op handlers (parse the payload, return a summary).
const NOOPS: [(&str, &str); 3] = [("Rust", "noop"), ("Python", "noop-py"), ("JavaScript", "noop-js")];

fn noop_config(fixture: &str) -> String {
    format!(
        "[handlers.h]\ncomponent = \"{{{fixture}}}\"\nevents = [\"*\"]\nconcurrency = 2\nlimits = {{ memory_mb = 128 }}\n"
    )
}

fn task_event(i: usize) -> (String, Value) {
    ("task.created".into(), json!({"task_id": format!("t-{i}"), "n": i}))
}

/// `cortex dispatch --json` on `root`: (events claimed per second, µs per claimed event).
fn dispatch_rate(root: &Root) -> Result<(f64, f64)> {
    let (s, _) = crate::dispatch::dispatch(root)?;
    ensure!(s["dead_lettered"] == 0 && s["failed"].as_u64().unwrap_or(0) == 0, "failures: {s}");
    let secs = s["elapsed_ms"].as_f64().unwrap_or(0.0) / 1000.0;
    let claimed = s["claimed"].as_f64().unwrap_or(0.0);
    Ok((claimed / secs, secs * 1e6 / claimed))
}

/// Appends a custom section, which changes the component's hash (a "new
/// version") without changing what it does.
fn with_custom_section(bytes: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let mut body = Vec::new();
    leb("cortex-bench".len(), &mut body);
    body.extend_from_slice(b"cortex-bench");
    body.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

pub fn run() -> Result<Vec<Row>> {
    let mut rows = Vec::new();

    // 1. In process: compile vs cached load, then instantiate + call.
    let mut rust_call = Duration::ZERO;
    for (lang, fixture) in NOOPS {
        let root = Root::with_handlers(&noop_config(fixture))?;
        let config = Config::load(&root.path)?;
        let cache = root.scratch().join("cache");
        let cold = {
            let sandbox = Sandbox::new(&root.path, config.validator(), false)?.with_cache_dir(cache.clone());
            let t = Instant::now();
            let l = sandbox.load("h", &config.handlers["h"])?;
            ensure!(!l.from_cache, "{fixture}: expected a cold cache");
            t.elapsed()
        };
        let sandbox = Sandbox::new(&root.path, config.validator(), false)?.with_cache_dir(cache);
        let t = Instant::now();
        let loaded = sandbox.load("h", &config.handlers["h"])?;
        let warm = t.elapsed();
        ensure!(loaded.from_cache, "{fixture}: expected a warm cache");
        let event = config.validator().validate(
            NewEvent { event_type: "task.created".into(), source: "bench".into(), ..Default::default() }.into_value(),
        )?;
        let mut times = Vec::new();
        for i in 0..1100 {
            let t = Instant::now();
            let inv = sandbox.invoke(&loaded, &event, 1);
            let took = t.elapsed();
            ensure!(inv.result.is_ok(), "{fixture} failed: {:?}", inv.result);
            if i >= 100 {
                times.push(took);
            }
        }
        let call = median(times);
        if lang == "Rust" {
            rust_call = call;
        }
        let size = std::fs::metadata(component(fixture))?.len() as f64 / 1e6;
        rows.push(Row {
            area: "languages",
            metric: format!(
                "{lang} no-op component ({size:.1} MB): load with a cold cache (compile) → warm cache (deserialize)"
            ),
            target: "compile once; later loads fast".into(),
            measured: format!("{} → {}", ms(cold), ms(warm)),
            ratio: format!("{:.0}× faster warm", cold.as_secs_f64() / warm.as_secs_f64()),
            met: None,
        });
        rows.push(Row {
            area: "languages",
            metric: format!("{lang} no-op: instantiate + call per event, in process (median of 1,000)"),
            target: "(reported)".into(),
            measured: format!("{:.1} µs", call.as_secs_f64() * 1e6),
            ratio: format!("{:.1}× Rust", call.as_secs_f64() / rust_call.as_secs_f64()),
            met: None,
        });
    }

    // 2. Through `cortex dispatch` (durable queue, claim, archive, ack).
    let n = 2000;
    let mut rust_us = 0.0;
    for (lang, fixture) in NOOPS {
        let mut root = Root::with_handlers(&noop_config(fixture))?;
        root.cache = Some(root.scratch().join("cache"));
        root.ok(&["handlers", "check"])?;
        queue(&root, n, task_event)?;
        let (rate, us) = dispatch_rate(&root)?;
        if lang == "Rust" {
            rust_us = us;
        }
        rows.push(Row {
            area: "languages",
            metric: format!("`cortex dispatch` of {n} events, {lang} no-op handler, 2 lanes, durable"),
            target: "(reported)".into(),
            measured: format!("{rate:.0} events/s, {us:.0} µs/event"),
            ratio: format!("{:.2}× Rust's per-event cost", us / rust_us),
            met: None,
        });
    }

    // 3. The real handlers, one lane each, stateful where they keep state.
    let worker = |i: usize| {
        (
            "worker.completed".to_string(),
            json!({"worker_id": format!("w-{}", i % 16), "task_id": format!("t-{i}"), "tokens_used": 1000 + i, "model": "claude-sonnet"}),
        )
    };
    let alert = |i: usize| {
        (
            "system.health_alert".to_string(),
            json!({"severity": "high", "component": "task", "task_id": format!("t-{i}"), "error": "timeout"}),
        )
    };
    let real: [(&str, &str, EventFn); 3] = [
        ("Rust on-worker-complete (a key-value record per event)", "on-worker-complete", &worker),
        ("Python on-cost-tracking (key-value counters + a ledger line per event)", "on-cost-tracking", &worker),
        ("JavaScript on-alert-notify (one emit per event)", "on-alert-notify", &alert),
    ];
    let n = 1000;
    for (what, name, f) in real {
        let root = Root::with_extras()?;
        let text = std::fs::read_to_string(root.join("cortex.toml"))?;
        // Keep only this handler: cut the other tables out of the config.
        let mut kept = String::new();
        let mut keep = true;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("[handlers.") {
                keep = rest.starts_with(&format!("{name}]")) || rest.starts_with(&format!("{name}."));
            }
            if keep {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        std::fs::write(root.join("cortex.toml"), kept)?;
        root.ok(&["handlers", "check"])?;
        queue(&root, n, f)?;
        let (rate, us) = dispatch_rate(&root)?;
        rows.push(Row {
            area: "languages",
            metric: format!("`cortex dispatch` of {n} events through {what}"),
            target: "(reported)".into(),
            measured: format!("{rate:.0} events/s, {us:.0} µs/event (follow-ups included)"),
            ratio: "—".into(),
            met: None,
        });
    }

    // 4. `cortex serve` start with the nine handlers (seven Rust, one
    // Python, one JavaScript): empty cache vs warm cache.
    let mut root = Root::with_extras()?;
    root.cache = Some(root.scratch().join("cache"));
    let t = Instant::now();
    let svc = root.serve_cold()?;
    let cold = t.elapsed();
    svc.stop()?;
    let mut warm = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let svc = root.serve()?;
        warm.push(t.elapsed());
        svc.stop()?;
    }
    let warm = median(warm);
    rows.push(Row {
        area: "languages",
        metric: "`cortex serve` start → /readyz 200, nine handlers (7 Rust, Python, JavaScript): cold cache → warm (median of 3)".into(),
        target: "compile once; warm start fast".into(),
        measured: format!("{} → {}", ms(cold), ms(warm)),
        ratio: format!("{:.0}× faster warm", cold.as_secs_f64() / warm.as_secs_f64()),
        met: None,
    });

    // 5. Reload of the Python component under `cortex serve`: to a new
    // version (compiled now) and back to the previous one (from the cache).
    let svc = root.serve()?;
    let target = root.join("handlers/on-cost-tracking.wasm");
    let original = std::fs::read(&target)?;
    let reload =
        |bytes: &[u8]| crate::service::reload_time(&root, "on-cost-tracking", &target, bytes, Duration::from_secs(120));
    let mut new_version = Vec::new();
    let mut back = Vec::new();
    for i in 0..2 {
        new_version.push(reload(&with_custom_section(&original, &format!("v{i}")))?);
        back.push(reload(&original)?);
    }
    svc.stop()?;
    let (new_version, back) = (median(new_version), median(back));
    rows.push(Row {
        area: "languages",
        metric:
            "reload of the Python component under `cortex serve`: to a new version (compiled) → back to a cached one"
                .into(),
        target: "a cached version reloads fast".into(),
        measured: format!("{} → {}", ms(new_version), ms(back)),
        ratio: format!("{:.0}× faster from the cache", new_version.as_secs_f64() / back.as_secs_f64()),
        met: None,
    });
    Ok(rows)
}
