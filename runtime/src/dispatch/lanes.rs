//! The lanes of a dispatch run: one job queue per handler, served in queue
//! order by `concurrency` threads of that handler (one by default, so a
//! stateful handler sees its events one at a time), all lanes together
//! limited to `workers` invocations at once by [`Slots`]. A lane runs its
//! handler on an event in the sandbox, logs what happened (guest text
//! escaped), hands the invocation's key-value writes to the committer at
//! once ([`Done::State`]), and, when the event's last handler is done,
//! hands it the event to settle ([`Done::Settle`]).
//!
//! A lane does not wait for the commit of what its handler wrote: the
//! writes go into the lane's [`Overlay`] when the invocation ends, the next
//! event runs at once and reads them there, and the committer takes them
//! out once committed (see `crate::kv::overlay` for why what is built on
//! them is still exactly once and in order). The committer commits a lane's
//! writes in the order the lane finished them — they reach it one by one,
//! not with their events, which can finish in another order when an event
//! also waits for a slower handler — so a lane's own writes never refuse
//! each other. After a refusal the lane drains ([`Overlay::begin`]) before
//! it runs anything else, which is what makes it always go forward.
//!
//! On a store shared by several hosts, a lane of a handler with
//! `concurrency = 1` and a writable bucket also holds the handler's lease
//! while it runs (see `super::lease`): taken before an invocation (and
//! before its slot), renewed by a thread of the lane, given back once the
//! lane's queue is empty and its writes are all resolved.
//!
//! Threads: lanes are scoped threads of [`super::Dispatcher::run`];
//! dropping [`Lanes`] closes every lane's queue, and each lane thread ends
//! when its queue is empty and closed (a leased lane's renewer with it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::Scope;
use std::time::{Duration, SystemTime};

use crate::event::Event;
use crate::kv::overlay::Overlay;
use crate::metrics::Metrics;
use crate::queue::Claim;
use crate::records::FaultKind;
use crate::sandbox::{Fault, Sandbox};
use crate::text::Escaped;

use super::Handlers;
use super::lease::LaneLease;
use crate::lock::{Recover, RecoverRw};

/// One handler's part of one event.
pub(super) struct Job {
    pub pending: Arc<Pending>,
    pub slot: usize,
}

/// An event whose handlers are running, or that is settled without them.
pub(super) struct Pending {
    pub claim: Claim,
    /// Handlers this event routes to that do not load: it goes back to the
    /// queue unrun, its attempt unchanged.
    pub waits_for: Vec<String>,
    /// How long it then stays out of the serving order.
    pub defer_for: Duration,
    /// Delivered more often than its handlers allow (e.g. it crashed the
    /// dispatcher each time, so only lease recovery saw it): dead-letter it
    /// without running it again.
    pub exhausted: Option<u32>,
    /// Further from a producer's event than `dispatch.max_hops` allows (an
    /// event loop): dead-letter it without running it.
    pub looped: Option<u32>,
    /// The handlers it runs, one lane each.
    pub names: Vec<String>,
    pub results: Mutex<Vec<Option<Ran>>>,
    pub remaining: Mutex<usize>,
    /// Set by the committer when a buffer of one of its handlers was
    /// refused as a conflict: the event runs again.
    pub conflicted: AtomicBool,
}

/// What a lane hands the committer, in the order it happens.
pub(super) enum Done {
    /// The key-value writes of handler `slot` of the event, to commit with
    /// the next batch (before the event is settled).
    State(Arc<Pending>, usize),
    /// The event, all its handlers done (or none to run), to settle.
    Settle(Arc<Pending>),
}

impl Pending {
    /// The event back from the lanes, whole: normally the committer holds
    /// the last reference; otherwise its results are taken out.
    pub fn into_inner(pending: Arc<Pending>) -> Pending {
        Arc::try_unwrap(pending).unwrap_or_else(|p| Pending {
            claim: p.claim.clone(),
            waits_for: p.waits_for.clone(),
            defer_for: p.defer_for,
            exhausted: p.exhausted,
            looped: p.looped,
            names: p.names.clone(),
            results: Mutex::new(p.results.locked().iter_mut().map(Option::take).collect()),
            remaining: Mutex::new(0),
            conflicted: AtomicBool::new(p.conflicted.load(Ordering::SeqCst)),
        })
    }
}

/// One handler run on one event.
pub(super) struct Ran {
    pub handler: String,
    pub sha256: String,
    pub version: String,
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub result: Result<String, Fault>,
    pub emitted: Vec<Event>,
    pub duration: Duration,
    /// When the invocation started (its slot taken), for the archive.
    pub started: SystemTime,
    /// Its key-value writes, if it succeeded and wrote any; the committer
    /// takes them out to commit before the settlement.
    pub changes: Option<crate::kv::Changes>,
    /// The lane's pending changes, which hold `changes` until committed;
    /// the committer resolves them there ([`Overlay::resolve`]).
    pub overlay: Option<Arc<Overlay>>,
}

/// A simple counting semaphore: the `workers` invocations of a run.
pub(super) struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Slots {
    pub fn new(n: usize) -> Slots {
        Slots { free: Mutex::new(n), cv: Condvar::new() }
    }

    fn acquire(&self) {
        let mut free = self.free.locked();
        while *free == 0 {
            free = crate::lock::recover(self.cv.wait(free));
        }
        *free -= 1;
    }

    fn release(&self) {
        *self.free.locked() += 1;
        self.cv.notify_one();
    }
}

/// What every lane of a run shares.
#[derive(Clone)]
pub(super) struct Shared {
    pub slots: Arc<Slots>,
    pub done: Sender<Done>,
    pub handlers: Handlers,
    pub sandbox: Arc<Sandbox>,
    pub metrics: Arc<Metrics>,
    /// The store's handler leases, when several hosts share it.
    pub leases: Option<Arc<dyn crate::store::lease::Leases>>,
}

/// The lanes of one run, made as handlers are first needed.
pub(super) struct Lanes<'scope, 'env> {
    scope: &'scope Scope<'scope, 'env>,
    shared: Shared,
    lanes: BTreeMap<String, Sender<Job>>,
}

impl<'scope, 'env> Lanes<'scope, 'env> {
    pub fn new(scope: &'scope Scope<'scope, 'env>, shared: Shared) -> Self {
        Lanes { scope, shared, lanes: BTreeMap::new() }
    }

    /// Queues a job on the lane of handler `name`, starting the lane with
    /// `concurrency` threads if it is the handler's first job this run; a
    /// lane of one thread of a handler that writes state (`stateful`) holds
    /// the handler's lease when the store has leases.
    pub fn send(&mut self, name: &str, concurrency: usize, stateful: bool, job: Job) {
        let tx = self.lanes.entry(name.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let lease = match &self.shared.leases {
                Some(leases) if concurrency <= 1 && stateful => {
                    Some(LaneLease::new(leases.clone(), name, self.shared.metrics.clone()))
                }
                _ => None,
            };
            let lane = Arc::new(Lane {
                rx: Mutex::new(rx),
                overlay: Arc::new(Overlay::default()),
                order: Mutex::new(()),
                lease,
            });
            if lane.lease.is_some() {
                let lane = lane.clone();
                self.scope.spawn(move || lane.lease.as_ref().map(LaneLease::renew_loop));
            }
            for _ in 0..concurrency.max(1) {
                let (lane, shared, name) = (lane.clone(), self.shared.clone(), name.to_string());
                self.scope.spawn(move || run_lane(&name, &lane, &shared));
            }
            tx
        });
        let _ = tx.send(job);
    }
}

/// What the threads of one handler's lane share.
struct Lane {
    rx: Mutex<Receiver<Job>>,
    /// The lane's done-but-uncommitted writes, and its drain gate.
    overlay: Arc<Overlay>,
    /// Held while a buffer enters the overlay and goes to the committer, so
    /// that the committer gets the lane's buffers in overlay order.
    order: Mutex<()>,
    /// The handler's lease (one thread only; see `super::lease`).
    lease: Option<LaneLease>,
}

impl Lane {
    /// The lane's next job, or `None` once its queue is closed and empty.
    /// A leased lane whose queue runs empty gives the lease back first —
    /// once every write of its invocations is resolved, so that the next
    /// holder reads them — unless a job came meanwhile; so does one that
    /// held it long enough while another host waits.
    fn next(&self) -> Option<Job> {
        let rx = self.rx.locked();
        if let Some(lease) = &self.lease {
            if lease.should_yield() {
                self.overlay.wait_idle();
                lease.yield_to_waiter();
            }
            match rx.try_recv() {
                Ok(job) => return Some(job),
                Err(TryRecvError::Disconnected) => {
                    self.overlay.wait_idle();
                    lease.release();
                    lease.close();
                    return None;
                }
                Err(TryRecvError::Empty) if lease.is_held() => {
                    self.overlay.wait_idle();
                    match rx.try_recv() {
                        Ok(job) => return Some(job),
                        Err(_) => lease.release(),
                    }
                }
                Err(TryRecvError::Empty) => {}
            }
        }
        match rx.recv() {
            Ok(job) => Some(job),
            Err(_) => {
                if let Some(lease) = &self.lease {
                    lease.close();
                }
                None
            }
        }
    }
}

/// One thread of handler `name`'s lane: runs its jobs until the lane closes.
fn run_lane(name: &str, lane: &Lane, shared: &Shared) {
    let overlay = &lane.overlay;
    while let Some(job) = lane.next() {
        // The lease before the drain gate and the slot: a lane waiting for
        // it holds nothing another lane or host needs (see `super::lease`).
        let token = lane.lease.as_ref().map(LaneLease::hold);
        overlay.begin();
        let mut ran = run_one(name, &job.pending.claim, shared, overlay);
        let order = lane.order.locked();
        let wrote = match &mut ran.changes {
            Some(changes) => {
                changes.fence = token.map(|token| crate::kv::Fence { handler: name.to_string(), token });
                // In the overlay before the committer can see it, so it is
                // there for this lane's next event and leaves only once
                // resolved. Not the writes of a delivery already applied (a
                // rerun event whose other handler conflicted, a redelivery
                // after a crash): the backend will skip them, so nothing may
                // be built on them; the committer still resolves them.
                if !already_applied(shared, changes) {
                    overlay.push(changes);
                }
                ran.overlay = Some(overlay.clone());
                true
            }
            None => {
                overlay.finish_unwritten();
                false
            }
        };
        job.pending.results.locked()[job.slot] = Some(ran);
        if wrote {
            let _ = shared.done.send(Done::State(job.pending.clone(), job.slot));
        }
        drop(order);
        let last = {
            let mut remaining = job.pending.remaining.locked();
            *remaining -= 1;
            *remaining == 0
        };
        if last {
            let _ = shared.done.send(Done::Settle(job.pending));
        }
    }
}

/// Whether the backend already holds the mark of `changes` (on error:
/// assumed so, which only makes the lane read around them).
fn already_applied(shared: &Shared, changes: &crate::kv::Changes) -> bool {
    shared.sandbox.state().and_then(|s| s.applied(&changes.mark)).unwrap_or(true)
}

/// Runs handler `name` on a claimed event, and logs what it did.
fn run_one(name: &str, claim: &Claim, shared: &Shared, overlay: &Arc<Overlay>) -> Ran {
    // The version serving when the event reaches the front of the lane;
    // a reload swaps the map, and this Arc keeps the old one alive until
    // the invocation ends.
    let loaded = shared.handlers.read_locked().get(name).cloned();
    let Some(loaded) = loaded else {
        return Ran {
            handler: name.to_string(),
            sha256: String::new(),
            version: String::new(),
            max_attempts: 1,
            backoff_ms: 0,
            result: Err(Fault::new(FaultKind::Load, format!("handler {name} is not loaded"))),
            emitted: Vec::new(),
            duration: Duration::ZERO,
            started: SystemTime::now(),
            changes: None,
            overlay: None,
        };
    };
    let event = &claim.event;
    shared.slots.acquire();
    let started = SystemTime::now();
    let inv = shared.sandbox.invoke_in(&loaded, event, claim.name.attempt, Some(overlay));
    shared.slots.release();
    crate::fsio::failpoint("dispatch.handler-done");
    let ms = crate::text::millis(inv.duration);
    shared.metrics.invocation(name, inv.result.as_ref().map_or_else(|f| f.kind.as_str(), |_| "ok"), inv.duration);
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
        started,
        overlay: None,
        changes: inv.changes,
    }
}
