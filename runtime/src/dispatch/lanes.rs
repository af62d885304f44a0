//! The lanes of a dispatch run: one job queue per handler, served in queue
//! order by `concurrency` threads of that handler (one by default, so a
//! stateful handler sees its events one at a time), all lanes together
//! limited to `workers` invocations at once by [`Slots`]. A lane runs its
//! handler on an event in the sandbox, logs what happened (guest text
//! escaped), and, when the event's last handler is done, hands the event
//! to the committer. A lane whose handler wrote key-value state waits until
//! the committer has committed it before it runs its next event, so a
//! stateful handler's next event reads what the previous one wrote (not
//! the state from before the batch, which would only conflict and run
//! again).
//!
//! Threads: lanes are scoped threads of [`super::Dispatcher::run`];
//! dropping [`Lanes`] closes every lane's queue, and each lane thread ends
//! when its queue is empty and closed.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::Scope;
use std::time::Duration;

use crate::event::Event;
use crate::metrics::Metrics;
use crate::queue::Claim;
use crate::records::FaultKind;
use crate::sandbox::{Fault, Sandbox};
use crate::text::Escaped;

use super::Handlers;
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
    /// Opened by the committer once the event's key-value writes are
    /// committed (or will not be).
    pub state_committed: Arc<Latch>,
}

/// A one-way gate: closed until [`Latch::open`], then open for good.
#[derive(Default)]
pub(super) struct Latch {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Latch {
    pub fn open(&self) {
        *self.open.locked() = true;
        self.cv.notify_all();
    }

    fn wait(&self) {
        let mut open = self.open.locked();
        while !*open {
            open = crate::lock::recover(self.cv.wait(open));
        }
    }
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
            state_committed: p.state_committed.clone(),
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
    /// Its key-value writes, if it succeeded and wrote any; the committer
    /// takes them out to commit before the settlement.
    pub changes: Option<crate::kv::Changes>,
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
    pub done: Sender<Arc<Pending>>,
    pub handlers: Handlers,
    pub sandbox: Arc<Sandbox>,
    pub metrics: Arc<Metrics>,
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
    /// `concurrency` threads if it is the handler's first job this run.
    pub fn send(&mut self, name: &str, concurrency: usize, job: Job) {
        let tx = self.lanes.entry(name.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..concurrency.max(1) {
                let (rx, shared, name) = (rx.clone(), self.shared.clone(), name.to_string());
                self.scope.spawn(move || lane(&name, &rx, &shared));
            }
            tx
        });
        let _ = tx.send(job);
    }
}

/// One thread of handler `name`'s lane: runs its jobs until the lane closes.
fn lane(name: &str, rx: &Mutex<Receiver<Job>>, shared: &Shared) {
    loop {
        let job = match rx.locked().recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let ran = run_one(name, &job.pending.claim, shared);
        let wrote = ran.changes.is_some();
        let committed = job.pending.state_committed.clone();
        job.pending.results.locked()[job.slot] = Some(ran);
        let last = {
            let mut remaining = job.pending.remaining.locked();
            *remaining -= 1;
            *remaining == 0
        };
        if last {
            let _ = shared.done.send(job.pending);
        }
        // No deadlock: every lane takes its jobs in claim order, so the
        // other handlers of this event are not waiting on a later one.
        if wrote {
            committed.wait();
        }
    }
}

/// Runs handler `name` on a claimed event, and logs what it did.
fn run_one(name: &str, claim: &Claim, shared: &Shared) -> Ran {
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
            changes: None,
        };
    };
    let event = &claim.event;
    shared.slots.acquire();
    let inv = shared.sandbox.invoke(&loaded, event, claim.name.attempt);
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
        changes: inv.changes,
    }
}
