//! Routing: event type patterns to handlers.
//!
//! A pattern is an exact type or a glob ([`crate::pattern`]). An event goes to
//! every handler with a matching pattern, and is done when all of them succeed.
//! A replayed or retried event may carry a narrower route in its metadata
//! (see [`allows`]).

use crate::config::Config;
use crate::event::Event;
use crate::records::{ReplayMark, RetryMark};

/// The names of the handlers an event type reaches, in name order.
pub fn handlers_for<'c>(config: &'c Config, event_type: &str) -> Vec<&'c str> {
    config.handlers.iter().filter(|(_, h)| h.matches(event_type)).map(|(n, _)| n.as_str()).collect()
}

/// Whether a replayed or retried event may still reach handler `name`:
/// `cortex replay --handler` limits a replay to one handler
/// (`metadata.replay.handler`), and `cortex dlq retry` skips the handlers
/// that already succeeded on the event (`metadata.dlq_retry.skip`).
pub fn allows(event: &Event, name: &str) -> bool {
    if event.metadata.extra.is_empty() {
        return true;
    }
    let only = ReplayMark::of(event).and_then(|r| r.handler);
    let skip = RetryMark::of(event).map(|r| r.skip).unwrap_or_default();
    only.is_none_or(|o| o == name) && !skip.iter().any(|h| h == name)
}

/// The handlers an event reaches: those of its type ([`handlers_for`])
/// that its metadata [`allows`].
pub fn handlers_for_event<'c>(config: &'c Config, event: &Event) -> Vec<&'c str> {
    handlers_for(config, &event.event_type).into_iter().filter(|n| allows(event, n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_and_retries_narrow_the_route() {
        let mut e: Event = serde_json::from_value(serde_json::json!({
            "event_id": "evt_20251201_120000_abc123", "event_type": "task.created",
            "timestamp": "2025-12-01T12:00:00Z", "source": "s"
        }))
        .unwrap();
        assert!(allows(&e, "a") && allows(&e, "b"));
        e.metadata.extra.insert("replay".into(), serde_json::json!({"count": 1, "handler": "a"}));
        assert!(allows(&e, "a") && !allows(&e, "b"));
        e.metadata.extra.remove("replay");
        e.metadata.extra.insert("dlq_retry".into(), serde_json::json!({"count": 1, "skip": ["a"]}));
        assert!(!allows(&e, "a") && allows(&e, "b"));
    }
}
