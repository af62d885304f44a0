//! What a handler may do to the filesystem under its grants in one
//! invocation: bytes added to files, new files, and files held open.
//!
//! wasmtime-wasi has no quota of its own, so `wasi:filesystem/types` is
//! linked through [`QuotaFs`], which forwards every call to wasmtime-wasi's
//! implementation and applies three caps:
//!
//! - `limits.write_bytes`: every write is charged the bytes it writes or the
//!   growth of the file, whichever is larger — `write` at an offset, the
//!   streams of `write-via-stream` (at their position) and
//!   `append-via-stream`, and `set-size` past the end — so a 1-byte write
//!   far past the end is charged for the hole it makes. Overwrites count
//!   too: the budget bounds the I/O an invocation does, not only the disk.
//! - `limits.max_new_files`: every file (`open-at` with `create` on a path
//!   that did not exist), directory, symlink and hard link made counts one.
//! - `limits.max_open_files`: descriptors from `open-at` and directory
//!   listings held at once (the grants' own handles are not counted), so a
//!   guest cannot exhaust the process's file descriptors.
//!
//! Past the first two the call fails with `insufficient-space` (ENOSPC, as a
//! full disk would) and the invocation, if it then fails, is reported as
//! `write-limit`; past the third, `open-at` fails with `quota` (WASI has no
//! EMFILE) and the invocation is reported as `fd-limit`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView};
use wasmtime_wasi::p2::bindings::filesystem::types::ErrorCode as AsyncErrorCode;
use wasmtime_wasi::p2::bindings::sync::filesystem::types as fs;
use wasmtime_wasi::p2::bindings::sync::io::streams;
use wasmtime_wasi::p2::{DynOutputStream, FsResult, OutputStream, Pollable, StreamError, StreamResult};

use crate::config::HandlerLimits;

/// Bytes one invocation may still add to files; shared with its streams.
#[derive(Clone)]
pub struct WriteBudget(Arc<Budget>);

struct Budget {
    limit: u64,
    used: AtomicU64,
    /// A charge was refused (`used` alone cannot tell: refusals add nothing).
    hit: AtomicBool,
}

impl WriteBudget {
    fn new(limit: u64) -> WriteBudget {
        WriteBudget(Arc::new(Budget { limit, used: AtomicU64::new(0), hit: AtomicBool::new(false) }))
    }

    /// Takes `n` bytes from the budget, or refuses and remembers that it did.
    fn charge(&self, n: u64) -> bool {
        let b = &self.0;
        let granted = b
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| used.checked_add(n).filter(|t| *t <= b.limit))
            .is_ok();
        if !granted {
            b.hit.store(true, Ordering::Relaxed);
        }
        granted
    }

    /// Gives back a charge for a write that did not happen.
    fn refund(&self, n: u64) {
        let _ = self.0.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| Some(used.saturating_sub(n)));
    }
}

/// The filesystem caps of one invocation.
pub struct Quota {
    bytes: WriteBudget,
    max_new_files: u64,
    new_files: u64,
    new_files_hit: bool,
    max_open_files: u64,
    /// Table handles of the descriptors and directory listings this
    /// invocation opened and has not dropped.
    open: HashSet<u32>,
    open_hit: bool,
}

impl Quota {
    pub fn new(limits: &HandlerLimits) -> Quota {
        Quota {
            bytes: WriteBudget::new(limits.write_bytes),
            max_new_files: limits.max_new_files,
            new_files: 0,
            new_files_hit: false,
            max_open_files: limits.max_open_files,
            open: HashSet::new(),
            open_hit: false,
        }
    }

    /// Whether a write was refused for `limits.write_bytes`.
    pub fn bytes_exceeded(&self) -> bool {
        self.bytes.0.hit.load(Ordering::Relaxed)
    }

    /// Whether a creation was refused for `limits.max_new_files`.
    pub fn new_files_exceeded(&self) -> bool {
        self.new_files_hit
    }

    /// Whether an open was refused for `limits.max_open_files`.
    pub fn open_files_exceeded(&self) -> bool {
        self.open_hit
    }

    /// Counts one new file, directory or link, or refuses.
    fn charge_new_file(&mut self) -> FsResult<()> {
        if self.new_files >= self.max_new_files {
            self.new_files_hit = true;
            return Err(no_space());
        }
        self.new_files += 1;
        Ok(())
    }

    /// Runs a call that may make a new directory entry, counting it first
    /// and giving the count back if the call fails.
    fn creating<T>(&mut self, create: impl FnOnce() -> FsResult<T>) -> FsResult<T> {
        self.charge_new_file()?;
        let made = create();
        if made.is_err() {
            self.new_files -= 1;
        }
        made
    }

    /// Refuses a new descriptor past `limits.max_open_files`.
    fn may_open(&mut self) -> FsResult<()> {
        if self.open.len() as u64 >= self.max_open_files {
            self.open_hit = true;
            return Err(AsyncErrorCode::Quota.into());
        }
        Ok(())
    }
}

/// `wasi:filesystem/types` with the caps applied.
pub struct QuotaFs<'a> {
    pub inner: WasiFilesystemCtxView<'a>,
    pub quota: &'a mut Quota,
}

/// The [`HasData`] marker that links [`QuotaFs`].
pub struct QuotaFsData;

impl HasData for QuotaFsData {
    type Data<'a> = QuotaFs<'a>;
}

fn no_space() -> wasmtime_wasi::p2::FsError {
    AsyncErrorCode::InsufficientSpace.into()
}

/// A borrow of the same descriptor, to use it twice in one call.
fn again(fd: &Resource<fs::Descriptor>) -> Resource<fs::Descriptor> {
    Resource::new_borrow(fd.rep())
}

/// What a write of `len` bytes at `offset` costs against a file of `size`
/// bytes: the bytes written or the growth, whichever is larger.
fn write_cost(size: u64, offset: u64, len: u64) -> u64 {
    len.max(offset.saturating_add(len).saturating_sub(size))
}

impl QuotaFs<'_> {
    /// The open file behind a descriptor (`None` for a directory).
    fn file_of(&self, fd: &Resource<fs::Descriptor>) -> FsResult<Option<Arc<std::fs::File>>> {
        Ok(match self.inner.table.get(fd)? {
            Descriptor::File(f) => Some(f.file.clone()),
            Descriptor::Dir(_) => None,
        })
    }

    /// Replaces a stream in the table with one that charges the budget.
    fn counted(
        &mut self,
        stream: Resource<streams::OutputStream>,
        file: Arc<std::fs::File>,
        position: Option<u64>,
    ) -> FsResult<Resource<streams::OutputStream>> {
        let table = &mut *self.inner.table;
        let trap =
            |e: wasmtime::component::ResourceTableError| wasmtime_wasi::p2::FsError::trap(wasmtime::Error::from(e));
        let inner: DynOutputStream = table.delete(stream).map_err(trap)?;
        let counted: DynOutputStream = Box::new(Counted { inner, budget: self.quota.bytes.clone(), file, position });
        table.push(counted).map_err(trap)
    }
}

impl fs::Host for QuotaFs<'_> {
    fn convert_error_code(&mut self, err: wasmtime_wasi::p2::FsError) -> wasmtime::Result<fs::ErrorCode> {
        fs::Host::convert_error_code(&mut self.inner, err)
    }

    fn filesystem_error_code(&mut self, err: Resource<streams::Error>) -> wasmtime::Result<Option<fs::ErrorCode>> {
        fs::Host::filesystem_error_code(&mut self.inner, err)
    }
}

impl fs::HostDescriptor for QuotaFs<'_> {
    fn write(&mut self, fd: Resource<fs::Descriptor>, buf: Vec<u8>, offset: fs::Filesize) -> FsResult<fs::Filesize> {
        let size = fs::HostDescriptor::stat(&mut self.inner, again(&fd))?.size;
        let cost = write_cost(size, offset, buf.len() as u64);
        if !self.quota.bytes.charge(cost) {
            return Err(no_space());
        }
        let written = fs::HostDescriptor::write(&mut self.inner, fd, buf, offset);
        if written.is_err() {
            self.quota.bytes.refund(cost);
        }
        written
    }

    fn set_size(&mut self, fd: Resource<fs::Descriptor>, size: fs::Filesize) -> FsResult<()> {
        let current = fs::HostDescriptor::stat(&mut self.inner, again(&fd))?.size;
        if size > current && !self.quota.bytes.charge(size - current) {
            return Err(no_space());
        }
        fs::HostDescriptor::set_size(&mut self.inner, fd, size)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<fs::Descriptor>,
        offset: fs::Filesize,
    ) -> FsResult<Resource<streams::OutputStream>> {
        let file = self.file_of(&fd)?;
        let stream = fs::HostDescriptor::write_via_stream(&mut self.inner, fd, offset)?;
        // wasmtime-wasi gives no stream of a directory, so `file` is `Some`.
        match file {
            Some(file) => self.counted(stream, file, Some(offset)),
            None => Err(AsyncErrorCode::IsDirectory.into()),
        }
    }

    fn append_via_stream(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<Resource<streams::OutputStream>> {
        let file = self.file_of(&fd)?;
        let stream = fs::HostDescriptor::append_via_stream(&mut self.inner, fd)?;
        match file {
            Some(file) => self.counted(stream, file, None),
            None => Err(AsyncErrorCode::IsDirectory.into()),
        }
    }

    // Everything else is wasmtime-wasi's, unchanged.

    fn advise(
        &mut self,
        fd: Resource<fs::Descriptor>,
        offset: fs::Filesize,
        len: fs::Filesize,
        advice: fs::Advice,
    ) -> FsResult<()> {
        fs::HostDescriptor::advise(&mut self.inner, fd, offset, len, advice)
    }
    fn sync_data(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<()> {
        fs::HostDescriptor::sync_data(&mut self.inner, fd)
    }
    fn get_flags(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<fs::DescriptorFlags> {
        fs::HostDescriptor::get_flags(&mut self.inner, fd)
    }
    fn get_type(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<fs::DescriptorType> {
        fs::HostDescriptor::get_type(&mut self.inner, fd)
    }
    fn set_times(
        &mut self,
        fd: Resource<fs::Descriptor>,
        atim: fs::NewTimestamp,
        mtim: fs::NewTimestamp,
    ) -> FsResult<()> {
        fs::HostDescriptor::set_times(&mut self.inner, fd, atim, mtim)
    }
    fn read(
        &mut self,
        fd: Resource<fs::Descriptor>,
        len: fs::Filesize,
        offset: fs::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        fs::HostDescriptor::read(&mut self.inner, fd, len, offset)
    }
    fn read_directory(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<Resource<fs::DirectoryEntryStream>> {
        // A listing holds every entry in host memory until it is dropped.
        self.quota.may_open()?;
        let listing = fs::HostDescriptor::read_directory(&mut self.inner, fd)?;
        self.quota.open.insert(listing.rep());
        Ok(listing)
    }
    fn sync(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<()> {
        fs::HostDescriptor::sync(&mut self.inner, fd)
    }
    fn create_directory_at(&mut self, fd: Resource<fs::Descriptor>, path: String) -> FsResult<()> {
        let inner = &mut self.inner;
        self.quota.creating(|| fs::HostDescriptor::create_directory_at(inner, fd, path))
    }
    fn stat(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<fs::DescriptorStat> {
        fs::HostDescriptor::stat(&mut self.inner, fd)
    }
    fn stat_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        flags: fs::PathFlags,
        path: String,
    ) -> FsResult<fs::DescriptorStat> {
        fs::HostDescriptor::stat_at(&mut self.inner, fd, flags, path)
    }
    fn set_times_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        flags: fs::PathFlags,
        path: String,
        atim: fs::NewTimestamp,
        mtim: fs::NewTimestamp,
    ) -> FsResult<()> {
        fs::HostDescriptor::set_times_at(&mut self.inner, fd, flags, path, atim, mtim)
    }
    fn link_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        old_flags: fs::PathFlags,
        old_path: String,
        new_fd: Resource<fs::Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        let inner = &mut self.inner;
        self.quota.creating(|| fs::HostDescriptor::link_at(inner, fd, old_flags, old_path, new_fd, new_path))
    }
    fn open_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        path_flags: fs::PathFlags,
        path: String,
        oflags: fs::OpenFlags,
        flags: fs::DescriptorFlags,
    ) -> FsResult<Resource<fs::Descriptor>> {
        self.quota.may_open()?;
        // A new file counts against max_new_files; an existing one does not.
        let creates = oflags.contains(fs::OpenFlags::CREATE)
            && fs::HostDescriptor::stat_at(&mut self.inner, again(&fd), path_flags, path.clone()).is_err();
        let inner = &mut self.inner;
        let opened = if creates {
            self.quota.creating(|| fs::HostDescriptor::open_at(inner, fd, path_flags, path, oflags, flags))?
        } else {
            fs::HostDescriptor::open_at(inner, fd, path_flags, path, oflags, flags)?
        };
        self.quota.open.insert(opened.rep());
        Ok(opened)
    }
    fn drop(&mut self, fd: Resource<fs::Descriptor>) -> wasmtime::Result<()> {
        let rep = fd.rep();
        fs::HostDescriptor::drop(&mut self.inner, fd)?;
        self.quota.open.remove(&rep);
        Ok(())
    }
    fn readlink_at(&mut self, fd: Resource<fs::Descriptor>, path: String) -> FsResult<String> {
        fs::HostDescriptor::readlink_at(&mut self.inner, fd, path)
    }
    fn remove_directory_at(&mut self, fd: Resource<fs::Descriptor>, path: String) -> FsResult<()> {
        fs::HostDescriptor::remove_directory_at(&mut self.inner, fd, path)
    }
    fn rename_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        old_path: String,
        new_fd: Resource<fs::Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        fs::HostDescriptor::rename_at(&mut self.inner, fd, old_path, new_fd, new_path)
    }
    fn symlink_at(&mut self, fd: Resource<fs::Descriptor>, old_path: String, new_path: String) -> FsResult<()> {
        let inner = &mut self.inner;
        self.quota.creating(|| fs::HostDescriptor::symlink_at(inner, fd, old_path, new_path))
    }
    fn unlink_file_at(&mut self, fd: Resource<fs::Descriptor>, path: String) -> FsResult<()> {
        fs::HostDescriptor::unlink_file_at(&mut self.inner, fd, path)
    }
    fn read_via_stream(
        &mut self,
        fd: Resource<fs::Descriptor>,
        offset: fs::Filesize,
    ) -> FsResult<Resource<streams::InputStream>> {
        fs::HostDescriptor::read_via_stream(&mut self.inner, fd, offset)
    }
    fn is_same_object(&mut self, a: Resource<fs::Descriptor>, b: Resource<fs::Descriptor>) -> wasmtime::Result<bool> {
        fs::HostDescriptor::is_same_object(&mut self.inner, a, b)
    }
    fn metadata_hash(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<fs::MetadataHashValue> {
        fs::HostDescriptor::metadata_hash(&mut self.inner, fd)
    }
    fn metadata_hash_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        flags: fs::PathFlags,
        path: String,
    ) -> FsResult<fs::MetadataHashValue> {
        fs::HostDescriptor::metadata_hash_at(&mut self.inner, fd, flags, path)
    }
}

impl fs::HostDirectoryEntryStream for QuotaFs<'_> {
    fn read_directory_entry(
        &mut self,
        stream: Resource<fs::DirectoryEntryStream>,
    ) -> FsResult<Option<fs::DirectoryEntry>> {
        fs::HostDirectoryEntryStream::read_directory_entry(&mut self.inner, stream)
    }
    fn drop(&mut self, stream: Resource<fs::DirectoryEntryStream>) -> wasmtime::Result<()> {
        let rep = stream.rep();
        fs::HostDirectoryEntryStream::drop(&mut self.inner, stream)?;
        self.quota.open.remove(&rep);
        Ok(())
    }
}

/// A file output stream that charges the budget before each write.
struct Counted {
    inner: DynOutputStream,
    budget: WriteBudget,
    /// The file written, to learn its size at each write.
    file: Arc<std::fs::File>,
    /// Where the next write goes; `None` for an append stream (always the end).
    position: Option<u64>,
}

#[wasmtime_wasi::async_trait]
impl Pollable for Counted {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Counted {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        let len = bytes.len() as u64;
        let cost = match self.position {
            // The stream's previous write has finished (wasmtime-wasi refuses
            // a write while one is pending), so the size is current. A file
            // whose size cannot be read is charged as if empty.
            Some(at) => write_cost(self.file.metadata().map_or(0, |m| m.len()), at, len),
            None => len,
        };
        if !self.budget.charge(cost) {
            return Err(StreamError::LastOperationFailed(wasmtime::Error::msg(format!(
                "write refused: it would take this invocation past {} bytes added to files (limits.write_bytes)",
                self.budget.0.limit
            ))));
        }
        match self.inner.write(bytes) {
            Ok(()) => {
                if let Some(at) = &mut self.position {
                    *at = at.saturating_add(len);
                }
                Ok(())
            }
            Err(e) => {
                self.budget.refund(cost);
                Err(e)
            }
        }
    }
    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }
}

#[cfg(test)]
mod tests {
    use super::write_cost;

    #[test]
    fn a_write_costs_its_bytes_or_the_growth_whichever_is_larger() {
        assert_eq!(write_cost(100, 0, 10), 10, "an overwrite");
        assert_eq!(write_cost(100, 100, 10), 10, "an append");
        assert_eq!(write_cost(100, 95, 10), 10, "partly past the end");
        assert_eq!(write_cost(0, 1 << 40, 1), (1 << 40) + 1, "one byte far past the end pays for the hole");
        assert_eq!(write_cost(0, u64::MAX, 10), u64::MAX, "no overflow");
    }
}
