//! Lease recovery: taking back claims whose dispatcher is gone. Claims in
//! an owner directory whose lock is free (its process died, however) are
//! taken back at once; plain claims directly in `events/claimed/` (from
//! before owner directories) when their lease, counted from the claiming
//! rename's ctime, has run out. Temp files and half-made owner directories
//! older than a lease are removed, and the archive retention is applied
//! now and then.
//!
//! Crash story: a claim taken back either had its work recorded (an
//! archive line or dead letter exists: only the claim's removal was lost,
//! so it is removed now) or goes back to the queue with its attempt raised
//! and the reason in its delivery history, written durably before the
//! rename. A crash during recovery leaves claims that the next recovery
//! takes back.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};

use super::archive::{PRUNE_EVERY, archived_entry};
use super::name::list_names;
use super::{AttemptRecord, Delivery, EntryName, Failure, FsQueue, Recovered, now_rfc3339, owner};
use crate::fsio;
use crate::lock::Recover;
use crate::records::FaultKind;
use crate::sandbox::Fault;

impl FsQueue {
    /// [`super::Queue::recover`] of the filesystem queue.
    pub(super) fn recover_claims(&self, lease: Duration) -> Result<Recovered> {
        let mut out = Recovered::default();
        let due = self.last_prune.locked().is_none_or(|t| t.elapsed() > PRUNE_EVERY);
        if due && let Err(e) = self.prune_archive() {
            tracing::warn!(error = %format!("{e:#}"), "failed to apply the archive retention");
        }
        out.stale_temp_files = self.remove_stale_temp(lease);
        let claimed = self.layout.claimed();
        // Claims from before owner directories: by their lease.
        for name in list_names(&claimed)? {
            let path = claimed.join(name.file_name());
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            // The claiming rename set ctime: that is when the lease began.
            let claimed_at =
                UNIX_EPOCH + Duration::new(meta.ctime().max(0) as u64, meta.ctime_nsec().clamp(0, 999_999_999) as u32);
            let age = claimed_at.elapsed().unwrap_or_default();
            if age < lease {
                continue;
            }
            let why = format!("claim held for {}s without being settled: its dispatcher stopped", age.as_secs());
            self.take_back(&path, &name, (FaultKind::LeaseExpired, why, age), &mut out)?;
        }
        // Claims of dispatchers that died: at once, whatever their age.
        let mine = self.owner.locked().as_ref().map(|o| o.dir.clone());
        for orphan in owner::orphans(&claimed, mine.as_deref())? {
            for name in list_names(&orphan.dir)? {
                let path = orphan.dir.join(name.file_name());
                let died =
                    orphan.pid.map_or_else(|| "its dispatcher".to_string(), |p| format!("its dispatcher (pid {p})"));
                let why = format!("{died} died holding this claim (its claim lock was free)");
                self.take_back(&path, &name, (FaultKind::OwnerDied, why, Duration::ZERO), &mut out)?;
            }
            fsio::sync_dir(&orphan.dir)?;
            let dir = orphan.dir.clone();
            if let Err(e) = orphan.remove() {
                tracing::warn!(dir = %dir.display(), error = %format!("{e:#}"), "could not remove a dead dispatcher's claim directory");
            }
        }
        if out.requeued + out.finished > 0 {
            fsio::sync_dir(&self.layout.queue())?;
            fsio::sync_dir(&claimed)?;
            self.rescan();
        }
        Ok(out)
    }

    /// Removes temp files of writers that died (never visible to readers,
    /// only garbage) and owner directories half made by a process that
    /// died; anything older than a lease is nobody's work in progress.
    /// Returns how many were removed.
    fn remove_stale_temp(&self, lease: Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(self.layout.tmp()) else { return 0 };
        let mut removed = 0;
        for e in entries.flatten() {
            let old = e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|a| a > lease);
            if !old {
                continue;
            }
            let gone = if e.file_type().is_ok_and(|t| t.is_dir()) {
                owner::is_owner_name(&e.file_name().to_string_lossy()) && std::fs::remove_dir_all(e.path()).is_ok()
            } else {
                std::fs::remove_file(e.path()).is_ok()
            };
            removed += usize::from(gone);
        }
        removed
    }

    /// Takes back one claim whose dispatcher is gone: finishes its ack when
    /// its work was already recorded, else puts it back in the queue with
    /// the attempt raised and `why` (kind, message, how long it was held) in
    /// its history.
    fn take_back(
        &self,
        path: &Path,
        name: &EntryName,
        (kind, message, held): (FaultKind, String, Duration),
        out: &mut Recovered,
    ) -> Result<()> {
        // Work already recorded? Then only the removal of the claim was lost.
        let done = match std::fs::read_to_string(path).ok().and_then(|t| self.validator.parse(&t).ok()) {
            Some(event) => archived_entry(&self.layout, &self.archive_path(&event), &name.key()),
            None => false,
        } || self.dead_letter_path(name).exists();
        if done {
            std::fs::remove_file(path)
                .with_context(|| format!("failed to remove finished claim {}", path.display()))?;
            out.finished += 1;
            return Ok(());
        }
        let mut delivery = if name.attempt > 1 { self.read_delivery(name)? } else { Delivery::default() };
        let failure = Failure {
            handler: String::new(),
            component_sha256: String::new(),
            fault: Fault { kind, message, detail: String::new() },
            duration_ms: held.as_secs_f64() * 1000.0,
        };
        delivery.history.push(AttemptRecord { attempt: name.attempt, at: now_rfc3339(), failures: vec![failure] });
        fsio::write_durably(&self.layout.tmp(), &self.attempts_path(name), &serde_json::to_vec_pretty(&delivery)?)?;
        let mut next = name.clone();
        next.attempt += 1;
        next.due_ms = None;
        fsio::rename_noreplace(path, &self.layout.queue().join(next.file_name()))?;
        out.requeued += 1;
        Ok(())
    }
}
