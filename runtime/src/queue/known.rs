//! The idempotency check behind [`super::Queue::known`]: which of a
//! producer's events the filesystem queue already holds, and where —
//! queued, being handled, dead-lettered or archived. The event id is the
//! key; names are listed (no reads) for the queue, the claims and the dead
//! letters, and only the archive day files that can hold an event (its
//! dates, a day either side) are searched.
//!
//! Crash story: read-only. It is a check before enqueueing, not a lock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

use super::FsQueue;
use super::fs::read_dir_if_any;
use super::name::dead_letter_event_id;
use crate::archive::{Archive, Lines};
use crate::event::Event;
use crate::lock::Recover;

impl FsQueue {
    /// [`super::Queue::known`] of the filesystem queue.
    pub(super) fn known_ids(&self, events: &[&Event]) -> Result<BTreeMap<String, &'static str>> {
        let mut out = BTreeMap::new();
        if events.is_empty() {
            return Ok(out);
        }
        let ids: BTreeSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        for (names, place) in [(self.entries()?, "queued"), (self.claim_names()?, "being handled")] {
            for name in names {
                if ids.contains(name.event_id.as_str()) {
                    out.insert(name.event_id, place);
                }
            }
        }
        let dead = self.layout.dead_letter();
        if let Some(rd) = read_dir_if_any(&dead)? {
            for entry in rd {
                let entry = entry.with_context(|| format!("failed to list {}", dead.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(id) = dead_letter_event_id(&name).filter(|id| ids.contains(id)) {
                    out.entry(id.to_string()).or_insert("dead-lettered");
                }
            }
        }
        let found = self.archived_among(events, &ids)?;
        for id in found {
            out.entry(id).or_insert("archived");
        }
        Ok(out)
    }

    /// Which of `ids` the archive holds: only the day files (and compacted
    /// months) that can hold these events are read, from the dates of
    /// their timestamps and of their ids (stamped in the producer's time
    /// zone), a day either side.
    fn archived_among(&self, events: &[&Event], ids: &BTreeSet<&str>) -> Result<BTreeSet<String>> {
        let mut dates = BTreeSet::new();
        for e in events {
            let id_date = e.event_id.get(4..12).and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y%m%d").ok());
            let ts_date = e.timestamp.get(..10).and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
            for d in id_date.into_iter().chain(ts_date) {
                dates.extend([d.pred_opt(), Some(d), d.succ_opt()].into_iter().flatten());
            }
        }
        let prefixes: BTreeSet<String> = dates
            .iter()
            .flat_map(|d| [d.format("%Y-%m-%d.").to_string(), d.format("%Y-%m.compact.").to_string()])
            .collect();
        let mut found = BTreeSet::new();
        let Some(archive) = Archive::open(&self.layout)? else { return Ok(found) };
        let wanted: Vec<&str> = ids.iter().copied().collect();
        for seg in archive.segments()? {
            let stem = format!("{}.", seg.stem);
            if !prefixes.iter().any(|p| stem.starts_with(p.as_str())) {
                continue;
            }
            if seg.packed.is_some() {
                // A compressed day: only the frames its seek index names.
                let packed = crate::archive::Segment { plain: None, ..seg.clone() };
                let lines = archive.lines_naming(&packed, &wanted)?;
                archived_ids(lines, &archive.path().join(seg.names()), ids, &mut found)?;
            }
            if let Some(plain) = &seg.plain {
                // A plain day: the ids it holds are remembered, and only
                // what was appended since the last look is read.
                self.seen.locked().look_up(&archive, &plain.name, ids, &mut found)?;
            }
        }
        Ok(found)
    }
}

/// The event ids of the plain archive days this process looked in, so that
/// an idempotency check (every `POST /v1/events` with producer ids) reads
/// only the lines appended since the previous one instead of whole days.
/// A day file is only ever appended to; one that was replaced (compressed
/// and started again, or removed) has another inode, or is shorter, and is
/// read again from the start.
#[derive(Default)]
pub(crate) struct SeenIds {
    days: BTreeMap<String, SeenDay>,
    /// Bumped per look-up: the least recently used day is forgotten first.
    clock: u64,
}

struct SeenDay {
    ino: u64,
    /// Bytes read: up to the end of the last whole line.
    offset: u64,
    ids: std::collections::HashSet<String>,
    used: u64,
}

/// Plain days remembered at most (a look-up reads three: its day and one
/// either side).
const SEEN_DAYS: usize = 8;

impl SeenIds {
    fn look_up(
        &mut self,
        archive: &Archive,
        name: &str,
        ids: &BTreeSet<&str>,
        found: &mut BTreeSet<String>,
    ) -> Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        use std::os::unix::fs::MetadataExt;
        let what = || archive.path().join(name).display().to_string();
        let mut file = match crate::fsio::beneath::open_read(archive.handle(), name) {
            Ok(f) => f,
            // Removed (compressed or expired) since it was listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("failed to open archive file {}", what())),
        };
        let meta = file.metadata().with_context(|| format!("failed to stat archive file {}", what()))?;
        self.clock += 1;
        let day = self.days.entry(name.to_string()).or_insert(SeenDay {
            ino: meta.ino(),
            offset: 0,
            ids: Default::default(),
            used: 0,
        });
        if day.ino != meta.ino() || meta.len() < day.offset {
            *day = SeenDay { ino: meta.ino(), offset: 0, ids: Default::default(), used: 0 };
        }
        day.used = self.clock;
        if meta.len() > day.offset {
            let mut fresh = Vec::with_capacity(usize::try_from(meta.len() - day.offset).unwrap_or(0));
            file.seek(SeekFrom::Start(day.offset))
                .with_context(|| format!("failed to read archive file {}", what()))?;
            file.read_to_end(&mut fresh).with_context(|| format!("failed to read archive file {}", what()))?;
            // A line still being appended is read whole next time.
            let whole = fresh.iter().rposition(|&b| b == b'\n').map_or(0, |at| at + 1);
            for line in fresh[..whole].split(|&b| b == b'\n') {
                if let Some(id) = own_id(line) {
                    day.ids.insert(id);
                }
            }
            day.offset += whole as u64;
        }
        found.extend(ids.iter().filter(|id| day.ids.contains(**id)).map(|id| (*id).to_string()));
        if self.days.len() > SEEN_DAYS
            && let Some(oldest) = self.days.iter().min_by_key(|(_, d)| d.used).map(|(n, _)| n.clone())
        {
            self.days.remove(&oldest);
        }
        Ok(())
    }
}

/// The id of the event an archive line records (or of the bare event of a
/// compacted month); `None` for a line that is neither.
fn own_id(line: &[u8]) -> Option<String> {
    let line = serde_json::from_slice::<LineIds>(line).ok()?;
    line.event.map(|e| e.event_id).or(line.event_id)
}

/// Which of `ids` an archive file holds in a whole record (or, in a
/// compacted month, a bare event). Lines are searched for `"event_id":"…"`
/// and only a line that names a wanted id is parsed, to confirm that it is
/// the line's own event (a follow-up's record also names its trigger).
fn archived_ids(lines: Lines, path: &Path, ids: &BTreeSet<&str>, found: &mut BTreeSet<String>) -> Result<()> {
    use std::io::BufRead;
    const KEY: &str = "\"event_id\":\"";
    for line in lines.split(b'\n') {
        let line = line.with_context(|| format!("failed to read archive file {}", path.display()))?;
        let Ok(line) = std::str::from_utf8(&line) else { continue };
        let named = line.match_indices(KEY).filter_map(|(at, _)| {
            let rest = &line[at + KEY.len()..];
            rest.find('"').map(|end| &rest[..end])
        });
        if !named.into_iter().any(|id| ids.contains(id)) {
            continue;
        }
        if let Some(id) = own_id(line.as_bytes()).filter(|id| ids.contains(id.as_str())) {
            found.insert(id);
        }
    }
    Ok(())
}

/// The event ids of an archive line, read without the rest of it: the
/// event of an [`crate::records::ArchiveRecord`], or the line's own id when
/// it is a bare event (a compacted month).
#[derive(Deserialize)]
pub(crate) struct LineIds {
    #[serde(default)]
    pub(crate) event: Option<EventId>,
    #[serde(default)]
    pub(crate) event_id: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct EventId {
    pub(crate) event_id: String,
}
