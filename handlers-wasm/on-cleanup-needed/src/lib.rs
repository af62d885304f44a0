//! `on-cleanup-needed`: reports on the event archive when a
//! `system.cleanup_needed` event arrives. The host owns the archive: it
//! removes a day file once its last append is older than `[archive]
//! retention_days` (never by the date in the file's name, which is the
//! events' own date), so this handler has the archive read-only. It lists
//! `/events/archive/*.jsonl` and the days the host compressed
//! (`*.jsonl.zst`, counted from their seek index, never decompressed) —
//! events, bytes, and days since each file's last append — says which
//! files are past the retention the event or the
//! `retention_days` setting names, and records the run in
//! `/state/cleanup/last-run.json` and `history.json`.
//!
//! The retention may come as `retention_days` or `older_than_days`, a number
//! or its text; the accepted shape is the JSON Schema in `src/schema/`
//! (returned by `describe()`). Unknown fields are logged at warn level; an
//! unusable payload is refused as not retryable. Archive lines are read as
//! the host's archive record ([`ArchiveLine`]).

use cortex_sdk::state::{self, already_applied, duplicate_summary, keep_last, remember};
use cortex_sdk::time::{format_rfc3339, now_epoch_seconds};
use cortex_sdk::{Contract, Event, Handler, Leftover, Reader, Result, SCHEDULE_FIELDS, config_or};
use serde::{Deserialize, Serialize};
use std::path::Path;

const ARCHIVE: &str = "/events/archive";
const LAST_RUN: &str = "/state/cleanup/last-run.json";
const HISTORY: &str = "/state/cleanup/history.json";
/// Runs kept in the history.
const MAX_RUNS: usize = 100;
/// Longer retention than this keeps everything anyway; the cap keeps the
/// arithmetic far from overflow.
const MAX_RETENTION_DAYS: u64 = 1_000_000;

struct OnCleanupNeeded;

impl Handler for OnCleanupNeeded {
    const NAME: &'static str = "on-cleanup-needed";
    const EVENTS: &'static [&'static str] = &["system.cleanup_needed"];
    const CONTRACTS: &'static [Contract] =
        &[Contract { event_type: "system.cleanup_needed", schema: include_str!("schema/system.cleanup_needed.json") }];

    fn handle(event: Event) -> Result<String> {
        let mut history: History = state::load(HISTORY)?;
        if already_applied(&history.recent_event_ids, &event.id) {
            return Ok(duplicate_summary(&event.id));
        }
        let (retention_days, leftover) = retention(&event, config_or("retention_days", 30)?)?;
        leftover.warn();
        let now = now_epoch_seconds();
        let report = survey(Path::new(ARCHIVE), now, retention_days)?;
        let at = format_rfc3339(now).unwrap_or_default();
        let run = Run { at, event_id: event.id.clone(), retention_days, report };
        let summary = run.summary();
        state::save(LAST_RUN, &run)?;
        // The history keeps the counts; the file list is in last-run.json.
        history.runs.push(Run { report: Report { files: Vec::new(), ..run.report.clone() }, ..run });
        keep_last(&mut history.runs, MAX_RUNS);
        remember(&mut history.recent_event_ids, &event.id);
        state::save(HISTORY, &history)?;
        Ok(summary)
    }
}

cortex_sdk::handler!(OnCleanupNeeded);

/// The retention the event asks about: `payload.retention_days` (or
/// `older_than_days`), else the setting.
fn retention(event: &Event, default_retention: u64) -> Result<(u64, Leftover)> {
    let mut p = Reader::new(event);
    let days = p.u64(["retention_days", "older_than_days"])?.unwrap_or(default_retention).min(MAX_RETENTION_DAYS);
    // This handler never deletes (the host applies the retention), so every
    // run is a dry run; what the host's schedules add is accepted too.
    p.known("dry_run");
    p.known(SCHEDULE_FIELDS);
    Ok((days, p.finish()))
}

/// One run, as `/state/cleanup/last-run.json` and a history entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Run {
    at: String,
    event_id: String,
    retention_days: u64,
    #[serde(flatten)]
    report: Report,
}

impl Run {
    fn summary(&self) -> String {
        let r = &self.report;
        format!(
            "archive: {} files ({} events, {} bytes); {} files ({} events) past {} days since their last append, which the host removes",
            r.files_total, r.events_total, r.bytes_total, r.files_expired, r.events_expired, self.retention_days
        )
    }
}

/// `/state/cleanup/history.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct History {
    runs: Vec<Run>,
    recent_event_ids: Vec<String>,
}

/// What the archive holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Report {
    files_total: u64,
    events_total: u64,
    bytes_total: u64,
    /// Files whose last append is older than the retention.
    files_expired: u64,
    events_expired: u64,
    files: Vec<FileInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct FileInfo {
    name: String,
    events: u64,
    /// Non-blank lines that are not archive records (a torn last line).
    #[serde(default, skip_serializing_if = "is_zero")]
    unreadable: u64,
    bytes: u64,
    /// Whole days since the file's last append.
    idle_days: u64,
    expired: bool,
    /// A compressed day (`.jsonl.zst`): counted from its seek index.
    #[serde(default, skip_serializing_if = "is_false")]
    compressed: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One line of an archive day file, as the host writes it: the fields this
/// handler reads (the record has more).
#[derive(Debug, Deserialize)]
struct ArchiveLine {
    event: ArchivedEvent,
}

#[derive(Debug, Deserialize)]
struct ArchivedEvent {
    event_id: String,
}

/// Archive records and unreadable lines in a day file's text.
fn count_lines(text: &str) -> (u64, u64) {
    let (mut events, mut unreadable) = (0, 0);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<ArchiveLine>(line) {
            Ok(record) if !record.event.event_id.is_empty() => events += 1,
            _ => unreadable += 1,
        }
    }
    (events, unreadable)
}

/// A compressed day's totals, read from the seek index that ends it (the
/// host's format, `runtime/src/archive/index.rs`): the index frame's
/// length and magic are the last 16 bytes, its header (line and record
/// counts, the plain prefix it holds) opens the frame. Nothing is
/// decompressed, so a guest needs no zstd decoder for a report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct PackedTotals {
    lines: u64,
    records: u64,
    /// Bytes of the plain day file's start that this segment holds.
    covered_len: u64,
    covered_hash: u64,
}

const INDEX_MAGIC: &[u8; 8] = b"CXSEEK01";
const INDEX_VERSION: u32 = 1;

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from(le_u32(b, at)) | (u64::from(le_u32(b, at + 4)) << 32)
}

/// The totals of a compressed day from its last bytes.
fn packed_totals(path: &Path) -> Result<PackedTotals> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = || format!("{} has no seek index cortex wrote (cut short?)", path.display());
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| format!("cannot stat {}: {e}", path.display()))?.len();
    let mut footer = [0u8; 16];
    let mut read_at = |at: u64, buf: &mut [u8]| {
        f.seek(SeekFrom::Start(at)).and_then(|_| f.read_exact(buf)).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    if len < 16 {
        return Err(bad().into());
    }
    read_at(len - 16, &mut footer)?;
    let frame = u64::from(le_u32(&footer, 0));
    if &footer[4..12] != INDEX_MAGIC || le_u32(&footer, 12) != INDEX_VERSION || frame > len || frame < 76 {
        return Err(bad().into());
    }
    let mut head = [0u8; 60];
    read_at(len - frame, &mut head)?;
    if le_u32(&head, 8) != INDEX_VERSION {
        return Err(bad().into());
    }
    Ok(PackedTotals {
        covered_len: le_u64(&head, 12),
        covered_hash: le_u64(&head, 20),
        lines: le_u64(&head, 36),
        records: le_u64(&head, 44),
    })
}

/// FNV-1a 64, as the host hashes the plain prefix a segment holds.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h: u64, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Lists the archive's day files (read-only): plain `*.jsonl`, counted
/// line by line, and compressed `*.jsonl.zst`, counted from their seek
/// index. When a crash left a day in both forms, the plain file's lines
/// the compressed one already holds are not counted twice.
///
/// # Errors
/// When the archive cannot be listed or a file read.
fn survey(archive: &Path, now: i64, retention_days: u64) -> Result<Report> {
    let listing = std::fs::read_dir(archive).map_err(|e| format!("cannot list {}: {e}", archive.display()))?;
    let mut found = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", archive.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.metadata().map_err(|e| format!("cannot stat {name}: {e}"))?;
        if (name.ends_with(".jsonl") || name.ends_with(".jsonl.zst")) && meta.is_file() {
            let modified = meta
                .modified()
                .ok()
                .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(now, |d| d.as_secs() as i64);
            found.push((name, modified, meta.len()));
        }
    }
    // A day's compressed file sorts before its plain one.
    found.sort_by(|a, b| a.0.trim_end_matches(".zst").cmp(b.0.trim_end_matches(".zst")).then(b.0.len().cmp(&a.0.len())));
    let mut report = Report::default();
    let mut packed: Option<(String, PackedTotals)> = None;
    for (name, modified, bytes) in found {
        let path = archive.join(&name);
        let (events, unreadable, compressed) = if name.ends_with(".zst") {
            let totals = packed_totals(&path)?;
            packed = Some((name.trim_end_matches(".zst").to_string(), totals));
            (totals.records, totals.lines.saturating_sub(totals.records), true)
        } else {
            let text = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let skip = match &packed {
                Some((plain, t)) if *plain == name && t.covered_len > 0 && text.len() as u64 >= t.covered_len => {
                    let n = t.covered_len as usize;
                    if fnv1a(&text[..n]) == t.covered_hash { n } else { 0 }
                }
                _ => 0,
            };
            let (events, unreadable) = count_lines(&String::from_utf8_lossy(&text[skip..]));
            (events, unreadable, false)
        };
        let idle = now.saturating_sub(modified).max(0) as u64;
        let (idle_days, expired) = (idle / 86_400, idle > retention_days * 86_400);
        report.files_total += 1;
        report.events_total += events;
        report.bytes_total += bytes;
        if expired {
            report.files_expired += 1;
            report.events_expired += events;
        }
        report.files.push(FileInfo { name, events, unreadable, bytes, idle_days, expired, compressed });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cortex_sdk::{Value, json};
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime};

    /// A scratch archive directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("on-cleanup-needed-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        /// Writes a file last appended to `days_ago`.
        fn write(&self, name: &str, text: &str, days_ago: u64) {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            let at = SystemTime::now() - Duration::from_secs(days_ago * 86_400 + 60);
            std::fs::File::options().write(true).open(&path).unwrap().set_modified(at).unwrap();
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn line(id: &str) -> String {
        json!({"event": {"event_id": id}, "outcome": "ok"}).to_string() + "\n"
    }

    #[test]
    fn expiry_goes_by_last_append_not_by_the_name() {
        let s = Scratch::new("survey");
        // Named for a date long gone, but archived today: not expired.
        s.write("2020-01-01.jsonl", &(line("evt_1") + &line("evt_2")), 0);
        s.write("2025-11-01.jsonl", &line("evt_3"), 40);
        s.write("README.txt", "not an archive file", 400);
        std::fs::create_dir(s.0.join("2025-09-01.jsonl")).unwrap();

        let now = now_epoch_seconds();
        let r = survey(&s.0, now, 30).unwrap();
        assert_eq!((r.files_total, r.events_total), (2, 3));
        assert_eq!((r.files_expired, r.events_expired), (1, 1));
        let by_name = |n: &str| r.files.iter().find(|f| f.name == n).unwrap().clone();
        assert!(!by_name("2020-01-01.jsonl").expired);
        assert!(by_name("2025-11-01.jsonl").expired);
        assert_eq!(by_name("2025-11-01.jsonl").idle_days, 40);
        assert_eq!(std::fs::read_dir(&s.0).unwrap().count(), 4, "a survey changes nothing");
    }

    /// The last bytes of a compressed day as the host writes them (frames
    /// omitted: the report reads only the index).
    fn packed(lines: u64, records: u64, covered: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&0x184D_2A5Eu32.to_le_bytes());
        frame.extend_from_slice(&(52u32 + 16).to_le_bytes());
        frame.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        for v in [covered.len() as u64, fnv1a(covered), 0, lines, records] {
            frame.extend_from_slice(&v.to_le_bytes());
        }
        frame.extend_from_slice(&[0u8; 8]);
        frame.extend_from_slice(&(frame.len() as u32 + 16).to_le_bytes());
        frame.extend_from_slice(INDEX_MAGIC);
        frame.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        [b"frames".to_vec(), frame].concat()
    }

    #[test]
    fn compressed_days_count_from_their_index_and_a_leftover_plain_day_once() {
        let s = Scratch::new("packed");
        let first = line("evt_1") + &line("evt_2");
        std::fs::write(s.0.join("2025-11-01.jsonl.zst"), packed(3, 2, first.as_bytes())).unwrap();
        // A crash between writing the segment and removing the plain file,
        // then one more append: only that append is new.
        s.write("2025-11-01.jsonl", &(first.clone() + &line("evt_3")), 0);
        std::fs::write(s.0.join("2025-11-02.jsonl.zst"), b"not a segment at all").unwrap();
        let err = survey(&s.0, now_epoch_seconds(), 30).unwrap_err();
        assert!(err.message().contains("no seek index"), "{err}");
        std::fs::remove_file(s.0.join("2025-11-02.jsonl.zst")).unwrap();

        let r = survey(&s.0, now_epoch_seconds(), 30).unwrap();
        assert_eq!((r.files_total, r.events_total), (2, 3), "{r:?}");
        let zst = r.files.iter().find(|f| f.name == "2025-11-01.jsonl.zst").unwrap();
        assert!(zst.compressed && zst.events == 2 && zst.unreadable == 1);
        assert_eq!(r.files.iter().find(|f| f.name == "2025-11-01.jsonl").unwrap().events, 1);
    }

    fn cleanup(payload: Value) -> Event {
        let envelope = json!({"event_id": "evt_20251201_030000_cln001", "event_type": "system.cleanup_needed",
                              "timestamp": "2025-12-01T03:00:00Z", "source": "scheduler", "payload": payload});
        Event::from_envelope_json(&envelope.to_string()).unwrap()
    }

    #[test]
    fn payload_and_setting_defaults() {
        assert_eq!(retention(&cleanup(json!({})), 30).unwrap().0, 30);
        assert_eq!(retention(&cleanup(json!({"retention_days": 7, "dry_run": true})), 30).unwrap().0, 7);
        assert_eq!(retention(&cleanup(json!({"retention_days": "7"})), 30).unwrap().0, 7);
        assert_eq!(retention(&cleanup(json!({"older_than_days": 3})), 30).unwrap().0, 3);
        let scheduled = cleanup(json!({"schedule": "daily-cleanup", "tick": "2025-12-01T03:00:00+00:00", "missed": 2}));
        assert!(retention(&scheduled, 30).unwrap().1.ignored.is_empty());
        let (_, left) = retention(&cleanup(json!({"retention_days": 1, "mode": "compact"})), 30).unwrap();
        assert_eq!(left.ignored, ["mode"]);
        let err = retention(&cleanup(json!({"retention_days": "many"})), 30).unwrap_err();
        assert!(err.message().starts_with("payload.retention_days must be a non-negative whole number"), "{err}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn archive_lines_are_read_as_records() {
        let good = line("evt_1");
        let text = format!("{good}\n{{\"event\": {{}}}}\n{{\"torn\n{good}");
        assert_eq!(count_lines(&text), (2, 2));
        let seed = include_str!("../fixtures/cleanup-needed.seed/events/archive/2020-01-01.jsonl");
        assert_eq!(count_lines(seed), (3, 0));
    }

    #[test]
    fn the_contract_matches_the_parser() {
        let samples = [
            Event::from_envelope_json(include_str!("../fixtures/cleanup-dry-run.json")).unwrap(),
            cleanup(json!({"older_than_days": "7", "schedule": "s", "tick": "t", "missed": 1})),
        ];
        let read = |e: &Event| retention(e, 30).map(|(_, left)| left);
        cortex_sdk::contract::check(OnCleanupNeeded::CONTRACTS[0].schema, &samples, read).unwrap();
    }

    #[test]
    fn fixtures_parse() {
        let e = Event::from_envelope_json(include_str!("../fixtures/cleanup-needed.json")).unwrap();
        let (days, left) = retention(&e, 30).unwrap();
        assert_eq!((days, left.ignored), (30, vec!["mode".to_string()]));
        let e = Event::from_envelope_json(include_str!("../fixtures/cleanup-dry-run.json")).unwrap();
        assert_eq!(retention(&e, 30).unwrap().0, 14);
    }
}
