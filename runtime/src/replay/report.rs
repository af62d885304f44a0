//! What a replay did, for people (a line per event, a one-line summary)
//! and for scripts (JSON).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use super::{Mode, Origin};
use crate::text::{Escaped, escape_lines};

/// One handler run on one event (direct mode).
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub handler: String,
    pub component_sha256: String,
    /// Whether this was the `--component` candidate.
    pub candidate: bool,
    pub ok: bool,
    /// The handler's summary when it succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// `error`, `trap`, `timeout`… when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<crate::records::FaultKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Follow-up events: `[{event_id, event_type}]`.
    pub emitted: Vec<Value>,
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stderr: String,
}

/// One selected event and what the replay did with it.
#[derive(Debug, Clone, Serialize)]
pub struct EventReport {
    pub event_id: String,
    pub event_type: String,
    pub timestamp: String,
    pub source: String,
    /// The handlers it reaches (by the current config's routes).
    pub handlers: Vec<String>,
    /// `metadata.replay.count` of the replayed copy.
    pub replay_count: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<Run>,
}

/// The candidate of a direct replay.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub handler: String,
    pub component: PathBuf,
    pub sha256: String,
}

/// What a replay did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub dry_run: bool,
    pub origin: Origin,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Candidate>,
    /// The filters, as flags.
    pub filters: String,
    pub selected: usize,
    pub files_read: usize,
    pub full_scan: bool,
    pub skipped_lines: Vec<String>,
    /// Selected lines that are not valid events (edited or forged since
    /// they were written): never replayed.
    pub refused: Vec<String>,
    /// Events per handler reached.
    pub handlers: BTreeMap<String, usize>,
    pub requeued: usize,
    pub invocations: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// Follow-up events the handlers emitted (direct mode).
    pub emitted: usize,
    /// Of those, queued (none in a dry run).
    pub follow_ups_queued: usize,
    pub events: Vec<EventReport>,
}

impl Report {
    /// One line per event: what was (or would be) done with it.
    /// One line per event: what was (or would be) done with it. A dry run
    /// lists every event; otherwise only `verbose` does, and failures
    /// always show.
    pub fn lines(&self, verbose: bool) -> Vec<String> {
        let listing = self.dry_run && self.candidate.is_none();
        let mut out = Vec::new();
        for e in &self.events {
            let head = format!("{}  {}  {}", e.event_id, e.event_type, e.timestamp);
            let to = if e.handlers.is_empty() { "(no handler)".to_string() } else { e.handlers.join(", ") };
            if listing {
                out.push(format!("{head}  -> {to}"));
                continue;
            }
            if self.mode == Mode::Requeue {
                if verbose {
                    out.push(format!("requeued {head}  -> {to}  (replay #{})", e.replay_count));
                }
                continue;
            }
            if e.runs.is_empty() && verbose {
                out.push(format!("{head}  (no handler)"));
            }
            for r in &e.runs {
                if r.ok && verbose {
                    let emitted: Vec<&str> = r.emitted.iter().filter_map(|v| v["event_type"].as_str()).collect();
                    let emitted =
                        if emitted.is_empty() { String::new() } else { format!("  emitted: {}", emitted.join(", ")) };
                    out.push(format!("{head}  {}  ok {:?}{emitted}", r.handler, r.summary.as_deref().unwrap_or("")));
                } else if !r.ok {
                    out.push(format!(
                        "{head}  {}  FAILED ({}): {}",
                        r.handler,
                        r.kind.map_or("?", crate::records::FaultKind::as_str),
                        Escaped(r.message.as_deref().unwrap_or(""))
                    ));
                    out.extend(escape_lines(&r.stderr).map(|l| format!("    stderr: {l}")));
                }
            }
        }
        out
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.refused.is_empty() {
            writeln!(f, "refused {} selected lines that are not valid events (not replayed):", self.refused.len())?;
            for r in &self.refused {
                writeln!(f, "  {r}")?;
            }
        }
        let handlers = if self.handlers.is_empty() {
            "no handler".to_string()
        } else {
            self.handlers.iter().map(|(n, c)| format!("{n} ({c})")).collect::<Vec<_>>().join(", ")
        };
        let from = match self.origin {
            Origin::Archive => format!(
                "{} archive file{}{}",
                self.files_read,
                if self.files_read == 1 { "" } else { "s" },
                if self.full_scan { ", the whole archive" } else { "" }
            ),
            Origin::DeadLetters => "the dead-letter queue".into(),
        };
        if self.selected == 0 {
            return writeln!(f, "no events match {} (read {from}); nothing was replayed", self.filters);
        }
        if self.dry_run && self.candidate.is_none() {
            let what = match self.mode {
                Mode::Requeue => "requeue",
                Mode::Direct => "run directly",
            };
            return writeln!(
                f,
                "dry run: would {what} {} events, reaching {handlers}; read {from}; nothing was changed",
                self.selected
            );
        }
        match self.mode {
            Mode::Requeue => writeln!(
                f,
                "requeued {} events to {handlers} (read {from}); `cortex dispatch` (or a running `cortex serve`) processes them",
                self.requeued
            ),
            Mode::Direct => {
                let by = match &self.candidate {
                    Some(c) => format!(
                        "candidate {} (sha256 {}) as handler {}",
                        c.component.display(),
                        &c.sha256[..12.min(c.sha256.len())],
                        c.handler
                    ),
                    None => handlers,
                };
                write!(
                    f,
                    "ran {} events through {by}: {} invocations, {} ok, {} failed; {} follow-up events emitted",
                    self.selected, self.invocations, self.succeeded, self.failed, self.emitted
                )?;
                if self.dry_run {
                    writeln!(f, " and discarded (dry run: nothing was changed)")
                } else {
                    writeln!(f, ", {} queued", self.follow_ups_queued)
                }
            }
        }
    }
}
