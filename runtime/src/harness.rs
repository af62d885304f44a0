//! `cortex handler test`: run one component against fixture events in a
//! throwaway sandbox and report what it did — its outcome, the events it
//! emitted, the files it wrote under its grants and its log lines — then,
//! given an expectation file, compare and name every difference.
//!
//! The sandbox is the production one ([`Sandbox`]), so limits, grants and
//! the emit validation behave exactly as under `cortex dispatch`; only the
//! root is a temporary directory, seeded from copies, so a test never
//! touches the user's files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{Access, Grant, HandlerConfig, HandlerLimits};
use crate::event::{Event, Validator};
use crate::records::report::{Change, Emitted, FileChange, HarnessReport, HarnessRun};
use crate::sandbox::{Invocation, Sandbox};

mod report;

pub use report::{differences, expectation, print_text};

mod setup;
pub use setup::{Flags, Setup, differences_from, user_cache_dir, write_expectation};

/// Biggest file whose content a report shows (JSON parsed, text as text).
const MAX_SHOWN_FILE: u64 = 256 * 1024;

/// One `--grant GUEST[=HOST]:ro|rw`.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantSpec {
    /// The directory as the handler sees it (`/<dir>`), relative to the root.
    pub dir: String,
    pub mode: Access,
    /// A host directory whose contents are copied in first.
    pub seed: Option<PathBuf>,
}

impl std::str::FromStr for GrantSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<GrantSpec, String> {
        let usage = "expected DIR:ro, DIR:rw, DIR=HOST_DIR:ro or DIR=HOST_DIR:rw (e.g. state/cost:rw)";
        let (spec, mode) = s.rsplit_once(':').ok_or_else(|| format!("grant {s:?}: no access mode; {usage}"))?;
        let mode = match mode {
            "ro" => Access::Ro,
            "rw" => Access::Rw,
            other => return Err(format!("grant {s:?}: access {other:?} is neither ro nor rw; {usage}")),
        };
        let (dir, seed) = match spec.split_once('=') {
            Some((dir, host)) => (dir, Some(PathBuf::from(host))),
            None => (spec, None),
        };
        let dir = dir.trim_matches('/').to_string();
        let safe =
            !dir.is_empty() && Path::new(&dir).components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if !safe {
            return Err(format!("grant {s:?}: {dir:?} must be a relative directory without '..'; {usage}"));
        }
        Ok(GrantSpec { dir, mode, seed })
    }
}

/// Parses `--config key=value`: the value as TOML when it is a TOML value
/// (number, boolean, inline table, array, quoted string), else as a string.
///
/// # Errors
/// When there is no `=` or the key is empty.
pub fn parse_setting(s: &str) -> Result<(String, toml::Value), String> {
    let (key, value) = s.split_once('=').ok_or_else(|| format!("setting {s:?}: expected key=value"))?;
    if key.trim().is_empty() {
        return Err(format!("setting {s:?}: the key is empty"));
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    Ok((key.trim().to_string(), parsed))
}

/// What to run.
pub struct Request {
    pub component: PathBuf,
    pub events: Vec<PathBuf>,
    pub grants: Vec<GrantSpec>,
    /// Key-value buckets the handler may read and write, and those it may
    /// only read; their state lives in the throwaway root's `kv/state.db`.
    pub keyvalue: Vec<String>,
    pub keyvalue_read: Vec<String>,
    /// A directory tree copied into the throwaway root first (e.g. holding
    /// `state/...` files the handler expects to find).
    pub seed: Option<PathBuf>,
    pub settings: BTreeMap<String, toml::Value>,
    pub limits: HandlerLimits,
    pub validator: Validator,
    /// Where compiled components are cached between runs.
    pub cache_dir: PathBuf,
    /// The delivery number the handler sees (`event.attempt`).
    pub attempt: u32,
    /// Keep the throwaway root here instead of deleting it.
    pub keep: Option<PathBuf>,
    /// The handler's name (the default `source` of its emits); else the
    /// component's file stem.
    pub name: Option<String>,
}

/// Runs every event in order through one component in a throwaway root and
/// returns the report (a JSON object; see HANDLERS.md for its fields).
///
/// # Errors
/// When an event file cannot be read or is not a valid event, a seed
/// directory cannot be copied, or the component does not load. A handler
/// that fails or traps is not an error: it is in the report.
pub fn run(req: &Request) -> Result<HarnessReport> {
    let events = req
        .events
        .iter()
        .map(|path| read_events(&req.validator, path).map(|evs| evs.into_iter().map(move |e| (path.clone(), e))))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
    if events.is_empty() {
        bail!("no events to run: give one or more --event FILE (a JSON event, or JSONL with one per line)");
    }

    // Removed on drop, unless the user asked to keep the root.
    let (_scratch, root) = match &req.keep {
        Some(keep) => (None, kept_root(keep)?),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("cortex-handler-test-")
                .tempdir()
                .context("failed to create a scratch directory for the sandbox")?;
            let path = dir.path().to_path_buf();
            (Some(dir), path)
        }
    };
    if let Some(seed) = &req.seed {
        copy_seed(seed, &root)
            .with_context(|| format!("failed to copy the seed {} into the sandbox", seed.display()))?;
    }
    for g in &req.grants {
        let dir = root.join(&g.dir);
        crate::fsio::beneath::open_dir(&root, Path::new(&g.dir), crate::fsio::beneath::Create::Yes)?;
        if let Some(seed) = &g.seed {
            copy_seed(seed, &dir)
                .with_context(|| format!("failed to copy {} into the sandbox's {}", seed.display(), g.dir))?;
        }
    }
    let component = std::path::absolute(&req.component)
        .with_context(|| format!("bad component path {}", req.component.display()))?;
    let config = HandlerConfig {
        component: component.clone(),
        events: vec!["*".into()],
        grants: req.grants.iter().map(|g| Grant { dir: g.dir.clone(), mode: g.mode, unsafe_allow: true }).collect(),
        keyvalue: req.keyvalue.clone(),
        keyvalue_read: req.keyvalue_read.clone(),
        limits: req.limits.clone(),
        max_attempts: 1,
        backoff_ms: 0,
        concurrency: 1,
        settings: req.settings.clone(),
        // A test run shows what the component emits; the trust limits of a
        // configured handler are the dispatcher's to enforce.
        emits: None,
        max_priority: crate::event::Priority::Critical,
        may_set_source: true,
        may_set_master: true,
    };
    let sandbox =
        Sandbox::new(&root, req.validator.clone(), req.limits.fuel.is_some())?.with_cache_dir(req.cache_dir.clone());
    let name = req.name.clone().unwrap_or_else(|| {
        component.file_stem().map_or_else(|| "handler".into(), |s| s.to_string_lossy().into_owned())
    });
    let loaded = sandbox.load(&name, &config)?;

    let mut runs = Vec::new();
    // Nothing but the handler writes in the root, so what one event left is
    // what the next one starts from.
    let mut before = snapshot(&root, &req.grants);
    for (path, event) in &events {
        let inv = sandbox.invoke(&loaded, event, req.attempt);
        // As a direct replay does: a successful event's key-value writes are
        // committed before the next event runs, so it reads them; a failed
        // one's are dropped, as in dispatch.
        if inv.result.is_ok()
            && let Some(changes) = &inv.changes
        {
            sandbox
                .state()?
                .commit(std::slice::from_ref(changes))
                .with_context(|| format!("the state written for event {} could not be committed", event.event_id))?;
        }
        let after = snapshot(&root, &req.grants);
        let declared = loaded.info.events.iter().any(|p| crate::pattern::glob_match(p, &event.event_type));
        runs.push(run_report(path, event, &inv, declared, &root, &before, &after));
        before = after;
    }
    Ok(HarnessReport {
        component: component.display().to_string(),
        sha256: loaded.sha256.clone(),
        handler: loaded.info.clone(),
        load_ms: ms(loaded.load_time),
        compiled_from_cache: loaded.from_cache,
        runs,
        kept_root: req.keep.as_ref().map(|k| k.display().to_string()),
    })
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn read_events(validator: &Validator, path: &Path) -> Result<Vec<Event>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("failed to read event file {}", path.display()))?;
    let whole = serde_json::from_str::<Value>(&text);
    let docs: Vec<(usize, &str)> = match whole {
        Ok(_) => vec![(0, text.as_str())],
        // Not one JSON document: JSONL, one event per non-blank line.
        Err(_) => text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (i + 1, l)).collect(),
    };
    docs.into_iter()
        .map(|(line, doc)| {
            validator.parse(doc).map_err(|e| {
                let at = if line == 0 { String::new() } else { format!(" line {line}") };
                anyhow::anyhow!("{}{at} is not a valid event:\n{e}", path.display())
            })
        })
        .collect()
}

fn run_report(
    path: &Path,
    event: &Event,
    inv: &Invocation,
    declared: bool,
    root: &Path,
    before: &BTreeMap<String, FileState>,
    after: &BTreeMap<String, FileState>,
) -> HarnessRun {
    let (outcome, summary, error) = match &inv.result {
        Ok(summary) => (HarnessRun::OK.to_string(), Some(summary.clone()), None),
        Err(f) => (f.kind.to_string(), None, Some(f.message.clone())),
    };
    let emitted = inv
        .emitted
        .iter()
        .map(|e| Emitted {
            event_type: e.event_type.clone(),
            source: e.source.clone(),
            priority: e.priority(),
            correlation_id: e.correlation_id.clone(),
            master: e.metadata.master.clone(),
            tags: e.metadata.tags.clone(),
            payload: e.payload.clone(),
        })
        .collect();
    HarnessRun {
        event_file: path.display().to_string(),
        event_id: event.event_id.clone(),
        event_type: event.event_type.clone(),
        warning: (!declared).then(|| format!("the handler does not declare {} in describe().events", event.event_type)),
        outcome,
        summary,
        error,
        emitted,
        files: file_changes(root, before, after),
        logs: inv.logs.clone(),
        stdout: inv.stdout.clone(),
        stderr: inv.stderr.clone(),
        duration_ms: ms(inv.duration),
    }
}

/// What a snapshot saw at one path: a regular file (its apparent length,
/// the bytes allocated to it, and a hash of its data segments) or a symlink
/// (never followed).
#[derive(PartialEq)]
enum FileState {
    File { len: u64, allocated: u64, sha256: [u8; 32] },
    Link { target: String },
}

/// Every file and symlink under the grants, by root-relative path; nothing
/// is read through a link, and a grant directory that is itself a link (a
/// handler replaced it) is reported as that link.
fn snapshot(root: &Path, grants: &[GrantSpec]) -> BTreeMap<String, FileState> {
    let mut out = BTreeMap::new();
    for g in grants {
        walk(root, &root.join(&g.dir), &mut out);
    }
    out
}

fn walk(root: &Path, path: &Path, out: &mut BTreeMap<String, FileState>) {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let rel = path.strip_prefix(root).unwrap_or(path).to_string_lossy().into_owned();
    let Ok(meta) = std::fs::symlink_metadata(path) else { return };
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = std::fs::read_link(path).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
        out.insert(rel, FileState::Link { target });
    } else if kind.is_dir() {
        // Listed through a descriptor opened without following a link.
        let Ok(dir) =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(path)
        else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(crate::fsio::beneath::proc_path(&dir)) else { return };
        for entry in entries.flatten() {
            walk(root, &path.join(entry.file_name()), out);
        }
    } else if kind.is_file() {
        let Ok(file) = open_nofollow(path) else { return };
        let Ok(meta) = file.metadata() else { return };
        let Ok(sha256) = hash_data(&file, meta.len()) else { return };
        out.insert(rel, FileState::File { len: meta.len(), allocated: meta.blocks() * 512, sha256 });
    }
}

fn open_nofollow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)
}

/// A hash of a file's data segments and where they sit: holes are not read,
/// so a sparse file of gigabytes costs what its data does.
fn hash_data(file: &std::fs::File, len: u64) -> std::io::Result<[u8; 32]> {
    use std::io::{Read, Seek, SeekFrom};
    let mut h = Sha256::new();
    h.update(len.to_le_bytes());
    let mut f = file;
    let mut buf = vec![0u8; 64 * 1024];
    for (offset, size) in crate::fsio::beneath::data_segments(file, len)? {
        h.update(offset.to_le_bytes());
        f.seek(SeekFrom::Start(offset))?;
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let n = f.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            left -= n as u64;
        }
    }
    Ok(h.finalize().into())
}

fn file_changes(
    root: &Path,
    before: &BTreeMap<String, FileState>,
    after: &BTreeMap<String, FileState>,
) -> BTreeMap<String, FileChange> {
    let mut out = BTreeMap::new();
    for (path, state) in after {
        let change = match before.get(path) {
            None => Change::Created,
            Some(old) if old != state => Change::Modified,
            Some(_) => continue,
        };
        let mut entry = FileChange::new(change);
        match state {
            FileState::Link { target } => entry.symlink = Some(target.clone()),
            FileState::File { len, allocated, .. } => {
                entry.bytes = Some(*len);
                // Apparent length far beyond what is stored: a sparse file.
                if *allocated < *len && len - allocated >= 4096 {
                    entry.sparse = true;
                    entry.allocated_bytes = Some(*allocated);
                } else if *len <= MAX_SHOWN_FILE
                    && let Ok(bytes) = read_nofollow(&root.join(path))
                {
                    show_content(path, &bytes, &mut entry);
                }
            }
        }
        out.insert(path.clone(), entry);
    }
    for path in before.keys().filter(|p| !after.contains_key(*p)) {
        out.insert(path.clone(), FileChange::new(Change::Removed));
    }
    out
}

fn read_nofollow(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open_nofollow(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// JSON files parsed, JSONL files as a list of parsed lines, other UTF-8 as text.
fn show_content(path: &str, bytes: &[u8], entry: &mut FileChange) {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    if path.ends_with(".jsonl") {
        let lines: Option<Vec<Value>> =
            text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).ok()).collect();
        if let Some(lines) = lines {
            entry.jsonl = Some(lines);
            return;
        }
    } else if let Ok(v) = serde_json::from_str::<Value>(text) {
        entry.json = Some(v);
        return;
    }
    entry.text = Some(text.to_string());
}

/// `--keep DIR`: a new or empty directory, as an absolute path.
fn kept_root(keep: &Path) -> Result<PathBuf> {
    if keep.exists() && std::fs::read_dir(keep).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("--keep {}: the directory exists and is not empty; give a new or empty one", keep.display());
    }
    std::fs::create_dir_all(keep).with_context(|| format!("failed to create {}", keep.display()))?;
    Ok(std::path::absolute(keep)?)
}

/// A seed the user named must exist (a typo is an error, not an empty tree).
fn copy_seed(from: &Path, to: &Path) -> Result<()> {
    if !from.is_dir() {
        bail!("{} is not a directory", from.display());
    }
    crate::fsio::copy_tree(from, to)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn grants_parse_and_refuse_escapes() {
        let g: GrantSpec = "state/cost:rw".parse().unwrap();
        assert_eq!((g.dir.as_str(), g.mode, g.seed), ("state/cost", Access::Rw, None));
        let g: GrantSpec = "/state/=fixtures/state:ro".parse().unwrap();
        assert_eq!((g.dir.as_str(), g.mode, g.seed), ("state", Access::Ro, Some(PathBuf::from("fixtures/state"))));
        for bad in ["state", "state:rx", "../etc:ro", ":rw", "a/../../b:rw"] {
            assert!(bad.parse::<GrantSpec>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn settings_are_toml_values_or_strings() {
        assert_eq!(parse_setting("n=3").unwrap(), ("n".into(), toml::Value::Integer(3)));
        assert_eq!(parse_setting("name=gpt 4").unwrap(), ("name".into(), toml::Value::String("gpt 4".into())));
        assert_eq!(parse_setting("q=\"7\"").unwrap(), ("q".into(), toml::Value::String("7".into())));
        let (_, t) = parse_setting("prices={ a = 1.5 }").unwrap();
        assert_eq!(t["a"], toml::Value::Float(1.5));
        assert!(parse_setting("novalue").is_err());
    }

    #[test]
    fn expectations_are_subsets_with_exact_arrays() {
        let actual = json!({"runs": [{"outcome": "ok", "emitted": [{"event_type": "a", "payload": {"x": 1, "y": 2}}], "duration_ms": 3.2}]});
        assert!(differences(&json!({"runs": [{"outcome": "ok"}]}), &actual).is_empty());
        assert!(differences(&json!({"runs": [{"emitted": [{"payload": {"x": 1.0}}]}]}), &actual).is_empty());
        let d = differences(&json!({"runs": [{"outcome": "error", "emitted": []}]}), &actual);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d.iter().any(|l| l.starts_with("runs[0].outcome: expected \"error\", got \"ok\"")), "{d:?}");
        assert!(d.iter().any(|l| l.starts_with("runs[0].emitted: expected 0 item(s), got 1")), "{d:?}");
        let d = differences(&json!({"runs": [{"summary": "x"}]}), &actual);
        assert_eq!(d, ["runs[0].summary: expected \"x\", but it is absent"]);
        assert!(differences(&json!({"runs": [{"error": null}]}), &actual).is_empty(), "null means absent");
        let d = differences(&json!({"runs": [{"emitted": [{"payload": {}}]}]}), &actual);
        assert_eq!(d.len(), 1, "an empty object expects an empty one: {d:?}");
    }
}
