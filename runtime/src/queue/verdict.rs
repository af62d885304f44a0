//! What a dispatcher holds and how it ends it: a [`Claim`] (the entry, its
//! event, what earlier deliveries left), the [`Verdict`] on it, and the
//! [`Settlement`] that carries both with the events its handlers emitted.
//!
//! Crash story: these live in memory only. A settlement becomes durable in
//! one group commit (see `commit`); until then the claim file is the truth,
//! and a claim whose dispatcher died is taken back (see `recover`).

use std::time::SystemTime;

use super::{EntryName, now_rfc3339, now_us};
use crate::event::Event;
use crate::records::{ArchiveRecord, DeadLetterRecord, Delivery, HandlerRun, Outcome};

/// An event a dispatcher holds.
#[derive(Debug, Clone)]
pub struct Claim {
    pub name: EntryName,
    pub event: Event,
    pub delivery: Delivery,
}

impl Claim {
    /// Its archive record, settled now: `handlers` are the runs of this
    /// delivery that succeeded.
    pub fn archived(&self, outcome: Outcome, handlers: Vec<HandlerRun>) -> ArchiveRecord {
        ArchiveRecord {
            event: self.event.clone(),
            outcome,
            entry: self.name.key(),
            attempts: self.name.attempt,
            archived_at: now_rfc3339(),
            // From the rename into the queue to this ack.
            latency_us: now_us().saturating_sub(self.name.enqueued_us),
            handlers,
            earlier_handlers: self.delivery.done.clone(),
        }
    }
}

/// How a claim ends.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Done: archive this record.
    Ack(Box<ArchiveRecord>),
    /// Run again no earlier than `due`, remembering `delivery`.
    Retry { due: SystemTime, delivery: Delivery },
    /// Failed for good: keep this forensic record.
    DeadLetter(Box<DeadLetterRecord>),
    /// Not run (a handler it routes to does not load): back in the queue
    /// no earlier than `due`, with the same attempt number.
    Defer { due: SystemTime },
}

/// A claim, the events its handlers emitted, and its verdict.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub claim: Claim,
    pub emitted: Vec<Event>,
    pub verdict: Verdict,
}

/// An event settled in the same step as its batch's key-value writes (see
/// [`super::Queue::settle_with_state`]): `settlement`, or `rerun` instead
/// when a write of it is refused as a conflict (`None`: it runs again
/// already, `settlement` is its re-run).
#[derive(Debug, Clone)]
pub struct Joint {
    pub settlement: Settlement,
    pub rerun: Option<Settlement>,
}
