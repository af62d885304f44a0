//! What the committer tells an observer after each durable group commit:
//! one [`Settled`] per event (its type, id, source, correlation id, how it
//! ended, each handler's result and time), so the service can stream the
//! events live and keep per-handler statistics without reading the archive.
//!
//! The committer calls [`Observe::settled`] on its own thread after the
//! batch is durable: an observer must never block (the service's appends
//! the batch to a bounded inbox its own thread publishes from).

use serde::{Deserialize, Serialize};

use crate::queue::{Settlement, Verdict, now_us};
use crate::records::{FaultKind, Outcome};

/// Told of every event a dispatch run settles, after its batch is durable.
pub trait Observe: Send + Sync {
    /// A batch just settled. Called on the committer's thread: return at
    /// once (hand the batch on, never wait for a reader).
    fn settled(&self, batch: Vec<Settled>);
}

/// How an event's delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ending {
    /// Archived: every handler it routes to succeeded.
    Handled,
    /// Archived: no handler routes to it.
    Unhandled,
    /// Put back for another attempt after a failure.
    Retried,
    /// Moved to the dead-letter queue.
    DeadLettered,
    /// Put back unrun (a handler it routes to does not load, or its state
    /// writes conflicted).
    Deferred,
}

/// One handler's run on a settled event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandlerResult {
    pub handler: String,
    /// Why it failed; none when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultKind>,
    pub duration_ms: f64,
}

impl HandlerResult {
    pub fn ok(&self) -> bool {
        self.fault.is_none()
    }
}

/// One settled event, as the live stream sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settled {
    pub event_id: String,
    pub event_type: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    pub priority: String,
    pub attempt: u32,
    pub ending: Ending,
    /// The handlers that ran on this delivery.
    pub handlers: Vec<HandlerResult>,
    /// From its queueing to its settlement (this delivery's entry).
    pub latency_ms: f64,
    /// When it settled (µs since the epoch).
    pub settled_us: u64,
}

impl Settled {
    /// What `s` says, read before it is handed to the queue.
    pub fn of(s: &Settlement) -> Settled {
        let (event, name) = (&s.claim.event, &s.claim.name);
        let failed = |history: &[crate::queue::AttemptRecord]| -> Vec<HandlerResult> {
            history
                .iter()
                .rev()
                .take(1)
                .filter(|a| a.attempt == name.attempt)
                .flat_map(|a| &a.failures)
                .map(|f| HandlerResult {
                    handler: f.handler.clone(),
                    fault: Some(f.fault.kind),
                    duration_ms: f.duration_ms,
                })
                .collect()
        };
        let (ending, handlers) = match &s.verdict {
            Verdict::Ack(r) => {
                let ending = if r.outcome == Outcome::Unhandled { Ending::Unhandled } else { Ending::Handled };
                let runs = r
                    .handlers
                    .iter()
                    .map(|h| HandlerResult { handler: h.name.clone(), fault: None, duration_ms: h.duration_ms })
                    .collect();
                (ending, runs)
            }
            Verdict::Retry { delivery, .. } => (Ending::Retried, failed(&delivery.history)),
            Verdict::DeadLetter(r) => (Ending::DeadLettered, failed(r.history.as_deref().unwrap_or_default())),
            Verdict::Defer { .. } => (Ending::Deferred, Vec::new()),
        };
        let now = now_us();
        Settled {
            event_id: event.event_id.clone(),
            event_type: event.event_type.clone(),
            source: event.source.clone(),
            correlation_id: event.correlation_id.clone(),
            priority: name.priority.to_string(),
            attempt: name.attempt,
            ending,
            handlers,
            latency_ms: now.saturating_sub(name.enqueued_us) as f64 / 1000.0,
            settled_us: now,
        }
    }
}
