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
//! | `cortexcausedby` | `metadata.caused_by.event_id` (outbound; inbound it is kept as an extension) |
//! | `dataschema` | `metadata.cloudevent.dataschema` |
//! | other extensions | `metadata.cloudevent.extensions` |
//!
//! Payloads are JSON objects, so `data_base64` and non-JSON content types
//! are refused. Every problem names the CloudEvents attribute it concerns,
//! including those the Cortex [`Validator`] finds (an unknown `type`, a
//! bad `cortexpriority`). `time` is kept as written when Cortex accepts it
//! as a timestamp (so an exported event comes back unchanged), else in its
//! RFC 3339 form with `T` and an offset.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::event::{Event, Invalid, Problem, Validator, is_valid_event_id};

mod binary;
pub use binary::from_binary;

/// `Content-Type` of a structured-mode CloudEvent.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// `Content-Type` of a batch of structured CloudEvents.
pub const BATCH: &str = "application/cloudevents-batch+json";

/// The context attributes this module maps itself; anything else is an
/// extension.
const ATTRIBUTES: [&str; 9] =
    ["specversion", "id", "source", "type", "time", "subject", "datacontenttype", "dataschema", "data"];
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

/// Whether a media type (parameters allowed) is JSON: `application/json`,
/// `text/json` or any `+json` suffix.
pub fn is_json_type(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    media == "application/json" || media == "text/json" || media.ends_with("+json")
}

/// Converts one structured-mode CloudEvent into a Cortex event, validated.
///
/// # Errors
/// Every problem found, CloudEvents attributes by their names.
pub fn from_structured(validator: &Validator, ce: &Value, now: DateTime<Utc>) -> Result<Event, Invalid> {
    let (mut envelope, normalized, mut problems) = envelope(ce, now);
    if !problems.is_empty() {
        // What the Cortex validator finds besides, so that one answer lists
        // every problem; not again for an attribute already named.
        if let Some(t) = &normalized {
            envelope["timestamp"] = Value::String(t.clone());
        }
        for p in validator.problems(&envelope) {
            let path = attribute_of(&p.path);
            if !problems.iter().any(|q| q.path == path) {
                problems.push(Problem { path, message: p.message });
            }
        }
        return Err(Invalid(problems));
    }
    let mut result = validator.validate(envelope.clone());
    // RFC 3339 allows forms Cortex timestamps do not (`t`, a space, `z`).
    if let (Err(Invalid(problems)), Some(t)) = (&result, normalized)
        && problems.iter().any(|p| p.path == "timestamp")
    {
        envelope["timestamp"] = Value::String(t);
        result = validator.validate(envelope);
    }
    result.map_err(|Invalid(problems)| {
        Invalid(problems.into_iter().map(|p| Problem { path: attribute_of(&p.path), message: p.message }).collect())
    })
}

/// The CloudEvents attribute behind an envelope field that the Cortex
/// validator named.
fn attribute_of(path: &str) -> String {
    let attr = match path {
        "event_id" => "id",
        "event_type" => "type",
        "timestamp" => "time",
        "correlation_id" => "subject",
        "payload" => "data",
        "metadata.priority" => EXT_PRIORITY,
        "metadata.master" => EXT_MASTER,
        p if p.starts_with("metadata.tags") => EXT_TAGS,
        other => other,
    };
    attr.to_string()
}

/// A CloudEvents attribute name: lowercase ASCII letters and digits.
fn is_attribute_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Converts a batch (a JSON array of structured CloudEvents); each element
/// succeeds or fails on its own.
///
/// # Errors
/// When the document is not an array.
pub fn from_batch(
    validator: &Validator,
    batch: &Value,
    now: DateTime<Utc>,
) -> Result<Vec<Result<Event, Invalid>>, Invalid> {
    let Some(items) = batch.as_array() else {
        return Err(Invalid(vec![problem(
            "(document)",
            format!("a CloudEvents batch is a JSON array, found {}", crate::event::kind(batch)),
        )]));
    };
    Ok(items.iter().map(|ce| from_structured(validator, ce, now)).collect())
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

/// The Cortex envelope (unvalidated JSON) of a CloudEvent, the normalized
/// form of its `time` (for when Cortex refuses it as written), and the
/// problems found in the CloudEvent's own attributes (then the envelope
/// lacks what they would have given).
fn envelope(ce: &Value, now: DateTime<Utc>) -> (Value, Option<String>, Vec<Problem>) {
    let Some(ce) = ce.as_object() else {
        let why = format!("a CloudEvent is a JSON object, found {}", crate::event::kind(ce));
        return (Value::Null, None, vec![problem("(document)", why)]);
    };
    let mut problems = Vec::new();
    match string(ce, "specversion", &mut problems) {
        Some("1.0") => {}
        Some(other) => {
            problems.push(problem("specversion", format!("{} is not supported: send 1.0", crate::text::quote(other))))
        }
        None if ce.get("specversion").is_some_and(|v| !v.is_null() && !v.is_string()) => {}
        None => problems.push(problem("specversion", "required attribute is missing")),
    }
    let required = |attr: &str, problems: &mut Vec<Problem>| -> Option<String> {
        match (ce.get(attr), string(ce, attr, problems)) {
            (_, Some("")) => problems.push(problem(attr, "must not be empty")),
            (_, Some(s)) => return Some(s.to_string()),
            (None | Some(Value::Null), None) => problems.push(problem(attr, "required attribute is missing")),
            // A value of the wrong kind, already reported.
            (Some(_), None) => {}
        }
        None
    };
    let id = required("id", &mut problems);
    let source = required("source", &mut problems);
    let kind = required("type", &mut problems);
    let time = match string(ce, "time", &mut problems) {
        None => None,
        Some(t) => match DateTime::parse_from_rfc3339(t) {
            Ok(parsed) => Some((t.to_string(), parsed)),
            Err(e) => {
                problems.push(problem("time", format!("{} is not RFC 3339: {e}", crate::text::quote(t))));
                None
            }
        },
    };
    let subject = string(ce, "subject", &mut problems).filter(|s| !s.is_empty()).map(str::to_string);
    if let Some(ct) = string(ce, "datacontenttype", &mut problems)
        && !is_json_type(ct)
    {
        problems.push(problem("datacontenttype", "Cortex payloads are JSON objects: use application/json"));
    }
    let dataschema = string(ce, "dataschema", &mut problems).map(str::to_string);
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
        let tags: Vec<Value> =
            t.split(',').map(str::trim).filter(|t| !t.is_empty()).map(|t| Value::String(t.into())).collect();
        metadata.insert("tags".into(), Value::Array(tags));
    }
    let mut extensions = Map::new();
    for (name, value) in ce {
        if ATTRIBUTES.contains(&name.as_str())
            || [EXT_PRIORITY, EXT_MASTER, EXT_TAGS, "data_base64"].contains(&name.as_str())
        {
            continue;
        }
        if !is_attribute_name(name) {
            problems.push(problem(
                &crate::text::quote(name),
                "is not a CloudEvents attribute name (lowercase letters and digits only)",
            ));
            continue;
        }
        match value {
            Value::Null => {}
            Value::String(_) | Value::Number(_) | Value::Bool(_) => {
                extensions.insert(name.clone(), value.clone());
            }
            other => problems.push(problem(
                name,
                format!("an extension is a string, a number or a boolean, found {}", crate::event::kind(other)),
            )),
        }
    }
    let utc = time.as_ref().map_or(now, |(_, t)| t.with_timezone(&Utc));
    let stamp = if time.is_some() { utc } else { now.date_naive().and_hms_opt(0, 0, 0).map_or(now, |d| d.and_utc()) };
    let event_id = id.as_ref().zip(source.as_ref()).map(|(id, source)| cortex_id(source, id, &stamp));
    let mut cloudevent = Map::new();
    if let Some(id) = id.filter(|id| event_id.as_ref() != Some(id)) {
        cloudevent.insert("id".into(), Value::String(id));
    }
    if let Some(schema) = dataschema {
        cloudevent.insert("dataschema".into(), Value::String(schema));
    }
    if !extensions.is_empty() {
        cloudevent.insert("extensions".into(), Value::Object(extensions));
    }
    if !cloudevent.is_empty() {
        metadata.insert("cloudevent".into(), Value::Object(cloudevent));
    }
    let (timestamp, normalized) = match time {
        Some((written, t)) => (written, Some(t.to_rfc3339_opts(SecondsFormat::AutoSi, true))),
        None => (now.to_rfc3339_opts(SecondsFormat::Millis, true), None),
    };
    let mut out = json!({"timestamp": timestamp, "metadata": metadata, "payload": payload});
    for (field, value) in
        [("event_id", event_id), ("event_type", kind), ("source", source), ("correlation_id", subject)]
    {
        if let Some(v) = value {
            out[field] = Value::String(v);
        }
    }
    (out, normalized, problems)
}

/// The structured-mode CloudEvent of an event (see the table above).
/// Metadata it has no attribute for (`replay`, `dlq_retry`, custom keys) is
/// left out.
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
    if let Some(schema) = ce_meta.and_then(|c| c.get("dataschema")).and_then(Value::as_str) {
        ce.insert("dataschema".into(), json!(schema));
    }
    // Only what ingest could have kept: a producer may have written
    // `metadata.cloudevent` by hand, and it must not set `subject` or `data`.
    if let Some(ext) = ce_meta.and_then(|c| c.get("extensions")).and_then(Value::as_object) {
        for (k, v) in ext {
            let reserved =
                ATTRIBUTES.contains(&k.as_str()) || [EXT_PRIORITY, EXT_MASTER, EXT_TAGS].contains(&k.as_str());
            if is_attribute_name(k) && !reserved && (v.is_string() || v.is_number() || v.is_boolean()) {
                ce.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    ce.insert("data".into(), Value::Object(event.payload.clone()));
    Value::Object(ce)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn validator() -> Validator {
        Validator::new(Vec::new(), 1 << 20)
    }

    pub(crate) fn now() -> DateTime<Utc> {
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
    fn a_batch_reports_each_element() {
        let batch = json!([sample(), {"specversion": "1.0"}]);
        let out = from_batch(&validator(), &batch, now()).unwrap();
        assert!(out[0].is_ok());
        assert!(out[1].is_err());
        assert!(from_batch(&validator(), &json!({}), now()).is_err());
    }

    fn paths(ce: &Value) -> Vec<String> {
        let Invalid(problems) = from_structured(&validator(), ce, now()).unwrap_err();
        problems.into_iter().map(|p| p.path).collect()
    }

    #[test]
    fn the_validators_problems_are_named_by_attribute_too() {
        let mut ce = sample();
        ce["type"] = json!("nosuch.thing");
        ce["cortexpriority"] = json!("urgent");
        assert_eq!(paths(&ce), ["type", "cortexpriority"]);
        let mut ce = sample();
        ce["subject"] = json!(7);
        ce["comExample"] = json!("x");
        ce["comexamplelist"] = json!(["a"]);
        ce["id"] = json!("");
        assert_eq!(paths(&ce), ["id", "subject", "\"comExample\"", "comexamplelist"]);
    }

    #[test]
    fn time_is_kept_as_written_when_cortex_takes_it() {
        let mut ce = sample();
        ce["time"] = json!("2026-11-30T08:00:00.250+01:00");
        assert_eq!(from_structured(&validator(), &ce, now()).unwrap().timestamp, "2026-11-30T08:00:00.250+01:00");
        ce["time"] = json!("2026-11-30t07:00:00.25z");
        let e = from_structured(&validator(), &ce, now()).unwrap();
        assert_eq!(e.timestamp, "2026-11-30T07:00:00.250Z");
        // The same instant, so the same Cortex id.
        assert!(e.event_id.starts_with("evt_20261130_070000_"), "{}", e.event_id);
    }

    #[test]
    fn a_cortex_event_round_trips_through_a_cloudevent() {
        let e = Validator::default()
            .validate(json!({
                "event_id": "evt_20261201_101500_k3j4h5", "event_type": "task.created",
                "timestamp": "2026-12-01T10:15:00.123-06:00", "source": "planner", "correlation_id": "c-9",
                "metadata": {"master": "m-1", "priority": "low", "tags": ["a", "b"]},
                "payload": {"task": {"id": 3}}
            }))
            .unwrap();
        let ce = to_structured(&e);
        assert_eq!(ce["id"], "evt_20261201_101500_k3j4h5");
        assert_eq!((ce["cortexmaster"].as_str(), ce["cortexpriority"].as_str()), (Some("m-1"), Some("low")));
        assert_eq!(from_structured(&validator(), &ce, now()).unwrap(), e);
    }

    #[test]
    fn forged_cloudevent_metadata_cannot_set_attributes() {
        let mut e = from_structured(&validator(), &sample(), now()).unwrap();
        e.correlation_id = None;
        e.metadata.extra["cloudevent"]["extensions"] =
            json!({"subject": "x", "data": 1, "Bad": 1, "nested": {"a": 1}, "cortexmaster": "m", "ok": true});
        e.metadata.extra["cloudevent"]["dataschema"] = json!("https://example.com/s.json");
        let ce = to_structured(&e);
        assert!(ce.get("subject").is_none() && ce.get("Bad").is_none() && ce.get("nested").is_none());
        assert!(ce.get("cortexmaster").is_none());
        assert_eq!((ce["data"]["scanner"].as_str(), ce["ok"].as_bool()), (Some("trivy"), Some(true)));
        assert_eq!(ce["dataschema"], "https://example.com/s.json");
        assert_eq!(
            from_structured(&validator(), &ce, now()).unwrap().metadata.extra["cloudevent"]["dataschema"],
            ce["dataschema"]
        );
    }
}
