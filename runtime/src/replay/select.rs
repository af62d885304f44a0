//! Selection: the archive's files a filter can match, read in chunks,
//! each event once in its latest copy; or the dead-letter queue.
//!
//! Every selected event is validated as a producer's would be: an archive
//! or dead-letter file may have been edited or forged since the host wrote
//! it, and a replayed event goes back into the queue (whose file names
//! hold its id) and the handlers. An invalid one is refused, with its file
//! and line, and never selected.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::{Datelike, Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::{Filter, Origin, Progress};
use crate::archive::Segment;
use crate::event::{Event, Validator};
use crate::store::{ArchiveRead, Store};

/// Bytes read from an archive file at a time.
const CHUNK: usize = 4 << 20;

/// A line of an archive file that could not be read, or held an event
/// that is not valid (`refused`).
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub file: PathBuf,
    /// The line number, when the whole file was read line by line.
    pub line: Option<usize>,
    pub offset: u64,
    pub why: String,
    /// Read, but not a valid event: refused rather than torn.
    pub refused: bool,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.refused { "refused" } else { "skipped" };
        // The reason quotes what the line holds: escaped for the terminal.
        let why = crate::text::Escaped(&self.why);
        match self.line {
            Some(n) => write!(f, "{}:{n}: {what}: {why}", self.file.display()),
            None if self.refused => write!(f, "{}: {what}: {why}", self.file.display()),
            None => write!(f, "{} at byte {}: {what}: {why}", self.file.display(), self.offset),
        }
    }
}

/// An event as a producer's would be checked, or why it is refused.
fn revalidate(validator: &Validator, e: Event) -> std::result::Result<Event, String> {
    let value = serde_json::to_value(&e).map_err(|err| format!("does not serialize: {err}"))?;
    validator.validate(value).map_err(|invalid| format!("not a valid event: {invalid}"))
}

/// The events a filter selected, and how they were found.
#[derive(Debug, Default)]
pub struct Selection {
    /// In archive order, each event once, in its latest copy.
    pub events: Vec<Event>,
    pub files_read: Vec<PathBuf>,
    /// Whether every archive file had to be read.
    pub full_scan: bool,
    pub skipped: Vec<Skipped>,
}

/// What an archive file covers, from its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Span {
    /// `YYYY-MM.compact.jsonl` (holds the first of the month): bare events.
    Month(NaiveDate),
    /// `YYYY-MM-DD.jsonl`: archive records.
    Day(NaiveDate),
    /// Any other `.jsonl` (e.g. `undated.jsonl`).
    Undated,
}

#[derive(Debug, Clone)]
struct ArchiveFile {
    span: Span,
    /// Its plain and compressed files, read as one (see [`crate::archive`]).
    seg: Segment,
    /// The path named in reports: the compressed file when there is one.
    path: PathBuf,
    /// Bytes of JSONL it holds, for the progress meter.
    size: u64,
}

/// The archive's days and compacted months, compact ones first, then days
/// in order: a later copy of an event comes later.
fn archive_files(archive: Option<&dyn ArchiveRead>) -> Result<Vec<ArchiveFile>> {
    let Some(archive) = archive else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for seg in archive.segments()? {
        let span = if let Some(month) = seg.stem.strip_suffix(".compact") {
            match NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d") {
                Ok(d) => Span::Month(d),
                Err(_) => Span::Undated,
            }
        } else {
            NaiveDate::parse_from_str(&seg.stem, "%Y-%m-%d").map_or(Span::Undated, Span::Day)
        };
        let path = PathBuf::from(archive.describe(&seg));
        out.push(ArchiveFile { span, path, size: seg.content_bytes, seg });
    }
    out.sort_by(|a, b| (&a.span, &a.path).cmp(&(&b.span, &b.path)));
    Ok(out)
}

/// Events in first-seen order, each id once, keeping its latest copy.
#[derive(Default)]
struct Collector {
    events: Vec<Event>,
    index: HashMap<String, usize>,
}

impl Collector {
    fn push(&mut self, e: Event) {
        match self.index.get(&e.event_id) {
            Some(&i) => self.events[i] = e,
            None => {
                self.index.insert(e.event_id.clone(), self.events.len());
                self.events.push(e);
            }
        }
    }
}

/// A day-file line: the archive record, of which replay needs the event.
#[derive(Deserialize)]
struct RecordLine {
    event: Event,
}

fn parse_line(line: &str, compact: bool) -> std::result::Result<Event, String> {
    let record = || serde_json::from_str::<RecordLine>(line).map(|r| r.event);
    let bare = || serde_json::from_str::<Event>(line);
    let first = if compact { bare() } else { record() };
    // A file may hold the other kind of line too.
    first.or_else(|e| {
        if compact { record() } else { bare() }.map_err(|_| format!("not an archive record or an event: {e}"))
    })
}

/// Takes each event read; `Err` refuses it, saying why.
type Sink<'s> = dyn FnMut(Event) -> std::result::Result<(), String> + 's;

/// Reads one archive file in chunks, handing each event to `sink`. With a
/// `needle` (an event id), only lines containing it are parsed, and only
/// the event with that id is handed on.
struct Scanner<'a> {
    skipped: Vec<Skipped>,
    files_read: Vec<PathBuf>,
    done_bytes: u64,
    total_bytes: u64,
    progress: Progress<'a>,
}

impl Scanner<'_> {
    fn scan(
        &mut self,
        archive: Option<&dyn ArchiveRead>,
        file: &ArchiveFile,
        needle: Option<&str>,
        sink: &mut Sink,
    ) -> Result<()> {
        let Some(archive) = archive else { return Ok(()) };
        let path = &file.path;
        let compact = matches!(file.span, Span::Month(_));
        // A file removed by the retention since it was listed reads as empty.
        let mut f = match needle {
            Some(id) => archive.lines_naming(&file.seg, &[id])?,
            None => archive.lines(&file.seg)?,
        };
        self.files_read.push(path.clone());
        let mut buf = vec![0u8; CHUNK];
        let (mut filled, mut offset, mut line_no) = (0usize, 0u64, 0usize);
        loop {
            if filled == buf.len() {
                // A line longer than the buffer.
                buf.resize(buf.len() * 2, 0);
            }
            let n = f
                .read(&mut buf[filled..])
                .with_context(|| format!("failed to read archive file {}", path.display()))?;
            if n == 0 {
                if buf[..filled].iter().any(|b| !b.is_ascii_whitespace()) {
                    self.skipped.push(Skipped {
                        file: path.clone(),
                        line: needle.is_none().then_some(line_no + 1),
                        offset,
                        why: "partial last line (cut by a crash?)".into(),
                        refused: false,
                    });
                }
                return Ok(());
            }
            filled += n;
            self.done_bytes += n as u64;
            (self.progress)("reading the archive", self.done_bytes, self.total_bytes);
            let Some(end) = buf[..filled].iter().rposition(|&b| b == b'\n') else { continue };
            self.lines(path, &buf[..=end], offset, &mut line_no, compact, needle, sink);
            buf.copy_within(end + 1..filled, 0);
            offset += (end + 1) as u64;
            filled -= end + 1;
        }
    }

    /// Whole lines of a file, starting at byte `offset`.
    #[allow(clippy::too_many_arguments)]
    fn lines(
        &mut self,
        path: &Path,
        region: &[u8],
        offset: u64,
        line_no: &mut usize,
        compact: bool,
        needle: Option<&str>,
        sink: &mut Sink,
    ) {
        let mut handle = |this: &mut Self, line: std::result::Result<&str, String>, at: u64, n: usize| {
            let (why, refused) = match line {
                Ok(line) => {
                    let line = line.trim_end();
                    if line.is_empty() || needle.is_some_and(|id| !line.contains(id)) {
                        return;
                    }
                    match parse_line(line, compact) {
                        Ok(e) if needle.is_none_or(|id| e.event_id == id) => match sink(e) {
                            Ok(()) => return,
                            Err(why) => (why, true),
                        },
                        Ok(_) => return,
                        Err(why) => (why, false),
                    }
                }
                Err(why) => (why, false),
            };
            this.skipped.push(Skipped {
                file: path.to_path_buf(),
                line: needle.is_none().then_some(n),
                offset: at,
                why,
                refused,
            });
        };
        match std::str::from_utf8(region) {
            // The common case: one UTF-8 check and one substring search
            // for the whole chunk, so a chunk without the id costs no more.
            Ok(text) => {
                if needle.is_some_and(|id| !text.contains(id)) {
                    return;
                }
                let mut at = offset;
                for line in text.split_inclusive('\n') {
                    *line_no += 1;
                    handle(self, Ok(line), at, *line_no);
                    at += line.len() as u64;
                }
            }
            Err(_) => {
                let mut at = offset;
                for raw in region.split_inclusive(|&b| b == b'\n') {
                    *line_no += 1;
                    let line = std::str::from_utf8(raw).map_err(|e| format!("not UTF-8: {e}"));
                    handle(self, line, at, *line_no);
                    at += raw.len() as u64;
                }
            }
        }
    }
}

/// The date an event id carries (`evt_YYYYMMDD_…`).
fn id_date(id: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(id.get(4..12)?, "%Y%m%d").ok()
}

/// Selects the events a filter matches.
///
/// # Errors
/// When `--event-id` names an event that is not there (saying where it
/// is, if it is queued or dead-lettered), or it does not match the other
/// filters; when the archive or the dead-letter queue cannot be read.
/// Events `validator` refuses are not errors: they are listed in
/// [`Selection::skipped`] as refused.
pub fn select(
    store: &dyn Store,
    filter: &Filter,
    origin: Origin,
    validator: &Validator,
    progress: Progress,
) -> Result<Selection> {
    if origin == Origin::DeadLetters {
        let listing = store.dead_letters()?;
        let mut c = Collector::default();
        let mut skipped = Vec::new();
        for l in listing.letters {
            if let Some(e) = l.record.event.filter(|e| filter.matches(e)) {
                match revalidate(validator, e) {
                    Ok(e) => c.push(e),
                    Err(why) => skipped.push(Skipped { file: l.path, line: None, offset: 0, why, refused: true }),
                }
            }
        }
        if let Some(id) = &filter.event_id
            && c.events.is_empty()
        {
            if let Some(refused) = skipped.first() {
                bail!("event {id} cannot be replayed: {refused}");
            }
            bail!(
                "event {id} is not in the dead-letter queue{}; see `cortex dlq list`",
                if filter.describe().contains(' ') { " (or does not match the other filters)" } else { "" }
            );
        }
        return Ok(Selection {
            events: c.events,
            files_read: vec![PathBuf::from(format!("the dead letters of {}", store.describe()))],
            skipped,
            ..Selection::default()
        });
    }

    let archive = store.archive()?;
    let archive = archive.as_deref();
    let files = archive_files(archive)?;
    let mut scanner = Scanner { skipped: Vec::new(), files_read: Vec::new(), done_bytes: 0, total_bytes: 0, progress };
    let mut c = Collector::default();
    let mut full_scan = false;
    match &filter.event_id {
        Some(id) => {
            let mut found: Option<Event> = None;
            let mut read = vec![false; files.len()];
            let mut scan = |scanner: &mut Scanner, mut picks: Vec<usize>, found: &mut Option<Event>| -> Result<()> {
                picks.retain(|&i| !read[i]);
                scanner.total_bytes += picks.iter().map(|&i| files[i].size).sum::<u64>();
                for i in picks {
                    read[i] = true;
                    scanner.scan(archive, &files[i], Some(id), &mut |e| {
                        *found = Some(revalidate(validator, e)?);
                        Ok(())
                    })?;
                }
                Ok(())
            };
            // Its day and the days around it (the id is stamped in the
            // producer's time zone, the archive file in the event's), one
            // at a time: all copies of an event share its day file.
            let days: Vec<NaiveDate> = id_date(id)
                .map(|d| [Some(d), d.pred_opt(), d.succ_opt()].into_iter().flatten().collect())
                .unwrap_or_default();
            for d in &days {
                if found.is_none() {
                    let picks = files.iter().position(|f| f.span == Span::Day(*d)).into_iter().collect();
                    scan(&mut scanner, picks, &mut found)?;
                }
            }
            // Then those months' compact files, then everything else.
            if found.is_none() {
                let months: BTreeSet<Span> = days.iter().filter_map(|d| d.with_day(1)).map(Span::Month).collect();
                let picks =
                    files.iter().enumerate().filter(|(_, f)| months.contains(&f.span)).map(|(i, _)| i).collect();
                scan(&mut scanner, picks, &mut found)?;
            }
            if found.is_none() {
                full_scan = true;
                scan(&mut scanner, (0..files.len()).collect(), &mut found)?;
            }
            match found {
                None => {
                    if let Some(refused) = scanner.skipped.iter().find(|s| s.refused) {
                        bail!("event {id} cannot be replayed: {refused}");
                    }
                    return Err(not_found(store, id, scanner.files_read.len()));
                }
                Some(e) if !filter.matches(&e) => bail!(
                    "event {id} is archived ({} {} at {}) but does not match the other filters ({}); drop them to select it",
                    e.event_type,
                    e.source,
                    e.timestamp,
                    filter.describe()
                ),
                Some(e) => c.push(e),
            }
        }
        None => {
            let picks: Vec<&ArchiveFile> = files.iter().filter(|f| filter.may_hold(&f.span)).collect();
            full_scan = picks.len() == files.len();
            scanner.total_bytes = picks.iter().map(|f| f.size).sum();
            for f in picks {
                scanner.scan(archive, f, None, &mut |e| {
                    if filter.matches(&e) {
                        c.push(revalidate(validator, e)?);
                    }
                    Ok(())
                })?;
            }
        }
    }
    Ok(Selection { events: c.events, files_read: scanner.files_read, full_scan, skipped: scanner.skipped })
}

/// Why an id is not in the archive, and where it is instead.
fn not_found(store: &dyn Store, id: &str, files_read: usize) -> anyhow::Error {
    let base = format!(
        "event {id} is not in the archive (read {files_read} day{} of {}: its day, the days around it, then all of them)",
        if files_read == 1 { "" } else { "s" },
        store.describe()
    );
    let dead = store.dead_letters().map(|l| l.letters.into_iter().find(|l| l.is(id)).map(|l| l.key)).ok().flatten();
    let live = store.live().map(|l| l.iter().any(|l| l.name.event_id == id)).unwrap_or(false);
    if let Some(key) = dead {
        anyhow::anyhow!(
            "{base}; it is in the dead-letter queue as {key}: see `cortex dlq show {id}`, try a fix with `cortex replay --dead-letters --event-id {id} --component NEW.wasm --dry-run`, then `cortex dlq retry {id}`"
        )
    } else if live {
        anyhow::anyhow!("{base}; it is still queued, not yet dispatched: run `cortex dispatch`")
    } else {
        anyhow::anyhow!("{base}; check the id (`cortex trace {id}` looks everywhere)")
    }
}

impl Filter {
    /// The day-file dates that can hold a match (inclusive), when the
    /// filters bound them. A timestamp's written date differs from its UTC
    /// date by at most a day.
    fn day_range(&self) -> (Option<NaiveDate>, Option<NaiveDate>) {
        let mut lo = self.date.as_deref().and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
        let mut hi = lo;
        if let Some(s) = self.since.and_then(|s| s.with_timezone(&Utc).date_naive().checked_sub_days(Days::new(1))) {
            lo = Some(lo.map_or(s, |l| l.max(s)));
        }
        if let Some(u) = self.until.and_then(|u| u.with_timezone(&Utc).date_naive().checked_add_days(Days::new(1))) {
            hi = Some(hi.map_or(u, |h| h.min(u)));
        }
        (lo, hi)
    }

    fn may_hold(&self, span: &Span) -> bool {
        let (lo, hi) = self.day_range();
        let (first, last) = match *span {
            Span::Day(d) => (d, d),
            Span::Month(first) => {
                let next = first.checked_add_months(chrono::Months::new(1)).unwrap_or(NaiveDate::MAX);
                (first, next.pred_opt().unwrap_or(first))
            }
            Span::Undated => return true,
        };
        lo.is_none_or(|lo| last >= lo) && hi.is_none_or(|hi| first <= hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::parse_time;
    use serde_json::json;

    use crate::replay::testing::event;

    #[test]
    fn only_files_that_can_hold_a_match_are_read() {
        let d = |s| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let f = Filter { date: Some("2025-12-01".into()), ..Filter::default() };
        assert!(f.may_hold(&Span::Day(d("2025-12-01"))));
        assert!(!f.may_hold(&Span::Day(d("2025-12-02"))));
        assert!(f.may_hold(&Span::Month(d("2025-12-01"))));
        assert!(!f.may_hold(&Span::Month(d("2025-11-01"))));
        let f = Filter { since: parse_time("2025-12-10T00:00:00Z").ok(), ..Filter::default() };
        assert!(f.may_hold(&Span::Day(d("2025-12-09"))), "a day behind for time zones");
        assert!(!f.may_hold(&Span::Day(d("2025-12-08"))));
        assert!(f.may_hold(&Span::Month(d("2025-12-01"))));
        assert!(!f.may_hold(&Span::Month(d("2025-11-01"))));
    }
    #[test]
    fn lines_of_either_kind_parse() {
        let e = event("evt_20251201_120000_abc123", "2025-12-01T12:00:00Z", "task.created");
        let record = json!({"event": e, "outcome": "handled", "handlers": []}).to_string();
        assert_eq!(parse_line(&record, false).unwrap(), e);
        assert_eq!(parse_line(&record, true).unwrap(), e);
        assert_eq!(parse_line(&e.to_json(), true).unwrap(), e);
        assert_eq!(parse_line(&e.to_json(), false).unwrap(), e);
        assert!(parse_line(&record[..40], false).is_err());
    }
}
