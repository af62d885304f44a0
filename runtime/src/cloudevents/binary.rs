//! Binary-mode CloudEvents: the attributes in `ce-*` headers, the data in
//! the body. They become a structured-mode CloudEvent and go through the
//! same mapping and validation as one (see the parent module's table).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{from_structured, is_json_type, problem};
use crate::event::{Event, Invalid, Validator};

/// Converts a binary-mode CloudEvent: the attributes are `ce-*` headers
/// (names case-insensitive, values percent-encoded), the body is the data
/// and `content-type` its type.
///
/// # Errors
/// Every problem found.
pub fn from_binary<'a>(
    validator: &Validator,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Event, Invalid> {
    let mut ce = Map::new();
    let mut problems = Vec::new();
    let mut content_type = None;
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        if name == "content-type" {
            content_type = Some(value.to_string());
        } else if let Some(attr) = name.strip_prefix("ce-") {
            match percent_decode(value) {
                Some(v) => {
                    ce.insert(attr.to_string(), Value::String(v));
                }
                None => problems.push(problem(&name, "is not valid percent-encoded UTF-8")),
            }
        }
    }
    if let Some(ct) = &content_type {
        ce.insert("datacontenttype".into(), Value::String(ct.clone()));
    }
    if !body.is_empty() {
        if content_type.as_deref().is_some_and(|ct| !is_json_type(ct)) {
            problems.push(problem("content-type", "Cortex payloads are JSON objects: send application/json"));
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(data) => {
                    ce.insert("data".into(), data);
                }
                Err(e) => problems.push(problem("(body)", format!("malformed JSON: {e}"))),
            }
        }
    }
    if !problems.is_empty() {
        return Err(Invalid(problems));
    }
    from_structured(validator, &Value::Object(ce), now)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudevents::tests::{now, validator};

    #[test]
    fn binary_mode_reads_headers_and_body() {
        let headers = [
            ("CE-SpecVersion", "1.0"),
            ("ce-id", "42"),
            ("ce-source", "/sensors/a%20b"),
            ("ce-type", "worker.heartbeat"),
            ("Content-Type", "application/json; charset=utf-8"),
        ];
        let e = from_binary(&validator(), headers, br#"{"worker_id": "w-1"}"#, now()).unwrap();
        assert_eq!(e.source, "/sensors/a b");
        assert_eq!(e.payload["worker_id"], "w-1");
        assert!(e.event_id.starts_with("evt_20261201_000000_"), "{}", e.event_id);
        let xml = [
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "s"),
            ("ce-type", "worker.heartbeat"),
            ("content-type", "application/xml"),
        ];
        assert!(from_binary(&validator(), xml, b"<a/>", now()).is_err());
    }

    #[test]
    fn bad_percent_encoding_and_bad_json_name_their_header() {
        let headers =
            [("ce-specversion", "1.0"), ("ce-id", "%zz"), ("ce-source", "s"), ("ce-type", "worker.heartbeat")];
        let Invalid(problems) = from_binary(&validator(), headers, b"{", now()).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["ce-id", "(body)"]);
    }
}
