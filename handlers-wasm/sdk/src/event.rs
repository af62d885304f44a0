//! The event a handler receives: the WIT `event` record with its payload and
//! metadata parsed into JSON objects, plus an envelope parser for unit tests
//! and the priority names.

use crate::{Error, Map, Priority, Result, Value};

/// One event, as the handler receives it.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub event_type: String,
    /// RFC 3339 with an offset (the host validated it).
    pub timestamp: String,
    pub source: String,
    pub correlation_id: Option<String>,
    pub master: Option<String>,
    pub priority: Priority,
    pub tags: Vec<String>,
    /// Metadata keys beyond master, priority and tags.
    pub metadata: Map<String, Value>,
    pub payload: Map<String, Value>,
    /// 1 on the first delivery.
    pub attempt: u32,
}

impl Event {
    /// The payload as a typed value.
    ///
    /// # Errors
    /// A refusal when the payload does not fit `T`, naming the event type.
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(Value::Object(self.payload.clone()))
            .map_err(|e| Error::refuse(format!("{} payload does not fit: {e}", self.event_type)))
    }

    /// A payload string field, if present.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.payload.get(key).and_then(Value::as_str)
    }

    /// Seconds since the Unix epoch of the event's timestamp.
    pub fn epoch_seconds(&self) -> Option<i64> {
        crate::time::parse_rfc3339(&self.timestamp)
    }

    /// The event's timestamp in seconds since the epoch.
    ///
    /// # Errors
    /// A refusal when the timestamp is not RFC 3339 (the host validates it,
    /// so only a hand-made event can fail).
    pub fn time(&self) -> Result<i64> {
        self.epoch_seconds()
            .ok_or_else(|| Error::refuse(format!("event timestamp {:?} is not RFC 3339", self.timestamp)))
    }

    pub fn priority_name(&self) -> &'static str {
        priority_name(self.priority)
    }

    /// An event from its JSON envelope as producers write it (`event_id`,
    /// `event_type`, `timestamp`, `source`, `correlation_id`, `metadata`,
    /// `payload`), as the first delivery: for tests.
    ///
    /// # Errors
    /// When the text is not a JSON object or a required field is missing.
    pub fn from_envelope_json(text: &str) -> Result<Event> {
        let envelope: Map<String, Value> =
            serde_json::from_str(text).map_err(|e| format!("event envelope is not a JSON object: {e}"))?;
        let text_field = |key: &str| {
            envelope
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| Error::refuse(format!("envelope {key} is missing")))
        };
        let mut metadata = match envelope.get("metadata") {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        let priority = match metadata.remove("priority") {
            Some(Value::String(p)) => {
                parse_priority(&p).ok_or_else(|| format!("metadata.priority {p:?} is unknown"))?
            }
            _ => Priority::Medium,
        };
        let master = metadata.remove("master").and_then(|m| m.as_str().map(str::to_string));
        let tags = match metadata.remove("tags") {
            Some(Value::Array(tags)) => tags.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        };
        Ok(Event {
            id: text_field("event_id")?,
            event_type: text_field("event_type")?,
            timestamp: text_field("timestamp")?,
            source: text_field("source")?,
            correlation_id: envelope.get("correlation_id").and_then(Value::as_str).map(str::to_string),
            master,
            priority,
            tags,
            metadata,
            payload: match envelope.get("payload") {
                Some(Value::Object(p)) => p.clone(),
                _ => Map::new(),
            },
            attempt: 1,
        })
    }
}

impl From<crate::bindings::cortex::events::types::Event> for Event {
    fn from(e: crate::bindings::cortex::events::types::Event) -> Event {
        let object = |text: &str| match serde_json::from_str(text) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        Event {
            metadata: object(&e.metadata),
            payload: object(&e.payload),
            id: e.event_id,
            event_type: e.event_type,
            timestamp: e.timestamp,
            source: e.source,
            correlation_id: e.correlation_id,
            master: e.master,
            priority: e.priority,
            tags: e.tags,
            attempt: e.attempt,
        }
    }
}

pub fn priority_name(p: Priority) -> &'static str {
    match p {
        Priority::Critical => "critical",
        Priority::High => "high",
        Priority::Medium => "medium",
        Priority::Low => "low",
    }
}

/// Parses a priority name (`critical`, `high`, `medium`, `low`).
pub fn parse_priority(name: &str) -> Option<Priority> {
    match name {
        "critical" => Some(Priority::Critical),
        "high" => Some(Priority::High),
        "medium" => Some(Priority::Medium),
        "low" => Some(Priority::Low),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_parses() {
        let e = Event::from_envelope_json(
            r#"{"event_id":"evt_20251201_120000_abc123","event_type":"task.failed","timestamp":"2025-12-01T12:00:00-06:00",
                "source":"w","metadata":{"priority":"high","master":"m","tags":["a"],"replay":true},"payload":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(e.priority, Priority::High);
        assert_eq!(e.master.as_deref(), Some("m"));
        assert_eq!(e.tags, vec!["a"]);
        assert_eq!(e.metadata.get("replay"), Some(&Value::Bool(true)));
        assert_eq!(e.epoch_seconds(), Some(1_764_612_000));
        assert_eq!(e.time(), Ok(1_764_612_000));
        let err = Event::from_envelope_json(r#"{"event_type":"x"}"#).unwrap_err();
        assert!(err.message().contains("event_id"), "{err}");
    }

    #[test]
    fn a_payload_that_does_not_fit_is_refused() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct P {
            n: u32,
        }
        let mut e = Event::from_envelope_json(
            r#"{"event_id":"e","event_type":"t.x","timestamp":"2025-12-01T12:00:00Z","source":"s","payload":{"n":"x"}}"#,
        )
        .unwrap();
        let err = e.payload::<P>().err().unwrap();
        assert!(!err.is_retryable() && err.message().starts_with("t.x payload does not fit"), "{err}");
        e.timestamp = "yesterday".into();
        assert!(!e.time().unwrap_err().is_retryable());
    }
}
