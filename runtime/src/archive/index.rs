//! The seek index of a compressed archive day (`YYYY-MM-DD.jsonl.zst`).
//!
//! A compressed day is a run of independent zstd frames, each holding whole
//! lines (a few hundred KiB of them), followed by one zstd *skippable*
//! frame holding this index. Any zstd decoder (`zstd -d`, Python's
//! `zstandard`) skips that frame and yields the plain JSONL; Cortex reads
//! it to find the frames that may hold an event id, so `replay --event-id`
//! decompresses one frame instead of the day.
//!
//! Layout of the skippable frame (all integers little-endian):
//! ```text
//! u32 0x184D2A5E (skippable magic)  u32 data length
//! header: u32 version, u64 covered_len, u64 covered_hash, u64 plain_bytes,
//!         u64 lines, u64 records, u32 frame count, u32 id count
//! frames: u64 offset, u32 stored bytes, u32 plain bytes, u32 lines   (each)
//! ids:    u64 FNV-1a hash of an event id, u32 frame number (sorted)
//! footer: u32 length of the whole skippable frame, "CXSEEK01", u32 version
//! ```
//! The footer ends the file, so a reader finds the index from the end.
//! `covered_len`/`covered_hash` say which prefix of the plain day file this
//! segment already holds: when a crash left both files, a reader skips that
//! prefix of the plain file instead of counting its lines twice.

use anyhow::{Result, bail, ensure};

/// The magic of the zstd skippable frame that holds the index.
pub const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
/// The magic in the footer that ends a compressed day.
pub const FOOTER_MAGIC: &[u8; 8] = b"CXSEEK01";
/// The index format version.
pub const VERSION: u32 = 1;
/// Bytes of the footer.
pub const FOOTER_LEN: usize = 16;
/// Bytes of the header after the skippable frame's 8-byte header.
pub const HEADER_LEN: usize = 4 + 8 * 5 + 4 + 4;
const FRAME_LEN: usize = 8 + 4 * 3;
const ID_LEN: usize = 8 + 4;

/// One zstd frame of whole lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Where the frame starts in the file.
    pub offset: u64,
    /// Its compressed size.
    pub stored: u32,
    /// The size of the lines it holds.
    pub plain: u32,
    pub lines: u32,
}

/// The prefix of a plain day file a compressed segment holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Covered {
    pub len: u64,
    pub hash: u64,
}

/// The totals of a compressed day, readable without the frame and id tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub covered: Covered,
    /// Bytes of the plain JSONL the frames hold.
    pub plain_bytes: u64,
    pub lines: u64,
    /// Lines that name an event id (archive records).
    pub records: u64,
    pub frames: u32,
    pub ids: u32,
}

/// A compressed day's whole index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeekIndex {
    pub header: Header,
    pub frames: Vec<Frame>,
    /// (hash of an event id, frame number), sorted.
    pub ids: Vec<(u64, u32)>,
}

/// FNV-1a, 64 bits: a stable hash (the index outlives any process), cheap
/// enough for the covered prefix of a plain file.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The event ids a line names: every `"event_id": "…"` in it. An archive
/// record names its event's id first and may name others (its trigger);
/// indexing them all only costs a frame read on a false hit, while missing
/// the line's own id would hide the event.
pub fn ids_in(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    const KEY: &[u8] = b"\"event_id\"";
    let mut at = 0;
    std::iter::from_fn(move || {
        while let Some(pos) = find(&line[at..], KEY) {
            let mut i = at + pos + KEY.len();
            at = i;
            while line.get(i).is_some_and(u8::is_ascii_whitespace) {
                i += 1;
            }
            if line.get(i) != Some(&b':') {
                continue;
            }
            i += 1;
            while line.get(i).is_some_and(u8::is_ascii_whitespace) {
                i += 1;
            }
            if line.get(i) != Some(&b'"') {
                continue;
            }
            let start = i + 1;
            let Some(len) = line[start..].iter().position(|&b| b == b'"' || b == b'\\') else { continue };
            at = start + len;
            return Some(&line[start..start + len]);
        }
        None
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl SeekIndex {
    /// The frames that may hold a line naming `id`, in file order.
    pub fn frames_for(&self, id: &str) -> Vec<u32> {
        let h = fnv1a(id.as_bytes());
        let start = self.ids.partition_point(|&(x, _)| x < h);
        let mut out: Vec<u32> = self.ids[start..].iter().take_while(|&&(x, _)| x == h).map(|&(_, f)| f).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The whole skippable frame (header, tables, footer) to end a file with.
    pub fn encode(&self) -> Vec<u8> {
        let data_len = HEADER_LEN + FRAME_LEN * self.frames.len() + ID_LEN * self.ids.len() + FOOTER_LEN;
        let mut out = Vec::with_capacity(8 + data_len);
        out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        out.extend_from_slice(&(data_len as u32).to_le_bytes());
        let h = &self.header;
        out.extend_from_slice(&VERSION.to_le_bytes());
        for v in [h.covered.len, h.covered.hash, h.plain_bytes, h.lines, h.records] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.frames.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.ids.len() as u32).to_le_bytes());
        for f in &self.frames {
            out.extend_from_slice(&f.offset.to_le_bytes());
            for v in [f.stored, f.plain, f.lines] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        for &(hash, frame) in &self.ids {
            out.extend_from_slice(&hash.to_le_bytes());
            out.extend_from_slice(&frame.to_le_bytes());
        }
        out.extend_from_slice(&((8 + data_len) as u32).to_le_bytes());
        out.extend_from_slice(FOOTER_MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out
    }

    /// Parses the whole skippable frame (as [`SeekIndex::encode`] wrote it).
    ///
    /// # Errors
    /// When it is not an index of this version, or is cut short.
    pub fn decode(frame: &[u8]) -> Result<SeekIndex> {
        let header = Header::decode(frame)?;
        let mut r = Cursor { bytes: frame, at: 8 + HEADER_LEN };
        let mut frames = Vec::with_capacity(header.frames as usize);
        for _ in 0..header.frames {
            frames.push(Frame { offset: r.u64()?, stored: r.u32()?, plain: r.u32()?, lines: r.u32()? });
        }
        let mut ids = Vec::with_capacity(header.ids as usize);
        for _ in 0..header.ids {
            let (hash, frame) = (r.u64()?, r.u32()?);
            ensure!(frame < header.frames, "the seek index names frame {frame} of {}", header.frames);
            ids.push((hash, frame));
        }
        ensure!(ids.is_sorted(), "the seek index's id table is not sorted");
        Ok(SeekIndex { header, frames, ids })
    }
}

impl Header {
    /// Parses the start of the skippable frame (at least `8 + HEADER_LEN` bytes).
    ///
    /// # Errors
    /// When it is not an index of this version, or is cut short.
    pub fn decode(frame: &[u8]) -> Result<Header> {
        let mut r = Cursor { bytes: frame, at: 0 };
        ensure!(r.u32()? == SKIPPABLE_MAGIC, "not a seek index frame");
        let _len = r.u32()?;
        let version = r.u32()?;
        if version != VERSION {
            bail!("seek index version {version} (this cortex reads version {VERSION})");
        }
        let covered = Covered { len: r.u64()?, hash: r.u64()? };
        Ok(Header {
            covered,
            plain_bytes: r.u64()?,
            lines: r.u64()?,
            records: r.u64()?,
            frames: r.u32()?,
            ids: r.u32()?,
        })
    }
}

/// The length of the index frame a file ends with, from its footer.
///
/// # Errors
/// When the footer is not there (not a compressed day, or cut short).
pub fn frame_len(footer: &[u8; FOOTER_LEN]) -> Result<u64> {
    ensure!(&footer[4..12] == FOOTER_MAGIC, "no seek index at the end (not written by cortex, or cut short)");
    let version = u32::from_le_bytes([footer[12], footer[13], footer[14], footer[15]]);
    ensure!(version == VERSION, "seek index version {version} (this cortex reads version {VERSION})");
    Ok(u64::from(u32::from_le_bytes([footer[0], footer[1], footer[2], footer[3]])))
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let Some(b) = self.bytes.get(self.at..self.at + N) else { bail!("the seek index is cut short") };
        self.at += N;
        // The slice has exactly N bytes (checked by get above).
        Ok(b.try_into().unwrap_or([0; N]))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> SeekIndex {
        let mut ids = vec![(fnv1a(b"evt_a"), 0), (fnv1a(b"evt_b"), 1), (fnv1a(b"evt_a"), 2), (fnv1a(b"evt_c"), 2)];
        ids.sort_unstable();
        SeekIndex {
            header: Header {
                covered: Covered { len: 300, hash: 7 },
                plain_bytes: 300,
                lines: 4,
                records: 4,
                frames: 3,
                ids: 4,
            },
            frames: vec![
                Frame { offset: 0, stored: 50, plain: 100, lines: 1 },
                Frame { offset: 50, stored: 40, plain: 100, lines: 1 },
                Frame { offset: 90, stored: 60, plain: 100, lines: 2 },
            ],
            ids,
        }
    }

    #[test]
    fn an_index_round_trips_and_ends_with_its_footer() {
        let idx = index();
        let bytes = idx.encode();
        assert_eq!(SeekIndex::decode(&bytes).unwrap(), idx);
        let footer: [u8; FOOTER_LEN] = bytes[bytes.len() - FOOTER_LEN..].try_into().unwrap();
        assert_eq!(frame_len(&footer).unwrap(), bytes.len() as u64);
        assert_eq!(Header::decode(&bytes[..8 + HEADER_LEN]).unwrap(), idx.header);
        assert!(SeekIndex::decode(&bytes[..bytes.len() / 2]).is_err(), "cut short");
        let mut other = bytes.clone();
        other[8] = 9;
        assert!(format!("{:#}", SeekIndex::decode(&other).unwrap_err()).contains("version 9"));
    }

    #[test]
    fn an_id_maps_to_every_frame_that_names_it_and_nothing_else() {
        let idx = index();
        assert_eq!(idx.frames_for("evt_a"), [0, 2]);
        assert_eq!(idx.frames_for("evt_b"), [1]);
        assert_eq!(idx.frames_for("evt_c"), [2]);
        assert!(idx.frames_for("evt_zzz").is_empty());
    }

    #[test]
    fn every_event_id_a_line_names_is_found() {
        let line = br#"{"event":{"event_id":"evt_1","x":{"event_id" : "evt_2"}},"caused_by":{"event_id":"evt_3"},"y":"event_id"}"#;
        let ids: Vec<&[u8]> = ids_in(line).collect();
        assert_eq!(ids, [&b"evt_1"[..], b"evt_2", b"evt_3"]);
        assert_eq!(ids_in(br#"{"event_id":"#).count(), 0, "a torn line names nothing");
        assert_eq!(ids_in(br#"{"event_id":7}"#).count(), 0);
    }

    #[test]
    fn a_foreign_footer_is_refused() {
        let mut footer = [0u8; FOOTER_LEN];
        footer[4..12].copy_from_slice(b"NOTCORTX");
        assert!(frame_len(&footer).is_err());
    }
}
