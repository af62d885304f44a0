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
mod tests {
    use super::*;
    use crate::kv::{Applied, sqlite};

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

    #[test]
    fn a_lane_reads_its_pending_writes_and_what_it_builds_on_them_commits_in_order() {
        let (_d, b) = db();
        let lane = Arc::new(Overlay::default());
        let mut t1 = txn(b.clone(), "e1").with_overlay(lane.clone());
        assert_eq!(t1.get("w", "k").unwrap(), None);
        t1.set("w", "k", b"1".to_vec()).unwrap();
        t1.increment("w", "n", 1).unwrap();
        t1.set("w", "x", b"a".to_vec()).unwrap();
        let c1 = t1.into_changes();
        lane.push(&c1);
        // The next event runs before e1 is committed, and reads it.
        let mut t2 = txn(b.clone(), "e2").with_overlay(lane.clone());
        assert_eq!(t2.get("w", "k").unwrap(), Some(b"1".to_vec()));
        t2.set("w", "k", b"2".to_vec()).unwrap();
        assert_eq!(t2.increment("w", "n", 1).unwrap(), 2);
        let c2 = t2.into_changes();
        lane.push(&c2);
        // A blind write of a key with a pending write is ordered too.
        let mut t3 = txn(b.clone(), "e3").with_overlay(lane.clone());
        t3.set("w", "x", b"c".to_vec()).unwrap();
        let c3 = t3.into_changes();
        // Reaching the committer before e1, what was built on e1 is refused.
        assert_eq!(b.commit(&[c2.clone(), c3.clone()]).unwrap(), vec![Applied::Conflict, Applied::Conflict]);
        assert_eq!(b.get("w", "n").unwrap(), None);
        // e1 commits, flagged first as the committer does; until the
        // committer removes it from the overlay, a reader must not count it
        // twice.
        lane.committing(&c1.mark);
        assert_eq!(b.commit(std::slice::from_ref(&c1)).unwrap(), vec![Applied::Applied]);
        let mut t4 = txn(b.clone(), "e4").with_overlay(lane.clone());
        assert_eq!(t4.increment("w", "n", 1).unwrap(), 3, "e1 once (committed), e2 once (pending), e4");
        lane.resolve(&c1.mark, false);
        assert_eq!(b.commit(&[c2.clone(), c3]).unwrap(), vec![Applied::Applied, Applied::Applied]);
        lane.resolve(&c2.mark, false);
        assert!(lane.is_empty());
        assert_eq!(b.get("w", "k").unwrap().unwrap().value, b"2");
        assert_eq!(b.get("w", "n").unwrap().unwrap().value, b"2");
        assert_eq!(b.get("w", "x").unwrap().unwrap().value, b"c");
    }

    #[test]
    fn a_reader_of_a_pending_write_that_is_refused_runs_again() {
        let (_d, b) = db();
        let lane = Arc::new(Overlay::default());
        let mut t1 = txn(b.clone(), "e1").with_overlay(lane.clone());
        assert_eq!(t1.get("w", "k").unwrap(), None);
        t1.set("w", "k", b"1".to_vec()).unwrap();
        let c1 = t1.into_changes();
        lane.push(&c1);
        let mut t2 = txn(b.clone(), "e2").with_overlay(lane.clone());
        // Read only, and another key written from it.
        assert_eq!(t2.get("w", "k").unwrap(), Some(b"1".to_vec()));
        t2.set("w", "copy", b"1".to_vec()).unwrap();
        let c2 = t2.into_changes();
        // Someone else writes k first: e1 conflicts, and so does e2.
        let mut other = txn(b.clone(), "o");
        other.set("w", "k", b"9".to_vec()).unwrap();
        b.commit(&[other.into_changes()]).unwrap();
        assert_eq!(b.commit(&[c1.clone(), c2]).unwrap(), vec![Applied::Conflict, Applied::Conflict]);
        assert_eq!(b.get("w", "copy").unwrap(), None);
    }

    #[test]
    fn a_refused_read_then_write_drains_the_lane_and_its_rerun_commits() {
        let (_d, b) = db();
        let lane = Arc::new(Overlay::default());
        // The demo's pattern: read a key, write it back changed.
        let rmw = |id: &str| -> Changes {
            lane.begin();
            let mut t = txn(b.clone(), id).with_overlay(lane.clone());
            let n: u64 = t.get("w", "n").unwrap().map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap());
            t.set("w", "n", (n + 1).to_string().into_bytes()).unwrap();
            let c = t.into_changes();
            lane.push(&c);
            c
        };
        let (c1, c2) = (rmw("e1"), rmw("e2"));
        assert_eq!(c2.after, vec![c1.mark.clone()], "e2 ran ahead, on e1's pending write");
        // A forced conflict: another writer changes n first.
        let mut other = txn(b.clone(), "o");
        other.set("w", "n", b"10".to_vec()).unwrap();
        b.commit(&[other.into_changes()]).unwrap();
        assert_eq!(b.commit(&[c1.clone(), c2.clone()]).unwrap(), vec![Applied::Conflict, Applied::Conflict]);
        lane.resolve(&c1.mark, true);
        // Here the old overlay ran e1 again at once, through e2's pending
        // write, which was itself to be refused: the re-runs were built on
        // refused writes, and refused, without end.
        assert!(lane.has("w", "n"), "e2's doomed write is still pending");
        lane.resolve(&c2.mark, true);
        // Now the re-run begins only once the lane has drained: it reads
        // committed state only, and what follows builds on it.
        let (r1, r2) = (rmw("e1"), rmw("e2"));
        assert!(r1.after.is_empty(), "the re-run is built on no pending write");
        assert_eq!(lane.drains(), 1);
        assert_eq!(b.commit(&[r1.clone(), r2.clone()]).unwrap(), vec![Applied::Applied, Applied::Applied]);
        lane.resolve(&r1.mark, false);
        lane.resolve(&r2.mark, false);
        assert_eq!(b.get("w", "n").unwrap().unwrap().value, b"12", "10, then e1 and e2 once each");
        assert!(lane.is_empty());
    }

    #[test]
    fn pruned_marks_are_forgotten() {
        let (_d, b) = db();
        let mut t = txn(b.clone(), "e1");
        t.increment("w", "n", 1).unwrap();
        let c = t.into_changes();
        b.commit(std::slice::from_ref(&c)).unwrap();
        assert_eq!(b.prune_marks(0).unwrap(), 0, "nothing is older than the epoch");
        let later =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64 + 1000;
        assert_eq!(b.prune_marks(later).unwrap(), 1);
        // Forgotten: the same buffer would apply again.
        assert_eq!(b.commit(&[c]).unwrap(), vec![Applied::Applied]);
        assert_eq!(b.get("w", "n").unwrap().unwrap().value, b"2");
    }
}
