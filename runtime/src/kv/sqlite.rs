//! The embedded state backend: one SQLite database in WAL mode,
//! `<root>/kv/state.db`.
//!
//! Why SQLite rather than a pure-Rust store such as redb: several Cortex
//! processes share one root (two `cortex serve`, a `cortex dispatch` from
//! cron, `cortex state get` from a shell), and redb holds an exclusive lock
//! on its file for as long as a process has it open. SQLite's WAL mode lets
//! any number of processes read while one writes, takes the write lock per
//! transaction with a busy timeout, and survives `kill -9` and power loss
//! with `synchronous = FULL`.
//!
//! Tables: `kv(bucket, key, value, version)` and `marks(event_id, handler,
//! generation, at_ms)`, both clustered on their primary key (`WITHOUT
//! ROWID`), so a read or write costs one B-tree descent however many keys a
//! bucket holds.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::lock::Recover;

use super::{Applied, Backend, Changes, Op, Versioned};

/// How long a writer waits for another process's transaction.
const BUSY: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS marks (
    event_id TEXT NOT NULL,
    handler TEXT NOT NULL,
    generation INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (event_id, handler, generation)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS marks_at ON marks (at_ms);
";

/// State in one SQLite file. Reads share a connection, writes take another
/// (a connection is not `Sync`).
pub struct SqliteBackend {
    read: Mutex<Connection>,
    write: Mutex<Connection>,
}

fn connect(path: &Path) -> Result<Connection> {
    // NOFOLLOW: `kv/` is the runtime's own directory, but a handler granted
    // it with `unsafe_allow` could plant a link there; the database is never
    // opened (or created) through one.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("failed to open the state database {}", path.display()))?;
    conn.busy_timeout(BUSY)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

impl SqliteBackend {
    /// Opens (creating if needed) the database at `path`.
    ///
    /// # Errors
    /// The file cannot be opened or is not a SQLite database.
    pub fn open(path: &Path) -> Result<SqliteBackend> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
        }
        let write = connect(path)?;
        write
            .execute_batch(SCHEMA)
            .with_context(|| format!("failed to set up the state database {}", path.display()))?;
        let read = connect(path)?;
        Ok(SqliteBackend { read: Mutex::new(read), write: Mutex::new(write) })
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Backend for SqliteBackend {
    fn get(&self, bucket: &str, key: &str) -> Result<Option<Versioned>> {
        let conn = self.read.locked();
        let mut stmt = conn.prepare_cached("SELECT value, version FROM kv WHERE bucket = ?1 AND key = ?2")?;
        let row = stmt
            .query_row(params![bucket, key], |r| {
                Ok(Versioned { value: r.get(0)?, version: r.get::<_, i64>(1)? as u64 })
            })
            .optional()
            .with_context(|| format!("failed to read key {key:?} of bucket {bucket:?}"))?;
        Ok(row)
    }

    fn keys(&self, bucket: &str, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let conn = self.read.locked();
        let mut stmt = conn.prepare_cached(
            "SELECT key FROM kv WHERE bucket = ?1 AND key >= ?2 AND (?3 IS NULL OR key > ?3) \
             AND substr(key, 1, length(?2)) = ?2 ORDER BY key LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![bucket, prefix, after, limit as i64], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .with_context(|| format!("failed to list the keys of bucket {bucket:?}"))
    }

    fn buckets(&self) -> Result<Vec<(String, u64)>> {
        let conn = self.read.locked();
        let mut stmt = conn.prepare_cached("SELECT bucket, count(*) FROM kv GROUP BY bucket ORDER BY bucket")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().context("failed to list the state buckets")
    }

    fn commit(&self, batch: &[Changes]) -> Result<Vec<Applied>> {
        if batch.iter().all(|c| c.ops.is_empty()) {
            return Ok(vec![Applied::Applied; batch.len()]);
        }
        let mut conn = self.write.locked();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("failed to begin a state transaction")?;
        let at = now_ms() as i64;
        let mut out = Vec::with_capacity(batch.len());
        {
            let mut mark = tx.prepare_cached(
                "INSERT OR IGNORE INTO marks (event_id, handler, generation, at_ms) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut version = tx.prepare_cached("SELECT version FROM kv WHERE bucket = ?1 AND key = ?2")?;
            let mut set = tx.prepare_cached(
                "INSERT INTO kv (bucket, key, value, version) VALUES (?1, ?2, ?3, 1) \
                 ON CONFLICT (bucket, key) DO UPDATE SET value = excluded.value, version = kv.version + 1",
            )?;
            let mut delete = tx.prepare_cached("DELETE FROM kv WHERE bucket = ?1 AND key = ?2")?;
            let mut value = tx.prepare_cached("SELECT value FROM kv WHERE bucket = ?1 AND key = ?2")?;
            let mut seen =
                tx.prepare_cached("SELECT 1 FROM marks WHERE event_id = ?1 AND handler = ?2 AND generation = ?3")?;
            for changes in batch {
                if changes.ops.is_empty() {
                    out.push(Applied::Applied);
                    continue;
                }
                // A buffer already applied is not checked for conflicts:
                // running its event again would only find the mark again.
                let m = &changes.mark;
                if seen.exists(params![m.event_id, m.handler, m.generation])? {
                    out.push(Applied::Already);
                    continue;
                }
                // Check everything before touching anything, so a refused
                // buffer leaves no partial write behind.
                let mut stale = false;
                for read in &changes.reads {
                    let now: Option<i64> =
                        version.query_row(params![read.bucket, read.key], |r| r.get(0)).optional()?;
                    if now.unwrap_or(0) as u64 != read.version {
                        stale = true;
                        break;
                    }
                }
                let mut sums = Vec::new();
                for (bucket, key, op) in &changes.ops {
                    if let (false, Op::Add(delta)) = (stale, op) {
                        let old: Option<Vec<u8>> = value.query_row(params![bucket, key], |r| r.get(0)).optional()?;
                        // Another invocation set the key to something that
                        // is not a number since this one read it: run it
                        // again, and its own increment will say so.
                        match super::add(old.as_deref(), *delta) {
                            Ok(n) => sums.push(n),
                            Err(_) => stale = true,
                        }
                    }
                }
                if stale {
                    out.push(Applied::Conflict);
                    continue;
                }
                if mark.execute(params![m.event_id, m.handler, m.generation, at])? == 0 {
                    out.push(Applied::Already);
                    continue;
                }
                let mut sums = sums.into_iter();
                for (bucket, key, op) in &changes.ops {
                    match op {
                        Op::Set(v) => {
                            set.execute(params![bucket, key, v])?;
                        }
                        Op::Delete => {
                            delete.execute(params![bucket, key])?;
                        }
                        Op::Add(_) => {
                            let n = sums.next().context("increment sums out of step")?;
                            set.execute(params![bucket, key, n.to_string().into_bytes()])?;
                        }
                    }
                }
                out.push(Applied::Applied);
            }
        }
        tx.commit().context("failed to commit the state transaction")?;
        Ok(out)
    }

    fn prune_marks(&self, before_ms: u64) -> Result<usize> {
        let conn = self.write.locked();
        let n = conn
            .execute("DELETE FROM marks WHERE at_ms < ?1", params![before_ms as i64])
            .context("failed to prune the state marks")?;
        Ok(n)
    }
}
