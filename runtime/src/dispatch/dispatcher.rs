//! The [`Dispatcher`]: the handlers serving, the live config, and
//! [`Dispatcher::run`], which wires one run together: recovery of stale
//! claims, the claim loop on the caller's thread (see `claim`), the lanes
//! (see `lanes`) and the committer (see `commit`), all scoped to the run.
//!
//! Threads: every thread a run starts ends before `run` returns; the
//! service swaps the handler set and config between and during runs
//! through the shared slots ([`Dispatcher::handlers`],
//! [`Dispatcher::config_slot`]).

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

use super::commit::{InFlight, commit_loop};
use super::lanes::{Done, Lanes, Shared, Slots};
use super::{Broken, Handlers, Mode, Observe, Summary};
use crate::config::Config;
use crate::lock::RecoverRw;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::sandbox::{Loaded, Sandbox};

/// Runs events from a queue through the handlers.
pub struct Dispatcher {
    pub(super) queue: Arc<dyn Queue>,
    sandbox: Arc<Sandbox>,
    metrics: Arc<Metrics>,
    config: Arc<RwLock<Arc<Config>>>,
    handlers: Handlers,
    pub(super) broken: Broken,
    /// How often each waiting entry was put back (for its next delay).
    pub(super) deferrals: Mutex<BTreeMap<String, u32>>,
    /// Told of every settled event (the service's live stream), if set.
    observer: OnceLock<Arc<dyn Observe>>,
}

impl Dispatcher {
    pub fn new(
        queue: Arc<dyn Queue>,
        sandbox: Arc<Sandbox>,
        config: Arc<Config>,
        handlers: BTreeMap<String, Arc<Loaded>>,
        broken: BTreeMap<String, String>,
    ) -> Dispatcher {
        let metrics = Arc::new(Metrics::new());
        metrics.set_broken(broken.keys().map(String::as_str));
        Dispatcher {
            queue,
            sandbox,
            metrics,
            config: Arc::new(RwLock::new(config)),
            handlers: Arc::new(RwLock::new(Arc::new(handlers))),
            broken: Arc::new(RwLock::new(broken)),
            deferrals: Mutex::default(),
            observer: OnceLock::new(),
        }
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub fn sandbox(&self) -> Arc<Sandbox> {
        self.sandbox.clone()
    }

    pub fn queue(&self) -> Arc<dyn Queue> {
        self.queue.clone()
    }

    /// The live handler set (the service swaps it on reload).
    pub fn handlers(&self) -> Handlers {
        self.handlers.clone()
    }

    /// The handlers that do not load (the service updates it on reload).
    pub fn broken(&self) -> Broken {
        self.broken.clone()
    }

    /// The live config (the service swaps it on reload).
    pub fn config_slot(&self) -> Arc<RwLock<Arc<Config>>> {
        self.config.clone()
    }

    /// Sets the observer told of every event settled from now on (once;
    /// a second call is ignored).
    pub fn observe(&self, observer: Arc<dyn Observe>) {
        let _ = self.observer.set(observer);
    }

    pub(super) fn config(&self) -> Arc<Config> {
        self.config.read_locked().clone()
    }

    /// Forgets the key-value marks older than the archive retention
    /// ([`mark_horizon`]): by then the event is long archived (the archive
    /// is what proves it settled) or dead-lettered. A failure is logged, not
    /// fatal: the marks are only kept longer.
    pub(super) fn prune_marks(&self, config: &Config) {
        let Some(before) = mark_horizon(config.archive.retention_days, crate::queue::now_ms()) else { return };
        let pruned = self.sandbox.existing_state().and_then(|s| s.map_or(Ok(0), |s| s.prune_marks(before)));
        match pruned {
            Ok(0) => {}
            Ok(n) => tracing::info!(marks = n, "pruned key-value marks older than the archive retention"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "failed to prune the key-value marks"),
        }
    }

    /// Dispatches until the run's [`Mode`] says to stop or `stop` returns
    /// true, then waits for the events in flight and returns what was done.
    ///
    /// # Errors
    /// When the queue cannot be read or a batch cannot be settled durably
    /// (its claims stay claimed and are recovered after their lease).
    pub fn run(&self, mode: Mode<'_>, stop: &(dyn Fn() -> bool + Sync)) -> Result<Summary> {
        let start = Instant::now();
        let config = self.config();
        let recovered = self.queue.recover(Duration::from_secs(config.dispatch.lease_secs))?;
        self.prune_marks(&config);
        let in_flight = InFlight::default();
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let shared = Shared {
            slots: Arc::new(Slots::new(config.workers())),
            done: done_tx,
            handlers: self.handlers.clone(),
            sandbox: self.sandbox.clone(),
            metrics: self.metrics.clone(),
            leases: self.queue.leases(),
        };
        let mut claimed = 0;
        let committed = std::thread::scope(|scope| -> Result<Result<Summary>> {
            let (queue, in_flight, metrics, sandbox) = (self.queue.as_ref(), &in_flight, &self.metrics, &self.sandbox);
            let observer = self.observer.get().map(|o| o.as_ref());
            let committer = scope.spawn(move || commit_loop(queue, &done_rx, in_flight, metrics, sandbox, observer));
            let done = shared.done.clone();
            let mut lanes = Lanes::new(scope, shared);
            let claim_result = self.claim_loop(&mode, stop, &mut lanes, &done, in_flight, &mut claimed);
            // Close the lanes, let them finish, then the committer.
            drop(lanes);
            drop(done);
            let committed = committer.join().map_err(|_| anyhow!("the committer thread stopped unexpectedly"));
            claim_result?;
            committed
        })?;
        self.queue.flush();
        let committed = committed?;
        Ok(Summary {
            claimed,
            recovered_claims: recovered.requeued + recovered.finished,
            broken: self.broken.read_locked().clone(),
            elapsed_ms: crate::text::millis(start.elapsed()),
            ..committed
        })
    }
}

/// Marks recorded before this time (Unix ms) may go: `retention_days`
/// before `now_ms`; `None` (keep them all) when the archive is kept forever.
pub(super) fn mark_horizon(retention_days: u64, now_ms: u64) -> Option<u64> {
    (retention_days > 0).then(|| now_ms.saturating_sub(retention_days.saturating_mul(86_400_000)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn marks_are_kept_as_long_as_the_archive() {
        assert_eq!(super::mark_horizon(0, 10 * 86_400_000), None);
        assert_eq!(super::mark_horizon(2, 10 * 86_400_000), Some(8 * 86_400_000));
        assert_eq!(super::mark_horizon(30, 1000), Some(0));
    }
}
