//! Validation of event envelopes: every problem of a document at once,
//! each with the path of the field it concerns; only a document without
//! problems becomes an [`Event`]. The catalogue, categories and id rules it
//! checks against are the parent module's.
//!
//! About 350 lines of code; the rest is unit and property tests of every
//! rule, kept beside the rules.

use super::*;

/// One thing wrong with an event: the field it concerns and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// All the problems of one rejected event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub Vec<Problem>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(Problem::to_string).collect();
        f.write_str(&lines.join("; "))
    }
}

impl std::error::Error for Invalid {}

/// What [`Validator::check_text`] found.
#[derive(Debug)]
pub enum Checked {
    /// The text is one event document.
    One(Result<Event, Invalid>),
    /// The text is JSONL: how many events, and the invalid ones with their
    /// line numbers (1-based, blank lines counted).
    Lines { total: usize, invalid: Vec<(usize, Invalid)> },
}

/// Checks envelopes against the catalogue plus the custom types of a config.
#[derive(Debug, Clone)]
pub struct Validator {
    custom_types: Vec<String>,
    max_event_bytes: usize,
}

impl Default for Validator {
    fn default() -> Self {
        Validator::new(Vec::new(), DEFAULT_MAX_EVENT_BYTES)
    }
}

impl Validator {
    pub fn new(custom_types: Vec<String>, max_event_bytes: usize) -> Validator {
        Validator { custom_types, max_event_bytes }
    }

    pub fn max_event_bytes(&self) -> usize {
        self.max_event_bytes
    }

    /// The category of a known type, or `None` when the type is neither in
    /// the catalogue nor declared.
    pub fn category(&self, event_type: &str) -> Option<Category> {
        if let Some((_, c)) = CATALOGUE.iter().find(|(t, _)| *t == event_type) {
            return Some(*c);
        }
        if self.custom_types.iter().any(|t| t == event_type) {
            let prefix = event_type.split('.').next().unwrap_or_default();
            return Some(Category::from_prefix(prefix).unwrap_or(Category::Custom));
        }
        None
    }

    /// Parses and validates one JSON text.
    ///
    /// # Errors
    /// Every problem found, each with its field path.
    pub fn parse(&self, text: &str) -> Result<Event, Invalid> {
        if text.len() > self.max_event_bytes {
            return Err(Invalid(vec![self.too_large(text.len())]));
        }
        let value: Value = serde_json::from_str(text).map_err(|e| {
            Invalid(vec![Problem { path: "(document)".into(), message: format!("malformed JSON: {e}") }])
        })?;
        self.validate(value)
    }

    /// Checks a text that is either one (possibly pretty-printed) event or
    /// JSONL: JSONL when its first non-blank line is a whole JSON document
    /// of its own and more lines follow.
    pub fn check_text(&self, text: &str) -> Checked {
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let jsonl = lines.next().is_some_and(|(_, first)| serde_json::from_str::<Value>(first).is_ok())
            && lines.next().is_some();
        if !jsonl {
            return Checked::One(self.parse(text));
        }
        let (mut total, mut invalid) = (0, Vec::new());
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            total += 1;
            if let Err(problems) = self.parse(line) {
                invalid.push((i + 1, problems));
            }
        }
        Checked::Lines { total, invalid }
    }

    /// Validates a JSON value and converts it into an [`Event`].
    ///
    /// # Errors
    /// Every problem found, each with its field path.
    pub fn validate(&self, mut value: Value) -> Result<Event, Invalid> {
        // An empty correlation id is no correlation id: stored as `""` it
        // would be inherited by follow-ups instead of the trigger's id.
        if let Some(obj) = value.as_object_mut()
            && obj.get("correlation_id").and_then(Value::as_str).is_some_and(|c| c.is_empty())
        {
            obj.remove("correlation_id");
        }
        let problems = self.problems(&value);
        if !problems.is_empty() {
            return Err(Invalid(problems));
        }
        let event: Event = serde_json::from_value(value).map_err(|e| {
            Invalid(vec![Problem { path: "(document)".into(), message: format!("does not fit the envelope: {e}") }])
        })?;
        let size = event.json_len();
        if size > self.max_event_bytes {
            return Err(Invalid(vec![self.too_large(size)]));
        }
        Ok(event)
    }

    fn too_large(&self, size: usize) -> Problem {
        Problem {
            path: "(document)".into(),
            message: format!(
                "event is {size} bytes, over the {} byte limit (raise limits.max_event_bytes in cortex.toml)",
                self.max_event_bytes
            ),
        }
    }

    /// Every problem with a JSON value, in field order; empty when valid.
    pub fn problems(&self, value: &Value) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |path: &str, message: String| out.push(Problem { path: path.into(), message });
        let Some(obj) = value.as_object() else {
            bad("(document)", format!("expected a JSON object, found {}", kind(value)));
            return out;
        };
        for key in obj.keys() {
            if !FIELDS.contains(&key.as_str()) {
                // A key that is not a plain word is quoted, so "" or " x" stays visible.
                let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                let path = if plain { key.clone() } else { crate::text::quote(key) };
                bad(&path, format!("unknown field (the envelope has: {})", FIELDS.join(", ")));
            }
        }
        match obj.get("event_id") {
            None => bad("event_id", "required field is missing".into()),
            Some(Value::String(id)) if is_valid_event_id(id) => {}
            Some(Value::String(id)) => bad(
                "event_id",
                format!("{} does not match evt_YYYYMMDD_HHMMSS_<6+ lowercase alphanumerics>", crate::text::quote(id)),
            ),
            Some(v) => bad("event_id", format!("expected a string, found {}", kind(v))),
        }
        match obj.get("event_type") {
            None => bad("event_type", "required field is missing".into()),
            Some(Value::String(t)) if !is_valid_type_name(t) => bad(
                "event_type",
                format!(
                    "{} is not a type name (lowercase dot-separated words, e.g. worker.completed)",
                    crate::text::quote(t)
                ),
            ),
            Some(Value::String(t)) if self.category(t).is_none() => bad(
                "event_type",
                format!(
                    "unknown event type {}: not in the catalogue; declare it under [events] custom_types in cortex.toml",
                    crate::text::quote(t)
                ),
            ),
            Some(Value::String(_)) => {}
            Some(v) => bad("event_type", format!("expected a string, found {}", kind(v))),
        }
        match obj.get("timestamp") {
            None => bad("timestamp", "required field is missing".into()),
            Some(Value::String(ts)) => {
                if let Err(why) = check_timestamp(ts) {
                    bad("timestamp", why);
                }
            }
            Some(v) => bad("timestamp", format!("expected a string, found {}", kind(v))),
        }
        match obj.get("source") {
            None => bad("source", "required field is missing".into()),
            Some(Value::String(s)) if s.trim().is_empty() => bad("source", "must not be empty".into()),
            Some(Value::String(_)) => {}
            Some(v) => bad("source", format!("expected a string, found {}", kind(v))),
        }
        match obj.get("correlation_id") {
            None | Some(Value::String(_)) => {}
            Some(v) => bad("correlation_id", format!("expected a string, found {}", kind(v))),
        }
        match obj.get("metadata") {
            None => {}
            Some(Value::Object(m)) => {
                match m.get("master") {
                    None | Some(Value::String(_)) => {}
                    Some(v) => bad("metadata.master", format!("expected a string, found {}", kind(v))),
                }
                match m.get("priority") {
                    None => {}
                    Some(Value::String(p)) => {
                        if let Err(why) = p.parse::<Priority>() {
                            bad("metadata.priority", why);
                        }
                    }
                    Some(v) => bad("metadata.priority", format!("expected a string, found {}", kind(v))),
                }
                match m.get("tags") {
                    None => {}
                    Some(Value::Array(tags)) => {
                        for (i, t) in tags.iter().enumerate() {
                            if !t.is_string() {
                                bad(&format!("metadata.tags[{i}]"), format!("expected a string, found {}", kind(t)));
                            }
                        }
                    }
                    Some(v) => bad("metadata.tags", format!("expected an array of strings, found {}", kind(v))),
                }
                // What the host records when a handler emits: a forged one
                // could pass a loop off as a fresh event or point anywhere.
                match m.get("caused_by") {
                    None => {}
                    Some(Value::Object(c)) => {
                        match c.get("event_id") {
                            Some(Value::String(id)) if is_valid_event_id(id) => {}
                            Some(v) => bad(
                                "metadata.caused_by.event_id",
                                format!("{} is not an event id", serde_json::to_string(v).unwrap_or_default()),
                            ),
                            None => bad("metadata.caused_by.event_id", "required field is missing".into()),
                        }
                        match c.get("handler") {
                            Some(Value::String(h)) if is_valid_handler_name(h) => {}
                            Some(v) => bad(
                                "metadata.caused_by.handler",
                                format!("{} is not a handler name", serde_json::to_string(v).unwrap_or_default()),
                            ),
                            None => bad("metadata.caused_by.handler", "required field is missing".into()),
                        }
                        match c.get("hops") {
                            None => {}
                            Some(v) if v.as_u64().is_some_and(|h| h <= MAX_HOPS_RECORDED) => {}
                            Some(v) => bad(
                                "metadata.caused_by.hops",
                                format!("expected a whole number up to {MAX_HOPS_RECORDED}, found {v}"),
                            ),
                        }
                    }
                    Some(v) => bad("metadata.caused_by", format!("expected an object, found {}", kind(v))),
                }
            }
            Some(v) => bad("metadata", format!("expected an object, found {}", kind(v))),
        }
        match obj.get("payload") {
            None | Some(Value::Object(_)) => {}
            Some(v) => bad("payload", format!("expected an object, found {}", kind(v))),
        }
        for field in ["metadata", "payload"] {
            if let Some(v) = obj.get(field) {
                let depth = nesting(v);
                if depth > MAX_NESTING {
                    bad(field, format!("nested {depth} levels deep, over the limit of {MAX_NESTING}"));
                }
            }
        }
        out
    }
}

/// How deeply a JSON value nests: 0 for a scalar, 1 for `{}` or `[]`, one
/// more per container inside. Iterative, so no input can exhaust the stack.
pub fn nesting(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 1)];
    while let Some((v, depth)) = stack.pop() {
        match v {
            Value::Array(items) => {
                deepest = deepest.max(depth);
                stack.extend(items.iter().map(|i| (i, depth + 1)));
            }
            Value::Object(map) => {
                deepest = deepest.max(depth);
                stack.extend(map.values().map(|i| (i, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}

fn check_timestamp(ts: &str) -> Result<(), String> {
    // RFC 3339 proper: chrono alone would also take a space for the `T`.
    let b = ts.as_bytes();
    if b.len() < 19 || b[10] != b'T' || !ts.is_char_boundary(19) {
        return Err(format!(
            "{} is not an RFC 3339 timestamp (e.g. 2025-12-01T12:00:00-06:00)",
            crate::text::quote(ts)
        ));
    }
    let tail = &ts[19..];
    let zone = match tail.strip_prefix('.') {
        Some(frac) => frac.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => tail,
    };
    let zone_ok = zone == "Z"
        || (zone.len() == 6
            && zone.starts_with(['+', '-'])
            && zone.as_bytes()[3] == b':'
            && zone.bytes().enumerate().all(|(i, c)| i == 0 || i == 3 || c.is_ascii_digit()));
    let fraction_ok = !tail.starts_with('.') || tail.len() - zone.len() > 1;
    if zone.is_empty() {
        return Err(format!("{} has no UTC offset; add one, e.g. Z or -06:00", crate::text::quote(ts)));
    }
    if !zone_ok || !fraction_ok || DateTime::parse_from_rfc3339(ts).is_err() {
        return Err(format!(
            "{} is not a valid RFC 3339 timestamp (e.g. 2025-12-01T12:00:00-06:00)",
            crate::text::quote(ts)
        ));
    }
    Ok(())
}

/// A JSON value's kind, for error messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod properties;
