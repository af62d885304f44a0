//! The archive as its readers see it: the ONE place that knows how an
//! archive day is stored. A day (`events/archive/YYYY-MM-DD`) is a
//! [`Segment`] of up to two files: the plain JSONL the dispatcher appends
//! to (`.jsonl`) and the compressed segment the host rewrote it into once
//! it was old (`.jsonl.zst`, see [`pack`] and [`index`]). Replay, trace,
//! export, the idempotency check and recovery all read days through
//! [`Archive::lines`] (every line once) or [`Archive::lines_naming`] (only
//! the frames that may hold some event ids), so a compressed day and a
//! plain one read alike.
//!
//! Both files of a day may exist: a back-dated event archived after its day
//! was compressed starts a new plain file, and a crash between writing the
//! compressed segment and removing the plain file leaves both. The segment
//! records the plain prefix it holds ([`index::Covered`]); a reader skips
//! that prefix when the plain file still starts with it, so every line is
//! read once, compressed lines first.
//!
//! Every file is opened relative to a handle on the archive directory,
//! opened from the root without following a link, and with `O_NOFOLLOW`:
//! a link a handler planted (it may hold a read-only grant here) is never
//! read through. Read-only: writing is [`pack`]'s and the queue's.

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};

use crate::fsio::beneath;
use crate::layout::Layout;

pub mod index;
pub mod pack;

use index::{Covered, FOOTER_LEN, HEADER_LEN, Header, SeekIndex};

/// The suffix of a plain day file.
pub const PLAIN: &str = ".jsonl";
/// The suffix of a compressed day.
pub const PACKED: &str = ".jsonl.zst";

/// A line reader over one segment.
pub type Lines = Box<dyn BufRead>;

/// The archive directory, opened without following links.
#[derive(Debug)]
pub struct Archive {
    dir: File,
    path: PathBuf,
}

/// One file of a segment.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    /// Its size on disk.
    pub bytes: u64,
    /// Its last append (a compressed day keeps the time of its plain file's).
    pub modified: SystemTime,
}

/// One day (or compacted month, or `undated`): its plain and compressed
/// files, at least one of them present.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The name without its suffix: `2025-12-01`, `2025-12.compact`, `undated`.
    pub stem: String,
    pub plain: Option<Part>,
    pub packed: Option<Part>,
    /// Bytes of JSONL it holds (a compressed part counted uncompressed).
    pub content_bytes: u64,
}

impl Segment {
    /// The files it is stored in, for messages.
    pub fn names(&self) -> String {
        [&self.packed, &self.plain].into_iter().flatten().map(|p| p.name.as_str()).collect::<Vec<_>>().join(" + ")
    }

    /// The latest last append of its files.
    pub fn modified(&self) -> SystemTime {
        [&self.packed, &self.plain].into_iter().flatten().map(|p| p.modified).max().unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

impl Archive {
    /// Opens `events/archive` under the layout's root; `None` when it does
    /// not exist yet.
    ///
    /// # Errors
    /// When a component is a symlink or cannot be opened.
    pub fn open(layout: &Layout) -> Result<Option<Archive>> {
        if std::fs::symlink_metadata(layout.archive()).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
            return Ok(None);
        }
        let dir = beneath::open_dir(layout.root(), Layout::archive_rel(), beneath::Create::No)?;
        Ok(Some(Archive { dir, path: layout.archive() }))
    }

    /// The directory's handle, for writers in this module.
    pub(crate) fn handle(&self) -> &File {
        &self.dir
    }

    /// The archive's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every segment, in name order (days in date order). Entries that are
    /// not regular files (a planted link, a directory) are left out.
    ///
    /// # Errors
    /// When the directory cannot be listed.
    pub fn segments(&self) -> Result<Vec<Segment>> {
        let rd = std::fs::read_dir(beneath::proc_path(&self.dir))
            .with_context(|| format!("failed to list the archive {}", self.path.display()))?;
        let mut by_stem: std::collections::BTreeMap<String, Segment> = Default::default();
        for entry in rd {
            let entry = entry.with_context(|| format!("failed to list the archive {}", self.path.display()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            let (stem, packed) = match (name.strip_suffix(PACKED), name.strip_suffix(PLAIN)) {
                (Some(stem), _) => (stem.to_string(), true),
                (None, Some(stem)) => (stem.to_string(), false),
                _ => continue,
            };
            // DirEntry::metadata does not follow a symlink.
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() || stem.starts_with('.') {
                continue;
            }
            let part = Part { name, bytes: meta.len(), modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH) };
            let seg =
                by_stem.entry(stem.clone()).or_insert(Segment { stem, plain: None, packed: None, content_bytes: 0 });
            if packed {
                // The header's plain size; an unreadable segment fails when read.
                seg.content_bytes += self.header(&part.name).map_or(part.bytes, |h| h.plain_bytes);
                seg.packed = Some(part);
            } else {
                seg.content_bytes += part.bytes;
                seg.plain = Some(part);
            }
        }
        Ok(by_stem.into_values().collect())
    }

    /// The segment of one stem (`2025-12-01`), if either file exists.
    ///
    /// # Errors
    /// When the directory cannot be listed.
    pub fn segment(&self, stem: &str) -> Result<Option<Segment>> {
        Ok(self.segments()?.into_iter().find(|s| s.stem == stem))
    }

    /// Every line of a segment once: the compressed lines, then the plain
    /// file's lines past the prefix the compressed part holds. A file
    /// removed since it was listed reads as empty.
    ///
    /// # Errors
    /// When a file cannot be opened or its seek index read.
    pub fn lines(&self, seg: &Segment) -> Result<Lines> {
        let (packed, covered): (Box<dyn Read>, _) = match &seg.packed {
            Some(p) => match self.open_file(&p.name)? {
                Some(f) => {
                    let (header, index_at) = self.header_of(&f, &p.name)?;
                    let frames = f.take(index_at);
                    let decoder = zstd::stream::read::Decoder::new(frames)
                        .with_context(|| format!("failed to start decompressing {}", self.show(&p.name)))?;
                    (Box::new(Named { inner: decoder, what: self.show(&p.name) }), Some(header.covered))
                }
                None => (Box::new(std::io::empty()), None),
            },
            None => (Box::new(std::io::empty()), None),
        };
        let plain = self.plain_rest(seg, covered)?;
        Ok(Box::new(BufReader::with_capacity(1 << 20, packed.chain(plain))))
    }

    /// The lines of a segment that may name one of `ids`: of a compressed
    /// part only the frames its seek index maps those ids to (one frame per
    /// id, typically), then the plain part's lines (all of them). Callers
    /// still check each line.
    ///
    /// # Errors
    /// When a file cannot be opened, or its index or a frame read.
    pub fn lines_naming(&self, seg: &Segment, ids: &[&str]) -> Result<Lines> {
        let mut found = Vec::new();
        let mut covered = None;
        if let Some(p) = &seg.packed
            && let Some(f) = self.open_file(&p.name)?
        {
            let index = self.index_of(&f, &p.name)?;
            covered = Some(index.header.covered);
            let mut frames: Vec<u32> = ids.iter().flat_map(|id| index.frames_for(id)).collect();
            frames.sort_unstable();
            frames.dedup();
            for n in frames {
                let frame = index.frames[n as usize];
                let mut stored = vec![0u8; frame.stored as usize];
                f.read_exact_at(&mut stored, frame.offset)
                    .with_context(|| format!("failed to read frame {n} of {}", self.show(&p.name)))?;
                let plain = zstd::bulk::decompress(&stored, frame.plain as usize)
                    .with_context(|| format!("failed to decompress frame {n} of {}", self.show(&p.name)))?;
                found.extend_from_slice(&plain);
            }
        }
        let plain = self.plain_rest(seg, covered)?;
        Ok(Box::new(BufReader::new(Cursor::new(found).chain(plain))))
    }

    /// The seek index of a compressed part.
    ///
    /// # Errors
    /// When it cannot be opened or has no readable index.
    pub fn index(&self, name: &str) -> Result<Option<SeekIndex>> {
        match self.open_file(name)? {
            Some(f) => self.index_of(&f, name).map(Some),
            None => Ok(None),
        }
    }

    /// The plain file of a segment, opened past `covered` when it starts
    /// with exactly the bytes the compressed part holds; else from its start.
    fn plain_rest(&self, seg: &Segment, covered: Option<Covered>) -> Result<Box<dyn Read>> {
        let Some(p) = &seg.plain else { return Ok(Box::new(std::io::empty())) };
        let Some(mut f) = self.open_file(&p.name)? else { return Ok(Box::new(std::io::empty())) };
        if let Some(c) = covered.filter(|c| c.len > 0)
            && f.metadata().is_ok_and(|m| m.len() >= c.len)
        {
            let mut prefix = Vec::with_capacity(c.len as usize);
            (&mut f)
                .take(c.len)
                .read_to_end(&mut prefix)
                .with_context(|| format!("failed to read {}", self.show(&p.name)))?;
            if index::fnv1a(&prefix) != c.hash {
                f.seek(SeekFrom::Start(0)).with_context(|| format!("failed to read {}", self.show(&p.name)))?;
            }
        }
        Ok(Box::new(Named { inner: f, what: self.show(&p.name) }))
    }

    /// Opens a file of the archive without following a link; `None` when
    /// it was removed since it was listed.
    fn open_file(&self, name: &str) -> Result<Option<File>> {
        match beneath::open_read(&self.dir, name) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if beneath::is_symlink_error(&e) => {
                Err(e).with_context(|| format!("refusing to read {}: it is a symlink", self.show(name)))
            }
            Err(e) => Err(e).with_context(|| format!("failed to open archive file {}", self.show(name))),
        }
    }

    fn header(&self, name: &str) -> Result<Header> {
        let f = self.open_file(name)?.with_context(|| format!("{} was removed", self.show(name)))?;
        Ok(self.header_of(&f, name)?.0)
    }

    /// The header of a compressed part and where its index frame starts.
    fn header_of(&self, f: &File, name: &str) -> Result<(Header, u64)> {
        let at = self.index_at(f, name)?;
        let mut head = [0u8; 8 + HEADER_LEN];
        f.read_exact_at(&mut head, at)
            .with_context(|| format!("failed to read the seek index of {}", self.show(name)))?;
        let header = Header::decode(&head).with_context(|| self.unreadable(name))?;
        Ok((header, at))
    }

    fn index_of(&self, f: &File, name: &str) -> Result<SeekIndex> {
        let at = self.index_at(f, name)?;
        let len = f.metadata().with_context(|| format!("failed to stat {}", self.show(name)))?.len();
        let mut frame = vec![0u8; (len - at) as usize];
        f.read_exact_at(&mut frame, at)
            .with_context(|| format!("failed to read the seek index of {}", self.show(name)))?;
        SeekIndex::decode(&frame).with_context(|| self.unreadable(name))
    }

    /// Where the index frame of a compressed part starts, from its footer.
    fn index_at(&self, f: &File, name: &str) -> Result<u64> {
        let len = f.metadata().with_context(|| format!("failed to stat {}", self.show(name)))?.len();
        let mut footer = [0u8; FOOTER_LEN];
        if len < FOOTER_LEN as u64 {
            anyhow::bail!("{}", self.unreadable(name));
        }
        f.read_exact_at(&mut footer, len - FOOTER_LEN as u64)
            .with_context(|| format!("failed to read the seek index of {}", self.show(name)))?;
        let frame = index::frame_len(&footer).with_context(|| self.unreadable(name))?;
        anyhow::ensure!(frame <= len && frame as usize >= 8 + HEADER_LEN + FOOTER_LEN, "{}", self.unreadable(name));
        Ok(len - frame)
    }

    fn unreadable(&self, name: &str) -> String {
        format!(
            "{} is not a compressed archive day cortex can read (cut short or not written by cortex); inspect it with `zstd -dc`, or move it out of the archive",
            self.show(name)
        )
    }

    fn show(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }
}

/// A reader whose errors name the file they came from.
struct Named<R> {
    inner: R,
    what: String,
}

impl<R: Read> Read for Named<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", self.what)))
    }
}
