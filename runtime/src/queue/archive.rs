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
//!
//! An append holds a shared `flock` on the day file; compressing a day
//! ([`crate::archive::pack`]) and removing an expired one hold it
//! exclusively, so neither reads or removes a file mid-append, and an
//! appender that finds its file unlinked once it holds the lock appends to
//! a new one instead.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::FsQueue;
use crate::archive::Archive;
use crate::archive::pack::{Packed, lock};
use crate::event::Event;
use crate::fsio;
use crate::layout::Layout;
use crate::lock::Recover;

/// How often a long-running queue prunes the archive from `recover`.
pub(super) const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What [`FsQueue::prune_archive`] removed and compressed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pruned {
    pub files: Vec<String>,
    pub bytes: u64,
    pub packed: Packed,
}

/// Copies archive file `name` into directory `to` (created if missing):
/// read without following a link, written to a temp name and renamed, synced.
fn export(dir: &File, name: &str, to: &Path) -> Result<()> {
    let mut from =
        fsio::beneath::open_read(dir, name).with_context(|| format!("failed to open events/archive/{name}"))?;
    std::fs::create_dir_all(to).with_context(|| format!("failed to create {}", to.display()))?;
    let mut bytes = Vec::new();
    from.read_to_end(&mut bytes).with_context(|| format!("failed to read events/archive/{name}"))?;
    let tmp = fsio::write_tmp(to, "export", &bytes, true)?;
    let target = to.join(name);
    std::fs::rename(&tmp, &target).with_context(|| format!("failed to move the export into {}", target.display()))?;
    if let Ok(m) = from.metadata().and_then(|m| m.modified()) {
        let _ = File::options().write(true).open(&target).and_then(|f| f.set_modified(m));
    }
    fsio::sync_dir(to)
}

impl FsQueue {
    /// Applies the archive's lifecycle: removes the archive files (plain
    /// days and compressed segments, regular files only) whose last append
    /// — their modification time, which a compressed segment keeps from its
    /// plain file — is older than the retention, copying each to
    /// `[archive] export_before_delete` first when set; then compresses
    /// the plain days named for a date more than `compress_after_days`
    /// ago (see [`crate::archive::pack`]). Retention goes by when events
    /// were archived, never by the date in a day file's name (the event's
    /// own timestamp): a back-dated event archived today stays for the
    /// whole retention period. Runs when a dispatcher starts, hourly in a
    /// long-running one, and after a `system.cleanup_needed` event is
    /// settled.
    ///
    /// # Errors
    /// When the archive directory cannot be opened (a symlink there is
    /// refused) or listed.
    pub fn prune_archive(&self) -> Result<Pruned> {
        *self.last_prune.locked() = Some(std::time::Instant::now());
        let mut out = Pruned::default();
        let Some(archive) = Archive::open(&self.layout)? else { return Ok(out) };
        if let Some(retention) = self.archive_retention {
            self.expire(&archive, retention, &mut out)?;
        }
        if let Some(days) = self.archive_compress_after {
            let cutoff = chrono::Utc::now().date_naive() - chrono::Days::new(days);
            out.packed = archive.pack_before(cutoff)?;
        }
        Ok(out)
    }

    /// Removes (or exports, then removes) the files past `retention`.
    fn expire(&self, archive: &Archive, retention: Duration, out: &mut Pruned) -> Result<()> {
        let dir = archive.handle();
        for seg in archive.segments()? {
            for part in [&seg.packed, &seg.plain].into_iter().flatten() {
                let age = part.modified.elapsed().unwrap_or_default();
                if age <= retention {
                    continue;
                }
                // Held until removed: never remove a day mid-append.
                let Ok(held) = fsio::beneath::open_read(dir, &part.name) else { continue };
                if !lock(&held, true).unwrap_or(false) {
                    continue;
                }
                if let Some(to) = &self.archive_export
                    && let Err(e) = export(dir, &part.name, to)
                {
                    tracing::warn!(file = %part.name, error = %format!("{e:#}"), "failed to export an expired archive file; it is kept");
                    continue;
                }
                match fsio::beneath::unlink(dir, &part.name) {
                    Ok(()) => {
                        out.bytes += part.bytes;
                        out.files.push(part.name.clone());
                    }
                    Err(e) => tracing::warn!(file = %part.name, error = %e, "failed to remove an expired archive file"),
                }
            }
        }
        if !out.files.is_empty() {
            dir.sync_all().with_context(|| format!("failed to sync {}", self.layout.archive().display()))?;
            tracing::info!(files = ?out.files, bytes = out.bytes, "removed archive files past their retention");
        }
        Ok(())
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
        // Shared with other appenders, exclusive with the compressor: a
        // file compressed and unlinked meanwhile is opened anew.
        lock(&f, false).with_context(|| format!("failed to lock events/archive/{name}"))?;
        if f.metadata().with_context(|| format!("failed to stat events/archive/{name}"))?.nlink() == 0 {
            return Self::append_archive(dir, name, lines);
        }
        fsio::beneath::append_to(&mut f, lines, true)
            .with_context(|| format!("failed to append to events/archive/{name}"))
    }

    /// The archive file of an event: `archive/<date of its timestamp>.jsonl`.
    /// One append-only file per day, not one file per event: the dispatcher
    /// creates no inode per event, and replaying a day reads one file. The
    /// name is the event's date (what `replay --date` selects by); retention
    /// goes by the file's last append instead (see [`FsQueue::prune_archive`]).
    pub fn archive_path(&self, event: &Event) -> PathBuf {
        self.layout.archive().join(format!("{}.jsonl", archive_day(event)))
    }
}

/// The archive day of an event, whatever the backend: the date of its
/// timestamp (`YYYY-MM-DD`), or `undated`.
pub(crate) fn archive_day(event: &Event) -> &str {
    let date = event.timestamp.get(..10).filter(|d| d.bytes().all(|b| b.is_ascii_digit() || b == b'-'));
    date.unwrap_or("undated")
}

/// Whether an archive day (plain or compressed, see [`crate::archive`])
/// holds a whole record for queue entry `key`. A line torn by a crash
/// mid-append (a fatal signal can cut a write short) may still contain the
/// key: only a line that parses counts as proof.
pub(super) fn archived_entry(layout: &Layout, path: &Path, key: &str) -> bool {
    use std::io::BufRead;
    let needle = format!("\"entry\":\"{key}\"");
    let Some(stem) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".jsonl")) else {
        return false;
    };
    let Ok(Some(archive)) = Archive::open(layout) else { return false };
    let Ok(Some(seg)) = archive.segment(stem) else { return false };
    let Ok(lines) = archive.lines(&seg) else { return false };
    lines
        .split(b'\n')
        .map_while(std::result::Result::ok)
        .filter_map(|l| String::from_utf8(l).ok())
        .filter(|l| l.contains(&needle))
        .any(|l| serde_json::from_str::<Value>(&l).is_ok())
}
