//! The producer side: build events, validate them, log them and queue them —
//! the seed's `create_event` + `log_event`, one at a time, as a JSONL batch,
//! or from CloudEvents (one, or a batch; see [`crate::cloudevents`]).
//!
//! The event id is the idempotency key: a batch item whose event is already
//! in the batch, queued, being handled, dead-lettered or archived is skipped
//! and reported (a producer re-sending a batch after a failure gets each
//! event once), while invalid items still reject the whole batch. A JSONL
//! batch and a CloudEvents batch go through the same [`Item`] sorting.

use std::collections::HashMap;
use std::io::BufRead;

use anyhow::{Context, Result};
use serde_json::{Map, Value};

use crate::cloudevents;
use crate::event::{Event, Invalid, NewEvent, Problem, Validator, kind};
use crate::queue::Queue;

/// Builds and queues events for one root.
pub struct Producer<'q> {
    queue: &'q dyn Queue,
    validator: Validator,
}

/// Where an item of a batch sits: a line of a JSONL batch, or an element
/// of a JSON array (a CloudEvents batch); both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum At {
    Line(usize),
    Element(usize),
}

impl At {
    /// The unit's name in the plural, for counts.
    fn plural(self) -> &'static str {
        match self {
            At::Line(_) => "lines",
            At::Element(_) => "events",
        }
    }
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Line(n) => write!(f, "line {n}"),
            At::Element(n) => write!(f, "event {n}"),
        }
    }
}

/// A rejected batch: every bad item with its problems. Nothing was queued.
#[derive(Debug)]
pub struct BadBatch {
    /// Each bad item with its problems (printed on one line, joined by "; ").
    pub items: Vec<(At, Invalid)>,
    pub total: usize,
}

impl std::fmt::Display for BadBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = self.items.first().map_or("lines", |(at, _)| at.plural());
        writeln!(f, "batch rejected: {} of {} {unit} are bad; nothing was queued", self.items.len(), self.total)?;
        for (at, why) in &self.items {
            writeln!(f, "{at}: {why}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BadBatch {}

/// A batch item that was not queued because its event is already known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// Where the item is in the batch.
    pub at: At,
    pub event_id: String,
    /// Where the event already is: "on line N of this batch", "queued",
    /// "being handled", "dead-lettered" or "archived".
    pub already: String,
}

impl std::fmt::Display for Duplicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: skipped event {}: already {}", self.at, self.event_id, self.already)
    }
}

/// What a batch queued, and the duplicate items it skipped.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<Event>,
    pub skipped: Vec<Duplicate>,
}

/// One item of a batch, built: where it is, its event or why it is bad,
/// and whether its id was given (a fresh id needs no look-up).
#[derive(Debug)]
pub struct Item {
    pub at: At,
    pub event: std::result::Result<Event, Invalid>,
    pub id_given: bool,
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
        let mut lines = Vec::new();
        for (i, line) in input.lines().enumerate() {
            let mut line = line.with_context(|| format!("failed to read batch line {}", i + 1))?;
            // A byte order mark, as some editors write, is not part of the first event.
            if i == 0 && line.starts_with('\u{feff}') {
                line.drain(..'\u{feff}'.len_utf8());
            }
            if !line.trim().is_empty() {
                lines.push((i + 1, line));
            }
        }
        let items = in_parallel(&lines, |(n, line)| {
            let (event, id_given) = match self.build(line) {
                Ok((e, given)) => (Ok(e), given),
                Err(why) => (Err(why), false),
            };
            Item { at: At::Line(*n), event, id_given }
        });
        self.sort_items(items)
    }

    /// Converts CloudEvents (one structured-mode event; a batch, a JSON
    /// array of them; or JSON lines, one each, as `cortex export` writes
    /// them) into events, skips those already known — a CloudEvent's
    /// Cortex id is derived from its `source` and `id`, so a re-send is
    /// recognised — and queues the rest in one group commit, or none.
    ///
    /// # Errors
    /// [`Invalid`] for a single CloudEvent, problems named by attribute;
    /// [`BadBatch`] listing each bad element or line of a batch; I/O errors.
    pub fn emit_cloudevents(&self, text: &str) -> Result<Batch> {
        let batch = self.parse_cloudevents(text)?;
        self.queue.enqueue(&batch.events).context("failed to queue the CloudEvents; none of them was queued")?;
        Ok(batch)
    }

    /// The validation half of [`Producer::emit_cloudevents`].
    ///
    /// # Errors
    /// As [`Producer::emit_cloudevents`], but writes nothing.
    pub fn parse_cloudevents(&self, text: &str) -> Result<Batch> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let now = chrono::Utc::now();
        let lines = || text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let items = match serde_json::from_str::<Value>(text) {
            Ok(value @ Value::Array(_)) => cloudevents::from_batch(&self.validator, &value, now)?
                .into_iter()
                .enumerate()
                .map(|(i, r)| Item { at: At::Element(i + 1), event: r, id_given: true })
                .collect(),
            Ok(value) => {
                let event = cloudevents::from_structured(&self.validator, &value, now)?;
                vec![Item { at: At::Element(1), event: Ok(event), id_given: true }]
            }
            // More than one document, the first a line of its own: JSON lines.
            Err(_)
                if lines().nth(1).is_some()
                    && lines().next().is_some_and(|(_, l)| serde_json::from_str::<Value>(l).is_ok()) =>
            {
                lines()
                    .map(|(i, line)| {
                        let event = serde_json::from_str::<Value>(line)
                            .map_err(|e| document(format!("malformed JSON: {e}")))
                            .and_then(|ce| cloudevents::from_structured(&self.validator, &ce, now));
                        Item { at: At::Line(i + 1), event, id_given: true }
                    })
                    .collect()
            }
            Err(e) => {
                let problem = Problem { path: "(document)".into(), message: format!("malformed JSON: {e}") };
                return Err(Invalid(vec![problem]).into());
            }
        };
        self.sort_items(items)
    }

    /// Rejects the whole batch when any item is bad; else skips the items
    /// whose event is already in the batch or in the store.
    ///
    /// # Errors
    /// [`BadBatch`] listing each bad item; errors looking up which events
    /// the store already holds.
    fn sort_items(&self, items: Vec<Item>) -> Result<Batch> {
        let mut batch = Batch::default();
        // Where each event of the batch came from, and whether its id was given.
        let mut from: Vec<(At, bool)> = Vec::new();
        let mut bad = Vec::new();
        let mut first: HashMap<String, At> = HashMap::new();
        let total = items.len();
        for item in items {
            match item.event {
                Ok(e) if first.contains_key(&e.event_id) => batch.skipped.push(Duplicate {
                    at: item.at,
                    already: format!("on {} of this batch", first[&e.event_id]),
                    event_id: e.event_id,
                }),
                Ok(e) => {
                    first.insert(e.event_id.clone(), item.at);
                    from.push((item.at, item.id_given));
                    batch.events.push(e);
                }
                Err(why) => bad.push((item.at, why)),
            }
        }
        if !bad.is_empty() {
            return Err(BadBatch { items: bad, total }.into());
        }
        let given: Vec<&Event> = batch.events.iter().zip(&from).filter(|(_, (_, g))| *g).map(|(e, _)| e).collect();
        let known = self.queue.known(&given).context("failed to check which events of the batch are already known")?;
        if !known.is_empty() {
            let events = std::mem::take(&mut batch.events);
            for (e, (at, _)) in events.into_iter().zip(from) {
                match known.get(&e.event_id) {
                    Some(place) => {
                        batch.skipped.push(Duplicate { at, event_id: e.event_id, already: (*place).to_string() })
                    }
                    None => batch.events.push(e),
                }
            }
            batch.skipped.sort_by_key(|d| d.at);
        }
        Ok(batch)
    }

    /// One line's event, and whether the line gave its id.
    fn build(&self, line: &str) -> std::result::Result<(Event, bool), Invalid> {
        if line.len() > self.validator.max_event_bytes() {
            return Err(document(format!(
                "line is {} bytes, over the {} byte limit (limits.max_event_bytes in cortex.toml)",
                line.len(),
                self.validator.max_event_bytes()
            )));
        }
        let value: Value = serde_json::from_str(line).map_err(|e| document(format!("malformed JSON: {e}")))?;
        self.envelope(value)
    }

    /// One envelope's event, full or partial (see [`complete`]), and
    /// whether it gave its id.
    fn envelope(&self, value: Value) -> std::result::Result<(Event, bool), Invalid> {
        let Value::Object(obj) = value else {
            return Err(document(format!("expected a JSON object, found {}", kind(&value))));
        };
        let given = obj.contains_key("event_id");
        let value = if given { Value::Object(obj) } else { complete(obj).map_err(|p| Invalid(vec![p]))? };
        self.validator.validate(value).map(|e| (e, given))
    }

    /// Validates Cortex JSON as `POST /v1/events` takes it: one envelope
    /// (a JSON object) or a batch (a JSON array of them), each full or
    /// partial as a line of [`Producer::parse_batch`]; skips the events
    /// already known.
    ///
    /// # Errors
    /// [`Invalid`] for one envelope, problems by field; [`BadBatch`]
    /// listing each bad element of a batch; errors looking up which events
    /// the store already holds.
    pub fn parse_json(&self, text: &str) -> Result<Batch> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let value: Value = serde_json::from_str(text).map_err(|e| document(format!("malformed JSON: {e}")))?;
        let items = match value {
            Value::Array(values) => values
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    let (event, id_given) = match self.envelope(v) {
                        Ok((e, given)) => (Ok(e), given),
                        Err(problems) => (Err(problems), false),
                    };
                    Item { at: At::Element(i + 1), event, id_given }
                })
                .collect(),
            value => {
                let (event, id_given) = self.envelope(value)?;
                vec![Item { at: At::Element(1), event: Ok(event), id_given }]
            }
        };
        self.sort_items(items)
    }

    /// Validates a binary-mode CloudEvent (attributes in `ce-*` headers,
    /// the data in `body`; see [`cloudevents::from_binary`]) and skips it
    /// when already known.
    ///
    /// # Errors
    /// [`Invalid`], problems named by header or attribute; errors looking
    /// up whether the store already holds it.
    pub fn parse_binary<'a>(
        &self,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        body: &[u8],
    ) -> Result<Batch> {
        let event = cloudevents::from_binary(&self.validator, headers, body, chrono::Utc::now())?;
        self.sort_items(vec![Item { at: At::Element(1), event: Ok(event), id_given: true }])
    }
}

/// Items per thread below which a batch is built on one thread.
const PER_THREAD: usize = 2048;
/// Threads that build a batch's items, at most.
const MAX_THREADS: usize = 4;

/// `build` of every element of `all`, in order: on as many threads as the
/// machine has cores (up to [`MAX_THREADS`]) when the batch is large, since
/// parsing and validating is most of a producer's work while the store
/// waits for the batch.
fn in_parallel<T: Sync, U: Send>(all: &[T], build: impl Fn(&T) -> U + Sync) -> Vec<U> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let threads = cores.min(MAX_THREADS).min(all.len() / PER_THREAD).max(1);
    if threads == 1 {
        return all.iter().map(build).collect();
    }
    let build = &build;
    std::thread::scope(|scope| {
        let parts: Vec<_> = all
            .chunks(all.len().div_ceil(threads))
            .map(|part| scope.spawn(move || part.iter().map(build).collect::<Vec<U>>()))
            .collect();
        let mut out = Vec::with_capacity(all.len());
        for part in parts {
            match part.join() {
                Ok(built) => out.extend(built),
                // A panic in a builder is a bug: re-raised as it was.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

/// A problem with a document as a whole.
fn document(message: String) -> Invalid {
    Invalid(vec![Problem { path: "(document)".into(), message }])
}

/// Fills in what a partial event lacks; `priority`, `master` and `tags` may
/// be given at the top level as shorthand for their `metadata` fields.
fn complete(mut obj: Map<String, Value>) -> std::result::Result<Value, Problem> {
    let now = chrono::Local::now().fixed_offset();
    let mut metadata = match obj.remove("metadata") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(v) => {
            return Err(Problem {
                path: "metadata".into(),
                message: format!("expected an object, found {}", kind(&v)),
            });
        }
    };
    for key in ["priority", "master", "tags"] {
        if let Some(v) = obj.remove(key) {
            metadata.insert(key.into(), v);
        }
    }
    metadata.entry("priority").or_insert_with(|| Value::String("medium".into()));
    obj.insert("metadata".into(), Value::Object(metadata));
    obj.insert("event_id".into(), Value::String(crate::event::new_event_id(&now)));
    obj.entry("timestamp").or_insert_with(|| Value::String(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, false)));
    obj.entry("payload").or_insert_with(|| Value::Object(Map::new()));
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_large_batch_is_built_in_order_whatever_the_threads() {
        let all: Vec<usize> = (0..super::PER_THREAD * 5 + 7).collect();
        let built = super::in_parallel(&all, |n| (*n, std::thread::current().id()));
        assert!(built.iter().map(|(n, _)| *n).eq(all.iter().copied()));
        let threads: std::collections::BTreeSet<String> = built.iter().map(|(_, t)| format!("{t:?}")).collect();
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert_eq!(threads.len(), cores.min(super::MAX_THREADS), "one thread per core, up to the cap");
        assert_eq!(super::in_parallel(&[1, 2, 3], |n| n * 10), [10, 20, 30]);
    }
}
