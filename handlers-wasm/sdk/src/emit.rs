//! Follow-up events. An [`Emit`] is plain data until [`Emit::send`] hands it
//! to the host, so pure handler logic can decide what to emit and its unit
//! tests can inspect that without a host. The host fills in the id and
//! timestamp and keeps the emit only if `handle` returns `Ok`.

use crate::{Map, Priority, Result, Value};
use serde::Serialize;

/// A follow-up event under construction.
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    pub event_type: String,
    /// A JSON object.
    pub payload: Value,
    /// `None`: the handler's name.
    pub source: Option<String>,
    /// `None`: the triggering event's correlation id.
    pub correlation_id: Option<String>,
    /// `None`: the host's default (medium).
    pub priority: Option<Priority>,
    pub master: Option<String>,
    pub tags: Vec<String>,
}

impl Emit {
    /// An event of `event_type` with an empty payload.
    pub fn new(event_type: &str) -> Emit {
        Emit::with_payload(event_type, Value::Object(Map::new()))
    }

    /// An event of `event_type` carrying `payload` (a JSON object).
    pub fn with_payload(event_type: &str, payload: Value) -> Emit {
        Emit {
            event_type: event_type.into(),
            payload,
            source: None,
            correlation_id: None,
            priority: None,
            master: None,
            tags: Vec::new(),
        }
    }

    /// Sets the payload from any serializable value (it must be an object).
    ///
    /// # Errors
    /// When it does not serialize.
    pub fn payload(mut self, payload: &impl Serialize) -> Result<Emit> {
        self.payload = serde_json::to_value(payload).map_err(|e| format!("payload does not serialize: {e}"))?;
        Ok(self)
    }

    pub fn priority(mut self, p: Priority) -> Emit {
        self.priority = Some(p);
        self
    }

    pub fn correlation_id(mut self, id: impl Into<String>) -> Emit {
        self.correlation_id = Some(id.into());
        self
    }

    pub fn source(mut self, s: impl Into<String>) -> Emit {
        self.source = Some(s.into());
        self
    }

    pub fn master(mut self, m: impl Into<String>) -> Emit {
        self.master = Some(m.into());
        self
    }

    pub fn tag(mut self, t: impl Into<String>) -> Emit {
        self.tags.push(t.into());
        self
    }

    /// Hands the event to the host; returns its id.
    ///
    /// # Errors
    /// A retryable error with the host's reason when it refuses the event
    /// (invalid, or over the emit limit).
    pub fn send(self) -> Result<String> {
        let event = crate::bindings::NewEvent {
            event_type: self.event_type,
            payload: self.payload.to_string(),
            source: self.source,
            correlation_id: self.correlation_id,
            priority: self.priority,
            master: self.master,
            tags: self.tags,
        };
        Ok(crate::bindings::emit(&event)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json;

    #[test]
    fn an_emit_is_plain_data() {
        let e = Emit::new("task.created").payload(&json!({"task_id": "t"})).unwrap().priority(Priority::High);
        assert_eq!(e.payload, json!({"task_id": "t"}));
        assert_eq!(e.priority, Some(Priority::High));
        let e = Emit::with_payload("a.b", json!({"n": 1})).correlation_id("c").master("m").source("s").tag("x");
        assert_eq!(
            (e.correlation_id.as_deref(), e.master.as_deref(), e.source.as_deref()),
            (Some("c"), Some("m"), Some("s"))
        );
        assert_eq!(e.tags, ["x"]);
        assert_eq!(Emit::new("a.b").payload, json!({}));
    }
}
