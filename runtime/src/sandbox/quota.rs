//! A write budget on a handler's filesystem grants.
//!
//! wasmtime-wasi has no quota of its own, so `wasi:filesystem/types` is
//! linked through [`QuotaFs`], which forwards every call to wasmtime-wasi's
//! implementation and counts what can grow a file: `write`, the streams of
//! `write-via-stream` / `append-via-stream`, and `set-size` past the end.
//! Past `limits.write_bytes` in one invocation the write is refused with
//! `insufficient-space` (ENOSPC to the guest) and the invocation is reported
//! as `write-limit`, so a handler cannot fill its grant (and the disk).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::filesystem::WasiFilesystemCtxView;
use wasmtime_wasi::p2::bindings::filesystem::types::ErrorCode as AsyncErrorCode;
use wasmtime_wasi::p2::bindings::sync::filesystem::types as fs;
use wasmtime_wasi::p2::bindings::sync::io::streams;
use wasmtime_wasi::p2::{DynOutputStream, FsResult, OutputStream, Pollable, StreamError, StreamResult};

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
    pub fn new(limit: u64) -> WriteBudget {
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

    /// Whether a write was refused for the budget in this invocation.
    pub fn exceeded(&self) -> bool {
        self.0.hit.load(Ordering::Relaxed)
    }
}

/// `wasi:filesystem/types` with the budget applied.
pub struct QuotaFs<'a> {
    pub inner: WasiFilesystemCtxView<'a>,
    pub budget: WriteBudget,
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

impl QuotaFs<'_> {
    /// Replaces a stream in the table with one that charges the budget.
    fn counted(&mut self, stream: Resource<streams::OutputStream>) -> FsResult<Resource<streams::OutputStream>> {
        let table = &mut *self.inner.table;
        let trap =
            |e: wasmtime::component::ResourceTableError| wasmtime_wasi::p2::FsError::trap(wasmtime::Error::from(e));
        let inner: DynOutputStream = table.delete(stream).map_err(trap)?;
        let counted: DynOutputStream = Box::new(Counted { inner, budget: self.budget.clone() });
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
        if !self.budget.charge(buf.len() as u64) {
            return Err(no_space());
        }
        fs::HostDescriptor::write(&mut self.inner, fd, buf, offset)
    }

    fn set_size(&mut self, fd: Resource<fs::Descriptor>, size: fs::Filesize) -> FsResult<()> {
        let current = fs::HostDescriptor::stat(&mut self.inner, again(&fd))?.size;
        if size > current && !self.budget.charge(size - current) {
            return Err(no_space());
        }
        fs::HostDescriptor::set_size(&mut self.inner, fd, size)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<fs::Descriptor>,
        offset: fs::Filesize,
    ) -> FsResult<Resource<streams::OutputStream>> {
        let stream = fs::HostDescriptor::write_via_stream(&mut self.inner, fd, offset)?;
        self.counted(stream)
    }

    fn append_via_stream(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<Resource<streams::OutputStream>> {
        let stream = fs::HostDescriptor::append_via_stream(&mut self.inner, fd)?;
        self.counted(stream)
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
        fs::HostDescriptor::read_directory(&mut self.inner, fd)
    }
    fn sync(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<()> {
        fs::HostDescriptor::sync(&mut self.inner, fd)
    }
    fn create_directory_at(&mut self, fd: Resource<fs::Descriptor>, path: String) -> FsResult<()> {
        fs::HostDescriptor::create_directory_at(&mut self.inner, fd, path)
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
        fs::HostDescriptor::link_at(&mut self.inner, fd, old_flags, old_path, new_fd, new_path)
    }
    fn open_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        path_flags: fs::PathFlags,
        path: String,
        oflags: fs::OpenFlags,
        flags: fs::DescriptorFlags,
    ) -> FsResult<Resource<fs::Descriptor>> {
        fs::HostDescriptor::open_at(&mut self.inner, fd, path_flags, path, oflags, flags)
    }
    fn drop(&mut self, fd: Resource<fs::Descriptor>) -> wasmtime::Result<()> {
        fs::HostDescriptor::drop(&mut self.inner, fd)
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
        fs::HostDescriptor::symlink_at(&mut self.inner, fd, old_path, new_path)
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
        fs::HostDirectoryEntryStream::drop(&mut self.inner, stream)
    }
}

/// A file output stream that charges the budget before each write.
struct Counted {
    inner: DynOutputStream,
    budget: WriteBudget,
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
        if !self.budget.charge(bytes.len() as u64) {
            return Err(StreamError::LastOperationFailed(wasmtime::Error::msg(format!(
                "write refused: this invocation already wrote {} bytes to files, the limit (limits.write_bytes)",
                self.budget.0.limit
            ))));
        }
        self.inner.write(bytes)
    }
    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }
}
