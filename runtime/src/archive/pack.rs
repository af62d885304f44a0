//! Rewriting old archive days as compressed segments
//! (`YYYY-MM-DD.jsonl.zst`, independent zstd frames of whole lines and a
//! seek index, see [`super::index`]), run where the retention runs.
//!
//! Crash story, for one day: the plain file is locked (`flock`, exclusive,
//! not waiting: a busy day is left for the next run) and read; the segment
//! is written whole to `.<day>.jsonl.zst.tmp` beside it, synced, given the
//! plain file's last-append time, renamed into place and the directory
//! synced; only then is the plain file removed and the directory synced
//! again. A crash before the rename leaves the plain day as it was (and a
//! temp file the next run overwrites); after it, both files, and the
//! segment's [`super::index::Covered`] record tells readers to skip what
//! it holds of the plain file. The next run merges them.
//!
//! Appends race nothing: the dispatcher appends to a day file under a
//! shared `flock` and re-opens it when it finds it unlinked (see
//! `queue/archive.rs`), so no line lands in a plain file after it was read
//! and before it was removed; a back-dated event archived later starts a
//! new plain file, merged into the segment by the next run.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use chrono::NaiveDate;
use serde::Serialize;

use super::index::{self, Covered, Frame, Header, SeekIndex};
use super::{Archive, PACKED, PLAIN, Segment};
use crate::fsio::{self, beneath};

/// Plain bytes per zstd frame: finding one event decompresses this much.
pub const FRAME_BYTES: usize = 256 << 10;
/// The zstd level: fast to write, about 10:1 on archive records.
const LEVEL: i32 = 3;
/// A temp file older than this was left by a crash.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// What [`Archive::pack_before`] compressed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Packed {
    pub days: Vec<String>,
    /// Plain bytes read (plain files and earlier segments, uncompressed).
    pub plain_bytes: u64,
    /// Bytes of the segments written.
    pub packed_bytes: u64,
    /// Days left for the next run (being appended to, or failed: logged).
    pub left: Vec<String>,
}

/// Takes the flock of a day file, or says it is busy.
pub(crate) fn lock(f: &File, exclusive: bool) -> std::io::Result<bool> {
    let op = if exclusive { libc::LOCK_EX | libc::LOCK_NB } else { libc::LOCK_SH };
    // SAFETY: flock on a live descriptor has no memory effects.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock { Ok(false) } else { Err(e) }
}

impl Archive {
    /// Compresses every day whose plain file is named for a date before
    /// `cutoff` (merging it into the day's segment when it has one). A day
    /// that fails is logged and left as it is.
    ///
    /// # Errors
    /// When the archive cannot be listed.
    pub fn pack_before(&self, cutoff: NaiveDate) -> Result<Packed> {
        self.remove_stale_tmp();
        let mut out = Packed::default();
        for seg in self.segments()? {
            let old = NaiveDate::parse_from_str(&seg.stem, "%Y-%m-%d").is_ok_and(|d| d < cutoff);
            if !old || seg.plain.is_none() {
                continue;
            }
            match self.pack(&seg) {
                Ok(Some((plain, packed))) => {
                    out.days.push(seg.stem);
                    out.plain_bytes += plain;
                    out.packed_bytes += packed;
                }
                Ok(None) => out.left.push(seg.stem),
                Err(e) => {
                    tracing::warn!(day = %seg.stem, error = %format!("{e:#}"), "failed to compress an archive day; it stays as it is");
                    out.left.push(seg.stem);
                }
            }
        }
        if !out.days.is_empty() {
            tracing::info!(days = ?out.days, plain_bytes = out.plain_bytes, packed_bytes = out.packed_bytes, "compressed archive days");
        }
        Ok(out)
    }

    /// Compresses one day: its plain file, merged into its segment if it
    /// has one. `None` when the plain file is busy (being appended to or
    /// compressed by another process) or gone; else the plain bytes read
    /// and the segment's size.
    ///
    /// # Errors
    /// When a file cannot be read or written; the plain file is then intact.
    pub fn pack(&self, seg: &Segment) -> Result<Option<(u64, u64)>> {
        let dir = self.handle();
        let plain_name = format!("{}{PLAIN}", seg.stem);
        let packed_name = format!("{}{PACKED}", seg.stem);
        let Some(mut plain) = self.open_file(&plain_name)? else { return Ok(None) };
        if !lock(&plain, true).with_context(|| format!("failed to lock {}", self.show(&plain_name)))? {
            return Ok(None);
        }
        let meta = plain.metadata().with_context(|| format!("failed to stat {}", self.show(&plain_name)))?;
        if meta.nlink() == 0 {
            return Ok(None);
        }
        let mut text = Vec::with_capacity(meta.len() as usize);
        plain.read_to_end(&mut text).with_context(|| format!("failed to read {}", self.show(&plain_name)))?;
        let mut modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let mut content = Vec::new();
        let mut skip = 0;
        if let Some(f) = self.open_file(&packed_name)? {
            let index = self.index_of(&f, &packed_name)?;
            if let Ok(m) = f.metadata().and_then(|m| m.modified()) {
                modified = modified.max(m);
            }
            let frames = (&f).take(index.frames.iter().map(|fr| fr.offset + u64::from(fr.stored)).max().unwrap_or(0));
            zstd::stream::read::Decoder::new(frames)
                .and_then(|mut d| d.read_to_end(&mut content))
                .with_context(|| format!("failed to decompress {}", self.show(&packed_name)))?;
            let c = index.header.covered;
            if c.len > 0 && text.len() as u64 >= c.len && index::fnv1a(&text[..c.len as usize]) == c.hash {
                skip = c.len as usize;
            }
        }
        let read = (content.len() + text.len()) as u64;
        content.extend_from_slice(&text[skip..]);
        if content.last().is_some_and(|&b| b != b'\n') {
            content.push(b'\n');
        }
        let covered = Covered { len: text.len() as u64, hash: index::fnv1a(&text) };
        let bytes =
            encode(&content, covered).with_context(|| format!("failed to compress {}", self.show(&plain_name)))?;

        let tmp = format!(".{packed_name}.tmp");
        let mut out = match beneath::open_truncate(dir, &tmp) {
            Err(e) if beneath::is_symlink_error(&e) => {
                beneath::unlink(dir, &tmp)
                    .with_context(|| format!("failed to remove the symlink {}", self.show(&tmp)))?;
                beneath::open_truncate(dir, &tmp)
            }
            other => other,
        }
        .with_context(|| format!("failed to create {}", self.show(&tmp)))?;
        out.write_all(&bytes)
            .and_then(|()| out.set_modified(modified))
            .and_then(|()| out.sync_all())
            .with_context(|| format!("failed to write {}", self.show(&tmp)))?;
        fsio::failpoint("archive.pack.written");
        beneath::rename(dir, &tmp, &packed_name)
            .with_context(|| format!("failed to move {} into place", self.show(&packed_name)))?;
        dir.sync_all().with_context(|| format!("failed to sync {}", self.path.display()))?;
        fsio::failpoint("archive.pack.renamed");
        // Still the file we locked? Only then is it ours to remove.
        let same = std::fs::symlink_metadata(beneath::proc_path(dir).join(&plain_name))
            .is_ok_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev());
        if same {
            beneath::unlink(dir, &plain_name)
                .with_context(|| format!("failed to remove {}", self.show(&plain_name)))?;
            dir.sync_all().with_context(|| format!("failed to sync {}", self.path.display()))?;
        }
        fsio::failpoint("archive.pack.done");
        Ok(Some((read, bytes.len() as u64)))
    }

    /// Removes temp files a crash left mid-compression.
    fn remove_stale_tmp(&self) {
        let Ok(rd) = std::fs::read_dir(beneath::proc_path(self.handle())) else { return };
        for entry in rd.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            let stale = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|m| m.elapsed().ok());
            if name.starts_with('.') && name.ends_with(".tmp") && stale.is_some_and(|age| age > STALE_TMP) {
                let _ = beneath::unlink(self.handle(), &name);
            }
        }
    }
}

/// A segment's bytes: `content` (whole lines) as frames of about
/// [`FRAME_BYTES`], then the seek index.
///
/// # Errors
/// When zstd fails.
pub fn encode(content: &[u8], covered: Covered) -> Result<Vec<u8>> {
    let mut compressor = zstd::bulk::Compressor::new(LEVEL).context("failed to start zstd")?;
    let mut out = Vec::with_capacity(content.len() / 8);
    let mut idx = SeekIndex::default();
    let (mut lines, mut records) = (0u64, 0u64);
    let mut at = 0;
    while at < content.len() {
        let want = (at + FRAME_BYTES).min(content.len());
        let end = match content[want - 1..].iter().position(|&b| b == b'\n') {
            Some(nl) => want + nl,
            None => content.len(),
        };
        let chunk = &content[at..end];
        let n = idx.frames.len() as u32;
        let mut frame_lines = 0u32;
        for line in chunk.split(|&b| b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)) {
            frame_lines += 1;
            idx.ids.extend(index::ids_in(line).map(|id| (index::fnv1a(id), n)));
            if serde_json::from_slice::<crate::queue::LineIds>(line)
                .is_ok_and(|l| l.event.is_some() || l.event_id.is_some())
            {
                records += 1;
            }
        }
        lines += u64::from(frame_lines);
        let stored = compressor.compress(chunk).context("zstd failed to compress a frame")?;
        idx.frames.push(Frame {
            offset: out.len() as u64,
            stored: stored.len() as u32,
            plain: chunk.len() as u32,
            lines: frame_lines,
        });
        out.extend_from_slice(&stored);
        at = end;
    }
    idx.ids.sort_unstable();
    idx.ids.dedup();
    idx.header = Header {
        covered,
        plain_bytes: content.len() as u64,
        lines,
        records,
        frames: idx.frames.len() as u32,
        ids: idx.ids.len() as u32,
    };
    out.extend_from_slice(&idx.encode());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(n: usize) -> Vec<u8> {
        let mut text = Vec::new();
        for i in 0..n {
            let line = format!(
                "{{\"event\":{{\"event_id\":\"evt_20251201_120000_{i:06}\",\"payload\":{{\"n\":{i},\"pad\":\"{}\"}}}},\"outcome\":\"handled\"}}\n",
                "x".repeat(i % 300)
            );
            text.extend_from_slice(line.as_bytes());
        }
        text
    }

    #[test]
    fn a_segment_decompresses_to_its_lines_and_its_index_finds_each_one() {
        let text = day(5000);
        let bytes = encode(&text, Covered { len: 3, hash: 4 }).unwrap();
        let whole = zstd::stream::decode_all(&bytes[..]).unwrap();
        assert_eq!(whole, text, "any zstd decoder reads it, skipping the index");
        let footer: [u8; index::FOOTER_LEN] = bytes[bytes.len() - index::FOOTER_LEN..].try_into().unwrap();
        let at = bytes.len() - index::frame_len(&footer).unwrap() as usize;
        let idx = SeekIndex::decode(&bytes[at..]).unwrap();
        assert!(idx.frames.len() > 2, "{} frames", idx.frames.len());
        assert_eq!((idx.header.lines, idx.header.records, idx.header.ids), (5000, 5000, 5000));
        assert_eq!(idx.header.covered, Covered { len: 3, hash: 4 });
        for i in [0, 1234, 4999] {
            let id = format!("evt_20251201_120000_{i:06}");
            let frames = idx.frames_for(&id);
            assert_eq!(frames.len(), 1);
            let f = idx.frames[frames[0] as usize];
            let s = &bytes[f.offset as usize..(f.offset + u64::from(f.stored)) as usize];
            let plain = zstd::bulk::decompress(s, f.plain as usize).unwrap();
            assert!(String::from_utf8(plain).unwrap().contains(&id), "frame {} lacks {id}", frames[0]);
        }
        assert_eq!(u64::from(idx.frames.iter().map(|f| f.lines).sum::<u32>()), 5000);
    }

    #[test]
    fn frames_end_on_whole_lines_and_torn_lines_are_not_records() {
        let mut text = day(2000);
        text.extend_from_slice(b"{\"event\":{\"event_id\":\"evt_torn\"\n");
        let bytes = encode(&text, Covered::default()).unwrap();
        let footer: [u8; index::FOOTER_LEN] = bytes[bytes.len() - index::FOOTER_LEN..].try_into().unwrap();
        let idx = SeekIndex::decode(&bytes[bytes.len() - index::frame_len(&footer).unwrap() as usize..]).unwrap();
        for f in &idx.frames {
            let s = &bytes[f.offset as usize..(f.offset + u64::from(f.stored)) as usize];
            assert_eq!(zstd::bulk::decompress(s, f.plain as usize).unwrap().last(), Some(&b'\n'));
        }
        assert_eq!((idx.header.lines, idx.header.records), (2001, 2000));
        assert_eq!(idx.frames_for("evt_torn").len(), 1, "still findable, for replay to report it");
        assert!(encode(b"", Covered::default()).unwrap().len() < 100, "an empty day is only an index");
    }
}
