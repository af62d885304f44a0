//! Keeping a handler's published payload contract true to its parser, for
//! the handlers' unit tests (a full JSON Schema validator is too heavy for a
//! guest; the end-to-end tests validate the fixtures with one).
//!
//! [`check`] takes the schema text, sample events and the handler's parse
//! function (which reads the payload with a [`Reader`](crate::Reader) and
//! returns its [`Leftover`]) and proves that: the schema is a draft 2020-12
//! object schema; the fields the parser asks for are exactly the schema's
//! `properties`; every sample parses; removing a `required` field (or every
//! name of an `anyOf` group of `required` synonyms) is refused as not
//! retryable, naming the field; and removing any other field is accepted.

use crate::{Event, Leftover, Result, Value};
use std::collections::BTreeSet;

const DRAFT: &str = "https://json-schema.org/draft/2020-12/schema";

/// The parts of a contract schema the checks compare with the parser.
#[derive(Debug, Default, PartialEq)]
pub struct Schema {
    pub properties: BTreeSet<String>,
    pub required: Vec<String>,
    /// Groups of synonyms, one of which is required: `anyOf: [{required:
    /// [a]}, {required: [b]}]`, at the top or in each part of an `allOf`.
    pub one_of_names: Vec<Vec<String>>,
}

/// Reads a contract schema.
///
/// # Errors
/// When it is not JSON, not draft 2020-12, not `type: object`, or has no
/// `properties`.
pub fn schema(text: &str) -> std::result::Result<Schema, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("schema is not JSON: {e}"))?;
    if doc["$schema"] != DRAFT {
        return Err(format!("$schema must be {DRAFT}"));
    }
    if doc["type"] != "object" {
        return Err("type must be object".into());
    }
    let properties = doc["properties"].as_object().ok_or("schema has no properties")?.keys().cloned().collect();
    let names = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|n| n.as_str().map(str::to_string)).collect()
    };
    let required = names(&doc["required"]);
    // The alternatives of an `anyOf` (at the top, or in each part of an
    // `allOf`) are synonyms of one field, in order.
    let group = |any_of: &Value| -> Vec<String> {
        any_of.as_array().into_iter().flatten().flat_map(|alt| names(&alt["required"])).collect()
    };
    let parts = doc["allOf"].as_array().into_iter().flatten().map(|part| group(&part["anyOf"]));
    let one_of_names = std::iter::once(group(&doc["anyOf"])).chain(parts).filter(|g| !g.is_empty()).collect();
    Ok(Schema { properties, required, one_of_names })
}

/// Checks `schema_text` against `parse` over `samples` (see the module doc).
///
/// # Errors
/// Every disagreement, one per line.
pub fn check(
    schema_text: &str,
    samples: &[Event],
    parse: impl Fn(&Event) -> Result<Leftover>,
) -> std::result::Result<(), String> {
    let s = schema(schema_text)?;
    let mut problems = Vec::new();
    let mut asked = BTreeSet::new();
    for sample in samples {
        match parse(sample) {
            Ok(left) => asked.extend(left.asked),
            Err(e) => problems.push(format!("sample {} is refused: {e}", sample.id)),
        }
        let without = |names: &[String]| {
            let mut e = sample.clone();
            for n in names {
                e.payload.remove(n);
            }
            parse(&e)
        };
        for name in s.properties.iter().filter(|n| sample.payload.contains_key(n.as_str())) {
            let group = s.one_of_names.iter().find(|g| g.contains(name));
            let must_refuse = s.required.contains(name);
            match (without(std::slice::from_ref(name)), must_refuse) {
                (Err(e), true) if !e.is_retryable() && e.message().contains(name.as_str()) => {}
                (Err(e), true) => problems.push(format!("without required {name}: {e} (retryable or not naming it)")),
                (Ok(_), true) => problems.push(format!("without required {name}: accepted")),
                (Ok(_), false) => {}
                (Err(_), false) if group.is_some() => {}
                (Err(e), false) => problems.push(format!("without optional {name}: refused: {e}")),
            }
        }
        for group in &s.one_of_names {
            if group.iter().any(|n| sample.payload.contains_key(n)) {
                match without(group) {
                    Err(e) if !e.is_retryable() && e.message().contains(group[0].as_str()) => {}
                    other => problems.push(format!("without any of {group:?}: {other:?}")),
                }
            }
        }
    }
    for missing in s.properties.difference(&asked) {
        problems.push(format!("the schema lists {missing}, which the parser never reads"));
    }
    for extra in asked.difference(&s.properties) {
        problems.push(format!("the parser reads {extra}, which the schema does not list"));
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, Reader, json};

    const SCHEMA: &str = r#"{
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "properties": {"id": {}, "cve_id": {}, "severity": {}, "note": {}},
        "required": ["severity"], "anyOf": [{"required": ["id"]}, {"required": ["cve_id"]}]
    }"#;

    fn sample(payload: Value) -> Event {
        let envelope = json!({"event_id": "e1", "event_type": "a.x", "timestamp": "2025-12-01T12:00:00Z",
                              "source": "s", "payload": payload});
        Event::from_envelope_json(&envelope.to_string()).unwrap()
    }

    fn good(e: &Event) -> Result<Leftover> {
        let mut r = Reader::new(e);
        r.req_str(["id", "cve_id"])?;
        r.req_str("severity")?;
        r.str("note")?;
        Ok(r.finish())
    }

    #[test]
    fn a_parser_that_matches_its_schema_passes() {
        assert_eq!(schema(SCHEMA).unwrap().one_of_names, vec![vec!["id".to_string(), "cve_id".to_string()]]);
        let samples = [
            sample(json!({"id": "x", "severity": "high", "note": "n"})),
            sample(json!({"cve_id": "y", "severity": "low"})),
        ];
        check(SCHEMA, &samples, good).unwrap();
    }

    #[test]
    fn disagreements_are_named() {
        let samples = [sample(json!({"id": "x", "severity": "high", "note": "n"}))];
        let lax = |e: &Event| -> Result<Leftover> {
            let mut r = Reader::new(e);
            r.str(["id", "cve_id"])?;
            r.str("severity")?;
            r.str("extra")?;
            Ok(r.finish())
        };
        let err = check(SCHEMA, &samples, lax).unwrap_err();
        assert!(err.contains("without required severity: accepted"), "{err}");
        assert!(err.contains("the schema lists note"), "{err}");
        assert!(err.contains("the parser reads extra"), "{err}");
        let retrying = |e: &Event| -> Result<Leftover> { good(e).map_err(|e| Error::retry(e.message().to_string())) };
        assert!(check(SCHEMA, &samples, retrying).unwrap_err().contains("retryable"));
        assert!(schema("{}").is_err() && schema("nope").is_err());
    }
}
