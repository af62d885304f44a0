//! The dispatcher: claim → route → run handlers → settle (archive, retry or
//! dead-letter), shared by the one-shot `cortex dispatch` and the service.
//!
//! Threads: the caller's thread claims events in serving order and hands
//! each to the lanes of the handlers it matches; each handler has a lane of
//! `concurrency` threads (one by default, so a stateful handler sees its
//! events one at a time, in queue order, while different handlers run side
//! by side), and all lanes share a limit of `workers` invocations at once. A
//! committer thread gathers finished events and settles them in batches,
//! one durable group commit per batch: follow-up events are queued before
//! the event that caused them is acknowledged.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow};
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::Config;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::queue::{AttemptRecord, Claim, Delivery, Failure, Queue, Settlement, Verdict, now_ms, now_rfc3339};
use crate::route;
use crate::sandbox::{Fault, Loaded, Sandbox};
use crate::text::Escaped;

/// Events claimed but not yet settled, at most.
const MAX_IN_FLIGHT: usize = 512;
/// Events settled in one group commit, at most.
const MAX_BATCH: usize = 256;

/// The handlers currently serving, by name; swapped whole on reload.
pub type Handlers = Arc<RwLock<Arc<BTreeMap<String, Arc<Loaded>>>>>;

/// The handlers that did not load, by name, with why; their events wait in
/// the queue (deferred) until a reload loads them.
pub type Broken = Arc<RwLock<BTreeMap<String, String>>>;

/// How long an event that waits for a handler that does not load first
/// stays out of the serving order; doubled each time it is put back again,
/// up to [`MAX_DEFER`], so a large backlog is not churned every few seconds.
const DEFER: Duration = Duration::from_secs(2);
const MAX_DEFER: Duration = Duration::from_secs(30);

/// Loads every handler of a config. One that does not load (its component
/// is missing or broken, or its `describe()` traps or times out) does not
/// stop the others: it is returned in the second map with the reason.
pub fn load_all(sandbox: &Sandbox, config: &Config) -> (BTreeMap<String, Arc<Loaded>>, BTreeMap<String, String>) {
    let mut out = BTreeMap::new();
    let mut broken = BTreeMap::new();
    for (name, h) in &config.handlers {
        match sandbox.load(name, h).and_then(|l| declared(&l, config.dispatch.describe_mismatch).map(|()| l)) {
            Ok(l) => {
                let load_ms = crate::text::millis(l.load_time);
                if l.from_cache {
                    tracing::debug!(handler = %name, load_ms, "handler loaded from the compiled cache");
                } else {
                    tracing::info!(handler = %name, load_ms, sha256 = %l.sha256, "handler compiled (cached for the next start)");
                }
                out.insert(name.clone(), Arc::new(l));
            }
            Err(e) => {
                let why = format!("{e:#}");
                tracing::error!(handler = %name, error = %why, "handler failed to load; its events wait in the queue until it loads (fix it, run `make handlers`, or remove it from cortex.toml)");
                broken.insert(name.clone(), why);
            }
        }
    }
    (out, broken)
}

/// The event patterns a handler's config routes to it that its component's
/// `describe()` does not declare (a wrong component swapped in, or a config
/// that grew without the handler).
pub fn undeclared(loaded: &Loaded) -> Vec<String> {
    let declared = &loaded.info.events;
    loaded
        .config
        .events
        .iter()
        .filter(|p| !declared.iter().any(|d| d == *p || crate::pattern::glob_match(d, p)))
        .cloned()
        .collect()
}

/// Applies `dispatch.describe_mismatch` to a loaded handler.
///
/// # Errors
/// Naming the undeclared patterns, when the mode is `refuse`.
pub fn declared(loaded: &Loaded, mode: crate::config::Mismatch) -> Result<()> {
    let missing = undeclared(loaded);
    if missing.is_empty() {
        return Ok(());
    }
    let what = format!(
        "handler {}: cortex.toml routes {} to it, but its component {} declares only {} in describe()",
        loaded.name,
        missing.join(", "),
        loaded.path.display(),
        if loaded.info.events.is_empty() { "nothing".into() } else { loaded.info.events.join(", ") }
    );
    match mode {
        crate::config::Mismatch::Refuse => Err(anyhow!(
            "{what}: refused (is it the right component? dispatch.describe_mismatch = \"warn\" loads it anyway)"
        )),
        crate::config::Mismatch::Warn => {
            tracing::warn!("{what}; loading it anyway (dispatch.describe_mismatch = \"warn\")");
            Ok(())
        }
    }
}

/// Per-handler counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HandlerStats {
    pub invocations: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub total_ms: f64,
}

/// What a dispatch run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub claimed: u64,
    pub handled: u64,
    pub unhandled: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    /// Events put back because a handler they route to does not load.
    pub deferred: u64,
    pub emitted: u64,
    pub recovered_claims: usize,
    /// Handlers that did not load, with why (their events wait).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub broken: BTreeMap<String, String>,
    pub handlers: BTreeMap<String, HandlerStats>,
    pub elapsed_ms: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = if self.elapsed_ms > 0.0 { self.claimed as f64 / (self.elapsed_ms / 1000.0) } else { 0.0 };
        writeln!(
            f,
            "dispatched {} events in {:.1} ms ({rate:.0}/s): {} handled, {} unhandled, {} retried, {} dead-lettered; {} follow-up events emitted",
            self.claimed, self.elapsed_ms, self.handled, self.unhandled, self.retried, self.dead_lettered, self.emitted
        )?;
        if self.deferred > 0 {
            writeln!(f, "{} events wait in the queue for handlers that do not load", self.deferred)?;
        }
        if self.recovered_claims > 0 {
            writeln!(f, "recovered {} stale claims from a stopped dispatcher", self.recovered_claims)?;
        }
        for (name, s) in &self.handlers {
            let mean = if s.invocations > 0 { s.total_ms / s.invocations as f64 } else { 0.0 };
            writeln!(
                f,
                "  {name:<24} {:>7} runs  {:>7} ok  {:>5} failed  {mean:>8.3} ms mean",
                s.invocations, s.succeeded, s.failed
            )?;
        }
        Ok(())
    }
}

/// How a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Until the queue is empty, waiting for retries that are not yet due.
    Drained,
    /// Until the queue holds nothing due now (retries stay queued).
    NothingDue,
}

/// One handler's part of one event.
struct Job {
    pending: Arc<Pending>,
    slot: usize,
}

/// An event whose handlers are running.
struct Pending {
    claim: Claim,
    /// Handlers this event routes to that do not load: it goes back to the
    /// queue unrun, its attempt unchanged.
    waits_for: Vec<String>,
    /// How long it then stays out of the serving order.
    defer_for: Duration,
    /// Delivered more often than its handlers allow (e.g. it crashed the
    /// dispatcher each time, so only lease recovery saw it): dead-letter it
    /// without running it again.
    exhausted: Option<u32>,
    /// Further from a producer's event than `dispatch.max_hops` allows (an
    /// event loop): dead-letter it without running it.
    looped: Option<u32>,
    names: Vec<String>,
    results: Mutex<Vec<Option<Ran>>>,
    remaining: Mutex<usize>,
}

/// One handler run on one event.
struct Ran {
    handler: String,
    sha256: String,
    version: String,
    max_attempts: u32,
    backoff_ms: u64,
    result: Result<String, Fault>,
    emitted: Vec<Event>,
    duration: Duration,
}

/// A simple counting semaphore.
struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Slots {
    fn acquire(&self) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.cv.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
    }
    fn release(&self) {
        *self.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.cv.notify_one();
    }
}

/// Runs events from a queue through the handlers.
pub struct Dispatcher {
    queue: Arc<dyn Queue>,
    sandbox: Arc<Sandbox>,
    metrics: Arc<Metrics>,
    config: Arc<RwLock<Arc<Config>>>,
    handlers: Handlers,
    broken: Broken,
    /// How often each waiting entry was put back (for its next delay).
    deferrals: Mutex<BTreeMap<String, u32>>,
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

    fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Dispatches until `until` holds or `stop` returns true, then waits for
    /// the events in flight and returns what was done.
    ///
    /// # Errors
    /// When the queue cannot be read or a batch cannot be settled durably
    /// (its claims stay claimed and are recovered after their lease).
    pub fn run(&self, until: Until, stop: &(dyn Fn() -> bool + Sync), wake: Option<&Receiver<()>>) -> Result<Summary> {
        let start = Instant::now();
        let config = self.config();
        let mut summary = Summary {
            recovered_claims: {
                let r = self.queue.recover(Duration::from_secs(config.dispatch.lease_secs))?;
                r.requeued + r.finished
            },
            ..Summary::default()
        };
        let slots = Arc::new(Slots { free: Mutex::new(config.workers()), cv: Condvar::new() });
        let in_flight = Arc::new((Mutex::new(0usize), Condvar::new()));
        let (done_tx, done_rx) = mpsc::channel::<Arc<Pending>>();
        let (stats_tx, stats_rx) = mpsc::channel::<Result<Summary>>();

        std::thread::scope(|scope| -> Result<()> {
            // Lanes: one queue of jobs per handler, served in order.
            // Owned by the closure, so dropping it closes every lane.
            let mut lanes: BTreeMap<String, Sender<Job>> = BTreeMap::new();
            let (lane_slots, lane_done) = (slots.clone(), done_tx.clone());
            let mut lane_for = move |name: &str, concurrency: usize| -> Sender<Job> {
                if let Some(tx) = lanes.get(name) {
                    return tx.clone();
                }
                let (tx, rx) = mpsc::channel::<Job>();
                let rx = Arc::new(Mutex::new(rx));
                for _ in 0..concurrency.max(1) {
                    let (rx, slots, done_tx, handlers, sandbox, metrics) = (
                        rx.clone(),
                        lane_slots.clone(),
                        lane_done.clone(),
                        self.handlers.clone(),
                        self.sandbox.clone(),
                        self.metrics.clone(),
                    );
                    let name = name.to_string();
                    scope.spawn(move || lane(&name, &rx, &slots, &done_tx, &handlers, &sandbox, &metrics));
                }
                lanes.insert(name.to_string(), tx.clone());
                tx
            };

            let committer = {
                let (queue, in_flight, metrics) = (self.queue.clone(), in_flight.clone(), self.metrics.clone());
                scope.spawn(move || {
                    let result = commit_loop(queue.as_ref(), &done_rx, &in_flight, &metrics);
                    let _ = stats_tx.send(result);
                })
            };

            // Entries this run put back for a handler that does not load.
            let mut deferred = std::collections::BTreeSet::new();
            let claim_result = (|| -> Result<()> {
                let lease = Duration::from_secs(config.dispatch.lease_secs);
                let mut last_recovery = Instant::now();
                loop {
                    if stop() {
                        return Ok(());
                    }
                    // A long-running dispatcher also takes back the claims of
                    // others that died while it ran.
                    // Every two seconds: a dead dispatcher's claims are
                    // known at once (its lock is free), not after the lease.
                    if wake.is_some() && last_recovery.elapsed() > (lease / 4).min(Duration::from_secs(2)) {
                        last_recovery = Instant::now();
                        let r = self.queue.recover(lease)?;
                        if r.requeued + r.finished > 0 {
                            tracing::warn!(requeued = r.requeued, finished = r.finished, "recovered stale claims");
                        }
                    }
                    {
                        let (count, cv) = &*in_flight;
                        let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
                        while *n >= MAX_IN_FLIGHT {
                            n = cv.wait(n).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                    if let Some(claim) = self.queue.claim()? {
                        summary.claimed += 1;
                        let config = self.config();
                        *in_flight.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                        let names: Vec<String> = route::handlers_for_event(&config, &claim.event)
                            .into_iter()
                            .filter(|n| !claim.delivery.done.iter().any(|d| d == n))
                            .map(str::to_string)
                            .collect();
                        let waits_for: Vec<String> = {
                            let broken = self.broken.read().unwrap_or_else(|e| e.into_inner());
                            names.iter().filter(|n| broken.contains_key(*n)).cloned().collect()
                        };
                        let max_attempts =
                            names.iter().filter_map(|n| config.handlers.get(n)).map(|h| h.max_attempts).max();
                        let exhausted = max_attempts.filter(|&m| claim.name.attempt > m);
                        let max_hops = config.dispatch.max_hops;
                        let looped =
                            (!names.is_empty() && claim.event.hops() > u64::from(max_hops)).then_some(max_hops);
                        // An event that is to be dead-lettered anyway does not wait.
                        let doomed = exhausted.is_some() || looped.is_some();
                        let waits_for = if doomed { Vec::new() } else { waits_for };
                        let names = if doomed || !waits_for.is_empty() { Vec::new() } else { names };
                        let defer_for = {
                            let mut deferrals = self.deferrals.lock().unwrap_or_else(|e| e.into_inner());
                            if waits_for.is_empty() {
                                deferrals.remove(&claim.name.key());
                                Duration::ZERO
                            } else {
                                deferred.insert(claim.name.key());
                                let n = deferrals.entry(claim.name.key()).or_insert(0);
                                *n += 1;
                                DEFER.saturating_mul(1 << (*n - 1).min(8)).min(MAX_DEFER)
                            }
                        };
                        let pending = Arc::new(Pending {
                            waits_for,
                            defer_for,
                            exhausted,
                            looped,
                            results: Mutex::new((0..names.len()).map(|_| None).collect()),
                            remaining: Mutex::new(names.len()),
                            names,
                            claim,
                        });
                        if pending.names.is_empty() {
                            let _ = done_tx.send(pending);
                            continue;
                        }
                        for (slot, name) in pending.names.iter().enumerate() {
                            let concurrency = config.handlers.get(name).map_or(1, |h| h.concurrency);
                            let _ = lane_for(name, concurrency).send(Job { pending: pending.clone(), slot });
                        }
                        continue;
                    }
                    // Nothing due right now.
                    let busy = *in_flight.0.lock().unwrap_or_else(|e| e.into_inner()) > 0;
                    if busy {
                        let (count, cv) = &*in_flight;
                        let n = count.lock().unwrap_or_else(|e| e.into_inner());
                        let _ = cv.wait_timeout(n, Duration::from_millis(20));
                        continue;
                    }
                    let depth = self.queue.depth()?;
                    match until {
                        _ if depth.queued == 0 && wake.is_none() => return Ok(()),
                        // A one-shot run does not wait for handlers that do
                        // not load: what is left waits for them in the queue.
                        _ if wake.is_none() && depth.queued <= deferred.len() => return Ok(()),
                        Until::NothingDue if wake.is_none() => return Ok(()),
                        Until::Drained if wake.is_none() => {
                            let wait = depth.next_due_ms.map_or(50, |d| d.saturating_sub(now_ms()).clamp(1, 1000));
                            std::thread::sleep(Duration::from_millis(wait));
                        }
                        _ => {
                            // Service mode: sleep until a watcher hint, a due
                            // retry, or the safety-net rescan.
                            let wait = depth.next_due_ms.map_or(1000, |d| d.saturating_sub(now_ms()).clamp(1, 1000));
                            if let Some(rx) = wake {
                                match rx.recv_timeout(Duration::from_millis(wait)) {
                                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                                }
                                while rx.try_recv().is_ok() {}
                            }
                        }
                    }
                }
            })();
            // Close the lanes, let them finish, then the committer.
            drop(lane_for);
            drop(done_tx);
            let _ = committer.join();
            claim_result
        })?;

        self.queue.flush();
        let committed = stats_rx.recv().map_err(|_| anyhow!("the committer thread stopped unexpectedly"))??;
        summary.handled = committed.handled;
        summary.unhandled = committed.unhandled;
        summary.retried = committed.retried;
        summary.dead_lettered = committed.dead_lettered;
        summary.deferred = committed.deferred;
        summary.broken = self.broken.read().unwrap_or_else(|e| e.into_inner()).clone();
        summary.emitted = committed.emitted;
        summary.handlers = committed.handlers;
        summary.elapsed_ms = crate::text::millis(start.elapsed());
        Ok(summary)
    }
}

fn lane(
    name: &str,
    rx: &Mutex<Receiver<Job>>,
    slots: &Slots,
    done: &Sender<Arc<Pending>>,
    handlers: &Handlers,
    sandbox: &Sandbox,
    metrics: &Metrics,
) {
    loop {
        let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        // The version serving when the event reaches the front of the lane;
        // a reload swaps the map, and this Arc keeps the old one alive until
        // the invocation ends.
        let loaded = handlers.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned();
        let event = &job.pending.claim.event;
        let ran = match loaded {
            None => Ran {
                handler: name.to_string(),
                sha256: String::new(),
                version: String::new(),
                max_attempts: 1,
                backoff_ms: 0,
                result: Err(Fault {
                    kind: "load".into(),
                    message: format!("handler {name} is not loaded"),
                    detail: String::new(),
                }),
                emitted: Vec::new(),
                duration: Duration::ZERO,
            },
            Some(loaded) => {
                slots.acquire();
                let inv = sandbox.invoke(&loaded, event, job.pending.claim.name.attempt);
                slots.release();
                crate::fsio::failpoint("dispatch.handler-done");
                let ms = crate::text::millis(inv.duration);
                metrics.invocation(name, inv.result.as_ref().map_or_else(|f| f.kind.as_str(), |_| "ok"), inv.duration);
                // Summaries, errors and output are the guest's text: escaped,
                // so they cannot drive the terminal or forge a log line.
                match &inv.result {
                    Ok(summary) => {
                        tracing::info!(handler = name, event_id = %event.event_id, event_type = %event.event_type, duration_ms = ms, summary = %Escaped(summary), "handler completed")
                    }
                    Err(f) => {
                        tracing::warn!(handler = name, event_id = %event.event_id, event_type = %event.event_type, duration_ms = ms, kind = %f.kind, error = %Escaped(&f.message), "handler failed")
                    }
                }
                if !inv.stdout.is_empty() {
                    tracing::info!(handler = name, event_id = %event.event_id, "stdout: {}", Escaped(inv.stdout.trim_end()));
                }
                if !inv.stderr.is_empty() {
                    tracing::info!(handler = name, event_id = %event.event_id, "stderr: {}", Escaped(inv.stderr.trim_end()));
                }
                Ran {
                    handler: name.to_string(),
                    sha256: loaded.sha256.clone(),
                    version: loaded.info.version.clone(),
                    max_attempts: loaded.config.max_attempts,
                    backoff_ms: loaded.config.backoff_ms,
                    result: inv.result,
                    emitted: inv.emitted,
                    duration: inv.duration,
                }
            }
        };
        job.pending.results.lock().unwrap_or_else(|e| e.into_inner())[job.slot] = Some(ran);
        let last = {
            let mut remaining = job.pending.remaining.lock().unwrap_or_else(|e| e.into_inner());
            *remaining -= 1;
            *remaining == 0
        };
        if last {
            let _ = done.send(job.pending);
        }
    }
}

/// Gathers finished events and settles them in batches.
fn commit_loop(
    queue: &dyn Queue,
    rx: &Receiver<Arc<Pending>>,
    in_flight: &(Mutex<usize>, Condvar),
    metrics: &Metrics,
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
        if failed.is_none() {
            let settlements: Vec<Settlement> = batch.into_iter().map(|p| settle_one(p, &mut summary)).collect();
            let observed: Vec<(String, &'static str, usize)> = settlements
                .iter()
                .map(|s| {
                    let outcome = match &s.verdict {
                        Verdict::Ack(r) if r["outcome"] == "unhandled" => "unhandled",
                        Verdict::Ack(_) => "handled",
                        Verdict::Retry { .. } => "retried",
                        Verdict::DeadLetter(_) => "dead_lettered",
                        Verdict::Defer { .. } => "deferred",
                    };
                    (s.claim.event.event_type.clone(), outcome, s.emitted.len())
                })
                .collect();
            let settled = queue.settle(settlements);
            if settled.is_ok() {
                for (event_type, outcome, emitted) in &observed {
                    metrics.settled(event_type, outcome, *emitted);
                }
            }
            if let Err(e) = settled {
                tracing::error!(error = %format!("{e:#}"), "failed to settle a batch; its events stay claimed and are recovered after their lease");
                failed = Some(e);
            }
        }
        let (count, cv) = in_flight;
        *count.lock().unwrap_or_else(|e| e.into_inner()) -= n;
        cv.notify_all();
    }
    match failed {
        Some(e) => Err(e.context("dispatch stopped: a batch could not be settled")),
        None => Ok(summary),
    }
}

/// Decides how one event ends, from what its handlers did.
fn settle_one(pending: Arc<Pending>, summary: &mut Summary) -> Settlement {
    let pending = Arc::try_unwrap(pending).unwrap_or_else(|p| Pending {
        claim: p.claim.clone(),
        waits_for: p.waits_for.clone(),
        defer_for: p.defer_for,
        exhausted: p.exhausted,
        looped: p.looped,
        names: p.names.clone(),
        results: Mutex::new(p.results.lock().unwrap_or_else(|e| e.into_inner()).iter_mut().map(Option::take).collect()),
        remaining: Mutex::new(0),
    });
    let claim = pending.claim;
    if !pending.waits_for.is_empty() {
        summary.deferred += 1;
        tracing::debug!(event_id = %claim.event.event_id, handlers = ?pending.waits_for, "event waits for handlers that do not load");
        return Settlement {
            claim,
            emitted: Vec::new(),
            verdict: Verdict::Defer { due: SystemTime::now() + pending.defer_for },
        };
    }
    let ran: Vec<Ran> = pending.results.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().flatten().collect();
    let attempt = claim.name.attempt;
    let mut emitted = Vec::new();
    let mut handlers_json = Vec::new();
    let mut failures = Vec::new();
    let mut succeeded = Vec::new();
    for r in &ran {
        let stats = summary.handlers.entry(r.handler.clone()).or_default();
        stats.invocations += 1;
        stats.total_ms += r.duration.as_secs_f64() * 1000.0;
        match &r.result {
            Ok(text) => {
                stats.succeeded += 1;
                succeeded.push(r.handler.clone());
                handlers_json.push(json!({
                    "name": r.handler,
                    "version": r.version,
                    "component_sha256": r.sha256,
                    "summary": text,
                    "duration_ms": crate::text::millis(r.duration),
                    "emitted": r.emitted.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>(),
                }));
                emitted.extend(r.emitted.iter().cloned());
            }
            Err(fault) => {
                stats.failed += 1;
                failures.push((r, fault.clone()));
            }
        }
    }
    summary.emitted += emitted.len() as u64;

    if let Some(max_hops) = pending.looped {
        return cut_loop(summary, claim, emitted, max_hops);
    }

    if let Some(max_attempts) = pending.exhausted {
        let reason = format!(
            "delivered {attempt} times, over max_attempts = {max_attempts}, without being settled (see history: its dispatchers stopped)"
        );
        let delivery = claim.delivery.clone();
        return dead_letter(summary, claim, emitted, max_attempts, reason, Vec::new(), delivery);
    }

    if failures.is_empty() {
        let outcome = if pending.names.is_empty() && claim.delivery.done.is_empty() { "unhandled" } else { "handled" };
        if outcome == "unhandled" {
            summary.unhandled += 1;
        } else {
            summary.handled += 1;
        }
        let record = json!({
            "event": claim.event,
            "outcome": outcome,
            "entry": claim.name.key(),
            "attempts": attempt,
            "archived_at": now_rfc3339(),
            // From the rename into the queue to this ack, in microseconds.
            "latency_us": crate::queue::now_us().saturating_sub(claim.name.enqueued_us),
            "handlers": handlers_json,
            "earlier_handlers": claim.delivery.done,
        });
        return Settlement { claim, emitted, verdict: Verdict::Ack(record) };
    }

    let mut delivery = claim.delivery.clone();
    delivery.done.extend(succeeded);
    delivery.history.push(AttemptRecord {
        attempt,
        at: now_rfc3339(),
        failures: failures
            .iter()
            .map(|(r, f)| Failure {
                handler: r.handler.clone(),
                component_sha256: r.sha256.clone(),
                kind: f.kind.clone(),
                message: f.message.clone(),
                detail: f.detail.clone(),
                duration_ms: crate::text::millis(r.duration),
            })
            .collect(),
    });
    let max_attempts = failures.iter().map(|(r, _)| r.max_attempts).min().unwrap_or(1);
    if attempt >= max_attempts {
        let reason = failures
            .iter()
            .map(|(r, f)| format!("{}: {} ({})", r.handler, f.message, f.kind))
            .collect::<Vec<_>>()
            .join("; ");
        let failed = failures
            .iter()
            .map(|(r, _)| json!({"name": r.handler, "component_sha256": r.sha256, "version": r.version}))
            .collect();
        return dead_letter(summary, claim, emitted, max_attempts, reason, failed, delivery);
    }
    summary.retried += 1;
    let backoff = failures.iter().map(|(r, _)| r.backoff_ms).max().unwrap_or(0);
    let delay = backoff.saturating_mul(1u64 << (attempt - 1).min(20));
    Settlement {
        claim,
        emitted,
        verdict: Verdict::Retry { due: SystemTime::now() + Duration::from_millis(delay), delivery },
    }
}

/// The verdict for an event that failed for good, with its forensic record.
fn dead_letter(
    summary: &mut Summary,
    claim: Claim,
    emitted: Vec<Event>,
    max_attempts: u32,
    reason: String,
    failed_handlers: Vec<Value>,
    delivery: Delivery,
) -> Settlement {
    summary.dead_lettered += 1;
    let attempt = claim.name.attempt;
    tracing::error!(event_id = %claim.event.event_id, attempts = attempt, reason = %Escaped(&reason), "event moved to the dead-letter queue");
    let record = json!({
        "event": claim.event,
        "entry": claim.name.key(),
        "attempts": attempt,
        "max_attempts": max_attempts,
        "dead_lettered_at": now_rfc3339(),
        "reason": reason,
        "failed_handlers": failed_handlers,
        "succeeded_handlers": delivery.done,
        "history": delivery.history,
    });
    Settlement { claim, emitted, verdict: Verdict::DeadLetter(record) }
}

/// The dead letter of an event past `dispatch.max_hops`: the reason names
/// the loop, and the record's `loop` the link that closed it, for `cortex
/// status` to report.
fn cut_loop(summary: &mut Summary, claim: Claim, emitted: Vec<Event>, max_hops: u32) -> Settlement {
    let event = &claim.event;
    let cause = event.metadata.extra.get("caused_by");
    let text = |key: &str| cause.and_then(|c| c[key].as_str()).unwrap_or("?").to_string();
    let (handler, trigger_type, trigger_id) = (text("handler"), text("event_type"), text("event_id"));
    let hops = event.hops();
    let reason = format!(
        "event loop: {hops} hops of caused_by from a producer's event, over dispatch.max_hops = {max_hops}; handler {handler} emitted this {} while handling {trigger_type} {trigger_id}; not run (fix the handler's emits, or raise dispatch.max_hops if the chain is meant to be this long)",
        event.event_type
    );
    let link = json!({
        "hops": hops,
        "max_hops": max_hops,
        "handler": handler,
        "trigger_type": trigger_type,
        "trigger_id": trigger_id,
        "event_type": event.event_type,
    });
    let (delivery, attempt) = (claim.delivery.clone(), claim.name.attempt);
    let mut settlement = dead_letter(summary, claim, emitted, attempt, reason, Vec::new(), delivery);
    if let Verdict::DeadLetter(record) = &mut settlement.verdict {
        record["loop"] = link;
    }
    settlement
}

/// Loads the handlers of a config into a ready dispatcher. A handler that
/// does not load is reported in [`Dispatcher::broken`]; the others serve.
///
/// # Errors
/// When the sandbox cannot be started.
pub fn prepare(queue: Arc<dyn Queue>, root: &std::path::Path, config: Arc<Config>) -> Result<Dispatcher> {
    let sandbox =
        Arc::new(Sandbox::new(root, config.validator(), config.needs_fuel()).context("failed to start the sandbox")?);
    let (handlers, broken) = load_all(&sandbox, &config);
    Ok(Dispatcher::new(queue, sandbox, config, handlers, broken))
}
