//! The claim loop of a dispatch run, on the caller's thread: claims events
//! in serving order, routes each to the lanes of the handlers it reaches
//! (or straight to the committer when it runs none: unhandled, waiting for
//! a handler that does not load, or doomed), keeps at most
//! [`MAX_IN_FLIGHT`] events in flight, and when nothing is due decides by
//! the run's [`Mode`] whether to wait or to end.
//!
//! Crash story: a claimed event is the queue's to recover until it is
//! settled; this loop writes nothing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::commit::InFlight;
use super::lanes::{Done, Job, Lanes, Pending};
use super::{Dispatcher, Until};
use crate::config::Config;
use crate::lock::{Recover, RecoverRw};
use crate::queue::{Claim, now_ms};
use crate::route;

/// Events claimed but not yet settled, at most.
const MAX_IN_FLIGHT: usize = 512;

/// How often the claim loop, blocked on [`MAX_IN_FLIGHT`], keeps its
/// claims alive.
const KEEP_ALIVE: Duration = Duration::from_millis(250);

/// How often a service prunes the key-value marks.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How long an event that waits for a handler that does not load first
/// stays out of the serving order; doubled each time it is put back again,
/// up to [`MAX_DEFER`], so a large backlog is not churned every few seconds.
const DEFER: Duration = Duration::from_secs(2);
const MAX_DEFER: Duration = Duration::from_secs(30);

/// How a dispatch run goes on when nothing is due.
#[derive(Debug, Clone, Copy)]
pub enum Mode<'a> {
    /// `cortex dispatch`: ends when `until` holds; events that wait for a
    /// handler that does not load stay in the queue.
    OneShot(Until),
    /// `cortex serve`: runs until stopped, sleeping until a watcher hint
    /// on `wake`, a due retry, or the once-a-second rescan; takes back the
    /// claims of dispatchers that died as it goes. Ends when `wake` closes.
    Service { wake: &'a Receiver<()> },
}

impl Dispatcher {
    /// Claims and routes events until the mode or `stop` ends the run;
    /// counts the claims in `claimed`.
    pub(super) fn claim_loop(
        &self,
        mode: &Mode<'_>,
        stop: &(dyn Fn() -> bool + Sync),
        lanes: &mut Lanes<'_, '_>,
        done: &Sender<Done>,
        in_flight: &InFlight,
        claimed: &mut u64,
    ) -> Result<()> {
        let lease = Duration::from_secs(self.config().dispatch.lease_secs);
        let mut last_recovery = Instant::now();
        let mut last_prune = Instant::now();
        // Entries this run put back for a handler that does not load.
        let mut deferred = BTreeSet::new();
        loop {
            if stop() {
                return Ok(());
            }
            // A long-running dispatcher also takes back the claims of
            // others that died while it ran, every two seconds: a dead
            // dispatcher's claims are known at once (its lock is free).
            if matches!(mode, Mode::Service { .. }) && last_recovery.elapsed() > (lease / 4).min(Duration::from_secs(2))
            {
                last_recovery = Instant::now();
                let r = self.queue.recover(lease)?;
                if r.requeued + r.finished > 0 {
                    tracing::warn!(requeued = r.requeued, finished = r.finished, "recovered stale claims");
                }
            }
            // A service that runs for weeks prunes its key-value marks as
            // it goes (a run prunes them when it starts).
            if matches!(mode, Mode::Service { .. }) && last_prune.elapsed() > PRUNE_EVERY {
                last_prune = Instant::now();
                self.prune_marks(&self.config());
            }
            // Full: the claims in flight stay alive meanwhile (lanes may
            // wait for a handler lease another host holds; see `lease`).
            while !in_flight.wait_below_for(MAX_IN_FLIGHT, KEEP_ALIVE) {
                self.queue.keep_alive()?;
            }
            if let Some(claim) = self.queue.claim()? {
                *claimed += 1;
                in_flight.add();
                let config = self.config();
                let pending = Arc::new(self.route(claim, &config, &mut deferred));
                if pending.names.is_empty() {
                    let _ = done.send(Done::Settle(pending));
                    continue;
                }
                for (slot, name) in pending.names.iter().enumerate() {
                    let handler = config.handlers.get(name);
                    let concurrency = handler.map_or(1, |h| h.concurrency);
                    let stateful = handler.is_some_and(|h| !h.keyvalue.is_empty());
                    lanes.send(name, concurrency, stateful, Job { pending: pending.clone(), slot });
                }
                continue;
            }
            // Nothing due right now.
            if in_flight.wait_if_busy(Duration::from_millis(20)) {
                continue;
            }
            if !self.idle(mode, deferred.len())? {
                return Ok(());
            }
        }
    }

    /// Which handlers a claimed event runs, or why it runs none: it waits
    /// for handlers that do not load (and for how long), it was delivered
    /// more often than its handlers allow, or it closes an event loop.
    fn route(&self, claim: Claim, config: &Config, deferred: &mut BTreeSet<String>) -> Pending {
        let names: Vec<String> = route::handlers_for_event(config, &claim.event)
            .into_iter()
            .filter(|n| !claim.delivery.done.iter().any(|d| d == n))
            .map(str::to_string)
            .collect();
        let waits_for: Vec<String> = {
            let broken = self.broken.read_locked();
            names.iter().filter(|n| broken.contains_key(*n)).cloned().collect()
        };
        let max_attempts = names.iter().filter_map(|n| config.handlers.get(n)).map(|h| h.max_attempts).max();
        let exhausted = max_attempts.filter(|&m| claim.name.attempt > m);
        let max_hops = config.dispatch.max_hops;
        let looped = (!names.is_empty() && claim.event.hops() > u64::from(max_hops)).then_some(max_hops);
        // An event that is to be dead-lettered anyway does not wait.
        let doomed = exhausted.is_some() || looped.is_some();
        let waits_for = if doomed { Vec::new() } else { waits_for };
        let names = if doomed || !waits_for.is_empty() { Vec::new() } else { names };
        let defer_for = self.defer_for(&claim, !waits_for.is_empty(), deferred);
        Pending {
            waits_for,
            defer_for,
            exhausted,
            looped,
            results: std::sync::Mutex::new((0..names.len()).map(|_| None).collect()),
            remaining: std::sync::Mutex::new(names.len()),
            conflicted: std::sync::atomic::AtomicBool::new(false),
            names,
            claim,
        }
    }

    /// How long an entry put back for a handler that does not load stays
    /// out of the serving order: longer each time it is put back.
    fn defer_for(&self, claim: &Claim, waits: bool, deferred: &mut BTreeSet<String>) -> Duration {
        let mut deferrals = self.deferrals.locked();
        if !waits {
            deferrals.remove(&claim.name.key());
            return Duration::ZERO;
        }
        deferred.insert(claim.name.key());
        let n = deferrals.entry(claim.name.key()).or_insert(0);
        *n += 1;
        DEFER.saturating_mul(1 << (*n - 1).min(8)).min(MAX_DEFER)
    }

    /// Nothing is due and nothing in flight: waits as the mode says, and
    /// returns whether the run goes on. `deferred` entries of this run wait
    /// for handlers that do not load.
    fn idle(&self, mode: &Mode<'_>, deferred: usize) -> Result<bool> {
        let depth = self.queue.depth()?;
        match *mode {
            Mode::OneShot(until) => {
                // A one-shot run does not wait for handlers that do not
                // load: what is left waits for them in the queue.
                if depth.queued == 0 || depth.queued <= deferred || until == Until::NothingDue {
                    return Ok(false);
                }
                let wait = depth.next_due_ms.map_or(50, |d| d.saturating_sub(now_ms()).clamp(1, 1000));
                std::thread::sleep(Duration::from_millis(wait));
                Ok(true)
            }
            Mode::Service { wake } => {
                let wait = depth.next_due_ms.map_or(1000, |d| d.saturating_sub(now_ms()).clamp(1, 1000));
                match wake.recv_timeout(Duration::from_millis(wait)) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return Ok(false),
                }
                while wake.try_recv().is_ok() {}
                Ok(true)
            }
        }
    }
}
