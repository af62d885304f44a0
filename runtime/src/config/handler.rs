//! The `[handlers.<name>]` tables of `cortex.toml`: a handler's component,
//! the event patterns routed to it, its grants (directories, and key-value
//! buckets), limits, retry policy, settings and what it may emit. Checked as part of [`super::Config`].

use super::*;

/// Top-level entries of a root that belong to the runtime: a grant inside
/// one of them needs `unsafe_allow` (the archive may be granted read-only).
pub const RESERVED_DIRS: &[&str] = &["events", "cache", "handlers", "run", "kv", CONFIG_FILE];

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
    /// Grants a directory the runtime itself uses (`events/...`, `cache`,
    /// `handlers`, `run`, `kv`, the whole root): a handler could then damage the
    /// queue or replace compiled code the host loads. Only with this set,
    /// and `cortex handlers check` warns about it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unsafe_allow: bool,
}

impl Grant {
    /// The grant's directory as plain components (`.` and slashes dropped).
    pub fn parts(&self) -> Vec<&str> {
        self.dir.split('/').filter(|p| !p.is_empty() && *p != ".").collect()
    }

    /// Whether this grant reaches into the runtime's own files (see
    /// [`RESERVED_DIRS`]); the archive read-only is not.
    pub fn is_reserved(&self) -> bool {
        let parts = self.parts();
        match parts.first() {
            None => true,
            Some(_) if parts == ["events", "archive"] && self.mode == Access::Ro => false,
            Some(first) => RESERVED_DIRS.contains(first),
        }
    }
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
    /// Distinct keys one invocation may write (set, delete or increment)
    /// in its key-value buckets.
    #[serde(default = "default_kv_keys_written")]
    pub kv_keys_written: usize,
    /// Bytes of one key-value value.
    #[serde(default = "default_kv_value_bytes")]
    pub kv_value_bytes: usize,
    /// Bytes of keys and values one invocation may write, in total.
    #[serde(default = "default_kv_bytes_written")]
    pub kv_bytes_written: usize,
}

impl HandlerLimits {
    /// What one invocation may write to its key-value buckets.
    pub fn kv(&self) -> crate::kv::Limits {
        crate::kv::Limits {
            max_keys_written: self.kv_keys_written,
            max_value_bytes: self.kv_value_bytes,
            max_bytes_written: self.kv_bytes_written,
        }
    }
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
            kv_keys_written: default_kv_keys_written(),
            kv_value_bytes: default_kv_value_bytes(),
            kv_bytes_written: default_kv_bytes_written(),
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
fn default_kv_keys_written() -> usize {
    crate::kv::Limits::default().max_keys_written
}
fn default_kv_value_bytes() -> usize {
    crate::kv::Limits::default().max_value_bytes
}
fn default_kv_bytes_written() -> usize {
    crate::kv::Limits::default().max_bytes_written
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
    /// Key-value buckets the handler may read and write (`wasi:keyvalue`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keyvalue: Vec<String>,
    /// Key-value buckets the handler may only read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keyvalue_read: Vec<String>,
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
    /// Event type patterns the handler may emit; unset, any type the
    /// validator accepts.
    #[serde(default)]
    pub emits: Option<Vec<String>>,
    /// The most urgent priority the handler's follow-ups may have.
    #[serde(default = "default_max_priority")]
    pub max_priority: Priority,
    /// Whether an emit may name a `source` other than the handler's name.
    #[serde(default)]
    pub may_set_source: bool,
    /// Whether an emit may name a `master` other than the triggering event's.
    #[serde(default)]
    pub may_set_master: bool,
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
fn default_max_priority() -> Priority {
    Priority::High
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

    /// Where the component lives: [`HandlerConfig::component`] as it is
    /// when absolute, else under `root`.
    pub fn component_path(&self, root: &Path) -> PathBuf {
        if self.component.is_absolute() { self.component.clone() } else { root.join(&self.component) }
    }

    /// The buckets the handler may open: `keyvalue` read-write, then
    /// `keyvalue_read` read-only (a bucket in both is read-write).
    pub fn kv_grants(&self) -> Vec<crate::kv::Grant> {
        let rw = self.keyvalue.iter().map(|b| crate::kv::Grant { bucket: b.clone(), write: true });
        let ro = self
            .keyvalue_read
            .iter()
            .filter(|b| !self.keyvalue.contains(b))
            .map(|b| crate::kv::Grant { bucket: b.clone(), write: false });
        rw.chain(ro).collect()
    }

    /// Whether an event type matches one of this handler's patterns.
    pub fn matches(&self, event_type: &str) -> bool {
        crate::pattern::any_match(&self.events, event_type)
    }
}
