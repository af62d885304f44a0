//! The Redis backend of [`super::Store`]: one server (or one database of
//! it) shared by every host of a deployment, with every key under
//! `{prefix}:` so that several roots share one server.
//!
//! This file holds the connection: [`Redis`] keeps a small pool of
//! synchronous connections (the dispatcher's claim loop and its committer
//! each use one at a time; commands run one round trip each, or a pipeline
//! or a Lua script for anything that must be atomic). A call that fails
//! because the server is unreachable is retried with exponential backoff
//! (50 ms up to 2 s) for as long as the caller's budget allows; meanwhile
//! [`Redis::reachable`] says false (`/readyz` and the metrics read it), and
//! nothing is reported done that the server did not confirm. Errors name
//! the server as [`crate::config::shown_redis_url`] shows it, never with a
//! password.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::config::shown_redis_url;
use crate::lock::Recover;

pub mod archive;
mod enqueue;
pub mod hosts;
mod joint;
pub mod kv;
pub mod lease;
pub mod queue;
mod reads;
mod settle;
mod wake;

pub use queue::RedisStore;

/// A command that does not answer within this is treated as a lost connection.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections kept for reuse, at most.
const POOL: usize = 8;

/// How long a call keeps retrying while the server is unreachable.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// Fail at the first connection error (for calls that are not safe to
    /// repeat, or an operator waiting at a terminal).
    Once,
    /// Retry with backoff for up to this long.
    For(Duration),
}

/// A Redis server and the key prefix of one Cortex deployment.
pub struct Redis {
    client: ::redis::Client,
    prefix: String,
    shown: String,
    pool: Mutex<Vec<::redis::Connection>>,
    reachable: AtomicBool,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("url", &self.shown).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Redis {
    /// Parses `url` and checks the server answers `PING`.
    ///
    /// # Errors
    /// When the URL does not parse or the server cannot be reached, naming
    /// it (without a password) and what to check.
    pub fn open(url: &str, prefix: &str) -> Result<Redis> {
        let shown = shown_redis_url(url);
        let client = ::redis::Client::open(url).with_context(|| format!("invalid Redis URL {shown}"))?;
        let r = Redis {
            client,
            prefix: prefix.to_string(),
            shown,
            pool: Mutex::new(Vec::new()),
            reachable: AtomicBool::new(false),
        };
        r.run("PING", Budget::Once, |c| ::redis::cmd("PING").query::<String>(c)).with_context(|| {
            format!("is redis-server running at {}? (set [backend] url or CORTEX_BACKEND)", r.shown)
        })?;
        Ok(r)
    }

    /// The server and prefix, for messages.
    pub fn describe(&self) -> String {
        format!("{} (prefix {})", self.shown, self.prefix)
    }

    /// `{prefix}:{rest}`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether the last call reached the server.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Runs `f` on a pooled connection; on a connection error drops that
    /// connection and, within `budget`, waits and tries again on a new one.
    ///
    /// # Errors
    /// A Redis error reply at once (e.g. a script error); a connection
    /// error once the budget is spent; each names `what` and the server.
    pub fn run<T>(
        &self,
        what: &str,
        budget: Budget,
        mut f: impl FnMut(&mut ::redis::Connection) -> ::redis::RedisResult<T>,
    ) -> Result<T> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            let result = self.connection().and_then(|mut c| {
                let r = f(&mut c);
                if r.as_ref().is_err_and(|e| !lost(e)) || r.is_ok() {
                    self.give_back(c);
                }
                r
            });
            match result {
                Ok(v) => {
                    self.reachable.store(true, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if lost(&e) => {
                    self.reachable.store(false, Ordering::Relaxed);
                    let left = match budget {
                        Budget::Once => Duration::ZERO,
                        Budget::For(d) => d.saturating_sub(started.elapsed()),
                    };
                    if left.is_zero() {
                        return Err(e).with_context(|| format!("{what}: Redis at {} is unreachable", self.shown));
                    }
                    tracing::warn!(server = %self.shown, error = %e, "{what}: Redis unreachable; retrying in {backoff:?}");
                    std::thread::sleep(backoff.min(left));
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e).with_context(|| format!("{what} on Redis at {}", self.shown)),
            }
        }
    }

    /// A connection of its own, outside the pool, for a subscriber (a
    /// subscribed connection can send nothing else); reads time out after
    /// `read_timeout` so its owner can look up.
    ///
    /// # Errors
    /// When the server cannot be reached.
    pub fn dedicated(&self, read_timeout: Duration) -> ::redis::RedisResult<::redis::Connection> {
        let c = self.client.get_connection_with_timeout(IO_TIMEOUT)?;
        c.set_read_timeout(Some(read_timeout))?;
        c.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(c)
    }

    /// Marks the server reachable or not from a call made outside [`Redis::run`].
    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::Relaxed);
    }

    fn connection(&self) -> ::redis::RedisResult<::redis::Connection> {
        if let Some(c) = self.pool.locked().pop() {
            return Ok(c);
        }
        let c = self.client.get_connection_with_timeout(IO_TIMEOUT)?;
        c.set_read_timeout(Some(IO_TIMEOUT))?;
        c.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(c)
    }

    fn give_back(&self, c: ::redis::Connection) {
        let mut pool = self.pool.locked();
        if pool.len() < POOL {
            pool.push(c);
        }
    }
}

/// Whether an error means the connection (or the server) is gone, rather
/// than that the server refused the command.
fn lost(e: &::redis::RedisError) -> bool {
    // `WaitAndRetry`: a server still loading its data after a restart
    // (LOADING), a replica without its master, TRYAGAIN.
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(e.retry_method(), ::redis::RetryMethod::WaitAndRetry)
}
