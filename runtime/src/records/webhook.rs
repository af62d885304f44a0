//! The records of outbound webhooks: a delivery waiting in the outbox
//! ([`OutboxRecord`], `events/outbox/<endpoint>/<webhook-id>.json`), the
//! mark of an endpoint that answered `410 Gone` ([`EndpointDisabled`],
//! `events/outbox/<endpoint>/disabled.json`), and what a dead letter says
//! about the delivery that failed for good ([`WebhookRef`]).

use serde::{Deserialize, Serialize};

use super::AttemptRecord;
use crate::event::Event;

/// One delivery of one event to one endpoint, written in the group commit
/// that settles the event and removed once the endpoint answered 2xx.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutboxRecord {
    /// The `webhook-id` header: derived from the endpoint and the event id
    /// (see [`crate::webhooks::webhook_id`]), so every attempt and every
    /// redelivery of the event carries the same one.
    pub webhook_id: String,
    pub endpoint: String,
    pub event: Event,
    #[serde(default)]
    pub created_at: String,
    /// Microseconds since the epoch: deliveries go out oldest first.
    #[serde(default)]
    pub created_us: u64,
    /// Attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    /// Not before this (ms since the epoch); 0 for at once.
    #[serde(default)]
    pub next_attempt_ms: u64,
    /// The failed attempts (kind `webhook`, with the status or error).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<AttemptRecord>,
}

/// An endpoint that answered `410 Gone`: nothing is sent to it until the
/// mark is removed (`cortex webhooks enable NAME`) or its `url` changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EndpointDisabled {
    #[serde(default)]
    pub at: String,
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub reason: String,
    /// SHA-256 of the URL that answered: a config with another URL
    /// re-enables the endpoint.
    #[serde(default)]
    pub url_sha256: String,
}

/// The delivery a webhook dead letter stands for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WebhookRef {
    pub endpoint: String,
    pub webhook_id: String,
    /// As [`crate::config::WebhookConfig::shown_url`] shows it.
    #[serde(default)]
    pub url: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_records_round_trip_and_minimal_ones_read() {
        let event: Event = serde_json::from_value(serde_json::json!({
            "event_id": "evt_20251201_120000_abc123", "event_type": "task.created",
            "timestamp": "2025-12-01T12:00:00Z", "source": "s"
        }))
        .unwrap();
        let r = OutboxRecord {
            webhook_id: "msg_1".into(),
            endpoint: "slack".into(),
            event: event.clone(),
            created_at: "t".into(),
            created_us: 1,
            attempts: 2,
            next_attempt_ms: 3,
            history: vec![AttemptRecord { attempt: 1, at: "t".into(), failures: Vec::new() }],
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<OutboxRecord>(&text).unwrap(), r);
        let min = serde_json::json!({"webhook_id": "msg_1", "endpoint": "slack", "event": event});
        let m: OutboxRecord = serde_json::from_value(min).unwrap();
        assert_eq!((m.attempts, m.next_attempt_ms, m.history.len()), (0, 0, 0));
    }
}
