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
            if prefixes.iter().any(|p| stem.starts_with(p.as_str())) {
                // A compressed day: only the frames its seek index names.
                let lines = archive.lines_naming(&seg, &wanted)?;
                archived_ids(lines, &archive.path().join(seg.names()), ids, &mut found)?;
            }
        }
        Ok(found)
    }
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
        let Ok(line) = serde_json::from_str::<LineIds>(line) else { continue };
        let own = line.event.map(|e| e.event_id).or(line.event_id);
        if let Some(id) = own.filter(|id| ids.contains(id.as_str())) {
            found.insert(id);
        }
    }
    Ok(())
}

/// The event ids of an archive line, read without the rest of it: the
/// event of an [`crate::records::ArchiveRecord`], or the line's own id when
/// it is a bare event (a compacted month).
#[derive(Deserialize)]
struct LineIds {
    #[serde(default)]
    event: Option<EventId>,
    #[serde(default)]
    event_id: Option<String>,
}

#[derive(Deserialize)]
struct EventId {
    event_id: String,
}
