//! Handler leases: how a handler with `concurrency = 1` and state stays
//! one-at-a-time across every host of a shared store, not only within one
//! dispatcher's lane.
//!
//! A lease is named by its handler. [`Leases::acquire`] grants it to one
//! holder at a time, for [`Leases::ttl`], under a *fencing token*: a
//! number that rises with every grant of that handler's lease. The holder
//! renews it while it has work ([`Leases::renew`], which also says whether
//! another holder waits) and gives it back once idle, or after a while when
//! another waits ([`Leases::release`]); both act only while the lease still
//! holds the caller's token, so a holder that paused past its lease (and
//! lost it to another host) cannot renew or release the new holder's.
//!
//! The token goes with the invocation's key-value writes
//! ([`crate::kv::Fence`]): the state commit refuses, as a conflict, writes
//! whose token is no longer the lease's, so a host that lost its lease
//! cannot apply state after another took over; its event runs again (on
//! whichever host holds the lease then), exactly as a conflict does.
//!
//! Backends: Redis ([`super::redis::lease`]) keeps the lease and the
//! counter in the server. The filesystem backend has none
//! ([`crate::queue::Queue::leases`] is `None`, i.e. always granted): one
//! process serves a filesystem root's handlers, and its lanes already run a
//! `concurrency = 1` handler one event at a time.
//!
//! How the dispatcher holds a lease (and why it cannot deadlock) is in
//! `crate::dispatch::lease`.

use std::time::Duration;

use anyhow::Result;

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Extended; `wanted`: another holder tried to take it since it was
    /// granted (the holder should give it back soon, see
    /// `crate::dispatch::lease`).
    Kept { wanted: bool },
    /// It holds another token, or none: expired, or another holder's now.
    Lost,
}

/// Leases of handlers in a shared store.
pub trait Leases: Send + Sync {
    /// How long a grant or a renewal lasts.
    fn ttl(&self) -> Duration;

    /// Takes the lease of `handler` if nobody holds it: its new fencing
    /// token, or `None` while another holder has it.
    ///
    /// # Errors
    /// When the store cannot be reached.
    fn acquire(&self, handler: &str) -> Result<Option<u64>>;

    /// Extends the lease of `handler` by [`Leases::ttl`] if it still holds
    /// `token`, and says whether another holder waits for it.
    ///
    /// # Errors
    /// When the store cannot be reached.
    fn renew(&self, handler: &str, token: u64) -> Result<Renewal>;

    /// Gives the lease of `handler` back if it still holds `token`, and
    /// tells waiters; false when it held another token (or none).
    ///
    /// # Errors
    /// When the store cannot be reached.
    fn release(&self, handler: &str, token: u64) -> Result<bool>;

    /// Waits up to `timeout` for a hint that a lease may have been given
    /// back (or returns at once when there is no such hint: the caller
    /// polls with backoff).
    fn wait_release(&self, timeout: Duration) {
        std::thread::sleep(timeout);
    }
}
