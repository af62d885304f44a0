//! The writes of a lane that are done but not yet committed, so that the
//! lane's next event runs at once and still reads what the previous one
//! wrote.
//!
//! A lane runs its handler's events one after another; each successful
//! invocation's buffer goes to the committer, which commits a whole batch
//! in one transaction a little later. Without this overlay the next event
//! would either wait for that commit (one group-commit latency per event of
//! a stateful handler) or read the state from before the batch and
//! conflict. With it, a [`super::Txn`] reads a key as the committed value
//! with the lane's pending changes applied on top, in order.
//!
//! **Consistency.** A reader reads the committed value first and looks at
//! the pending changes after. The committer flags a buffer as committing
//! ([`Overlay::committing`]) before its transaction starts and removes it
//! once the transaction returned. So a change still pending and not flagged
//! when looked at was not in the value read before: it goes on top. When
//! one is flagged, the reader cannot tell, and asks the backend which marks
//! are applied in the same snapshot as the value
//! ([`super::Backend::get_with_marks`]). A change removed between the two
//! looks is left out of a value that may not hold it: the read is then at a
//! version the key will not have, and the reader's commit is refused (it
//! runs again), never applied on a wrong value.
//!
//! **Correctness of what is built on a pending write.** A key read through
//! pending changes is read at the version it *will* have once they are
//! applied (each write raises the version by one; a delete resets it to 0),
//! and the reading invocation's buffer is checked against that version at
//! commit (a [`super::Read`]). If a pending change is refused as a conflict,
//! or lands after the reader's, or another writer changed the key meanwhile,
//! the version differs and the reader runs again: it never commits a value
//! built on a write that did not happen. Plain writes of a key with pending
//! changes are checked the same way, so a lane's writes of one key commit in
//! the lane's order.
//!
//! **Progress: a lane drains after a conflict.** Checking at commit keeps
//! the state right; it does not by itself make the lane go forward. Before
//! this gate, an event refused because a write it built on was refused ran
//! again *through the overlay*, so it could be built once more on a pending
//! write that was itself going to be refused (the re-run of another refused
//! event), and the re-runs refused each other without end (50 events of a
//! read-then-write handler ran 60,000 times). Now every invocation of a
//! lane passes [`Overlay::begin`], and its buffer leaves the lane only by
//! [`Overlay::resolve`] (the committer, applied or refused) or
//! [`Overlay::finish_unwritten`] (it wrote nothing, failed, or trapped).
//! Once a buffer of the lane is refused, `begin` lets no new invocation of
//! the lane start until every invocation begun before has been resolved:
//! the lane *drains*. The argument that this always makes progress:
//!
//! 1. An invocation begun after a drain reads committed state only: the
//!    overlay is empty and nothing else of the lane is running, so it is
//!    built on no pending write (its `after` is empty) and a refusal of a
//!    write it did not read cannot refuse it.
//! 2. So it can be refused only if a key it read was committed by someone
//!    else between its read and its commit — an applied write of another
//!    lane or process, that is progress elsewhere. Within the lane, the
//!    first drained invocation to reach the commit (the committer applies a
//!    lane's buffers in the order the lane finished them) finds its reads
//!    unchanged by the lane itself.
//! 3. Hence every conflict of a lane is followed either by an applied
//!    buffer of that lane or by an applied buffer of another writer: the
//!    number of refusals between two applied buffers is bounded by the
//!    invocations in flight, and no chain of refusals can feed itself. A
//!    lane with `concurrency = 1` that alone writes its keys is refused at
//!    most for the invocations that were in flight when the first refusal
//!    happened, and never again after the drain.

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex};

use crate::lock::Recover;

use super::{Changes, Mark, Op};

/// One lane's done-but-uncommitted changes, by key, oldest first, and the
/// gate that drains the lane after a conflict.
#[derive(Default)]
pub struct Overlay {
    inner: Mutex<Inner>,
    /// Signalled whenever an invocation of the lane is resolved.
    resolved: Condvar,
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<(String, String), Vec<(Mark, Op)>>,
    by_mark: HashMap<Mark, Vec<(String, String)>>,
    /// Buffers the committer is committing now.
    committing: HashSet<Mark>,
    /// Invocations begun and not yet resolved (running, or their buffer
    /// waiting for the committer).
    in_flight: usize,
    /// A buffer of the lane was refused: drain before the next begins.
    conflicted: bool,
    /// How often the lane drained (for tests and logs).
    drains: u64,
}

/// A key's pending changes as a reader finds them.
pub struct Pending {
    /// Oldest first.
    pub ops: Vec<(Mark, Op)>,
    /// Whether one of them may be committed already (being committed now).
    pub uncertain: bool,
}

impl Overlay {
    /// Waits until an invocation of the lane may start, and counts it in
    /// flight: at once, unless a buffer of the lane was refused, in which
    /// case only once every invocation begun before is resolved (the drain:
    /// see the module docs). Every `begin` is ended by exactly one
    /// [`Overlay::resolve`] or [`Overlay::finish_unwritten`].
    pub fn begin(&self) {
        let mut inner = self.inner.locked();
        while inner.conflicted && inner.in_flight > 0 {
            inner = crate::lock::recover(self.resolved.wait(inner));
        }
        if inner.conflicted {
            // Drained: nothing pending, nothing running.
            debug_assert!(inner.by_mark.is_empty());
            inner.conflicted = false;
            inner.drains += 1;
        }
        inner.in_flight += 1;
    }

    /// Ends an invocation that leaves nothing to commit.
    pub fn finish_unwritten(&self) {
        let mut inner = self.inner.locked();
        inner.in_flight = inner.in_flight.saturating_sub(1);
        self.resolved.notify_all();
    }

    /// Ends an invocation whose buffer the committer applied (or found
    /// applied already), or refused (`refused`): its pending changes leave
    /// the overlay, and a refusal makes the lane drain.
    pub fn resolve(&self, mark: &Mark, refused: bool) {
        let mut inner = self.inner.locked();
        inner.forget(mark);
        inner.conflicted |= refused;
        inner.in_flight = inner.in_flight.saturating_sub(1);
        self.resolved.notify_all();
    }

    /// Waits until every invocation begun is resolved: the lane's writes
    /// are all committed or refused, so another host that takes the
    /// handler over next reads them (the lane gives its lease back only
    /// then; see `crate::dispatch::lease`).
    pub fn wait_idle(&self) {
        let mut inner = self.inner.locked();
        while inner.in_flight > 0 {
            inner = crate::lock::recover(self.resolved.wait(inner));
        }
    }

    /// How many times the lane has drained after a conflict.
    pub fn drains(&self) -> u64 {
        self.inner.locked().drains
    }

    /// Adds a successful invocation's buffer, before it goes to the committer.
    pub fn push(&self, changes: &Changes) {
        let mut inner = self.inner.locked();
        let mut keys = Vec::with_capacity(changes.ops.len());
        for (bucket, key, op) in &changes.ops {
            let id = (bucket.clone(), key.clone());
            inner.by_key.entry(id.clone()).or_default().push((changes.mark.clone(), op.clone()));
            keys.push(id);
        }
        inner.by_mark.insert(changes.mark.clone(), keys);
    }

    /// Flags the buffer of `mark` as being committed: from now on a reader
    /// asks the backend whether it is applied.
    pub fn committing(&self, mark: &Mark) {
        self.inner.locked().committing.insert(mark.clone());
    }

    /// Whether `key` has pending changes.
    pub fn has(&self, bucket: &str, key: &str) -> bool {
        let inner = self.inner.locked();
        !inner.by_key.is_empty() && inner.by_key.contains_key(&(bucket.to_string(), key.to_string()))
    }

    /// The pending changes of one key, oldest first (empty: none).
    pub fn pending(&self, bucket: &str, key: &str) -> Pending {
        let inner = self.inner.locked();
        let ops = if inner.by_key.is_empty() {
            Vec::new()
        } else {
            inner.by_key.get(&(bucket.to_string(), key.to_string())).cloned().unwrap_or_default()
        };
        let uncertain = !inner.committing.is_empty() && ops.iter().any(|(m, _)| inner.committing.contains(m));
        Pending { ops, uncertain }
    }

    /// The keys of `bucket` with pending changes.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let inner = self.inner.locked();
        inner.by_key.keys().filter(|(b, _)| b == bucket).map(|(_, k)| k.clone()).collect()
    }

    /// Whether no change is pending.
    pub fn is_empty(&self) -> bool {
        self.inner.locked().by_mark.is_empty()
    }
}

impl Inner {
    /// Forgets the buffer of `mark`: committed, refused, or never to be.
    fn forget(&mut self, mark: &Mark) {
        self.committing.remove(mark);
        let Some(keys) = self.by_mark.remove(mark) else { return };
        for id in keys {
            if let Some(ops) = self.by_key.get_mut(&id) {
                ops.retain(|(m, _)| m != mark);
                if ops.is_empty() {
                    self.by_key.remove(&id);
                }
            }
        }
    }
}

/// `value` at `version` with the `pending` changes not yet `applied` on
/// top: the value and version the key will have once they commit.
///
/// # Errors
/// When a pending increment meets a value that is not a decimal number.
pub(super) fn apply(
    mut value: Option<Vec<u8>>,
    mut version: u64,
    pending: &[(Mark, Op)],
    applied: &[bool],
) -> Result<(Option<Vec<u8>>, u64), super::KvError> {
    for ((_, op), done) in pending.iter().zip(applied) {
        if *done {
            continue;
        }
        match op {
            Op::Set(v) => {
                value = Some(v.clone());
                version += 1;
            }
            Op::Delete => {
                value = None;
                version = 0;
            }
            Op::Add(d) => {
                value = Some(super::add(value.as_deref(), *d)?.to_string().into_bytes());
                version += 1;
            }
        }
    }
    Ok((value, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(id: &str) -> Mark {
        Mark { event_id: id.into(), handler: "h".into(), generation: 0 }
    }

    #[test]
    fn pending_changes_apply_in_order_and_leave_when_removed() {
        let o = Overlay::default();
        let ops = |v: Op| Changes {
            mark: mark("e1"),
            ops: vec![("b".into(), "k".into(), v)],
            reads: vec![],
            after: vec![],
            fence: None,
        };
        o.push(&ops(Op::Set(b"5".to_vec())));
        o.push(&Changes { mark: mark("e2"), ..ops(Op::Add(2)) });
        let p = o.pending("b", "k").ops;
        assert_eq!(p.len(), 2);
        assert!(!o.pending("b", "k").uncertain);
        o.committing(&mark("e1"));
        assert!(o.pending("b", "k").uncertain, "e1 may be in the value read");
        assert_eq!(apply(None, 0, &p, &[false, false]).unwrap(), (Some(b"7".to_vec()), 2));
        // e1 committed meanwhile: the base has it, only e2 goes on top.
        assert_eq!(apply(Some(b"5".to_vec()), 1, &p, &[true, false]).unwrap(), (Some(b"7".to_vec()), 2));
        o.resolve(&mark("e1"), false);
        assert_eq!(o.pending("b", "k").ops.len(), 1);
        assert!(!o.pending("b", "k").uncertain);
        o.resolve(&mark("e2"), false);
        assert!(o.pending("b", "k").ops.is_empty() && o.is_empty());
        let p = vec![(mark("e3"), Op::Delete)];
        assert_eq!(apply(Some(b"x".to_vec()), 4, &p, &[false]).unwrap(), (None, 0));
    }

    #[test]
    fn after_a_refusal_the_lane_drains_before_it_runs_anything_else() {
        let o = std::sync::Arc::new(Overlay::default());
        let set = |id: &str| Changes {
            mark: mark(id),
            ops: vec![("b".into(), "k".into(), Op::Set(id.as_bytes().to_vec()))],
            reads: vec![],
            after: vec![],
            fence: None,
        };
        // Without a refusal, begin never waits: e1 and e2 are in flight.
        o.begin();
        o.push(&set("e1"));
        o.begin();
        o.push(&set("e2"));
        o.begin();
        o.finish_unwritten();
        o.resolve(&mark("e1"), true);
        // e2 (built on e1) is still pending: the next invocation waits.
        let (tx, rx) = std::sync::mpsc::channel();
        let next = {
            let o = o.clone();
            std::thread::spawn(move || {
                o.begin();
                tx.send(o.pending("b", "k").ops.len()).unwrap();
            })
        };
        assert!(rx.recv_timeout(std::time::Duration::from_millis(300)).is_err(), "it began while e2 was in flight");
        o.resolve(&mark("e2"), true);
        let pending = rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
        next.join().unwrap();
        assert_eq!(pending, 0, "after the drain it reads committed state only");
        assert_eq!(o.drains(), 1);
        // Drained once: the flag is gone and the lane runs ahead again.
        o.push(&set("e3"));
        o.resolve(&mark("e3"), false);
        o.begin();
        o.finish_unwritten();
        assert_eq!(o.drains(), 1);
        assert!(o.is_empty());
    }
}
