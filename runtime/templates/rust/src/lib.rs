//! {{name}}: a Cortex event handler.
//!
//! The host calls `handle` once per event, each time in a fresh instance, so
//! anything to remember goes to a file under a read-write grant. Return
//! `Err` to have the event retried (then dead-lettered after max_attempts).

wit_bindgen::generate!({ world: "handler", path: "wit" });

use cortex::events::types::Priority;

struct Component;

impl Guest for Component {
    fn describe() -> Info {
        Info { name: "{{name}}".into(), version: env!("CARGO_PKG_VERSION").into(), events: vec![{{events_rust}}] }
    }

    fn handle(event: Event) -> Result<Outcome, String> {
        let payload: serde_json::Value =
            serde_json::from_str(&event.payload).map_err(|e| format!("payload is not JSON: {e}"))?;
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
            })?;
            return Ok(Outcome { summary: format!("forwarded {} as {forward_as}", event.event_id) });
        }
        Ok(Outcome { summary: format!("handled {} {} ({fields} payload fields)", event.event_type, event.event_id) })
    }
}

export!(Component);
