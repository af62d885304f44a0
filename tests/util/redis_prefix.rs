//! A throwaway key prefix on the test Redis, for the Redis backend's tests
//! and benchmarks. Several people's tests share one server
//! (127.0.0.1:6379, or `CORTEX_TEST_REDIS`), so each works under a prefix
//! of its own and deletes its keys when done (`SCAN MATCH prefix:*` and
//! `DEL`; never `FLUSHDB`). No answering server is a failure that says how
//! to start one, never a silent skip.

use std::sync::Arc;

use anyhow::{Context, Result};
use cortex::store::redis::{Budget, Redis};

/// The environment variable naming the test Redis, instead of the local one.
pub const REDIS_URL_ENV: &str = "CORTEX_TEST_REDIS";

/// The test Redis: `CORTEX_TEST_REDIS` or `redis://127.0.0.1:6379/`.
pub fn redis_url() -> String {
    std::env::var(REDIS_URL_ENV).ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "redis://127.0.0.1:6379/".into())
}

/// A unique prefix on the test Redis; its keys are deleted on drop.
pub struct RedisPrefix {
    /// `cortex-test-{name}-{pid}-{random}`, without the `:`.
    pub prefix: String,
    pub url: String,
    pub server: Arc<Redis>,
}

impl RedisPrefix {
    /// A fresh prefix for `name` (letters, digits, `-`, `_`).
    ///
    /// # Errors
    /// When no Redis answers, saying how to start one.
    pub fn new(name: &str) -> Result<RedisPrefix> {
        let url = redis_url();
        let prefix = format!("cortex-test-{name}-{}-{:08x}", std::process::id(), fastrand::u32(..));
        let server = Redis::open(&url, &prefix).with_context(|| {
            format!(
                "the Redis backend's tests need a Redis at {url}: run `make redis` (or `redis-server --daemonize yes --save '' --appendonly no`), or set {REDIS_URL_ENV}"
            )
        })?;
        Ok(RedisPrefix { prefix, url, server: Arc::new(server) })
    }

    /// Every key under the prefix, sorted.
    ///
    /// # Errors
    /// When the server cannot be scanned.
    pub fn keys(&self) -> Result<Vec<String>> {
        let pattern = format!("{}:*", self.prefix);
        let mut keys: Vec<String> = self.server.run("scan test keys", Budget::Once, |c| {
            let iter = redis::cmd("SCAN").cursor_arg(0).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).clone();
            iter.iter::<String>(c)?.collect()
        })?;
        keys.sort();
        Ok(keys)
    }

    /// Every archive record under the prefix, read from Redis directly
    /// (not through Cortex), oldest day first.
    ///
    /// # Errors
    /// When Redis does not answer or a line is not JSON.
    pub fn archive(&self) -> Result<Vec<serde_json::Value>> {
        let days: Vec<String> = self.server.run("list archive days", Budget::Once, |c| {
            ::redis::cmd("ZRANGE").arg(self.server.key("archive-days")).arg(0).arg(-1).query(c)
        })?;
        let mut out = Vec::new();
        for day in days {
            let lines: Vec<String> = self.server.run("read an archive day", Budget::Once, |c| {
                ::redis::cmd("LRANGE").arg(self.server.key(&format!("archive:{day}"))).arg(0).arg(-1).query(c)
            })?;
            for line in lines {
                out.push(serde_json::from_str(&line).with_context(|| format!("archive line {line}"))?);
            }
        }
        Ok(out)
    }

    fn delete_all(&self) -> Result<usize> {
        let keys = self.keys()?;
        for chunk in keys.chunks(500) {
            self.server.run("delete test keys", Budget::Once, |c| redis::cmd("DEL").arg(chunk).query::<usize>(c))?;
        }
        Ok(keys.len())
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        if let Err(e) = self.delete_all() {
            eprintln!("warning: failed to delete the test keys under {}: {e:#}", self.prefix);
        }
    }
}
