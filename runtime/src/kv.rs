//! Handler state: named buckets of keys to bytes, the host service behind
//! `wasi:keyvalue` (`store`, `atomics`, `batch`).
//!
//! A handler never writes the backend directly. Each invocation gets a
//! [`Txn`]: its reads go to the backend (through the invocation's own
//! buffered writes, so it reads what it wrote), its writes stay in the
//! buffer. When the dispatcher settles the event, the buffers of a whole
//! group commit go to the backend in one durable transaction
//! ([`Backend::commit`]), before the event is archived and acknowledged. A
//! failed or trapped invocation's buffer is dropped, so it changes nothing.
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
//! The embedded backend is [`sqlite::SqliteBackend`] (`<root>/kv/state.db`).

pub mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;

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
    /// A per-invocation limit, a bad key, or the backend failed.
    #[error("{0}")]
    Other(String),
}

/// Identifies the invocation a buffer came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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
    /// Every bucket that holds a key, with its key count.
    fn buckets(&self) -> Result<Vec<(String, u64)>>;
    /// Applies each buffer in order, in one durable transaction, and says
    /// what became of each. An `Err` means nothing was applied.
    fn commit(&self, batch: &[Changes]) -> Result<Vec<Applied>>;
    /// Forgets marks recorded before `before_ms` (Unix ms); events that old
    /// are archived or dead-lettered long since.
    fn prune_marks(&self, before_ms: u64) -> Result<usize>;
}

/// What an invocation's reads see of a key: its own write first.
enum Seen {
    Value(Option<Vec<u8>>),
    Unknown,
}

/// One invocation's view of the buckets: grants, limits, buffered writes.
pub struct Txn {
    backend: Arc<dyn Backend>,
    grants: Vec<Grant>,
    limits: Limits,
    mark: Mark,
    /// Buffered changes by (bucket, key), in first-write order.
    ops: BTreeMap<(String, String), Op>,
    order: Vec<(String, String)>,
    /// Versions of keys as first read from the backend.
    read: BTreeMap<(String, String), u64>,
    bytes_written: usize,
}

impl Txn {
    pub fn new(backend: Arc<dyn Backend>, grants: Vec<Grant>, limits: Limits, mark: Mark) -> Txn {
        Txn {
            backend,
            grants,
            limits,
            mark,
            ops: BTreeMap::new(),
            order: Vec::new(),
            read: BTreeMap::new(),
            bytes_written: 0,
        }
    }

    /// Checks that `bucket` may be opened (`wasi:keyvalue/store.open`).
    ///
    /// # Errors
    /// [`KvError::NoSuchStore`] when the bucket is not granted.
    pub fn open(&self, bucket: &str) -> Result<(), KvError> {
        self.grant(bucket).map(|_| ())
    }

    fn grant(&self, bucket: &str) -> Result<&Grant, KvError> {
        self.grants.iter().find(|g| g.bucket == bucket).ok_or_else(|| KvError::NoSuchStore(bucket.to_string()))
    }

    fn writable(&self, bucket: &str) -> Result<(), KvError> {
        if self.grant(bucket)?.write { Ok(()) } else { Err(KvError::AccessDenied(bucket.to_string())) }
    }

    fn backend_get(&mut self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let found = self.backend.get(bucket, key).map_err(|e| KvError::Other(format!("state backend: {e:#}")))?;
        let version = found.as_ref().map_or(0, |v| v.version);
        self.read.entry((bucket.to_string(), key.to_string())).or_insert(version);
        Ok(found.map(|v| v.value))
    }

    fn seen(&self, bucket: &str, key: &str) -> Seen {
        match self.ops.get(&(bucket.to_string(), key.to_string())) {
            Some(Op::Set(v)) => Seen::Value(Some(v.clone())),
            Some(Op::Delete) => Seen::Value(None),
            Some(Op::Add(_)) | None => Seen::Unknown,
        }
    }

    /// The value of `key` as this invocation sees it.
    ///
    /// # Errors
    /// Not granted, or the backend failed.
    pub fn get(&mut self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.grant(bucket)?;
        if let Seen::Value(v) = self.seen(bucket, key) {
            return Ok(v);
        }
        let base = self.backend_get(bucket, key)?;
        match self.ops.get(&(bucket.to_string(), key.to_string())) {
            Some(Op::Add(delta)) => Ok(Some(add(base.as_deref(), *delta)?.to_string().into_bytes())),
            _ => Ok(base),
        }
    }

    /// Whether `key` exists as this invocation sees it.
    ///
    /// # Errors
    /// As [`Txn::get`].
    pub fn exists(&mut self, bucket: &str, key: &str) -> Result<bool, KvError> {
        Ok(self.get(bucket, key)?.is_some())
    }

    fn record(&mut self, bucket: &str, key: &str, op: Op) -> Result<(), KvError> {
        self.writable(bucket)?;
        check_key(key)?;
        let size = match &op {
            Op::Set(v) => v.len(),
            Op::Delete | Op::Add(_) => 0,
        };
        if size > self.limits.max_value_bytes {
            return Err(KvError::Other(format!(
                "value of {size} bytes for key {key:?} is over the limit of {} bytes per value (limits.kv_value_bytes)",
                self.limits.max_value_bytes
            )));
        }
        let id = (bucket.to_string(), key.to_string());
        if !self.ops.contains_key(&id) && self.ops.len() >= self.limits.max_keys_written {
            return Err(KvError::Other(format!(
                "more than {} keys written in one invocation (limits.kv_keys_written)",
                self.limits.max_keys_written
            )));
        }
        let bytes = self.bytes_written + key.len() + size;
        if bytes > self.limits.max_bytes_written {
            return Err(KvError::Other(format!(
                "more than {} bytes of state written in one invocation (limits.kv_bytes_written)",
                self.limits.max_bytes_written
            )));
        }
        self.bytes_written = bytes;
        if !self.ops.contains_key(&id) {
            self.order.push(id.clone());
        }
        self.ops.insert(id, op);
        Ok(())
    }

    /// Buffers `key = value`.
    ///
    /// # Errors
    /// Not granted, read-only, a bad key, or over a limit.
    pub fn set(&mut self, bucket: &str, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        self.record(bucket, key, Op::Set(value))
    }

    /// Buffers the removal of `key`.
    ///
    /// # Errors
    /// As [`Txn::set`].
    pub fn delete(&mut self, bucket: &str, key: &str) -> Result<(), KvError> {
        self.record(bucket, key, Op::Delete)
    }

    /// Adds `delta` to the decimal value of `key` and returns the new value
    /// as this invocation sees it. Concurrent increments all count: the
    /// delta, not the sum, is committed.
    ///
    /// # Errors
    /// As [`Txn::set`]; also when the current value is not a decimal number.
    pub fn increment(&mut self, bucket: &str, key: &str, delta: u64) -> Result<u64, KvError> {
        self.writable(bucket)?;
        let id = (bucket.to_string(), key.to_string());
        let (op, now) = match self.ops.get(&id).cloned() {
            Some(Op::Set(v)) => {
                let n = add(Some(&v), delta)?;
                (Op::Set(n.to_string().into_bytes()), n)
            }
            Some(Op::Delete) => (Op::Set(delta.to_string().into_bytes()), delta),
            Some(Op::Add(d)) => {
                let total = d.checked_add(delta).ok_or_else(overflow)?;
                let base =
                    self.backend.get(bucket, key).map_err(|e| KvError::Other(format!("state backend: {e:#}")))?;
                (Op::Add(total), add(base.as_ref().map(|v| v.value.as_slice()), total)?)
            }
            None => {
                let base =
                    self.backend.get(bucket, key).map_err(|e| KvError::Other(format!("state backend: {e:#}")))?;
                (Op::Add(delta), add(base.as_ref().map(|v| v.value.as_slice()), delta)?)
            }
        };
        self.record(bucket, key, op)?;
        Ok(now)
    }

    /// One page of the keys of `bucket` as this invocation sees them; the
    /// cursor is the number of keys already returned.
    ///
    /// # Errors
    /// Not granted, or the backend failed.
    pub fn list_keys(&mut self, bucket: &str, cursor: Option<u64>) -> Result<(Vec<String>, Option<u64>), KvError> {
        self.grant(bucket)?;
        let skip = usize::try_from(cursor.unwrap_or(0)).unwrap_or(usize::MAX);
        let mut keys: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .backend
                .keys(bucket, "", after.as_deref(), PAGE)
                .map_err(|e| KvError::Other(format!("state backend: {e:#}")))?;
            let full = page.len() == PAGE;
            after = page.last().cloned();
            keys.extend(page);
            if !full || keys.len() > skip + PAGE {
                break;
            }
        }
        for ((b, k), op) in &self.ops {
            if b == bucket {
                match op {
                    Op::Delete => keys.remove(k),
                    Op::Set(_) | Op::Add(_) => keys.insert(k.clone()),
                };
            }
        }
        let page: Vec<String> = keys.into_iter().skip(skip).take(PAGE).collect();
        let next = (page.len() == PAGE).then(|| (skip + PAGE) as u64);
        Ok((page, next))
    }

    /// Whether the invocation wrote anything.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The buffer to commit with the settlement.
    pub fn into_changes(mut self) -> Changes {
        let ops = self
            .order
            .iter()
            .filter_map(|id| self.ops.remove(id).map(|op| (id.0.clone(), id.1.clone(), op)))
            .collect::<Vec<_>>();
        let reads = ops
            .iter()
            .filter_map(|(b, k, _)| {
                let version = *self.read.get(&(b.clone(), k.clone()))?;
                Some(Read { bucket: b.clone(), key: k.clone(), version })
            })
            .collect();
        Changes { mark: self.mark, ops, reads }
    }
}

fn overflow() -> KvError {
    KvError::Other("increment overflows a 64-bit counter".to_string())
}

/// `base` (decimal text, absent = 0) plus `delta`.
fn add(base: Option<&[u8]>, delta: u64) -> Result<u64, KvError> {
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
fn check_key(key: &str) -> Result<(), KvError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(backend: Arc<dyn Backend>, id: &str) -> Txn {
        Txn::new(
            backend,
            vec![Grant { bucket: "w".into(), write: true }, Grant { bucket: "r".into(), write: false }],
            Limits { max_keys_written: 3, max_value_bytes: 8, max_bytes_written: 64 },
            Mark { event_id: id.into(), handler: "h".into(), generation: 0 },
        )
    }

    fn db() -> (tempfile::TempDir, Arc<dyn Backend>) {
        let dir = tempfile::tempdir().unwrap();
        let b = sqlite::SqliteBackend::open(&dir.path().join("kv.db")).unwrap();
        (dir, Arc::new(b))
    }

    #[test]
    fn reads_see_own_writes_and_nothing_reaches_the_backend_before_commit() {
        let (_d, b) = db();
        let mut t = txn(b.clone(), "e1");
        t.set("w", "k", b"v".to_vec()).unwrap();
        assert_eq!(t.get("w", "k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(t.increment("w", "n", 2).unwrap(), 2);
        assert_eq!(t.increment("w", "n", 3).unwrap(), 5);
        assert_eq!(b.get("w", "k").unwrap(), None);
        let c = t.into_changes();
        assert_eq!(b.commit(std::slice::from_ref(&c)).unwrap(), vec![Applied::Applied]);
        assert_eq!(b.get("w", "n").unwrap().unwrap().value, b"5");
        // The same mark again (a redelivery after a crash) changes nothing.
        assert_eq!(b.commit(&[c]).unwrap(), vec![Applied::Already]);
        assert_eq!(b.get("w", "n").unwrap().unwrap().value, b"5");
    }

    #[test]
    fn grants_and_limits_are_enforced() {
        let (_d, b) = db();
        let mut t = txn(b, "e1");
        assert_eq!(t.open("x"), Err(KvError::NoSuchStore("x".into())));
        assert_eq!(t.set("r", "k", vec![]), Err(KvError::AccessDenied("r".into())));
        assert!(t.get("r", "k").unwrap().is_none());
        assert!(matches!(t.set("w", "k", vec![0; 9]), Err(KvError::Other(m)) if m.contains("kv_value_bytes")));
        for k in ["a", "b", "c"] {
            t.set("w", k, vec![1]).unwrap();
        }
        t.set("w", "a", vec![2]).unwrap();
        assert!(matches!(t.set("w", "d", vec![1]), Err(KvError::Other(m)) if m.contains("kv_keys_written")));
        assert!(matches!(t.set("w", "", vec![1]), Err(KvError::Other(_))));
    }

    #[test]
    fn concurrent_increments_all_count_and_read_then_write_conflicts() {
        let (_d, b) = db();
        let mut a = txn(b.clone(), "e1");
        let mut c = txn(b.clone(), "e2");
        a.increment("w", "n", 1).unwrap();
        c.increment("w", "n", 1).unwrap();
        // Both read "x" (absent) and write it.
        assert!(a.get("w", "x").unwrap().is_none());
        a.set("w", "x", b"a".to_vec()).unwrap();
        assert!(c.get("w", "x").unwrap().is_none());
        c.set("w", "x", b"c".to_vec()).unwrap();
        let out = b.commit(&[a.into_changes(), c.into_changes()]).unwrap();
        assert_eq!(out, vec![Applied::Applied, Applied::Conflict]);
        assert_eq!(b.get("w", "x").unwrap().unwrap().value, b"a");
        assert_eq!(b.get("w", "n").unwrap().unwrap().value, b"1");
        // Run again, the second sees the first's writes and applies.
        let mut c = txn(b.clone(), "e2");
        c.increment("w", "n", 1).unwrap();
        assert_eq!(c.get("w", "x").unwrap(), Some(b"a".to_vec()));
        c.set("w", "x", b"c".to_vec()).unwrap();
        assert_eq!(b.commit(&[c.into_changes()]).unwrap(), vec![Applied::Applied]);
        assert_eq!(b.get("w", "n").unwrap().unwrap().value, b"2");
    }

    #[test]
    fn listing_merges_buffered_writes_and_pages() {
        let (_d, b) = db();
        let mut t = Txn::new(
            b.clone(),
            vec![Grant { bucket: "w".into(), write: true }],
            Limits { max_keys_written: 5000, max_value_bytes: 8, max_bytes_written: 1 << 20 },
            Mark { event_id: "e1".into(), handler: "h".into(), generation: 0 },
        );
        for i in 0..1500 {
            t.set("w", &format!("k{i:04}"), vec![1]).unwrap();
        }
        b.commit(&[t.into_changes()]).unwrap();
        let mut t = txn(b.clone(), "e2");
        t.delete("w", "k0000").unwrap();
        t.set("w", "zz", vec![1]).unwrap();
        let (first, next) = t.list_keys("w", None).unwrap();
        assert_eq!(first.len(), PAGE);
        assert_eq!(first[0], "k0001");
        let (rest, end) = t.list_keys("w", next).unwrap();
        assert_eq!(end, None);
        assert_eq!(rest.len(), 500);
        assert_eq!(rest.last().map(String::as_str), Some("zz"));
        assert_eq!(b.buckets().unwrap(), vec![("w".to_string(), 1500)]);
    }
}
