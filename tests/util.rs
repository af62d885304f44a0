//! Helpers for the end-to-end tests and the benchmarks: locate the `cortex`
//! binary, make a throwaway coordination root, run commands against it and
//! read what they left on disk, and [`event`], the one builder of the event
//! lines they feed it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// An event as a producer writes it (a `validate` document, an `emit
/// --batch` line, an event file): `event("task.created")` has source `test`,
/// an empty payload and nothing else; each method sets one top-level field.
/// The one event builder of the tests and benchmarks.
#[derive(Debug, Clone, PartialEq)]
pub struct EventLine(Value);

/// An [`EventLine`] of `event_type`.
pub fn event(event_type: &str) -> EventLine {
    EventLine(json!({"event_type": event_type, "source": "test", "payload": {}}))
}

impl EventLine {
    /// Any top-level field, e.g. `metadata` or a deliberately wrong one.
    #[must_use]
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> EventLine {
        self.0[key] = value.into();
        self
    }
    #[must_use]
    pub fn id(self, event_id: &str) -> EventLine {
        self.set("event_id", event_id)
    }
    #[must_use]
    pub fn source(self, source: &str) -> EventLine {
        self.set("source", source)
    }
    /// The `timestamp` (handlers judge time windows by event time).
    #[must_use]
    pub fn at(self, timestamp: &str) -> EventLine {
        self.set("timestamp", timestamp)
    }
    /// `priority`, as a producer may write it at the top level.
    #[must_use]
    pub fn priority(self, priority: &str) -> EventLine {
        self.set("priority", priority)
    }
    #[must_use]
    pub fn correlation(self, correlation_id: &str) -> EventLine {
        self.set("correlation_id", correlation_id)
    }
    /// `master`, as a producer may write it at the top level.
    #[must_use]
    pub fn master(self, master: &str) -> EventLine {
        self.set("master", master)
    }
    #[must_use]
    pub fn payload(self, payload: Value) -> EventLine {
        self.set("payload", payload)
    }
    /// The event as JSON.
    pub fn json(&self) -> Value {
        self.0.clone()
    }
    /// One JSONL line, newline included.
    pub fn line(&self) -> String {
        format!("{}\n", self.0)
    }
}

/// One JSON document, no newline.
impl std::fmt::Display for EventLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A JSONL batch of events, one line each.
pub fn jsonl(events: impl IntoIterator<Item = EventLine>) -> String {
    events.into_iter().map(|e| e.line()).collect()
}

/// The `cortex` binary built alongside this test binary (`make test` builds
/// it first), or `$CORTEX_BIN`.
pub fn cortex_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CORTEX_BIN") {
        return p.into();
    }
    built_bin("cortex")
}

/// `cortex-failpoints`: the same command line with its crash points armed
/// from `CORTEX_FAILPOINT` (see tests/failpoints.rs).
pub fn cortex_failpoints_bin() -> PathBuf {
    built_bin("cortex-failpoints")
}

/// A binary of this workspace beside the running test binary.
fn built_bin(name: &str) -> PathBuf {
    // Test binaries live in <target>/<profile>/deps/, the bench beside cortex.
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().expect("binary dir");
    [dir.join(name), dir.parent().map(|p| p.join(name)).unwrap_or_default()]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the {name} binary is not beside {}: run `make test` (it builds it first) or set CORTEX_BIN",
                exe.display()
            )
        })
}

/// `text` (TOML) without the tables whose header starts with `prefix`.
pub fn without_tables(text: &str, prefix: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.starts_with('[') {
            skipping = line.starts_with(prefix);
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Every claim file under `<root>/events/claimed/` (in each dispatcher's
/// claim directory, and any left flat by an older version).
pub fn claims_under(root: &Path) -> Vec<String> {
    let claimed = root.join("events/claimed");
    let mut out = Vec::new();
    for entry in list(&claimed) {
        let path = claimed.join(&entry);
        if path.is_dir() {
            out.extend(list(&path).into_iter().filter(|f| f.ends_with(".json")));
        } else {
            out.push(entry);
        }
    }
    out
}

/// What a finished command left.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A coordination root in a temporary directory, removed on drop.
pub struct Root {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    /// `CORTEX_CACHE` for every command, when set.
    pub cache: Option<PathBuf>,
}

impl Root {
    /// A fresh, initialised root.
    pub fn new() -> Result<Root> {
        let root = Root::uninit()?;
        root.ok(&["init"])?;
        Ok(root)
    }

    /// A path for a root that does not exist yet.
    pub fn uninit() -> Result<Root> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("coordination");
        Ok(Root { _dir: dir, path, cache: None })
    }

    /// The temp directory that holds the root (for files beside it).
    pub fn scratch(&self) -> &Path {
        self._dir.path()
    }

    pub fn command(&self) -> Command {
        self.command_of(cortex_bin())
    }

    /// `cortex-failpoints --root <root>`, aborting at crash point `point`.
    pub fn failpoint_command(&self, point: &str) -> Command {
        let mut c = self.command_of(cortex_failpoints_bin());
        c.env("CORTEX_FAILPOINT", point);
        c
    }

    fn command_of(&self, bin: PathBuf) -> Command {
        let mut c = Command::new(bin);
        c.arg("--root").arg(&self.path).env_remove("CORTEX_ROOT").env_remove("RUST_LOG").env_remove("CORTEX_CACHE");
        if let Some(cache) = &self.cache {
            c.env("CORTEX_CACHE", cache);
        }
        c
    }

    /// Runs `cortex --root <root> ARGS` with `stdin`.
    pub fn run_with(&self, args: &[&str], stdin: &[u8]) -> Result<Out> {
        let mut child =
            self.command().args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let mut input = child.stdin.take().context("stdin")?;
        input.write_all(stdin)?;
        drop(input);
        Ok(child.wait_with_output()?.into())
    }

    pub fn run(&self, args: &[&str]) -> Result<Out> {
        self.run_with(args, b"")
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        if out.code != 0 {
            bail!("cortex {args:?} exited {}:\n{}{}", out.code, out.stdout, out.stderr);
        }
        Ok(out.stdout)
    }

    /// Runs and requires failure; returns what it printed.
    pub fn fails(&self, args: &[&str]) -> Result<Out> {
        let out = self.run(args)?;
        if out.code == 0 {
            bail!("cortex {args:?} succeeded but should have failed:\n{}", out.stdout);
        }
        Ok(out)
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// File names in a directory under the root, sorted.
    pub fn files(&self, rel: &str) -> Vec<String> {
        list(&self.join(rel))
    }

    /// The JSON lines of a category log.
    pub fn log(&self, stem: &str) -> Result<Vec<Value>> {
        let path = self.join(&format!("events/{stem}-events.jsonl"));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        text.lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("bad line in {}: {l}", path.display())))
            .collect()
    }

    pub fn read_json(&self, rel: &str) -> Result<Value> {
        let path = self.join(rel);
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }

    /// The JSON value of `key` in the key-value `bucket` (handler state in
    /// `kv/state.db`), or `None`.
    pub fn state_value(&self, bucket: &str, key: &str) -> Result<Option<Value>> {
        use cortex::kv::Backend;
        let db = cortex::kv::sqlite::SqliteBackend::open(&self.join("kv/state.db"))?;
        db.get(bucket, key)?
            .map(|v| serde_json::from_slice(&v.value).with_context(|| format!("parse state {bucket}/{key}")))
            .transpose()
    }

    /// Appends text to cortex.toml.
    pub fn configure(&self, extra: &str) -> Result<()> {
        let path = self.join("cortex.toml");
        let mut text = std::fs::read_to_string(&path)?;
        text.push_str(extra);
        std::fs::write(path, text)?;
        Ok(())
    }

    /// Every archived record, from all day files (plain, and compressed
    /// ones decoded whole with zstd, whose index frame it skips), in file
    /// order. A day in both forms after a crash is read in both.
    pub fn archived(&self) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for day in self.files("events/archive") {
            let path = self.join(&format!("events/archive/{day}"));
            let text = if day.ends_with(".jsonl.zst") {
                String::from_utf8(zstd::stream::decode_all(std::fs::File::open(&path)?)?)?
            } else if day.ends_with(".jsonl") {
                std::fs::read_to_string(&path)?
            } else {
                continue;
            };
            // A service may be appending: only whole lines count.
            let whole = text.rfind('\n').map_or("", |end| &text[..end]);
            for line in whole.lines().filter(|l| !l.trim().is_empty()) {
                // A line torn by a crash is skipped, as the runtime's readers do.
                match serde_json::from_str(line) {
                    Ok(v) => out.push(v),
                    Err(e) => eprintln!("skipping a torn archive line in {day}: {e}"),
                }
            }
        }
        Ok(out)
    }
}

/// File names in `dir`, sorted; empty when it does not exist.
pub fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Every file under `dir` with its bytes, for byte-identical comparisons.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap_or_default();
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}

/// Replaces a file the way deploys do: write beside it, rename over it.
pub fn replace_atomically(target: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = target.with_extension("wasm.new");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, target)?;
    Ok(())
}

/// A compiled-component cache shared by the tests that load the Python and
/// JavaScript handlers: beside the binary, so it lives as long as the build.
pub fn shared_cache() -> PathBuf {
    cortex_bin().parent().expect("binary dir").join("test-compiled-cache")
}

/// Where `make handlers` put the components: `handlers/` beside the binary.
pub fn handlers_dir() -> PathBuf {
    let dir = cortex_bin().parent().expect("binary dir").join("handlers");
    assert!(
        dir.join("noop.wasm").is_file(),
        "{} has no components: run `make handlers` (needs `rustup target add wasm32-wasip2`)",
        dir.display()
    );
    dir
}

/// The absolute path of a built component, e.g. `fixture("noop")`.
pub fn component(name: &str) -> String {
    handlers_dir().join(format!("{name}.wasm")).display().to_string()
}

impl Root {
    /// A fresh root whose cortex.toml holds `handlers` (TOML) instead of the
    /// seven built-in handlers and the default schedules. `{name}` placeholders like `{noop}` become
    /// component paths.
    pub fn with_handlers(handlers: &str) -> Result<Root> {
        let root = Root::new()?;
        let base = std::fs::read_to_string(root.join("cortex.toml"))?;
        // The default handlers and schedules go: a test states its own.
        let cut = ["[schedules.", "[handlers."].iter().filter_map(|t| base.find(t)).min().unwrap_or(base.len());
        let mut text = handlers.to_string();
        for entry in list(&handlers_dir()) {
            if let Some(stem) = entry.strip_suffix(".wasm") {
                text = text.replace(&format!("{{{stem}}}"), &component(stem));
            }
        }
        std::fs::write(root.join("cortex.toml"), format!("{}\n{text}", &base[..cut]))?;
        Ok(root)
    }

    /// A fresh root with the default config's commented-out Python and
    /// JavaScript handlers enabled, as its comments tell a user to do, and
    /// `notification.requested` declared. Compiled components are shared
    /// between such roots (`shared_cache()`), so each is compiled once per
    /// machine rather than once per test.
    pub fn with_extras() -> Result<Root> {
        let mut root = Root::new()?;
        root.cache = Some(shared_cache());
        std::fs::create_dir_all(shared_cache())?;
        let text = std::fs::read_to_string(root.join("cortex.toml"))?;
        let (head, tail) = text
            .split_at(text.find("# [handlers.on-cost-tracking]").context("no commented extras in the default config")?);
        // The default schedules would add events at minute boundaries to
        // tests that count what was archived.
        let mut out = without_tables(head, "[schedules.")
            .replace("custom_types = []", "custom_types = [\"notification.requested\"]");
        for line in tail.lines() {
            let code = line
                .strip_prefix("# ")
                .filter(|l| l.starts_with('[') || l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')));
            out.push_str(code.unwrap_or(line));
            out.push('\n');
        }
        std::fs::write(root.join("cortex.toml"), out)?;
        root.ok(&["init"])?;
        Ok(root)
    }

    /// Emits one event; returns its id.
    pub fn emit(&self, event_type: &str, payload: &str) -> Result<String> {
        Ok(self.ok(&["emit", event_type, "test", payload])?.trim().to_string())
    }

    /// Queues JSONL lines in one batch; returns the ids.
    pub fn batch(&self, lines: &str) -> Result<Vec<String>> {
        let out = self.run_with(&["emit", "--batch"], lines.as_bytes())?;
        if out.code != 0 {
            bail!("batch failed: {}", out.stderr);
        }
        Ok(out.stdout.lines().map(str::to_string).collect())
    }

    /// Runs `cortex dispatch --json` and returns its summary; requires exit
    /// code 3 when the run dead-lettered events, else 0.
    pub fn dispatch(&self) -> Result<Value> {
        let out = self.run(&["dispatch", "--json"])?;
        if out.code != 0 && out.code != 3 {
            bail!("dispatch exited {}:\n{}", out.code, out.stderr);
        }
        let s: Value =
            serde_json::from_str(&out.stdout).with_context(|| format!("dispatch printed: {}", out.stdout))?;
        let expected = if s["dead_lettered"].as_u64().unwrap_or(0) > 0 { 3 } else { 0 };
        if out.code != expected {
            bail!("dispatch exited {} but should exit {expected} after this run:\n{s}\n{}", out.code, out.stderr);
        }
        Ok(s)
    }

    /// Dead-letter records.
    pub fn dead_letters(&self) -> Result<Vec<Value>> {
        self.files("events/dead-letter").iter().map(|f| self.read_json(&format!("events/dead-letter/{f}"))).collect()
    }

    /// Archive records of one event type, in archive order.
    pub fn archive_records_of(&self, event_type: &str) -> Result<Vec<Value>> {
        Ok(self.archived()?.into_iter().filter(|r| r["event"]["event_type"] == event_type).collect())
    }

    /// The sha256 a running `cortex serve` serves for `handler`, from
    /// `run/services/*.json` (empty when none serves it).
    pub fn serving_sha(&self, handler: &str) -> Result<String> {
        for file in self.files("run/services") {
            let doc: Value = serde_json::from_slice(&std::fs::read(self.join(&format!("run/services/{file}")))?)?;
            if let Some(sha) = doc["handlers"][handler]["sha256"].as_str() {
                return Ok(sha.to_string());
            }
        }
        Ok(String::new())
    }

    /// Every claim file under `events/claimed/` (in each dispatcher's
    /// claim directory, and any left flat by an older version).
    pub fn claims(&self) -> Vec<String> {
        claims_under(&self.path)
    }

    /// The archive record of an event id, if archived.
    pub fn archived_record(&self, id: &str) -> Result<Option<Value>> {
        Ok(self.archived()?.into_iter().find(|r| r["event"]["event_id"] == id))
    }
}

#[path = "util/service.rs"]
mod service;
pub use service::{HttpResponse, Service, http_get, http_request, metric, parse_metrics, wait_for};

#[path = "util/redis_prefix.rs"]
mod redis_prefix;
pub use redis_prefix::{REDIS_URL_ENV, RedisPrefix, redis_url};
