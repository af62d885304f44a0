//! The dead-letter queue, as `cortex dlq` lists, shows, retries and purges it.
//!
//! A dead letter is `events/dead-letter/<key>.json`, written by the
//! dispatcher when an event failed for good: the event, the queue entry it
//! came from, and the forensic record (each attempt's failures with handler,
//! kind, message and component hash). Files dropped into the queue that were
//! not events are kept as `invalid-*.json`, with the raw text instead of an
//! event. A retry puts the event back as a new queue entry (attempt 1) in
//! one group commit, recording the retry in `metadata.dlq_retry`, and
//! removes the dead letter only once the entry is durable.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use chrono::DateTime;

use crate::event::{Event, Validator};
use crate::layout::Layout;
use crate::queue::now_rfc3339;
use crate::records::{DeadLetterRecord, RetryMark};
use crate::replay::Filter;
use crate::store::Store;
use crate::text::{Escaped, escape_lines};

/// One dead-letter file.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The file name without `.json`: the queue entry's key, or `invalid-…`.
    pub key: String,
    pub path: PathBuf,
    pub record: DeadLetterRecord,
}

impl DeadLetter {
    /// The event, unless the record is of a file that was not one.
    pub fn event(&self) -> Option<&Event> {
        self.record.event.as_ref()
    }

    /// The handlers that had already succeeded on the event (a retry skips them).
    pub fn succeeded_handlers(&self) -> &[String] {
        self.record.succeeded()
    }

    pub fn reason(&self) -> &str {
        &self.record.reason
    }

    /// When it was dead-lettered: the record's time, else the file's.
    pub fn dead_lettered_at(&self) -> Option<SystemTime> {
        DateTime::parse_from_rfc3339(&self.record.dead_lettered_at)
            .ok()
            .map(SystemTime::from)
            .or_else(|| std::fs::metadata(&self.path).and_then(|m| m.modified()).ok())
    }

    /// The record's time as written ("?" when it has none).
    fn at(&self) -> &str {
        Some(self.record.dead_lettered_at.as_str()).filter(|t| !t.is_empty()).unwrap_or("?")
    }

    /// The event id: the event's, or, for a queue entry that could not be
    /// read as an event, the id in its key (`{rank}-{µs}-{event_id}`).
    pub fn event_id(&self) -> Option<&str> {
        match self.event() {
            Some(e) => Some(&e.event_id),
            None => crate::queue::key_event_id(&self.key).filter(|id| crate::event::is_valid_event_id(id)),
        }
    }

    /// Whether `id` names this dead letter: its event id, key or file name.
    pub fn is(&self, id: &str) -> bool {
        self.key == id || self.path.file_name().is_some_and(|n| n == id) || self.event_id() == Some(id)
    }

    /// One line for `dlq list`; it starts with what `dlq show` accepts (the
    /// event id when there is one, else the key), and a reason cut short
    /// ends in `…`.
    pub fn line(&self) -> String {
        const SHOWN: usize = 100;
        let mut reason: String = self.reason().chars().take(SHOWN).collect();
        if reason.len() < self.reason().len() {
            reason.push('…');
        }
        let reason = Escaped(&reason);
        match self.event() {
            Some(e) => format!(
                "{}  {}  {}  attempts {}  {}",
                Escaped(&e.event_id),
                Escaped(&e.event_type),
                Escaped(self.at()),
                self.record.attempts.map_or("?".to_string(), |a| a.to_string()),
                reason
            ),
            None => format!(
                "{}  (not an event{})  {}  {}",
                Escaped(self.event_id().unwrap_or(&self.key)),
                if self.event_id().is_some() { format!("; key {}", Escaped(&self.key)) } else { String::new() },
                Escaped(self.at()),
                reason
            ),
        }
    }

    /// The forensic record, readable: why, each attempt's failures with
    /// handler, kind, message and component hash, the event. Every string
    /// from the record is escaped for the terminal: handlers wrote the
    /// messages, producers the event.
    pub fn describe(&self) -> String {
        let r = &self.record;
        let mut out = String::new();
        let _ = writeln!(out, "dead letter {}", Escaped(&self.key));
        let _ = writeln!(out, "  file:            {}", self.path.display());
        match self.event() {
            Some(e) => {
                let _ = writeln!(
                    out,
                    "  event:           {} {} from {}",
                    Escaped(&e.event_id),
                    Escaped(&e.event_type),
                    Escaped(&e.source)
                );
                let _ = writeln!(out, "  timestamp:       {}", Escaped(&e.timestamp));
                let _ = writeln!(out, "  priority:        {}", e.priority());
                if let Some(c) = &e.correlation_id {
                    let _ = writeln!(out, "  correlation_id:  {}", Escaped(c));
                }
                let _ = writeln!(out, "  queue entry:     {}", Escaped(or_unknown(&r.entry)));
            }
            None => {
                if let Some(f) = r.dropped_file() {
                    let _ = writeln!(out, "  dropped file:    {}", Escaped(f));
                }
            }
        }
        let _ = writeln!(out, "  dead-lettered:   {}", Escaped(self.at()));
        if let Some(a) = r.attempts {
            let max = r.max_attempts.map_or(String::new(), |m| format!(" (max_attempts {m})"));
            let _ = writeln!(out, "  attempts:        {a}{max}");
        }
        let _ = writeln!(out, "  reason:          {}", Escaped(self.reason()));
        for h in r.failed_handlers.iter().flatten() {
            let _ = writeln!(
                out,
                "  failed handler:  {} v{}  component sha256 {}",
                Escaped(or_unknown(&h.name)),
                Escaped(or_unknown(&h.version)),
                Escaped(or_unknown(&h.component_sha256))
            );
        }
        let succeeded = self.succeeded_handlers();
        if !succeeded.is_empty() {
            let _ = writeln!(out, "  succeeded:       {} (skipped on retry)", Escaped(&succeeded.join(", ")));
        }
        if let Some(retry) = self.event().and_then(RetryMark::of) {
            let _ = writeln!(
                out,
                "  retried before:  {} times, last at {}",
                retry.count,
                Escaped(or_unknown(&retry.last_at))
            );
        }
        self.describe_history(&mut out);
        match self.event() {
            Some(e) => {
                let payload = serde_json::Value::Object(e.payload.clone()).to_string();
                let _ = writeln!(out, "  payload:         {}", Escaped(&payload));
            }
            None => {
                let _ = writeln!(out, "  raw:");
                for line in escape_lines(r.raw.as_deref().unwrap_or("")) {
                    let _ = writeln!(out, "    {line}");
                }
            }
        }
        out
    }

    /// Each attempt's failures, for [`DeadLetter::describe`].
    fn describe_history(&self, out: &mut String) {
        for attempt in self.record.history.iter().flatten() {
            let _ = writeln!(out, "  attempt {} at {}:", attempt.attempt, Escaped(or_unknown(&attempt.at)));
            for f in &attempt.failures {
                let handler = Escaped(Some(f.handler.as_str()).filter(|h| !h.is_empty()).unwrap_or("(dispatcher)"));
                let _ = writeln!(out, "    {handler}: {}: {}", f.fault.kind, Escaped(&f.fault.message));
                let sha = Escaped(Some(f.component_sha256.as_str()).filter(|h| !h.is_empty()).unwrap_or("-"));
                let _ = writeln!(out, "      component sha256 {sha}, {:.3} ms", f.duration_ms);
                if !f.fault.detail.is_empty() && f.fault.detail != f.fault.message {
                    for line in escape_lines(&f.fault.detail) {
                        let _ = writeln!(out, "      | {line}");
                    }
                }
            }
        }
    }
}

/// A record's text, or "?" when it has none.
fn or_unknown(text: &str) -> &str {
    if text.is_empty() { "?" } else { text }
}

/// Every dead letter, in file-name order (priority, then queue time).
#[derive(Debug, Default)]
pub struct Listing {
    pub letters: Vec<DeadLetter>,
    /// Files that are not JSON records, with why.
    pub unreadable: Vec<String>,
}

/// Reads the dead-letter queue.
///
/// # Errors
/// When the directory cannot be listed.
pub fn list(layout: &Layout) -> Result<Listing> {
    let dir = layout.dead_letter();
    let mut out = Listing::default();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("failed to list the dead-letter queue {}", dir.display())),
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in rd {
        let entry = entry.with_context(|| format!("failed to list the dead-letter queue {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") && !name.starts_with('.') {
            paths.push(entry.path());
        }
    }
    paths.sort();
    for path in paths {
        match read(&path) {
            Ok(l) => out.letters.push(l),
            Err(e) => out.unreadable.push(format!("{e:#}")),
        }
    }
    Ok(out)
}

fn read(path: &Path) -> Result<DeadLetter> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("failed to read dead letter {}", path.display()))?;
    let record = match serde_json::from_str::<DeadLetterRecord>(&text) {
        Ok(record) => record,
        // A record of an event nested deeper than the reader goes (accepted
        // before emits checked nesting): kept listable, showable and
        // purgeable as raw text instead of a warning on every command.
        Err(e) if too_deep(&e) => DeadLetterRecord {
            raw: Some(text),
            reason: format!("the dead-letter record is nested too deeply to read ({e}); purge it, or fix it by hand"),
            ..DeadLetterRecord::default()
        },
        Err(e) if e.is_data() => {
            return Err(e).with_context(|| format!("dead letter {} is not a dead-letter record", path.display()));
        }
        Err(e) => return Err(e).with_context(|| format!("dead letter {} is not JSON", path.display())),
    };
    let key = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    Ok(DeadLetter { key, path: path.to_path_buf(), record })
}

/// Whether serde_json refused a document for nesting deeper than its
/// recursion limit (it has no error category of its own for it).
fn too_deep(e: &serde_json::Error) -> bool {
    e.is_syntax() && e.to_string().contains("recursion limit exceeded")
}

impl Listing {
    /// The dead letters whose event passes `filter` (records without an
    /// event pass only an empty filter).
    pub fn matching(&self, filter: &Filter) -> Vec<&DeadLetter> {
        self.letters
            .iter()
            .filter(|l| match l.event() {
                Some(e) => filter.matches(e),
                None => filter.is_empty(),
            })
            .collect()
    }

    /// The dead letters `id` names (an event id, a key or a file name).
    ///
    /// # Errors
    /// When none does, with the hint to list them.
    pub fn find(&self, id: &str) -> Result<Vec<&DeadLetter>> {
        let found: Vec<&DeadLetter> = self.letters.iter().filter(|l| l.is(id)).collect();
        if found.is_empty() {
            bail!(
                "no dead letter {id} in the dead-letter queue ({} holds {}); see `cortex dlq list`",
                self.letters.first().and_then(|l| l.path.parent()).map_or("it".into(), |p| p.display().to_string()),
                self.letters.len()
            );
        }
        Ok(found)
    }

    /// The dead letters older than `days` days.
    pub fn older_than(&self, days: u64) -> Vec<&DeadLetter> {
        let cutoff = SystemTime::now().checked_sub(Duration::from_secs(days.saturating_mul(86_400)));
        self.letters.iter().filter(|l| cutoff.is_some_and(|c| l.dead_lettered_at().is_some_and(|t| t < c))).collect()
    }

    /// What `cortex dlq retry` puts back: the dead letters `id` names (those
    /// whose event passes `filter`, if one is set); with `all`, every one
    /// that passes `filter` and holds an event; else, with a filter, those
    /// that pass it.
    ///
    /// # Errors
    /// When `id` names none, or nothing says which dead letters to take.
    pub fn for_retry(&self, id: Option<&str>, all: bool, filter: &Filter) -> Result<RetrySelection<'_>> {
        let letters = match (id, all) {
            (Some(id), _) => self
                .find(id)?
                .into_iter()
                .filter(|l| filter.is_empty() || l.event().is_some_and(|e| filter.matches(e)))
                .collect(),
            (None, true) => {
                let (events, others): (Vec<_>, Vec<_>) =
                    self.matching(filter).into_iter().partition(|l| l.event().is_some());
                return Ok(RetrySelection { letters: events, not_events: others.len() });
            }
            (None, false) if !filter.is_empty() => self.matching(filter),
            (None, false) => bail!(
                "dlq retry needs a dead letter: an ID (event id or key), --all, or filters such as --type 'task.*' (see `cortex dlq list`)"
            ),
        };
        Ok(RetrySelection { letters, not_events: 0 })
    }

    /// What `cortex dlq purge` deletes: the dead letters `id` names, or
    /// those older than `older_than` days.
    ///
    /// # Errors
    /// When `id` names none, or neither is given.
    pub fn for_purge(&self, id: Option<&str>, older_than: Option<u64>) -> Result<Vec<&DeadLetter>> {
        match (id, older_than) {
            (Some(id), _) => self.find(id),
            (None, Some(days)) => Ok(self.older_than(days)),
            (None, None) => bail!(
                "dlq purge needs a dead letter: an ID (event id or key) or --older-than DAYS (see `cortex dlq list`)"
            ),
        }
    }
}

/// The dead letters [`Listing::for_retry`] selected.
#[derive(Debug)]
pub struct RetrySelection<'l> {
    pub letters: Vec<&'l DeadLetter>,
    /// Dead letters `--all` passed over because they hold no event (files
    /// dropped into the queue that were never events).
    pub not_events: usize,
}

/// Records a retry in [`RetryMark`] (`metadata.dlq_retry`): `count` one
/// more than before, `last_at`, and `skip`: the handlers that already
/// succeeded on the event, which the dispatcher does not run again (see
/// [`crate::route::allows`]).
pub fn mark_retry(event: &mut Event, now: &str, succeeded: &[String]) {
    let mut mark = RetryMark::of(event).unwrap_or_default();
    mark.count += 1;
    mark.last_at = now.to_string();
    for s in succeeded {
        if !mark.skip.contains(s) {
            mark.skip.push(s.clone());
        }
    }
    mark.put(event);
}

/// Puts dead letters back in the queue as new entries, in one group
/// commit, then removes them. A dead letter of a webhook delivery goes
/// back to the endpoint's outbox instead (the event is not run again).
///
/// # Errors
/// When one is not an event, does not validate against the current config,
/// or two are the same event (then nothing was done); when the queue cannot
/// be written (then every dead letter is kept); when a dead letter cannot
/// be removed after its event was queued (saying so).
pub fn retry(store: &dyn Store, validator: &Validator, letters: &[&DeadLetter]) -> Result<Vec<Event>> {
    // A failed webhook delivery goes back to the outbox, not the queue:
    // the event was handled; only the delivery is made again.
    let (webhooks, letters): (Vec<&DeadLetter>, Vec<&DeadLetter>) =
        letters.iter().copied().partition(|l| l.record.webhook.is_some());
    let mut redelivered = retry_webhooks(store, &webhooks)?;
    let mut events = retry_events(store, validator, &letters)?;
    redelivered.append(&mut events);
    Ok(redelivered)
}

/// Puts webhook dead letters' deliveries back in the outbox, then removes
/// the letters; returns their events.
fn retry_webhooks(store: &dyn Store, letters: &[&DeadLetter]) -> Result<Vec<Event>> {
    let mut events = Vec::new();
    for l in letters {
        store.redeliver_webhook(&l.record)?;
        store.remove_dead_letters(&[&l.key]).with_context(|| {
            format!(
                "webhook delivery {} is back in the outbox, but its dead letter {} could not be removed: remove it by hand",
                l.key,
                l.path.display()
            )
        })?;
        events.extend(l.event().cloned());
    }
    Ok(events)
}

/// [`retry`] of dead letters of events: back in the queue.
fn retry_events(store: &dyn Store, validator: &Validator, letters: &[&DeadLetter]) -> Result<Vec<Event>> {
    if letters.is_empty() {
        return Ok(Vec::new());
    }
    let now = now_rfc3339();
    let mut events: Vec<Event> = Vec::new();
    let mut bad = Vec::new();
    for l in letters {
        let Some(event) = l.event() else {
            bad.push(format!(
                "{}: not an event but a file that was not one ({}): fix its raw JSON and `cortex emit --batch` it, or purge it",
                l.key,
                l.reason()
            ));
            continue;
        };
        if let Some(other) = events.iter().find(|e| e.event_id == event.event_id) {
            bad.push(format!(
                "{}: event {} has more than one dead letter: retry one by its key, purge the others",
                l.key, other.event_id
            ));
            continue;
        }
        let mut e = event.clone();
        mark_retry(&mut e, &now, l.succeeded_handlers());
        match validator.validate(serde_json::to_value(&e).context("failed to serialize an event")?) {
            Ok(e) => events.push(e),
            Err(invalid) => bad.push(format!("{}: no longer valid: {invalid} (fix cortex.toml)", l.key)),
        }
    }
    if !bad.is_empty() {
        bail!("nothing was retried:\n  {}", bad.join("\n  "));
    }
    store
        .enqueue(&events)
        .context("failed to queue the retried events; none was queued and every dead letter is kept")?;
    let keys: Vec<&str> = letters.iter().map(|l| l.key.as_str()).collect();
    store.remove_dead_letters(&keys).with_context(|| {
        format!(
            "the events are queued again, but their dead letters could not all be removed from {}: remove them by hand (`cortex dlq purge ID`) so they are not retried twice",
            store.describe()
        )
    })?;
    Ok(events)
}

/// Deletes dead letters.
///
/// # Errors
/// When one cannot be removed (those before it are gone).
pub fn purge(store: &dyn Store, letters: &[&DeadLetter]) -> Result<()> {
    let keys: Vec<&str> = letters.iter().map(|l| l.key.as_str()).collect();
    store.remove_dead_letters(&keys)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn retries_are_counted_and_succeeded_handlers_skipped() {
        let mut e: Event = serde_json::from_value(json!({
            "event_id": "evt_20251201_120000_abc123", "event_type": "task.created",
            "timestamp": "2025-12-01T12:00:00Z", "source": "s"
        }))
        .unwrap();
        mark_retry(&mut e, "t1", &["a".into()]);
        mark_retry(&mut e, "t2", &["b".into()]);
        let r = &e.metadata.extra["dlq_retry"];
        assert_eq!(r["count"], 2);
        assert_eq!(r["last_at"], "t2");
        assert_eq!(r["skip"], json!(["a", "b"]));
    }
}
