//! `cortex.toml`: the checked configuration of one coordination root.
//!
//! Loaded once per command (and again on reload in service mode). Unknown
//! keys are errors that name the key, so a typo never silently falls back to
//! a default. Everything else in the runtime takes a [`Config`], never raw TOML.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::event::{self, DEFAULT_MAX_EVENT_BYTES, Validator};

/// The file name of the configuration inside a root.
pub const CONFIG_FILE: &str = "cortex.toml";

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub events: EventsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub dispatch: DispatchConfig,
    /// Handlers by name, in name order.
    #[serde(default)]
    pub handlers: BTreeMap<String, HandlerConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Event types accepted besides the built-in catalogue.
    #[serde(default)]
    pub custom_types: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { max_event_bytes: DEFAULT_MAX_EVENT_BYTES }
    }
}

fn default_max_event_bytes() -> usize {
    DEFAULT_MAX_EVENT_BYTES
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    /// Handler invocations that may run at once; 0 means one per core.
    #[serde(default)]
    pub workers: usize,
    /// A claim older than this many seconds belongs to a crashed dispatcher
    /// and is taken back.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig { workers: 0, lease_secs: default_lease_secs() }
    }
}

fn default_lease_secs() -> u64 {
    300
}

/// Access a handler has to one directory under the root.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Ro,
    Rw,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// A directory relative to the root; the handler sees it at `/<dir>`.
    pub dir: String,
    pub mode: Access,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HandlerLimits {
    /// Linear memory a handler may grow to, in MiB; growing past it traps.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// Wall-clock deadline per invocation, in milliseconds.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// Optional instruction budget per invocation (wasmtime fuel).
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Cap on each of the handler's captured stdout and stderr per invocation, in bytes.
    #[serde(default = "default_output_bytes")]
    pub output_bytes: usize,
    /// Events one invocation may emit.
    #[serde(default = "default_max_emits")]
    pub max_emits: usize,
    /// Bytes one invocation may add to files under its grants: each write
    /// counts the bytes written or the growth of the file, whichever is
    /// larger (a write far past the end counts the hole); past it writes
    /// fail with ENOSPC.
    #[serde(default = "default_write_bytes")]
    pub write_bytes: u64,
    /// Files, directories and links one invocation may create under its
    /// grants; past it creating one fails with ENOSPC.
    #[serde(default = "default_max_new_files")]
    pub max_new_files: u64,
    /// Files and directories one invocation may hold open at once (its
    /// grants' own handles not counted); past it opens are refused.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: u64,
}

impl Default for HandlerLimits {
    fn default() -> Self {
        HandlerLimits {
            memory_mb: default_memory_mb(),
            deadline_ms: default_deadline_ms(),
            fuel: None,
            output_bytes: default_output_bytes(),
            max_emits: default_max_emits(),
            write_bytes: default_write_bytes(),
            max_new_files: default_max_new_files(),
            max_open_files: default_max_open_files(),
        }
    }
}

fn default_memory_mb() -> u64 {
    64
}
fn default_deadline_ms() -> u64 {
    5_000
}
fn default_output_bytes() -> usize {
    64 * 1024
}
fn default_max_emits() -> usize {
    100
}
fn default_write_bytes() -> u64 {
    64 << 20
}
fn default_max_new_files() -> u64 {
    1000
}
fn default_max_open_files() -> u64 {
    64
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// Path of the `.wasm` component, relative to the root unless absolute.
    pub component: PathBuf,
    /// Event type patterns: exact (`task.failed`) or globs (`worker.*`, `*`).
    pub events: Vec<String>,
    #[serde(default)]
    pub grants: Vec<Grant>,
    #[serde(default)]
    pub limits: HandlerLimits,
    /// Deliveries before an event goes to the dead-letter queue.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay in milliseconds; doubled on each further attempt.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Invocations that may run at once. Handlers keep state, so the default
    /// of 1 runs them one at a time in queue order; raise it only for a
    /// stateless handler.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Settings the handler reads through `config(key)`.
    #[serde(default)]
    pub settings: BTreeMap<String, toml::Value>,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_backoff_ms() -> u64 {
    200
}
fn default_concurrency() -> usize {
    1
}

/// Whether a setting holds a TOML date-time, which has no JSON spelling.
fn contains_datetime(v: &toml::Value) -> bool {
    match v {
        toml::Value::Datetime(_) => true,
        toml::Value::Array(a) => a.iter().any(contains_datetime),
        toml::Value::Table(t) => t.values().any(contains_datetime),
        _ => false,
    }
}

impl HandlerConfig {
    /// A setting as the string a handler receives: strings as they are,
    /// tables and arrays as JSON, other scalars in their TOML spelling
    /// (which for numbers and booleans is also their JSON spelling).
    pub fn setting(&self, key: &str) -> Option<String> {
        self.settings.get(key).map(|v| match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Table(_) | toml::Value::Array(_) => serde_json::to_string(v).unwrap_or_else(|_| v.to_string()),
            other => other.to_string(),
        })
    }

    /// Whether an event type matches one of this handler's patterns.
    pub fn matches(&self, event_type: &str) -> bool {
        self.events.iter().any(|p| crate::route::glob_match(p, event_type))
    }
}

impl Config {
    /// Reads and checks `<root>/cortex.toml`.
    ///
    /// # Errors
    /// When the file is missing (with the `cortex init` hint), unreadable,
    /// not TOML, has an unknown key, or fails [`Config::check`].
    pub fn load(root: &Path) -> Result<Config> {
        let path = root.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "{} is not a Cortex root: {} is missing; run `cortex init --root {}` first",
                root.display(),
                path.display(),
                root.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
        };
        Config::parse(&text).with_context(|| format!("invalid configuration in {}", path.display()))
    }

    /// Parses and checks configuration text.
    ///
    /// # Errors
    /// On TOML syntax errors, unknown keys (named), and semantic problems.
    pub fn parse(text: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        config.check()?;
        Ok(config)
    }

    /// Semantic checks serde cannot express.
    ///
    /// # Errors
    /// Naming the offending key and what to do about it.
    pub fn check(&self) -> Result<()> {
        for t in &self.events.custom_types {
            if !event::is_valid_type_name(t) {
                bail!(
                    "events.custom_types: {t:?} is not a type name (lowercase dot-separated words, e.g. billing.invoice_paid)"
                );
            }
        }
        if self.limits.max_event_bytes < 256 {
            bail!(
                "limits.max_event_bytes: {} is too small to hold an envelope (use at least 256)",
                self.limits.max_event_bytes
            );
        }
        if self.dispatch.lease_secs == 0 {
            bail!("dispatch.lease_secs: must be at least 1");
        }
        for (name, h) in &self.handlers {
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') || name.is_empty() {
                bail!("handlers.{name}: a handler name is letters, digits, '-' and '_'");
            }
            if h.events.is_empty() {
                bail!("handlers.{name}.events: list at least one event type pattern");
            }
            for p in &h.events {
                if p.is_empty()
                    || !p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._*?".contains(c))
                {
                    bail!("handlers.{name}.events: {p:?} is not an event type or glob (e.g. worker.* or task.failed)");
                }
            }
            for g in &h.grants {
                check_grant_dir(&g.dir).with_context(|| format!("handlers.{name}.grants: dir {:?}", g.dir))?;
            }
            if h.max_attempts == 0 {
                bail!("handlers.{name}.max_attempts: must be at least 1");
            }
            if h.concurrency == 0 {
                bail!("handlers.{name}.concurrency: must be at least 1");
            }
            if h.limits.memory_mb == 0 || h.limits.memory_mb > 4096 {
                bail!("handlers.{name}.limits.memory_mb: {} is outside 1..=4096", h.limits.memory_mb);
            }
            if h.limits.deadline_ms == 0 {
                bail!("handlers.{name}.limits.deadline_ms: must be at least 1");
            }
            for (k, v) in &h.settings {
                if contains_datetime(v) {
                    bail!(
                        "handlers.{name}.settings.{k}: a TOML date-time cannot be passed to a handler; quote it as a string"
                    );
                }
            }
        }
        Ok(())
    }

    pub fn validator(&self) -> Validator {
        Validator::new(self.events.custom_types.clone(), self.limits.max_event_bytes)
    }

    /// Handler invocations that may run at once.
    pub fn workers(&self) -> usize {
        match self.dispatch.workers {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            n => n,
        }
    }
}

/// A grant is a plain relative path inside the root: no `..`, no absolute
/// path, so a config cannot hand a handler anything outside the root.
fn check_grant_dir(dir: &str) -> Result<()> {
    let path = Path::new(dir);
    if dir.is_empty() {
        bail!("must not be empty");
    }
    for c in path.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => bail!("must be a relative path inside the root without `..`"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_takes_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.limits.max_event_bytes, DEFAULT_MAX_EVENT_BYTES);
        assert_eq!(c.dispatch.lease_secs, 300);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse("[limits]\nmax_event_byte = 10\n").unwrap_err().to_string();
        assert!(err.contains("max_event_byte"), "{err}");
        let err =
            Config::parse("[handlers.a]\ncomponent='a.wasm'\nevents=['x.y']\ngrant=[]\n").unwrap_err().to_string();
        assert!(err.contains("grant"), "{err}");
    }

    #[test]
    fn grants_stay_inside_the_root() {
        for dir in ["../etc", "/etc", "state/../../x"] {
            let text =
                format!("[handlers.a]\ncomponent='a.wasm'\nevents=['x.y']\ngrants=[{{dir={dir:?}, mode='ro'}}]\n");
            let err = format!("{:#}", Config::parse(&text).unwrap_err());
            assert!(err.contains("inside the root"), "{dir}: {err}");
        }
    }

    #[test]
    fn settings_are_strings_to_handlers() {
        let c = Config::parse(
            "[handlers.a]\ncomponent='a.wasm'\nevents=['x.*']\n[handlers.a.settings]\nn = 3\ns = 'x'\nb = true\n",
        )
        .unwrap();
        let h = &c.handlers["a"];
        assert_eq!(h.setting("n").as_deref(), Some("3"));
        assert_eq!(h.setting("s").as_deref(), Some("x"));
        assert_eq!(h.setting("b").as_deref(), Some("true"));
        assert_eq!(h.setting("missing"), None);
        assert!(h.matches("x.anything"));
    }
}

/// Property tests: the config loader never panics, and an unknown key is
/// always named in the error.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,300}") {
            let _ = Config::parse(&text);
        }

        #[test]
        fn arbitrary_tables_never_panic(
            section in prop::sample::select(vec!["events", "limits", "dispatch", "handlers.a", "handlers.a.limits", "handlers.a.settings", "x"]),
            key in "[a-z_]{1,16}",
            value in prop::sample::select(vec!["1", "-1", "0", "\"s\"", "true", "[]", "[\"x.y\"]", "{}", "1.5", "18446744073709551616"]),
        ) {
            let text = format!("[{section}]\n{key} = {value}\n");
            let _ = Config::parse(&text);
        }

        #[test]
        fn unknown_keys_are_named(key in "[a-z]{3,12}_typo") {
            let err = format!("{:#}", Config::parse(&format!("[limits]\n{key} = 1\n")).unwrap_err());
            prop_assert!(err.contains(&key), "{}", err);
        }
    }
}
