//! Handler leases on Redis ([`RedisLeases`], the [`Leases`] of the Redis
//! backend; what a lease is for is in [`crate::store::lease`]).
//!
//! Keys, under the deployment's prefix `{p}`:
//!
//! - `{p}:lease:{handler}`: the lease, its value the holder's fencing token,
//!   set with `SET NX PX` so it expires on its own when its holder dies;
//! - `{p}:lease-token:{handler}`: the handler's token counter (`INCR`), so
//!   every grant has a token higher than every earlier one;
//! - `{p}:lease-wanted:{handler}`: set (for one lease length) by an acquire
//!   that found the lease held, cleared by the next grant: a renewal tells
//!   the holder that another host waits;
//! - `{p}:lease-released`: a channel on which a release names its handler.
//!
//! Acquire, renew and release are one script each (`scripts/lease_*.lua`):
//! renew and release compare the stored token with the caller's first, so
//! they never touch a lease another host holds now. The state commit
//! (`kv/commit.lua`) reads `{p}:lease:{handler}` to fence writes.
//!
//! Waiting hosts hear of a release through one subscriber thread per
//! process, started on the first wait and ended once the leases are
//! dropped; a hint only (the waiter polls with bounded backoff anyway).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

use super::{Budget, Redis};
use crate::lock::Recover;
use crate::store::lease::{Leases, Renewal};

/// How long a lease call keeps retrying while Redis is unreachable: the
/// lane retries on its own, and a renewal must not outlive the lease.
const BUDGET: Budget = Budget::For(Duration::from_secs(1));

/// The default lease length, `[backend] lease_ms`.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);

/// How often the release subscriber looks whether it is still needed.
const LOOK: Duration = Duration::from_millis(500);

/// The key of `handler`'s lease under `server`'s prefix (the state commit
/// fences writes with it).
pub fn lease_key(server: &Redis, handler: &str) -> String {
    server.key(&format!("lease:{handler}"))
}

/// Handler leases in one deployment's Redis.
pub struct RedisLeases {
    server: Arc<Redis>,
    ttl: Duration,
    acquire: ::redis::Script,
    renew: ::redis::Script,
    release: ::redis::Script,
    /// Releases heard (a generation), and the condvar waiters sleep on.
    heard: Arc<(Mutex<u64>, Condvar)>,
    subscribed: AtomicBool,
}

impl std::fmt::Debug for RedisLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLeases").field("server", &self.server).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl RedisLeases {
    /// Leases of `ttl` on `server`.
    pub fn new(server: Arc<Redis>, ttl: Duration) -> RedisLeases {
        RedisLeases {
            server,
            ttl,
            acquire: ::redis::Script::new(include_str!("scripts/lease_acquire.lua")),
            renew: ::redis::Script::new(include_str!("scripts/lease_renew.lua")),
            release: ::redis::Script::new(include_str!("scripts/lease_release.lua")),
            heard: Arc::new((Mutex::new(0), Condvar::new())),
            subscribed: AtomicBool::new(false),
        }
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX).max(1)
    }

    fn wanted(&self, handler: &str) -> String {
        self.server.key(&format!("lease-wanted:{handler}"))
    }

    fn channel(&self) -> String {
        self.server.key("lease-released")
    }

    /// Starts the release subscriber unless it runs: a detached thread that
    /// ends once only it still holds `heard` (the leases were dropped).
    fn subscribe(&self) {
        if self.subscribed.swap(true, Ordering::SeqCst) {
            return;
        }
        let (server, heard, channel) = (self.server.clone(), Arc::downgrade(&self.heard), self.channel());
        let spawned = std::thread::Builder::new().name("lease-released".into()).spawn(move || {
            let mut backoff = Duration::from_millis(50);
            while heard.strong_count() > 0 {
                let result = server.dedicated(LOOK).and_then(|mut conn| {
                    let mut pubsub = conn.as_pubsub();
                    pubsub.subscribe(&channel)?;
                    backoff = Duration::from_millis(50);
                    loop {
                        let Some(heard) = heard.upgrade() else { return Ok(()) };
                        match pubsub.get_message() {
                            Ok(_) => {
                                *heard.0.locked() += 1;
                                heard.1.notify_all();
                            }
                            Err(e) if e.is_timeout() => {}
                            Err(e) => return Err(e),
                        }
                    }
                });
                if let Err(e) = result {
                    tracing::debug!(error = %e, "the lease-release subscriber lost Redis; retrying in {backoff:?}");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "failed to start the lease-release subscriber; waiting hosts poll only");
        }
    }
}

impl Leases for RedisLeases {
    fn ttl(&self) -> Duration {
        self.ttl
    }

    fn acquire(&self, handler: &str) -> Result<Option<u64>> {
        let (lease, counter) = (lease_key(&self.server, handler), self.server.key(&format!("lease-token:{handler}")));
        let wanted = self.wanted(handler);
        let token: u64 = self
            .server
            .run("acquire a handler lease", BUDGET, |c| {
                self.acquire.key(&lease).key(&counter).key(&wanted).arg(self.ttl_ms()).invoke(c)
            })
            .with_context(|| format!("failed to acquire the lease of handler {handler}"))?;
        Ok((token > 0).then_some(token))
    }

    fn renew(&self, handler: &str, token: u64) -> Result<Renewal> {
        let (lease, wanted) = (lease_key(&self.server, handler), self.wanted(handler));
        let renewed: i64 = self
            .server
            .run("renew a handler lease", BUDGET, |c| {
                self.renew.key(&lease).key(&wanted).arg(token).arg(self.ttl_ms()).invoke(c)
            })
            .with_context(|| format!("failed to renew the lease of handler {handler} (token {token})"))?;
        match renewed {
            0 => Ok(Renewal::Lost),
            1 => Ok(Renewal::Kept { wanted: false }),
            2 => Ok(Renewal::Kept { wanted: true }),
            other => anyhow::bail!("the lease renewal script answered {other}, not 0, 1 or 2"),
        }
    }

    fn release(&self, handler: &str, token: u64) -> Result<bool> {
        let lease = lease_key(&self.server, handler);
        let released: i64 = self
            .server
            .run("release a handler lease", BUDGET, |c| {
                self.release.key(&lease).arg(token).arg(self.channel()).arg(handler).invoke(c)
            })
            .with_context(|| format!("failed to release the lease of handler {handler} (token {token})"))?;
        Ok(released == 1)
    }

    fn wait_release(&self, timeout: Duration) {
        self.subscribe();
        let (lock, cv) = &*self.heard;
        let seen = *lock.locked();
        let _ = cv.wait_timeout_while(lock.locked(), timeout, |heard| *heard == seen);
    }
}
