//! The marks a replay or a dead-letter retry leaves in an event's
//! `metadata` ([`ReplayMark`] under `replay`, [`RetryMark`] under
//! `dlq_retry`), written by `cortex replay` and `cortex dlq retry` and read
//! by routing (a replay limited to one handler; the handlers a retry
//! skips) and by reports; and the link the host puts on every follow-up
//! ([`CausedBy`] under `caused_by`), read by `cortex trace`.

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// `metadata.replay` of a replayed event: how often it was replayed, when
/// (the last [`ReplayMark::MAX_HISTORY`] times), and the one handler it is
/// limited to, if any (`cortex replay --handler`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReplayMark {
    #[serde(default)]
    pub count: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_at: String,
    #[serde(default)]
    pub history: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
}

/// `metadata.dlq_retry` of an event retried from the dead-letter queue:
/// how often, when last, and the handlers that had already succeeded on it
/// (the dispatcher skips them).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RetryMark {
    #[serde(default)]
    pub count: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_at: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip: Vec<String>,
}

/// `metadata.caused_by` of a follow-up event, set by the host alone on
/// every handler emit: the triggering event, its type, the handler that
/// emitted, and how many emits separate it from a producer's event.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CausedBy {
    pub event_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub event_type: String,
    #[serde(default)]
    pub handler: String,
    /// 1 for a follow-up recorded before hops were.
    #[serde(default = "one_hop")]
    pub hops: u64,
}

fn one_hop() -> u64 {
    1
}

impl CausedBy {
    /// Its key in `metadata`.
    pub const KEY: &'static str = "caused_by";

    /// The link an event carries, if any (a producer's event has none).
    pub fn of(event: &Event) -> Option<CausedBy> {
        mark(event, Self::KEY)
    }
}

impl ReplayMark {
    /// Its key in `metadata`.
    pub const KEY: &'static str = "replay";
    /// Replay times kept in `history`; `count` keeps counting.
    pub const MAX_HISTORY: usize = 50;

    /// The mark an event carries, if any.
    pub fn of(event: &Event) -> Option<ReplayMark> {
        mark(event, Self::KEY)
    }

    /// Writes this mark into the event's metadata.
    pub fn put(&self, event: &mut Event) {
        put_mark(event, Self::KEY, self);
    }
}

impl RetryMark {
    /// Its key in `metadata`.
    pub const KEY: &'static str = "dlq_retry";

    /// The mark an event carries, if any.
    pub fn of(event: &Event) -> Option<RetryMark> {
        mark(event, Self::KEY)
    }

    /// Writes this mark into the event's metadata.
    pub fn put(&self, event: &mut Event) {
        put_mark(event, Self::KEY, self);
    }
}

/// A mark of `metadata`; one that does not read as its type is treated as
/// absent (metadata is the producer's, and a hand-edited event may carry
/// anything there).
fn mark<T: serde::de::DeserializeOwned>(event: &Event, key: &str) -> Option<T> {
    event.metadata.extra.get(key).and_then(|v| T::deserialize(v).ok())
}

fn put_mark(event: &mut Event, key: &str, mark: &impl Serialize) {
    // A struct of strings, numbers and lists always serializes.
    let v = serde_json::to_value(mark).unwrap_or_default();
    event.metadata.extra.insert(key.into(), v);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn marks_round_trip_and_odd_ones_read_as_absent() {
        let mut e: Event = serde_json::from_value(json!({
            "event_id": "evt_20251201_120000_abc123", "event_type": "task.created",
            "timestamp": "2025-12-01T12:00:00Z", "source": "s"
        }))
        .unwrap();
        assert_eq!(ReplayMark::of(&e), None);
        let mark = ReplayMark { count: 2, last_at: "t".into(), history: vec!["s".into(), "t".into()], handler: None };
        mark.put(&mut e);
        assert_eq!(e.metadata.extra["replay"], json!({"count": 2, "last_at": "t", "history": ["s", "t"]}));
        assert_eq!(ReplayMark::of(&e), Some(mark));
        e.metadata.extra.insert("dlq_retry".into(), json!({"count": 1, "last_at": "t", "skip": ["a"]}));
        assert_eq!(RetryMark::of(&e).unwrap().skip, ["a"]);
        e.metadata.extra.insert("dlq_retry".into(), json!("retried once"));
        assert_eq!(RetryMark::of(&e), None);
        assert_eq!(CausedBy::of(&e), None);
        e.metadata.extra.insert("caused_by".into(), json!({"event_id": "evt_x", "handler": "h"}));
        assert_eq!(CausedBy::of(&e).map(|c| (c.event_id, c.hops)), Some(("evt_x".into(), 1)));
    }
}
