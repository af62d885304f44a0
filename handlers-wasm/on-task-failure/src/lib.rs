//! `on-task-failure`: the failure-pattern and auto-fix daemons as one handler.
//! Each `task.failed` / `worker.failed` error is normalised into a signature
//! (ids, numbers, quoted strings and paths replaced by placeholders) and
//! counted in the `failures` bucket (key `pattern/<signature>`). Transient
//! failures of a task are retried by emitting `task.created` (the task's
//! latest retry kept under `auto-fix/<task id>`); a signature recurring within the window emits `learning.pattern_detected`
//! once per burst; a failure at high or critical priority that will not be
//! retried (permanent, or transient with its retries exhausted) raises a
//! `system.health_alert`.
//!
//! The host commits the records with the event and its follow-ups: a
//! redelivered event changes nothing, and two failures of one signature
//! handled at once are settled one after the other (a record read and then
//! written is checked at commit), so a burst is reported once. Signatures
//! are no longer evicted: a key costs nothing per event, and
//! `cortex state delete` removes stale ones.
//!
//! The error may come as text, as an object `{message, code, type}` or as
//! `error_message`; numbers may come as text. The accepted shapes are the
//! JSON Schemas in `src/schema/` (returned by `describe()`); unknown fields
//! are logged at warn level, and an unusable payload is refused as not
//! retryable.
//!
//! `classify` reads an error text (signature, transient or not, suggested
//! fix); this file holds the state and the decisions, and is past 500 lines
//! for its tests: one per accepted shape and per refusal.

use cortex_sdk::kv::{self, Bucket};
use cortex_sdk::state::keep_last;
use cortex_sdk::{Contract, Emit, Event, Handler, Leftover, Priority, Reader, Result, config_or, json};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod classify;
use classify::{is_transient, signature, suggested_fix};

/// `pattern/<signature>` → [`Pattern`]; `auto-fix/<task id>` → the task's
/// latest [`Retry`].
const BUCKET: &str = "failures";
/// Task ids kept per signature.
const MAX_TASK_IDS: usize = 20;
const TASK_FAILED: &str = "task.failed";
const WORKER_FAILED: &str = "worker.failed";
/// The names an error comes under, tried in this order.
const ERROR: [&str; 2] = ["error", "error_message"];
/// Fields of `worker.failed` that other handlers read (on-worker-complete,
/// and on-worker-heartbeat's own reports): accepted here, not used.
const WORKER_FAILED_KNOWN: [&str; 4] = ["duration_ms", "last_seen", "silent_secs", "threshold_secs"];

struct OnTaskFailure;

impl Handler for OnTaskFailure {
    const NAME: &'static str = "on-task-failure";
    const EVENTS: &'static [&'static str] = &[TASK_FAILED, WORKER_FAILED];
    const EMITS: &'static [&'static str] = &["task.created", "learning.pattern_detected", "system.health_alert"];
    const CONTRACTS: &'static [Contract] = &[
        Contract { event_type: TASK_FAILED, schema: include_str!("schema/task.failed.json") },
        Contract { event_type: WORKER_FAILED, schema: include_str!("schema/worker.failed.json") },
    ];

    fn handle(event: Event) -> Result<String> {
        let settings = Settings {
            max_retries: config_or("max_retries", 3)?,
            threshold: config_or("pattern_threshold", 3)?,
            window_secs: config_or("pattern_window_secs", 3600)?,
        };
        if settings.threshold == 0 || settings.window_secs <= 0 {
            return Err("settings pattern_threshold and pattern_window_secs must be at least 1".into());
        }
        let bucket = Bucket::open(BUCKET)?;
        let sig = signature(&Failure::read(&event)?.0.error);
        let key = format!("pattern/{sig}");
        let mut patterns = Patterns::default();
        if let Some(p) = bucket.get(&key)? {
            patterns.patterns.insert(sig.clone(), p);
        }
        let mut auto_fix = AutoFix::default();
        let applied = apply(&mut patterns, &mut auto_fix, &event, &settings)?;
        applied.leftover.warn();
        // The emits and the records are committed together with the event.
        for follow_up in applied.follow_ups {
            follow_up.send()?;
        }
        for retry in &auto_fix.retries {
            let key = format!("auto-fix/{}", retry.task_id);
            if !kv::valid_key(&key) {
                return Err(cortex_sdk::Error::refuse("payload.task_id must be at most 1000 bytes without NUL"));
            }
            bucket.set(&key, retry)?;
        }
        bucket.set(&key, &patterns.patterns[&sig])?;
        Ok(applied.summary)
    }
}

cortex_sdk::handler!(OnTaskFailure);

struct Settings {
    /// A task is retried while its attempt is below this.
    max_retries: u64,
    /// Failures of one signature within the window that make a pattern.
    threshold: u64,
    window_secs: i64,
}

/// The patterns an event sees: `handle` loads the one of its signature.
#[derive(Debug, Default)]
struct Patterns {
    patterns: BTreeMap<String, Pattern>,
}

/// The value of `pattern/<signature>`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Pattern {
    count: u64,
    first_seen: String,
    last_seen: String,
    /// Event times (epoch seconds) of the failures within the window.
    recent: Vec<i64>,
    /// `learning.pattern_detected` went out for the current burst; cleared
    /// when the window empties.
    reported: bool,
    /// The latest raw error.
    example: String,
    task_ids: Vec<String>,
    retryable: bool,
}

/// The retries one event queued (`handle` stores each under its task).
#[derive(Debug, Default)]
struct AutoFix {
    retries: Vec<Retry>,
}

/// The value of `auto-fix/<task id>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Retry {
    task_id: String,
    attempt: u64,
    signature: String,
    at: String,
    retry_of: String,
}

/// A failure as the payload describes it.
#[derive(Debug)]
struct Failure {
    error: String,
    task_id: Option<String>,
    attempt: u64,
    worker_id: Option<String>,
    retryable: Option<bool>,
}

impl Failure {
    fn read(event: &Event) -> Result<(Failure, Leftover)> {
        let mut p = Reader::new(event);
        let (error, task_id) = if event.event_type == WORKER_FAILED {
            p.known(WORKER_FAILED_KNOWN);
            (p.error_text(ERROR)?.unwrap_or_else(|| "unknown error".into()), p.str("task_id")?)
        } else {
            let error = p.error_text(ERROR)?.ok_or_else(|| {
                cortex_sdk::Error::refuse(
                    "payload.error (or error_message) is required (a string or an object with message, code or type)",
                )
            })?;
            (error, Some(p.req_str("task_id")?))
        };
        let failure = Failure {
            error,
            task_id,
            attempt: p.u64("attempt")?.unwrap_or(1).max(1),
            worker_id: p.str("worker_id")?,
            retryable: p.bool("retryable")?,
        };
        Ok((failure, p.finish()))
    }
}

#[derive(Debug)]
struct Applied {
    summary: String,
    follow_ups: Vec<Emit>,
    leftover: Leftover,
}

/// Applies one failure: counts its signature and decides the follow-ups.
fn apply(patterns: &mut Patterns, auto_fix: &mut AutoFix, event: &Event, settings: &Settings) -> Result<Applied> {
    let now = event.time()?;
    let (failure, leftover) = Failure::read(event)?;
    let signature = signature(&failure.error);
    let retryable = failure.retryable.unwrap_or_else(|| is_transient(&failure.error));
    let mut follow_ups = Vec::new();
    let mut did = Vec::new();

    let pattern = patterns.patterns.entry(signature.clone()).or_default();
    pattern.count += 1;
    if pattern.first_seen.is_empty() {
        pattern.first_seen = event.timestamp.clone();
    }
    pattern.last_seen = event.timestamp.clone();
    pattern.example = failure.error.clone();
    pattern.retryable = retryable;
    if let Some(task_id) = &failure.task_id {
        pattern.task_ids.retain(|t| t != task_id);
        pattern.task_ids.push(task_id.clone());
        keep_last(&mut pattern.task_ids, MAX_TASK_IDS);
    }
    let occurrences = count_in_window(pattern, now, settings);

    // (a) transient failure of a known task with attempts left: retry it.
    let mut retried = false;
    match (&failure.task_id, retryable) {
        (Some(task_id), true) if failure.attempt < settings.max_retries => {
            let next = failure.attempt + 1;
            let payload = json!({
                "task_id": task_id, "attempt": next, "retry_of": event.id,
                "error": failure.error, "signature": signature,
            });
            let correlation = event.correlation_id.clone().unwrap_or_else(|| task_id.clone());
            follow_ups
                .push(Emit::with_payload("task.created", payload).priority(event.priority).correlation_id(correlation));
            auto_fix.retries.push(Retry {
                task_id: task_id.clone(),
                attempt: next,
                signature: signature.clone(),
                at: event.timestamp.clone(),
                retry_of: event.id.clone(),
            });
            retried = true;
            did.push(format!("retry queued as attempt {next}/{}", settings.max_retries));
        }
        (Some(_), true) => did.push(format!("retries exhausted ({}/{})", failure.attempt, settings.max_retries)),
        _ => {}
    }
    let exhausted = retryable && failure.task_id.is_some() && !retried;

    // (b) the signature recurs: report it once per burst.
    if let Some(occurrences) = occurrences {
        let payload = json!({
            "pattern": signature, "occurrences": occurrences, "window_secs": settings.window_secs,
            "source": "on-task-failure", "suggested_fix": suggested_fix(&signature),
        });
        follow_ups.push(Emit::with_payload("learning.pattern_detected", payload));
        did.push(format!("pattern detected ({occurrences} in {}s)", settings.window_secs));
    }

    // (c) a failure that someone was waiting on and that will not be
    // retried: permanent, or out of retries.
    if (!retryable || exhausted) && matches!(event.priority, Priority::High | Priority::Critical) {
        let mut payload = json!({
            "severity": event.priority_name(), "component": "task", "error": failure.error,
            "signature": signature, "source_event": event.id,
        });
        if exhausted {
            payload["retries_exhausted"] = json!(true);
            payload["attempt"] = json!(failure.attempt);
            payload["max_retries"] = json!(settings.max_retries);
        }
        if let Some(task_id) = &failure.task_id {
            payload["task_id"] = json!(task_id);
        }
        if let Some(worker_id) = &failure.worker_id {
            payload["worker_id"] = json!(worker_id);
        }
        follow_ups.push(Emit::with_payload("system.health_alert", payload).priority(Priority::Critical));
        did.push("health alert raised".into());
    }

    let subject = match (&failure.task_id, &failure.worker_id) {
        (Some(t), _) => format!("task {t}"),
        (None, Some(w)) => format!("worker {w}"),
        (None, None) => format!("{} from {}", event.event_type, event.source),
    };
    let kind = if retryable { "transient" } else { "permanent" };
    let did = if did.is_empty() { "recorded".to_string() } else { did.join("; ") };
    Ok(Applied {
        summary: format!("{subject} failed ({kind}, attempt {}, signature {signature:?}): {did}", failure.attempt),
        follow_ups,
        leftover,
    })
}

/// Adds the failure at `now` to the pattern's window; returns the windowed
/// count when it has just reached the threshold for this burst.
fn count_in_window(pattern: &mut Pattern, now: i64, settings: &Settings) -> Option<u64> {
    pattern.recent.retain(|&t| t > now - settings.window_secs);
    if pattern.recent.is_empty() {
        pattern.reported = false;
    }
    pattern.recent.push(now);
    pattern.recent.sort_unstable();
    // Only "reached the threshold" and "window empty" matter, and the newest
    // time is always kept, so the list can be bounded.
    let cap = usize::try_from(settings.threshold).unwrap_or(usize::MAX).max(100);
    keep_last(&mut pattern.recent, cap);
    let occurrences = pattern.recent.len() as u64;
    if occurrences >= settings.threshold && !pattern.reported {
        pattern.reported = true;
        Some(occurrences)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cortex_sdk::Value;

    const SETTINGS: Settings = Settings { max_retries: 3, threshold: 3, window_secs: 3600 };

    fn event(id: &str, ty: &str, ts: &str, priority: &str, payload: Value) -> Event {
        let envelope = json!({
            "event_id": id, "event_type": ty, "timestamp": ts, "source": "scheduler",
            "metadata": {"priority": priority}, "payload": payload,
        });
        Event::from_envelope_json(&envelope.to_string()).unwrap()
    }

    fn failed(n: u32, minute: u32, error: &str, priority: &str) -> Event {
        event(
            &format!("evt_20251201_12{minute:02}00_aaa{n:03}"),
            "task.failed",
            &format!("2025-12-01T12:{minute:02}:00Z"),
            priority,
            json!({"task_id": format!("task_{n}"), "error": error}),
        )
    }

    fn types(a: &Applied) -> Vec<&str> {
        a.follow_ups.iter().map(|f| f.event_type.as_str()).collect()
    }

    #[test]
    fn exhausted_retries_of_a_high_priority_task_raise_an_alert() {
        let (mut p, mut fix) = (Patterns::default(), AutoFix::default());
        let mut last = failed(1, 0, "read ECONNRESET", "high");
        last.payload.insert("attempt".into(), json!(3));
        let a = apply(&mut p, &mut fix, &last, &SETTINGS).unwrap();
        assert_eq!(types(&a), ["system.health_alert"], "{}", a.summary);
        let alert = &a.follow_ups[0];
        assert_eq!(alert.priority, Some(Priority::Critical));
        assert_eq!(alert.payload["severity"], "high");
        assert_eq!(alert.payload["retries_exhausted"], true);
        assert_eq!(alert.payload["attempt"], 3);
        assert_eq!(alert.payload["max_retries"], 3);
        assert!(a.summary.contains("retries exhausted") && a.summary.contains("health alert raised"), "{}", a.summary);

        // With attempts left it is retried, and nobody is paged.
        let first = failed(2, 1, "read ECONNRESET", "high");
        assert_eq!(types(&apply(&mut p, &mut fix, &first, &SETTINGS).unwrap()), ["task.created"]);
        // A low-priority task out of retries is recorded, not alerted.
        let mut low = failed(3, 2, "socket hang up", "low");
        low.payload.insert("attempt".into(), json!(3));
        assert!(apply(&mut p, &mut fix, &low, &SETTINGS).unwrap().follow_ups.is_empty());
    }

    #[test]
    fn a_transient_failure_is_retried_until_attempts_run_out() {
        let (mut p, mut fix) = (Patterns::default(), AutoFix::default());
        let mut e = failed(1, 0, "upstream timed out", "medium");
        e.correlation_id = None;
        let a = apply(&mut p, &mut fix, &e, &SETTINGS).unwrap();
        assert_eq!(types(&a), ["task.created"]);
        let retry = &a.follow_ups[0];
        assert_eq!(retry.payload["attempt"], 2);
        assert_eq!(retry.payload["retry_of"], e.id.as_str());
        assert_eq!(retry.payload["signature"], "upstream timed out");
        assert_eq!(retry.correlation_id.as_deref(), Some("task_1"));
        assert_eq!(retry.priority, Some(Priority::Medium));
        assert_eq!(fix.retries.len(), 1);

        let mut last = failed(2, 1, "upstream timed out", "medium");
        last.payload.insert("attempt".into(), json!(3));
        let a = apply(&mut p, &mut fix, &last, &SETTINGS).unwrap();
        assert!(!types(&a).contains(&"task.created"), "attempt 3 of 3 is not retried");
        assert!(a.summary.contains("retries exhausted"));
        assert_eq!(fix.retries.len(), 1);
    }

    #[test]
    fn the_override_wins_and_permanent_high_failures_alert() {
        let (mut p, mut fix) = (Patterns::default(), AutoFix::default());
        let mut e = failed(1, 0, "upstream timed out", "high");
        e.payload.insert("retryable".into(), json!(false));
        let a = apply(&mut p, &mut fix, &e, &SETTINGS).unwrap();
        assert_eq!(types(&a), ["system.health_alert"]);
        let alert = &a.follow_ups[0];
        assert_eq!(alert.priority, Some(Priority::Critical));
        assert_eq!(alert.payload["severity"], "high");
        assert_eq!(alert.payload["task_id"], "task_1");
        assert_eq!(alert.payload["source_event"], e.id.as_str());

        let low = failed(2, 1, "syntax error", "low");
        assert!(apply(&mut p, &mut fix, &low, &SETTINGS).unwrap().follow_ups.is_empty());
    }

    #[test]
    fn a_pattern_is_reported_once_per_burst() {
        let (mut p, mut fix) = (Patterns::default(), AutoFix::default());
        let detected = |p: &mut Patterns, fix: &mut AutoFix, n: u32, minute: u32| {
            let a = apply(p, fix, &failed(n, minute, &format!("disk full on node {n}"), "low"), &SETTINGS).unwrap();
            a.follow_ups.iter().find(|f| f.event_type == "learning.pattern_detected").map(|f| f.payload.clone())
        };
        assert!(detected(&mut p, &mut fix, 1, 0).is_none());
        assert!(detected(&mut p, &mut fix, 2, 10).is_none());
        let payload = detected(&mut p, &mut fix, 3, 20).expect("third failure in the window");
        assert_eq!(payload["pattern"], "disk full on node <n>");
        assert_eq!(payload["occurrences"], 3);
        assert_eq!(payload["window_secs"], 3600);
        assert_eq!(payload["suggested_fix"], "investigate recurring failure");
        assert!(detected(&mut p, &mut fix, 4, 30).is_none(), "not again within the burst");

        // The next burst, once the window has emptied.
        let later = |n: u32, hour: u32| {
            event(
                &format!("evt_20251201_{hour:02}0000_bbb{n:03}"),
                "task.failed",
                &format!("2025-12-01T{hour:02}:00:00Z"),
                "low",
                json!({"task_id": "t", "error": "disk full on node 9"}),
            )
        };
        for (n, hour) in [(5, 15), (6, 15), (7, 15)] {
            let a = apply(&mut p, &mut fix, &later(n, hour), &SETTINGS).unwrap();
            assert_eq!(types(&a).contains(&"learning.pattern_detected"), n == 7);
        }
        let entry = &p.patterns["disk full on node <n>"];
        assert_eq!(entry.count, 7);
        assert_eq!(entry.example, "disk full on node 9");
    }

    #[test]
    fn payload_rules() {
        let (mut p, mut fix) = (Patterns::default(), AutoFix::default());
        let no_error =
            event("evt_20251201_120000_ccc001", "task.failed", "2025-12-01T12:00:00Z", "low", json!({"task_id": "t"}));
        let err = apply(&mut p, &mut fix, &no_error, &SETTINGS).unwrap_err();
        assert!(err.message().starts_with("payload.error (or error_message) is required") && !err.is_retryable());
        let worker = event("evt_20251201_120000_ccc002", "worker.failed", "2025-12-01T12:00:00Z", "low", json!({}));
        let a = apply(&mut p, &mut fix, &worker, &SETTINGS).unwrap();
        assert!(p.patterns.contains_key("unknown error"));
        assert!(a.follow_ups.is_empty());
        let bad = event(
            "evt_20251201_120000_ccc003",
            "task.failed",
            "2025-12-01T12:00:00Z",
            "low",
            json!({"task_id": "t", "error": "x", "attempt": "two"}),
        );
        let err = apply(&mut p, &mut fix, &bad, &SETTINGS).unwrap_err();
        assert!(err.message().starts_with("payload.attempt must be a non-negative whole number"), "{err}");
        assert!(!err.is_retryable());
        let no_task =
            event("evt_20251201_120000_ccc004", "task.failed", "2025-12-01T12:00:00Z", "low", json!({"error": "x"}));
        let err = apply(&mut p, &mut fix, &no_task, &SETTINGS).unwrap_err();
        assert_eq!(err.message(), "payload.task_id is required (a string)");
        let bad_error = event(
            "evt_20251201_120000_ccc005",
            "task.failed",
            "2025-12-01T12:00:00Z",
            "low",
            json!({"task_id": "t", "error": {"stack": "..."}}),
        );
        let err = apply(&mut p, &mut fix, &bad_error, &SETTINGS).unwrap_err();
        assert!(err.message().starts_with("payload.error must be a string or an object with message"), "{err}");
        assert_eq!(p.patterns.values().map(|p| p.count).sum::<u64>(), 1, "only the worker.failed was applied");
    }

    fn with_error(n: u32, error: Value) -> Event {
        let mut e = failed(n, n, "unused", "high");
        e.payload.remove("error");
        for (k, v) in error.as_object().unwrap() {
            e.payload.insert(k.clone(), v.clone());
        }
        e
    }

    #[test]
    fn an_error_comes_as_text_an_object_or_error_message() {
        let (mut p, mut fix) = (Patterns::default(), AutoFix::default());
        let object = json!({"error": {"message": "socket hang up", "code": "ECONNRESET", "type": "NetworkError"}});
        let a = apply(&mut p, &mut fix, &with_error(1, object), &SETTINGS).unwrap();
        assert_eq!(types(&a), ["task.created"], "a network reset is transient: {}", a.summary);
        assert_eq!(a.follow_ups[0].payload["error"], "NetworkError: socket hang up (ECONNRESET)");

        let a =
            apply(&mut p, &mut fix, &with_error(2, json!({"error_message": "HTTP 429 Too Many Requests"})), &SETTINGS)
                .unwrap();
        assert_eq!(types(&a), ["task.created"]);
        let a =
            apply(&mut p, &mut fix, &with_error(3, json!({"error": {"code": "E_SCHEMA"}, "attempt": "2"})), &SETTINGS)
                .unwrap();
        assert_eq!(types(&a), ["system.health_alert"], "a permanent high failure");
        assert_eq!(a.follow_ups[0].payload["error"], "E_SCHEMA");
        let a = apply(
            &mut p,
            &mut fix,
            &with_error(4, json!({"error": "x", "retryable": "true", "attempt": 3.0})),
            &SETTINGS,
        )
        .unwrap();
        assert!(a.summary.contains("retries exhausted (3/3)"), "{}", a.summary);
    }

    #[test]
    fn unknown_fields_are_named() {
        let (mut p, mut fix) = (Patterns::default(), AutoFix::default());
        let e = with_error(1, json!({"error": "boom", "recommendation": "retry later", "stack_trace": "..."}));
        let a = apply(&mut p, &mut fix, &e, &SETTINGS).unwrap();
        assert_eq!(a.leftover.ignored, ["recommendation", "stack_trace"]);
        // What on-worker-heartbeat reports is known here.
        let report = event(
            "evt_20251201_120000_hbt001",
            "worker.failed",
            "2025-12-01T12:00:00Z",
            "high",
            json!({"worker_id": "w", "error": "heartbeat timeout", "last_seen": "2025-12-01T11:58:00Z",
                   "silent_secs": 120, "threshold_secs": 90}),
        );
        assert!(apply(&mut p, &mut fix, &report, &SETTINGS).unwrap().leftover.ignored.is_empty());
    }

    #[test]
    fn the_contracts_match_the_parser() {
        let fixture = |text: &str| Event::from_envelope_json(text).unwrap();
        let read = |e: &Event| Failure::read(e).map(|(_, left)| left);
        let tasks = [
            fixture(include_str!("../fixtures/task-failed-timeout.json")),
            fixture(include_str!("../fixtures/task-failed-permanent.json")),
            with_error(1, json!({"error": {"message": "m"}, "retryable": false})),
            with_error(2, json!({"error_message": "m"})),
        ];
        cortex_sdk::contract::check(OnTaskFailure::CONTRACTS[0].schema, &tasks, read).unwrap();
        let worker = |n: u32, payload: Value| {
            event(&format!("evt_20251201_120000_wkr{n:03}"), WORKER_FAILED, "2025-12-01T12:00:00Z", "low", payload)
        };
        let workers = [
            worker(
                1,
                json!({"worker_id": "w", "task_id": "t", "error": "oom", "attempt": 1, "retryable": false, "duration_ms": 5}),
            ),
            worker(
                2,
                json!({"error_message": "x", "last_seen": "2025-12-01T11:58:00Z", "silent_secs": 120, "threshold_secs": 90}),
            ),
        ];
        cortex_sdk::contract::check(OnTaskFailure::CONTRACTS[1].schema, &workers, read).unwrap();
    }

    #[test]
    fn fixtures_apply() {
        let (mut p, mut fix) = (Patterns::default(), AutoFix::default());
        let e = Event::from_envelope_json(include_str!("../fixtures/task-failed-timeout.json")).unwrap();
        assert_eq!(types(&apply(&mut p, &mut fix, &e, &SETTINGS).unwrap()), ["task.created"]);
        let e = Event::from_envelope_json(include_str!("../fixtures/task-failed-permanent.json")).unwrap();
        assert_eq!(types(&apply(&mut p, &mut fix, &e, &SETTINGS).unwrap()), ["system.health_alert"]);
    }
}
