//! The dispatcher: claim → route → run handlers → settle (archive, retry or
//! dead-letter), shared by the one-shot `cortex dispatch` and the service,
//! which differ only in their [`Mode`].
//!
//! Threads: the caller's thread claims events in serving order and hands
//! each to the lanes of the handlers it matches; each handler has a lane of
//! `concurrency` threads (one by default, so a stateful handler sees its
//! events one at a time, in queue order, while different handlers run side
//! by side), and all lanes share a limit of `workers` invocations at once. A
//! committer thread gathers finished events and settles them in batches,
//! one durable group commit per batch: follow-up events are queued before
//! the event that caused them is acknowledged.
//!
//! One job per file:
//! - `dispatcher`: [`Dispatcher`] and the wiring of one [`Dispatcher::run`].
//! - `claim`: the claim loop, routing a claim, and [`Mode`].
//! - `lanes`: the per-handler lanes that run handlers in the sandbox.
//! - `commit`: the committer and the count of events in flight.
//! - `verdict`: how one event ends, from what its handlers did.
//! - `load`: loading a config's handlers, checked against `describe()`.
//! - `summary`: what a run did.
//! - `observe`: what the committer tells an observer (the live dashboard)
//!   about each settled event.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::sandbox::Loaded;

mod claim;
mod commit;
mod dispatcher;
mod lanes;
mod lease;
mod load;
mod observe;
mod summary;
mod verdict;

pub use claim::Mode;
pub use dispatcher::Dispatcher;
pub use load::{declared, load_all, prepare, undeclared};
pub use observe::{Ending, HandlerResult, Observe, Settled};
pub use summary::{HandlerStats, Summary, Until};

/// The handlers currently serving, by name; swapped whole on reload.
pub type Handlers = Arc<RwLock<Arc<BTreeMap<String, Arc<Loaded>>>>>;

/// The handlers that did not load, by name, with why; their events wait in
/// the queue (deferred) until a reload loads them.
pub type Broken = Arc<RwLock<BTreeMap<String, String>>>;
