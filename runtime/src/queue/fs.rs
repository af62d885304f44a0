//! The filesystem queue of one coordination root: its state, where each
//! file lives, what it lists, and the [`Queue`] implementation, whose work
//! is done by the modules beside this one, one job each: `claim` (claiming
//! and hand-dropped files), `commit` (the group commit of enqueues and
//! settlements), `reaper` (removing settled claims), `recover` (taking
//! back the claims of dispatchers that died), `archive` (day files,
//! retention, the proof of settlement and the idempotency check).
//!
//! Crash story: this module writes nothing itself; it reads the directories
//! the others keep consistent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};

use super::name::list_names;
use super::reaper::Reaper;
use super::{Claim, Delivery, Depth, EntryName, Queue, Recovered, Settlement, now_ms, owner};
use crate::event::{Event, Priority, Validator};
use crate::journal::Journal;
use crate::layout::Layout;

/// The filesystem queue of one coordination root.
pub struct FsQueue {
    pub(super) layout: Layout,
    pub(super) journal: Journal,
    pub(super) validator: Validator,
    /// Names listed from `queue/` not yet tried, in serving order.
    pub(super) pending: Mutex<BTreeSet<String>>,
    /// Removes settled claims off the commit path (see [`FsQueue::flush`]).
    pub(super) reaper: Mutex<Option<Reaper>>,
    /// The `events/claimed/` directory this queue claims into, made at the
    /// first claim and locked while this process lives (see [`owner`]).
    pub(super) owner: Mutex<Option<owner::Owner>>,
    /// Archive day files whose last append is older than this are removed
    /// (`[archive] retention_days`); `None` keeps them forever.
    pub(super) archive_retention: Option<Duration>,
    /// Days named more than this many days ago are compressed
    /// (`[archive] compress_after_days`); `None` never compresses.
    pub(super) archive_compress_after: Option<u64>,
    /// Where expired archive files are copied before they are removed.
    pub(super) archive_export: Option<PathBuf>,
    /// When this process last pruned the archive.
    pub(super) last_prune: Mutex<Option<std::time::Instant>>,
    /// The webhook endpoints an archived event is delivered to: the commit
    /// writes their outbox records (see [`crate::webhooks`]).
    pub(super) webhooks: RwLock<Arc<crate::webhooks::Routes>>,
    /// The ids of the plain archive days the idempotency check looked in.
    pub(super) seen: Mutex<super::known::SeenIds>,
    /// Handler state, opened on first use (see [`crate::store::Store::state`]).
    pub(super) state: std::sync::OnceLock<Arc<dyn crate::kv::Backend>>,
}

impl FsQueue {
    /// # Errors
    /// When the root's layout is missing.
    pub fn open(layout: Layout, validator: Validator) -> Result<FsQueue> {
        layout.require()?;
        Ok(FsQueue {
            journal: Journal::new(layout.clone()),
            layout,
            validator,
            pending: Mutex::new(BTreeSet::new()),
            reaper: Mutex::new(None),
            owner: Mutex::new(None),
            archive_retention: Some(Duration::from_secs(crate::config::DEFAULT_RETENTION_DAYS * 86_400)),
            archive_compress_after: Some(crate::config::DEFAULT_COMPRESS_AFTER_DAYS),
            archive_export: None,
            last_prune: Mutex::new(None),
            webhooks: RwLock::default(),
            seen: Mutex::default(),
            state: std::sync::OnceLock::new(),
        })
    }

    /// Routes archived events to these webhook endpoints from now on,
    /// making their outbox directories first.
    ///
    /// # Errors
    /// When a directory cannot be made; the routes are then unchanged.
    pub fn set_webhooks(&self, routes: Arc<crate::webhooks::Routes>) -> Result<()> {
        crate::webhooks::outbox::prepare(&self.layout, &routes)?;
        *crate::lock::RecoverRw::write_locked(&self.webhooks) = routes;
        Ok(())
    }

    /// The webhook endpoints archived events are delivered to.
    pub fn webhooks(&self) -> Arc<crate::webhooks::Routes> {
        crate::lock::RecoverRw::read_locked(&self.webhooks).clone()
    }

    /// Keeps archive day files for `days` after their last append (0: forever).
    #[must_use]
    pub fn with_archive_retention(mut self, days: u64) -> FsQueue {
        self.archive_retention = (days > 0).then(|| Duration::from_secs(days.saturating_mul(86_400)));
        self
    }

    /// Applies the whole `[archive]` table: retention, compression and
    /// the export before removal (a relative directory is under the root).
    #[must_use]
    pub fn with_archive(mut self, config: &crate::config::ArchiveConfig) -> FsQueue {
        self = self.with_archive_retention(config.retention_days);
        self.archive_compress_after = (config.compress_after_days > 0).then_some(config.compress_after_days);
        self.archive_export = config.export_before_delete.as_ref().map(|d| self.layout.root().join(d));
        self
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(super) fn dead_letter_path(&self, name: &EntryName) -> PathBuf {
        self.layout.dead_letter().join(format!("{}.json", name.key()))
    }

    pub(super) fn attempts_path(&self, name: &EntryName) -> PathBuf {
        self.layout.attempts().join(format!("{}.json", name.key()))
    }

    /// What earlier deliveries of an entry left (none when it has no record).
    pub(super) fn read_delivery(&self, name: &EntryName) -> Result<Delivery> {
        let path = self.attempts_path(name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).with_context(|| format!("corrupt delivery record {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Delivery::default()),
            Err(e) => Err(e).with_context(|| format!("failed to read {}", path.display())),
        }
    }

    /// The event of a queue entry (for `status`).
    ///
    /// # Errors
    /// When the entry is gone or unreadable.
    pub fn peek(&self, name: &EntryName) -> Result<Event> {
        let path = self.layout.queue().join(name.file_name());
        let text = std::fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))?;
        self.validator.parse(&text).map_err(|e| anyhow::anyhow!("invalid queued event in {}: {e}", path.display()))
    }

    /// Counts of queued entries by priority.
    ///
    /// # Errors
    /// When `queue/` cannot be listed.
    pub fn by_priority(&self) -> Result<BTreeMap<Priority, usize>> {
        let mut out = BTreeMap::new();
        for e in self.entries()? {
            *out.entry(e.priority).or_insert(0) += 1;
        }
        Ok(out)
    }

    /// Queue entries, parsed, in serving order.
    ///
    /// # Errors
    /// When `queue/` cannot be listed.
    pub fn entries(&self) -> Result<Vec<EntryName>> {
        list_names(&self.layout.queue())
    }

    /// Every claim file: the old flat ones and those in owner directories.
    pub(super) fn claim_names(&self) -> Result<Vec<EntryName>> {
        Ok(self.claim_files()?.into_iter().map(|(_, name)| name).collect())
    }

    /// Every claim file with where it is.
    pub(super) fn claim_files(&self) -> Result<Vec<(PathBuf, EntryName)>> {
        let claimed = self.layout.claimed();
        let mut out: Vec<(PathBuf, EntryName)> =
            list_names(&claimed)?.into_iter().map(|n| (claimed.join(n.file_name()), n)).collect();
        for dir in owner::dirs(&claimed) {
            // An owner directory may vanish while listed: its owner retired.
            out.extend(list_names(&dir).unwrap_or_default().into_iter().map(|n| (dir.join(n.file_name()), n)));
        }
        Ok(out)
    }

    fn depth_now(&self) -> Result<Depth> {
        let entries = self.entries()?;
        let now = now_ms();
        let delayed: Vec<&EntryName> = entries.iter().filter(|e| !e.is_due(now)).collect();
        Ok(Depth {
            queued: entries.len(),
            delayed: delayed.len(),
            next_due_ms: delayed.iter().filter_map(|e| e.due_ms).min(),
            claimed: self.claim_names()?.len(),
            dead_letters: count_json(&self.layout.dead_letter())?,
            oldest: entries.iter().min_by_key(|e| e.enqueued_us).cloned(),
        })
    }
}

impl Queue for FsQueue {
    fn enqueue(&self, events: &[Event]) -> Result<()> {
        self.enqueue_events(events)
    }

    fn known(&self, events: &[&Event]) -> Result<BTreeMap<String, &'static str>> {
        self.known_ids(events)
    }

    fn claim(&self) -> Result<Option<Claim>> {
        self.claim_next()
    }

    fn settle(&self, batch: Vec<Settlement>) -> Result<()> {
        self.settle_batch(batch)
    }

    fn recover(&self, lease: Duration) -> Result<Recovered> {
        self.recover_claims(lease)
    }

    fn flush(&self) {
        FsQueue::flush(self);
    }

    fn depth(&self) -> Result<Depth> {
        self.depth_now()
    }
}

/// A directory's entries; `None` when it does not exist.
pub(super) fn read_dir_if_any(dir: &Path) -> Result<Option<std::fs::ReadDir>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(Some(rd)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("failed to list {}", dir.display())),
    }
}

fn count_json(dir: &Path) -> Result<usize> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(rd.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".json")).count()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("failed to list {}", dir.display())),
    }
}
