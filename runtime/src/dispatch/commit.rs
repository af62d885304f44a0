//! The committer of a dispatch run: gathers what the lanes hand it —
//! each invocation's key-value writes as soon as it ends, each event once
//! all its handlers are done — decides each event's verdict (see
//! `verdict`), and settles the events in batches of up to [`MAX_BATCH`]
//! messages, one durable group commit per batch, so follow-up events are
//! queued before the event that caused them is acknowledged. It also keeps
//! the count of events in flight, which bounds how far the claim loop runs
//! ahead.
//!
//! Handler state goes first: the writes in the batch are committed to the
//! state backend in one transaction ([`crate::kv::Backend::commit`]), in
//! the order they came, before the filesystem settlement. Every write of
//! an event comes before the event itself, so it is committed or refused
//! by the time the event is settled. An event with a write refused as a
//! conflict is not settled but put back to run again (see
//! `verdict::rerun`), and the lane of the refused write drains (see
//! `crate::kv::overlay`).
//!
//! When the state backend is the store's own on the same server (Redis,
//! [`Queue::joins_state`]), the writes and the settlement of a batch are
//! one step instead ([`Queue::settle_with_state`], one Lua script): each
//! event goes with its verdict and its re-run, and the step settles an
//! event whose write it refuses as a re-run. Nothing is then ever applied
//! without its event being settled, or the reverse.
//!
//! Crash story: a batch that cannot be settled stays claimed (its claims
//! are recovered after their lease); the committer then settles nothing
//! more, and the run ends with that error. A crash between the state commit
//! and the settlement redelivers the events, whose writes the backend then
//! recognises by their marks and does not apply twice — also when an
//! invocation's writes were committed while another handler of its event
//! still ran.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::Result;

use super::Summary;
use super::lanes::{Done, Pending};
use super::verdict::{counted_rerun, rerun, rerun_of, settle_one};
use crate::kv::overlay::Overlay;
use crate::kv::{Applied, Backend, Changes};
use crate::lock::Recover;
use crate::metrics::Metrics;
use crate::queue::{Joint, Queue, Settlement, Verdict};
use crate::records::Outcome;
use crate::sandbox::Sandbox;

/// Events settled in one group commit, at most.
const MAX_BATCH: usize = 256;

/// Events claimed but not yet settled.
#[derive(Default)]
pub(super) struct InFlight {
    count: Mutex<usize>,
    cv: Condvar,
}

impl InFlight {
    /// One more claimed.
    pub fn add(&self) {
        *self.count.locked() += 1;
    }

    /// `n` settled (or given up).
    fn done(&self, n: usize) {
        *self.count.locked() -= n;
        self.cv.notify_all();
    }

    /// Waits up to `timeout` until fewer than `max` are in flight; whether
    /// they are.
    pub fn wait_below_for(&self, max: usize, timeout: Duration) -> bool {
        let n = self.count.locked();
        let (n, _) = crate::lock::recover(self.cv.wait_timeout_while(n, timeout, |n| *n >= max));
        *n < max
    }

    /// Whether any are; if so, waits up to `timeout` for one to settle.
    pub fn wait_if_busy(&self, timeout: Duration) -> bool {
        let n = self.count.locked();
        if *n == 0 {
            return false;
        }
        let _ = self.cv.wait_timeout(n, timeout);
        true
    }
}

/// Gathers finished events and settles them in batches, until every lane
/// has closed; returns the tally of what was settled.
pub(super) fn commit_loop(
    queue: &dyn Queue,
    rx: &Receiver<Done>,
    in_flight: &InFlight,
    metrics: &Metrics,
    sandbox: &Sandbox,
    observer: Option<&dyn super::Observe>,
) -> Result<Summary> {
    let mut summary = Summary::default();
    let mut failed: Option<anyhow::Error> = None;
    while let Ok(first) = rx.recv() {
        let (mut writes, mut events) = (Vec::new(), Vec::new());
        let mut next = Some(first);
        for _ in 0..MAX_BATCH {
            match next.take().or_else(|| rx.try_recv().ok()) {
                Some(Done::State(p, slot)) => writes.push((p, slot)),
                Some(Done::Settle(p)) => events.push(p),
                None => break,
            }
        }
        // The writes first, in the order they came: every write of an
        // event came before the event, so it is committed (or refused) by
        // the time the event is settled below.
        let taken = if failed.is_none() {
            take_changes(&writes)
        } else {
            resolve_unapplied(&writes);
            Vec::new()
        };
        drop(writes);
        // The backend is opened only when there is something to write.
        let state = (!taken.is_empty()).then(|| sandbox.state());
        if let Some(Ok(s)) = &state
            && queue.joins_state(s)
        {
            // The store's own state: writes and settlement in one step.
            let n = events.len();
            if let Err(e) = settle_joint(queue, taken, events, &mut summary, metrics, observer) {
                tracing::error!(error = %format!("{e:#}"), "failed to commit the handlers' state and settle a batch; its events stay claimed and are recovered after their lease");
                failed = Some(e);
            }
            in_flight.done(n);
            continue;
        }
        if let Some(state) = state
            && let Err(e) = commit_state(state, taken)
        {
            tracing::error!(error = %format!("{e:#}"), "failed to commit the handlers' state for a batch; its events stay claimed and are recovered after their lease");
            failed = Some(e);
        }
        let n = events.len();
        if failed.is_none() && n > 0 {
            let settlements: Vec<Settlement> = events
                .into_iter()
                .map(|p| {
                    if p.conflicted.load(Ordering::SeqCst) {
                        rerun(p, &mut summary)
                    } else {
                        settle_one(p, &mut summary)
                    }
                })
                .collect();
            let observed: Vec<(String, &'static str, usize)> =
                settlements.iter().map(|s| (s.claim.event.event_type.clone(), outcome(s), s.emitted.len())).collect();
            let told: Option<Vec<super::Settled>> =
                observer.map(|_| settlements.iter().map(super::Settled::of).collect());
            match queue.settle(settlements) {
                Ok(()) => {
                    for (event_type, outcome, emitted) in &observed {
                        metrics.settled(event_type, outcome, *emitted);
                    }
                    if let (Some(o), Some(told)) = (observer, told) {
                        o.settled(told);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "failed to settle a batch; its events stay claimed and are recovered after their lease");
                    failed = Some(e);
                }
            }
        }
        in_flight.done(n);
    }
    match failed {
        Some(e) => Err(e.context("dispatch stopped: a batch could not be settled")),
        None => Ok(summary),
    }
}

/// A buffer taken out of its invocation to commit: the event it belongs to
/// and the overlay of the lane it came from.
struct Taken {
    event: Arc<Pending>,
    changes: Changes,
    overlay: Option<Arc<Overlay>>,
}

/// The buffer of each (event, handler slot) in `writes`, in order.
fn take_changes(writes: &[(Arc<Pending>, usize)]) -> Vec<Taken> {
    writes
        .iter()
        .filter_map(|(p, slot)| {
            let mut results = p.results.locked();
            let ran = results.get_mut(*slot)?.as_mut()?;
            let changes = ran.changes.take()?;
            Some(Taken { event: p.clone(), changes, overlay: ran.overlay.take() })
        })
        .collect()
}

/// Resolves the buffers of a batch that will not be committed (the run is
/// stopping after a failure), so that no lane waits for them.
fn resolve_unapplied(writes: &[(Arc<Pending>, usize)]) {
    for t in take_changes(writes) {
        if let Some(o) = &t.overlay {
            o.resolve(&t.changes.mark, true);
        }
    }
}

/// Commits the key-value writes that reached the committer, in the order
/// they came (a lane's in the order it finished them), in one backend
/// transaction; marks the events with a write refused as a conflict, and
/// resolves every buffer in its lane's overlay, committed or not.
fn commit_state(state: Result<Arc<dyn Backend>>, taken: Vec<Taken>) -> Result<()> {
    // Flagged before the transaction starts: a lane reading these keys
    // meanwhile asks the backend whether they are applied.
    flag_committing(&taken);
    crate::fsio::failpoint("state.before-commit");
    let changes: Vec<Changes> = taken.iter().map(|t| t.changes.clone()).collect();
    let applied = state.and_then(|s| s.commit(&changes));
    // Only now, committed or not, do the lanes stop reading them as
    // pending; a refused buffer (or a transaction that failed) makes its
    // lane drain before it runs anything else.
    let refused = refused(&applied, taken.len());
    for (t, refused) in taken.iter().zip(refused) {
        if refused {
            t.event.conflicted.store(true, Ordering::SeqCst);
        }
        if let Some(o) = &t.overlay {
            o.resolve(&t.changes.mark, refused);
        }
    }
    applied?;
    crate::fsio::failpoint("state.committed");
    Ok(())
}

/// Flags each buffer of `taken` as committing in its lane's overlay.
fn flag_committing(taken: &[Taken]) {
    for t in taken {
        if let Some(o) = &t.overlay {
            o.committing(&t.changes.mark);
        }
    }
}

/// Which buffers a commit refused (all of them when it failed).
fn refused(applied: &Result<Vec<Applied>>, n: usize) -> Vec<bool> {
    match applied {
        Ok(a) => a.iter().map(|a| *a == Applied::Conflict).collect(),
        Err(_) => vec![true; n],
    }
}

/// The batch of a store whose state backend is its own (Redis): the
/// writes and the settlements in one step ([`Queue::settle_with_state`]).
/// Each event goes with its verdict and its re-run, so the step itself
/// settles an event with a refused write as a re-run; a buffer whose event
/// is settled in a later batch marks it conflicted, as `commit_state` does.
/// The overlay protocol and the fail points are `commit_state`'s, around
/// the one step.
fn settle_joint(
    queue: &dyn Queue,
    taken: Vec<Taken>,
    events: Vec<Arc<Pending>>,
    summary: &mut Summary,
    metrics: &Metrics,
    observer: Option<&dyn super::Observe>,
) -> Result<()> {
    flag_committing(&taken);
    crate::fsio::failpoint("state.before-commit");
    let owners: Vec<Option<usize>> =
        taken.iter().map(|t| events.iter().position(|p| Arc::ptr_eq(p, &t.event))).collect();
    let (mut changes, mut overlays, mut later) = (Vec::new(), Vec::new(), Vec::new());
    for (t, owner) in taken.into_iter().zip(&owners) {
        changes.push(t.changes);
        overlays.push(t.overlay);
        // Only the events settled later are kept: the others are taken
        // apart just below.
        later.push(owner.is_none().then_some(t.event));
    }
    // Each event's settlement, its re-run, and what its verdict counts.
    let mut batch = Vec::with_capacity(events.len());
    let mut counts = Vec::with_capacity(events.len());
    for p in events {
        if p.conflicted.load(Ordering::SeqCst) {
            batch.push(Joint { settlement: rerun(p, summary), rerun: None });
            counts.push(None);
        } else {
            let again = rerun_of(p.claim.clone());
            let mut counted = Summary::default();
            let settlement = settle_one(p, &mut counted);
            batch.push(Joint { settlement, rerun: Some(again) });
            counts.push(Some(counted));
        }
    }
    let applied = queue.settle_with_state(&changes, &owners, &batch);
    let refused = refused(&applied, changes.len());
    let mut rerun_now = vec![false; batch.len()];
    for (i, &refused) in refused.iter().enumerate() {
        if refused {
            match (owners[i], &later[i]) {
                (Some(e), _) => rerun_now[e] = true,
                (None, Some(p)) => p.conflicted.store(true, Ordering::SeqCst),
                (None, None) => {}
            }
        }
        if let Some(o) = &overlays[i] {
            o.resolve(&changes[i].mark, refused);
        }
    }
    applied?;
    crate::fsio::failpoint("state.committed");
    let mut settled = Vec::with_capacity(batch.len());
    for ((j, counted), again) in batch.iter().zip(counts).zip(rerun_now) {
        match (counted, &j.rerun) {
            (Some(_), Some(r)) if again => {
                counted_rerun(&r.claim, summary);
                settled.push(r);
            }
            (Some(c), _) => {
                summary.absorb(c);
                settled.push(&j.settlement);
            }
            (None, _) => settled.push(&j.settlement),
        }
    }
    for s in &settled {
        metrics.settled(&s.claim.event.event_type, outcome(s), s.emitted.len());
    }
    if let Some(o) = observer {
        o.settled(settled.iter().map(|s| super::Settled::of(s)).collect());
    }
    Ok(())
}

/// The metrics' word for how a settlement ends.
fn outcome(s: &Settlement) -> &'static str {
    match &s.verdict {
        Verdict::Ack(r) if r.outcome == Outcome::Unhandled => "unhandled",
        Verdict::Ack(_) => "handled",
        Verdict::Retry { .. } => "retried",
        Verdict::DeadLetter(_) => "dead_lettered",
        Verdict::Defer { .. } => "deferred",
    }
}
