//! CloudEvents 1.0 and the Cortex envelope, both ways.
//!
//! Ingest (`POST /v1/events`, `cortex emit --cloudevent`) turns a CloudEvent
//! in structured mode, binary mode (`ce-*` headers) or a batch into the JSON
//! of a Cortex event, which then goes through the same [`Validator`] as any
//! producer's. Outbound (webhooks, `cortex export --format cloudevents`)
//! turns an [`Event`] into a structured CloudEvent.
//!
//! | CloudEvents | Cortex |
//! |---|---|
//! | `id` | `event_id` (an id that is not a Cortex id is kept in `metadata.cloudevent.id`, see [`cortex_id`]) |
//! | `type` | `event_type` |
//! | `source` | `source` |
//! | `time` | `timestamp` (now when absent) |
//! | `subject` | `correlation_id` |
//! | `data` (JSON object) | `payload` |
//! | `cortexpriority` | `metadata.priority` |
//! | `cortexmaster` | `metadata.master` |
//! | `cortextags` (comma-separated) | `metadata.tags` |
//! | `cortexcausedby` | `metadata.caused_by.event_id` (outbound only) |
//! | other extensions | `metadata.cloudevent.extensions` |
//!
//! Payloads are JSON objects, so `data_base64` and non-JSON content types
//! are refused, each with a message naming the attribute.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::event::{Event, Invalid, Problem, Validator, is_valid_event_id};

/// `Content-Type` of a structured-mode CloudEvent.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// `Content-Type` of a batch of structured CloudEvents.
pub const BATCH: &str = "application/cloudevents-batch+json";

/// The context attributes this module maps itself; anything else is an
/// extension.
const ATTRIBUTES: [&str; 9] = ["specversion", "id", "source", "type", "time", "subject", "datacontenttype", "dataschema", "data"];
const EXT_PRIORITY: &str = "cortexpriority";
const EXT_MASTER: &str = "cortexmaster";
const EXT_TAGS: &str = "cortextags";
const EXT_CAUSED_BY: &str = "cortexcausedby";

/// The Cortex id of a CloudEvent: its own `id` when that is a Cortex id,
/// else `evt_<time>_<12 base36 of sha256(source, id)>` — the same CloudEvent
/// (same `source`, `id` and `time`) always gets the same Cortex id, so a
/// producer's retry is recognised as a duplicate. Without `time` the date
/// part is today's, so a retry on another day is not.
pub fn cortex_id(source: &str, id: &str, time: &DateTime<Utc>) -> String {
    if is_valid_event_id(id) {
        return id.to_string();
    }
    let digest = Sha256::new().chain_update(source.as_bytes()).chain_update([0]).chain_update(id.as_bytes()).finalize();
    let mut n = u128::from_be_bytes(digest[..16].try_into().expect("16 bytes of a 32-byte digest"));
    let mut suffix = [b'0'; 12];
    for slot in suffix.iter_mut().rev() {
        *slot = b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize];
        n /= 36;
    }
    format!("evt_{}_{}", time.format("%Y%m%d_%H%M%S"), String::from_utf8_lossy(&suffix))
}

fn problem(path: &str, message: impl Into<String>) -> Problem {
    Problem { path: path.to_string(), message: message.into() }
}

fn is_json_type(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    media == "application/json" || media == "text/json" || media.ends_with("+json")
}

/// Converts one structured-mode CloudEvent into a Cortex event, validated.
///
/// # Errors
/// Every problem found, CloudEvents attributes by their names.
pub fn from_structured(validator: &Validator, ce: &Value, now: DateTime<Utc>) -> Result<Event, Invalid> {
    let envelope = envelope(ce, now)?;
    validator.validate(envelope)
}

/// Converts a batch (a JSON array of structured CloudEvents); each element
/// succeeds or fails on its own.
///
/// # Errors
/// When the document is not an array.
pub fn from_batch(validator: &Validator, batch: &Value, now: DateTime<Utc>) -> Result<Vec<Result<Event, Invalid>>, Invalid> {
    let Some(items) = batch.as_array() else {
        return Err(Invalid(vec![problem("(document)", format!("a CloudEvents batch is a JSON array, found {}", crate::event::kind(batch)))]));
    };
    Ok(items.iter().map(|ce| from_structured(validator, ce, now)).collect())
}

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

fn string<'a>(ce: &'a Map<String, Value>, attr: &str, problems: &mut Vec<Problem>) -> Option<&'a str> {
    match ce.get(attr) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            problems.push(problem(attr, format!("expected a string, found {}", crate::event::kind(other))));
            None
        }
    }
}

/// The Cortex envelope (unvalidated JSON) of a CloudEvent.
fn envelope(ce: &Value, now: DateTime<Utc>) -> Result<Value, Invalid> {
    let Some(ce) = ce.as_object() else {
        return Err(Invalid(vec![problem("(document)", format!("a CloudEvent is a JSON object, found {}", crate::event::kind(ce)))]));
    };
    let mut problems = Vec::new();
    match string(ce, "specversion", &mut problems) {
        Some("1.0") => {}
        Some(other) => problems.push(problem("specversion", format!("{} is not supported: send 1.0", crate::text::quote(other)))),
        None => problems.push(problem("specversion", "required attribute is missing")),
    }
    let id = string(ce, "id", &mut problems).filter(|s| !s.is_empty());
    let source = string(ce, "source", &mut problems).filter(|s| !s.is_empty());
    let kind = string(ce, "type", &mut problems);
    for (attr, present) in [("id", id.is_some()), ("source", source.is_some()), ("type", kind.is_some())] {
        if !present && !problems.iter().any(|p| p.path == attr) {
            problems.push(problem(attr, "required attribute is missing"));
        }
    }
    let time = match string(ce, "time", &mut problems) {
        None => None,
        Some(t) => match DateTime::parse_from_rfc3339(t) {
            Ok(t) => Some(t),
            Err(e) => {
                problems.push(problem("time", format!("is not RFC 3339: {e}")));
                None
            }
        },
    };
    if let Some(ct) = string(ce, "datacontenttype", &mut problems)
        && !is_json_type(ct)
    {
        problems.push(problem("datacontenttype", "Cortex payloads are JSON objects: use application/json"));
    }
    if ce.contains_key("data_base64") {
        problems.push(problem("data_base64", "binary data is not supported: Cortex payloads are JSON objects"));
    }
    let payload = match ce.get("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            problems.push(problem("data", format!("expected a JSON object, found {}", crate::event::kind(other))));
            Map::new()
        }
    };
    let mut metadata = Map::new();
    if let Some(p) = string(ce, EXT_PRIORITY, &mut problems) {
        metadata.insert("priority".into(), Value::String(p.to_string()));
    }
    if let Some(m) = string(ce, EXT_MASTER, &mut problems) {
        metadata.insert("master".into(), Value::String(m.to_string()));
    }
    if let Some(t) = string(ce, EXT_TAGS, &mut problems) {
        let tags: Vec<Value> = t.split(',').map(str::trim).filter(|t| !t.is_empty()).map(|t| Value::String(t.into())).collect();
        metadata.insert("tags".into(), Value::Array(tags));
    }
    let extensions: Map<String, Value> = ce
        .iter()
        .filter(|(k, _)| {
            !ATTRIBUTES.contains(&k.as_str()) && ![EXT_PRIORITY, EXT_MASTER, EXT_TAGS, EXT_CAUSED_BY, "data_base64"].contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !problems.is_empty() {
        return Err(Invalid(problems));
    }
    let (id, source, kind) = (id.unwrap_or_default(), source.unwrap_or_default(), kind.unwrap_or_default());
    let utc = time.map_or(now, |t| t.with_timezone(&Utc));
    let day_start = if time.is_some() { utc } else { now.date_naive().and_hms_opt(0, 0, 0).map_or(now, |d| d.and_utc()) };
    let event_id = cortex_id(source, id, &day_start);
    let mut cloudevent = Map::new();
    if event_id != id {
        cloudevent.insert("id".into(), Value::String(id.to_string()));
    }
    if !extensions.is_empty() {
        cloudevent.insert("extensions".into(), Value::Object(extensions));
    }
    if !cloudevent.is_empty() {
        metadata.insert("cloudevent".into(), Value::Object(cloudevent));
    }
    let timestamp = match time {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => now.to_rfc3339_opts(SecondsFormat::Millis, true),
    };
    let mut out = json!({
        "event_id": event_id,
        "event_type": kind,
        "timestamp": timestamp,
        "source": source,
        "metadata": metadata,
        "payload": payload,
    });
    if let Some(subject) = string(ce, "subject", &mut Vec::new()).filter(|s| !s.is_empty()) {
        out["correlation_id"] = Value::String(subject.to_string());
    }
    Ok(out)
}

/// The structured-mode CloudEvent of an event.
pub fn to_structured(event: &Event) -> Value {
    let meta = &event.metadata;
    let ce_meta = meta.extra.get("cloudevent").and_then(Value::as_object);
    let id = ce_meta.and_then(|c| c.get("id")).and_then(Value::as_str).unwrap_or(&event.event_id);
    let mut ce = Map::new();
    ce.insert("specversion".into(), json!("1.0"));
    ce.insert("id".into(), json!(id));
    ce.insert("source".into(), json!(event.source));
    ce.insert("type".into(), json!(event.event_type));
    ce.insert("time".into(), json!(event.timestamp));
    ce.insert("datacontenttype".into(), json!("application/json"));
    if let Some(c) = &event.correlation_id {
        ce.insert("subject".into(), json!(c));
    }
    ce.insert(EXT_PRIORITY.into(), json!(meta.priority.as_str()));
    if let Some(m) = &meta.master {
        ce.insert(EXT_MASTER.into(), json!(m));
    }
    if !meta.tags.is_empty() {
        ce.insert(EXT_TAGS.into(), json!(meta.tags.join(",")));
    }
    if let Some(by) = meta.extra.get("caused_by").and_then(|c| c.get("event_id")).and_then(Value::as_str) {
        ce.insert(EXT_CAUSED_BY.into(), json!(by));
    }
    if let Some(ext) = ce_meta.and_then(|c| c.get("extensions")).and_then(Value::as_object) {
        for (k, v) in ext {
            ce.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    ce.insert("data".into(), Value::Object(event.payload.clone()));
    Value::Object(ce)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator() -> Validator {
        Validator::new(Vec::new(), 1 << 20)
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z").unwrap().with_timezone(&Utc)
    }

    fn sample() -> Value {
        json!({
            "specversion": "1.0",
            "id": "A234-1234-1234",
            "source": "https://ci.example.com/scanner",
            "type": "security.scan_completed",
            "time": "2026-11-30T08:00:00Z",
            "subject": "build-77",
            "datacontenttype": "application/json",
            "cortexpriority": "high",
            "cortextags": "ci, nightly",
            "comexampleteam": "platform",
            "data": {"scanner": "trivy", "findings": {"high": 2}}
        })
    }

    #[test]
    fn structured_maps_every_attribute_and_round_trips() {
        let e = from_structured(&validator(), &sample(), now()).unwrap();
        assert_eq!(e.event_type, "security.scan_completed");
        assert_eq!(e.source, "https://ci.example.com/scanner");
        assert_eq!(e.correlation_id.as_deref(), Some("build-77"));
        assert_eq!(e.metadata.priority.as_str(), "high");
        assert_eq!(e.metadata.tags, vec!["ci", "nightly"]);
        assert!(e.event_id.starts_with("evt_20261130_080000_"), "{}", e.event_id);
        assert_eq!(e.payload["findings"]["high"], 2);
        let back = to_structured(&e);
        assert_eq!(back["id"], "A234-1234-1234");
        assert_eq!(back["subject"], "build-77");
        assert_eq!(back["comexampleteam"], "platform");
        assert_eq!(back["cortextags"], "ci,nightly");
        assert_eq!(back["data"], sample()["data"]);
        // The same CloudEvent again gets the same Cortex id.
        assert_eq!(from_structured(&validator(), &sample(), now()).unwrap().event_id, e.event_id);
    }

    #[test]
    fn a_cortex_id_is_kept_and_problems_name_the_attribute() {
        let mut ce = sample();
        ce["id"] = json!("evt_20261130_080000_abc123");
        assert_eq!(from_structured(&validator(), &ce, now()).unwrap().event_id, "evt_20261130_080000_abc123");
        let bad = json!({"specversion": "0.3", "type": 7, "time": "yesterday", "data_base64": "AA==", "data": [1]});
        let Invalid(problems) = from_structured(&validator(), &bad, now()).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for want in ["specversion", "id", "source", "type", "time", "data_base64", "data"] {
            assert!(paths.contains(&want), "{want} not in {paths:?}");
        }
        // Cortex's own validation runs too: an unknown type is refused.
        let mut ce = sample();
        ce["type"] = json!("nosuch.thing");
        assert!(from_structured(&validator(), &ce, now()).is_err());
    }

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
        let xml = [("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-source", "s"), ("ce-type", "worker.heartbeat"), ("content-type", "application/xml")];
        assert!(from_binary(&validator(), xml, b"<a/>", now()).is_err());
    }

    #[test]
    fn a_batch_reports_each_element() {
        let batch = json!([sample(), {"specversion": "1.0"}]);
        let out = from_batch(&validator(), &batch, now()).unwrap();
        assert!(out[0].is_ok());
        assert!(out[1].is_err());
        assert!(from_batch(&validator(), &json!({}), now()).is_err());
    }
}
