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
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({
            "event_id": "evt_20251201_120000_abc123",
            "event_type": "worker.completed",
            "timestamp": "2025-12-01T12:00:00-06:00",
            "source": "worker-implementation-042",
            "correlation_id": "task-security-scan-001",
            "metadata": {"master": "security-master", "priority": "high", "tags": ["production", "critical"]},
            "payload": {"worker_id": "worker-implementation-042", "tokens_used": 12450}
        })
    }

    #[test]
    fn seed_example_is_valid() {
        let e = Validator::default().validate(good()).unwrap();
        assert_eq!(e.priority(), Priority::High);
        assert_eq!(e.metadata.tags, vec!["production", "critical"]);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let v = json!({"event_id": "x", "timestamp": "2025-12-01T12:00:00", "source": "", "metadata": {"priority": "urgent", "tags": ["a", 3]}, "payload": [], "extra": 1});
        let paths: Vec<String> = Validator::default().problems(&v).into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            [
                "extra",
                "event_id",
                "event_type",
                "timestamp",
                "source",
                "metadata.priority",
                "metadata.tags[1]",
                "payload"
            ]
        );
    }

    #[test]
    fn timestamp_needs_an_offset() {
        assert!(check_timestamp("2025-12-01T12:00:00Z").is_ok());
        assert!(check_timestamp("2025-12-01T12:00:00.123+05:30").is_ok());
        assert!(check_timestamp("2025-12-01T12:00:00").unwrap_err().contains("no UTC offset"));
        assert!(check_timestamp("2025-12-01 12:00:00Z").is_err());
        assert!(check_timestamp("2025-02-30T12:00:00Z").is_err());
        assert!(check_timestamp("2025-12-01T12:00:00z").is_err());
        assert!(check_timestamp("2025-12-01T12:00:00.Z").is_err());
        assert!(check_timestamp("2025-12-01T12:00:00+0600").is_err());
        assert!(check_timestamp("2025-12-01T12:00:00.5").unwrap_err().contains("no UTC offset"));
    }

    #[test]
    fn custom_types_need_declaring() {
        let mut v = good();
        v["event_type"] = json!("billing.invoice_paid");
        assert!(Validator::default().validate(v.clone()).is_err());
        let custom = Validator::new(vec!["billing.invoice_paid".into()], DEFAULT_MAX_EVENT_BYTES);
        assert!(custom.validate(v).is_ok());
        assert_eq!(custom.category("billing.invoice_paid"), Some(Category::Custom));
    }

    #[test]
    fn a_text_is_one_document_or_jsonl_with_line_numbers() {
        let v = Validator::default();
        let pretty = serde_json::to_string_pretty(&good()).unwrap();
        assert!(matches!(v.check_text(&pretty), Checked::One(Ok(_))), "a pretty-printed event is one document");
        assert!(matches!(v.check_text(&good().to_string()), Checked::One(Ok(_))), "one line is one document");
        let text = format!("{}\n\n{{\"event_type\": \"task.created\"}}\n{}\n", good(), good());
        let Checked::Lines { total, invalid } = v.check_text(&text) else { panic!("JSONL taken for one document") };
        assert_eq!(total, 3);
        assert_eq!(invalid.iter().map(|(line, _)| *line).collect::<Vec<_>>(), [3], "blank lines are counted");
    }

    #[test]
    fn oversized_events_are_rejected() {
        let mut v = good();
        v["payload"] = json!({"blob": "x".repeat(2000)});
        let small = Validator::new(vec![], 1000);
        assert!(small.validate(v).unwrap_err().to_string().contains("over the 1000 byte limit"));
    }

    #[test]
    fn caused_by_is_checked_and_counts_hops() {
        let mut v = good();
        let e = Validator::default().validate(v.clone()).unwrap();
        assert_eq!(e.hops(), 0);
        v["metadata"]["caused_by"] = json!({"event_id": "evt_20251201_120000_abc123", "handler": "h-1"});
        assert_eq!(Validator::default().validate(v.clone()).unwrap().hops(), 1, "a follow-up from before hops");
        v["metadata"]["caused_by"]["hops"] = json!(7);
        assert_eq!(Validator::default().validate(v.clone()).unwrap().hops(), 7);
        v["metadata"]["caused_by"] = json!({"event_id": "../x", "handler": "a b", "hops": -1});
        let paths: Vec<String> = Validator::default().problems(&v).into_iter().map(|p| p.path).collect();
        assert_eq!(paths, ["metadata.caused_by.event_id", "metadata.caused_by.handler", "metadata.caused_by.hops"]);
        v["metadata"]["caused_by"] = json!("evt");
        assert!(Validator::default().validate(v).is_err());
    }

    #[test]
    fn deep_payloads_are_refused_with_their_depth() {
        let mut deep = json!(1);
        for _ in 0..MAX_NESTING {
            deep = json!([deep]);
        }
        let mut v = good();
        v["payload"] = json!({"ok": deep.clone()});
        let err = Validator::default().validate(v).unwrap_err().to_string();
        assert!(
            err.contains(&format!("payload: nested {} levels deep, over the limit of {MAX_NESTING}", MAX_NESTING + 1)),
            "{err}"
        );
        let mut v = good();
        v["payload"] = json!({"ok": deep[0].clone()});
        let e = Validator::default().validate(v).expect("exactly at the limit is fine");
        // What is accepted can be read back, envelope and all.
        assert!(Validator::default().parse(&e.to_json()).is_ok());
        assert_eq!(nesting(&json!({})), 1);
        assert_eq!(nesting(&json!({"a": [1, {"b": []}]})), 4);
    }

    #[test]
    fn an_empty_correlation_id_is_absent() {
        let mut v = good();
        v["correlation_id"] = json!("");
        assert_eq!(Validator::default().validate(v).unwrap().correlation_id, None);
        let new = NewEvent {
            event_type: "task.failed".into(),
            source: "t".into(),
            correlation_id: Some(String::new()),
            ..Default::default()
        };
        assert!(new.into_value().get("correlation_id").is_none());
    }

    #[test]
    fn built_events_validate() {
        let v = NewEvent { event_type: "task.failed".into(), source: "t".into(), ..Default::default() }.into_value();
        let e = Validator::default().validate(v).unwrap();
        assert_eq!(e.priority(), Priority::Medium);
    }
}

/// Property tests (the fuzzing of the reliability issue, run by `make fuzz`
/// with many more cases): the validator never panics, and what it accepts
/// survives a round trip.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("event_id".to_string()),
            Just("event_type".to_string()),
            Just("timestamp".to_string()),
            Just("source".to_string()),
            Just("correlation_id".to_string()),
            Just("metadata".to_string()),
            Just("payload".to_string()),
            Just("priority".to_string()),
            Just("tags".to_string()),
            Just("master".to_string()),
            "[a-z_]{0,12}",
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
            ".{0,40}".prop_map(Value::String),
            "evt_[0-9]{8}_[0-9]{6}_[a-z0-9]{4,14}".prop_map(Value::String),
            "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})?"
                .prop_map(Value::String),
            prop::sample::select(CATALOGUE.map(|(t, _)| t).to_vec()).prop_map(|t| json!(t)),
            prop::sample::select(vec!["critical", "high", "medium", "low", "urgent"]).prop_map(|p| json!(p)),
        ];
        leaf.prop_recursive(3, 40, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(key(), inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn good() -> Value {
        json!({
            "event_id": "evt_20251201_120000_abc123",
            "event_type": "worker.completed",
            "timestamp": "2025-12-01T12:00:00-06:00",
            "source": "w",
            "metadata": {"priority": "high", "tags": ["a"]},
            "payload": {"n": 1}
        })
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            let _ = Validator::default().parse(&text);
        }

        #[test]
        fn arbitrary_json_is_judged_consistently(v in value()) {
            let validator = Validator::default();
            let problems = validator.problems(&v);
            let verdict = validator.validate(v.clone());
            // No problems means valid; problems mean each names a field and says why.
            prop_assert_eq!(problems.is_empty(), verdict.is_ok());
            for p in &problems {
                prop_assert!(!p.path.is_empty() && !p.message.is_empty());
            }
            if let Ok(event) = verdict {
                let again = validator.parse(&event.to_json()).expect("a valid event parses again");
                prop_assert_eq!(again, event);
            }
        }

        #[test]
        fn one_bad_field_is_caught_and_named(field in key(), v in value()) {
            let mut doc = good();
            doc[field.as_str()] = v;
            let validator = Validator::default();
            match validator.validate(doc.clone()) {
                Ok(e) => prop_assert_eq!(validator.parse(&e.to_json()).ok(), Some(e)),
                Err(Invalid(problems)) => prop_assert!(!problems.is_empty()),
            }
        }
    }
}
