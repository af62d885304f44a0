//! `on-cleanup-needed`: enforces the archive's retention period. On a
//! `system.cleanup_needed` event it finds the day files
//! `/events/archive/YYYY-MM-DD.jsonl` older than today (UTC, wall clock) minus
//! the retention days and either removes them or compacts them — the events
//! alone, deduplicated, appended to `/events/archive/YYYY-MM.compact.jsonl` —
//! then records the run in `/state/cleanup/last-run.json` and `history.json`.

use cortex_sdk::fields::{opt_bool, opt_str, opt_u64};
use cortex_sdk::{Event, Handler, Map, Result, Value, config_or, state};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;

const ARCHIVE: &str = "/events/archive";
const LAST_RUN: &str = "/state/cleanup/last-run.json";
const HISTORY: &str = "/state/cleanup/history.json";
/// Runs kept in the history.
const MAX_RUNS: usize = 100;
/// Longer retention than this keeps everything anyway; the cap keeps the
/// date arithmetic far from overflow.
const MAX_RETENTION_DAYS: u64 = 1_000_000;

struct OnCleanupNeeded;

impl Handler for OnCleanupNeeded {
    const NAME: &'static str = "on-cleanup-needed";
    const EVENTS: &'static [&'static str] = &["system.cleanup_needed"];

    fn handle(event: Event) -> Result<String> {
        let mut history: History = state::load(HISTORY)?;
        if cortex_sdk::already_applied(&history.recent_event_ids, &event.id) {
            return Ok(cortex_sdk::duplicate_summary(&event.id));
        }
        let request = Request::from_payload(&event.payload, config_or("retention_days", 30)?)?;
        let now = cortex_sdk::now_epoch_seconds();
        let report = clean(Path::new(ARCHIVE), now.div_euclid(86_400), &request)?;
        let run = Run {
            at: cortex_sdk::format_rfc3339(now),
            event_id: event.id.clone(),
            mode: request.mode.name().into(),
            dry_run: request.dry_run,
            retention_days: request.retention_days,
            report,
        };
        let summary = run.summary();
        state::save(LAST_RUN, &run)?;
        // The history keeps the counts; the file list is in last-run.json.
        history.runs.push(Run { report: Report { files: Vec::new(), ..run.report.clone() }, ..run });
        cortex_sdk::keep_last(&mut history.runs, MAX_RUNS);
        cortex_sdk::remember(&mut history.recent_event_ids, &event.id);
        state::save(HISTORY, &history)?;
        Ok(summary)
    }
}

cortex_sdk::handler!(OnCleanupNeeded);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Remove,
    Compact,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Remove => "remove",
            Mode::Compact => "compact",
        }
    }
}

/// What the event asks for.
#[derive(Debug, PartialEq)]
struct Request {
    retention_days: u64,
    dry_run: bool,
    mode: Mode,
}

impl Request {
    fn from_payload(p: &Map<String, Value>, default_retention: u64) -> Result<Request> {
        let mode = match opt_str(p, "mode")?.as_deref() {
            None | Some("remove") => Mode::Remove,
            Some("compact") => Mode::Compact,
            Some(other) => return Err(format!("payload.mode {other:?} is not \"remove\" or \"compact\"")),
        };
        Ok(Request {
            retention_days: opt_u64(p, "retention_days")?.unwrap_or(default_retention).min(MAX_RETENTION_DAYS),
            dry_run: opt_bool(p, "dry_run")?.unwrap_or(false),
            mode,
        })
    }
}

/// One run, as `/state/cleanup/last-run.json` and a history entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Run {
    at: String,
    event_id: String,
    mode: String,
    dry_run: bool,
    retention_days: u64,
    #[serde(flatten)]
    report: Report,
}

impl Run {
    fn summary(&self) -> String {
        let r = &self.report;
        let prefix = if self.dry_run { "dry run: would have " } else { "" };
        let acted = match self.mode.as_str() {
            "compact" => format!("compacted {} day files ({} events kept)", r.files_compacted, r.events_compacted),
            _ => format!("removed {} day files ({} events)", r.files_removed, r.events_removed),
        };
        let skipped =
            if r.files_skipped > 0 { format!(", skipped {} unreadable", r.files_skipped) } else { String::new() };
        format!(
            "{prefix}{acted} dated before {} (retention {} days), {} bytes freed{skipped}",
            r.cutoff, self.retention_days, r.bytes_freed
        )
    }
}

/// `/state/cleanup/history.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct History {
    runs: Vec<Run>,
    recent_event_ids: Vec<String>,
}

/// What a cleanup did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Report {
    /// Day files dated before this (YYYY-MM-DD) are expired.
    cutoff: String,
    files_removed: u64,
    files_compacted: u64,
    files_skipped: u64,
    /// Events dropped: all of a removed file's, duplicates of a compacted one's.
    events_removed: u64,
    events_compacted: u64,
    /// Bytes of the day files minus bytes appended to compact files.
    bytes_freed: u64,
    files: Vec<FileAction>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct FileAction {
    name: String,
    /// "remove", "compact" or "skip".
    action: String,
    events: u64,
    bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    into: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// The day (since the epoch) of a `YYYY-MM-DD.jsonl` file name.
fn day_file(name: &str) -> Option<i64> {
    let date = name.strip_suffix(".jsonl")?;
    let b = date.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| {
        date[r.clone()].bytes().all(|c| c.is_ascii_digit()).then(|| date[r].parse::<i64>().ok()).flatten()
    };
    let (y, m, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let day = cortex_sdk::days_from_civil(y, m, d);
    // Round-tripping rejects dates like 2025-02-30.
    (cortex_sdk::civil_from_days(day) == (y, m, d)).then_some(day)
}

fn date_of(day: i64) -> String {
    let (y, m, d) = cortex_sdk::civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Removes or compacts the expired day files of `archive`.
///
/// # Errors
/// When the archive cannot be listed, or a file cannot be read, written or removed.
fn clean(archive: &Path, today: i64, request: &Request) -> Result<Report> {
    let cutoff = today - request.retention_days as i64;
    let listing = std::fs::read_dir(archive).map_err(|e| format!("cannot list {}: {e}", archive.display()))?;
    let mut expired = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", archive.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if let Some(day) = day_file(&name).filter(|&day| is_file && day < cutoff) {
            expired.push((name, day));
        }
    }
    expired.sort();

    let mut report = Report { cutoff: date_of(cutoff), ..Report::default() };
    let mut bytes_in = 0u64;
    let mut bytes_out = 0u64;
    // Event ids already in each month's compact file, loaded on first use.
    let mut compacted: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for (name, _) in expired {
        let path = archive.join(&name);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let bytes = text.len() as u64;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        match request.mode {
            Mode::Remove => {
                if !request.dry_run {
                    remove(&path)?;
                }
                report.files_removed += 1;
                report.events_removed += lines.len() as u64;
                bytes_in += bytes;
                report.files.push(FileAction::new(&name, "remove", lines.len() as u64, bytes));
            }
            Mode::Compact => {
                let events = match archived_events(&lines) {
                    Ok(events) => events,
                    Err(reason) => {
                        // Never delete what cannot be carried over.
                        report.files_skipped += 1;
                        let mut skip = FileAction::new(&name, "skip", lines.len() as u64, bytes);
                        skip.reason = Some(reason);
                        report.files.push(skip);
                        continue;
                    }
                };
                let target = format!("{}.compact.jsonl", &name[..7]);
                let target_path = archive.join(&target);
                let seen = match compacted.entry(target.clone()) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => e.insert(compact_ids(&target_path)?),
                };
                let mut out = String::new();
                let mut kept = 0u64;
                for (id, event) in &events {
                    if id.as_ref().is_none_or(|id| seen.insert(id.clone())) {
                        out.push_str(event);
                        out.push('\n');
                        kept += 1;
                    }
                }
                if !request.dry_run {
                    append(&target_path, &out)?;
                    remove(&path)?;
                }
                report.files_compacted += 1;
                report.events_compacted += kept;
                report.events_removed += events.len() as u64 - kept;
                bytes_in += bytes;
                bytes_out += out.len() as u64;
                let mut action = FileAction::new(&name, "compact", events.len() as u64, bytes);
                action.into = Some(target);
                report.files.push(action);
            }
        }
    }
    report.bytes_freed = bytes_in.saturating_sub(bytes_out);
    Ok(report)
}

impl FileAction {
    fn new(name: &str, action: &str, events: u64, bytes: u64) -> FileAction {
        FileAction { name: name.into(), action: action.into(), events, bytes, into: None, reason: None }
    }
}

/// The `event` of each archive line, as one line of JSON, with its id.
///
/// # Errors
/// Naming the first line that is not `{"event": {...}, ...}`.
fn archived_events(lines: &[&str]) -> Result<Vec<(Option<String>, String)>> {
    lines
        .iter()
        .enumerate()
        .map(|(n, line)| {
            let record: Value = serde_json::from_str(line).map_err(|e| format!("line {} is not JSON: {e}", n + 1))?;
            match record.get("event") {
                Some(event @ Value::Object(fields)) => {
                    let id = fields.get("event_id").and_then(Value::as_str).map(str::to_string);
                    Ok((id, event.to_string()))
                }
                _ => Err(format!("line {} has no \"event\" object", n + 1)),
            }
        })
        .collect()
}

/// Event ids already in a compact file (none when it does not exist yet);
/// re-running after a crash between append and removal then adds nothing twice.
fn compact_ids(path: &Path) -> Result<HashSet<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    // A torn last line (a crash mid-append) is skipped, not fatal.
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("event_id").and_then(Value::as_str).map(str::to_string))
        .collect())
}

fn append(path: &Path, lines: &str) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // Start on a fresh line if an earlier append was torn.
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let torn = len > 0 && !std::fs::read(path).is_ok_and(|b| b.ends_with(b"\n"));
    let text = if torn { format!("\n{lines}") } else { lines.to_string() };
    file.write_all(text.as_bytes()).map_err(|e| format!("cannot append to {}: {e}", path.display()))?;
    // Durable before the day file goes.
    file.sync_all().map_err(|e| format!("cannot flush {}: {e}", path.display()))
}

fn remove(path: &Path) -> Result<()> {
    std::fs::remove_file(path).map_err(|e| format!("cannot remove {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cortex_sdk::json;
    use std::path::PathBuf;

    /// A scratch archive directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("on-cleanup-needed-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.0.join(name), text).unwrap();
        }

        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> =
                std::fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
            names.sort();
            names
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn line(id: &str) -> String {
        json!({"event": {"event_id": id, "event_type": "task.created", "timestamp": "2025-10-01T00:00:00Z",
                         "source": "s", "payload": {}}, "outcome": "ok"})
        .to_string()
            + "\n"
    }

    /// 2025-12-01.
    fn today() -> i64 {
        cortex_sdk::days_from_civil(2025, 12, 1)
    }

    fn request(mode: Mode, dry_run: bool) -> Request {
        Request { retention_days: 30, dry_run, mode }
    }

    #[test]
    fn day_file_names() {
        assert_eq!(day_file("2025-10-31.jsonl"), Some(cortex_sdk::days_from_civil(2025, 10, 31)));
        for bad in [
            "2025-02-30.jsonl",
            "2025-13-01.jsonl",
            "2025-10.compact.jsonl",
            "2025-10-31.json",
            "notes.jsonl",
            "+025-10-31.jsonl",
        ] {
            assert_eq!(day_file(bad), None, "{bad}");
        }
    }

    #[test]
    fn payload_and_setting_defaults() {
        let empty = Map::new();
        assert_eq!(Request::from_payload(&empty, 30).unwrap(), request(Mode::Remove, false));
        let p = json!({"retention_days": 7, "dry_run": true, "mode": "compact"});
        let r = Request::from_payload(p.as_object().unwrap(), 30).unwrap();
        assert_eq!((r.retention_days, r.dry_run, r.mode), (7, true, Mode::Compact));
        let p = json!({"mode": "shred"});
        assert!(Request::from_payload(p.as_object().unwrap(), 30).unwrap_err().contains("payload.mode"));
        let p = json!({"dry_run": "yes"});
        assert!(Request::from_payload(p.as_object().unwrap(), 30).unwrap_err().contains("payload.dry_run"));
    }

    #[test]
    fn remove_deletes_only_expired_day_files() {
        let s = Scratch::new("remove");
        s.write("2025-10-31.jsonl", &(line("evt_1") + &line("evt_2")));
        s.write("2025-11-01.jsonl", &line("evt_3"));
        s.write("2025-10.compact.jsonl", &line("evt_0"));
        s.write("README.txt", "not an archive file");
        std::fs::create_dir(s.0.join("2025-09-01")).unwrap();

        let dry = clean(&s.0, today(), &request(Mode::Remove, true)).unwrap();
        assert_eq!((dry.files_removed, dry.events_removed), (1, 2));
        assert_eq!(s.names().len(), 5, "a dry run changes nothing");

        let r = clean(&s.0, today(), &request(Mode::Remove, false)).unwrap();
        assert_eq!(r, dry);
        assert_eq!(r.cutoff, "2025-11-01");
        assert!(r.bytes_freed > 0);
        assert_eq!(s.names(), ["2025-09-01", "2025-10.compact.jsonl", "2025-11-01.jsonl", "README.txt"]);
    }

    #[test]
    fn compact_keeps_each_event_once_per_month() {
        let s = Scratch::new("compact");
        s.write("2025-09-30.jsonl", &line("evt_9"));
        s.write("2025-10-01.jsonl", &(line("evt_1") + &line("evt_2")));
        s.write("2025-10-02.jsonl", &(line("evt_2") + &line("evt_3")));
        s.write("2025-10-03.jsonl", &(line("evt_4") + "not json\n"));
        s.write("2025-10.compact.jsonl", &(json!({"event_id": "evt_1"}).to_string() + "\n"));

        let r = clean(&s.0, today(), &request(Mode::Compact, false)).unwrap();
        assert_eq!((r.files_compacted, r.files_skipped), (3, 1));
        assert_eq!((r.events_compacted, r.events_removed), (3, 2));
        assert_eq!(s.names(), ["2025-09.compact.jsonl", "2025-10-03.jsonl", "2025-10.compact.jsonl"]);
        let october = std::fs::read_to_string(s.0.join("2025-10.compact.jsonl")).unwrap();
        let ids: Vec<String> = october
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["event_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["evt_1", "evt_2", "evt_3"]);
        assert!(!october.contains("outcome"), "only the events are kept");
        let skipped = r.files.iter().find(|f| f.action == "skip").unwrap();
        assert!(skipped.reason.as_deref().unwrap().contains("line 2"));
    }

    #[test]
    fn fixtures_parse() {
        let e = Event::from_envelope_json(include_str!("../fixtures/cleanup-needed.json")).unwrap();
        let r = Request::from_payload(&e.payload, 30).unwrap();
        assert_eq!(r.mode, Mode::Compact);
        let e = Event::from_envelope_json(include_str!("../fixtures/cleanup-dry-run.json")).unwrap();
        assert_eq!(
            Request::from_payload(&e.payload, 30).unwrap(),
            Request { retention_days: 14, dry_run: true, mode: Mode::Remove }
        );
    }
}
