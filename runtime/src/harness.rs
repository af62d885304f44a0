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
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::config::{Access, Grant, HandlerConfig, HandlerLimits};
use crate::event::{Event, Validator};
use crate::sandbox::{Invocation, Sandbox};

mod setup;
pub use setup::{Flags, Setup, differences_from, failed_runs, user_cache_dir, write_expectation};

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
pub fn run(req: &Request) -> Result<Value> {
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
        let after = snapshot(&root, &req.grants);
        let declared = loaded.info.events.iter().any(|p| crate::pattern::glob_match(p, &event.event_type));
        runs.push(run_report(path, event, &inv, declared, &root, &before, &after));
        before = after;
    }
    let mut report = json!({
        "component": component.display().to_string(),
        "sha256": loaded.sha256,
        "handler": loaded.info,
        "load_ms": ms(loaded.load_time),
        "compiled_from_cache": loaded.from_cache,
        "runs": runs,
    });
    if let Some(keep) = &req.keep {
        report["kept_root"] = json!(keep.display().to_string());
    }
    Ok(report)
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
) -> Value {
    let mut run = Map::new();
    run.insert("event_file".into(), json!(path.display().to_string()));
    run.insert("event_id".into(), json!(event.event_id));
    run.insert("event_type".into(), json!(event.event_type));
    if !declared {
        run.insert(
            "warning".into(),
            json!(format!("the handler does not declare {} in describe().events", event.event_type)),
        );
    }
    match &inv.result {
        Ok(summary) => {
            run.insert("outcome".into(), json!("ok"));
            run.insert("summary".into(), json!(summary));
        }
        Err(f) => {
            run.insert("outcome".into(), json!(f.kind));
            run.insert("error".into(), json!(f.message));
        }
    }
    let emitted: Vec<Value> = inv
        .emitted
        .iter()
        .map(|e| {
            json!({
                "event_type": e.event_type,
                "source": e.source,
                "priority": e.priority().as_str(),
                "correlation_id": e.correlation_id,
                "master": e.metadata.master,
                "tags": e.metadata.tags,
                "payload": e.payload,
            })
        })
        .collect();
    run.insert("emitted".into(), Value::Array(emitted));
    run.insert("files".into(), Value::Object(file_changes(root, before, after)));
    run.insert("logs".into(), serde_json::to_value(&inv.logs).unwrap_or_default());
    run.insert("stdout".into(), json!(inv.stdout));
    run.insert("stderr".into(), json!(inv.stderr));
    run.insert("duration_ms".into(), json!(ms(inv.duration)));
    Value::Object(run)
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
) -> Map<String, Value> {
    let mut out = Map::new();
    for (path, state) in after {
        let change = match before.get(path) {
            None => "created",
            Some(old) if old != state => "modified",
            Some(_) => continue,
        };
        let mut entry = Map::new();
        entry.insert("change".into(), json!(change));
        match state {
            FileState::Link { target } => {
                entry.insert("symlink".into(), json!(target));
            }
            FileState::File { len, allocated, .. } => {
                entry.insert("bytes".into(), json!(len));
                // Apparent length far beyond what is stored: a sparse file.
                if *allocated < *len && len - allocated >= 4096 {
                    entry.insert("sparse".into(), json!(true));
                    entry.insert("allocated_bytes".into(), json!(allocated));
                } else if *len <= MAX_SHOWN_FILE
                    && let Ok(bytes) = read_nofollow(&root.join(path))
                {
                    show_content(path, &bytes, &mut entry);
                }
            }
        }
        out.insert(path.clone(), Value::Object(entry));
    }
    for path in before.keys().filter(|p| !after.contains_key(*p)) {
        out.insert(path.clone(), json!({"change": "removed"}));
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
fn show_content(path: &str, bytes: &[u8], entry: &mut Map<String, Value>) {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    if path.ends_with(".jsonl") {
        let lines: Option<Vec<Value>> =
            text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).ok()).collect();
        if let Some(lines) = lines {
            entry.insert("jsonl".into(), Value::Array(lines));
            return;
        }
    } else if let Ok(v) = serde_json::from_str::<Value>(text) {
        entry.insert("json".into(), v);
        return;
    }
    entry.insert("text".into(), json!(text));
}

/// The parts of a report that a rerun reproduces, as a starting point for
/// an expectation file: no durations, paths, hashes or load details. What
/// the handler itself derives from the clock (timestamps in its files) stays
/// in and is for the author to delete.
pub fn expectation(report: &Value) -> Value {
    let mut runs = Vec::new();
    for r in report["runs"].as_array().into_iter().flatten() {
        let mut r = r.clone();
        if let Some(o) = r.as_object_mut() {
            for volatile in ["duration_ms", "event_file", "warning"] {
                o.remove(volatile);
            }
            for stream in ["stdout", "stderr"] {
                if o.get(stream).is_some_and(|v| v == "") {
                    o.remove(stream);
                }
            }
        }
        runs.push(r);
    }
    json!({ "handler": report["handler"], "runs": runs })
}

/// Where `actual` differs from `expected`, one line per difference.
///
/// `expected` is a subset: an object names only the keys it cares about
/// (each compared recursively; an empty object expects an empty one), an
/// array must have the same length with each element compared recursively,
/// `null` matches an absent key, anything else must be equal. So an
/// expectation leaves out what varies between runs (durations, ids).
pub fn differences(expected: &Value, actual: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff("", expected, actual, &mut out);
    out
}

fn diff(at: &str, expected: &Value, actual: &Value, out: &mut Vec<String>) {
    let here = if at.is_empty() { "(the report)" } else { at };
    match (expected, actual) {
        // An empty object expects an empty one ("files": {} = no files written).
        (Value::Object(e), Value::Object(a)) if e.is_empty() && !a.is_empty() => {
            out.push(format!("{here}: expected none, got {}", short(actual)));
        }
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                match a.get(k) {
                    Some(av) => diff(&path, ev, av, out),
                    None if ev.is_null() => {}
                    None => out.push(format!("{path}: expected {}, but it is absent", short(ev))),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                out.push(format!("{here}: expected {} item(s), got {}: {}", e.len(), a.len(), short(actual)));
                return;
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                diff(&format!("{at}[{i}]"), ev, av, out);
            }
        }
        (Value::Number(e), Value::Number(a)) if e.as_f64() == a.as_f64() => {}
        (e, a) if e == a => {}
        (e, a) => out.push(format!("{here}: expected {}, got {}", short(e), short(a))),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= 200 {
        return s;
    }
    let cut = s.floor_char_boundary(200);
    format!("{}… ({} bytes)", &s[..cut], s.len())
}

/// Prints a report for people.
pub fn print_text(report: &Value, out: &mut impl std::io::Write) -> std::io::Result<()> {
    // Everything in a report but the numbers came from the guest or the event.
    use crate::text::{Escaped, escape_lines};
    let h = &report["handler"];
    writeln!(
        out,
        "component {}\n  {} v{} (sha256 {}), loaded in {} ms{}",
        Escaped(report["component"].as_str().unwrap_or("")),
        Escaped(h["name"].as_str().unwrap_or("?")),
        Escaped(h["version"].as_str().unwrap_or("?")),
        report["sha256"].as_str().map_or("", |s| &s[..12.min(s.len())]),
        report["load_ms"],
        if report["compiled_from_cache"] == true { " from the compiled cache" } else { " (compiled now)" },
    )?;
    let runs = report["runs"].as_array().map_or(&[][..], Vec::as_slice);
    for (i, r) in runs.iter().enumerate() {
        writeln!(
            out,
            "\nevent {}/{}  {}  {} {}",
            i + 1,
            runs.len(),
            Escaped(r["event_file"].as_str().unwrap_or("")),
            Escaped(r["event_type"].as_str().unwrap_or("")),
            Escaped(r["event_id"].as_str().unwrap_or(""))
        )?;
        if let Some(w) = r["warning"].as_str() {
            writeln!(out, "  warning  {}", Escaped(w))?;
        }
        match r["outcome"].as_str() {
            Some("ok") => writeln!(out, "  outcome  ok: {}", Escaped(r["summary"].as_str().unwrap_or("")))?,
            Some(kind) => {
                writeln!(out, "  outcome  FAILED ({}): {}", Escaped(kind), Escaped(r["error"].as_str().unwrap_or("")))?
            }
            None => {}
        }
        for e in r["emitted"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "  emitted  {} ({}) {}",
                Escaped(e["event_type"].as_str().unwrap_or("")),
                Escaped(e["priority"].as_str().unwrap_or("")),
                Escaped(&short(&e["payload"]))
            )?;
        }
        for (path, f) in r["files"].as_object().into_iter().flatten() {
            let sign = match f["change"].as_str() {
                Some("created") => '+',
                Some("removed") => '-',
                _ => '~',
            };
            let what = match (f["symlink"].as_str(), f["bytes"].as_u64(), f["allocated_bytes"].as_u64()) {
                (Some(target), _, _) => format!(" -> {} (a symlink)", Escaped(target)),
                (None, Some(b), Some(a)) => format!(" ({b} bytes, sparse: {a} allocated)"),
                (None, Some(b), None) => format!(" ({b} bytes)"),
                _ => String::new(),
            };
            writeln!(out, "  wrote    {sign} {}{what}", Escaped(path))?;
        }
        for l in r["logs"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "  log      {:<5} {}",
                l["level"].as_str().unwrap_or(""),
                Escaped(l["message"].as_str().unwrap_or(""))
            )?;
        }
        for stream in ["stdout", "stderr"] {
            for line in escape_lines(r[stream].as_str().unwrap_or("")).take(20) {
                writeln!(out, "  {stream:<8} {line}")?;
            }
        }
        writeln!(out, "  took     {} ms", r["duration_ms"])?;
    }
    if let Some(k) = report["kept_root"].as_str() {
        writeln!(out, "\nsandbox root kept at {}", Escaped(k))?;
    }
    Ok(())
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
