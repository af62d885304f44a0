//! The per-category JSONL logs (`events/<category>-events.jsonl`).
//!
//! Every event that is queued is first appended here, one JSON object per
//! line, so `tail -f events/*.jsonl | jq` shows the whole history as in the
//! seed. Appends go through `O_APPEND` with one `write` per file per batch;
//! a line cut by a crash is the only thing a crash can cost, and readers
//! skip it with a warning.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::event::{Event, LOG_STEMS, Validator};
use crate::fsio;
use crate::layout::Layout;

#[derive(Debug, Clone)]
pub struct Journal {
    layout: Layout,
}

/// A line of a log that could not be read.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub file: PathBuf,
    pub line: usize,
    pub why: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: skipped: {}", self.file.display(), self.line, self.why)
    }
}

impl Journal {
    pub fn new(layout: Layout) -> Journal {
        Journal { layout }
    }

    /// The log an event type goes to (`custom` for an undeclared type).
    pub fn stem(validator: &Validator, event_type: &str) -> &'static str {
        validator.category(event_type).map(|c| c.log_stem()).unwrap_or("custom")
    }

    /// Adds an already serialized event to a batch of lines by log.
    pub fn stage(lines: &mut BTreeMap<&'static str, String>, validator: &Validator, event: &Event, json: &str) {
        let buf = lines.entry(Journal::stem(validator, &event.event_type)).or_default();
        buf.push_str(json);
        buf.push('\n');
    }

    /// Appends each log's lines with one write per file. With `sync`, each
    /// file touched is flushed before returning; without, the caller makes
    /// the batch durable (see [`crate::fsio::sync_filesystem`]).
    ///
    /// # Errors
    /// When a log cannot be opened, written or synced.
    pub fn append(&self, lines: &BTreeMap<&'static str, String>, sync: bool) -> Result<()> {
        for (stem, lines) in lines {
            let path = self.layout.log(stem);
            fsio::append_lines(&path, lines.as_bytes(), sync)
                .with_context(|| format!("failed to append to {}", path.display()))?;
        }
        Ok(())
    }

    /// Counts events by type across every log, skipping unreadable lines.
    ///
    /// # Errors
    /// When a log exists but cannot be read.
    pub fn counts_by_type(&self) -> Result<(BTreeMap<String, u64>, Vec<Skipped>)> {
        #[derive(Deserialize)]
        struct TypeOnly {
            event_type: String,
        }
        let mut counts = BTreeMap::new();
        let mut skipped = Vec::new();
        for stem in LOG_STEMS {
            let path = self.layout.log(stem);
            for_each_line(&path, &mut skipped, |line| {
                let t: TypeOnly = serde_json::from_str(line).map_err(|e| e.to_string())?;
                *counts.entry(t.event_type).or_insert(0) += 1;
                Ok(())
            })?;
        }
        Ok((counts, skipped))
    }

    /// Every event of one category's log, skipping unreadable lines.
    ///
    /// # Errors
    /// When the log exists but cannot be read.
    pub fn read(&self, stem: &str) -> Result<(Vec<Event>, Vec<Skipped>)> {
        let mut events = Vec::new();
        let mut skipped = Vec::new();
        for_each_line(&self.layout.log(stem), &mut skipped, |line| {
            events.push(serde_json::from_str(line).map_err(|e| e.to_string())?);
            Ok(())
        })?;
        Ok((events, skipped))
    }
}

/// Calls `f` on each complete line; a line that `f` rejects, or a last line
/// without its newline (cut by a crash), is recorded in `skipped`.
pub fn for_each_line(
    path: &Path,
    skipped: &mut Vec<Skipped>,
    mut f: impl FnMut(&str) -> std::result::Result<(), String>,
) -> Result<()> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("failed to open {}", path.display())),
    };
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut n = 0;
    loop {
        buf.clear();
        let read = reader.read_until(b'\n', &mut buf).with_context(|| format!("failed to read {}", path.display()))?;
        if read == 0 {
            return Ok(());
        }
        n += 1;
        if buf.last() != Some(&b'\n') {
            skipped.push(Skipped { file: path.into(), line: n, why: "partial last line (cut by a crash?)".into() });
            return Ok(());
        }
        let line = match std::str::from_utf8(&buf) {
            Ok(line) => line.trim_end(),
            Err(e) => {
                skipped.push(Skipped { file: path.into(), line: n, why: format!("not UTF-8: {e}") });
                continue;
            }
        };
        if line.is_empty() {
            continue;
        }
        if let Err(why) = f(line) {
            skipped.push(Skipped { file: path.into(), line: n, why });
        }
    }
}
