//! The reaper pool: threads that remove settled claims (and the delivery
//! records of entries that succeeded) off the commit path, so a batch's
//! commit does not wait for its unlinks.
//!
//! Crash story: these removals need not be durable. A settled claim that
//! survives a crash is recognised by `recover` (its archive line or dead
//! letter already exists) and removed then; a delivery record left behind
//! is replaced by the next retry of its key or ignored.

use std::path::PathBuf;
use std::sync::Mutex;

use super::FsQueue;
use crate::lock::Recover;

/// A thread pool that removes files whose removal need not be durable.
pub(super) struct Reaper {
    tx: std::sync::mpsc::Sender<PathBuf>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Removal threads: an unlink mostly waits on the disk (ext4 discards the
/// freed blocks synchronously), so several overlap well even on two cores.
const REAPERS: usize = 4;

impl Reaper {
    fn start() -> Reaper {
        let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        let threads = (0..REAPERS)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    loop {
                        let next = rx.locked().recv();
                        let Ok(path) = next else { return };
                        if let Err(e) = std::fs::remove_file(&path)
                            && e.kind() != std::io::ErrorKind::NotFound
                        {
                            tracing::warn!(file = %path.display(), error = %e, "failed to remove a settled claim; recovery will");
                        }
                    }
                })
            })
            .collect();
        Reaper { tx, threads }
    }

    /// Waits until every file handed over has been removed.
    fn stop(self) {
        drop(self.tx);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

impl FsQueue {
    /// Hands files to the reaper pool (started at the first call).
    pub(super) fn reap(&self, paths: Vec<PathBuf>) {
        let mut reaper = self.reaper.locked();
        let r = reaper.get_or_insert_with(Reaper::start);
        for path in paths {
            if let Err(unsent) = r.tx.send(path) {
                let _ = std::fs::remove_file(unsent.0);
            }
        }
    }

    /// Waits until every settled claim has been removed, then gives up
    /// this queue's claim directory if nothing is left in it.
    pub fn flush(&self) {
        if let Some(r) = self.reaper.locked().take() {
            r.stop();
        }
        if let Some(owner) = self.owner.locked().take() {
            owner.retire();
        }
    }
}
