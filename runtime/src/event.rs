//! The event envelope: ids, the type catalogue, categories, priorities,
//! and (in `event/validate.rs`) validation.
//!
//! Every event that enters Cortex — from `cortex emit`, a batch, a handler's
//! `emit`, or a replay — passes through [`Validator::validate`] before it is
//! logged or queued. Validation works on raw JSON so that it can report every
//! problem at once, each with the path of the field it concerns, and only a
//! document without problems becomes an [`Event`].

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, FixedOffset, Local, SecondsFormat};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod validate;
pub use validate::{Checked, Invalid, Problem, Validator, kind, nesting};

/// The built-in event types: the seed architecture's 17, and
/// `system.heartbeat_check`, which the default heartbeat schedule emits.
pub const CATALOGUE: [(&str, Category); 18] = [
    ("worker.started", Category::Worker),
    ("worker.completed", Category::Worker),
    ("worker.failed", Category::Worker),
    ("worker.heartbeat", Category::Worker),
    ("task.created", Category::Task),
    ("task.assigned", Category::Task),
    ("task.completed", Category::Task),
    ("task.failed", Category::Task),
    ("security.scan_completed", Category::Security),
    ("security.vulnerability_found", Category::Security),
    ("routing.decision_made", Category::Routing),
    ("learning.pattern_detected", Category::Learning),
    ("learning.model_updated", Category::Learning),
    ("system.cleanup_needed", Category::System),
    ("system.health_alert", Category::System),
    ("system.heartbeat_check", Category::System),
    ("daemon.started", Category::Daemon),
    ("daemon.stopped", Category::Daemon),
];

/// Default limit on the serialized size of one event (1 MiB).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

/// How deeply `payload` and `metadata` may nest (an object or array inside
/// another counts one level each; `{}` is one level). Well under the JSON
/// reader's recursion limit (128), so that every event accepted here can be
/// read back from the queue, the logs and the archive with its envelope.
pub const MAX_NESTING: usize = 64;

/// The top-level fields an envelope may carry; anything else is a typo.
const FIELDS: [&str; 7] = ["event_id", "event_type", "timestamp", "source", "correlation_id", "metadata", "payload"];

/// The seven categories of the catalogue, and custom types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Category {
    Worker,
    Task,
    Security,
    Routing,
    Learning,
    System,
    Daemon,
    /// A type declared in `cortex.toml` outside the seven built-in prefixes.
    Custom,
}

/// The one table of categories: each one's name (the type prefix before the
/// first dot, and its serialized name) and the stem of the JSONL log it
/// appends to. System and daemon events share `system-events.jsonl`, as in
/// the seed; `custom` is no prefix (a custom type must be declared).
const CATEGORIES: [(Category, &str, &str); 8] = [
    (Category::Worker, "worker", "worker"),
    (Category::Task, "task", "task"),
    (Category::Security, "security", "security"),
    (Category::Routing, "routing", "routing"),
    (Category::Learning, "learning", "learning"),
    (Category::System, "system", "system"),
    (Category::Daemon, "daemon", "system"),
    (Category::Custom, "custom", "custom"),
];

impl Category {
    fn row(self) -> &'static (Category, &'static str, &'static str) {
        // The table lists the variants in declaration order (checked where
        // LOG_STEMS is built, at compile time), so this index is in bounds.
        let rows: &'static [(Category, &str, &str); 8] = &CATEGORIES;
        &rows[self as usize]
    }

    /// The category's name: its type prefix, and how it is serialized.
    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// The stem of the JSONL log this category appends to.
    pub fn log_stem(self) -> &'static str {
        self.row().2
    }

    fn from_prefix(prefix: &str) -> Option<Category> {
        CATEGORIES.iter().find(|(c, name, _)| *c != Category::Custom && *name == prefix).map(|(c, _, _)| *c)
    }
}

impl From<Category> for &'static str {
    fn from(c: Category) -> &'static str {
        c.name()
    }
}

impl TryFrom<String> for Category {
    type Error = String;
    fn try_from(s: String) -> Result<Category, String> {
        CATEGORIES
            .iter()
            .find(|(_, name, _)| *name == s)
            .map(|(c, _, _)| *c)
            .ok_or_else(|| format!("unknown category {s:?}"))
    }
}

/// Every log stem, once, in the order of [`CATEGORIES`] (for `status` and
/// the layout).
pub const LOG_STEMS: [&str; 7] = log_stems();

const fn log_stems() -> [&'static str; 7] {
    const fn same(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
    let mut out = [""; 7];
    let (mut i, mut n) = (0, 0);
    while i < CATEGORIES.len() {
        assert!(CATEGORIES[i].0 as usize == i, "CATEGORIES lists the variants in declaration order");
        let stem = CATEGORIES[i].2;
        let mut seen = false;
        let mut j = 0;
        while j < n {
            seen |= same(out[j], stem);
            j += 1;
        }
        if !seen {
            // More distinct stems than slots fails the build here.
            out[n] = stem;
            n += 1;
        }
        i += 1;
    }
    assert!(n == out.len(), "LOG_STEMS has a slot for every distinct stem");
    out
}

/// Event priority; the queue serves critical first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Critical,
    High,
    #[default]
    Medium,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 4] = [Priority::Critical, Priority::High, Priority::Medium, Priority::Low];

    /// The digit that leads queue file names: lower sorts (and is served) first.
    pub fn rank(self) -> u8 {
        self as u8
    }

    pub fn from_rank(rank: u8) -> Option<Priority> {
        Priority::ALL.get(rank as usize).copied()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown priority {s:?}: expected one of critical, high, medium, low"))
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Optional context: master, priority, tags, and any further keys (replay
/// records its bookkeeping here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A validated event envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: String,
    pub event_type: String,
    /// RFC 3339 with an offset, kept as written so that logs round-trip.
    pub timestamp: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub payload: Map<String, Value>,
}

impl Event {
    pub fn priority(&self) -> Priority {
        self.metadata.priority
    }

    /// How many handler emits separate this event from a producer's:
    /// `metadata.caused_by.hops`, which the host sets on every emit (0 for
    /// a producer's event; 1 for a follow-up recorded before hops were).
    pub fn hops(&self) -> u64 {
        match self.metadata.extra.get("caused_by") {
            None => 0,
            Some(c) => c.get("hops").and_then(Value::as_u64).unwrap_or(1),
        }
    }

    /// The parsed timestamp. Validation guarantees it parses; an event built
    /// by hand with a bad one falls back to the Unix epoch.
    pub fn time(&self) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(&self.timestamp).unwrap_or_default()
    }

    /// Serialized as one line of JSON.
    pub fn to_json(&self) -> String {
        // Room for a typical event at once, instead of growing from 128
        // bytes by doubling (a batch serialises one per line).
        let mut out = Vec::with_capacity(512);
        // Serializing plain strings, maps and enums cannot fail.
        serde_json::to_writer(&mut out, self).expect("event serializes");
        // serde_json writes UTF-8 only.
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }

    /// The length of [`Event::to_json`], without building it.
    pub fn json_len(&self) -> usize {
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        // As in `to_json`: cannot fail, and a counter never refuses bytes.
        serde_json::to_writer(&mut count, self).expect("event serializes");
        count.0
    }
}

/// What a producer supplies; the rest of the envelope is filled in.
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    pub event_type: String,
    pub source: String,
    pub payload: Map<String, Value>,
    pub correlation_id: Option<String>,
    pub priority: Option<Priority>,
    pub master: Option<String>,
    pub tags: Vec<String>,
}

impl NewEvent {
    /// The seed's `create_event`: a new id and the current local time.
    pub fn into_value(self) -> Value {
        let now = Local::now().fixed_offset();
        let mut metadata = Map::new();
        if let Some(master) = self.master {
            metadata.insert("master".into(), Value::String(master));
        }
        metadata.insert("priority".into(), Value::String(self.priority.unwrap_or_default().as_str().into()));
        if !self.tags.is_empty() {
            metadata.insert("tags".into(), Value::from(self.tags));
        }
        let mut event = Map::new();
        event.insert("event_id".into(), Value::String(new_event_id(&now)));
        event.insert("event_type".into(), Value::String(self.event_type));
        event.insert("timestamp".into(), Value::String(now.to_rfc3339_opts(SecondsFormat::Millis, false)));
        event.insert("source".into(), Value::String(self.source));
        // An empty correlation id is no correlation id.
        if let Some(c) = self.correlation_id.filter(|c| !c.is_empty()) {
            event.insert("correlation_id".into(), Value::String(c));
        }
        event.insert("metadata".into(), Value::Object(metadata));
        event.insert("payload".into(), Value::Object(self.payload));
        Value::Object(event)
    }
}

static ID_START: OnceLock<u64> = OnceLock::new();
static ID_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh id, `evt_YYYYMMDD_HHMMSS_<12 lowercase alphanumerics>`.
///
/// The first six characters count up from a random start, so ids from one
/// process never repeat within 36^6 events; the last six are random, so ids
/// from different processes in the same second collide with negligible odds
/// (and the queue refuses to overwrite, so a collision is an error, not a loss).
pub fn new_event_id(now: &DateTime<FixedOffset>) -> String {
    const SPACE: u64 = 36u64.pow(6);
    let n = ID_START.get_or_init(|| fastrand::u64(..SPACE)) + ID_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut suffix = String::with_capacity(12);
    push_base36(&mut suffix, n % SPACE, 6);
    push_base36(&mut suffix, fastrand::u64(..SPACE), 6);
    // Fields rather than a strftime pattern: a batch builds an id per line,
    // and parsing the pattern each time was a tenth of `emit --batch`.
    use chrono::{Datelike, Timelike};
    let t = now.naive_local();
    format!(
        "evt_{:04}{:02}{:02}_{:02}{:02}{:02}_{suffix}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn push_base36(out: &mut String, mut n: u64, width: usize) {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut buf = [b'0'; 16];
    for slot in buf[..width].iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    out.push_str(std::str::from_utf8(&buf[..width]).expect("ascii digits"));
}

/// `evt_YYYYMMDD_HHMMSS_` followed by six or more lowercase alphanumerics.
pub fn is_valid_event_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() >= 4 + 8 + 1 + 6 + 1 + 6
        && id.starts_with("evt_")
        && b[4..12].iter().all(u8::is_ascii_digit)
        && b[12] == b'_'
        && b[13..19].iter().all(u8::is_ascii_digit)
        && b[19] == b'_'
        && b[20..].iter().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
}

/// A handler name as `cortex.toml` allows it: letters, digits, `-` and `_`.
pub fn is_valid_handler_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The largest `metadata.caused_by.hops` an event may carry: far past any
/// sane `dispatch.max_hops`, small enough to add to without overflow.
pub const MAX_HOPS_RECORDED: u64 = 1 << 20;

/// `category.name`, lowercase letters, digits and underscores, dot-separated.
pub fn is_valid_type_name(t: &str) -> bool {
    let mut parts = 0;
    for part in t.split('.') {
        let mut chars = part.chars();
        match chars.next() {
            Some(c) if c.is_ascii_lowercase() => {}
            _ => return false,
        }
        if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return false;
        }
        parts += 1;
    }
    parts >= 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn catalogue_has_18_types_in_7_categories() {
        let mut cats: Vec<Category> = CATALOGUE.iter().map(|(_, c)| *c).collect();
        cats.dedup();
        assert_eq!(CATALOGUE.len(), 18);
        assert_eq!(cats.len(), 7);
    }

    #[test]
    fn ids_are_well_formed_and_unique() {
        let now = Local::now().fixed_offset();
        let ids: std::collections::HashSet<String> = (0..20_000).map(|_| new_event_id(&now)).collect();
        assert_eq!(ids.len(), 20_000);
        assert!(ids.iter().all(|id| is_valid_event_id(id)));
        let stamp = format!("evt_{}_", now.format("%Y%m%d_%H%M%S"));
        assert!(ids.iter().all(|id| id.starts_with(&stamp)), "ids carry the time they were made: {stamp}");
    }

    #[test]
    fn json_len_is_the_length_of_the_json() {
        let mut v =
            NewEvent { event_type: "task.created".into(), source: "tést \"q\"\n".into(), ..NewEvent::default() }
                .into_value();
        v["payload"] = json!({"text": "ünïcode \u{1F600} and \t escapes", "n": [1, 2.5, null]});
        let e: Event = serde_json::from_value(v).unwrap();
        assert_eq!(e.json_len(), e.to_json().len());
        assert_eq!(e.to_json(), serde_json::to_string(&e).unwrap());
    }

    #[test]
    fn categories_have_one_name_each() {
        assert_eq!(LOG_STEMS, ["worker", "task", "security", "routing", "learning", "system", "custom"]);
        for (c, name, stem) in CATEGORIES {
            assert_eq!(serde_json::to_value(c).unwrap(), json!(name));
            assert_eq!(serde_json::from_value::<Category>(json!(name)).unwrap(), c);
            assert_eq!((c.name(), c.log_stem()), (name, stem));
        }
        assert_eq!(Category::from_prefix("daemon").map(Category::log_stem), Some("system"));
        assert_eq!(Category::from_prefix("custom"), None, "a custom type must be declared");
        assert!(serde_json::from_value::<Category>(json!("billing")).is_err());
    }
}
