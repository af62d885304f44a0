//! [`RedisStore`]: the queue of the Redis backend, shared by every host of
//! a deployment. Every key is under `{prefix}:` (see [`Redis::key`]); the
//! scripts build their keys from the prefix, so this needs one standalone
//! server (or one primary), not Redis Cluster.
//!
//! ```text
//! {p}:q:{rank}          a stream per priority (rank 0 = critical); fields
//!                       key ({rank}-{µs}-{event id}, see EntryName::key),
//!                       attempt, event (the event's JSON)
//! {p}:delayed           retries and deferrals: a sorted set of keys by due ms
//! {p}:delayed:body      key → "{attempt}\n{event JSON}" of each delayed entry
//! {p}:delivery          key → Delivery JSON (what earlier deliveries left)
//! {p}:dead              key → DeadLetterRecord JSON
//! {p}:known             event id → q (queued) | h (being handled) | d (dead-lettered)
//! {p}:archive:{day}     a list of archive lines (ArchiveRecord JSON), one per event
//! {p}:archive-days      day → last append (ms): the archive's index and retention clock
//! {p}:archive-bytes     day → bytes of its lines
//! {p}:archive-ids:{day} the event ids archived that day (the idempotency check)
//! {p}:enqueued:{token}  a batch already enqueued (expires after an hour)
//! ```
//!
//! - **Queue.** One consumer group, `dispatch`, on every stream (made with
//!   `MKSTREAM` when a store opens); a consumer per process
//!   (`host-pid-random`). [`Queue::claim`] runs `claim.lua`: it moves the
//!   retries that are due back to the tail of their stream, then
//!   `XREADGROUP`s up to [`PREFETCH`] entries from the most urgent stream
//!   that has any, so critical is served first and FIFO holds within a
//!   priority. Prefetched entries are in this consumer's pending list, so
//!   a crash leaves them for another host's `XAUTOCLAIM`; a critical event
//!   that arrives meanwhile waits behind at most [`PREFETCH`] of them.
//!   [`Queue::flush`] gives back prefetched entries never handed out.
//!   A stream holds only waiting and claimed entries: every entry is
//!   `XDEL`ed when it is settled or put back.
//! - **Retries.** `Retry`/`Defer` move the entry to `{p}:delayed`; a due one
//!   goes back to its stream (atomically, in `claim.lua`) at the tail: it
//!   is served after entries queued while it waited, unlike the filesystem
//!   queue, whose names keep the first enqueue time.
//! - **Settlement** ([`Queue::settle`], `settle.lua`): one script per batch.
//!   For each settlement it `XACK`s the entry and, only when that acked
//!   something, `XDEL`s it, writes the archive line (or the dead letter, or
//!   the delayed entry and delivery record), updates the known ids and
//!   `XADD`s the follow-ups (the other writes once per key for the batch:
//!   one `XDEL` per stream, one `RPUSH` per archive day, ...). Run twice (a reply lost and the call
//!   repeated), the second run changes nothing; an entry another host took
//!   back after its lease is not settled here either (it runs again there:
//!   at-least-once). A script runs atomically, so a crash of this process
//!   leaves the settlement whole or absent.
//! - **Enqueue** (`enqueue`): one `MULTI`/`EXEC` transaction per batch,
//!   with a batch token remembered for an hour, so a call repeated after a
//!   lost reply does not queue the batch twice. All or nothing.
//! - **Enqueue what is new** (`enqueue_new.lua`, for schedule ticks that
//!   every host fires): each id is checked against `{p}:known` and the
//!   archive day's ids and added only when absent, in one script, so hosts
//!   offering the same ids at once add each once.
//! - **Recovery** ([`Queue::recover`]): first this process resets the idle
//!   time of the entries it holds (`XCLAIM … JUSTID`, also from `claim`
//!   every quarter lease), so a live dispatcher never loses a slow
//!   handler's entry; then `reclaim.lua` `XAUTOCLAIM`s entries idle longer
//!   than the lease and `requeue.lua` puts each back as a fresh entry with
//!   the attempt raised and the lease's expiry in its delivery record.
//!   `Recovered::finished` and `stale_temp_files` stay 0: a settlement is
//!   one script, so there is never a recorded-but-unacked entry.
//! - **Durability** is the server's: run it with `appendonly yes` and
//!   `appendfsync always` for the filesystem's guarantee (`everysec` may
//!   lose the last second of acknowledged writes if the server host dies).
//!
//! The reads the operators' commands make are in `reads`, the archive and
//! its retention in `archive`, and [`Queue::settle`]/[`Queue::recover`]
//! in `settle`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Budget, Redis};
use crate::event::Event;
use crate::lock::Recover;
use crate::queue::{Claim, Delivery, Depth, EntryName, Queue, Recovered, Settlement, now_ms};

/// The consumer group every dispatcher reads the streams through.
pub const GROUP: &str = "dispatch";
/// Entries read per `XREADGROUP`, at most.
pub const PREFETCH: usize = 16;
/// How long a call keeps retrying while the server is unreachable.
pub(super) const RETRY: Budget = Budget::For(Duration::from_secs(30));

/// The Lua scripts, loaded by hash (and sent whole only when the server
/// does not know it yet).
pub(super) struct Scripts {
    pub(super) enqueue_new: redis::Script,
    pub(super) claim: redis::Script,
    pub(super) settle: redis::Script,
    pub(super) requeue: redis::Script,
    pub(super) reclaim: redis::Script,
    pub(super) depth: redis::Script,
    pub(super) expire: redis::Script,
    pub(super) purge: redis::Script,
    pub(super) consumers: redis::Script,
}

pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    enqueue_new: redis::Script::new(include_str!("scripts/enqueue_new.lua")),
    claim: redis::Script::new(include_str!("scripts/claim.lua")),
    settle: redis::Script::new(include_str!("scripts/settle.lua")),
    requeue: redis::Script::new(include_str!("scripts/requeue.lua")),
    reclaim: redis::Script::new(include_str!("scripts/reclaim.lua")),
    depth: redis::Script::new(include_str!("scripts/depth.lua")),
    expire: redis::Script::new(include_str!("scripts/expire.lua")),
    purge: redis::Script::new(include_str!("scripts/purge.lua")),
    consumers: redis::Script::new(include_str!("scripts/consumers.lua")),
});

/// A claimed entry this process holds: where it is in its stream.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub(super) rank: u8,
    pub(super) id: String,
}

/// An entry as `claim.lua` and `reclaim.lua` return it.
#[derive(Debug, Clone)]
pub(super) struct Wire {
    pub(super) rank: u8,
    pub(super) id: String,
    pub(super) key: String,
    pub(super) attempt: String,
    pub(super) event: String,
    pub(super) delivery: String,
}

impl Wire {
    /// Parses the script's reply rows.
    pub(super) fn rows(rows: Vec<Vec<String>>) -> Result<Vec<Wire>> {
        rows.into_iter()
            .map(|row| match <[String; 6]>::try_from(row) {
                Ok([rank, id, key, attempt, event, delivery]) => Ok(Wire {
                    rank: rank.parse().with_context(|| format!("bad stream rank {rank:?} in a script reply"))?,
                    id,
                    key,
                    attempt,
                    event,
                    delivery,
                }),
                Err(row) => anyhow::bail!("a script reply row has {} fields, not 6", row.len()),
            })
            .collect()
    }

    /// Its entry name; `None` when the entry was not written by Cortex.
    pub(super) fn name(&self) -> Option<EntryName> {
        EntryName::parse(&format!("{}-a{}.json", self.key, self.attempt)).filter(|n| n.priority.rank() == self.rank)
    }

    /// The claim it is, or why it is not one.
    pub(super) fn claim(&self) -> std::result::Result<Claim, String> {
        let name = self.name().ok_or_else(|| format!("entry {} has no valid key and attempt", self.id))?;
        let event: Event =
            serde_json::from_str(&self.event).map_err(|e| format!("entry {} is not an event: {e}", self.id))?;
        let delivery = if self.delivery.is_empty() {
            Delivery::default()
        } else {
            // A delivery record that does not read is as good as none: the
            // event runs every handler again (at-least-once).
            serde_json::from_str(&self.delivery).unwrap_or_else(|e| {
                tracing::warn!(key = %self.key, error = %e, "ignoring a corrupt delivery record");
                Delivery::default()
            })
        };
        Ok(Claim { name, event, delivery })
    }
}

/// The Redis backend of [`crate::store::Store`].
pub struct RedisStore {
    pub(super) server: Arc<Redis>,
    /// This process's consumer name in the group.
    pub(super) consumer: String,
    /// Archive days whose last append is older than this are removed
    /// (`[archive] retention_days`); `None` keeps them forever.
    pub(super) retention: Option<Duration>,
    /// Prefetched claims not yet handed out.
    buffer: Mutex<VecDeque<Claim>>,
    /// Every claim this process holds (prefetched or handed out), by key.
    pub(super) held: Mutex<HashMap<String, Held>>,
    /// When the idle times of held entries were last reset.
    pub(super) refreshed: Mutex<Instant>,
    /// The lease recovery last ran with (claims are refreshed well within it).
    pub(super) lease: Mutex<Duration>,
    pub(super) last_prune: Mutex<Option<Instant>>,
    batches: AtomicU64,
    /// Handler state under the same prefix, made on first use.
    pub(super) state: std::sync::OnceLock<Arc<dyn crate::kv::Backend>>,
    /// Handler leases under the same prefix (`[backend] lease_ms`).
    leases: Arc<super::lease::RedisLeases>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("server", &self.server).field("consumer", &self.consumer).finish()
    }
}

impl RedisStore {
    /// The store under `server`'s prefix: makes the streams and the
    /// consumer group when they do not exist yet.
    ///
    /// # Errors
    /// When the server cannot be reached or refuses to make them.
    pub fn open(server: Arc<Redis>) -> Result<RedisStore> {
        for rank in 0..4u8 {
            let stream = server.key(&format!("q:{rank}"));
            server.run("create the dispatch consumer group", RETRY, |c| {
                match redis::cmd("XGROUP").arg("CREATE").arg(&stream).arg(GROUP).arg("0").arg("MKSTREAM").exec(c) {
                    Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                    other => other,
                }
            })?;
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host = Some(host.trim()).filter(|h| !h.is_empty()).unwrap_or("host");
        let consumer = format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..));
        Ok(RedisStore {
            leases: Arc::new(super::lease::RedisLeases::new(server.clone(), super::lease::DEFAULT_LEASE)),
            server,
            consumer,
            retention: Some(Duration::from_secs(crate::config::DEFAULT_RETENTION_DAYS * 86_400)),
            buffer: Mutex::default(),
            held: Mutex::default(),
            refreshed: Mutex::new(Instant::now()),
            lease: Mutex::new(Duration::from_secs(300)),
            last_prune: Mutex::new(None),
            batches: AtomicU64::new(0),
            state: std::sync::OnceLock::new(),
        })
    }

    /// Applies `[archive] retention_days` (0 keeps every day). The other
    /// `[archive]` settings are the filesystem's: Redis days are plain
    /// lists, never compressed, and not exported before removal.
    #[must_use]
    pub fn with_archive(mut self, config: &crate::config::ArchiveConfig) -> RedisStore {
        let days = config.retention_days;
        self.retention = (days > 0).then(|| Duration::from_secs(days.saturating_mul(86_400)));
        self
    }

    /// Leases of `ttl` (`[backend] lease_ms`) for the handlers that need one.
    #[must_use]
    pub fn with_lease(mut self, ttl: Duration) -> RedisStore {
        self.leases = Arc::new(super::lease::RedisLeases::new(self.server.clone(), ttl));
        self
    }

    /// The connection this store uses.
    pub fn server(&self) -> &Arc<Redis> {
        &self.server
    }

    /// This process's consumer name in the `dispatch` group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Reads up to [`PREFETCH`] entries into the buffer; false when none
    /// was due. Entries that are not Cortex events are dead-lettered.
    fn fill(&self) -> Result<bool> {
        let p = self.server.prefix().to_string();
        let rows: Vec<Vec<String>> = self.server.run("claim queue entries", RETRY, |c| {
            SCRIPTS.claim.arg(&p).arg(GROUP).arg(&self.consumer).arg(now_ms()).arg(PREFETCH).invoke(c)
        })?;
        let wires = Wire::rows(rows)?;
        if wires.is_empty() {
            return Ok(false);
        }
        let mut bad = Vec::new();
        {
            let mut held = self.held.locked();
            let mut buffer = self.buffer.locked();
            for w in wires {
                match w.claim() {
                    Ok(claim) => {
                        held.insert(w.key.clone(), Held { rank: w.rank, id: w.id.clone() });
                        buffer.push_back(claim);
                    }
                    Err(why) => bad.push((w, why)),
                }
            }
        }
        for (w, why) in bad {
            self.reject(&w, &why)?;
        }
        Ok(true)
    }

    /// Resets the idle time of the entries this process holds when a
    /// quarter of the lease has passed since it last did.
    pub(super) fn refresh_if_due(&self) -> Result<()> {
        let lease = *self.lease.locked();
        if self.refreshed.locked().elapsed() < lease / 4 {
            return Ok(());
        }
        self.refresh()
    }

    /// Resets the idle time of every entry this process holds, so that no
    /// other host's recovery takes it while its handlers run.
    pub(super) fn refresh(&self) -> Result<()> {
        *self.refreshed.locked() = Instant::now();
        let mut by_rank: BTreeMap<u8, Vec<String>> = BTreeMap::new();
        for h in self.held.locked().values() {
            by_rank.entry(h.rank).or_default().push(h.id.clone());
        }
        if by_rank.is_empty() {
            return Ok(());
        }
        self.server.run("refresh the claims this process holds", RETRY, |c| {
            let mut pipe = redis::pipe();
            for (rank, ids) in &by_rank {
                // Only entries still pending: without FORCE, XCLAIM skips
                // one another host took back and requeued meanwhile.
                pipe.cmd("XCLAIM")
                    .arg(self.server.key(&format!("q:{rank}")))
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg(0)
                    .arg(ids)
                    .arg("JUSTID")
                    .ignore();
            }
            pipe.exec(c)
        })
    }

    /// Gives back prefetched claims never handed out, attempt unchanged.
    fn release(&self) -> Result<()> {
        let claims: Vec<Claim> = self.buffer.locked().drain(..).collect();
        if claims.is_empty() {
            return Ok(());
        }
        let mut args = Vec::new();
        {
            let mut held = self.held.locked();
            for c in &claims {
                let Some(h) = held.remove(&c.name.key()) else { continue };
                args.extend([
                    h.rank.to_string(),
                    h.id,
                    c.name.key(),
                    c.event.event_id.clone(),
                    c.name.attempt.to_string(),
                    c.event.to_json(),
                    String::new(),
                ]);
            }
        }
        self.requeue(&args).map(|_| ())
    }

    /// Runs `requeue.lua` on `args` (seven per entry); how many it put back.
    pub(super) fn requeue(&self, args: &[String]) -> Result<usize> {
        if args.is_empty() {
            return Ok(0);
        }
        let p = self.server.prefix().to_string();
        let applied: Vec<i64> = self.server.run("put claimed entries back in the queue", RETRY, |c| {
            let mut inv = SCRIPTS.requeue.prepare_invoke();
            inv.arg(&p).arg(GROUP);
            for a in args {
                inv.arg(a);
            }
            inv.invoke(c)
        })?;
        Ok(applied.iter().filter(|&&a| a == 1).count())
    }

    /// The script arguments that queue `events` as new entries:
    /// (rank, key, event id, event JSON) each.
    pub(super) fn new_entries(events: &[Event], args: &mut Vec<String>) {
        for e in events {
            let name = EntryName::first(e);
            args.extend([name.priority.rank().to_string(), name.key(), e.event_id.clone(), e.to_json()]);
        }
    }

    fn depth_now(&self) -> Result<Depth> {
        let p = self.server.prefix().to_string();
        let (ready, claimed, delayed, waiting, next_due, dead, oldest): (
            usize,
            usize,
            usize,
            usize,
            i64,
            usize,
            String,
        ) = self
            .server
            .run("read the queue depth", RETRY, |c| SCRIPTS.depth.arg(&p).arg(GROUP).arg(now_ms()).invoke(c))?;
        Ok(Depth {
            queued: ready + delayed,
            delayed: waiting,
            claimed,
            dead_letters: dead,
            oldest: EntryName::parse(&format!("{oldest}-a1.json")),
            next_due_ms: u64::try_from(next_due).ok(),
        })
    }
}

impl Queue for RedisStore {
    fn enqueue(&self, events: &[Event]) -> Result<()> {
        let token = format!("{}-{}", self.consumer, self.batches.fetch_add(1, Ordering::Relaxed));
        self.enqueue_once(events, &token).map(|_| ())
    }

    fn enqueue_new(&self, events: &[Event]) -> Result<Vec<bool>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec![self.server.prefix().to_string()];
        // The arguments of a new entry, then its archive day.
        for e in events {
            Self::new_entries(std::slice::from_ref(e), &mut args);
            args.push(crate::queue::archive_day(e).to_string());
        }
        let what = format!("enqueue {} events not known yet", events.len());
        let added: Vec<i64> = self.server.run(&what, RETRY, |c| {
            let mut inv = SCRIPTS.enqueue_new.prepare_invoke();
            for a in &args {
                inv.arg(a);
            }
            inv.invoke(c)
        })?;
        Ok(added.iter().map(|&a| a == 1).collect())
    }

    fn claim(&self) -> Result<Option<Claim>> {
        self.refresh_if_due()?;
        loop {
            if let Some(claim) = self.buffer.locked().pop_front() {
                return Ok(Some(claim));
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    fn settle(&self, batch: Vec<Settlement>) -> Result<()> {
        self.settle_batch(batch)
    }

    fn joins_state(&self, state: &Arc<dyn crate::kv::Backend>) -> bool {
        self.joins(state)
    }

    fn settle_with_state(
        &self,
        changes: &[crate::kv::Changes],
        owners: &[Option<usize>],
        batch: &[crate::queue::Joint],
    ) -> Result<Vec<crate::kv::Applied>> {
        self.settle_joint(changes, owners, batch)
    }

    fn recover(&self, lease: Duration) -> Result<Recovered> {
        self.recover_claims(lease)
    }

    fn depth(&self) -> Result<Depth> {
        self.depth_now()
    }

    fn flush(&self) {
        if let Err(e) = self.release() {
            tracing::warn!(error = %format!("{e:#}"), "failed to give back prefetched claims; they are recovered after their lease");
        }
    }

    fn abandon(&self) {
        self.flush();
        // Not refreshed any more: recovery (this process's or another's)
        // takes them back once they have been idle for the lease.
        self.held.locked().clear();
    }

    fn keep_alive(&self) -> Result<()> {
        self.refresh_if_due()
    }

    fn leases(&self) -> Option<Arc<dyn crate::store::lease::Leases>> {
        Some(self.leases.clone())
    }

    fn known(&self, events: &[&Event]) -> Result<BTreeMap<String, &'static str>> {
        self.known_ids(events)
    }
}
