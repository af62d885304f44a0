//! Reading a payload the way producers really send it. A [`Reader`] reads
//! fields by name (or by a list of synonyms), accepts the common shapes (a
//! number sent as text, an error as a string or an object), refuses an
//! unusable value with a message naming the field and what was expected
//! ([`crate::Error::refuse`]: the host dead-letters the event at once), and
//! remembers every name it was asked for. [`Reader::finish`] returns the
//! fields nobody asked for, which a handler reports with one warn line
//! ([`Leftover::warn`]) instead of dropping them silently.

use crate::{Error, Event, Map, Result, Value};
use std::collections::BTreeSet;

/// The fields the host's schedules add to every event they emit
/// (`[schedules.NAME]` in `cortex.toml`): a handler of a scheduled type
/// accepts them.
pub const SCHEDULE_FIELDS: [&str; 3] = ["schedule", "tick", "missed"];
/// Ignored field names listed in one warn line.
const MAX_LISTED: usize = 20;
/// Bytes of a bad value quoted in a refusal.
const MAX_QUOTED: usize = 100;

/// One field name, or synonyms tried in order.
pub trait Names {
    fn names(&self) -> &[&str];
}

impl Names for &str {
    fn names(&self) -> &[&str] {
        std::slice::from_ref(self)
    }
}

impl<const N: usize> Names for [&str; N] {
    fn names(&self) -> &[&str] {
        self
    }
}

impl Names for &[&str] {
    fn names(&self) -> &[&str] {
        self
    }
}

/// Typed reads of one event's payload that remember the names asked for.
#[derive(Debug)]
pub struct Reader<'a> {
    event_type: &'a str,
    /// Where the fields are, for messages: `payload`, `payload.error`.
    at: String,
    payload: &'a Map<String, Value>,
    asked: BTreeSet<String>,
}

impl<'a> Reader<'a> {
    pub fn new(event: &'a Event) -> Reader<'a> {
        Reader::of(&event.event_type, &event.payload)
    }

    /// A reader of a payload object (for a nested object, `event_type` says
    /// where it came from).
    pub fn of(event_type: &'a str, payload: &'a Map<String, Value>) -> Reader<'a> {
        Reader::within(event_type, "payload", payload)
    }

    /// A reader of an object nested in the payload, found at `at`
    /// (`payload.findings`): messages name its fields from there.
    pub fn within(event_type: &'a str, at: &str, object: &'a Map<String, Value>) -> Reader<'a> {
        Reader { event_type, at: at.to_string(), payload: object, asked: BTreeSet::new() }
    }

    /// The refusal for a field `key` whose value `got` is not `expected`.
    pub fn wrong(&self, key: &str, expected: &str, got: &Value) -> Error {
        // A key can be the producer's (a severity name in `findings`).
        let (key, got) = (clip(key, 64), clip(&got.to_string(), MAX_QUOTED));
        Error::refuse(format!("{}.{key} must be {expected}, got {got}", self.at))
    }

    /// The first of `names` that is present, not null and not blank text,
    /// with the name it was found under.
    pub fn value(&mut self, names: impl Names) -> Option<(&'a str, &'a Value)> {
        let names = names.names();
        self.asked.extend(names.iter().map(|n| n.to_string()));
        let payload = self.payload;
        names.iter().find_map(|n| payload.get_key_value(*n).filter(|(_, v)| present(v)).map(|(k, v)| (k.as_str(), v)))
    }

    /// A text field; a number is taken as its text.
    ///
    /// # Errors
    /// A refusal when the value is of another type.
    pub fn str(&mut self, names: impl Names) -> Result<Option<String>> {
        match self.value(names) {
            None => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s.clone())),
            Some((_, Value::Number(n))) => Ok(Some(n.to_string())),
            Some((key, v)) => Err(self.wrong(key, "a string", v)),
        }
    }

    /// A required, non-blank text field.
    ///
    /// # Errors
    /// A refusal when it is missing, blank or of another type.
    pub fn req_str(&mut self, names: impl Names) -> Result<String> {
        let names = names.names();
        self.str(names)?.ok_or_else(|| Error::refuse(format!("{}.{} is required (a string)", self.at, listed(names))))
    }

    /// A non-negative whole number, sent as a number (`3`, `3.0`) or as text
    /// (`"1500"`).
    ///
    /// # Errors
    /// A refusal when present but not such a number.
    pub fn u64(&mut self, names: impl Names) -> Result<Option<u64>> {
        let Some((key, v)) = self.value(names) else { return Ok(None) };
        whole_number(v).map(Some).ok_or_else(|| self.wrong(key, "a non-negative whole number (or its text)", v))
    }

    /// A finite number, sent as a number or as text (`"0.42"`).
    ///
    /// # Errors
    /// A refusal when present but not a number.
    pub fn f64(&mut self, names: impl Names) -> Result<Option<f64>> {
        let Some((key, v)) = self.value(names) else { return Ok(None) };
        let n = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        n.filter(|n| n.is_finite()).map(Some).ok_or_else(|| self.wrong(key, "a number (or its text)", v))
    }

    /// `true` or `false` (also as text).
    ///
    /// # Errors
    /// A refusal when present but not a boolean.
    pub fn bool(&mut self, names: impl Names) -> Result<Option<bool>> {
        match self.value(names) {
            None => Ok(None),
            Some((_, Value::Bool(b))) => Ok(Some(*b)),
            Some((_, Value::String(s))) if s.trim().eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some((_, Value::String(s))) if s.trim().eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some((key, v)) => Err(self.wrong(key, "true or false", v)),
        }
    }

    /// An error description as one line: a string as it is, or an object
    /// `{message, code, type}` (also `msg`, `name`) as `type: message (code)`.
    ///
    /// # Errors
    /// A refusal for another type, or an object with none of those keys.
    pub fn error_text(&mut self, names: impl Names) -> Result<Option<String>> {
        match self.value(names) {
            None => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s.clone())),
            Some((key, Value::Object(o))) => {
                let mut inner = Reader::within(self.event_type, &format!("{}.{key}", self.at), o);
                let message = inner.str(["message", "msg"])?;
                let code = inner.str("code")?;
                let kind = inner.str(["type", "name"])?;
                let mut text = match (kind, message) {
                    (Some(k), Some(m)) => format!("{k}: {m}"),
                    (Some(t), None) | (None, Some(t)) => t,
                    (None, None) => match &code {
                        Some(c) => c.clone(),
                        None => {
                            return Err(self.wrong(
                                key,
                                "a string or an object with message, code or type",
                                &Value::Object(o.clone()),
                            ));
                        }
                    },
                };
                if let Some(c) = code.filter(|c| !text.contains(c.as_str())) {
                    text.push_str(&format!(" ({c})"));
                }
                Ok(Some(text))
            }
            Some((key, v)) => Err(self.wrong(key, "a string or an object with message, code or type", v)),
        }
    }

    /// Marks fields as accepted without reading them (documented in the
    /// contract, not used by this handler).
    pub fn known(&mut self, names: impl Names) {
        self.asked.extend(names.names().iter().map(|n| n.to_string()));
    }

    /// Marks every field as read: for a handler that keeps the payload whole.
    pub fn rest(&mut self) {
        self.asked.extend(self.payload.keys().cloned());
    }

    /// The fields of the payload that were never asked for.
    pub fn finish(self) -> Leftover {
        let ignored = self.payload.keys().filter(|k| !self.asked.contains(k.as_str())).cloned().collect();
        Leftover { event_type: self.event_type.to_string(), ignored, asked: self.asked }
    }
}

/// What a [`Reader`] left: the payload fields it ignored, and every name it
/// asked for (a contract test compares those with the JSON Schema).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Leftover {
    pub event_type: String,
    /// Sorted.
    pub ignored: Vec<String>,
    pub asked: BTreeSet<String>,
}

impl Leftover {
    /// The warn line naming the ignored fields (never their values), if any.
    pub fn message(&self) -> Option<String> {
        if self.ignored.is_empty() {
            return None;
        }
        let mut names: Vec<String> = self.ignored.iter().take(MAX_LISTED).map(|n| clip(n, 64)).collect();
        if self.ignored.len() > MAX_LISTED {
            names.push(format!("and {} more", self.ignored.len() - MAX_LISTED));
        }
        Some(format!(
            "{} payload: ignored {} unknown field{}: {}",
            self.event_type,
            self.ignored.len(),
            if self.ignored.len() == 1 { "" } else { "s" },
            names.join(", ")
        ))
    }

    /// Logs [`Leftover::message`] at warn level, once.
    pub fn warn(&self) {
        if let Some(m) = self.message() {
            crate::warn(&m);
        }
    }
}

fn present(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.trim().is_empty(),
        _ => true,
    }
}

/// A non-negative whole number from a number or its text.
fn whole_number(v: &Value) -> Option<u64> {
    let from_f64 = |f: f64| (f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64).then_some(f as u64);
    match v {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().and_then(from_f64)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>().ok().or_else(|| s.parse::<f64>().ok().and_then(from_f64))
        }
        _ => None,
    }
}

/// `a` or `a (or b, c)`.
fn listed(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} (or {})", rest.join(", ")),
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json;

    fn reader_test(payload: Value, f: impl FnOnce(&mut Reader)) -> Leftover {
        let map = payload.as_object().unwrap().clone();
        let mut r = Reader::of("t.x", &map);
        f(&mut r);
        r.finish()
    }

    #[test]
    fn numbers_come_as_numbers_or_text() {
        let p = json!({"a": 3, "b": 3.0, "c": " 1500 ", "d": "many", "e": -1, "f": "0.42", "g": null, "h": ""});
        reader_test(p, |r| {
            assert_eq!(r.u64("a").unwrap(), Some(3));
            assert_eq!(r.u64("b").unwrap(), Some(3));
            assert_eq!(r.u64("c").unwrap(), Some(1500));
            let err = r.u64("d").unwrap_err();
            assert!(!err.is_retryable());
            assert_eq!(err.message(), "payload.d must be a non-negative whole number (or its text), got \"many\"");
            assert!(r.u64("e").unwrap_err().message().contains("payload.e"));
            assert_eq!(r.f64("f").unwrap(), Some(0.42));
            assert!(r.f64("d").is_err());
            assert_eq!(r.u64("g").unwrap(), None, "null is absent");
            assert_eq!(r.u64("h").unwrap(), None, "blank text is absent");
        });
    }

    #[test]
    fn synonyms_are_tried_in_order_and_named_when_missing() {
        let p = json!({"cve_id": "CVE-1", "id": "", "n": 7, "flag": "TRUE", "obj": {}});
        let left = reader_test(p, |r| {
            assert_eq!(r.str(["id", "cve_id", "cve"]).unwrap().as_deref(), Some("CVE-1"));
            assert_eq!(r.str("n").unwrap().as_deref(), Some("7"));
            assert_eq!(r.bool("flag").unwrap(), Some(true));
            assert!(r.str("obj").unwrap_err().message().starts_with("payload.obj must be a string"));
            let err = r.req_str(["task_id", "task"]).unwrap_err();
            assert_eq!(err.message(), "payload.task_id (or task) is required (a string)");
        });
        assert!(left.ignored.is_empty(), "{left:?}");
        assert!(left.asked.contains("cve") && left.asked.contains("task"));
    }

    #[test]
    fn errors_come_as_text_or_objects() {
        let p = json!({
            "a": "timeout", "b": {"message": "socket hang up", "code": "ECONNRESET", "type": "NetworkError"},
            "c": {"code": "E42"}, "d": {"detail": "x"}, "e": 5, "f": {"message": "HTTP 429", "code": 429},
        });
        reader_test(p, |r| {
            assert_eq!(r.error_text("a").unwrap().as_deref(), Some("timeout"));
            assert_eq!(r.error_text("b").unwrap().as_deref(), Some("NetworkError: socket hang up (ECONNRESET)"));
            assert_eq!(r.error_text("c").unwrap().as_deref(), Some("E42"));
            assert_eq!(r.error_text("f").unwrap().as_deref(), Some("HTTP 429"), "a code already in the text");
            let err = r.error_text("d").unwrap_err();
            assert!(!err.is_retryable() && err.message().contains("payload.d must be a string or an object"), "{err}");
            assert!(r.error_text("e").is_err());
        });
    }

    #[test]
    fn leftover_names_the_ignored_fields_once() {
        let left = reader_test(json!({"a": 1, "repo": "x", "recommendation": "y"}), |r| {
            r.known("a");
        });
        assert_eq!(left.ignored, ["recommendation", "repo"]);
        assert_eq!(left.message().unwrap(), "t.x payload: ignored 2 unknown fields: recommendation, repo");
        let all = reader_test(json!({"a": 1, "b": 2}), |r| r.rest());
        assert_eq!(all.message(), None);
        let many: Map<String, Value> = (0..25).map(|i| (format!("k{i:02}"), json!(i))).collect();
        let left = reader_test(Value::Object(many), |_| {});
        assert!(left.message().unwrap().ends_with("k19, and 5 more"), "{:?}", left.message());
        assert!(clip(&"é".repeat(100), 101).ends_with('…'));
        let long = Map::from_iter([("k".repeat(500), json!([1]))]);
        let err = Reader::of("t.x", &long).u64("k".repeat(500).as_str()).unwrap_err();
        assert!(err.message().len() < 200, "{err}");
    }
}
