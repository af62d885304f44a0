//! Outbound webhooks: events delivered by the host (handlers keep no
//! network access) to the endpoints `[webhooks.NAME]` names, as CloudEvents
//! (or their bare payload) signed per Standard Webhooks.
//!
//! The pipeline, and its crash story:
//! 1. When an event is **archived** (handled, or unhandled because no
//!    handler routes to it), the group commit that settles it also writes
//!    one delivery record per endpoint whose `events` globs match its type
//!    into `events/outbox/<endpoint>/<webhook-id>.json` (staged in
//!    `events/tmp/`, made durable by the same `syncfs`, renamed before the
//!    archive line). A dead-lettered event is not delivered; retried from
//!    the dead-letter queue and archived, it is.
//! 2. The `webhook-id` is derived from the endpoint and the event id
//!    ([`webhook_id`]): an event settled twice after a crash writes the
//!    same file again, and every attempt carries the same id, so a
//!    receiver that deduplicates by `webhook-id` sees one delivery.
//! 3. `cortex serve` runs the [`Deliverer`]: a task per endpoint with its
//!    own concurrency, retries with exponential backoff and full jitter, a
//!    circuit breaker, and a timeout per attempt, so a slow endpoint never
//!    stalls dispatch or another endpoint. A 2xx removes the record; a
//!    `410 Gone` disables the endpoint; `max_attempts` failures turn it
//!    into a dead letter that `cortex dlq retry` puts back in the outbox.
//!    A crash mid-delivery leaves the record: it is sent again (at least
//!    once) with the same `webhook-id`. `cortex dispatch` writes records
//!    but does not send them: the next `cortex serve` does.
//!
//! - [`sign`]: the `webhook-signature` header, and its check for receivers.
//! - `outbox`: the record files, the disabled mark, dead letters.
//! - `breaker`: backoff and the circuit breaker (pure logic).
//! - `deliver`: the [`Deliverer`] and the HTTP client.
//! - [`metrics`]: per-endpoint Prometheus metrics.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::event::Event;
use crate::records::OutboxRecord;

mod breaker;
mod deliver;
pub mod metrics;
pub mod outbox;
pub mod sign;

pub use deliver::Deliverer;
pub use outbox::{EndpointStatus, enable, endpoint_status};

/// The `webhook-id` of `event_id`'s delivery to `endpoint`: `msg_` and 32
/// hex digits of a SHA-256 of both, the same on every attempt and every
/// redelivery.
pub fn webhook_id(endpoint: &str, event_id: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"cortex-webhook\0")
        .chain_update(endpoint)
        .chain_update(b"\0")
        .chain_update(event_id)
        .finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

/// SHA-256 of a URL, hex: how a disabled mark remembers which URL it is
/// for without writing the URL (which may hold a token) to disk.
pub fn url_sha256(url: &str) -> String {
    Sha256::digest(url.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// One endpoint as the queue routes to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub events: Vec<String>,
    /// As logs show it (see [`crate::config::WebhookConfig::shown_url`]).
    pub shown_url: String,
    pub url_sha256: String,
}

/// The endpoints of a config, as the settling queue needs them: which
/// events go where. No secrets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routes {
    pub endpoints: Vec<Route>,
}

impl Routes {
    pub fn of(config: &Config) -> Arc<Routes> {
        Arc::new(Routes {
            endpoints: config
                .webhooks
                .iter()
                .map(|(name, w)| Route {
                    name: name.clone(),
                    events: w.events.clone(),
                    shown_url: w.shown_url(),
                    url_sha256: url_sha256(&w.url),
                })
                .collect(),
        })
    }

    pub fn get(&self, name: &str) -> Option<&Route> {
        self.endpoints.iter().find(|r| r.name == name)
    }

    /// The delivery records an archived `event` owes: one per endpoint
    /// whose globs match its type.
    pub fn deliveries(&self, event: &Event) -> Vec<OutboxRecord> {
        self.endpoints
            .iter()
            .filter(|r| crate::pattern::any_match(&r.events, &event.event_type))
            .map(|r| OutboxRecord {
                webhook_id: webhook_id(&r.name, &event.event_id),
                endpoint: r.name.clone(),
                event: event.clone(),
                created_at: crate::queue::now_rfc3339(),
                created_us: crate::queue::now_us(),
                attempts: 0,
                next_attempt_ms: 0,
                history: Vec::new(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_ids_are_stable_and_distinct() {
        let a = webhook_id("slack", "evt_20251201_120000_abc123");
        assert_eq!(a, webhook_id("slack", "evt_20251201_120000_abc123"));
        assert_eq!(a.len(), 4 + 32);
        assert!(a.starts_with("msg_"));
        assert_ne!(a, webhook_id("pager", "evt_20251201_120000_abc123"));
        assert_ne!(a, webhook_id("slack", "evt_20251201_120000_abc124"));
        // No ambiguity between the parts.
        assert_ne!(webhook_id("a", "bc"), webhook_id("ab", "c"));
    }

    #[test]
    fn routes_match_globs() {
        let config = Config::parse(
            "[webhooks.slack]\nurl = \"https://hooks.slack.com/services/x\"\nevents = [\"notification.*\"]\n\
             [webhooks.all]\nurl = \"http://127.0.0.1:9/\"\nevents = [\"*\"]\n",
        )
        .unwrap();
        let routes = Routes::of(&config);
        let event: Event = serde_json::from_value(serde_json::json!({
            "event_id": "evt_20251201_120000_abc123", "event_type": "notification.requested",
            "timestamp": "2025-12-01T12:00:00Z", "source": "s"
        }))
        .unwrap();
        let names: Vec<String> = routes.deliveries(&event).into_iter().map(|r| r.endpoint).collect();
        assert_eq!(names, ["all", "slack"]);
        let mut other = event.clone();
        other.event_type = "task.created".into();
        assert_eq!(routes.deliveries(&other).len(), 1);
        assert!(!routes.get("slack").unwrap().shown_url.contains("services"));
    }
}
