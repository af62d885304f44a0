//! {{name}}: a Cortex event handler.
//!
//! The host calls `handle` once per event, each time in a fresh instance, so
//! anything to remember goes to a file under a read-write grant. Return a
//! `HandlerError` that says whether a retry can help: `retryable: true` has
//! the event retried (then dead-lettered after max_attempts), `false`
//! dead-letters it at once (a payload no retry can fix).

wit_bindgen::generate!({ world: "handler", path: "wit", generate_all });

use cortex::events::types::{Contract, Priority};

/// The payload contract `describe` publishes (a JSON Schema); `cortex
/// handlers list --verbose` shows it.
const SCHEMA: &str = r#"{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"}"#;

/// An error that a retry cannot fix: the event itself is wrong.
fn refuse(message: String) -> HandlerError {
    HandlerError { message, retryable: false }
}

struct Component;

impl Guest for Component {
    fn describe() -> Info {
        let events: Vec<String> = vec![{{events_rust}}];
        Info {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contracts: events
                .iter()
                .filter(|e| !e.contains('*'))
                .map(|e| Contract { event_type: e.clone(), schema: SCHEMA.into() })
                .collect(),
            events,
            // Event types it may emit; `cortex handlers check` compares them
            // with [events] custom_types and this handler's emits setting.
            emits: vec!["{{forward_example}}".into()],
        }
    }

    fn handle(event: Event) -> Result<Outcome, HandlerError> {
        let payload: serde_json::Value =
            serde_json::from_str(&event.payload).map_err(|e| refuse(format!("payload is not JSON: {e}")))?;
        let fields = payload.as_object().map_or(0, |o| o.len());
        log(Level::Info, &format!("handling {} {} (attempt {})", event.event_type, event.event_id, event.attempt));

        // Optional: pass the event on as another type, set in cortex.toml:
        // [handlers.{{name}}.settings] forward_as = "{{forward_example}}"
        if let Some(forward_as) = config("forward_as") {
            let body = serde_json::json!({ "original_event_id": event.event_id, "original": payload });
            emit(&NewEvent {
                event_type: forward_as.clone(),
                payload: body.to_string(),
                source: None,
                correlation_id: None,
                priority: Some(Priority::Medium),
                master: event.master.clone(),
                tags: vec![],
            })
            .map_err(|e| HandlerError { message: format!("could not forward: {e}"), retryable: true })?;
            return Ok(Outcome { summary: format!("forwarded {} as {forward_as}", event.event_id) });
        }
        Ok(Outcome { summary: format!("handled {} {} ({fields} payload fields)", event.event_type, event.event_id) })
    }
}

export!(Component);
