//! The entry-name codec of the filesystem queue: everything a queue entry's
//! state is lives in its file name, so a directory listing (one `getdents`,
//! no reads) is the whole index.
//!
//! ```text
//! {rank}-{enqueued µs, 16 digits}-{event_id}-a{attempt}[-{due ms}].json
//! ```
//!
//! A plain sort of the names serves critical events first and FIFO within
//! a priority. The part before `-a{attempt}` is the entry's key: it names
//! the entry across its retries, its delivery record (`attempts/<key>.json`),
//! its dead letter (`dead-letter/<key>.json`) and its archive record
//! (`"entry"`). Crash story: names are only ever created whole by a rename,
//! so a name that does not parse is not an entry (see `adopt`).

use std::path::Path;

use anyhow::{Context, Result};

use crate::event::Priority;

/// The parsed name of a queue entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryName {
    pub priority: Priority,
    pub enqueued_us: u64,
    pub event_id: String,
    /// 1 for the first delivery.
    pub attempt: u32,
    /// Not to be claimed before this time (ms since the epoch), for retries.
    pub due_ms: Option<u64>,
}

impl EntryName {
    /// The name of `event` queued now for its first delivery, on either backend.
    pub fn first(event: &crate::event::Event) -> EntryName {
        EntryName {
            priority: event.priority(),
            enqueued_us: super::clock::next_enqueue_us(),
            event_id: event.event_id.clone(),
            attempt: 1,
            due_ms: None,
        }
    }

    pub fn file_name(&self) -> String {
        match self.due_ms {
            Some(due) => format!("{}-a{}-{due}.json", self.key(), self.attempt),
            None => format!("{}-a{}.json", self.key(), self.attempt),
        }
    }

    /// What identifies this queue entry across its retries.
    pub fn key(&self) -> String {
        format!("{}-{:016}-{}", self.priority.rank(), self.enqueued_us, self.event_id)
    }

    pub fn parse(name: &str) -> Option<EntryName> {
        let stem = name.strip_suffix(".json")?;
        let mut parts = stem.split('-');
        let rank: u8 = parts.next()?.parse().ok()?;
        let enqueued = parts.next()?;
        let event_id = parts.next()?.to_string();
        let attempt: u32 = parts.next()?.strip_prefix('a')?.parse().ok()?;
        let due_ms = match parts.next() {
            Some(d) => Some(d.parse().ok()?),
            None => None,
        };
        if parts.next().is_some() || enqueued.len() != 16 || attempt == 0 {
            return None;
        }
        Some(EntryName {
            priority: Priority::from_rank(rank)?,
            enqueued_us: enqueued.parse().ok()?,
            event_id,
            attempt,
            due_ms,
        })
    }

    pub fn is_due(&self, now_ms: u64) -> bool {
        self.due_ms.is_none_or(|d| d <= now_ms)
    }
}

/// The event id in a key (`{rank}-{µs}-{event_id}`), as a dead letter's
/// file stem carries it.
pub fn key_event_id(key: &str) -> Option<&str> {
    key.splitn(3, '-').nth(2)
}

/// The event id in a dead letter's file name (`{key}.json`).
pub(super) fn dead_letter_event_id(name: &str) -> Option<&str> {
    key_event_id(name.strip_suffix(".json")?)
}

/// The entries of a directory, parsed, in serving order; other files are
/// not entries and are left out.
///
/// # Errors
/// When the directory cannot be listed.
pub(super) fn list_names(dir: &Path) -> Result<Vec<EntryName>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("failed to list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("failed to list {}", dir.display()))?;
        if let Some(name) = EntryName::parse(&entry.file_name().to_string_lossy()) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_priority_then_time() {
        let a = EntryName {
            priority: Priority::Low,
            enqueued_us: 5,
            event_id: "evt_20251201_120000_abc123".into(),
            attempt: 1,
            due_ms: None,
        };
        let b = EntryName {
            priority: Priority::Critical,
            enqueued_us: 9,
            event_id: "evt_20251201_120000_zzz999".into(),
            attempt: 2,
            due_ms: Some(77),
        };
        for n in [&a, &b] {
            assert_eq!(EntryName::parse(&n.file_name()).as_ref(), Some(n));
        }
        assert!(b.file_name() < a.file_name());
        assert_eq!(b.file_name(), "0-0000000000000009-evt_20251201_120000_zzz999-a2-77.json");
        assert!(EntryName::parse("foo.json").is_none());
        assert!(EntryName::parse("2-0000000000000009-evt_x-a0.json").is_none());
    }

    #[test]
    fn names_that_are_not_entries_do_not_parse() {
        for bad in [
            "",
            ".json",
            "2-0000000000000009-evt_x-a1",
            "2-000000000000009-evt_x-a1.json",
            "9-0000000000000009-evt_x-a1.json",
            "2-0000000000000009-evt_x-1.json",
            "2-0000000000000009-evt_x-a1-soon.json",
            "2-0000000000000009-evt_x-a1-5-6.json",
            "dropped-by-hand.json",
        ] {
            assert!(EntryName::parse(bad).is_none(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_dead_letter_name_carries_its_event_id() {
        let key = "1-0000000000000009-evt_20251201_120000_abc123";
        assert_eq!(key_event_id(key), Some("evt_20251201_120000_abc123"));
        assert_eq!(dead_letter_event_id(&format!("{key}.json")), Some("evt_20251201_120000_abc123"));
        assert_eq!(dead_letter_event_id("invalid.txt"), None);
    }
}
