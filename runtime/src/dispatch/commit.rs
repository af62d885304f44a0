//! The committer of a dispatch run: gathers the events whose handlers are
//! done, decides each one's verdict (see `verdict`), and settles them in
//! batches of up to [`MAX_BATCH`], one durable group commit per batch, so
//! follow-up events are queued before the event that caused them is
//! acknowledged. It also keeps the count of events in flight, which bounds
//! how far the claim loop runs ahead.
//!
//! Handler state goes first: the key-value writes of every successful
//! invocation in the batch are committed to the state backend in one
//! transaction ([`crate::kv::Backend::commit`]) before the filesystem
//! settlement. An event with a write refused as a conflict is not settled
//! but put back to run again (see `verdict::rerun`).
//!
//! Crash story: a batch that cannot be settled stays claimed (its claims
//! are recovered after their lease); the committer then settles nothing
//! more, and the run ends with that error. A crash between the state commit
//! and the settlement redelivers the events, whose writes the backend then
//! recognises by their marks and does not apply twice.

use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::Result;

use super::Summary;
use super::lanes::Pending;
use super::verdict::{rerun, settle_one};
use crate::kv::Applied;
use crate::lock::Recover;
use crate::metrics::Metrics;
use crate::queue::{Queue, Settlement, Verdict};
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

    /// Waits until fewer than `max` are in flight.
    pub fn wait_below(&self, max: usize) {
        let mut n = self.count.locked();
        while *n >= max {
            n = crate::lock::recover(self.cv.wait(n));
        }
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
    rx: &Receiver<Arc<Pending>>,
    in_flight: &InFlight,
    metrics: &Metrics,
    sandbox: &Sandbox,
    observer: Option<&dyn super::Observe>,
) -> Result<Summary> {
    let mut summary = Summary::default();
    let mut failed: Option<anyhow::Error> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let n = batch.len();
        let conflicted = if failed.is_none() {
            commit_state(sandbox, &batch).map_err(|e| {
                tracing::error!(error = %format!("{e:#}"), "failed to commit the handlers' state for a batch; its events stay claimed and are recovered after their lease");
                failed = Some(e);
            })
        } else {
            Err(())
        };
        // Committed or not, the lanes waiting for it go on.
        for p in &batch {
            p.state_committed.open();
        }
        if let Ok(conflicted) = conflicted {
            let settlements: Vec<Settlement> = batch
                .into_iter()
                .zip(conflicted)
                .map(|(p, c)| if c { rerun(p, &mut summary) } else { settle_one(p, &mut summary) })
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

/// Commits the key-value writes of a batch's successful invocations in one
/// backend transaction; says for each event whether one of its writes was
/// refused as a conflict. The backend is opened only when there is
/// something to write.
fn commit_state(sandbox: &Sandbox, batch: &[Arc<Pending>]) -> Result<Vec<bool>> {
    let mut owners = Vec::new();
    let mut changes = Vec::new();
    for (i, p) in batch.iter().enumerate() {
        let mut results = p.results.locked();
        for ran in results.iter_mut().flatten() {
            if let Some(c) = ran.changes.take() {
                owners.push(i);
                changes.push(c);
            }
        }
    }
    let mut conflicted = vec![false; batch.len()];
    if changes.is_empty() {
        return Ok(conflicted);
    }
    crate::fsio::failpoint("state.before-commit");
    let applied = sandbox.state()?.commit(&changes)?;
    crate::fsio::failpoint("state.committed");
    for (i, a) in owners.into_iter().zip(applied) {
        conflicted[i] |= a == Applied::Conflict;
    }
    Ok(conflicted)
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
