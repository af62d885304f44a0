//! The Cortex guest SDK: write an event handler as a plain Rust type.
//!
//! ```ignore
//! use cortex_sdk::{Event, Handler, Result};
//!
//! struct OnTaskFailure;
//!
//! impl Handler for OnTaskFailure {
//!     const NAME: &'static str = "on-task-failure";
//!     const EVENTS: &'static [&'static str] = &["task.failed"];
//!     fn handle(event: Event) -> Result<String> {
//!         let p: MyPayload = event.payload()?;
//!         cortex_sdk::Emit::new("task.created").payload(&p)?.send()?;
//!         Ok("retried".into())
//!     }
//! }
//! cortex_sdk::handler!(OnTaskFailure);
//! ```
//!
//! The crate wraps the `wit-bindgen` bindings of the `cortex:events` world:
//! events arrive as [`Event`] with a parsed payload, follow-ups go out with
//! [`Emit`], settings come from [`config`], and [`state`] reads and writes
//! JSON state files atomically inside the handler's grants.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "handler",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_handler",
        default_bindings_module: "cortex_sdk::bindings",
    });
}

pub use bindings::cortex::events::types::{Level, Priority};
use serde::Serialize;
use serde::de::DeserializeOwned;
pub use serde_json::{Map, Value, json};

/// A handler's result: `Err` is the message the host records and retries on.
pub type Result<T, E = String> = std::result::Result<T, E>;

/// One event, as the handler receives it.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub event_type: String,
    pub timestamp: String,
    pub source: String,
    pub correlation_id: Option<String>,
    pub master: Option<String>,
    pub priority: Priority,
    pub tags: Vec<String>,
    /// Metadata keys beyond master, priority and tags.
    pub metadata: Map<String, Value>,
    pub payload: Map<String, Value>,
    /// 1 on the first delivery.
    pub attempt: u32,
}

impl Event {
    /// The payload as a typed value.
    ///
    /// # Errors
    /// When the payload does not fit `T`, naming the event type.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(Value::Object(self.payload.clone()))
            .map_err(|e| format!("{} payload does not fit: {e}", self.event_type))
    }

    /// A payload string field, if present.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.payload.get(key).and_then(Value::as_str)
    }

    /// Seconds since the Unix epoch of the event's timestamp.
    pub fn epoch_seconds(&self) -> Option<i64> {
        parse_rfc3339(&self.timestamp)
    }

    pub fn priority_name(&self) -> &'static str {
        priority_name(self.priority)
    }
}

pub fn priority_name(p: Priority) -> &'static str {
    match p {
        Priority::Critical => "critical",
        Priority::High => "high",
        Priority::Medium => "medium",
        Priority::Low => "low",
    }
}

impl From<bindings::cortex::events::types::Event> for Event {
    fn from(e: bindings::cortex::events::types::Event) -> Event {
        let object = |text: &str| match serde_json::from_str(text) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        Event {
            metadata: object(&e.metadata),
            payload: object(&e.payload),
            id: e.event_id,
            event_type: e.event_type,
            timestamp: e.timestamp,
            source: e.source,
            correlation_id: e.correlation_id,
            master: e.master,
            priority: e.priority,
            tags: e.tags,
            attempt: e.attempt,
        }
    }
}

/// A follow-up event under construction.
#[derive(Debug, Clone)]
pub struct Emit {
    inner: bindings::NewEvent,
}

impl Emit {
    pub fn new(event_type: &str) -> Emit {
        Emit {
            inner: bindings::NewEvent {
                event_type: event_type.into(),
                payload: "{}".into(),
                source: None,
                correlation_id: None,
                priority: None,
                master: None,
                tags: Vec::new(),
            },
        }
    }

    /// Sets the payload from any serializable value (it must be an object).
    ///
    /// # Errors
    /// When it does not serialize.
    pub fn payload(mut self, payload: &impl Serialize) -> Result<Emit> {
        self.inner.payload = serde_json::to_string(payload).map_err(|e| format!("payload does not serialize: {e}"))?;
        Ok(self)
    }

    pub fn priority(mut self, p: Priority) -> Emit {
        self.inner.priority = Some(p);
        self
    }

    pub fn correlation_id(mut self, id: impl Into<String>) -> Emit {
        self.inner.correlation_id = Some(id.into());
        self
    }

    pub fn source(mut self, s: impl Into<String>) -> Emit {
        self.inner.source = Some(s.into());
        self
    }

    pub fn master(mut self, m: impl Into<String>) -> Emit {
        self.inner.master = Some(m.into());
        self
    }

    pub fn tag(mut self, t: impl Into<String>) -> Emit {
        self.inner.tags.push(t.into());
        self
    }

    /// Hands the event to the host; returns its id.
    ///
    /// # Errors
    /// When the host refuses it (invalid, or over the emit limit).
    pub fn send(self) -> Result<String> {
        bindings::emit(&self.inner)
    }
}

/// A setting from the handler's `[handlers.<name>.settings]` table.
pub fn config(key: &str) -> Option<String> {
    bindings::config(key)
}

/// A setting parsed as `T`, or `default` when unset.
///
/// # Errors
/// When the setting is present but does not parse, naming the key.
pub fn config_or<T: std::str::FromStr>(key: &str, default: T) -> Result<T> {
    match config(key) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| format!("setting {key} = {v:?} is not valid")),
    }
}

pub fn log(level: Level, message: &str) {
    bindings::log(level, message);
}

pub fn info(message: &str) {
    log(Level::Info, message);
}

pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// JSON state files inside the handler's grants.
pub mod state {
    use super::*;
    use std::path::Path;

    /// Reads a JSON state file, or `T::default()` when it does not exist yet.
    ///
    /// # Errors
    /// When it exists but cannot be read or parsed.
    pub fn load<T: DeserializeOwned + Default>(path: impl AsRef<Path>) -> Result<T> {
        let path = path.as_ref();
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| format!("corrupt state file {}: {e}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes a JSON state file atomically: a temp file beside it, then a
    /// rename, so a crash never leaves half a state file.
    ///
    /// # Errors
    /// When the file cannot be written (e.g. outside the grants).
    pub fn save<T: Serialize>(path: impl AsRef<Path>, value: &T) -> Result<()> {
        let path = path.as_ref();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| format!("state does not serialize: {e}"))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
    }
}

/// Seconds since the Unix epoch for an RFC 3339 timestamp
/// (`2025-12-01T12:00:00.123-06:00`), without a date-time crate.
pub fn parse_rfc3339(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, s) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &ts[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (rest[1..3].parse::<i64>().ok()? * 3600 + rest[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset)
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the Unix epoch, from the WASI wall clock.
pub fn now_epoch_seconds() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// What every handler implements.
pub trait Handler {
    const NAME: &'static str;
    const VERSION: &'static str = "0.1.0";
    /// Event types or globs this handler expects (reported by `describe`).
    const EVENTS: &'static [&'static str];

    /// Handles one event; the `Ok` string is the outcome's summary.
    ///
    /// # Errors
    /// A message; the host retries the event, then dead-letters it.
    fn handle(event: Event) -> Result<String>;
}

/// Exports a [`Handler`] as the component's `handler` world.
#[macro_export]
macro_rules! handler {
    ($t:ty) => {
        struct __CortexExport;
        impl $crate::bindings::Guest for __CortexExport {
            fn handle(
                event: $crate::bindings::cortex::events::types::Event,
            ) -> ::std::result::Result<$crate::bindings::Outcome, $crate::bindings::HandlerError> {
                // cortex:events@0.2.0: until the SDK says otherwise, every
                // error of a Rust handler is retryable, as under 0.1.0.
                <$t as $crate::Handler>::handle(event.into())
                    .map(|summary| $crate::bindings::Outcome { summary })
                    .map_err(|message| $crate::bindings::HandlerError { message, retryable: true })
            }
            fn describe() -> $crate::bindings::Info {
                $crate::bindings::Info {
                    name: <$t as $crate::Handler>::NAME.into(),
                    version: <$t as $crate::Handler>::VERSION.into(),
                    events: <$t as $crate::Handler>::EVENTS.iter().map(|s| s.to_string()).collect(),
                    emits: ::std::vec::Vec::new(),
                    contracts: ::std::vec::Vec::new(),
                }
            }
        }
        $crate::bindings::export_handler!(__CortexExport);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2025-12-01T12:00:00-06:00"), Some(1_764_612_000));
        assert_eq!(parse_rfc3339("2025-12-01T18:00:00.250+00:00"), Some(1_764_612_000));
        assert_eq!(parse_rfc3339("nope"), None);
    }
}

// Helpers shared by the handler crates (appended; the items above are the
// original SDK surface).

/// The civil date `(year, month, day)` of a day count since 1970-01-01: the
/// inverse of [`days_from_civil`] (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The RFC 3339 UTC form (`2025-12-01T18:00:00Z`) of seconds since the epoch.
pub fn format_rfc3339(epoch: i64) -> String {
    let (y, m, d) = civil_from_days(epoch.div_euclid(86_400));
    let s = epoch.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

/// How many applied event ids a handler keeps to recognise redeliveries
/// (delivery is at-least-once).
pub const RECENT_IDS: usize = 256;

/// Whether `id` is among the applied ids kept by [`remember`].
pub fn already_applied(recent: &[String], id: &str) -> bool {
    recent.iter().any(|r| r == id)
}

/// Records `id` as applied, keeping only the last [`RECENT_IDS`].
pub fn remember(recent: &mut Vec<String>, id: &str) {
    if !already_applied(recent, id) {
        recent.push(id.to_string());
    }
    keep_last(recent, RECENT_IDS);
}

/// The summary for a redelivered event that was already applied.
pub fn duplicate_summary(id: &str) -> String {
    format!("duplicate {id}: already applied")
}

/// Drops the oldest items of a history list so at most `cap` remain.
pub fn keep_last<T>(items: &mut Vec<T>, cap: usize) {
    if items.len() > cap {
        items.drain(..items.len() - cap);
    }
}

/// The event's timestamp in seconds since the epoch, or an error naming it.
///
/// # Errors
/// When the timestamp is not RFC 3339.
pub fn event_time(event: &Event) -> Result<i64> {
    event.epoch_seconds().ok_or_else(|| format!("event timestamp {:?} is not RFC 3339", event.timestamp))
}

/// A follow-up event as plain data: pure handler logic decides what to emit
/// and unit tests inspect it without a host; [`FollowUp::send`] emits it.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUp {
    pub event_type: String,
    /// A JSON object.
    pub payload: Value,
    /// `None`: the host's default (medium).
    pub priority: Option<Priority>,
    /// `None`: the triggering event's correlation id.
    pub correlation_id: Option<String>,
    pub master: Option<String>,
}

impl FollowUp {
    pub fn new(event_type: &str, payload: Value) -> FollowUp {
        FollowUp { event_type: event_type.into(), payload, priority: None, correlation_id: None, master: None }
    }

    pub fn priority(mut self, p: Priority) -> FollowUp {
        self.priority = Some(p);
        self
    }

    pub fn correlation_id(mut self, id: impl Into<String>) -> FollowUp {
        self.correlation_id = Some(id.into());
        self
    }

    pub fn master(mut self, m: impl Into<String>) -> FollowUp {
        self.master = Some(m.into());
        self
    }

    /// Hands the event to the host; returns its id.
    ///
    /// # Errors
    /// When the host refuses it, naming the event type.
    pub fn send(self) -> Result<String> {
        let mut emit = Emit::new(&self.event_type).payload(&self.payload)?;
        if let Some(p) = self.priority {
            emit = emit.priority(p);
        }
        if let Some(c) = self.correlation_id {
            emit = emit.correlation_id(c);
        }
        if let Some(m) = self.master {
            emit = emit.master(m);
        }
        emit.send().map_err(|e| format!("emit {} refused: {e}", self.event_type))
    }
}

/// Parses a priority name (`critical`, `high`, `medium`, `low`).
pub fn parse_priority(name: &str) -> Option<Priority> {
    match name {
        "critical" => Some(Priority::Critical),
        "high" => Some(Priority::High),
        "medium" => Some(Priority::Medium),
        "low" => Some(Priority::Low),
        _ => None,
    }
}

impl Event {
    /// An event from its JSON envelope as producers write it (`event_id`,
    /// `event_type`, `timestamp`, `source`, `correlation_id`, `metadata`,
    /// `payload`), as the first delivery: for tests and fixtures.
    ///
    /// # Errors
    /// When the text is not a JSON object or a required field is missing.
    pub fn from_envelope_json(text: &str) -> Result<Event> {
        let envelope: Map<String, Value> =
            serde_json::from_str(text).map_err(|e| format!("event envelope is not a JSON object: {e}"))?;
        let text_field = |key: &str| {
            envelope
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("envelope {key} is missing"))
        };
        let mut metadata = match envelope.get("metadata") {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        let priority = match metadata.remove("priority") {
            Some(Value::String(p)) => {
                parse_priority(&p).ok_or_else(|| format!("metadata.priority {p:?} is unknown"))?
            }
            _ => Priority::Medium,
        };
        let master = metadata.remove("master").and_then(|m| m.as_str().map(str::to_string));
        let tags = match metadata.remove("tags") {
            Some(Value::Array(tags)) => tags.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        };
        Ok(Event {
            id: text_field("event_id")?,
            event_type: text_field("event_type")?,
            timestamp: text_field("timestamp")?,
            source: text_field("source")?,
            correlation_id: envelope.get("correlation_id").and_then(Value::as_str).map(str::to_string),
            master,
            priority,
            tags,
            metadata,
            payload: match envelope.get("payload") {
                Some(Value::Object(p)) => p.clone(),
                _ => Map::new(),
            },
            attempt: 1,
        })
    }
}

/// Typed access to optional payload fields, with errors that name the field.
pub mod fields {
    use super::*;

    /// An optional string field; `null` counts as absent.
    ///
    /// # Errors
    /// When present with another type.
    pub fn opt_str(payload: &Map<String, Value>, key: &str) -> Result<Option<String>> {
        match payload.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("payload.{key} must be a string, got {other}")),
        }
    }

    /// A required, non-empty string field.
    ///
    /// # Errors
    /// When missing, empty or of another type.
    pub fn req_str(payload: &Map<String, Value>, key: &str) -> Result<String> {
        match opt_str(payload, key)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(format!("payload.{key} is empty")),
            None => Err(format!("payload.{key} is required")),
        }
    }

    /// An optional non-negative integer field (a whole float such as `3.0` is accepted).
    ///
    /// # Errors
    /// When present but not a non-negative whole number.
    pub fn opt_u64(payload: &Map<String, Value>, key: &str) -> Result<Option<u64>> {
        match payload.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match (v.as_u64(), v.as_f64()) {
                (Some(n), _) => Ok(Some(n)),
                (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => Ok(Some(f as u64)),
                _ => Err(format!("payload.{key} must be a non-negative integer, got {v}")),
            },
        }
    }

    /// An optional number field.
    ///
    /// # Errors
    /// When present but not a number.
    pub fn opt_f64(payload: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
        match payload.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| format!("payload.{key} must be a number, got {v}")),
        }
    }

    /// An optional boolean field.
    ///
    /// # Errors
    /// When present but not a boolean.
    pub fn opt_bool(payload: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
        match payload.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(format!("payload.{key} must be true or false, got {other}")),
        }
    }
}

#[cfg(test)]
mod helper_tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for d in [-800_000, -1, 0, 59, 11_016, 20_423, 400_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(format_rfc3339(1_764_612_000), "2025-12-01T18:00:00Z");
        assert_eq!(parse_rfc3339(&format_rfc3339(1_764_612_345)), Some(1_764_612_345));
    }

    #[test]
    fn remember_keeps_the_last_ids() {
        let mut ids = Vec::new();
        for i in 0..300 {
            remember(&mut ids, &format!("evt_{i}"));
        }
        remember(&mut ids, "evt_299");
        assert_eq!(ids.len(), RECENT_IDS);
        assert!(already_applied(&ids, "evt_299"));
        assert!(already_applied(&ids, "evt_44"));
        assert!(!already_applied(&ids, "evt_43"));
    }

    #[test]
    fn envelope_parses() {
        let e = Event::from_envelope_json(
            r#"{"event_id":"evt_20251201_120000_abc123","event_type":"task.failed","timestamp":"2025-12-01T12:00:00-06:00",
                "source":"w","metadata":{"priority":"high","master":"m","tags":["a"],"replay":true},"payload":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(e.priority, Priority::High);
        assert_eq!(e.master.as_deref(), Some("m"));
        assert_eq!(e.tags, vec!["a"]);
        assert_eq!(e.metadata.get("replay"), Some(&Value::Bool(true)));
        assert_eq!(e.epoch_seconds(), Some(1_764_612_000));
        assert!(Event::from_envelope_json(r#"{"event_type":"x"}"#).unwrap_err().contains("event_id"));
    }

    #[test]
    fn field_types_are_checked() {
        let p = json!({"s": "x", "n": 3.0, "neg": -1, "b": true, "empty": " "});
        let p = p.as_object().unwrap();
        assert_eq!(fields::opt_u64(p, "n").unwrap(), Some(3));
        assert!(fields::opt_u64(p, "neg").unwrap_err().contains("payload.neg"));
        assert!(fields::opt_str(p, "n").unwrap_err().contains("payload.n"));
        assert!(fields::req_str(p, "empty").is_err());
        assert!(fields::req_str(p, "missing").unwrap_err().contains("required"));
        assert_eq!(fields::opt_bool(p, "b").unwrap(), Some(true));
        assert_eq!(fields::opt_f64(p, "missing").unwrap(), None);
    }
}
