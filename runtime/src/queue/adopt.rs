//! Adoption of hand-dropped files: a `.json` file put into `events/queue/`
//! by hand or by an old tool (as the seed's did) under a name that is not
//! an entry name. A valid, whole event is queued properly (a new entry
//! through the group commit) and its file removed; a file that stays
//! invalid for a few seconds (so is not still being written) is moved to
//! the dead-letter queue as `invalid-<µs>-<stem>.json`, with its raw text
//! and why.
//!
//! Crash story: the event is queued durably before the dropped file is
//! removed, so a crash in between queues it twice at worst (at-least-once),
//! never loses it; the invalid file's dead letter is durable before the
//! file goes.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{FsQueue, now_rfc3339, now_us};
use crate::fsio;
use crate::records::DeadLetterRecord;

impl FsQueue {
    /// A `.json` file dropped into `queue/` by hand (as the seed's tools
    /// did): queued properly if valid and whole; dead-lettered with the
    /// reason if invalid and no longer being written.
    pub(super) fn adopt(&self, path: &Path) -> Result<()> {
        let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
        let age = std::fs::metadata(path).and_then(|m| m.modified()).ok().and_then(|m| m.elapsed().ok());
        match self.validator.parse(&text) {
            Ok(event) => {
                self.enqueue_events(std::slice::from_ref(&event))?;
                std::fs::remove_file(path).with_context(|| format!("failed to remove adopted {}", path.display()))?;
            }
            // It may still be being written: look again later.
            Err(_) if age.is_none_or(|a| a < Duration::from_secs(5)) => {}
            Err(invalid) => {
                let record = DeadLetterRecord::not_an_event(
                    text,
                    path.display().to_string(),
                    format!("invalid event dropped into the queue: {invalid}"),
                    now_rfc3339(),
                );
                let stem = path.file_stem().unwrap_or_default().to_string_lossy();
                let target = self.layout.dead_letter().join(format!("invalid-{}-{stem}.json", now_us()));
                fsio::write_durably(&self.layout.tmp(), &target, serde_json::to_string_pretty(&record)?.as_bytes())?;
                std::fs::remove_file(path).with_context(|| format!("failed to remove {}", path.display()))?;
                tracing::warn!(file = %path.display(), %invalid, "invalid event file moved to the dead-letter queue");
            }
        }
        Ok(())
    }
}
