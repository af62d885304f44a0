//! Claiming: the next due entry, critical first and FIFO within a priority,
//! is renamed from `events/queue/` into this process's owner directory
//! under `events/claimed/` (see [`super::owner`]). The rename is the lock:
//! of several dispatchers only one wins it, and the others move on.
//!
//! Listing `queue/` costs a directory read, so the names listed are kept in
//! a pending set and served from it until it runs dry; a claim that loses
//! its race (the file is gone) just takes the next name. Names this
//! process enqueues are added to the set directly.
//!
//! Crash story: a claim is one rename, so an entry is either queued or
//! claimed. A claimed entry whose dispatcher dies is taken back by
//! `recover`. A claimed entry that is not a readable event is moved to the
//! dead-letter queue with its raw text, so it neither blocks the queue nor
//! vanishes.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{Claim, Delivery, EntryName, FsQueue, now_ms, now_rfc3339, owner};
use crate::event::Event;
use crate::fsio;
use crate::lock::Recover;
use crate::records::DeadLetterRecord;

impl FsQueue {
    /// [`super::Queue::claim`] of the filesystem queue.
    pub(super) fn claim_next(&self) -> Result<Option<Claim>> {
        let now = now_ms();
        let mut relisted = false;
        loop {
            let next = {
                let mut pending = self.pending.locked();
                if pending.is_empty() && !relisted {
                    let foreign = self.refill(&mut pending)?;
                    relisted = true;
                    if !foreign.is_empty() {
                        drop(pending);
                        for path in &foreign {
                            self.adopt(path)?;
                        }
                        continue;
                    }
                }
                // The first due entry; delayed ones stay for a later pass.
                let found = pending.iter().find(|n| EntryName::parse(n).is_some_and(|e| e.is_due(now))).cloned();
                match found {
                    Some(n) => {
                        pending.remove(&n);
                        n
                    }
                    None if relisted => return Ok(None),
                    None => {
                        pending.clear();
                        continue;
                    }
                }
            };
            let from = self.layout.queue().join(&next);
            let to = self.claim_dir()?.join(&next);
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                // Another dispatcher won it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("failed to claim queue entry {}", from.display())),
            }
            let name = EntryName::parse(&next).expect("parsed when listed");
            let delivery = if name.attempt > 1 { self.read_delivery(&name)? } else { Delivery::default() };
            match self.read_claimed(&to) {
                Ok(event) => return Ok(Some(Claim { name, event, delivery })),
                Err(e) => self.dead_letter_unreadable(&to, &name, &e)?,
            }
        }
    }

    /// Moves a claimed entry that is not a readable event to the
    /// dead-letter queue, with its raw text and why.
    fn dead_letter_unreadable(&self, path: &Path, name: &EntryName, e: &anyhow::Error) -> Result<()> {
        let raw = std::fs::read_to_string(path).unwrap_or_default();
        let record = DeadLetterRecord::not_an_event(raw, name.key(), format!("{e:#}"), now_rfc3339());
        fsio::write_durably(
            &self.layout.tmp(),
            &self.dead_letter_path(name),
            serde_json::to_string_pretty(&record)?.as_bytes(),
        )?;
        std::fs::remove_file(path).with_context(|| format!("failed to remove {}", path.display()))?;
        tracing::warn!(entry = %name.file_name(), error = %format!("{e:#}"), "unreadable queue entry moved to the dead-letter queue");
        Ok(())
    }

    /// Lists `queue/` into the pending set; returns the files dropped in by
    /// hand, to [`FsQueue::adopt`] once the pending lock is released
    /// (adopting enqueues, which takes that lock again).
    fn refill(&self, pending: &mut BTreeSet<String>) -> Result<Vec<PathBuf>> {
        let dir = self.layout.queue();
        let mut foreign = Vec::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("failed to list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("failed to list {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if EntryName::parse(&name).is_some() {
                pending.insert(name);
            } else if name.ends_with(".json") && !name.starts_with('.') {
                foreign.push(entry.path());
            }
        }
        Ok(foreign)
    }

    fn read_claimed(&self, path: &Path) -> Result<Event> {
        // The lease runs from the claiming rename, which set the file's ctime.
        let mut f = File::open(path).with_context(|| format!("failed to open claimed entry {}", path.display()))?;
        let mut text = String::new();
        f.read_to_string(&mut text).with_context(|| format!("failed to read claimed entry {}", path.display()))?;
        self.validator.parse(&text).map_err(|e| anyhow::anyhow!("invalid queued event in {}: {e}", path.display()))
    }

    /// Events queued by name (for callers that know their names, e.g. the
    /// dispatcher after emitting): lets this process serve them without a
    /// re-list.
    pub(super) fn remember(&self, names: impl IntoIterator<Item = String>) {
        let mut pending = self.pending.locked();
        pending.extend(names);
    }

    /// Forgets what was listed, so the next claim re-lists `queue/`.
    pub fn rescan(&self) {
        self.pending.locked().clear();
    }

    /// The directory this queue claims into (made at the first claim).
    pub(super) fn claim_dir(&self) -> Result<PathBuf> {
        let mut owner = self.owner.locked();
        if let Some(o) = owner.as_ref() {
            return Ok(o.dir.clone());
        }
        let o = owner::Owner::create(&self.layout).context("failed to make this dispatcher's claim directory")?;
        let dir = o.dir.clone();
        *owner = Some(o);
        Ok(dir)
    }
}
