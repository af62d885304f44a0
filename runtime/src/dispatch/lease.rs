//! The handler lease a lane holds on a store shared by several hosts (see
//! [`crate::store::lease`]): a handler with `concurrency = 1` and a
//! writable bucket runs on one host at a time, not only on one lane
//! thread. Handlers with `concurrency > 1`, stateless handlers, and the
//! filesystem backend (no [`crate::queue::Queue::leases`]) take no lease.
//!
//! The lane ([`super::lanes`]):
//!
//! 1. before it starts an invocation, [`LaneLease::hold`]s the lease: at
//!    once while it holds it, else it takes it, waiting with bounded
//!    backoff (woken early when the store hears a release) while another
//!    host has it;
//! 2. keeps it while it has work: [`LaneLease::renew_loop`], a thread of
//!    its own, renews it every third of the lease, so a long invocation
//!    does not lose it; an invocation's writes carry the token they ran
//!    under ([`crate::kv::Fence`]), and the state commit refuses them if
//!    the lease has another holder by then (the event runs again);
//! 3. gives it back when its queue is empty, but only once every write of
//!    its invocations has been committed or refused
//!    ([`crate::kv::overlay::Overlay::wait_idle`]): the lane runs ahead of
//!    the commit, and the next holder must read what this one wrote;
//! 4. also gives it back (the same way, between two invocations) once it
//!    has held it for a whole lease length while another host waits for it
//!    ([`LaneLease::should_yield`]), and then steps back for
//!    [`YIELD_PAUSE`] before it tries again, so that a host whose events
//!    for the handler keep coming cannot starve the others' claimed events.
//!
//! A lost lease (a renewal that finds another token, or none) is logged and
//! counted; the lane takes a new one before its next invocation, and what
//! it wrote under the old one is refused and runs again.
//!
//! **No deadlock.** A lane waiting for a lease holds claimed events (in
//! its queue), and counts towards its dispatcher's in-flight bound
//! (`claim::MAX_IN_FLIGHT`), which can stop that dispatcher claiming. Host
//! A may wait for H1's lease, held by host B, while B waits for H2's, held
//! by A. This cannot wait forever:
//!
//! - a lane takes its lease *before* an invocation slot (`Slots`), and an
//!   invocation needs nothing else to finish; so every slot is released,
//!   and a lane that holds its lease always runs the jobs in its queue;
//! - a lane holding a lease waits for nothing but its own queue and its own
//!   writes' commit (the committer never waits for a lease), and gives the
//!   lease back as soon as its queue is empty;
//! - its queue refills only from its own host's claim loop. If that host
//!   stalls on its in-flight bound (full of events waiting for other
//!   leases), its holding lanes empty their queues and give their leases
//!   back; if it does not stall, its events settle. Either way every lease
//!   is given back or its holder makes progress, and a waiting lane gets
//!   the lease once its holder is idle, has held it a lease length (the
//!   yield), or is dead (the lease expires).
//!
//! While a lane waits, its events' claims are kept alive: the claim loop,
//! even when blocked on the in-flight bound, calls
//! [`crate::queue::Queue::keep_alive`], so no host takes them back as a
//! dead dispatcher's.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::lock::Recover;
use crate::metrics::Metrics;
use crate::store::lease::{Leases, Renewal};

/// The first and the longest wait between two tries for a lease another
/// host holds (a release heard on the store ends a wait early).
const FIRST_WAIT: Duration = Duration::from_millis(2);
const MAX_WAIT: Duration = Duration::from_millis(100);

/// How long a lane that gave its lease back to a waiting host waits before
/// it tries to take it again (the waiter hears the release at once).
const YIELD_PAUSE: Duration = Duration::from_millis(20);

/// One lane's hold on its handler's lease.
pub(super) struct LaneLease {
    leases: Arc<dyn Leases>,
    handler: String,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    /// Wakes the renewer when the lane closes.
    closed: Condvar,
}

#[derive(Default)]
struct State {
    held: Option<Held>,
    /// When the lane last gave the lease back to a waiting host.
    yielded: Option<Instant>,
    closed: bool,
}

#[derive(Clone, Copy)]
struct Held {
    token: u64,
    granted: Instant,
    /// When the store last confirmed it (granted or renewed).
    confirmed: Instant,
    /// Another host waits for it (as of the last renewal).
    wanted: bool,
}

impl LaneLease {
    pub fn new(leases: Arc<dyn Leases>, handler: &str, metrics: Arc<Metrics>) -> LaneLease {
        LaneLease { leases, handler: handler.to_string(), metrics, state: Mutex::default(), closed: Condvar::new() }
    }

    /// Whether the lane holds the lease (as far as it knows).
    pub fn is_held(&self) -> bool {
        self.state.locked().held.is_some()
    }

    /// Whether the lane should give the lease back before its next
    /// invocation: it has held it for a lease length and another host
    /// waits for it.
    pub fn should_yield(&self) -> bool {
        self.state.locked().held.is_some_and(|h| h.wanted && h.granted.elapsed() >= self.leases.ttl())
    }

    /// Gives the lease back to a waiting host (the caller has seen every
    /// write of the lane resolved); [`LaneLease::hold`] then steps back for
    /// a moment before it tries to take it again.
    pub fn yield_to_waiter(&self) {
        self.release();
        self.state.locked().yielded = Some(Instant::now());
    }

    /// Waits until the lane holds the lease, and returns its token. A lease
    /// not confirmed for half its length is renewed first, so that an
    /// invocation never starts on a lease about to expire.
    pub fn hold(&self) -> u64 {
        let ttl = self.leases.ttl();
        let started = Instant::now();
        let mut wait = FIRST_WAIT;
        let mut waited = false;
        if let Some(pause) = self.state.locked().yielded.take().map(|at| YIELD_PAUSE.saturating_sub(at.elapsed())) {
            std::thread::sleep(pause);
        }
        loop {
            let held = self.state.locked().held;
            if let Some(h) = held {
                if h.confirmed.elapsed() < ttl / 2 {
                    return h.token;
                }
                match self.leases.renew(&self.handler, h.token) {
                    Ok(Renewal::Kept { wanted }) => {
                        self.confirm(h.token, wanted);
                        return h.token;
                    }
                    Ok(Renewal::Lost) => self.lost(h.token),
                    Err(e) => {
                        tracing::warn!(handler = %self.handler, error = %format!("{e:#}"), "cannot renew the handler lease; waiting");
                        std::thread::sleep(MAX_WAIT);
                    }
                }
                continue;
            }
            match self.leases.acquire(&self.handler) {
                Ok(Some(token)) => {
                    let now = Instant::now();
                    self.state.locked().held = Some(Held { token, granted: now, confirmed: now, wanted: false });
                    let waited_for = if waited { started.elapsed() } else { Duration::ZERO };
                    self.metrics.lease_granted(&self.handler, waited_for);
                    tracing::debug!(handler = %self.handler, token, waited_ms = crate::text::millis(waited_for), "took the handler lease");
                    return token;
                }
                Ok(None) => {
                    // Another host has it: wait for its release (a hint)
                    // or the backoff, whichever comes first.
                    waited = true;
                    self.leases.wait_release(wait);
                    wait = (wait * 2).min(MAX_WAIT);
                }
                Err(e) => {
                    waited = true;
                    tracing::warn!(handler = %self.handler, error = %format!("{e:#}"), "cannot take the handler lease; retrying");
                    std::thread::sleep(MAX_WAIT);
                }
            }
        }
    }

    /// Gives the lease back (the caller has seen every write of the lane
    /// resolved). A failure is logged: the lease then expires by itself.
    pub fn release(&self) {
        let Some(h) = self.state.locked().held.take() else { return };
        match self.leases.release(&self.handler, h.token) {
            Ok(true) => tracing::debug!(handler = %self.handler, token = h.token, "gave the handler lease back"),
            Ok(false) => {
                tracing::debug!(handler = %self.handler, token = h.token, "the handler lease had expired when given back")
            }
            Err(e) => {
                tracing::warn!(handler = %self.handler, error = %format!("{e:#}"), "failed to give the handler lease back; it expires by itself")
            }
        }
    }

    /// Ends [`LaneLease::renew_loop`] (the lane is done).
    pub fn close(&self) {
        self.state.locked().closed = true;
        self.closed.notify_all();
    }

    /// Renews the lease every third of its length while held, until
    /// [`LaneLease::close`].
    pub fn renew_loop(&self) {
        let every = self.leases.ttl() / 3;
        loop {
            let held = {
                let state = self.state.locked();
                let (state, _) = crate::lock::recover(self.closed.wait_timeout_while(state, every, |s| !s.closed));
                if state.closed {
                    return;
                }
                state.held
            };
            let Some(h) = held else { continue };
            if h.confirmed.elapsed() < every {
                continue;
            }
            match self.leases.renew(&self.handler, h.token) {
                Ok(Renewal::Kept { wanted }) => self.confirm(h.token, wanted),
                Ok(Renewal::Lost) => self.lost(h.token),
                // Kept as held: `hold` renews it before the next invocation
                // once it is not confirmed for half its length.
                Err(e) => {
                    tracing::warn!(handler = %self.handler, error = %format!("{e:#}"), "failed to renew the handler lease")
                }
            }
        }
    }

    /// The store confirmed `token` (if the lane still holds it), and
    /// whether another host waits for it.
    fn confirm(&self, token: u64, wanted: bool) {
        if let Some(h) = self.state.locked().held.as_mut().filter(|h| h.token == token) {
            h.confirmed = Instant::now();
            h.wanted = wanted;
        }
    }

    /// The store no longer holds `token`: forget it (if still held).
    fn lost(&self, token: u64) {
        let mut state = self.state.locked();
        if state.held.is_some_and(|h| h.token == token) {
            state.held = None;
            drop(state);
            self.metrics.lease_lost(&self.handler);
            tracing::warn!(handler = %self.handler, token, "lost the handler lease (it expired or another host took it); writes made under it are refused and run again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Result;

    /// Leases in memory: (holder's token, tokens so far, wanted).
    #[derive(Default)]
    struct Memory {
        state: Mutex<(Option<u64>, u64, bool)>,
    }

    impl Leases for Memory {
        fn ttl(&self) -> Duration {
            Duration::from_millis(60)
        }
        fn acquire(&self, _: &str) -> Result<Option<u64>> {
            let mut s = self.state.locked();
            if s.0.is_some() {
                s.2 = true;
                return Ok(None);
            }
            s.1 += 1;
            s.0 = Some(s.1);
            s.2 = false;
            Ok(Some(s.1))
        }
        fn renew(&self, _: &str, token: u64) -> Result<Renewal> {
            let s = self.state.locked();
            Ok(if s.0 == Some(token) { Renewal::Kept { wanted: s.2 } } else { Renewal::Lost })
        }
        fn release(&self, _: &str, token: u64) -> Result<bool> {
            let mut s = self.state.locked();
            let mine = s.0 == Some(token);
            if mine {
                s.0 = None;
            }
            Ok(mine)
        }
    }

    fn lane(leases: &Arc<Memory>) -> LaneLease {
        LaneLease::new(leases.clone(), "h", Arc::new(Metrics::new()))
    }

    #[test]
    fn a_lane_waits_while_another_holds_the_lease_and_takes_it_once_given_back() {
        let leases = Arc::new(Memory::default());
        let (a, b) = (lane(&leases), lane(&leases));
        let first = a.hold();
        assert_eq!(a.hold(), first, "a held lease is not taken again");
        std::thread::scope(|s| {
            let waiter = s.spawn(|| b.hold());
            std::thread::sleep(Duration::from_millis(30));
            assert!(!waiter.is_finished(), "b took a lease a holds");
            a.release();
            assert!(waiter.join().unwrap() > first, "tokens rise");
        });
        assert!(b.is_held() && !a.is_held());
    }

    #[test]
    fn a_lost_lease_is_taken_again_under_a_new_token() {
        let leases = Arc::new(Memory::default());
        let a = lane(&leases);
        let first = a.hold();
        // Expired and taken by another host, which gave it back since.
        leases.state.locked().0 = Some(99);
        std::thread::sleep(Duration::from_millis(40));
        leases.state.locked().0 = None;
        // Not confirmed for half the lease: renewed first, found lost.
        let second = a.hold();
        assert!(second > first && second != 99, "{first} then {second}");
    }

    #[test]
    fn a_holder_yields_only_after_a_lease_length_and_only_when_wanted() {
        let leases = Arc::new(Memory::default());
        let (a, b) = (lane(&leases), lane(&leases));
        a.hold();
        assert!(!a.should_yield(), "nobody waits");
        std::thread::sleep(Duration::from_millis(70));
        a.hold();
        assert!(!a.should_yield(), "nobody waits after a lease length either");
        assert!(leases.acquire("h").unwrap().is_none());
        // The next renewal hears that another host waits.
        std::thread::sleep(Duration::from_millis(35));
        a.hold();
        assert!(a.should_yield());
        a.yield_to_waiter();
        assert!(!a.is_held());
        let token = b.hold();
        assert!(b.is_held() && !b.should_yield(), "just granted (token {token})");
    }
}
