//! The archive on Redis: one list of JSONL lines per day
//! (`{p}:archive:{day}`, the day named by the event's date as the
//! filesystem names its day files, `undated` when it has none), appended by
//! `settle.lua`; the sorted set `{p}:archive-days` (day → last append, ms)
//! lists the days and is the retention clock; `{p}:archive-bytes` counts
//! each day's bytes; `{p}:archive-ids:{day}` holds its event ids for the
//! idempotency check.
//!
//! Readers get an [`ArchiveRead`] ([`RedisArchive`]): a day is a
//! [`Segment`] with only a plain part (named by its key), read in chunks of
//! [`CHUNK`] lines with `LRANGE` so a large day is never held whole.
//!
//! Retention ([`RedisStore::prune_archive`]): days whose last append is
//! older than `[archive] retention_days` are removed whole with their ids
//! and counts, atomically (`expire.lua`), from `recover` once an hour and
//! after a `system.cleanup_needed` event is settled, as on the filesystem.
//! Compression and export before removal are the filesystem's only.

use std::io::{BufRead, Read};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;

use super::Redis;
use super::queue::{RETRY, RedisStore, SCRIPTS};
use crate::archive::{Lines, Part, Segment};
use crate::lock::Recover;
use crate::queue::now_ms;
use crate::store::ArchiveRead;

/// Lines read per `LRANGE`.
pub const CHUNK: isize = 1000;

impl RedisStore {
    /// Removes the archive days whose last append is older than the
    /// retention; returns them (none when the retention is off).
    ///
    /// # Errors
    /// When the server cannot be reached.
    pub fn prune_archive(&self) -> Result<Vec<String>> {
        *self.last_prune.locked() = Some(std::time::Instant::now());
        let Some(retention) = self.retention else { return Ok(Vec::new()) };
        let cutoff = now_ms().saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
        let p = self.server.prefix().to_string();
        let days: Vec<String> =
            self.server.run("apply the archive retention", RETRY, |c| SCRIPTS.expire.arg(&p).arg(cutoff).invoke(c))?;
        if !days.is_empty() {
            tracing::info!(days = ?days, "removed archive days past their retention");
        }
        Ok(days)
    }
}

/// The archive days of one Redis store.
pub struct RedisArchive {
    pub(super) server: Arc<Redis>,
}

impl RedisArchive {
    fn day_key(&self, seg: &Segment) -> String {
        self.server.key(&format!("archive:{}", seg.stem))
    }
}

impl ArchiveRead for RedisArchive {
    fn segments(&self) -> Result<Vec<Segment>> {
        let (days, bytes): (Vec<(String, f64)>, std::collections::HashMap<String, u64>) =
            self.server.run("list the archive days", RETRY, |c| {
                redis::pipe()
                    .cmd("ZRANGE")
                    .arg(self.server.key("archive-days"))
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .cmd("HGETALL")
                    .arg(self.server.key("archive-bytes"))
                    .query(c)
            })?;
        let mut out: Vec<Segment> = days
            .into_iter()
            .map(|(day, last)| {
                let size = bytes.get(&day).copied().unwrap_or(0);
                let modified = UNIX_EPOCH + Duration::from_millis(last.max(0.0) as u64);
                let name = self.server.key(&format!("archive:{day}"));
                Segment {
                    stem: day,
                    plain: Some(Part { name, bytes: size, modified }),
                    packed: None,
                    content_bytes: size,
                }
            })
            .collect();
        out.sort_by(|a, b| a.stem.cmp(&b.stem));
        Ok(out)
    }

    fn lines(&self, seg: &Segment) -> Result<Lines> {
        Ok(Box::new(DayLines {
            server: self.server.clone(),
            key: self.day_key(seg),
            next: 0,
            buf: Vec::new(),
            at: 0,
            done: false,
        }))
    }

    fn describe(&self, seg: &Segment) -> String {
        format!("{} list {}", self.server.describe(), self.day_key(seg))
    }
}

/// The lines of one day, fetched [`CHUNK`] at a time, each ending in `\n`.
/// Lines appended while it reads are read too; a day removed meanwhile
/// ends early.
struct DayLines {
    server: Arc<Redis>,
    key: String,
    next: isize,
    buf: Vec<u8>,
    at: usize,
    done: bool,
}

impl DayLines {
    fn more(&mut self) -> std::io::Result<()> {
        let (from, to) = (self.next, self.next + CHUNK - 1);
        let lines: Vec<Vec<u8>> = self
            .server
            .run("read an archive day", RETRY, |c| redis::cmd("LRANGE").arg(&self.key).arg(from).arg(to).query(c))
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        self.done = (lines.len() as isize) < CHUNK;
        self.next += lines.len() as isize;
        self.buf.clear();
        self.at = 0;
        for line in lines {
            self.buf.extend_from_slice(&line);
            self.buf.push(b'\n');
        }
        Ok(())
    }
}

impl Read for DayLines {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = {
            let have = self.fill_buf()?;
            let n = have.len().min(out.len());
            out[..n].copy_from_slice(&have[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for DayLines {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.at >= self.buf.len() && !self.done {
            self.more()?;
        }
        Ok(&self.buf[self.at..])
    }

    fn consume(&mut self, amt: usize) {
        self.at = (self.at + amt).min(self.buf.len());
    }
}
