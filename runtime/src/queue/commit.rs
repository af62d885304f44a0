//! The group commit: how enqueues and settlements become durable. Phase
//! one writes every new file — follow-up events, delivery records, dead
//! letters — to `events/tmp/` and appends the journal lines; one `syncfs`
//! (or, for a small enqueue, an `fdatasync` per file) makes them durable
//! together with the state the handlers wrote. Phase two renames them into
//! place, syncs the directories, appends the archive lines, and only then
//! hands the settled claims to the reaper.
//!
//! An archived event's webhook deliveries (`events/outbox/`, see
//! [`crate::webhooks`]) are staged and renamed like the dead letters.
//!
//! Crash story: before the renames nothing is visible (temp files are
//! garbage that `recover` removes); after them, an event's follow-ups are
//! queued before its archive line exists, and the archive line or dead
//! letter exists before its claim is removed — so a crash leaves either
//! the claim (the event runs again: at-least-once) or its record (recovery
//! sees it and finishes the ack).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use serde::Serialize;

use super::clock::ms_of;
use super::{EntryName, FsQueue, Settlement, Verdict};
use crate::event::Event;
use crate::fsio;
use crate::journal::Journal;
use crate::layout::Layout;

/// Batches at least this large are made durable with one `syncfs`; smaller
/// ones with an `fdatasync` per file, which does not wait for unrelated
/// dirty data elsewhere on the filesystem.
const GROUP_COMMIT_MIN: usize = 8;

/// Files written in phase one of a group commit, moved in phase two.
#[derive(Default)]
struct Commit {
    /// (temp file, target, may the target be replaced)
    moves: Vec<(PathBuf, PathBuf, bool)>,
    /// Log lines of the staged events, by log (each event is serialized
    /// once, for its queue file and its log line).
    log: BTreeMap<&'static str, String>,
    /// Archive lines by day file, appended only after the moves: an archive
    /// line is what recovery takes as proof that an event was settled, so
    /// its follow-ups must be in place before it exists.
    archive: BTreeMap<PathBuf, Vec<u8>>,
    /// Claims to remove after the moves are durable.
    removals: Vec<PathBuf>,
    dirs: BTreeSet<PathBuf>,
    new_names: Vec<String>,
}

impl Commit {
    fn abandon(&self) {
        for (tmp, _, _) in &self.moves {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

impl FsQueue {
    /// [`super::Queue::enqueue`] of the filesystem queue.
    pub(super) fn enqueue_events(&self, events: &[Event]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let group = events.len() >= GROUP_COMMIT_MIN;
        let mut commit = Commit::default();
        let staged = self.stage_events(&mut commit, events, !group).and_then(|()| {
            self.journal.append(&commit.log, !group)?;
            fsio::failpoint("emit.written");
            if group {
                fsio::sync_filesystem(&self.layout.tmp())?;
            }
            Ok(())
        });
        if let Err(e) = staged {
            commit.abandon();
            return Err(e);
        }
        fsio::failpoint("emit.synced");
        self.apply(commit, "emit")
    }

    /// [`super::Queue::settle`] of the filesystem queue.
    pub(super) fn settle_batch(&self, batch: Vec<Settlement>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let claim_dir = self.claim_dir()?;
        let mut commit = Commit::default();
        let staged = (|| -> Result<()> {
            for s in &batch {
                self.stage_events(&mut commit, &s.emitted, false)?;
                self.stage_verdict(&mut commit, &claim_dir, s)?;
            }
            self.journal.append(&commit.log, false)?;
            fsio::failpoint("settle.written");
            // One flush for everything: follow-ups, records, log lines and
            // the state handlers wrote while running these events.
            fsio::sync_filesystem(&self.layout.tmp())?;
            fsio::failpoint("settle.synced");
            Ok(())
        })();
        if let Err(e) = staged {
            // Only the temp files: a staged requeue's source is the claim.
            for (tmp, _, _) in &commit.moves {
                if tmp.starts_with(self.layout.tmp()) {
                    let _ = std::fs::remove_file(tmp);
                }
            }
            return Err(e);
        }
        let cleanup = batch
            .iter()
            .any(|s| matches!(s.verdict, Verdict::Ack(_)) && s.claim.event.event_type == "system.cleanup_needed");
        self.apply(commit, "settle")?;
        if cleanup && let Err(e) = self.prune_archive() {
            tracing::warn!(error = %format!("{e:#}"), "failed to apply the archive retention");
        }
        Ok(())
    }

    /// Stages what a verdict writes and removes: the archive line, the dead
    /// letter or the delivery record, the claim put back or removed.
    fn stage_verdict(&self, commit: &mut Commit, claim_dir: &Path, s: &Settlement) -> Result<()> {
        let claimed = claim_dir.join(s.claim.name.file_name());
        match &s.verdict {
            Verdict::Ack(record) => {
                let lines = commit.archive.entry(self.archive_path(&s.claim.event)).or_default();
                serde_json::to_writer(&mut *lines, record).context("failed to serialize an archive record")?;
                lines.push(b'\n');
                // Its webhook deliveries (the outbox) become durable with
                // the archive line: renamed before it, like follow-ups.
                for delivery in self.webhooks().deliveries(&s.claim.event) {
                    let target = crate::webhooks::outbox::path(&self.layout, &delivery.endpoint, &delivery.webhook_id);
                    self.stage_record(commit, target, &delivery)?;
                }
                commit.removals.push(claimed);
                if s.claim.name.attempt > 1 {
                    commit.removals.push(self.attempts_path(&s.claim.name));
                }
            }
            Verdict::DeadLetter(record) => {
                self.stage_record(commit, self.dead_letter_path(&s.claim.name), record)?;
                commit.removals.push(claimed);
                commit.removals.push(self.attempts_path(&s.claim.name));
            }
            Verdict::Retry { due, delivery } => {
                self.stage_record(commit, self.attempts_path(&s.claim.name), delivery)?;
                self.stage_requeue(commit, claim_dir, &s.claim.name, s.claim.name.attempt + 1, *due);
            }
            Verdict::Defer { due } => {
                self.stage_requeue(commit, claim_dir, &s.claim.name, s.claim.name.attempt, *due);
            }
        }
        Ok(())
    }

    fn stage_events(&self, commit: &mut Commit, events: &[Event], sync_each: bool) -> Result<()> {
        let tmp = self.layout.tmp();
        for e in events {
            let name = EntryName::first(e);
            let file = name.file_name();
            let json = e.to_json();
            let t = fsio::write_tmp(&tmp, &file, json.as_bytes(), sync_each)?;
            Journal::stage(&mut commit.log, &self.validator, e, &json);
            commit.moves.push((t, self.layout.queue().join(&file), false));
            commit.new_names.push(file);
        }
        if !events.is_empty() {
            commit.dirs.insert(self.layout.queue());
        }
        Ok(())
    }

    /// Puts a claim back in the queue as `attempt`, not due before `due`.
    /// Moving the claim back is the last step of its entry.
    fn stage_requeue(&self, commit: &mut Commit, claim_dir: &Path, name: &EntryName, attempt: u32, due: SystemTime) {
        let mut next = name.clone();
        next.attempt = attempt;
        next.due_ms = Some(ms_of(due));
        commit.moves.push((claim_dir.join(name.file_name()), self.layout.queue().join(next.file_name()), false));
        commit.dirs.insert(self.layout.queue());
        commit.dirs.insert(claim_dir.to_path_buf());
        commit.new_names.push(next.file_name());
    }

    fn stage_record(&self, commit: &mut Commit, target: PathBuf, record: &impl Serialize) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record).context("failed to serialize a record")?;
        let t = fsio::write_tmp(&self.layout.tmp(), "record", &bytes, false)?;
        if let Some(parent) = target.parent() {
            if !parent.is_dir() {
                std::fs::create_dir_all(parent).with_context(|| format!("failed to create {}", parent.display()))?;
                if let Some(grand) = parent.parent() {
                    commit.dirs.insert(grand.to_path_buf());
                }
            }
            commit.dirs.insert(parent.to_path_buf());
        }
        commit.moves.push((t, target, true));
        Ok(())
    }

    /// Phase two: everything staged is durable; put it in place.
    fn apply(&self, commit: Commit, stage: &str) -> Result<()> {
        for (tmp, target, replace) in &commit.moves {
            if *replace {
                std::fs::rename(tmp, target)
                    .with_context(|| format!("failed to move {} to {}", tmp.display(), target.display()))?;
            } else {
                fsio::rename_noreplace(tmp, target)?;
            }
        }
        fsio::failpoint(&format!("{stage}.renamed"));
        for dir in &commit.dirs {
            fsio::sync_dir(dir)?;
        }
        fsio::failpoint(&format!("{stage}.dir-synced"));
        if !commit.archive.is_empty() {
            // Opened from the root without following a link at any step:
            // handlers never get to redirect the host's appends.
            let dir = fsio::beneath::open_dir(self.layout.root(), Layout::archive_rel(), fsio::beneath::Create::No)?;
            for (path, lines) in &commit.archive {
                let name = path.file_name().and_then(|n| n.to_str()).context("archive file without a name")?;
                Self::append_archive(&dir, name, lines)?;
            }
            // A day file may have just been created.
            dir.sync_all().with_context(|| format!("failed to sync directory {}", self.layout.archive().display()))?;
        }
        fsio::failpoint(&format!("{stage}.archived"));
        self.remember(commit.new_names);
        if !commit.removals.is_empty() {
            self.reap(commit.removals);
        }
        Ok(())
    }
}
