//! Crash-safe filesystem primitives the queue, journal and archive share.
//!
//! The protocol is Maildir's: write a whole file under `events/tmp/`, make it
//! durable, rename it into place (readers see all of it or nothing), then
//! make the directory entry durable. A batch makes all its files durable with
//! one `syncfs` instead of one `fsync` each (group commit).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};

pub mod beneath;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique name in `tmp_dir`: pid, a counter and a random part, so two
/// processes writing at once never share a temp file.
pub fn tmp_path(tmp_dir: &Path, hint: &str) -> PathBuf {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let pid = PID.get_or_init(std::process::id);
    tmp_dir.join(format!("{pid}.{n}.{:08x}.{hint}", fastrand::u32(..)))
}

/// Writes `bytes` to a new temp file in `tmp_dir`; when `sync` is set the
/// data is flushed before returning.
///
/// # Errors
/// When the file cannot be created or written (e.g. disk full); the partial
/// temp file is removed.
pub fn write_tmp(tmp_dir: &Path, hint: &str, bytes: &[u8], sync: bool) -> Result<PathBuf> {
    let path = tmp_path(tmp_dir, hint);
    let result = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&path)?;
        f.write_all(bytes)?;
        if sync {
            f.sync_data()?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&path);
        return Err(e).with_context(|| format!("failed to write temp file {}", path.display()));
    }
    Ok(path)
}

/// Renames without replacing an existing file (`RENAME_NOREPLACE`), so an
/// id collision is an error instead of a silent overwrite.
///
/// # Errors
/// When the target exists or the rename fails.
pub fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    let c_from = cstr(from)?;
    let c_to = cstr(to)?;
    // SAFETY: both pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::renameat2(libc::AT_FDCWD, c_from.as_ptr(), libc::AT_FDCWD, c_to.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINVAL) || err.raw_os_error() == Some(libc::ENOSYS) {
        // A filesystem without RENAME_NOREPLACE: a hard link refuses to
        // replace too, and is just as atomic.
        std::fs::hard_link(from, to)
            .with_context(|| format!("failed to move {} to {}", from.display(), to.display()))?;
        std::fs::remove_file(from).with_context(|| format!("failed to remove {}", from.display()))?;
        return Ok(());
    }
    Err(err).with_context(|| format!("failed to move {} to {}", from.display(), to.display()))
}

fn cstr(p: &Path) -> Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .with_context(|| format!("path {} contains a NUL byte", p.display()))
}

/// Makes a directory's entries (renames, creations, removals) durable.
///
/// # Errors
/// When the directory cannot be opened or synced.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("failed to sync directory {}", dir.display()))
}

/// Flushes every dirty file of the filesystem holding `path`: one call makes
/// a whole batch of temp files, log appends and handler state durable.
///
/// # Errors
/// When the filesystem reports a write error (e.g. it is full).
pub fn sync_filesystem(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("failed to open {}", path.display()))?;
    // SAFETY: the descriptor is valid for the duration of the call.
    let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("failed to sync the filesystem of {}", path.display()));
    }
    Ok(())
}

/// The crash point armed in this process, if any: `None` until
/// [`arm_failpoints`] runs, which only the reliability suite's
/// `cortex-failpoints` binary does. The shipped `cortex` never arms one, so
/// `CORTEX_FAILPOINT` in a user's environment changes nothing.
static FAILPOINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Arms the crash point named by `CORTEX_FAILPOINT` (for the crash-point
/// matrix in the tests crate).
pub fn arm_failpoints() {
    let _ = FAILPOINT.set(std::env::var("CORTEX_FAILPOINT").ok());
}

/// A crash point for the reliability suite: aborts the process here when
/// [`arm_failpoints`] armed this name; otherwise one load of a `OnceLock`.
#[inline]
pub fn failpoint(name: &str) {
    if let Some(Some(armed)) = FAILPOINT.get()
        && armed == name
    {
        eprintln!("cortex: failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Writes a whole file durably: temp file, fsync, rename, directory fsync.
/// Replaces an existing `target`.
///
/// # Errors
/// When any step fails; the target is then unchanged.
pub fn write_durably(tmp_dir: &Path, target: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = write_tmp(tmp_dir, "write", bytes, true)?;
    if let Err(e) = std::fs::rename(&tmp, target) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("failed to move {} into place", target.display()));
    }
    if let Some(parent) = target.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Appends whole lines with one `write` (atomic against other appenders on
/// a local filesystem). A crash may have cut the previous last line short:
/// then this starts on a fresh line, so the torn fragment stays one bad
/// line instead of corrupting this one too.
///
/// # Errors
/// When the file cannot be opened, written or synced.
pub fn append_lines(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).read(true).open(path)?;
    beneath::append_to(&mut f, bytes, sync)
}

/// Copies a directory tree without following a symlink anywhere: the
/// source root must be a real directory (a symlink there is refused, named),
/// links inside are copied as links, files are opened `O_NOFOLLOW` and
/// copied sparsely (only their data segments; holes stay holes), and nothing
/// is written through a link that already sits in the destination. A missing
/// source is an empty tree.
///
/// # Errors
/// When the source root is a symlink or not a directory, a destination
/// entry is a symlink, or a directory cannot be listed or created, or an
/// entry copied.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    match std::fs::symlink_metadata(from) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return make_dir(to),
        Err(e) => return Err(e).with_context(|| format!("failed to stat {}", from.display())),
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::read_link(from).map(|t| t.display().to_string()).unwrap_or_default();
            bail!("refusing to copy {}: it is a symlink (-> {target}), not a directory", from.display())
        }
        Ok(m) if !m.is_dir() => bail!("refusing to copy {}: it is not a directory", from.display()),
        Ok(_) => {}
    }
    copy_dir(from, to)
}

/// Creates `dir` (and missing parents), refusing one that exists as anything
/// but a real directory.
fn make_dir(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => bail!("refusing to copy into {}: it exists and is not a directory (a symlink?)", dir.display()),
        Err(_) => {}
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("failed to create {}", parent.display()))?;
    }
    std::fs::create_dir(dir).with_context(|| format!("failed to create {}", dir.display()))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    make_dir(to)?;
    // Listed through a descriptor opened without following a link, so a
    // directory swapped for a symlink after the check is refused, not read.
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(from)
        .with_context(|| format!("failed to open directory {} (without following links)", from.display()))?;
    let rd =
        std::fs::read_dir(beneath::proc_path(&handle)).with_context(|| format!("failed to list {}", from.display()))?;
    for entry in rd {
        let entry = entry.with_context(|| format!("failed to list {}", from.display()))?;
        let (src, dst) = (from.join(entry.file_name()), to.join(entry.file_name()));
        let kind = entry.file_type().with_context(|| format!("failed to stat {}", src.display()))?;
        if kind.is_dir() {
            copy_dir(&src, &dst)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&src).with_context(|| format!("failed to read link {}", src.display()))?;
            remove_entry(&dst)?;
            std::os::unix::fs::symlink(&target, &dst)
                .with_context(|| format!("failed to copy link {}", src.display()))?;
        } else if kind.is_file() {
            remove_entry(&dst)?;
            copy_file_sparse(&src, &dst)
                .with_context(|| format!("failed to copy {} to {}", src.display(), dst.display()))?;
        }
        // Sockets, FIFOs and devices are not copied: a guest cannot make them
        // and reading one could block.
    }
    Ok(())
}

/// Removes a destination file or link (never following it) so the copy
/// creates a fresh one; a directory there is an error.
fn remove_entry(dst: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dst) {
        Ok(m) if m.is_dir() => bail!("refusing to replace the directory {} with a file", dst.display()),
        Ok(_) => std::fs::remove_file(dst).with_context(|| format!("failed to replace {}", dst.display())),
        Err(_) => Ok(()),
    }
}

/// Copies one regular file: opened without following a link, written to a
/// new file (`O_EXCL`), only the data segments copied, so a sparse file
/// stays sparse instead of being written out densely.
///
/// # Errors
/// When either file cannot be opened, read or written.
pub fn copy_file_sparse(src: &Path, dst: &Path) -> std::io::Result<()> {
    let mut input = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(src)?;
    let meta = input.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut output =
        OpenOptions::new().write(true).create_new(true).mode(0o644).custom_flags(libc::O_NOFOLLOW).open(dst)?;
    let len = meta.len();
    for (offset, size) in beneath::data_segments(&input, len)? {
        input.seek(SeekFrom::Start(offset))?;
        output.seek(SeekFrom::Start(offset))?;
        let copied = std::io::copy(&mut (&mut input).take(size), &mut output)?;
        if copied < size {
            // The file shrank while being copied: keep what was there.
            break;
        }
    }
    output.set_len(len)?;
    Ok(())
}
