//! Handler state: named buckets of keys to bytes, the host service behind
//! `wasi:keyvalue` (`store`, `atomics`, `batch`).
//!
//! A handler never writes the backend directly. Each invocation gets a
//! [`Txn`]: its reads go to the backend (through the invocation's own
//! buffered writes, so it reads what it wrote), its writes stay in the
//! buffer. When the invocation ends, the dispatcher's committer puts its
//! buffer in the next group commit: the buffers of a batch go to the
//! backend in one durable transaction ([`Backend::commit`]), before the
//! event is archived and acknowledged. A failed or trapped invocation's
//! buffer is dropped, so it changes nothing.
//!
//! **Exactly once per event.** Each buffer carries a [`Mark`] (event id,
//! handler, replay generation). The backend records the mark in the same
//! transaction as the writes and skips a buffer whose mark it already holds:
//! when a process dies after the state commit and before the archive, the
//! redelivered event runs again but its writes are not applied twice.
//! `cortex replay` raises the generation, so a replay applies on purpose.
//!
//! **Concurrency.** Increments are kept as deltas and added at commit, so
//! concurrent invocations never lose one. A key the invocation read and then
//! wrote is checked at commit against the version it read; if another
//! invocation changed it meanwhile the buffer is refused as a
//! [`Applied::Conflict`] and the dispatcher runs the event again (it is not
//! counted as a failed attempt). Plain writes of keys never read are last
//! writer wins, as `wasi:keyvalue` documents.
//!
//! **Lanes run ahead of the commit.** A lane's next event runs while the
//! previous one's writes wait for the group commit; it reads them through
//! the lane's [`overlay::Overlay`], and what it builds on them is checked at
//! commit like any other read. After a refusal the lane drains before it
//! runs anything else, which is why it always goes forward (the argument is
//! in `overlay`).
//!
//! **Marks are pruned** after `[archive] retention_days` (the dispatcher
//! does it when it starts and hourly): a redelivery of an event older than
//! that (a dead letter retried after the retention) may apply again.
//!
//! The embedded backend is [`sqlite::SqliteBackend`] (`<root>/kv/state.db`).

pub mod overlay;
pub mod sqlite;
mod txn;

pub use txn::Txn;

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// Keys a `list-keys` call returns at most per page.
pub const PAGE: usize = 1000;

/// A bucket a handler may open, from `keyvalue` / `keyvalue_read` in its
/// `[handlers.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub bucket: String,
    pub write: bool,
}

/// What one invocation may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Distinct keys written (set, delete or incremented).
    pub max_keys_written: usize,
    /// Bytes of one value.
    pub max_value_bytes: usize,
    /// Bytes of keys and values written, in total.
    pub max_bytes_written: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_keys_written: 1000, max_value_bytes: 1 << 20, max_bytes_written: 8 << 20 }
    }
}

/// Why a key-value call was refused; maps onto `wasi:keyvalue/store.error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The bucket is not in the handler's grants.
    #[error(
        "bucket {0:?} is not granted to this handler: add it to `keyvalue` (or `keyvalue_read`) in its [handlers] table"
    )]
    NoSuchStore(String),
    /// The bucket is granted read-only.
    #[error("bucket {0:?} is granted read-only: list it under `keyvalue`, not `keyvalue_read`, to write it")]
    AccessDenied(String),
    /// A per-invocation limit or a bad key.
    #[error("{0}")]
    Other(String),
    /// The backend could not be read (a Redis server unreachable): not the
    /// handler's doing, so the invocation fails retryably whatever the
    /// guest makes of it (see [`Txn::unavailable`]).
    #[error("state backend: {0}")]
    Unavailable(String),
}

/// Identifies the invocation a buffer came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Mark {
    pub event_id: String,
    pub handler: String,
    /// 0 for the event's own deliveries; raised by each `cortex replay`.
    pub generation: u32,
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Set(Vec<u8>),
    Delete,
    /// Add to the key's decimal value (absent counts as 0).
    Add(u64),
}

/// A key and its version as an invocation read it (0: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Read {
    pub bucket: String,
    pub key: String,
    pub version: u64,
}

/// One invocation's buffered changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub mark: Mark,
    pub ops: Vec<(String, String, Op)>,
    /// Keys read and then written: checked at commit.
    pub reads: Vec<Read>,
    /// Buffers of the same lane, not yet committed, whose writes this one
    /// read (see `overlay`): it applies only after them.
    #[serde(default)]
    pub after: Vec<Mark>,
    /// The lease its lane held when it ran (Redis, `concurrency = 1`
    /// handlers with state): the backend refuses the buffer as a
    /// [`Applied::Conflict`] unless that lease is still the current one, so
    /// a host that lost its lease cannot apply state after another took
    /// over (see `crate::store::lease`). `None`: not fenced — always on
    /// the filesystem store, which has no leases (the SQLite backend
    /// ignores the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<Fence>,
}

/// A fencing token: the lease of `handler` numbered `token` (tokens of a
/// handler rise with every grant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub handler: String,
    pub token: u64,
}

/// What [`Backend::commit`] did with one [`Changes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// The mark was there already: an earlier delivery applied it.
    Already,
    /// A key it read changed since: nothing applied; run the event again.
    Conflict,
}

/// A stored value and its version (raised by every write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub version: u64,
}

/// The storage behind the buckets. Implementations: [`sqlite::SqliteBackend`]
/// (embedded, the default); a Redis one follows.
pub trait Backend: Send + Sync {
    /// The committed value of `key`.
    fn get(&self, bucket: &str, key: &str) -> Result<Option<Versioned>>;
    /// Keys of `bucket` starting with `prefix`, in order, after `after`, at
    /// most `limit`.
    fn keys(&self, bucket: &str, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>>;
    /// The committed value of `key` and, read in the same snapshot, whether
    /// each of `marks` is applied: what an [`overlay::Overlay`] read needs
    /// to put exactly the pending changes not yet committed on top.
    fn get_with_marks(&self, bucket: &str, key: &str, marks: &[Mark]) -> Result<(Option<Versioned>, Vec<bool>)>;
    /// Whether the buffer of `mark` is applied (committed earlier).
    fn applied(&self, mark: &Mark) -> Result<bool>;
    /// Every bucket that holds a key, with its key count.
    fn buckets(&self) -> Result<Vec<(String, u64)>>;
    /// Applies each buffer in order, in one durable transaction, and says
    /// what became of each. An `Err` means nothing was applied.
    fn commit(&self, batch: &[Changes]) -> Result<Vec<Applied>>;
    /// Forgets marks recorded before `before_ms` (Unix ms); events that old
    /// are archived or dead-lettered long since.
    fn prune_marks(&self, before_ms: u64) -> Result<usize>;
}

pub(crate) fn overflow() -> KvError {
    KvError::Other("increment overflows a 64-bit counter".to_string())
}

/// `base` (decimal text, absent = 0) plus `delta`.
pub(crate) fn add(base: Option<&[u8]>, delta: u64) -> Result<u64, KvError> {
    let n = match base {
        None => 0,
        Some(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| KvError::Other("cannot increment a value that is not a decimal number".to_string()))?,
    };
    n.checked_add(delta).ok_or_else(overflow)
}

/// Keys are non-empty UTF-8 (WIT strings) without NUL, at most 1 KiB.
pub(crate) fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() || key.len() > 1024 || key.contains('\0') {
        return Err(KvError::Other(format!(
            "bad key {:?}: keys are 1 to 1024 bytes without NUL",
            crate::text::escape(&key.chars().take(64).collect::<String>())
        )));
    }
    Ok(())
}

/// A bucket name in config: lowercase letters, digits, `-`, `_`, `.`.
///
/// # Errors
/// Names what is wrong.
pub fn check_bucket(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    anyhow::ensure!(ok, "bad bucket name {name:?}: use 1 to 64 of a-z, 0-9, '-', '_', '.'");
    Ok(())
}
