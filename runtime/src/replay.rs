//! Replay: select archived (or dead-lettered) events and run them again, as
//! `cortex replay` does.
//!
//! [`select`] reads the archive's day files (`events/archive/YYYY-MM-DD.jsonl`,
//! one record per line) and the monthly compact files a cleanup leaves
//! (`YYYY-MM.compact.jsonl`, bare events), and only the files a [`Filter`] can
//! match: an event id carries its date, so `--event-id` reads that day and the
//! days around it, and scans the whole archive only when the event is not
//! there. An event archived more than once (it was replayed before) is
//! selected once, in its latest copy. A line that cannot be read (cut short
//! by a crash) is skipped with a warning.
//!
//! Then one of: a dry run that lists the selection and the handlers each
//! event would reach; requeue, which puts copies back in the queue in one
//! group commit, keeping each `event_id` and recording the replay in
//! `metadata.replay`; or direct, which runs the handlers in-process now —
//! optionally a candidate component in place of the configured one, against
//! a throwaway copy of its grants when it is a dry run — and reports each
//! outcome in a [`Report`].

mod direct;
mod filter;
mod report;
mod select;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::config::Config;
use crate::event::{Event, Validator};
use crate::layout::Layout;
use crate::queue::now_rfc3339;
use crate::records::{ReplayMark, RetryMark};
use crate::route;
use crate::store::Store;

pub use filter::{Filter, parse_date, parse_event_id, parse_time};
pub use report::{Candidate, EventReport, Report, Run};
pub use select::{Selection, Skipped, select};

/// Reports progress: a stage, how much is done, out of how much.
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// Where replayed events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    Archive,
    /// The dead-letter queue: to try a fix on events that failed for good.
    DeadLetters,
}

/// How a replay runs the selected events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Copies back in the queue, for the dispatcher.
    Requeue,
    /// The handlers in-process, now.
    Direct,
}

/// A replay, as `cortex replay` asks for it.
#[derive(Debug, Clone)]
pub struct Request {
    pub filter: Filter,
    pub origin: Origin,
    pub mode: Mode,
    pub dry_run: bool,
    /// Only this handler.
    pub handler: Option<String>,
    /// A candidate component to run in place of the handler's (direct mode).
    pub component: Option<PathBuf>,
}

impl Request {
    /// Checks that the options fit together and name what exists, before
    /// anything is read or written.
    ///
    /// # Errors
    /// Naming the flag at fault and what to do.
    pub fn check(&self, config: &Config) -> Result<()> {
        if self.filter.is_empty() {
            bail!(
                "nothing selected: give --event-id ID, --date YYYY-MM-DD, --since/--until TIME, --type GLOB, --source, --priority or --correlation-id (--type '*' selects everything)"
            );
        }
        self.filter.check()?;
        if self.component.is_some() && self.mode == Mode::Requeue {
            bail!(
                "--component runs a candidate in-process: use it with --mode direct (and --dry-run to touch nothing)"
            );
        }
        if self.origin == Origin::DeadLetters && self.mode == Mode::Requeue {
            bail!(
                "dead letters go back in the queue with `cortex dlq retry`; --dead-letters is for trying them with --mode direct (or --component)"
            );
        }
        if let Some(h) = &self.handler
            && !config.handlers.contains_key(h)
        {
            bail!(
                "--handler {h}: no such handler in cortex.toml (configured: {})",
                config.handlers.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        if let Some(c) = &self.component
            && !c.is_file()
        {
            bail!("--component {}: no such file (build it first, e.g. `make handlers`)", c.display());
        }
        Ok(())
    }
}

/// Records a replay in [`ReplayMark`] (`metadata.replay`): `count` one more
/// than the copy's, `last_at`, `history`; `handler` when limited to one.
pub fn mark_replay(event: &mut Event, now: &str, handler: Option<&str>) {
    let mut mark = ReplayMark::of(event).unwrap_or_default();
    mark.count += 1;
    mark.last_at = now.to_string();
    mark.history.push(now.to_string());
    if mark.history.len() > ReplayMark::MAX_HISTORY {
        mark.history.drain(..mark.history.len() - ReplayMark::MAX_HISTORY);
    }
    mark.handler = handler.map(str::to_string);
    mark.put(event);
    // A dead letter's retry skipped the handlers that had succeeded; a
    // replay runs every handler it is routed to.
    if let Some(mut retry) = RetryMark::of(event) {
        retry.skip.clear();
        retry.put(event);
    }
}

/// Selects and replays, as `request` says.
///
/// # Errors
/// Bad options (see [`Request::check`]), selection errors (see [`select`]),
/// handlers or a candidate that do not load, and failures to queue; then
/// nothing was queued.
pub fn run(
    store: &dyn Store,
    layout: &Layout,
    config: &Config,
    request: &Request,
    progress: Progress,
) -> Result<Report> {
    request.check(config)?;
    let validator = config.validator();
    let selection = select(store, &request.filter, request.origin, &validator, progress)?;
    let now = now_rfc3339();
    let mut events = selection.events;
    for e in &mut events {
        mark_replay(e, &now, request.handler.as_deref());
    }
    if request.handler.is_some() {
        events.retain(|e| !route::handlers_for_event(config, e).is_empty());
    }
    let mut report = Report {
        mode: request.mode,
        dry_run: request.dry_run,
        origin: request.origin,
        candidate: None,
        filters: request.filter.describe(),
        selected: 0,
        files_read: selection.files_read.len(),
        full_scan: selection.full_scan,
        skipped_lines: selection.skipped.iter().filter(|s| !s.refused).map(ToString::to_string).collect(),
        refused: selection.skipped.iter().filter(|s| s.refused).map(ToString::to_string).collect(),
        handlers: BTreeMap::new(),
        requeued: 0,
        invocations: 0,
        succeeded: 0,
        failed: 0,
        emitted: 0,
        follow_ups_queued: 0,
        events: Vec::new(),
    };
    // Nothing selected, nothing to load or run.
    if request.mode == Mode::Direct && !events.is_empty() && (request.component.is_some() || !request.dry_run) {
        direct::direct(store, layout, config, request, events, &mut report, progress)?;
        return Ok(report);
    }
    for e in &events {
        let handlers: Vec<String> = route::handlers_for_event(config, e).into_iter().map(str::to_string).collect();
        for h in &handlers {
            *report.handlers.entry(h.clone()).or_insert(0) += 1;
        }
        report.events.push(EventReport {
            event_id: e.event_id.clone(),
            event_type: e.event_type.clone(),
            timestamp: e.timestamp.clone(),
            source: e.source.clone(),
            handlers,
            replay_count: ReplayMark::of(e).map_or(0, |m| m.count),
            runs: Vec::new(),
        });
    }
    report.selected = events.len();
    if !request.dry_run && request.mode == Mode::Requeue {
        requeue(store, &validator, &events)?;
        report.requeued = events.len();
    }
    Ok(report)
}

/// Puts copies back in the queue: one group commit for all of them.
fn requeue(store: &dyn Store, validator: &Validator, events: &[Event]) -> Result<()> {
    let bad: Vec<String> = events
        .iter()
        .filter_map(|e| still_accepted(validator, e).err().map(|why| format!("{}: {why}", e.event_id)))
        .collect();
    if !bad.is_empty() {
        bail!(
            "{} of {} selected events would be refused now; nothing was replayed (fix cortex.toml or narrow the selection):\n  {}",
            bad.len(),
            events.len(),
            bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n  ")
        );
    }
    store.enqueue(events).context("failed to queue the replayed events; none of them was queued")
}

/// Selection validated every envelope against the current config; the
/// replay mark added to each since, so a copy near the size limit may have
/// grown past it.
fn still_accepted(validator: &Validator, e: &Event) -> std::result::Result<(), String> {
    if validator.category(&e.event_type).is_none() {
        return Err(format!("type {} is no longer known (declare it under [events] custom_types)", e.event_type));
    }
    let size = e.to_json().len();
    if size > validator.max_event_bytes() {
        return Err(format!("{size} bytes, over limits.max_event_bytes = {}", validator.max_event_bytes()));
    }
    Ok(())
}

/// An event for the replay modules' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use crate::event::Event;

    pub fn event(id: &str, ts: &str, t: &str) -> Event {
        Event {
            event_id: id.into(),
            event_type: t.into(),
            timestamp: ts.into(),
            source: "src-1".into(),
            correlation_id: Some("corr".into()),
            metadata: Default::default(),
            payload: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::replay::testing::event;

    #[test]
    fn replays_are_counted_and_their_history_capped() {
        let mut e = event("evt_20251201_120000_abc123", "2025-12-01T12:00:00Z", "task.created");
        e.metadata.extra.insert("dlq_retry".into(), json!({"count": 1, "skip": ["a"]}));
        for i in 0..(ReplayMark::MAX_HISTORY + 5) {
            mark_replay(&mut e, &format!("t{i}"), None);
        }
        let r = &e.metadata.extra["replay"];
        assert_eq!(r["count"], ReplayMark::MAX_HISTORY as u64 + 5);
        assert_eq!(r["history"].as_array().unwrap().len(), ReplayMark::MAX_HISTORY);
        assert_eq!(r["last_at"], format!("t{}", ReplayMark::MAX_HISTORY + 4));
        assert!(e.metadata.extra["dlq_retry"].get("skip").is_none());
        mark_replay(&mut e, "t", Some("h"));
        assert_eq!(e.metadata.extra["replay"]["handler"], "h");
    }
}
