//! What a dispatcher holds and how it ends it: a [`Claim`] (the entry, its
//! event, what earlier deliveries left), the [`Verdict`] on it, and the
//! [`Settlement`] that carries both with the events its handlers emitted.
//!
//! Crash story: these live in memory only. A settlement becomes durable in
//! one group commit (see `commit`); until then the claim file is the truth,
//! and a claim whose dispatcher died is taken back (see `recover`).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::EntryName;
use crate::event::Event;

/// One failure of one handler on one delivery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failure {
    pub handler: String,
    pub component_sha256: String,
    /// `trap`, `timeout`, `error` (the handler's `Err`), `lease-expired`, `invalid`…
    pub kind: String,
    pub message: String,
    /// The full error chain (wasm backtrace included), when there is one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    pub duration_ms: f64,
}

/// One delivery that did not succeed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub at: String,
    pub failures: Vec<Failure>,
}

/// What earlier deliveries of a queue entry left: their failures, and the
/// handlers that already succeeded (they are not run again).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Delivery {
    #[serde(default)]
    pub history: Vec<AttemptRecord>,
    #[serde(default)]
    pub done: Vec<String>,
}

/// An event a dispatcher holds.
#[derive(Debug, Clone)]
pub struct Claim {
    pub name: EntryName,
    pub event: Event,
    pub delivery: Delivery,
}

/// How a claim ends.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Done: archive this record.
    Ack(Value),
    /// Run again no earlier than `due`, remembering `delivery`.
    Retry { due: SystemTime, delivery: Delivery },
    /// Failed for good: keep this forensic record.
    DeadLetter(Value),
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
