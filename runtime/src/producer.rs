//! The producer side: build events, validate them, log them and queue them —
//! the seed's `create_event` + `log_event`, one at a time or as a batch.

use std::collections::HashSet;
use std::io::BufRead;

use anyhow::{Context, Result};
use serde_json::{Map, Value};

use crate::event::{Event, Invalid, NewEvent, Validator, kind};
use crate::queue::Queue;

/// Builds and queues events for one root.
pub struct Producer<'q> {
    queue: &'q dyn Queue,
    validator: Validator,
}

/// A rejected batch: every bad line with its problems. Nothing was queued.
#[derive(Debug)]
pub struct BadBatch {
    pub lines: Vec<(usize, String)>,
    pub total: usize,
}

impl std::fmt::Display for BadBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "batch rejected: {} of {} lines are bad; nothing was queued", self.lines.len(), self.total)?;
        for (n, why) in &self.lines {
            writeln!(f, "line {n}: {why}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BadBatch {}

impl<'q> Producer<'q> {
    pub fn new(queue: &'q dyn Queue, validator: Validator) -> Producer<'q> {
        Producer { queue, validator }
    }

    /// Builds, validates, logs and durably queues one event.
    ///
    /// # Errors
    /// [`Invalid`] when the event is rejected; I/O errors when it cannot be
    /// written (then it is not queued).
    pub fn emit(&self, new: NewEvent) -> Result<Event> {
        let event = self.validator.validate(new.into_value())?;
        self.queue.enqueue(std::slice::from_ref(&event)).context("failed to queue the event")?;
        Ok(event)
    }

    /// Validates every line of a JSONL batch (full events, or partial ones
    /// that are completed with an id, a timestamp and default metadata), then
    /// queues all of them in one group commit — or none.
    ///
    /// # Errors
    /// [`BadBatch`] listing each bad line; I/O errors.
    pub fn emit_batch(&self, input: impl BufRead) -> Result<Vec<Event>> {
        let events = self.parse_batch(input)?;
        self.queue.enqueue(&events).context("failed to queue the batch; none of it was queued")?;
        Ok(events)
    }

    /// The validation half of [`Producer::emit_batch`].
    ///
    /// # Errors
    /// [`BadBatch`] listing each bad line; errors reading the input.
    pub fn parse_batch(&self, input: impl BufRead) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        let mut bad = Vec::new();
        let mut ids = HashSet::new();
        let mut total = 0;
        for (i, line) in input.lines().enumerate() {
            let line = line.with_context(|| format!("failed to read batch line {}", i + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            total += 1;
            match self.build(&line) {
                Ok(e) if !ids.insert(e.event_id.clone()) => {
                    bad.push((i + 1, format!("event_id: {} appears twice in this batch", e.event_id)))
                }
                Ok(e) => events.push(e),
                Err(why) => bad.push((i + 1, why)),
            }
        }
        if !bad.is_empty() {
            return Err(BadBatch { lines: bad, total }.into());
        }
        Ok(events)
    }

    fn build(&self, line: &str) -> std::result::Result<Event, String> {
        if line.len() > self.validator.max_event_bytes() {
            return Err(format!(
                "(document): line is {} bytes, over the {} byte limit (limits.max_event_bytes in cortex.toml)",
                line.len(),
                self.validator.max_event_bytes()
            ));
        }
        let value: Value = serde_json::from_str(line).map_err(|e| format!("(document): malformed JSON: {e}"))?;
        let Value::Object(obj) = value else {
            return Err(format!("(document): expected a JSON object, found {}", kind(&value)));
        };
        let value = if obj.contains_key("event_id") { Value::Object(obj) } else { complete(obj)? };
        self.validator
            .validate(value)
            .map_err(|Invalid(problems)| problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
    }
}

/// Fills in what a partial event lacks; `priority`, `master` and `tags` may
/// be given at the top level as shorthand for their `metadata` fields.
fn complete(mut obj: Map<String, Value>) -> std::result::Result<Value, String> {
    let base = NewEvent::default().into_value();
    let mut metadata = match obj.remove("metadata") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(v) => return Err(format!("metadata: expected an object, found {}", kind(&v))),
    };
    for key in ["priority", "master", "tags"] {
        if let Some(v) = obj.remove(key) {
            metadata.insert(key.into(), v);
        }
    }
    metadata.entry("priority").or_insert_with(|| Value::String("medium".into()));
    obj.insert("metadata".into(), Value::Object(metadata));
    obj.insert("event_id".into(), base["event_id"].clone());
    obj.entry("timestamp").or_insert_with(|| base["timestamp"].clone());
    obj.entry("payload").or_insert_with(|| Value::Object(Map::new()));
    Ok(Value::Object(obj))
}
