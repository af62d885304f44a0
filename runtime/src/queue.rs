//! The durable event queue: enqueue, claim, settle (ack, retry, dead-letter),
//! recover and depth, behind the small [`Queue`] trait so that a Redis
//! Streams backend can sit where the filesystem one does.
//!
//! The filesystem backend, [`FsQueue`], keeps one JSON file per event in
//! `events/queue/`, named so that a plain sort serves critical events first
//! and FIFO within a priority (see [`EntryName`]). A claim is a rename into
//! this process's directory under `events/claimed/`, so only one dispatcher
//! wins it. Settling a batch writes every follow-up event, archive record,
//! delivery record and dead letter to `events/tmp/`, makes them durable with
//! one `syncfs` (which also covers the state the handlers wrote), renames
//! them into place, syncs the directories, and only then removes the
//! claims. A crash at any point leaves either the claim (the event runs
//! again: at-least-once) or its completed record (recovery sees it and
//! finishes the ack).
//!
//! One job per file, each with its crash story in its own docs:
//! - `name`: the entry-name codec; `clock`: the process clock.
//! - `verdict`: [`Claim`], [`Verdict`], [`Settlement`] (in memory only).
//! - `fs`: [`FsQueue`]'s state, paths and listings, and its [`Queue`] impl.
//! - `claim`: claiming; `adopt`: files dropped into `queue/` by hand.
//! - `commit`: the two-phase group commit of enqueues and settlements.
//! - `reaper`: removing settled claims off the commit path.
//! - `recover`: taking back the claims of dispatchers that died;
//!   `owner`: which process holds which claims.
//! - `archive`: day files, retention, the proof that an entry was settled;
//!   `known`: the idempotency check of producers' event ids.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::event::Event;
use crate::fsio;
use crate::layout::Layout;
use crate::records::{ArchiveRecord, DeadLetterRecord};

mod adopt;
mod archive;
mod claim;
mod clock;
mod commit;
mod fs;
mod known;
pub(crate) use known::LineIds;
mod name;
mod owner;
mod reaper;
mod recover;
mod store;
mod verdict;

pub use crate::records::{AttemptRecord, Delivery, Failure};
pub use archive::Pruned;
pub(crate) use archive::archive_day;
pub use clock::{ms_of, now_ms, now_rfc3339, now_us};
pub use fs::FsQueue;
pub use name::{EntryName, key_event_id};
pub use verdict::{Claim, Joint, Settlement, Verdict};

/// How full the queue is.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Depth {
    /// Entries waiting, ready or delayed.
    pub queued: usize,
    /// Of those, retries not yet due.
    pub delayed: usize,
    pub claimed: usize,
    pub dead_letters: usize,
    /// The entry that has waited longest (any priority).
    #[serde(skip)]
    pub oldest: Option<EntryName>,
    /// When the next delayed entry becomes due (ms since the epoch).
    #[serde(skip)]
    pub next_due_ms: Option<u64>,
}

/// What recovery found in `claimed/`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovered {
    /// Stale claims put back in the queue with the attempt count raised.
    pub requeued: usize,
    /// Stale claims whose work was already recorded; the ack was finished.
    pub finished: usize,
    /// Temp files left by writers that died, removed.
    pub stale_temp_files: usize,
}

/// The queue interface a dispatcher needs.
pub trait Queue: Send + Sync {
    /// Durably adds events: when this returns, they survive a crash.
    ///
    /// # Errors
    /// When they cannot be written; then none of them is queued.
    fn enqueue(&self, events: &[Event]) -> Result<()>;

    /// Takes the next due entry (critical first, FIFO within a priority), or
    /// `None` when no entry is due.
    ///
    /// # Errors
    /// On I/O errors other than losing a race to another dispatcher.
    fn claim(&self) -> Result<Option<Claim>>;

    /// Ends a batch of claims in one durable group commit.
    ///
    /// # Errors
    /// When anything cannot be written; claims not yet removed stay claimed
    /// and are recovered after their lease.
    fn settle(&self, batch: Vec<Settlement>) -> Result<()>;

    /// Takes back claims older than `lease` (their dispatcher died).
    ///
    /// # Errors
    /// On I/O errors.
    fn recover(&self, lease: Duration) -> Result<Recovered>;

    /// # Errors
    /// On I/O errors.
    fn depth(&self) -> Result<Depth>;

    /// Whether [`Queue::settle_with_state`] commits to `state` in the same
    /// step as the settlement: `state` is this store's own backend, on the
    /// same server (Redis). The filesystem's settlement and its SQLite
    /// state are two commits: no.
    fn joins_state(&self, state: &std::sync::Arc<dyn crate::kv::Backend>) -> bool {
        let _ = state;
        false
    }

    /// Commits the key-value buffers `changes` and settles `batch` in one
    /// atomic step (issue 13): the event of buffer `i` is `batch[owners[i]]`
    /// (`None`: its event is settled in a later batch), and an event with a
    /// buffer refused as a conflict is settled with its `rerun`. Returns
    /// what became of each buffer. Called only when
    /// [`Queue::joins_state`] says so.
    ///
    /// # Errors
    /// When the step cannot be made; then nothing of it may have been
    /// applied, or all of it (a lost reply): the claims are recovered after
    /// their lease and the writes' marks keep them from applying twice.
    fn settle_with_state(
        &self,
        changes: &[crate::kv::Changes],
        owners: &[Option<usize>],
        batch: &[Joint],
    ) -> Result<Vec<crate::kv::Applied>> {
        let _ = (changes, owners, batch);
        bail!("this queue does not settle with its state in one step")
    }

    /// Finishes background work (e.g. removing settled claims) before exit.
    fn flush(&self) {}

    /// The dispatch run that claimed through this queue ended with an
    /// error, leaving claims it will never settle: stop keeping them alive,
    /// so recovery takes them back after their lease. (The filesystem's
    /// claims age by themselves; nothing to do there.)
    fn abandon(&self) {}

    /// Resets the idle time of the claims this process holds if due (the
    /// claim loop calls it while it waits for events in flight, e.g. while
    /// a lane waits for a handler lease another host holds), so that no
    /// other host takes them back as a dead dispatcher's. The filesystem's
    /// claims are kept alive by their owner's lock; nothing to do there.
    ///
    /// # Errors
    /// When the store cannot be reached.
    fn keep_alive(&self) -> Result<()> {
        Ok(())
    }

    /// The handler leases of a store shared by several hosts (see
    /// [`crate::store::lease`]), or `None` when one process serves the store
    /// and its lanes already serialise a handler (the filesystem: always
    /// granted, no lease traffic).
    fn leases(&self) -> Option<std::sync::Arc<dyn crate::store::lease::Leases>> {
        None
    }

    /// Which of these events the store already holds, each with where
    /// ("queued", "being handled", "dead-lettered", "archived"): the event
    /// id is the idempotency key, so a producer's re-send is skipped. A
    /// check before enqueueing, not a lock: two producers sending the same
    /// id at the same moment may both get through.
    ///
    /// The default (for a store that cannot tell) knows none of them.
    ///
    /// # Errors
    /// When the store cannot be read.
    fn known(&self, events: &[&Event]) -> Result<BTreeMap<String, &'static str>> {
        let _ = events;
        Ok(BTreeMap::new())
    }

    /// Durably adds those of `events` whose ids the store does not know
    /// (see [`Queue::known`]); says which it added. Unlike a check before
    /// [`Queue::enqueue`], a store shared by several hosts decides and adds
    /// in one step, so hosts offering the same ids at once (each firing the
    /// same schedule tick) add each once.
    ///
    /// The default checks, then adds: enough for a store whose producers
    /// of the same ids already exclude each other (the filesystem's
    /// schedules fire under the root's schedule lock).
    ///
    /// # Errors
    /// When the store cannot be read or written; then none of them is queued.
    fn enqueue_new(&self, events: &[Event]) -> Result<Vec<bool>> {
        let known = self.known(&events.iter().collect::<Vec<_>>())?;
        let added: Vec<bool> = events.iter().map(|e| !known.contains_key(&e.event_id)).collect();
        let new: Vec<Event> = events.iter().zip(&added).filter(|(_, a)| **a).map(|(e, _)| e.clone()).collect();
        self.enqueue(&new)?;
        Ok(added)
    }

    /// Acknowledges one claim.
    ///
    /// # Errors
    /// As [`Queue::settle`].
    fn ack(&self, claim: Claim, record: ArchiveRecord) -> Result<()> {
        self.settle(vec![Settlement { claim, emitted: Vec::new(), verdict: Verdict::Ack(Box::new(record)) }])
    }

    /// Puts one claim back for a later attempt.
    ///
    /// # Errors
    /// As [`Queue::settle`].
    fn retry(&self, claim: Claim, due: SystemTime, delivery: Delivery) -> Result<()> {
        self.settle(vec![Settlement { claim, emitted: Vec::new(), verdict: Verdict::Retry { due, delivery } }])
    }

    /// Moves one claim to the dead-letter queue.
    ///
    /// # Errors
    /// As [`Queue::settle`].
    fn dead_letter(&self, claim: Claim, record: DeadLetterRecord) -> Result<()> {
        let verdict = Verdict::DeadLetter(Box::new(record));
        self.settle(vec![Settlement { claim, emitted: Vec::new(), verdict }])
    }
}

/// Rejects a root that is not usable before anything is written.
///
/// # Errors
/// Naming the directory and the fix.
pub fn check_writable(layout: &Layout) -> Result<()> {
    let probe = fsio::tmp_path(&layout.tmp(), "probe");
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!(
            "coordination root {} is not writable ({e}); check its permissions and free space",
            layout.root().display()
        ),
    }
}
