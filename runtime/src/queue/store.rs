//! [`Store`] for the filesystem backend: the reads and repairs the
//! operators' commands make, on the files the rest of `queue/` keeps
//! (entries in `queue/`, claims under `claimed/`, delivery records in
//! `attempts/`, dead letters in `dead-letter/`, the archive days) and the
//! SQLite state database under `kv/`.
//!
//! Crash story: reads only, except [`Store::remove_dead_letters`], which
//! unlinks and then syncs the directory (a crash before the sync may bring
//! a letter back; removing it again is harmless).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::{Delivery, EntryName, FsQueue};
use crate::archive::{Archive, Lines, Segment};
use crate::dlq::Listing;
use crate::event::{Event, Priority};
use crate::fsio;
use crate::store::{ArchiveRead, Live, LiveState, Store};

impl ArchiveRead for Archive {
    fn segments(&self) -> Result<Vec<Segment>> {
        Archive::segments(self)
    }

    fn lines(&self, seg: &Segment) -> Result<Lines> {
        Archive::lines(self, seg)
    }

    fn lines_naming(&self, seg: &Segment, ids: &[&str]) -> Result<Lines> {
        Archive::lines_naming(self, seg, ids)
    }

    fn describe(&self, seg: &Segment) -> String {
        self.path().join(seg.names()).display().to_string()
    }
}

impl Store for FsQueue {
    fn describe(&self) -> String {
        format!("filesystem {}", self.layout.root().display())
    }

    fn entries(&self) -> Result<Vec<EntryName>> {
        FsQueue::entries(self)
    }

    fn peek(&self, name: &EntryName) -> Result<Event> {
        FsQueue::peek(self, name)
    }

    fn by_priority(&self) -> Result<Vec<(Priority, usize)>> {
        Ok(FsQueue::by_priority(self)?.into_iter().collect())
    }

    fn live(&self) -> Result<Vec<Live>> {
        let mut out = Vec::new();
        for name in FsQueue::entries(self)? {
            let path = self.layout.queue().join(name.file_name());
            out.extend(self.live_one(&path, name, LiveState::Waiting)?);
        }
        for (path, name) in self.claim_files()? {
            out.extend(self.live_one(&path, name, LiveState::Claimed)?);
        }
        Ok(out)
    }

    fn dead_letters(&self) -> Result<Listing> {
        crate::dlq::list(&self.layout)
    }

    fn remove_dead_letters(&self, keys: &[&str]) -> Result<()> {
        let dir = self.layout.dead_letter();
        for key in keys {
            let path = dir.join(format!("{key}.json"));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("failed to remove dead letter {}", path.display())),
            }
        }
        fsio::sync_dir(&dir)
    }

    fn redeliver_webhook(&self, letter: &crate::records::DeadLetterRecord) -> Result<()> {
        crate::webhooks::outbox::redeliver(&self.layout, &self.webhooks(), letter)
    }

    fn archive(&self) -> Result<Option<Box<dyn ArchiveRead + '_>>> {
        Ok(Archive::open(&self.layout)?.map(|a| Box::new(a) as Box<dyn ArchiveRead>))
    }

    fn state(&self) -> Result<Arc<dyn crate::kv::Backend>> {
        if let Some(b) = self.state.get() {
            return Ok(b.clone());
        }
        let backend: Arc<dyn crate::kv::Backend> =
            Arc::new(crate::kv::sqlite::SqliteBackend::open(&self.layout.kv_db())?);
        Ok(self.state.get_or_init(|| backend).clone())
    }
}

impl FsQueue {
    /// A waiting or claimed entry read from `path`; `None` when it moved on
    /// while listed. An entry that is not an event is kept, with why.
    fn live_one(&self, path: &Path, name: EntryName, state: LiveState) -> Result<Option<Live>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("failed to read queue entry {}", path.display())),
        };
        let event = serde_json::from_str::<Event>(&text).map_err(|e| format!("{}: not an event: {e}", path.display()));
        // A delivery record that does not read is as good as none here:
        // the entry is still shown, with the handlers it routes to waiting.
        let delivery =
            if name.attempt > 1 { self.read_delivery(&name).unwrap_or_default() } else { Delivery::default() };
        Ok(Some(Live { name, state, event, delivery }))
    }
}
