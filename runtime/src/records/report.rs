//! The report of `cortex handler test` ([`HarnessReport`]): what one
//! component did with each fixture event — its outcome, the events it
//! emitted, the files it changed under its grants, its log lines and
//! output. `--json` prints it; `--write-expect` writes the part a rerun
//! reproduces, and `--expect` compares a report with such a file (a JSON
//! subset, see [`crate::harness::differences`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::Priority;
use crate::sandbox::{Info, LogLine};

/// What `cortex handler test` reports.
#[derive(Debug, Clone, Serialize)]
pub struct HarnessReport {
    /// The component's absolute path.
    pub component: String,
    pub sha256: String,
    /// What the component's `describe()` says it is.
    pub handler: Info,
    pub load_ms: f64,
    pub compiled_from_cache: bool,
    pub runs: Vec<HarnessRun>,
    /// `--keep DIR`: where the sandbox root was kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_root: Option<String>,
}

impl HarnessReport {
    /// How many events did not end `ok`.
    pub fn failed(&self) -> usize {
        self.runs.iter().filter(|r| r.outcome != HarnessRun::OK).count()
    }

    /// The report as JSON, for comparing with an expectation.
    pub fn to_value(&self) -> Value {
        // Strings, numbers, maps and lists: it always converts.
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// One fixture event and what the handler did with it.
#[derive(Debug, Clone, Serialize)]
pub struct HarnessRun {
    pub event_file: String,
    pub event_id: String,
    pub event_type: String,
    /// Set when the handler's `describe()` does not declare the event type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// `ok`, or the kind of fault (`error`, `trap`, `timeout`…).
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub emitted: Vec<Emitted>,
    /// What changed under the grants, by root-relative path.
    pub files: BTreeMap<String, FileChange>,
    pub logs: Vec<LogLine>,
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: f64,
}

impl HarnessRun {
    /// The outcome of a run that succeeded.
    pub const OK: &'static str = "ok";
}

/// An event the handler emitted, as a test shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Emitted {
    pub event_type: String,
    pub source: String,
    pub priority: Priority,
    pub correlation_id: Option<String>,
    pub master: Option<String>,
    pub tags: Vec<String>,
    pub payload: Map<String, Value>,
}

/// How a path under the grants changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Created,
    Modified,
    Removed,
}

/// One changed path: a symlink (its target), or a file (its size; its
/// content, parsed, when it is small and not sparse).
#[derive(Debug, Clone, Serialize)]
pub struct FileChange {
    pub change: Change,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Its apparent length is far beyond what is stored.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sparse: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocated_bytes: Option<u64>,
    /// A JSON file's content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    /// A JSONL file's lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jsonl: Option<Vec<Value>>,
    /// Any other UTF-8 file's text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl FileChange {
    pub fn new(change: Change) -> FileChange {
        FileChange {
            change,
            symlink: None,
            bytes: None,
            sparse: false,
            allocated_bytes: None,
            json: None,
            jsonl: None,
            text: None,
        }
    }
}
