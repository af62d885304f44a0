//! Who holds a claim. Every queue that claims events owns one directory
//! under `events/claimed/`, `o-<pid>-<µs>-<random>/`, and holds an exclusive
//! `flock` on its `.lock` file for as long as it lives. The kernel drops the
//! lock when the process dies, however it dies (`kill -9` included), so a
//! dispatcher that finds an owner directory whose lock it can take knows
//! that its owner is gone and takes its claims back at once, instead of
//! waiting out the lease; a live owner's lock is never free, so its claims
//! are never taken, however long they wait.
//!
//! The directory is made and locked under `events/tmp/` and only then
//! renamed into `events/claimed/`, so it is never seen unlocked while its
//! owner lives. Claims from before owner directories (plain files directly
//! in `events/claimed/`) are still taken back when their lease runs out.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::layout::Layout;

/// Whether `name` (an entry of `events/claimed/` or `events/tmp/`) is an
/// owner directory's name.
pub fn is_owner_name(name: &str) -> bool {
    name.starts_with(PREFIX)
}

/// The lock file in an owner directory.
const LOCK: &str = ".lock";
/// Owner directories' names start with this.
const PREFIX: &str = "o-";

/// An owner directory this process holds.
pub struct Owner {
    pub dir: PathBuf,
    /// Holds the lock; dropping it (or dying) releases it.
    _lock: File,
}

/// Takes `flock(LOCK_EX | LOCK_NB)` on `file`: `Ok(false)` when another
/// open description holds it.
fn try_lock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor this function borrows for the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(false) } else { Err(err) }
}

impl Owner {
    /// Makes, locks and publishes a new owner directory.
    ///
    /// # Errors
    /// When the directory or its lock cannot be made.
    pub fn create(layout: &Layout) -> Result<Owner> {
        let name = format!("{PREFIX}{}-{}-{:08x}", std::process::id(), super::now_us(), fastrand::u32(..));
        let staging = layout.tmp().join(&name);
        std::fs::create_dir(&staging).with_context(|| format!("failed to create {}", staging.display()))?;
        let lock_path = staging.join(LOCK);
        let lock = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("failed to create {}", lock_path.display()))?;
        if !try_lock(&lock).with_context(|| format!("failed to lock {}", lock_path.display()))? {
            anyhow::bail!("{} is locked by someone else", lock_path.display());
        }
        let dir = layout.claimed().join(&name);
        std::fs::rename(&staging, &dir)
            .with_context(|| format!("failed to move {} to {}", staging.display(), dir.display()))?;
        crate::fsio::sync_dir(&layout.claimed())?;
        Ok(Owner { dir, _lock: lock })
    }

    /// Removes the directory when no claim is left in it (a graceful
    /// stop); a directory with claims left stays, for recovery.
    pub fn retire(self) {
        let empty = std::fs::read_dir(&self.dir)
            .map(|rd| rd.filter_map(|e| e.ok()).all(|e| e.file_name() == LOCK))
            .unwrap_or(false);
        if empty {
            let _ = std::fs::remove_file(self.dir.join(LOCK));
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// An owner directory whose owner is gone, locked now by the caller.
pub struct Orphan {
    pub dir: PathBuf,
    /// The dead owner's process id, from the directory name.
    pub pid: Option<u32>,
    _lock: Option<File>,
}

impl Orphan {
    /// Removes the (emptied) directory and its lock.
    ///
    /// # Errors
    /// When a claim is still in it.
    pub fn remove(self) -> Result<()> {
        let _ = std::fs::remove_file(self.dir.join(LOCK));
        std::fs::remove_dir(&self.dir).with_context(|| format!("failed to remove {}", self.dir.display()))
    }
}

/// The owner directories in `claimed` whose lock is free (their owner
/// died), other than `mine`, each locked for the caller. A directory whose
/// lock another recoverer holds right now is left to it.
///
/// # Errors
/// When `claimed` cannot be listed.
pub fn orphans(claimed: &Path, mine: Option<&Path>) -> Result<Vec<Orphan>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(claimed).with_context(|| format!("failed to list {}", claimed.display()))? {
        let entry = entry.with_context(|| format!("failed to list {}", claimed.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        if !is_owner_name(&name) || !entry.file_type().is_ok_and(|t| t.is_dir()) || Some(dir.as_path()) == mine {
            continue;
        }
        let pid = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()).and_then(|p| p.parse().ok());
        let lock = match OpenOptions::new().write(true).open(dir.join(LOCK)) {
            Ok(lock) => lock,
            // No lock file: a directory left half-removed; nobody owns it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                out.push(Orphan { dir, pid, _lock: None });
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("failed to open {}", dir.join(LOCK).display())),
        };
        if try_lock(&lock).with_context(|| format!("failed to lock {}", dir.join(LOCK).display()))? {
            out.push(Orphan { dir, pid, _lock: Some(lock) });
        }
    }
    Ok(out)
}

/// The owner directories in `claimed` (live or not).
pub fn dirs(claimed: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(claimed)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| is_owner_name(&e.file_name().to_string_lossy()))
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}
