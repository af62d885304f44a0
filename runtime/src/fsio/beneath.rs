//! Opening paths under the coordination root that a handler can write,
//! without ever following a symlink.
//!
//! A handler with a read-write grant can plant a symlink (or swap a
//! directory for one) anywhere inside its grant. Every host-side open of
//! such a path therefore walks it from a directory handle one component at
//! a time with `openat(O_NOFOLLOW)`, and `mkdirat` for missing directories,
//! so a planted link is an error naming it instead of a way out of the root.
//! Relative paths here are plain (`Normal` components only; `.` is skipped,
//! `..` and absolute paths are refused), so a walk can never leave the
//! directory it starts from.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use anyhow::{Context, Result, bail};

/// Whether [`open_dir`] creates missing directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    Yes,
    No,
}

fn cname(name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes()).with_context(|| format!("name {name:?} contains a NUL byte"))
}

fn openat(dir: &impl AsRawFd, name: &CString, flags: libc::c_int, mode: libc::mode_t) -> std::io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string, `dir` a live descriptor.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC, libc::c_uint::from(mode)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the root itself (a path the user gave; followed if it is a link).
///
/// # Errors
/// When it is missing or not a directory.
pub fn open_root(root: &Path) -> Result<File> {
    let c = CString::new(root.as_os_str().as_bytes())
        .with_context(|| format!("path {} contains a NUL byte", root.display()))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("failed to open directory {}", root.display()));
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Opens `rel` under `root` as a directory, refusing a symlink at any
/// component (and, with [`Create::Yes`], creating missing directories one
/// at a time, mode 0755).
///
/// # Errors
/// When `rel` is not a plain relative path, a component is a symlink or not
/// a directory (named in the message), or a directory cannot be created.
pub fn open_dir(root: &Path, rel: &Path, create: Create) -> Result<File> {
    let mut dir = open_root(root)?;
    let mut walked = root.to_path_buf();
    for c in rel.components() {
        let name = match c {
            Component::Normal(n) => n,
            Component::CurDir => continue,
            _ => bail!("{} is not a plain relative path under {}", rel.display(), root.display()),
        };
        walked.push(name);
        let c = cname(name)?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let next = match openat(&dir, &c, flags, 0) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create == Create::Yes => {
                // SAFETY: `c` is a valid NUL-terminated string, `dir` a live descriptor.
                let rc = unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755) };
                if rc != 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::AlreadyExists {
                        return Err(e).with_context(|| format!("failed to create {}", walked.display()));
                    }
                }
                openat(&dir, &c, flags, 0)
            }
            other => other,
        };
        dir = File::from(next.map_err(|e| refused(e, &walked))?);
    }
    Ok(dir)
}

/// An open error, with ELOOP/ENOTDIR (a symlink where a directory or file
/// was expected) named for what it is.
fn refused(e: std::io::Error, path: &Path) -> anyhow::Error {
    match e.raw_os_error() {
        Some(libc::ELOOP) => {
            let target = std::fs::read_link(path).map(|t| format!(" (-> {})", t.display())).unwrap_or_default();
            anyhow::anyhow!("refusing to follow the symlink {}{target}", path.display())
        }
        Some(libc::ENOTDIR) => match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(path).map(|t| format!(" (-> {})", t.display())).unwrap_or_default();
                anyhow::anyhow!("refusing to follow the symlink {}{target}", path.display())
            }
            _ => anyhow::anyhow!("{} is not a directory", path.display()),
        },
        _ => anyhow::Error::new(e).context(format!("failed to open {}", path.display())),
    }
}

/// Whether an open failed because the last component is a symlink.
pub fn is_symlink_error(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

/// Opens `name` in `dir` for appending (created 0644 if missing), refusing a
/// symlink and anything but a regular file.
///
/// # Errors
/// An `ELOOP` error for a symlink (see [`is_symlink_error`]), else the open error.
pub fn open_append(dir: &File, name: &str) -> std::io::Result<File> {
    let c = CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // O_NONBLOCK: a FIFO planted here must not hang the host on open.
    let flags = libc::O_RDWR | libc::O_APPEND | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let f = File::from(openat(dir, &c, flags, 0o644)?);
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other(format!("{name} is not a regular file")));
    }
    Ok(f)
}

/// Opens `name` in `dir` for reading, refusing a symlink and anything but
/// a regular file.
///
/// # Errors
/// An `ELOOP` error for a symlink (see [`is_symlink_error`]), else the open error.
pub fn open_read(dir: &File, name: &str) -> std::io::Result<File> {
    let c = CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // O_NONBLOCK: a FIFO planted here must not hang the host on open.
    let f = File::from(openat(dir, &c, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0)?);
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other(format!("{name} is not a regular file")));
    }
    Ok(f)
}

/// Creates (or truncates) `name` in `dir` for writing, mode 0644, refusing
/// a symlink in its place.
///
/// # Errors
/// An `ELOOP` error for a symlink (see [`is_symlink_error`]), else the open error.
pub fn open_truncate(dir: &File, name: &str) -> std::io::Result<File> {
    let c = CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let f = File::from(openat(dir, &c, flags, 0o644)?);
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other(format!("{name} is not a regular file")));
    }
    Ok(f)
}

/// Renames `from` to `to` within `dir` (replacing `to`; a link at either
/// name is moved or replaced as a link, never followed).
///
/// # Errors
/// When the rename fails.
pub fn rename(dir: &File, from: &str, to: &str) -> std::io::Result<()> {
    let bad = |_| std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let (f, t) = (CString::new(from).map_err(bad)?, CString::new(to).map_err(bad)?);
    // SAFETY: both names are valid NUL-terminated strings, `dir` a live descriptor.
    if unsafe { libc::renameat(dir.as_raw_fd(), f.as_ptr(), dir.as_raw_fd(), t.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Removes the entry `name` of `dir` (a file or a symlink, never followed).
///
/// # Errors
/// When it cannot be removed.
pub fn unlink(dir: &File, name: &str) -> std::io::Result<()> {
    let c = CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated string, `dir` a live descriptor.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The `/proc/self/fd/N` path of an open descriptor: a name for exactly the
/// directory that was opened, for APIs that only take a path (opening it
/// resolves to that inode whatever happens to the original path meanwhile).
pub fn proc_path(f: &File) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

/// Appends whole lines to an open file with one `write`; starts on a fresh
/// line when the last one was torn by a crash (see `fsio::append_lines`).
///
/// # Errors
/// When the file cannot be read, written or synced.
pub fn append_to(f: &mut File, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let len = f.metadata()?.len();
    let mut out = Vec::with_capacity(bytes.len() + 1);
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1))?;
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            out.push(b'\n');
        }
    }
    out.extend_from_slice(bytes);
    f.write_all(&out)?;
    if sync {
        f.sync_data()?;
    }
    Ok(())
}

/// The data segments of a file as `(offset, length)` (`SEEK_DATA`/
/// `SEEK_HOLE`): a sparse file's holes are skipped, a dense file is one
/// segment. A filesystem without them reports the whole file as data.
///
/// # Errors
/// When seeking fails for another reason.
pub fn data_segments(f: &File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut at: i64 = 0;
    let end = i64::try_from(len).unwrap_or(i64::MAX);
    while at < end {
        // SAFETY: lseek on a live descriptor has no memory effects.
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // No data past `at`: the rest is a hole.
                Some(libc::ENXIO) => break,
                Some(libc::EINVAL) if at == 0 => return Ok(vec![(0, len)]),
                _ => return Err(e),
            }
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { end } else { hole.min(end) };
        if hole > data {
            out.push((data as u64, (hole - data) as u64));
        }
        at = hole.max(data + 1);
    }
    Ok(out)
}
