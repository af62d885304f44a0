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
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::lock::Recover;

use super::{Applied, Backend, Changes, Mark, Op, Versioned};

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

/// Connections for reads: the lanes of a dispatcher read at once.
const READERS: usize = 4;

/// State in one SQLite file. Reads take one of a few connections, writes
/// another (a connection is not `Sync`).
pub struct SqliteBackend {
    read: Vec<Mutex<Connection>>,
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
        let read = (0..READERS).map(|_| connect(path).map(Mutex::new)).collect::<Result<Vec<_>>>()?;
        Ok(SqliteBackend { read, write: Mutex::new(write) })
    }

    /// A free read connection, or (all busy) one picked by the thread.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        for conn in &self.read {
            if let Ok(guard) = conn.try_lock() {
                return guard;
            }
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&std::thread::current().id(), &mut h);
        self.read[std::hash::Hasher::finish(&h) as usize % self.read.len()].locked()
    }
}

/// The range read of [`Backend::keys`]: `?1` bucket, `?2` the lower bound
/// (excluded when `strict`), `?3` the limit, `?4` the upper bound (excluded)
/// when `bounded`.
fn keys_sql(strict: bool, bounded: bool) -> String {
    format!(
        "SELECT key FROM kv WHERE bucket = ?1 AND key {} ?2{} ORDER BY key LIMIT ?3",
        if strict { ">" } else { ">=" },
        if bounded { " AND key < ?4" } else { "" }
    )
}

/// The least string above every string that starts with `prefix` (SQLite
/// compares text bytewise, and UTF-8 keeps code point order), or `None`
/// when there is none (an empty prefix, or one of only `char::MAX`).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(c as u32 + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Backend for SqliteBackend {
    fn get(&self, bucket: &str, key: &str) -> Result<Option<Versioned>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT value, version FROM kv WHERE bucket = ?1 AND key = ?2")?;
        let row = stmt
            .query_row(params![bucket, key], |r| {
                Ok(Versioned { value: r.get(0)?, version: r.get::<_, i64>(1)? as u64 })
            })
            .optional()
            .with_context(|| format!("failed to read key {key:?} of bucket {bucket:?}"))?;
        Ok(row)
    }

    fn get_with_marks(&self, bucket: &str, key: &str, marks: &[Mark]) -> Result<(Option<Versioned>, Vec<bool>)> {
        let mut conn = self.reader();
        // One read transaction: the value and the marks from one snapshot.
        let tx = conn.transaction().context("failed to begin a state read")?;
        let found = {
            let mut stmt = tx.prepare_cached("SELECT value, version FROM kv WHERE bucket = ?1 AND key = ?2")?;
            stmt.query_row(params![bucket, key], |r| {
                Ok(Versioned { value: r.get(0)?, version: r.get::<_, i64>(1)? as u64 })
            })
            .optional()
            .with_context(|| format!("failed to read key {key:?} of bucket {bucket:?}"))?
        };
        let applied = {
            let mut seen =
                tx.prepare_cached("SELECT 1 FROM marks WHERE event_id = ?1 AND handler = ?2 AND generation = ?3")?;
            marks
                .iter()
                .map(|m| seen.exists(params![m.event_id, m.handler, m.generation]))
                .collect::<rusqlite::Result<Vec<bool>>>()
                .context("failed to read the state marks")?
        };
        tx.finish().context("failed to end a state read")?;
        Ok((found, applied))
    }

    fn applied(&self, mark: &Mark) -> Result<bool> {
        let conn = self.reader();
        let mut seen =
            conn.prepare_cached("SELECT 1 FROM marks WHERE event_id = ?1 AND handler = ?2 AND generation = ?3")?;
        seen.exists(params![mark.event_id, mark.handler, mark.generation]).context("failed to read the state marks")
    }

    fn keys(&self, bucket: &str, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        // One range of the primary key, bounds computed here: an `OR` or a
        // second lower bound in the SQL would make SQLite scan from the
        // start of the prefix (or to the end of the bucket), O(keys).
        let (from, strict) = match after {
            Some(a) if a >= prefix => (a, true),
            _ => (prefix, false),
        };
        let to = prefix_end(prefix);
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&keys_sql(strict, to.is_some()))?;
        let key = |r: &rusqlite::Row<'_>| r.get::<_, String>(0);
        let rows = match &to {
            Some(to) => stmt.query_map(params![bucket, from, limit as i64, to], key)?,
            None => stmt.query_map(params![bucket, from, limit as i64], key)?,
        };
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .with_context(|| format!("failed to list the keys of bucket {bucket:?}"))
    }

    fn buckets(&self) -> Result<Vec<(String, u64)>> {
        let conn = self.reader();
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
            // Marks applied by this transaction: most buffers a buffer was
            // built on commit with it.
            let mut applied_here: std::collections::HashSet<&super::Mark> = std::collections::HashSet::new();
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
                // Built on a pending buffer of its lane that was not applied
                // (refused, or not here yet): run it again.
                for m in &changes.after {
                    if !applied_here.contains(m) && !seen.exists(params![m.event_id, m.handler, m.generation])? {
                        stale = true;
                        break;
                    }
                }
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
                applied_here.insert(m);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Mark;

    #[test]
    fn a_prefix_ends_where_its_keys_end() {
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("day/"), Some("day0".to_string()));
        assert_eq!(prefix_end("a\u{D7FF}"), Some("a\u{E000}".to_string()));
        assert_eq!(prefix_end("a\u{10FFFF}"), Some("b".to_string()));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
    }

    #[test]
    fn keys_page_by_prefix_and_cursor_as_one_range_of_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteBackend::open(&dir.path().join("kv.db")).unwrap();
        let ops = ["a", "day/1", "day/2", "day/3", "day0", "e"]
            .iter()
            .map(|k| ("b".to_string(), k.to_string(), Op::Set(vec![1])))
            .collect();
        let mark = Mark { event_id: "e".into(), handler: "h".into(), generation: 0 };
        db.commit(&[Changes { mark, ops, reads: vec![], after: vec![], fence: None }]).unwrap();
        assert_eq!(db.keys("b", "day/", None, 2).unwrap(), ["day/1", "day/2"]);
        assert_eq!(db.keys("b", "day/", Some("day/2"), 2).unwrap(), ["day/3"]);
        assert_eq!(db.keys("b", "day/", Some("a"), 10).unwrap(), ["day/1", "day/2", "day/3"]);
        assert_eq!(db.keys("b", "", Some("day/3"), 10).unwrap(), ["day0", "e"]);
        assert!(db.keys("b", "day/", Some("day/3"), 10).unwrap().is_empty());
        // SQLite seeks the range: a page costs O(page), not O(keys).
        let conn = db.reader();
        let plan = |sql: &str, bounded: bool| -> String {
            let sql = format!("EXPLAIN QUERY PLAN {sql}");
            let row = |r: &rusqlite::Row<'_>| r.get::<_, String>(3);
            if bounded {
                conn.query_row(&sql, params!["b", "a", 1, "z"], row).unwrap()
            } else {
                conn.query_row(&sql, params!["b", "a", 1], row).unwrap()
            }
        };
        let bounded = plan(&keys_sql(true, true), true);
        assert!(bounded.contains("SEARCH kv USING PRIMARY KEY (bucket=? AND key>? AND key<?)"), "{bounded}");
        let open = plan(&keys_sql(false, false), false);
        assert!(open.contains("SEARCH kv USING PRIMARY KEY (bucket=? AND key>?)"), "{open}");
    }
}
