//! `on-worker-heartbeat`: the heartbeat monitor without a polling daemon.
//! Every `worker.heartbeat` updates its worker's record in the `heartbeats`
//! bucket (key: the worker id) and then, taking the event's time as now,
//! reports each other worker that has been silent past the threshold with one
//! `worker.failed` — once per silence, until it beats again. A
//! `system.heartbeat_check` (the default `heartbeat-check` schedule emits one
//! a minute) does the same check with no beat, so a silence is noticed even
//! when every worker has gone quiet.
//!
//! The host commits the records with the event: a redelivered event
//! changes nothing, and two events that flag the same worker at once are
//! settled one after the other (a record read and then written is checked
//! at commit), so each silence is reported once.
//!
//! The accepted payloads are the JSON Schemas in `src/schema/` (returned by
//! `describe()`); unknown fields are logged at warn level, and an unusable
//! payload is refused as not retryable.

use cortex_sdk::kv::{self, Bucket};
use cortex_sdk::{
    Contract, Emit, Event, Handler, Leftover, Priority, Reader, Result, SCHEDULE_FIELDS, config_or, json,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One key per worker id, a [`Worker`] record each.
const BUCKET: &str = "heartbeats";
/// The scheduled check: report silent workers without a beat.
const CHECK: &str = "system.heartbeat_check";
const HEARTBEAT: &str = "worker.heartbeat";
/// What workers commonly report with a beat: accepted, not used.
const BEAT_KNOWN: [&str; 4] = ["status", "load", "tasks_in_flight", "current_task"];
/// Silent workers reported per event: keeps a mass outage under the host's
/// per-invocation emit limit; the rest are reported by the next heartbeats.
const MAX_REPORTS: usize = 16;

struct OnWorkerHeartbeat;

impl Handler for OnWorkerHeartbeat {
    const NAME: &'static str = "on-worker-heartbeat";
    const EVENTS: &'static [&'static str] = &[HEARTBEAT, CHECK];
    const EMITS: &'static [&'static str] = &["worker.failed"];
    const CONTRACTS: &'static [Contract] = &[
        Contract { event_type: HEARTBEAT, schema: include_str!("schema/worker.heartbeat.json") },
        Contract { event_type: CHECK, schema: include_str!("schema/system.heartbeat_check.json") },
    ];

    fn handle(event: Event) -> Result<String> {
        let threshold_secs: i64 = config_or("threshold_secs", 90)?;
        if threshold_secs <= 0 {
            return Err("setting threshold_secs must be at least 1".into());
        }
        let bucket = Bucket::open(BUCKET)?;
        let mut workers = Workers::load(&bucket)?;
        let applied = apply(&mut workers, &event, threshold_secs)?;
        applied.leftover.warn();
        // Queued emits and the records are committed together, only if this
        // returns Ok: no flagged-but-unreported worker.
        for follow_up in applied.follow_ups {
            follow_up.send()?;
        }
        workers.save(&bucket)?;
        Ok(applied.summary)
    }
}

cortex_sdk::handler!(OnWorkerHeartbeat);

/// The bucket's records as one event sees them, and which it changed.
#[derive(Debug, Default)]
struct Workers {
    workers: BTreeMap<String, Worker>,
    changed: BTreeSet<String>,
}

impl Workers {
    /// Every worker's record.
    fn load(bucket: &Bucket) -> Result<Workers> {
        let ids = bucket.keys("")?;
        let records = bucket.get_many::<Worker, _>(&ids)?;
        let workers = ids.into_iter().zip(records).filter_map(|(id, w)| Some((id, w?))).collect();
        Ok(Workers { workers, changed: BTreeSet::new() })
    }

    /// Writes the records this event changed (only those: a record written
    /// is checked at commit against the version read).
    fn save(&self, bucket: &Bucket) -> Result<()> {
        for id in &self.changed {
            bucket.set(id, &self.workers[id])?;
        }
        Ok(())
    }
}

/// One worker's record: the value of its key.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
struct Worker {
    /// RFC 3339, as the latest heartbeat gave it.
    last_seen: String,
    last_seen_epoch: i64,
    beats: u64,
    /// Reported silent; cleared by its next heartbeat.
    flagged: bool,
}

#[derive(Debug)]
struct Applied {
    summary: String,
    follow_ups: Vec<Emit>,
    leftover: Leftover,
}

/// The beating worker's id (`None` for the scheduled check).
fn read(event: &Event) -> Result<(Option<String>, Leftover)> {
    let mut p = Reader::new(event);
    let id = if event.event_type == CHECK {
        p.known(SCHEDULE_FIELDS);
        None
    } else {
        p.known(BEAT_KNOWN);
        let id = p.str("worker_id")?.unwrap_or_else(|| event.source.clone());
        if !kv::valid_key(&id) {
            return Err(p.wrong("worker_id", "at most 1024 bytes of text without NUL", &json!(id)));
        }
        Some(id)
    };
    Ok((id, p.finish()))
}

fn apply(workers: &mut Workers, event: &Event, threshold_secs: i64) -> Result<Applied> {
    let now = event.time()?;
    let (id, leftover) = read(event)?;
    let beating = id.map(|id| record_beat(workers, id, event, now));
    let mut follow_ups = Vec::new();
    let mut reported = Vec::new();
    for (other, w) in workers.workers.iter_mut().filter(|(other, _)| beating.as_ref() != Some(*other)) {
        let silent_secs = now - w.last_seen_epoch;
        if w.flagged || silent_secs <= threshold_secs || follow_ups.len() >= MAX_REPORTS {
            continue;
        }
        w.flagged = true;
        workers.changed.insert(other.clone());
        let payload = json!({
            "worker_id": other, "error": "heartbeat timeout", "last_seen": w.last_seen,
            "silent_secs": silent_secs, "threshold_secs": threshold_secs,
        });
        follow_ups.push(Emit::with_payload("worker.failed", payload).priority(Priority::High));
        reported.push(format!("{other} ({silent_secs}s)"));
    }
    let mut summary = match &beating {
        Some(id) => format!("heartbeat {} from {id}", workers.workers[id].beats),
        None => format!("heartbeat check of {} workers", workers.workers.len()),
    };
    if !reported.is_empty() {
        summary.push_str(&format!("; silent past {threshold_secs}s: {}", reported.join(", ")));
    }
    Ok(Applied { summary, follow_ups, leftover })
}

/// Records a `worker.heartbeat` of worker `id`; returns the id.
fn record_beat(workers: &mut Workers, id: String, event: &Event, now: i64) -> String {
    workers.changed.insert(id.clone());
    let me = workers.workers.entry(id.clone()).or_default();
    me.beats += 1;
    // A heartbeat older than the latest one (a late redelivery) proves
    // nothing about the silence since.
    if me.last_seen.is_empty() || now >= me.last_seen_epoch {
        me.last_seen = event.timestamp.clone();
        me.last_seen_epoch = now;
        me.flagged = false;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use cortex_sdk::Value;

    fn beat(worker: &str, secs: i64) -> Event {
        let ts = cortex_sdk::time::format_rfc3339(1_764_590_400 + secs).unwrap();
        let envelope = json!({
            "event_id": format!("evt_20251201_120000_{worker}{secs:06}"), "event_type": "worker.heartbeat",
            "timestamp": ts, "source": "pool", "metadata": {"priority": "low"}, "payload": {"worker_id": worker},
        });
        Event::from_envelope_json(&envelope.to_string()).unwrap()
    }

    fn failed_workers(a: &Applied) -> Vec<Value> {
        a.follow_ups.iter().map(|f| f.payload["worker_id"].clone()).collect()
    }

    #[test]
    fn a_silent_worker_is_reported_once_per_silence() {
        let mut w = Workers::default();
        assert!(apply(&mut w, &beat("a", 0), 90).unwrap().follow_ups.is_empty());
        assert!(apply(&mut w, &beat("b", 0), 90).unwrap().follow_ups.is_empty());
        // 90 s of silence is still within the threshold.
        assert!(apply(&mut w, &beat("b", 90), 90).unwrap().follow_ups.is_empty());

        let a = apply(&mut w, &beat("b", 91), 90).unwrap();
        assert_eq!(failed_workers(&a), [json!("a")]);
        let f = &a.follow_ups[0];
        assert_eq!(f.event_type, "worker.failed");
        assert_eq!(f.payload["error"], "heartbeat timeout");
        assert_eq!(f.payload["silent_secs"], 91);
        assert_eq!(f.payload["threshold_secs"], 90);
        assert_eq!(f.payload["last_seen"], "2025-12-01T12:00:00Z");
        assert!(w.workers["a"].flagged);

        assert!(apply(&mut w, &beat("b", 200), 90).unwrap().follow_ups.is_empty(), "one report per silence");

        // "a" comes back, then goes silent again: a second report.
        assert!(apply(&mut w, &beat("a", 250), 90).unwrap().follow_ups.is_empty());
        assert!(!w.workers["a"].flagged);
        assert_eq!(failed_workers(&apply(&mut w, &beat("b", 400), 90).unwrap()), [json!("a")]);
        assert_eq!(w.workers["b"].beats, 5);
    }

    #[test]
    fn the_scheduled_check_reports_silence_with_no_beat() {
        let mut w = Workers::default();
        apply(&mut w, &beat("a", 0), 90).unwrap();
        apply(&mut w, &beat("b", 50), 90).unwrap();
        let mut check = beat("x", 120);
        check.event_type = CHECK.into();
        check.payload.clear();
        let a = apply(&mut w, &check, 90).unwrap();
        assert_eq!(failed_workers(&a), [json!("a")], "{}", a.summary);
        assert!(a.summary.starts_with("heartbeat check of 2 workers"), "{}", a.summary);
        assert!(!w.workers.contains_key("x"), "a check is not a beat");
        let mut later = beat("y", 200);
        later.event_type = CHECK.into();
        assert_eq!(failed_workers(&apply(&mut w, &later, 90).unwrap()), [json!("b")], "a is reported once");
    }

    #[test]
    fn a_late_heartbeat_does_not_move_last_seen_back() {
        let mut w = Workers::default();
        apply(&mut w, &beat("a", 100), 90).unwrap();
        apply(&mut w, &beat("a", 50), 90).unwrap();
        assert_eq!(w.workers["a"].last_seen_epoch, 1_764_590_500);
        assert_eq!(w.workers["a"].beats, 2);
    }

    #[test]
    fn worker_id_falls_back_to_source_and_must_be_text() {
        let mut w = Workers::default();
        let mut e = beat("a", 0);
        e.payload.clear();
        apply(&mut w, &e, 90).unwrap();
        assert!(w.workers.contains_key("pool"));
        e.id = "evt_20251201_120000_other1".into();
        e.payload.insert("worker_id".into(), json!(["w"]));
        let err = apply(&mut w, &e, 90).unwrap_err();
        assert!(err.message().starts_with("payload.worker_id must be a string") && !err.is_retryable(), "{err}");
        e.payload.insert("worker_id".into(), json!(7));
        apply(&mut w, &e, 90).unwrap();
        assert!(w.workers.contains_key("7"), "a number is taken as its text");
    }

    #[test]
    fn unknown_fields_are_named_and_the_schedules_fields_known() {
        let mut w = Workers::default();
        let mut e = beat("a", 0);
        e.payload.insert("load".into(), json!(0.5));
        e.payload.insert("gpu_temp".into(), json!(71));
        assert_eq!(apply(&mut w, &e, 90).unwrap().leftover.ignored, ["gpu_temp"]);
        let mut check = beat("x", 10);
        check.event_type = CHECK.into();
        check.payload = json!({"schedule": "heartbeat-check", "tick": "t", "missed": 0}).as_object().unwrap().clone();
        assert!(apply(&mut w, &check, 90).unwrap().leftover.ignored.is_empty());
    }

    #[test]
    fn the_contracts_match_the_parser() {
        let fixture = Event::from_envelope_json(include_str!("../fixtures/worker-heartbeat.json")).unwrap();
        let mut full = beat("a", 0);
        for (k, v) in json!({"status": "busy", "current_task": "t"}).as_object().unwrap() {
            full.payload.insert(k.clone(), v.clone());
        }
        let read = |e: &Event| read(e).map(|(_, left)| left);
        cortex_sdk::contract::check(OnWorkerHeartbeat::CONTRACTS[0].schema, &[fixture, full], read).unwrap();
        let mut check = beat("x", 10);
        check.event_type = CHECK.into();
        check.payload = json!({"schedule": "heartbeat-check", "tick": "t", "missed": 0}).as_object().unwrap().clone();
        cortex_sdk::contract::check(OnWorkerHeartbeat::CONTRACTS[1].schema, &[check], read).unwrap();
    }

    #[test]
    fn only_the_changed_records_are_written_and_read_back() {
        let bucket = Bucket::open(BUCKET).unwrap();
        let mut w = Workers::load(&bucket).unwrap();
        apply(&mut w, &beat("a", 0), 90).unwrap();
        apply(&mut w, &beat("b", 0), 90).unwrap();
        w.save(&bucket).unwrap();
        let mut w = Workers::load(&bucket).unwrap();
        assert_eq!(w.workers.len(), 2);
        assert!(w.changed.is_empty());
        let a = apply(&mut w, &beat("b", 100), 90).unwrap();
        assert_eq!(failed_workers(&a), [json!("a")]);
        assert_eq!(w.changed.iter().collect::<Vec<_>>(), ["a", "b"]);
        w.save(&bucket).unwrap();
        let stored = cortex_sdk::kv::memory::dump(BUCKET);
        let a: Worker = serde_json::from_str(&stored["a"]).unwrap();
        assert!(a.flagged && a.beats == 1, "{a:?}");
        let mut quiet = Workers::load(&bucket).unwrap();
        assert_eq!(quiet.workers["b"].beats, 2);
        apply(&mut quiet, &beat("c", 100), 90).unwrap();
        assert_eq!(quiet.changed.iter().collect::<Vec<_>>(), ["c"], "nobody new to flag: only the beat is written");
    }

    #[test]
    fn fixture_applies() {
        let mut w = Workers::default();
        let e = Event::from_envelope_json(include_str!("../fixtures/worker-heartbeat.json")).unwrap();
        apply(&mut w, &e, 90).unwrap();
        assert_eq!(w.workers["worker-7"].beats, 1);
    }
}
