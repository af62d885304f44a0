//! `on-worker-complete`: keeps one record per worker in the `workers` bucket
//! (key: the worker id; status, current task, run counts, tokens, durations,
//! last error) from its `worker.started`, `worker.completed` and
//! `worker.failed` events, and turns a completed run that names its task into
//! `task.completed`, so task tracking does not have to know about workers.
//!
//! The host commits the record with the event and its follow-up: a
//! redelivered event changes nothing, and two events of one worker handled at
//! once are settled one after the other (a record read and then written is
//! checked at commit, and the later event runs again on the new record).
//!
//! Token counts may come as `tokens_used` (a number or its text) or as
//! `usage` {input_tokens, output_tokens} (or prompt_tokens /
//! completion_tokens, total_tokens); an error as text or as an object. The
//! accepted shapes are the JSON Schemas in `src/schema/` (returned by
//! `describe()`); unknown fields are logged at warn level, and an unusable
//! payload is refused as not retryable.

use cortex_sdk::kv::{self, Bucket};
use cortex_sdk::{Contract, Emit, Event, Handler, Leftover, Reader, Result, Value, json};
use serde::{Deserialize, Serialize};

/// One key per worker id, a [`WorkerRecord`] each.
const BUCKET: &str = "workers";

struct OnWorkerComplete;

impl Handler for OnWorkerComplete {
    const NAME: &'static str = "on-worker-complete";
    const EVENTS: &'static [&'static str] = &["worker.started", "worker.completed", "worker.failed"];
    const EMITS: &'static [&'static str] = &["task.completed"];
    const CONTRACTS: &'static [Contract] = &[
        Contract { event_type: "worker.started", schema: include_str!("schema/worker.started.json") },
        Contract { event_type: "worker.completed", schema: include_str!("schema/worker.completed.json") },
        Contract { event_type: "worker.failed", schema: include_str!("schema/worker.failed.json") },
    ];

    fn handle(event: Event) -> Result<String> {
        let worker_id = worker_id(&event)?;
        let bucket = Bucket::open(BUCKET)?;
        let mut record: WorkerRecord = bucket.get(&worker_id)?.unwrap_or_default();
        let applied = apply(&mut record, &worker_id, &event)?;
        applied.leftover.warn();
        // The follow-up and the record are committed together with the event.
        for follow_up in applied.follow_ups {
            follow_up.send()?;
        }
        bucket.set(&worker_id, &record)?;
        Ok(applied.summary)
    }
}

cortex_sdk::handler!(OnWorkerComplete);

/// One worker's record: the value of its key.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerRecord {
    worker_id: String,
    /// `started`, `completed` or `failed`: the latest event's kind.
    status: String,
    current_task: Option<String>,
    last_task: Option<String>,
    /// Finished runs: completed + failed.
    runs: u64,
    completed: u64,
    failed: u64,
    tokens_used: u64,
    /// Of `tokens_used`, what `usage` reported as input and output.
    #[serde(default, skip_serializing_if = "is_zero")]
    input_tokens: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    output_tokens: u64,
    duration_ms: DurationStats,
    last_error: Option<String>,
    first_seen: String,
    last_seen: String,
    last_event_id: String,
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct DurationStats {
    count: u64,
    min: u64,
    avg: u64,
    max: u64,
    total: u64,
}

impl DurationStats {
    fn add(&mut self, ms: u64) {
        self.min = if self.count == 0 { ms } else { self.min.min(ms) };
        self.max = self.max.max(ms);
        self.count += 1;
        self.total = self.total.saturating_add(ms);
        self.avg = self.total / self.count;
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What applying one event did.
#[derive(Debug)]
struct Applied {
    summary: String,
    follow_ups: Vec<Emit>,
    leftover: Leftover,
}

/// The worker an event is about: `payload.worker_id`, else the event
/// source; refused when it cannot be a key.
fn worker_id(event: &Event) -> Result<String> {
    let mut p = Reader::new(event);
    let id = p.str("worker_id")?.unwrap_or_else(|| event.source.clone());
    if !kv::valid_key(&id) {
        return Err(p.wrong("worker_id", "at most 1024 bytes of text without NUL", &json!(id)));
    }
    Ok(id)
}

/// Tokens a run used.
#[derive(Debug, Default, PartialEq)]
struct Tokens {
    total: u64,
    input: u64,
    output: u64,
}

/// A worker event's payload.
#[derive(Debug)]
struct Run {
    task_id: Option<String>,
    tokens: Option<Tokens>,
    duration: Option<u64>,
    error: Option<String>,
}

impl Run {
    fn read(event: &Event) -> Result<(Run, Leftover)> {
        let mut p = Reader::new(event);
        p.known("worker_id");
        let task_id = p.str("task_id")?;
        let tokens = read_tokens(&mut p, &event.event_type)?;
        let duration = p.u64("duration_ms")?;
        let error = if event.event_type == "worker.failed" {
            // Read by on-task-failure, and on-worker-heartbeat's reports.
            p.known(["attempt", "retryable", "last_seen", "silent_secs", "threshold_secs"]);
            p.error_text(["error", "error_message"])?
        } else {
            None
        };
        // The seed's producers repeat the outcome in the payload.
        p.known("status");
        Ok((Run { task_id, tokens, duration, error }, p.finish()))
    }
}

/// `tokens_used` (a count or its text), else `usage` {input_tokens,
/// output_tokens} or {prompt_tokens, completion_tokens}, or its
/// `total_tokens`.
fn read_tokens(p: &mut Reader, event_type: &str) -> Result<Option<Tokens>> {
    let used = p.u64("tokens_used")?;
    let usage = match p.value("usage") {
        None => None,
        Some((_, Value::Object(usage))) => {
            let mut u = Reader::within(event_type, "payload.usage", usage);
            let input = u.u64(["input_tokens", "prompt_tokens"])?;
            let output = u.u64(["output_tokens", "completion_tokens"])?;
            let total = u.u64("total_tokens")?;
            // Other counters in `usage` (cache tokens, ...) are not reported.
            match (input, output, total) {
                (None, None, None) => {
                    let expected = "an object with input_tokens / output_tokens (or prompt_tokens / completion_tokens, total_tokens)";
                    return Err(p.wrong("usage", expected, &Value::Object(usage.clone())));
                }
                (input, output, total) => {
                    let (input, output) = (input.unwrap_or(0), output.unwrap_or(0));
                    Some(Tokens { total: total.unwrap_or(input.saturating_add(output)), input, output })
                }
            }
        }
        Some((key, v)) => return Err(p.wrong(key, "an object of token counts", v)),
    };
    Ok(match (used, usage) {
        (Some(total), Some(usage)) => Some(Tokens { total, ..usage }),
        (Some(total), None) => Some(Tokens { total, ..Tokens::default() }),
        (None, usage) => usage,
    })
}

/// Applies one worker event to the worker's record.
fn apply(record: &mut WorkerRecord, worker_id: &str, event: &Event) -> Result<Applied> {
    let now = event.time()?;
    let (Run { task_id, tokens, duration, error }, leftover) = Run::read(event)?;

    record.worker_id = worker_id.to_string();
    let seen = |t: &str| cortex_sdk::time::parse_rfc3339(t);
    if seen(&record.first_seen).is_none_or(|first| now < first) {
        record.first_seen = event.timestamp.clone();
    }
    // Events of one worker may be settled out of order (a redelivery, or an
    // event run again after a commit conflict): an older one is counted but
    // does not change what the worker is doing now.
    let latest = seen(&record.last_seen).is_none_or(|last| now >= last);
    if latest {
        record.last_seen = event.timestamp.clone();
        record.last_event_id = event.id.clone();
    }
    if let Some(t) = &tokens {
        record.tokens_used = record.tokens_used.saturating_add(t.total);
        record.input_tokens = record.input_tokens.saturating_add(t.input);
        record.output_tokens = record.output_tokens.saturating_add(t.output);
    }
    if let Some(ms) = duration {
        record.duration_ms.add(ms);
    }

    let mut follow_ups = Vec::new();
    let summary = match event.event_type.as_str() {
        "worker.started" => {
            if latest {
                record.status = "started".into();
                record.current_task = task_id.clone();
            }
            format!("worker {worker_id} started{}", on_task(task_id.as_deref()))
        }
        "worker.completed" | "worker.failed" => {
            let completed = event.event_type == "worker.completed";
            let status = if completed { "completed" } else { "failed" };
            let finished = task_id.clone().or_else(|| record.current_task.clone().filter(|_| latest));
            record.runs += 1;
            if completed {
                record.completed += 1;
            } else {
                record.failed += 1;
            }
            if latest {
                record.status = status.into();
                record.current_task = None;
                if finished.is_some() {
                    record.last_task = finished.clone();
                }
                if !completed {
                    record.last_error = Some(error.unwrap_or_else(|| "unknown error".into()));
                }
            }
            let mut summary = format!(
                "worker {worker_id} {status}{} (runs {}, completed {}, failed {})",
                on_task(finished.as_deref()),
                record.runs,
                record.completed,
                record.failed
            );
            if let (true, Some(task_id)) = (completed, task_id) {
                let mut payload = json!({"task_id": task_id, "worker_id": worker_id, "status": "completed"});
                if let Some(ms) = duration {
                    payload["duration_ms"] = json!(ms);
                }
                if let Some(t) = &tokens {
                    payload["tokens_used"] = json!(t.total);
                }
                follow_ups.push(Emit::with_payload("task.completed", payload).priority(event.priority));
                summary.push_str("; emitted task.completed");
            }
            summary
        }
        other => return Err(format!("event type {other} is not handled by on-worker-complete").into()),
    };
    Ok(Applied { summary, follow_ups, leftover })
}

fn on_task(task: Option<&str>) -> String {
    task.map(|t| format!(" on task {t}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cortex_sdk::Priority;

    fn event(id: &str, event_type: &str, ts: &str, payload: Value) -> Event {
        let envelope = json!({
            "event_id": id, "event_type": event_type, "timestamp": ts, "source": "worker-pool",
            "metadata": {"priority": "high"}, "payload": payload,
        });
        Event::from_envelope_json(&envelope.to_string()).unwrap()
    }

    #[test]
    fn a_run_is_counted_and_its_task_reported() {
        let mut r = WorkerRecord::default();
        let started = event(
            "evt_20251201_120000_aaaaaa",
            "worker.started",
            "2025-12-01T12:00:00-06:00",
            json!({"worker_id": "w1", "task_id": "t1"}),
        );
        apply(&mut r, "w1", &started).unwrap();
        assert_eq!(r.status, "started");
        assert_eq!(r.current_task.as_deref(), Some("t1"));

        let done = event(
            "evt_20251201_120500_bbbbbb",
            "worker.completed",
            "2025-12-01T12:05:00-06:00",
            json!({"worker_id": "w1", "task_id": "t1", "duration_ms": 300, "tokens_used": 1200}),
        );
        let applied = apply(&mut r, "w1", &done).unwrap();
        assert_eq!((r.runs, r.completed, r.failed, r.tokens_used), (1, 1, 0, 1200));
        assert_eq!(r.current_task, None);
        assert_eq!(r.last_task.as_deref(), Some("t1"));
        assert_eq!(r.first_seen, "2025-12-01T12:00:00-06:00");
        assert_eq!(r.last_seen, "2025-12-01T12:05:00-06:00");
        assert_eq!(applied.follow_ups.len(), 1);
        let f = &applied.follow_ups[0];
        assert_eq!(f.event_type, "task.completed");
        assert_eq!(f.priority, Some(Priority::High));
        assert_eq!(
            f.payload,
            json!({"task_id": "t1", "worker_id": "w1", "status": "completed", "duration_ms": 300, "tokens_used": 1200})
        );
    }

    #[test]
    fn failures_record_the_error_and_durations_aggregate() {
        let mut r = WorkerRecord::default();
        for (i, ms) in [100u64, 400, 250].iter().enumerate() {
            let e = event(
                &format!("evt_20251201_12000{i}_cccccc"),
                "worker.failed",
                &format!("2025-12-01T12:00:0{i}Z"),
                json!({"duration_ms": ms, "error": format!("boom {i}")}),
            );
            let applied = apply(&mut r, "w2", &e).unwrap();
            assert!(applied.follow_ups.is_empty(), "a failure emits nothing");
        }
        assert_eq!(r.duration_ms, DurationStats { count: 3, min: 100, avg: 250, max: 400, total: 750 });
        assert_eq!((r.runs, r.failed, r.status.as_str()), (3, 3, "failed"));
        assert_eq!(r.last_error.as_deref(), Some("boom 2"));
    }

    #[test]
    fn completion_without_task_emits_nothing_and_bad_fields_are_errors() {
        let mut r = WorkerRecord::default();
        let e = event("evt_20251201_120000_dddddd", "worker.completed", "2025-12-01T12:00:00Z", json!({}));
        assert!(apply(&mut r, "w", &e).unwrap().follow_ups.is_empty());
        let bad = event(
            "evt_20251201_120001_eeeeee",
            "worker.completed",
            "2025-12-01T12:00:01Z",
            json!({"tokens_used": "many"}),
        );
        let err = apply(&mut r, "w", &bad).unwrap_err();
        assert!(err.message().starts_with("payload.tokens_used must be a non-negative whole number"), "{err}");
        assert!(!err.is_retryable());
    }

    fn completed(n: u32, payload: Value) -> Event {
        event(
            &format!("evt_20251201_1200{n:02}_tok{n:03}"),
            "worker.completed",
            &format!("2025-12-01T12:00:{n:02}Z"),
            payload,
        )
    }

    #[test]
    fn tokens_come_as_a_count_its_text_or_usage() {
        let mut r = WorkerRecord::default();
        let a =
            apply(&mut r, "w", &completed(1, json!({"task_id": "t1", "tokens_used": "1500", "status": "completed"})))
                .unwrap();
        assert_eq!(r.tokens_used, 1500);
        assert_eq!(a.follow_ups[0].payload["tokens_used"], 1500);
        assert!(a.leftover.ignored.is_empty(), "{:?}", a.leftover);

        let a = apply(
            &mut r,
            "w",
            &completed(2, json!({"task_id": "t2", "usage": {"input_tokens": 1000, "output_tokens": "234"}})),
        )
        .unwrap();
        assert_eq!(a.follow_ups[0].payload["tokens_used"], 1234);
        assert_eq!((r.tokens_used, r.input_tokens, r.output_tokens), (2734, 1000, 234));
        let openai = json!({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "cache_read_tokens": 99}});
        apply(&mut r, "w", &completed(3, openai)).unwrap();
        assert_eq!((r.tokens_used, r.input_tokens, r.output_tokens), (2749, 1010, 239));
        apply(&mut r, "w", &completed(4, json!({"usage": {"total_tokens": "51"}}))).unwrap();
        assert_eq!(r.tokens_used, 2800);

        for (n, payload, named) in [
            (5, json!({"usage": {"tokens": 5}}), "payload.usage must be an object with input_tokens"),
            (6, json!({"usage": 5}), "payload.usage must be an object of token counts"),
            (7, json!({"usage": {"input_tokens": "lots"}}), "payload.usage.input_tokens must be a non-negative whole"),
            (8, json!({"duration_ms": "soon"}), "payload.duration_ms must be a non-negative whole number"),
        ] {
            let err = apply(&mut r, "w", &completed(n, payload)).unwrap_err();
            assert!(!err.is_retryable() && err.message().starts_with(named), "{err}");
        }
        assert_eq!(r.completed, 4, "refused events change nothing");
    }

    #[test]
    fn a_failure_error_comes_as_text_or_an_object_and_unknown_fields_are_named() {
        let mut r = WorkerRecord::default();
        let e = event(
            "evt_20251201_120000_err001",
            "worker.failed",
            "2025-12-01T12:00:00Z",
            json!({"error": {"message": "out of memory", "code": "OOM"}, "repo": "api", "attempt": 2}),
        );
        let a = apply(&mut r, "w", &e).unwrap();
        assert_eq!(r.last_error.as_deref(), Some("out of memory (OOM)"));
        assert_eq!(a.leftover.ignored, ["repo"]);
    }

    #[test]
    fn the_contracts_match_the_parser() {
        let fixture = |text: &str| Event::from_envelope_json(text).unwrap();
        let read = |e: &Event| Run::read(e).map(|(_, left)| left);
        let of = |ty: &str, payload: Value| {
            let mut e = completed(1, payload);
            e.event_type = ty.into();
            e
        };
        let all = json!({"worker_id": "w", "task_id": "t", "duration_ms": 1, "tokens_used": 2, "usage": {"input_tokens": 1}, "status": "x"});
        let mut failed = all.clone();
        for (k, v) in json!({"error": "e", "error_message": "m", "attempt": 1, "retryable": true, "last_seen": "x", "silent_secs": 1, "threshold_secs": 1}).as_object().unwrap() {
            failed[k] = v.clone();
        }
        let cases = [
            (
                "worker.started",
                vec![fixture(include_str!("../fixtures/worker-started.json")), of("worker.started", all.clone())],
            ),
            (
                "worker.completed",
                vec![fixture(include_str!("../fixtures/worker-completed.json")), of("worker.completed", all.clone())],
            ),
            ("worker.failed", vec![of("worker.failed", failed)]),
        ];
        for (i, (ty, samples)) in cases.iter().enumerate() {
            assert_eq!(OnWorkerComplete::CONTRACTS[i].event_type, *ty);
            cortex_sdk::contract::check(OnWorkerComplete::CONTRACTS[i].schema, samples, read)
                .map_err(|e| format!("{ty}: {e}"))
                .unwrap();
        }
    }

    #[test]
    fn worker_ids_fall_back_to_source_and_must_fit_a_key() {
        let e = event("evt_20251201_120000_ffffff", "worker.started", "2025-12-01T12:00:00Z", json!({}));
        assert_eq!(worker_id(&e).unwrap(), "worker-pool");
        let e = event(
            "evt_20251201_120000_ffffff",
            "worker.started",
            "2025-12-01T12:00:00Z",
            json!({"worker_id": "../a b"}),
        );
        assert_eq!(worker_id(&e).unwrap(), "../a b", "a key is not a path: no sanitising");
        let long = json!({"worker_id": "w".repeat(1025)});
        let err = worker_id(&event("evt_20251201_120000_ffffff", "worker.started", "2025-12-01T12:00:00Z", long))
            .unwrap_err();
        assert!(
            !err.is_retryable() && err.message().starts_with("payload.worker_id must be at most 1024 bytes"),
            "{err}"
        );
    }

    #[test]
    fn an_older_event_settled_late_is_counted_but_does_not_change_the_status() {
        let mut r = WorkerRecord::default();
        let at = |n: u32, ty: &str, payload: Value| {
            event(&format!("evt_20251201_12000{n}_late{n:02}"), ty, &format!("2025-12-01T12:00:0{n}Z"), payload)
        };
        apply(&mut r, "w", &at(1, "worker.started", json!({"task_id": "t-1"}))).unwrap();
        apply(&mut r, "w", &at(4, "worker.failed", json!({"task_id": "t-2", "error": "disk full"}))).unwrap();
        // The t-2 start and the t-1 completion, settled after the failure.
        apply(&mut r, "w", &at(3, "worker.started", json!({"task_id": "t-2"}))).unwrap();
        let a = apply(&mut r, "w", &at(2, "worker.completed", json!({"task_id": "t-1"}))).unwrap();
        assert_eq!(
            (r.status.as_str(), r.current_task.as_deref(), r.last_task.as_deref()),
            ("failed", None, Some("t-2"))
        );
        assert_eq!((r.runs, r.completed, r.failed), (2, 1, 1));
        assert_eq!((r.first_seen.as_str(), r.last_seen.as_str()), ("2025-12-01T12:00:01Z", "2025-12-01T12:00:04Z"));
        assert_eq!(r.last_event_id, "evt_20251201_120004_late04");
        assert_eq!(a.follow_ups.len(), 1, "a late completion still completes its task");
        assert!(a.summary.starts_with("worker w completed on task t-1"), "{}", a.summary);
    }

    #[test]
    fn the_record_round_trips_through_the_bucket() {
        let bucket = Bucket::open(BUCKET).unwrap();
        let mut r: WorkerRecord = bucket.get("w1").unwrap().unwrap_or_default();
        let e = event(
            "evt_20251201_120000_rt0001",
            "worker.completed",
            "2025-12-01T12:00:00Z",
            json!({"worker_id": "w1", "tokens_used": 7, "duration_ms": 5}),
        );
        apply(&mut r, "w1", &e).unwrap();
        bucket.set("w1", &r).unwrap();
        let stored: Value = serde_json::from_str(&cortex_sdk::kv::memory::dump(BUCKET)["w1"]).unwrap();
        assert_eq!((stored["worker_id"].as_str(), stored["tokens_used"].as_u64()), (Some("w1"), Some(7)));
        assert_eq!(stored["duration_ms"]["max"], 5);
        assert!(stored.get("recent_event_ids").is_none(), "the host, not the record, recognises redeliveries");
        let again: WorkerRecord = bucket.get("w1").unwrap().unwrap();
        assert_eq!((again.runs, again.completed), (1, 1));
    }

    #[test]
    fn fixtures_apply() {
        let mut r = WorkerRecord::default();
        for text in [include_str!("../fixtures/worker-started.json"), include_str!("../fixtures/worker-completed.json")]
        {
            let e = Event::from_envelope_json(text).unwrap();
            let id = worker_id(&e).unwrap();
            apply(&mut r, &id, &e).unwrap();
        }
        assert_eq!(r.completed, 1);
    }
}
