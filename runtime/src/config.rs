//! `cortex.toml`: the checked configuration of one coordination root.
//!
//! Loaded once per command (and again on reload in service mode). Unknown
//! keys are errors that name the key, so a typo never silently falls back to
//! a default. Everything else in the runtime takes a [`Config`], never raw TOML.
//!
//! About 400 lines of code; the rest of the file is its unit tests, which
//! read best beside the rules they pin. The handler tables are `config/handler.rs`.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::event::{self, DEFAULT_MAX_EVENT_BYTES, Priority, Validator};

mod backend;
mod handler;
mod http;
mod webhooks;
pub use backend::{BACKEND_ENV, BackendConfig, BackendKind, shown_redis_url};
pub use handler::{Access, Grant, HandlerConfig, HandlerLimits, RESERVED_DIRS};
pub use http::{HttpConfig, MIN_TOKEN_LEN, Scope, TOKEN_ENV, TokenConfig};
pub use webhooks::{WebhookConfig, WebhookFormat, shown_url};

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
    #[serde(default)]
    pub archive: ArchiveConfig,
    /// Who may use the service's HTTP listener.
    #[serde(default)]
    pub http: HttpConfig,
    /// Where events, dead letters, the archive and state are kept (see [`crate::store`]).
    #[serde(default)]
    pub backend: BackendConfig,
    /// Handlers by name, in name order.
    #[serde(default)]
    pub handlers: BTreeMap<String, HandlerConfig>,
    /// Events `cortex serve` emits on a timer, by name.
    #[serde(default)]
    pub schedules: BTreeMap<String, ScheduleConfig>,
    /// Outbound webhook endpoints by name (see [`crate::webhooks`]).
    #[serde(default)]
    pub webhooks: BTreeMap<String, WebhookConfig>,
}

/// `[schedules.NAME]`: an event that `cortex serve` queues on a timer (see
/// [`crate::schedule`]).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// A fixed period, `30s`, `5m`, `1h` or `1d`, on multiples of it since
    /// the Unix epoch.
    #[serde(default)]
    pub every: Option<String>,
    /// Or a cron expression (five fields, or six with seconds first), in UTC.
    #[serde(default)]
    pub cron: Option<String>,
    pub event_type: String,
    /// The payload; `schedule`, `tick` and, after missed ticks, `missed`
    /// are added.
    #[serde(default)]
    pub payload: toml::Table,
    #[serde(default)]
    pub priority: Option<event::Priority>,
    /// Defaults to `cortex-scheduler`.
    #[serde(default)]
    pub source: Option<String>,
    /// Fire every tick missed while no service ran (at most 1,000), instead
    /// of only the latest.
    #[serde(default)]
    pub catch_up: bool,
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
    /// Follow-up generations an event may be from the producer's event
    /// (`metadata.caused_by.hops`); an event past it is an event loop and
    /// is dead-lettered without running.
    #[serde(default = "default_max_hops")]
    pub max_hops: u32,
    /// What to do with a component whose `describe()` does not declare
    /// every event type its `[handlers]` table routes to it.
    #[serde(default)]
    pub describe_mismatch: Mismatch,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            workers: 0,
            lease_secs: default_lease_secs(),
            max_hops: default_max_hops(),
            describe_mismatch: Mismatch::default(),
        }
    }
}

/// `dispatch.describe_mismatch`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mismatch {
    /// The component does not load (at start its events wait; on reload
    /// the version serving keeps serving).
    #[default]
    Refuse,
    /// It loads, with a warning at every load.
    Warn,
}

fn default_lease_secs() -> u64 {
    300
}
fn default_max_hops() -> u32 {
    16
}

/// Archive days kept by default.
pub const DEFAULT_RETENTION_DAYS: u64 = 30;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Days an archive day file is kept after its last append (not after
    /// the date in its name, which is the events' own date); 0 keeps
    /// everything.
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
    /// Day files named for a date more than this many days ago (UTC) are
    /// rewritten as compressed segments (`YYYY-MM-DD.jsonl.zst`, see
    /// [`crate::archive`]); 0 never compresses.
    #[serde(default = "default_compress_after_days")]
    pub compress_after_days: u64,
    /// A directory (relative to the root, or absolute) that each archive
    /// file past its retention is copied to before it is removed.
    #[serde(default)]
    pub export_before_delete: Option<PathBuf>,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            retention_days: DEFAULT_RETENTION_DAYS,
            compress_after_days: DEFAULT_COMPRESS_AFTER_DAYS,
            export_before_delete: None,
        }
    }
}

/// Days after which archive days are compressed by default.
pub const DEFAULT_COMPRESS_AFTER_DAYS: u64 = 2;

fn default_compress_after_days() -> u64 {
    DEFAULT_COMPRESS_AFTER_DAYS
}

fn default_retention_days() -> u64 {
    DEFAULT_RETENTION_DAYS
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
        let config = Config::parse(&text).with_context(|| format!("invalid configuration in {}", path.display()))?;
        config.check_grants_on_disk(root).with_context(|| format!("invalid configuration in {}", path.display()))?;
        Ok(config)
    }

    /// Refuses a grant whose path under `root` passes through a symlink
    /// (one a handler planted resolves outside the root, or into another
    /// handler's grant). Missing directories are fine: they are created,
    /// without following links, when the handler first runs.
    ///
    /// # Errors
    /// Naming the handler, the grant and the link.
    pub fn check_grants_on_disk(&self, root: &Path) -> Result<()> {
        for (name, h) in &self.handlers {
            for g in &h.grants {
                let mut at = root.to_path_buf();
                for part in g.parts() {
                    at.push(part);
                    match std::fs::symlink_metadata(&at) {
                        Ok(m) if m.file_type().is_symlink() => {
                            let target = std::fs::read_link(&at).map(|t| t.display().to_string()).unwrap_or_default();
                            bail!(
                                "handlers.{name}.grants: dir {:?} passes through the symlink {} (-> {target}), which may resolve outside the root or into another grant; remove the link",
                                g.dir,
                                at.display()
                            );
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
        }
        Ok(())
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
        if self.dispatch.max_hops == 0 || u64::from(self.dispatch.max_hops) >= event::MAX_HOPS_RECORDED {
            bail!(
                "dispatch.max_hops: {} is outside 1..{} (a handler's follow-up is one hop)",
                self.dispatch.max_hops,
                event::MAX_HOPS_RECORDED
            );
        }
        self.http.check()?;
        self.backend.check()?;
        for (name, s) in &self.schedules {
            crate::schedule::Timing::of(s).with_context(|| format!("schedules.{name}"))?;
            if !event::is_valid_type_name(&s.event_type) {
                bail!(
                    "schedules.{name}.event_type: {:?} is not a type name (e.g. system.cleanup_needed)",
                    s.event_type
                );
            }
            if self.validator().category(&s.event_type).is_none() {
                bail!(
                    "schedules.{name}.event_type: {:?} is neither a built-in type nor in [events] custom_types",
                    s.event_type
                );
            }
            if contains_datetime(&toml::Value::Table(s.payload.clone())) {
                bail!("schedules.{name}.payload: a TOML date-time has no JSON spelling; quote it as a string");
            }
        }
        for (name, h) in &self.handlers {
            if !event::is_valid_handler_name(name) {
                bail!("handlers.{name}: a handler name is letters, digits, '-' and '_'");
            }
            if h.events.is_empty() {
                bail!("handlers.{name}.events: list at least one event type pattern");
            }
            for (key, patterns) in [("events", &h.events), ("emits", h.emits.as_ref().unwrap_or(&Vec::new()))] {
                for p in patterns {
                    if !crate::pattern::is_type_pattern(p) {
                        bail!(
                            "handlers.{name}.{key}: {p:?} is not an event type or glob (e.g. worker.* or task.failed)"
                        );
                    }
                }
            }
            for g in &h.grants {
                check_grant_dir(&g.dir).with_context(|| format!("handlers.{name}.grants: dir {:?}", g.dir))?;
                if g.is_reserved() && !g.unsafe_allow {
                    bail!(
                        "handlers.{name}.grants: dir {:?} is the runtime's own ({}); a handler granted it could damage the queue or replace code the host runs. Grant a directory under state/ instead, or add `unsafe_allow = true` to this grant if you really mean it",
                        g.dir,
                        if g.parts().is_empty() { "the whole root".to_string() } else { format!("{}/", g.parts()[0]) }
                    );
                }
            }
            for (key, buckets) in [("keyvalue", &h.keyvalue), ("keyvalue_read", &h.keyvalue_read)] {
                for b in buckets {
                    crate::kv::check_bucket(b).with_context(|| format!("handlers.{name}.{key}"))?;
                }
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
        for (name, w) in &self.webhooks {
            w.check(name)?;
        }
        self.check_overlaps()
    }

    /// Refuses two grants (of one handler or of two) where one contains
    /// the other and either is read-write: the writer could plant a symlink
    /// where the other grant's directory is, or swap it, and read-write
    /// access to a directory another handler owns is not isolation.
    /// The same directory read-only twice is fine.
    fn check_overlaps(&self) -> Result<()> {
        let grants: Vec<(&str, &Grant)> =
            self.handlers.iter().flat_map(|(n, h)| h.grants.iter().map(move |g| (n.as_str(), g))).collect();
        for (i, (a_name, a)) in grants.iter().enumerate() {
            for (b_name, b) in &grants[i + 1..] {
                let (pa, pb) = (a.parts(), b.parts());
                let nested = pa.starts_with(&pb) || pb.starts_with(&pa);
                let writes = a.mode == Access::Rw || b.mode == Access::Rw;
                if nested && writes {
                    bail!(
                        "handlers.{a_name}.grants: dir {:?} ({}) overlaps dir {:?} ({}) of handler {b_name}; a read-write grant must not contain, or sit inside, another grant",
                        a.dir,
                        mode_name(a.mode),
                        b.dir,
                        mode_name(b.mode)
                    );
                }
            }
        }
        Ok(())
    }

    pub fn validator(&self) -> Validator {
        Validator::new(self.events.custom_types.clone(), self.limits.max_event_bytes)
    }

    /// Whether any handler sets `limits.fuel`: the engine then meters fuel
    /// for every instance, and turning it on or off needs a new engine.
    pub fn needs_fuel(&self) -> bool {
        self.handlers.values().any(|h| h.limits.fuel.is_some())
    }

    /// Handler invocations that may run at once.
    pub fn workers(&self) -> usize {
        match self.dispatch.workers {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            n => n,
        }
    }
}

fn mode_name(mode: Access) -> &'static str {
    match mode {
        Access::Ro => "ro",
        Access::Rw => "rw",
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

/// Whether a setting holds a TOML date-time, which has no JSON spelling.
fn contains_datetime(v: &toml::Value) -> bool {
    match v {
        toml::Value::Datetime(_) => true,
        toml::Value::Array(a) => a.iter().any(contains_datetime),
        toml::Value::Table(t) => t.values().any(contains_datetime),
        _ => false,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod properties;
