//! The producer side: build events, validate them, log them and queue them —
//! the seed's `create_event` + `log_event`, one at a time or as a batch.
//!
//! The event id is the idempotency key: a batch line whose event is already
//! in the batch, queued, being handled, dead-lettered or archived is skipped
//! and reported (a producer re-sending a batch after a failure gets each
//! event once), while invalid lines still reject the whole batch.

use std::collections::HashMap;
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

/// A batch line that was not queued because its event is already known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The line number in the batch.
    pub line: usize,
    pub event_id: String,
    /// Where the event already is: "on line N of this batch", "queued",
    /// "being handled", "dead-lettered" or "archived".
    pub already: String,
}

impl std::fmt::Display for Duplicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: skipped event {}: already {}", self.line, self.event_id, self.already)
    }
}

/// What a batch queued, and the duplicate lines it skipped.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<Event>,
    pub skipped: Vec<Duplicate>,
}

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
    /// that are completed with an id, a timestamp and default metadata),
    /// skips the events already in the batch or in the store, then queues the
    /// rest in one group commit — or none.
    ///
    /// # Errors
    /// [`BadBatch`] listing each bad line; I/O errors.
    pub fn emit_batch(&self, input: impl BufRead) -> Result<Batch> {
        let batch = self.parse_batch(input)?;
        self.queue.enqueue(&batch.events).context("failed to queue the batch; none of it was queued")?;
        Ok(batch)
    }

    /// The validation half of [`Producer::emit_batch`]: the valid events
    /// not yet known, and the duplicates skipped.
    ///
    /// # Errors
    /// [`BadBatch`] listing each bad line; errors reading the input or
    /// looking up which events the store already holds.
    pub fn parse_batch(&self, input: impl BufRead) -> Result<Batch> {
        let mut batch = Batch::default();
        // The line each event of the batch came from, and whether its id was
        // given (a fresh id needs no look-up).
        let mut lines: Vec<(usize, bool)> = Vec::new();
        let mut bad = Vec::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let mut total = 0;
        for (i, line) in input.lines().enumerate() {
            let line = line.with_context(|| format!("failed to read batch line {}", i + 1))?;
            // A byte order mark, as some editors write, is not part of the first event.
            let line = if i == 0 { line.strip_prefix('\u{feff}').unwrap_or(&line) } else { &line };
            if line.trim().is_empty() {
                continue;
            }
            total += 1;
            match self.build(line) {
                Ok((e, _)) if first_line.contains_key(&e.event_id) => batch.skipped.push(Duplicate {
                    line: i + 1,
                    already: format!("on line {} of this batch", first_line[&e.event_id]),
                    event_id: e.event_id,
                }),
                Ok((e, given)) => {
                    first_line.insert(e.event_id.clone(), i + 1);
                    lines.push((i + 1, given));
                    batch.events.push(e);
                }
                Err(why) => bad.push((i + 1, why)),
            }
        }
        if !bad.is_empty() {
            return Err(BadBatch { lines: bad, total }.into());
        }
        let given: Vec<&Event> = batch.events.iter().zip(&lines).filter(|(_, (_, g))| *g).map(|(e, _)| e).collect();
        let known = self.queue.known(&given).context("failed to check which events of the batch are already known")?;
        if !known.is_empty() {
            let events = std::mem::take(&mut batch.events);
            for (e, (line, _)) in events.into_iter().zip(lines) {
                match known.get(&e.event_id) {
                    Some(place) => {
                        batch.skipped.push(Duplicate { line, event_id: e.event_id, already: (*place).to_string() })
                    }
                    None => batch.events.push(e),
                }
            }
            batch.skipped.sort_by_key(|d| d.line);
        }
        Ok(batch)
    }

    /// One line's event, and whether the line gave its id.
    fn build(&self, line: &str) -> std::result::Result<(Event, bool), String> {
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
        let given = obj.contains_key("event_id");
        let value = if given { Value::Object(obj) } else { complete(obj)? };
        self.validator
            .validate(value)
            .map(|e| (e, given))
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
