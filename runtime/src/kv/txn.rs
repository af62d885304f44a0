//! One invocation's view of the buckets ([`Txn`]): its grants, its limits,
//! its buffered writes, and its reads — of its own writes first, then of its
//! lane's pending changes ([`super::overlay::Overlay`]), then of the backend.
//! What it read through pending changes, and what it read and then wrote,
//! goes into its [`Changes`] to be checked at commit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::overlay::{self, Overlay};
use super::{Backend, Changes, Grant, KvError, Limits, Mark, Op, PAGE, Read, add, check_key, overflow};

/// What an invocation's reads see of a key: its own write first.
enum Seen {
    Value(Option<Vec<u8>>),
    Unknown,
}

/// A key's value and version as first read through pending changes.
type View = (Option<Vec<u8>>, u64);

/// One invocation's view of the buckets: grants, limits, buffered writes.
pub struct Txn {
    backend: Arc<dyn Backend>,
    grants: Vec<Grant>,
    limits: Limits,
    mark: Mark,
    /// Buffered changes by (bucket, key), in first-write order.
    ops: BTreeMap<(String, String), Op>,
    order: Vec<(String, String)>,
    /// Versions of keys as first read from the backend (through the
    /// lane's pending changes).
    read: BTreeMap<(String, String), u64>,
    /// Keys read or written through the lane's pending changes: checked at
    /// commit even when only read.
    through_overlay: BTreeSet<(String, String)>,
    /// Pending buffers of the lane that this one read through.
    after: BTreeSet<Mark>,
    /// Keys read through the lane's pending changes, as first read.
    views: BTreeMap<(String, String), View>,
    /// The last key of each page `list_keys` returned: cursor n is `cursors[n - 1]`.
    cursors: Vec<String>,
    bytes_written: usize,
    /// The lane's done-but-uncommitted changes.
    overlay: Option<Arc<Overlay>>,
    /// Why the backend failed a read, if it did (see [`Txn::unavailable`]).
    unavailable: Option<String>,
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
            through_overlay: BTreeSet::new(),
            after: BTreeSet::new(),
            views: BTreeMap::new(),
            cursors: Vec::new(),
            bytes_written: 0,
            overlay: None,
            unavailable: None,
        }
    }

    /// Records that the backend failed a read of this invocation.
    pub fn note_unavailable(&mut self, why: &str) {
        self.unavailable.get_or_insert_with(|| why.to_string());
    }

    /// Why the backend failed a read of this invocation, if it did: then
    /// the invocation fails retryably, however the guest took the error.
    pub fn unavailable(&self) -> Option<&str> {
        self.unavailable.as_deref()
    }

    /// Reads through `overlay`, the pending changes of the lane it runs in.
    #[must_use]
    pub fn with_overlay(mut self, overlay: Arc<Overlay>) -> Txn {
        self.overlay = Some(overlay);
        self
    }

    /// The committed value and version of `key` with the lane's pending
    /// changes on top, and whether there were any; the buffers not yet
    /// committed become ones this one must commit after.
    fn committed(&mut self, bucket: &str, key: &str) -> Result<(Option<Vec<u8>>, u64, bool), KvError> {
        self.committed_as(bucket, key, true)
    }

    /// As [`Txn::committed`]; with `depend` false (the base of an
    /// increment, which commits a delta that is right in any order) the
    /// pending buffers read through are not ones to commit after, and
    /// nothing is kept as the invocation's view.
    fn committed_as(&mut self, bucket: &str, key: &str, depend: bool) -> Result<(Option<Vec<u8>>, u64, bool), KvError> {
        let backend = |e: anyhow::Error| KvError::Unavailable(format!("{e:#}"));
        let Some(o) = self.overlay.clone().filter(|o| o.has(bucket, key)) else {
            let found = self.backend.get(bucket, key).map_err(backend)?;
            let version = found.as_ref().map_or(0, |v| v.version);
            return Ok((found.map(|v| v.value), version, false));
        };
        // Once per invocation: a listing and the reads after it see one view.
        let id = (bucket.to_string(), key.to_string());
        if let Some((value, version)) = self.views.get(&id) {
            return Ok((value.clone(), *version, true));
        }
        // The pending changes first, then the value with, from the same
        // snapshot, which of them it already holds. Read the other way
        // round, a commit between the two reads would drop a write from
        // both: the value read before it, the pending list after it, and
        // an invocation that only reads would act on the stale value
        // unchecked. Every earlier invocation of the lane has ended, so
        // its writes are in the list or committed.
        let pending = o.pending(bucket, key);
        let (found, applied) = if pending.ops.is_empty() {
            (self.backend.get(bucket, key).map_err(backend)?, Vec::new())
        } else {
            let marks: Vec<Mark> = pending.ops.iter().map(|(m, _)| m.clone()).collect();
            self.backend.get_with_marks(bucket, key, &marks).map_err(backend)?
        };
        let (value, version) = found.map_or((None, 0), |v| (Some(v.value), v.version));
        let (value, version) = overlay::apply(value, version, &pending.ops, &applied)?;
        if !depend {
            return Ok((value, version, true));
        }
        for ((mark, _), done) in pending.ops.into_iter().zip(applied) {
            if !done {
                self.after.insert(mark);
            }
        }
        self.views.insert(id, (value.clone(), version));
        Ok((value, version, true))
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
        let (value, version, through) = self.committed(bucket, key)?;
        let id = (bucket.to_string(), key.to_string());
        if through {
            self.through_overlay.insert(id.clone());
        }
        self.read.entry(id).or_insert(version);
        Ok(value)
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
        // A plain write of a key the lane has pending changes of is checked
        // at commit against the version they lead to, so the lane's writes
        // of one key commit in the lane's order.
        let pending = self.overlay.as_ref().is_some_and(|o| o.has(bucket, key));
        if pending && matches!(op, Op::Set(_) | Op::Delete) && !self.read.contains_key(&id) {
            let (_, version, _) = self.committed(bucket, key)?;
            self.read.insert(id.clone(), version);
            self.through_overlay.insert(id.clone());
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
                let (base, _, _) = self.committed_as(bucket, key, false)?;
                (Op::Add(total), add(base.as_deref(), total)?)
            }
            None => {
                let (base, _, _) = self.committed_as(bucket, key, false)?;
                (Op::Add(delta), add(base.as_deref(), delta)?)
            }
        };
        self.record(bucket, key, op)?;
        Ok(now)
    }

    /// One page of the keys of `bucket` as this invocation sees them. A
    /// cursor stands for the last key of the page it came with (kept in
    /// the invocation), so a page costs one backend range read of about a
    /// page, however large the bucket.
    ///
    /// # Errors
    /// Not granted, an unknown cursor, or the backend failed.
    pub fn list_keys(&mut self, bucket: &str, cursor: Option<u64>) -> Result<(Vec<String>, Option<u64>), KvError> {
        self.grant(bucket)?;
        let after = match cursor {
            None => None,
            Some(c) => Some(
                usize::try_from(c)
                    .ok()
                    .and_then(|c| c.checked_sub(1))
                    .and_then(|i| self.cursors.get(i))
                    .cloned()
                    .ok_or_else(|| KvError::Other(format!("unknown list-keys cursor {c}")))?,
            ),
        };
        // What this invocation and its lane's pending changes make of keys:
        // true for there, false for removed.
        let mut local: BTreeMap<String, bool> = BTreeMap::new();
        let pending = self.overlay.as_ref().map(|o| o.keys(bucket)).unwrap_or_default();
        for k in pending {
            let there = self.committed(bucket, &k)?.0.is_some();
            local.insert(k, there);
        }
        for ((b, k), op) in &self.ops {
            if b == bucket {
                local.insert(k.clone(), !matches!(op, Op::Delete));
            }
        }
        let beyond = |k: &String| after.as_ref().is_none_or(|a| k > a);
        let mut keys: BTreeSet<String> = BTreeSet::new();
        let mut from = after.clone();
        let exhausted = loop {
            let page = self
                .backend
                .keys(bucket, "", from.as_deref(), PAGE)
                .map_err(|e| KvError::Unavailable(format!("{e:#}")))?;
            let exhausted = page.len() < PAGE;
            if let Some(last) = page.last() {
                from = Some(last.clone());
            }
            keys.extend(page.into_iter().filter(|k| local.get(k) != Some(&false)));
            if exhausted || keys.len() > PAGE {
                break exhausted;
            }
        };
        // Local keys up to where the backend was read (all, once it is done).
        let read_to = from.clone();
        for (k, there) in &local {
            if *there && beyond(k) && (exhausted || read_to.as_ref().is_some_and(|r| k <= r)) {
                keys.insert(k.clone());
            }
        }
        let more = keys.len() > PAGE || !exhausted;
        let page: Vec<String> = keys.into_iter().take(PAGE).collect();
        let next = match page.last() {
            Some(last) if more => {
                self.cursors.push(last.clone());
                Some(self.cursors.len() as u64)
            }
            _ => None,
        };
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
        // Checked at commit: keys read and then written, and keys read or
        // written through the lane's pending changes.
        let written: BTreeSet<(String, String)> = ops.iter().map(|(b, k, _)| (b.clone(), k.clone())).collect();
        let reads = self
            .read
            .iter()
            .filter(|(id, _)| written.contains(*id) || self.through_overlay.contains(*id))
            .map(|((bucket, key), version)| Read { bucket: bucket.clone(), key: key.clone(), version: *version })
            .collect();
        Changes { mark: self.mark, ops, reads, after: self.after.into_iter().collect(), fence: None }
    }
}

#[cfg(test)]
mod tests;
