//! The durable event queue: enqueue, claim, settle (ack, retry, dead-letter),
//! recover and depth, behind the small [`Queue`] trait so that a Redis
//! Streams backend can sit where the filesystem one does.
//!
//! The filesystem backend keeps one JSON file per event in `events/queue/`,
//! named so that a plain sort serves critical events first and FIFO within a
//! priority:
//!
//! ```text
//! {rank}-{enqueued µs, 16 digits}-{event_id}-a{attempt}[-{due ms}].json
//! ```
//!
//! A claim is a rename into `events/claimed/` (so only one dispatcher wins)
//! whose ctime starts the lease. Settling a batch writes every follow-up
//! event, archive record, delivery record and dead letter to `events/tmp/`,
//! makes them durable with one `syncfs` (which also covers the state the
//! handlers wrote), renames them into place, syncs the directories, and only
//! then removes the claims. A crash at any point leaves either the claim (the
//! event runs again: at-least-once) or its completed record (recovery sees
//! it and finishes the ack).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{Event, Priority, Validator};
use crate::fsio;
use crate::journal::Journal;
use crate::layout::Layout;

mod owner;

/// Batches at least this large are made durable with one `syncfs`; smaller
/// ones with an `fdatasync` per file, which does not wait for unrelated
/// dirty data elsewhere on the filesystem.
const GROUP_COMMIT_MIN: usize = 8;

/// The parsed name of a queue entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryName {
    pub priority: Priority,
    pub enqueued_us: u64,
    pub event_id: String,
    /// 1 for the first delivery.
    pub attempt: u32,
    /// Not to be claimed before this time (ms since the epoch), for retries.
    pub due_ms: Option<u64>,
}

impl EntryName {
    pub fn file_name(&self) -> String {
        match self.due_ms {
            Some(due) => format!("{}-a{}-{due}.json", self.key(), self.attempt),
            None => format!("{}-a{}.json", self.key(), self.attempt),
        }
    }

    /// What identifies this queue entry across its retries.
    pub fn key(&self) -> String {
        format!("{}-{:016}-{}", self.priority.rank(), self.enqueued_us, self.event_id)
    }

    pub fn parse(name: &str) -> Option<EntryName> {
        let stem = name.strip_suffix(".json")?;
        let mut parts = stem.split('-');
        let rank: u8 = parts.next()?.parse().ok()?;
        let enqueued = parts.next()?;
        let event_id = parts.next()?.to_string();
        let attempt: u32 = parts.next()?.strip_prefix('a')?.parse().ok()?;
        let due_ms = match parts.next() {
            Some(d) => Some(d.parse().ok()?),
            None => None,
        };
        if parts.next().is_some() || enqueued.len() != 16 || attempt == 0 {
            return None;
        }
        Some(EntryName {
            priority: Priority::from_rank(rank)?,
            enqueued_us: enqueued.parse().ok()?,
            event_id,
            attempt,
            due_ms,
        })
    }

    pub fn is_due(&self, now_ms: u64) -> bool {
        self.due_ms.is_none_or(|d| d <= now_ms)
    }
}

/// One failure of one handler on one delivery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failure {
    pub handler: String,
    pub component_sha256: String,
    /// `trap`, `timeout`, `error` (the handler's `Err`), `lease-expired`, `invalid`…
    pub kind: String,
    pub message: String,
    /// The full error chain (wasm backtrace included), when there is one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    pub duration_ms: f64,
}

/// One delivery that did not succeed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub at: String,
    pub failures: Vec<Failure>,
}

/// What earlier deliveries of a queue entry left: their failures, and the
/// handlers that already succeeded (they are not run again).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Delivery {
    #[serde(default)]
    pub history: Vec<AttemptRecord>,
    #[serde(default)]
    pub done: Vec<String>,
}

/// An event a dispatcher holds.
#[derive(Debug, Clone)]
pub struct Claim {
    pub name: EntryName,
    pub event: Event,
    pub delivery: Delivery,
}

/// How a claim ends.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Done: archive this record.
    Ack(Value),
    /// Run again no earlier than `due`, remembering `delivery`.
    Retry { due: SystemTime, delivery: Delivery },
    /// Failed for good: keep this forensic record.
    DeadLetter(Value),
    /// Not run (a handler it routes to does not load): back in the queue
    /// no earlier than `due`, with the same attempt number.
    Defer { due: SystemTime },
}

/// A claim, the events its handlers emitted, and its verdict.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub claim: Claim,
    pub emitted: Vec<Event>,
    pub verdict: Verdict,
}

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

    /// Finishes background work (e.g. removing settled claims) before exit.
    fn flush(&self) {}

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

    /// Acknowledges one claim.
    ///
    /// # Errors
    /// As [`Queue::settle`].
    fn ack(&self, claim: Claim, record: Value) -> Result<()> {
        self.settle(vec![Settlement { claim, emitted: Vec::new(), verdict: Verdict::Ack(record) }])
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
    fn dead_letter(&self, claim: Claim, record: Value) -> Result<()> {
        self.settle(vec![Settlement { claim, emitted: Vec::new(), verdict: Verdict::DeadLetter(record) }])
    }
}

/// The filesystem queue of one coordination root.
pub struct FsQueue {
    layout: Layout,
    journal: Journal,
    validator: Validator,
    /// Names listed from `queue/` not yet tried, in serving order.
    pending: Mutex<BTreeSet<String>>,
    /// Removes settled claims off the commit path (see [`FsQueue::flush`]).
    reaper: Mutex<Option<Reaper>>,
    /// The `events/claimed/` directory this queue claims into, made at the
    /// first claim and locked while this process lives (see [`owner`]).
    owner: Mutex<Option<owner::Owner>>,
    /// Archive day files whose last append is older than this are removed
    /// (`[archive] retention_days`); `None` keeps them forever.
    archive_retention: Option<Duration>,
    /// When this process last pruned the archive.
    last_prune: Mutex<Option<std::time::Instant>>,
}

/// How often a long-running queue prunes the archive from `recover`.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What [`FsQueue::prune_archive`] removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pruned {
    pub files: Vec<String>,
    pub bytes: u64,
}

/// A thread that removes files whose removal need not be durable: a settled
/// claim that survives a crash is recognised by recovery (its record is
/// already archived or dead-lettered) and removed then.
struct Reaper {
    tx: std::sync::mpsc::Sender<PathBuf>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Removal threads: an unlink mostly waits on the disk (ext4 discards the
/// freed blocks synchronously), so several overlap well even on two cores.
const REAPERS: usize = 4;

static LAST_US: AtomicU64 = AtomicU64::new(0);

/// Strictly increasing microseconds in this process, so a batch keeps its
/// order in the queue.
fn next_enqueue_us() -> u64 {
    let now = now_us();
    let mut last = LAST_US.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST_US.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// An RFC 3339 "now" for records.
pub fn now_rfc3339() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
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
            last_prune: Mutex::new(None),
        })
    }

    /// Keeps archive day files for `days` after their last append (0: forever).
    #[must_use]
    pub fn with_archive_retention(mut self, days: u64) -> FsQueue {
        self.archive_retention = (days > 0).then(|| Duration::from_secs(days.saturating_mul(86_400)));
        self
    }

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
        *self.last_prune.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
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
    fn append_archive(dir: &File, name: &str, lines: &[u8]) -> Result<()> {
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

    pub fn layout(&self) -> &Layout {
        &self.layout
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

    fn dead_letter_path(&self, name: &EntryName) -> PathBuf {
        self.layout.dead_letter().join(format!("{}.json", name.key()))
    }

    fn attempts_path(&self, name: &EntryName) -> PathBuf {
        self.layout.attempts().join(format!("{}.json", name.key()))
    }

    /// Lists `queue/` into the pending set.
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

    /// A `.json` file dropped into `queue/` by hand (as the seed's tools
    /// did): queued properly if valid and whole; dead-lettered with the
    /// reason if invalid and no longer being written.
    fn adopt(&self, path: &Path) -> Result<()> {
        let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
        let age = std::fs::metadata(path).and_then(|m| m.modified()).ok().and_then(|m| m.elapsed().ok());
        match self.validator.parse(&text) {
            Ok(event) => {
                self.enqueue(std::slice::from_ref(&event))?;
                std::fs::remove_file(path).with_context(|| format!("failed to remove adopted {}", path.display()))?;
            }
            // It may still be being written: look again later.
            Err(_) if age.is_none_or(|a| a < Duration::from_secs(5)) => {}
            Err(invalid) => {
                let record = serde_json::json!({
                    "raw": text,
                    "file": path.display().to_string(),
                    "dead_lettered_at": now_rfc3339(),
                    "reason": format!("invalid event dropped into the queue: {invalid}"),
                });
                let stem = path.file_stem().unwrap_or_default().to_string_lossy();
                let target = self.layout.dead_letter().join(format!("invalid-{}-{stem}.json", now_us()));
                fsio::write_durably(&self.layout.tmp(), &target, serde_json::to_string_pretty(&record)?.as_bytes())?;
                std::fs::remove_file(path).with_context(|| format!("failed to remove {}", path.display()))?;
                tracing::warn!(file = %path.display(), %invalid, "invalid event file moved to the dead-letter queue");
            }
        }
        Ok(())
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
    fn remember(&self, names: impl IntoIterator<Item = String>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.extend(names);
    }

    /// Forgets what was listed, so the next claim re-lists `queue/`.
    pub fn rescan(&self) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Queue entries, parsed, in serving order.
    ///
    /// # Errors
    /// When `queue/` cannot be listed.
    pub fn entries(&self) -> Result<Vec<EntryName>> {
        list_names(&self.layout.queue())
    }
}

/// A directory's entries; `None` when it does not exist.
fn read_dir_if_any(dir: &Path) -> Result<Option<std::fs::ReadDir>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(Some(rd)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("failed to list {}", dir.display())),
    }
}

/// The event id in a dead letter's file name (`{rank}-{µs}-{event_id}.json`).
fn dead_letter_event_id(name: &str) -> Option<&str> {
    name.strip_suffix(".json")?.splitn(3, '-').nth(2)
}

/// Which of `ids` an archive file holds in a whole record (or, in a
/// compacted month, a bare event). Lines are searched for `"event_id":"…"`
/// and only a line that names a wanted id is parsed, to confirm that it is
/// the line's own event (a follow-up's record also names its trigger).
fn archived_ids(path: &Path, ids: &BTreeSet<&str>, found: &mut BTreeSet<String>) -> Result<()> {
    use std::io::BufRead;
    const KEY: &str = "\"event_id\":\"";
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("failed to open archive file {}", path.display())),
    };
    for line in std::io::BufReader::new(file).split(b'\n') {
        let line = line.with_context(|| format!("failed to read archive file {}", path.display()))?;
        let Ok(line) = std::str::from_utf8(&line) else { continue };
        let named = line.match_indices(KEY).filter_map(|(at, _)| {
            let rest = &line[at + KEY.len()..];
            rest.find('"').map(|end| &rest[..end])
        });
        if !named.into_iter().any(|id| ids.contains(id)) {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let own = v["event"]["event_id"].as_str().or_else(|| v["event_id"].as_str());
        if let Some(id) = own.filter(|id| ids.contains(id)) {
            found.insert(id.to_string());
        }
    }
    Ok(())
}

fn list_names(dir: &Path) -> Result<Vec<EntryName>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("failed to list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("failed to list {}", dir.display()))?;
        if let Some(name) = EntryName::parse(&entry.file_name().to_string_lossy()) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

fn count_json(dir: &Path) -> Result<usize> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(rd.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".json")).count()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("failed to list {}", dir.display())),
    }
}

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
    fn stage_events(&self, commit: &mut Commit, events: &[Event], sync_each: bool) -> Result<()> {
        let tmp = self.layout.tmp();
        for e in events {
            let name = EntryName {
                priority: e.priority(),
                enqueued_us: next_enqueue_us(),
                event_id: e.event_id.clone(),
                attempt: 1,
                due_ms: None,
            };
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
        next.due_ms = Some(due.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0));
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

    fn reap(&self, paths: Vec<PathBuf>) {
        let mut reaper = self.reaper.lock().unwrap_or_else(|e| e.into_inner());
        let r = reaper.get_or_insert_with(|| {
            let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
            let rx = std::sync::Arc::new(Mutex::new(rx));
            let threads = (0..REAPERS)
                .map(|_| {
                    let rx = rx.clone();
                    std::thread::spawn(move || {
                        loop {
                            let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                            let Ok(path) = next else { return };
                            if let Err(e) = std::fs::remove_file(&path)
                                && e.kind() != std::io::ErrorKind::NotFound
                            {
                                tracing::warn!(file = %path.display(), error = %e, "failed to remove a settled claim; recovery will");
                            }
                        }
                    })
                })
                .collect();
            Reaper { tx, threads }
        });
        for path in paths {
            if let Err(unsent) = r.tx.send(path) {
                let _ = std::fs::remove_file(unsent.0);
            }
        }
    }

    /// Waits until every settled claim has been removed, then gives up
    /// this queue's claim directory if nothing is left in it.
    pub fn flush(&self) {
        if let Some(r) = self.reaper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            drop(r.tx);
            for t in r.threads {
                let _ = t.join();
            }
        }
        if let Some(owner) = self.owner.lock().unwrap_or_else(|e| e.into_inner()).take() {
            owner.retire();
        }
    }

    /// The directory this queue claims into (made at the first claim).
    fn claim_dir(&self) -> Result<PathBuf> {
        let mut owner = self.owner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = owner.as_ref() {
            return Ok(o.dir.clone());
        }
        let o = owner::Owner::create(&self.layout).context("failed to make this dispatcher's claim directory")?;
        let dir = o.dir.clone();
        *owner = Some(o);
        Ok(dir)
    }

    /// Every claim file: the old flat ones and those in owner directories.
    fn claim_names(&self) -> Result<Vec<EntryName>> {
        let mut names = list_names(&self.layout.claimed())?;
        for dir in owner::dirs(&self.layout.claimed()) {
            // An owner directory may vanish while listed: its owner retired.
            names.extend(list_names(&dir).unwrap_or_default());
        }
        Ok(names)
    }
}

impl Queue for FsQueue {
    fn enqueue(&self, events: &[Event]) -> Result<()> {
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

    fn known(&self, events: &[&Event]) -> Result<BTreeMap<String, &'static str>> {
        let mut out = BTreeMap::new();
        if events.is_empty() {
            return Ok(out);
        }
        let ids: BTreeSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        for (names, place) in [(self.entries()?, "queued"), (self.claim_names()?, "being handled")] {
            for name in names {
                if ids.contains(name.event_id.as_str()) {
                    out.insert(name.event_id, place);
                }
            }
        }
        let dead = self.layout.dead_letter();
        if let Some(rd) = read_dir_if_any(&dead)? {
            for entry in rd {
                let entry = entry.with_context(|| format!("failed to list {}", dead.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(id) = dead_letter_event_id(&name).filter(|id| ids.contains(id)) {
                    out.entry(id.to_string()).or_insert("dead-lettered");
                }
            }
        }
        // The archive: the day files (and compacted months) that can hold
        // these events, from the dates of their timestamps and of their ids
        // (stamped in the producer's time zone), a day either side.
        let mut dates = BTreeSet::new();
        for e in events {
            let id_date = e.event_id.get(4..12).and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y%m%d").ok());
            let ts_date = e.timestamp.get(..10).and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
            for d in id_date.into_iter().chain(ts_date) {
                dates.extend([d.pred_opt(), Some(d), d.succ_opt()].into_iter().flatten());
            }
        }
        let prefixes: BTreeSet<String> = dates
            .iter()
            .flat_map(|d| [d.format("%Y-%m-%d.").to_string(), d.format("%Y-%m.compact.").to_string()])
            .collect();
        let archive = self.layout.archive();
        let mut found = BTreeSet::new();
        if let Some(rd) = read_dir_if_any(&archive)? {
            for entry in rd {
                let entry = entry.with_context(|| format!("failed to list {}", archive.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".jsonl") && prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                    archived_ids(&entry.path(), &ids, &mut found)?;
                }
            }
        }
        for id in found {
            out.entry(id).or_insert("archived");
        }
        Ok(out)
    }

    fn claim(&self) -> Result<Option<Claim>> {
        let now = now_ms();
        let mut relisted = false;
        loop {
            let next = {
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
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
                Err(e) => {
                    // A corrupt entry must not block the queue or vanish.
                    let record = serde_json::json!({
                        "raw": std::fs::read_to_string(&to).unwrap_or_default(),
                        "entry": name.key(),
                        "dead_lettered_at": now_rfc3339(),
                        "reason": format!("{e:#}"),
                    });
                    fsio::write_durably(
                        &self.layout.tmp(),
                        &self.dead_letter_path(&name),
                        serde_json::to_string_pretty(&record)?.as_bytes(),
                    )?;
                    std::fs::remove_file(&to).with_context(|| format!("failed to remove {}", to.display()))?;
                    tracing::warn!(entry = %next, error = %format!("{e:#}"), "unreadable queue entry moved to the dead-letter queue");
                }
            }
        }
    }

    fn settle(&self, batch: Vec<Settlement>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let claim_dir = self.claim_dir()?;
        let mut commit = Commit::default();
        let staged = (|| -> Result<()> {
            for s in &batch {
                self.stage_events(&mut commit, &s.emitted, false)?;
                let claimed = claim_dir.join(s.claim.name.file_name());
                match &s.verdict {
                    Verdict::Ack(record) => {
                        let lines = commit.archive.entry(self.archive_path(&s.claim.event)).or_default();
                        serde_json::to_writer(&mut *lines, record).context("failed to serialize an archive record")?;
                        lines.push(b'\n');
                        commit.removals.push(claimed);
                        if s.claim.name.attempt > 1 {
                            commit.removals.push(self.attempts_path(&s.claim.name));
                        }
                    }
                    Verdict::DeadLetter(record) => {
                        self.stage_record(&mut commit, self.dead_letter_path(&s.claim.name), record)?;
                        commit.removals.push(claimed);
                        commit.removals.push(self.attempts_path(&s.claim.name));
                    }
                    Verdict::Retry { due, delivery } => {
                        self.stage_record(&mut commit, self.attempts_path(&s.claim.name), delivery)?;
                        self.stage_requeue(&mut commit, &claim_dir, &s.claim.name, s.claim.name.attempt + 1, *due);
                    }
                    Verdict::Defer { due } => {
                        self.stage_requeue(&mut commit, &claim_dir, &s.claim.name, s.claim.name.attempt, *due);
                    }
                }
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

    fn recover(&self, lease: Duration) -> Result<Recovered> {
        let mut out = Recovered::default();
        let due = self.last_prune.lock().unwrap_or_else(|e| e.into_inner()).is_none_or(|t| t.elapsed() > PRUNE_EVERY);
        if due && let Err(e) = self.prune_archive() {
            tracing::warn!(error = %format!("{e:#}"), "failed to apply the archive retention");
        }
        // Temp files of a writer that died: never visible to readers, only
        // garbage. Anything older than a lease is nobody's work in progress.
        if let Ok(entries) = std::fs::read_dir(self.layout.tmp()) {
            for e in entries.flatten() {
                let old = e
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|a| a > lease);
                // A claim directory half made by a process that died.
                let removed = if e.file_type().is_ok_and(|t| t.is_dir()) {
                    old && owner::is_owner_name(&e.file_name().to_string_lossy())
                        && std::fs::remove_dir_all(e.path()).is_ok()
                } else {
                    old && std::fs::remove_file(e.path()).is_ok()
                };
                if removed {
                    out.stale_temp_files += 1;
                }
            }
        }
        let claimed = self.layout.claimed();
        // Claims from before owner directories: by their lease.
        for name in list_names(&claimed)? {
            let path = claimed.join(name.file_name());
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            // The claiming rename set ctime: that is when the lease began.
            let claimed_at =
                UNIX_EPOCH + Duration::new(meta.ctime().max(0) as u64, meta.ctime_nsec().clamp(0, 999_999_999) as u32);
            let age = claimed_at.elapsed().unwrap_or_default();
            if age < lease {
                continue;
            }
            let why = format!("claim held for {}s without being settled: its dispatcher stopped", age.as_secs());
            self.take_back(&path, &name, ("lease-expired", why, age), &mut out)?;
        }
        // Claims of dispatchers that died: at once, whatever their age.
        let mine = self.owner.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|o| o.dir.clone());
        for orphan in owner::orphans(&claimed, mine.as_deref())? {
            for name in list_names(&orphan.dir)? {
                let path = orphan.dir.join(name.file_name());
                let died =
                    orphan.pid.map_or_else(|| "its dispatcher".to_string(), |p| format!("its dispatcher (pid {p})"));
                let why = format!("{died} died holding this claim (its claim lock was free)");
                self.take_back(&path, &name, ("owner-died", why, Duration::ZERO), &mut out)?;
            }
            fsio::sync_dir(&orphan.dir)?;
            let dir = orphan.dir.clone();
            if let Err(e) = orphan.remove() {
                tracing::warn!(dir = %dir.display(), error = %format!("{e:#}"), "could not remove a dead dispatcher's claim directory");
            }
        }
        if out.requeued + out.finished > 0 {
            fsio::sync_dir(&self.layout.queue())?;
            fsio::sync_dir(&claimed)?;
            self.rescan();
        }
        Ok(out)
    }

    fn flush(&self) {
        FsQueue::flush(self);
    }

    fn depth(&self) -> Result<Depth> {
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

impl FsQueue {
    /// Takes back one claim whose dispatcher is gone: finishes its ack when
    /// its work was already recorded, else puts it back in the queue with
    /// the attempt raised and `why` (kind, message, how long it was held) in
    /// its history.
    fn take_back(
        &self,
        path: &Path,
        name: &EntryName,
        (kind, message, held): (&str, String, Duration),
        out: &mut Recovered,
    ) -> Result<()> {
        // Work already recorded? Then only the removal of the claim was lost.
        let done = match std::fs::read_to_string(path).ok().and_then(|t| self.validator.parse(&t).ok()) {
            Some(event) => archived_entry(&self.archive_path(&event), &name.key()),
            None => false,
        } || self.dead_letter_path(name).exists();
        if done {
            std::fs::remove_file(path)
                .with_context(|| format!("failed to remove finished claim {}", path.display()))?;
            out.finished += 1;
            return Ok(());
        }
        let mut delivery = if name.attempt > 1 { self.read_delivery(name)? } else { Delivery::default() };
        let failure = Failure {
            handler: String::new(),
            component_sha256: String::new(),
            kind: kind.into(),
            message,
            detail: String::new(),
            duration_ms: held.as_secs_f64() * 1000.0,
        };
        delivery.history.push(AttemptRecord { attempt: name.attempt, at: now_rfc3339(), failures: vec![failure] });
        fsio::write_durably(&self.layout.tmp(), &self.attempts_path(name), &serde_json::to_vec_pretty(&delivery)?)?;
        let mut next = name.clone();
        next.attempt += 1;
        next.due_ms = None;
        fsio::rename_noreplace(path, &self.layout.queue().join(next.file_name()))?;
        out.requeued += 1;
        Ok(())
    }

    fn read_delivery(&self, name: &EntryName) -> Result<Delivery> {
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
}

/// Whether an archive file holds a whole record for queue entry `key`. A
/// line torn by a crash mid-append (a fatal signal can cut a write short)
/// may still contain the key: only a line that parses counts as proof.
fn archived_entry(path: &Path, key: &str) -> bool {
    let needle = format!("\"entry\":\"{key}\"");
    let Ok(text) = std::fs::read_to_string(path) else { return false };
    text.lines().filter(|l| l.contains(&needle)).any(|l| serde_json::from_str::<Value>(l).is_ok())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_priority_then_time() {
        let a = EntryName {
            priority: Priority::Low,
            enqueued_us: 5,
            event_id: "evt_20251201_120000_abc123".into(),
            attempt: 1,
            due_ms: None,
        };
        let b = EntryName {
            priority: Priority::Critical,
            enqueued_us: 9,
            event_id: "evt_20251201_120000_zzz999".into(),
            attempt: 2,
            due_ms: Some(77),
        };
        for n in [&a, &b] {
            assert_eq!(EntryName::parse(&n.file_name()).as_ref(), Some(n));
        }
        assert!(b.file_name() < a.file_name());
        assert_eq!(b.file_name(), "0-0000000000000009-evt_20251201_120000_zzz999-a2-77.json");
        assert!(EntryName::parse("foo.json").is_none());
        assert!(EntryName::parse("2-0000000000000009-evt_x-a0.json").is_none());
    }

    #[test]
    fn enqueue_times_strictly_increase() {
        let mut last = 0;
        for _ in 0..10_000 {
            let t = next_enqueue_us();
            assert!(t > last);
            last = t;
        }
    }
}
