//! `on-worker-complete`: keeps one record per worker in `/state/workers/<id>.json`
//! (status, current task, run counts, tokens, durations, last error) from its
//! `worker.started`, `worker.completed` and `worker.failed` events, and turns a
//! completed run that names its task into `task.completed`, so task tracking
//! does not have to know about workers.

use cortex_sdk::fields::{opt_str, opt_u64};
use cortex_sdk::{Event, FollowUp, Handler, Result, json, state};
use serde::{Deserialize, Serialize};

/// The grant holding the worker records.
const STATE_DIR: &str = "/state/workers";
/// Longest file stem: worker ids come from producers, file names have limits.
const MAX_STEM: usize = 120;

struct OnWorkerComplete;

impl Handler for OnWorkerComplete {
    const NAME: &'static str = "on-worker-complete";
    const EVENTS: &'static [&'static str] = &["worker.started", "worker.completed", "worker.failed"];

    fn handle(event: Event) -> Result<String> {
        let worker_id = worker_id(&event)?;
        let path = format!("{STATE_DIR}/{}.json", file_stem(&worker_id));
        let mut record: WorkerRecord = state::load(&path)?;
        if cortex_sdk::already_applied(&record.recent_event_ids, &event.id) {
            return Ok(cortex_sdk::duplicate_summary(&event.id));
        }
        let applied = apply(&mut record, &worker_id, &event)?;
        // Emit before saving: if the save fails the event is retried and the
        // emits of this attempt are discarded with it, so nothing doubles.
        for follow_up in applied.follow_ups {
            follow_up.send()?;
        }
        state::save(&path, &record)?;
        Ok(applied.summary)
    }
}

cortex_sdk::handler!(OnWorkerComplete);

/// One worker's record, as stored.
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
    duration_ms: DurationStats,
    last_error: Option<String>,
    first_seen: String,
    last_seen: String,
    last_event_id: String,
    /// Applied event ids, to recognise redeliveries.
    recent_event_ids: Vec<String>,
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

/// What applying one event did.
#[derive(Debug)]
struct Applied {
    summary: String,
    follow_ups: Vec<FollowUp>,
}

/// The worker an event is about: `payload.worker_id`, else the event source.
fn worker_id(event: &Event) -> Result<String> {
    Ok(match opt_str(&event.payload, "worker_id")? {
        Some(id) if !id.trim().is_empty() => id,
        _ => event.source.clone(),
    })
}

/// A worker id made safe as a file name: `[A-Za-z0-9._-]` kept, the rest `_`.
fn file_stem(worker_id: &str) -> String {
    let stem: String = worker_id
        .chars()
        .take(MAX_STEM)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    // "." and ".." would still be a plain `<stem>.json` file, but an empty
    // stem would make a hidden ".json".
    if stem.is_empty() { "_".into() } else { stem }
}

/// Applies one worker event to the worker's record.
fn apply(record: &mut WorkerRecord, worker_id: &str, event: &Event) -> Result<Applied> {
    let now = cortex_sdk::event_time(event)?;
    let task_id = opt_str(&event.payload, "task_id")?;
    let tokens = opt_u64(&event.payload, "tokens_used")?;
    let duration = opt_u64(&event.payload, "duration_ms")?;
    let error = opt_str(&event.payload, "error")?;

    record.worker_id = worker_id.to_string();
    if record.first_seen.is_empty() {
        record.first_seen = event.timestamp.clone();
    }
    // A late redelivery must not move last_seen backwards.
    if cortex_sdk::parse_rfc3339(&record.last_seen).is_none_or(|seen| now >= seen) {
        record.last_seen = event.timestamp.clone();
    }
    record.last_event_id = event.id.clone();
    record.tokens_used = record.tokens_used.saturating_add(tokens.unwrap_or(0));
    if let Some(ms) = duration {
        record.duration_ms.add(ms);
    }

    let mut follow_ups = Vec::new();
    let summary = match event.event_type.as_str() {
        "worker.started" => {
            record.status = "started".into();
            record.current_task = task_id.clone();
            format!("worker {worker_id} started{}", on_task(task_id.as_deref()))
        }
        "worker.completed" | "worker.failed" => {
            let completed = event.event_type == "worker.completed";
            let finished = task_id.clone().or(record.current_task.take());
            record.current_task = None;
            if finished.is_some() {
                record.last_task = finished.clone();
            }
            record.runs += 1;
            if completed {
                record.status = "completed".into();
                record.completed += 1;
            } else {
                record.status = "failed".into();
                record.failed += 1;
                record.last_error = Some(error.unwrap_or_else(|| "unknown error".into()));
            }
            let mut summary = format!(
                "worker {worker_id} {}{} (runs {}, completed {}, failed {})",
                record.status,
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
                if let Some(n) = tokens {
                    payload["tokens_used"] = json!(n);
                }
                follow_ups.push(FollowUp::new("task.completed", payload).priority(event.priority));
                summary.push_str("; emitted task.completed");
            }
            summary
        }
        other => return Err(format!("event type {other} is not handled by on-worker-complete")),
    };
    cortex_sdk::remember(&mut record.recent_event_ids, &event.id);
    Ok(Applied { summary, follow_ups })
}

fn on_task(task: Option<&str>) -> String {
    task.map(|t| format!(" on task {t}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cortex_sdk::{Priority, Value};

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
        assert_eq!(r.recent_event_ids.len(), 2);
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
        assert!(apply(&mut r, "w", &bad).unwrap_err().contains("payload.tokens_used"));
    }

    #[test]
    fn worker_ids_fall_back_to_source_and_are_sanitised() {
        let e = event("evt_20251201_120000_ffffff", "worker.started", "2025-12-01T12:00:00Z", json!({}));
        assert_eq!(worker_id(&e).unwrap(), "worker-pool");
        assert_eq!(file_stem("../etc/pass wd"), ".._etc_pass_wd");
        assert_eq!(file_stem("w-1.a_B"), "w-1.a_B");
        assert_eq!(file_stem(""), "_");
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
