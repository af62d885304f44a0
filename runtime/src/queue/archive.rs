//! The archive of settled events, as the queue keeps it: one append-only
//! JSONL day file per event date (`events/archive/YYYY-MM-DD.jsonl`), the
//! retention that removes day files by their last append, and the proof
//! check recovery relies on (a whole archive line for an entry means that
//! entry was settled).
//!
//! Crash story: archive lines are appended in phase two of a group commit,
//! after the follow-ups they caused are in place and before the claim is
//! removed; a line cut short by a crash never counts as proof (it does not
//! parse), so its event runs again. Appends go through a directory handle
//! opened from the root without following links: a symlink a handler
//! planted in place of a day file is removed, never written through.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::FsQueue;
use crate::event::Event;
use crate::fsio;
use crate::layout::Layout;
use crate::lock::Recover;

/// How often a long-running queue prunes the archive from `recover`.
pub(super) const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What [`FsQueue::prune_archive`] removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pruned {
    pub files: Vec<String>,
    pub bytes: u64,
}

impl FsQueue {
    /// Removes the archive files (`*.jsonl` regular files) whose last append
    /// — their modification time — is older than the retention. Retention
    /// goes by when events were archived, never by the date in a day file's
    /// name (the event's own timestamp): a back-dated event archived today
    /// stays for the whole retention period. Runs when a dispatcher starts,
    /// hourly in a long-running one, and after a `system.cleanup_needed`
    /// event is settled.
    ///
    /// # Errors
    /// When the archive directory cannot be opened (a symlink there is
    /// refused) or listed.
    pub fn prune_archive(&self) -> Result<Pruned> {
        *self.last_prune.locked() = Some(std::time::Instant::now());
        let mut out = Pruned::default();
        let Some(retention) = self.archive_retention else { return Ok(out) };
        let dir = fsio::beneath::open_dir(self.layout.root(), Layout::archive_rel(), fsio::beneath::Create::No)?;
        let listing = std::fs::read_dir(fsio::beneath::proc_path(&dir))
            .with_context(|| format!("failed to list {}", self.layout.archive().display()))?;
        for entry in listing.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            // DirEntry::metadata does not follow a symlink.
            let Ok(meta) = entry.metadata() else { continue };
            if !name.ends_with(".jsonl") || !meta.is_file() {
                continue;
            }
            let age = meta.modified().ok().and_then(|m| m.elapsed().ok()).unwrap_or_default();
            if age <= retention {
                continue;
            }
            match fsio::beneath::unlink(&dir, &name) {
                Ok(()) => {
                    out.bytes += meta.len();
                    out.files.push(name);
                }
                Err(e) => tracing::warn!(file = %name, error = %e, "failed to remove an expired archive file"),
            }
        }
        if !out.files.is_empty() {
            dir.sync_all().with_context(|| format!("failed to sync {}", self.layout.archive().display()))?;
            tracing::info!(files = ?out.files, bytes = out.bytes, "removed archive files past their retention");
        }
        Ok(out)
    }

    /// Appends archive lines to the day file `name`, opened under the
    /// archive directory without following a symlink. A symlink planted in
    /// its place is removed (never written through) and the file created anew.
    pub(super) fn append_archive(dir: &File, name: &str, lines: &[u8]) -> Result<()> {
        let mut f = match fsio::beneath::open_append(dir, name) {
            Err(e) if fsio::beneath::is_symlink_error(&e) => {
                tracing::warn!(file = %name, "removing a symlink planted in place of an archive day file");
                fsio::beneath::unlink(dir, name)
                    .with_context(|| format!("failed to remove the symlink events/archive/{name}"))?;
                fsio::beneath::open_append(dir, name)
            }
            other => other,
        }
        .with_context(|| format!("failed to open the archive file events/archive/{name}"))?;
        fsio::beneath::append_to(&mut f, lines, true)
            .with_context(|| format!("failed to append to events/archive/{name}"))
    }

    /// The archive file of an event: `archive/<date of its timestamp>.jsonl`.
    /// One append-only file per day, not one file per event: the dispatcher
    /// creates no inode per event, and replaying a day reads one file. The
    /// name is the event's date (what `replay --date` selects by); retention
    /// goes by the file's last append instead (see [`FsQueue::prune_archive`]).
    pub fn archive_path(&self, event: &Event) -> PathBuf {
        let date = event.timestamp.get(..10).filter(|d| d.bytes().all(|b| b.is_ascii_digit() || b == b'-'));
        self.layout.archive().join(format!("{}.jsonl", date.unwrap_or("undated")))
    }
}

/// Whether an archive file holds a whole record for queue entry `key`. A
/// line torn by a crash mid-append (a fatal signal can cut a write short)
/// may still contain the key: only a line that parses counts as proof.
pub(super) fn archived_entry(path: &Path, key: &str) -> bool {
    let needle = format!("\"entry\":\"{key}\"");
    let Ok(text) = std::fs::read_to_string(path) else { return false };
    text.lines().filter(|l| l.contains(&needle)).any(|l| serde_json::from_str::<Value>(l).is_ok())
}
