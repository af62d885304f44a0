//! Every record Cortex writes and reads back, one Serialize/Deserialize type
//! each, used by its writer and its readers alike: the archive line
//! ([`ArchiveRecord`]), the dead letter ([`DeadLetterRecord`]), a queue
//! entry's delivery history ([`Delivery`]), a running service's status file
//! ([`ServiceStatus`]), and the marks a replay or a dead-letter retry leaves
//! in an event's metadata ([`ReplayMark`], [`RetryMark`]). The kinds of
//! failure they record are one enum, [`FaultKind`].
//!
//! Records outlive the code that wrote them: a reader must still read what
//! an older Cortex left on disk. So every field a past version did not
//! write has a default, renamed keys keep their old name as an alias, and
//! unknown keys are ignored; the unit tests below read the old shapes.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::event::Event;
use crate::sandbox::Fault;

pub mod marks;
pub mod report;
pub mod webhook;

pub use marks::{CausedBy, ReplayMark, RetryMark};
pub use report::HarnessReport;
pub use webhook::{EndpointDisabled, OutboxRecord, WebhookRef};

/// Why a handler run, or a delivery, failed. The names are the words
/// written into records, metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// The handler returned an error; a retry may help.
    Error,
    /// The handler's error said a retry cannot help (e.g. a malformed
    /// payload): dead-lettered at once.
    Refused,
    /// Past its wall-clock deadline (`limits.deadline_ms`).
    Timeout,
    /// Out of fuel (`limits.fuel`).
    Fuel,
    /// Past its memory limit (`limits.memory_mb`).
    Memory,
    StackOverflow,
    /// Wrote past `limits.output_bytes` to stdout/stderr.
    OutputLimit,
    /// Wrote past `limits.write_bytes` or `limits.max_new_files`.
    WriteLimit,
    /// Held more than `limits.max_open_files` open.
    FdLimit,
    /// Any other trap: a panic, `unreachable`, an out-of-bounds access.
    Trap,
    /// The instance could not be made (missing import, limits at start).
    Instantiate,
    /// The handler was not loaded when the event reached it.
    Load,
    /// Its claim outlived the lease: its dispatcher stopped.
    LeaseExpired,
    /// Its dispatcher died holding the claim (its lock was free).
    OwnerDied,
    /// A webhook delivery failed: an answer other than 2xx, a timeout or a
    /// connection error.
    Webhook,
    /// A kind this version does not know (written by a newer one).
    #[serde(other)]
    Unknown,
}

impl FaultKind {
    /// The record's word for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Error => "error",
            FaultKind::Refused => "refused",
            FaultKind::Timeout => "timeout",
            FaultKind::Fuel => "fuel",
            FaultKind::Memory => "memory",
            FaultKind::StackOverflow => "stack-overflow",
            FaultKind::OutputLimit => "output-limit",
            FaultKind::WriteLimit => "write-limit",
            FaultKind::FdLimit => "fd-limit",
            FaultKind::Trap => "trap",
            FaultKind::Instantiate => "instantiate",
            FaultKind::Load => "load",
            FaultKind::LeaseExpired => "lease-expired",
            FaultKind::OwnerDied => "owner-died",
            FaultKind::Webhook => "webhook",
            FaultKind::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failure of one handler on one delivery: the handler, its component,
/// and the [`Fault`] (kind, message, detail). The dispatcher itself fails a
/// delivery too (a lease that ran out): then `handler` is empty.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failure {
    #[serde(default)]
    pub handler: String,
    #[serde(default)]
    pub component_sha256: String,
    #[serde(flatten)]
    pub fault: Fault,
    #[serde(default)]
    pub duration_ms: f64,
}

/// One delivery that did not succeed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttemptRecord {
    pub attempt: u32,
    #[serde(default)]
    pub at: String,
    #[serde(default)]
    pub failures: Vec<Failure>,
}

/// What earlier deliveries of a queue entry left (`events/attempts/<key>.json`):
/// their failures, and the handlers that already succeeded (they are not
/// run again).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Delivery {
    #[serde(default)]
    pub history: Vec<AttemptRecord>,
    #[serde(default)]
    pub done: Vec<String>,
}

/// Whether an archived event reached any handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every handler it routes to succeeded.
    #[default]
    Handled,
    /// No handler routes to it.
    Unhandled,
}

/// One line of an archive day file (`events/archive/<date>.jsonl`): an
/// event that was settled, and how.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArchiveRecord {
    pub event: Event,
    #[serde(default)]
    pub outcome: Outcome,
    /// The queue entry's key: recovery's proof that the entry was settled.
    #[serde(default)]
    pub entry: String,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub archived_at: String,
    /// From the rename into the queue to the ack, in microseconds.
    #[serde(default)]
    pub latency_us: u64,
    /// The handlers that succeeded on this delivery.
    #[serde(default)]
    pub handlers: Vec<HandlerRun>,
    /// The handlers that had succeeded on earlier deliveries.
    #[serde(default)]
    pub earlier_handlers: Vec<String>,
}

/// A handler's successful run, in an archive record.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HandlerRun {
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub component_sha256: String,
    #[serde(default)]
    pub summary: String,
    #[serde(default)]
    pub duration_ms: f64,
    /// When the invocation started (RFC 3339, µs; empty in records written
    /// before it was kept): with `duration_ms`, when it ran, e.g. to see
    /// that a `concurrency = 1` handler never ran twice at once.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub started: String,
    /// The event ids it emitted.
    #[serde(default)]
    pub emitted: Vec<String>,
}

/// A dead letter (`events/dead-letter/<key>.json`, or `invalid-….json` for
/// a file that was not an event): what failed for good, and the forensic
/// record of why. One shape for its three writers: the dispatcher (an
/// event that failed, looped or was delivered too often), and the queue (a
/// claimed entry that is not a readable event; a file dropped into
/// `events/queue/` that is not one).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DeadLetterRecord {
    /// The event; `None` for a file that was not one (see `raw`). An event
    /// that no longer parses reads as `None` rather than failing the record.
    #[serde(default, deserialize_with = "lenient_event", skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
    /// Where it came from: the queue entry's key, or the path of a file
    /// dropped into the queue by hand (older records call that `file`).
    #[serde(default, alias = "file", skip_serializing_if = "String::is_empty")]
    pub entry: String,
    /// The text of a file that was not an event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub dead_lettered_at: String,
    #[serde(default)]
    pub reason: String,
    /// The handlers whose failures dead-lettered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_handlers: Option<Vec<HandlerRef>>,
    /// The handlers that had already succeeded (a retry skips them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded_handlers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<AttemptRecord>>,
    /// The link of an event loop cut at `dispatch.max_hops`.
    #[serde(default, rename = "loop", skip_serializing_if = "Option::is_none")]
    pub cut_loop: Option<LoopLink>,
    /// Set when what failed for good is a webhook delivery of the event
    /// (which itself was handled): `dlq retry` delivers it again rather
    /// than running the event's handlers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookRef>,
}

impl DeadLetterRecord {
    /// The record of something that was not a readable event: its raw
    /// text, where it came from (an entry key or a dropped file's path), why.
    pub fn not_an_event(raw: String, entry: String, reason: String, at: String) -> DeadLetterRecord {
        DeadLetterRecord { raw: Some(raw), entry, reason, dead_lettered_at: at, ..DeadLetterRecord::default() }
    }

    /// For a record without an event: the path of the file dropped into
    /// the queue it came from, when it came from one (not a queue entry).
    pub fn dropped_file(&self) -> Option<&str> {
        let is_key = crate::queue::key_event_id(&self.entry).is_some_and(crate::event::is_valid_event_id);
        (self.event.is_none() && !self.entry.is_empty() && !is_key).then_some(self.entry.as_str())
    }

    /// The handlers that had already succeeded on the event.
    pub fn succeeded(&self) -> &[String] {
        self.succeeded_handlers.as_deref().unwrap_or_default()
    }
}

/// Reads a dead letter's `event`, or `None` when it is not one.
fn lenient_event<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Event>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    Ok(v.and_then(|v| serde_json::from_value(v).ok()))
}

/// A handler named in a dead letter.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HandlerRef {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub component_sha256: String,
    #[serde(default)]
    pub version: String,
}

/// The link that closed an event loop: handler `handler`, handling
/// `trigger_type` event `trigger_id`, emitted an `event_type` event
/// `hops` steps of `caused_by` from a producer's event.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LoopLink {
    #[serde(default)]
    pub hops: u64,
    #[serde(default)]
    pub max_hops: u32,
    #[serde(default = "unknown")]
    pub handler: String,
    #[serde(default = "unknown")]
    pub trigger_type: String,
    #[serde(default = "unknown")]
    pub trigger_id: String,
    #[serde(default = "unknown")]
    pub event_type: String,
}

fn unknown() -> String {
    "?".into()
}

/// What a running `cortex serve` says about itself in
/// `run/services/<pid>.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub pid: u32,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[serde(default)]
    pub listen: Option<String>,
    #[serde(default)]
    pub updated_at: String,
    /// The versions serving, by handler name.
    #[serde(default)]
    pub handlers: BTreeMap<String, Serving>,
    /// Handlers that do not load, with why.
    #[serde(default)]
    pub not_loading: BTreeMap<String, String>,
}

/// The version of a handler a service is serving.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Serving {
    #[serde(default)]
    pub sha256: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub component: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event() -> Value {
        json!({
            "event_id": "evt_20251201_120000_abc123", "event_type": "task.created",
            "timestamp": "2025-12-01T12:00:00Z", "source": "s"
        })
    }

    #[test]
    fn fault_kinds_have_their_record_names() {
        for kind in [
            FaultKind::Error,
            FaultKind::Refused,
            FaultKind::StackOverflow,
            FaultKind::OutputLimit,
            FaultKind::LeaseExpired,
            FaultKind::OwnerDied,
            FaultKind::Webhook,
        ] {
            let text = serde_json::to_value(kind).unwrap();
            assert_eq!(text, kind.as_str());
            assert_eq!(serde_json::from_value::<FaultKind>(text).unwrap(), kind);
        }
        assert_eq!(serde_json::from_value::<FaultKind>(json!("from-the-future")).unwrap(), FaultKind::Unknown);
    }

    #[test]
    fn an_archive_line_round_trips_and_old_lines_read() {
        let record = ArchiveRecord {
            event: serde_json::from_value(event()).unwrap(),
            outcome: Outcome::Unhandled,
            entry: "2-0000000000000001-evt_20251201_120000_abc123".into(),
            attempts: 2,
            archived_at: "2025-12-01T12:00:01.000+00:00".into(),
            latency_us: 500,
            handlers: vec![HandlerRun { name: "h".into(), emitted: vec!["evt_x".into()], ..HandlerRun::default() }],
            earlier_handlers: vec!["g".into()],
        };
        let line = serde_json::to_string(&record).unwrap();
        assert!(line.contains(&format!("\"entry\":\"{}\"", record.entry)), "recovery's proof needle: {line}");
        assert_eq!(serde_json::from_str::<ArchiveRecord>(&line).unwrap(), record);
        // A line of an older version: no earlier_handlers, no latency.
        let mut old = json!({"event": event(), "outcome": "handled", "entry": "k", "attempts": 1,
            "archived_at": "t", "handlers": [{"name": "h", "version": "1", "component_sha256": "ab",
            "summary": "ok", "duration_ms": 1.5, "emitted": []}]});
        let r: ArchiveRecord = serde_json::from_value(old.clone()).unwrap();
        assert_eq!((r.outcome, r.latency_us, r.handlers[0].summary.as_str()), (Outcome::Handled, 0, "ok"));
        old["outcome"] = json!("sideways");
        assert!(serde_json::from_value::<ArchiveRecord>(old).is_err(), "an unknown outcome is not guessed");
    }

    #[test]
    fn dead_letters_of_every_writer_read_back() {
        // The dispatcher's, as written before the record was typed.
        let old = json!({
            "event": event(), "entry": "2-0000000000000001-evt_20251201_120000_abc123",
            "attempts": 3, "max_attempts": 3, "dead_lettered_at": "2025-12-01T12:00:00Z",
            "reason": "h: boom (error)",
            "failed_handlers": [{"name": "h", "component_sha256": "ab", "version": "1.0"}],
            "succeeded_handlers": ["g"],
            "history": [{"attempt": 1, "at": "t", "failures": [{"handler": "h", "component_sha256": "ab",
                "kind": "error", "message": "boom", "duration_ms": 2.0}]}],
        });
        let r: DeadLetterRecord = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(r.succeeded(), ["g"]);
        assert_eq!(r.history.as_ref().unwrap()[0].failures[0].fault.kind, FaultKind::Error);
        assert_eq!(r.dropped_file(), None);
        let again = serde_json::to_value(&r).unwrap();
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&again), keys(&old), "written back with the same keys");
        assert_eq!(serde_json::from_value::<DeadLetterRecord>(again).unwrap(), r);

        // A file dropped into the queue, from before `file` became `entry`.
        let dropped: DeadLetterRecord = serde_json::from_value(json!({
            "raw": "{not json", "file": "events/queue/dropped.json",
            "dead_lettered_at": "2025-01-01T00:00:00Z", "reason": "malformed JSON"
        }))
        .unwrap();
        assert_eq!(dropped.dropped_file(), Some("events/queue/dropped.json"));
        assert_eq!(dropped.raw.as_deref(), Some("{not json"));

        // A queue entry that was not a readable event.
        let unreadable = DeadLetterRecord::not_an_event(
            "garbage".into(),
            "1-0000000000000009-evt_20251201_120000_abc123".into(),
            "not JSON".into(),
            "t".into(),
        );
        let back: DeadLetterRecord = serde_json::from_str(&serde_json::to_string(&unreadable).unwrap()).unwrap();
        assert_eq!(back, unreadable);
        assert_eq!(back.dropped_file(), None, "an entry key is not a dropped file");

        // An event that no longer parses leaves the rest readable.
        let r: DeadLetterRecord =
            serde_json::from_value(json!({"event": {"event_id": 7}, "reason": "why", "loop": {"hops": 9}})).unwrap();
        assert!(r.event.is_none());
        assert_eq!(r.reason, "why");
        assert_eq!(r.cut_loop.unwrap().handler, "?");
    }

    #[test]
    fn delivery_records_round_trip() {
        let d = Delivery {
            history: vec![AttemptRecord {
                attempt: 1,
                at: "t".into(),
                failures: vec![Failure {
                    handler: String::new(),
                    component_sha256: String::new(),
                    fault: Fault { kind: FaultKind::LeaseExpired, message: "held".into(), detail: String::new() },
                    duration_ms: 3.0,
                }],
            }],
            done: vec!["a".into()],
        };
        let text = serde_json::to_string(&d).unwrap();
        assert!(text.contains("\"kind\":\"lease-expired\"") && !text.contains("detail"), "{text}");
        assert_eq!(serde_json::from_str::<Delivery>(&text).unwrap(), d);
    }

    #[test]
    fn service_status_reads_what_older_services_wrote() {
        let s: ServiceStatus = serde_json::from_value(json!({"pid": 42, "listen": null, "updated_at": "t"})).unwrap();
        assert_eq!((s.pid, s.handlers.len()), (42, 0));
        let s = ServiceStatus {
            pid: 7,
            listen: Some("127.0.0.1:9".into()),
            updated_at: "t".into(),
            handlers: [("h".to_string(), Serving { sha256: "ab".into(), version: "1".into(), component: "c".into() })]
                .into(),
            not_loading: [("b".to_string(), "why".to_string())].into(),
        };
        assert_eq!(serde_json::from_value::<ServiceStatus>(serde_json::to_value(&s).unwrap()).unwrap(), s);
    }
}
