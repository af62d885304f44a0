//! `on-learning-pattern`: the learning loop's memory. `learning.pattern_detected`
//! events accumulate in a knowledge base, the `learning` bucket (key
//! `pattern/<name>`), where each pattern's confidence grows with its
//! occurrences; a pattern whose confidence first reaches the threshold is
//! promoted with a `learning.model_updated` event. Those events (from here or
//! elsewhere) are recorded under the key `models` and never emit anything, so
//! the loop ends there.
//!
//! The host commits the records with the event and its follow-up: a
//! redelivered event changes nothing, and a record read and then written is
//! checked at commit, so a pattern is promoted once.
//!
//! Numbers may come as text, and `count` is a synonym of `occurrences`; the
//! accepted shapes are the JSON Schemas in `src/schema/` (returned by
//! `describe()`). Unknown fields are logged at warn level; an unusable
//! payload is refused as not retryable.

use cortex_sdk::kv::{self, Bucket};
use cortex_sdk::state::keep_last;
use cortex_sdk::{Contract, Emit, Event, Handler, Leftover, Reader, Result, Value, config_or, json};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// `pattern/<name>` → [`Pattern`], and `models` → [`Models`].
const BUCKET: &str = "learning";
const MODELS: &str = "models";
/// Model updates kept in the history.
const MAX_UPDATES: usize = 100;
const PATTERN_DETECTED: &str = "learning.pattern_detected";
const MODEL_UPDATED: &str = "learning.model_updated";
/// What on-task-failure and on-routing-decision put in their detections
/// beyond what is read here: accepted, not used.
const DETECTION_KNOWN: [&str; 4] = ["window_secs", "master", "consecutive", "mean_confidence"];

struct OnLearningPattern;

impl Handler for OnLearningPattern {
    const NAME: &'static str = "on-learning-pattern";
    const EVENTS: &'static [&'static str] = &[PATTERN_DETECTED, MODEL_UPDATED];
    const EMITS: &'static [&'static str] = &[MODEL_UPDATED];
    const CONTRACTS: &'static [Contract] = &[
        Contract { event_type: PATTERN_DETECTED, schema: include_str!("schema/learning.pattern_detected.json") },
        Contract { event_type: MODEL_UPDATED, schema: include_str!("schema/learning.model_updated.json") },
    ];

    fn handle(event: Event) -> Result<String> {
        let bucket = Bucket::open(BUCKET)?;
        let mut models: Models = bucket.get(MODELS)?.unwrap_or_default();
        if event.event_type == MODEL_UPDATED {
            let summary = record_model_update(&mut models, &event)?;
            bucket.set(MODELS, &models)?;
            return Ok(summary);
        }
        let settings =
            Settings { k: config_or("confidence_k", 2.0)?, threshold: config_or("confidence_threshold", 0.8)? };
        if settings.k.is_nan() || settings.k <= 0.0 {
            return Err("setting confidence_k must be a positive number".into());
        }
        let name = Detection::read(&event)?.0.name;
        let key = pattern_key(&name);
        let mut kb = Knowledge::default();
        if let Some(p) = bucket.get(&key)? {
            kb.patterns.insert(name.clone(), p);
        }
        let applied = pattern_detected(&mut kb, &event, &settings, models.version)?;
        applied.leftover.warn();
        for follow_up in applied.follow_ups {
            follow_up.send()?;
        }
        bucket.set(&key, &kb.patterns[&name])?;
        Ok(applied.summary)
    }
}

cortex_sdk::handler!(OnLearningPattern);

struct Settings {
    /// Occurrences that give confidence 0.5: confidence = n / (n + k).
    k: f64,
    threshold: f64,
}

/// The patterns an event sees: `handle` loads the one it is about.
#[derive(Debug, Default)]
struct Knowledge {
    patterns: BTreeMap<String, Pattern>,
}

/// The key of pattern `name`.
fn pattern_key(name: &str) -> String {
    format!("pattern/{name}")
}

/// The value of `pattern/<name>`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Pattern {
    occurrences: u64,
    first_seen: String,
    last_seen: String,
    confidence: f64,
    suggested_fix: Option<String>,
    sources: BTreeSet<String>,
    promoted: bool,
}

/// The value of `models`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Models {
    version: u64,
    history: Vec<ModelUpdate>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ModelUpdate {
    version: u64,
    at: String,
    event_id: String,
    source: String,
    pattern: Option<String>,
    payload: Value,
}

#[derive(Debug)]
struct Applied {
    summary: String,
    follow_ups: Vec<Emit>,
    leftover: Leftover,
}

/// A `learning.pattern_detected` payload.
#[derive(Debug)]
struct Detection {
    name: String,
    confidence: Option<f64>,
    occurrences: u64,
    source: String,
    fix: Option<String>,
}

impl Detection {
    fn read(event: &Event) -> Result<(Detection, Leftover)> {
        let mut p = Reader::new(event);
        let name = p.req_str("pattern")?;
        if !kv::valid_key(&pattern_key(&name)) {
            return Err(p.wrong("pattern", "at most 1000 bytes of text without NUL", &json!(name)));
        }
        let confidence = match p.value("confidence") {
            None => None,
            Some((key, v)) => match p.f64(key)? {
                Some(c) if (0.0..=1.0).contains(&c) => Some(c),
                _ => return Err(p.wrong(key, "a number from 0 to 1", v)),
            },
        };
        let detection = Detection {
            name,
            confidence,
            occurrences: p.u64(["occurrences", "count"])?.unwrap_or(1).max(1),
            source: p.str("source")?.unwrap_or_else(|| event.source.clone()),
            fix: p.str("suggested_fix")?,
        };
        p.known(DETECTION_KNOWN);
        Ok((detection, p.finish()))
    }
}

/// Adds a detection to the knowledge base; promotes the pattern when its
/// confidence first reaches the threshold. `model_version` is the current
/// version in `models.json`; a promotion proposes the next one.
fn pattern_detected(kb: &mut Knowledge, event: &Event, settings: &Settings, model_version: u64) -> Result<Applied> {
    let (Detection { name, confidence: given, occurrences, source, fix }, leftover) = Detection::read(event)?;

    let pattern = kb.patterns.entry(name.clone()).or_default();
    pattern.occurrences = pattern.occurrences.saturating_add(occurrences);
    if pattern.first_seen.is_empty() {
        pattern.first_seen = event.timestamp.clone();
    }
    pattern.last_seen = event.timestamp.clone();
    pattern.suggested_fix = fix.or(pattern.suggested_fix.take());
    pattern.sources.insert(source);
    pattern.confidence = confidence(pattern.occurrences, given, settings.k);

    let mut follow_ups = Vec::new();
    let mut summary =
        format!("pattern {name:?}: {} occurrences, confidence {:.2}", pattern.occurrences, pattern.confidence);
    if !pattern.promoted && pattern.confidence >= settings.threshold {
        pattern.promoted = true;
        let next = model_version + 1;
        follow_ups.push(Emit::with_payload(
            "learning.model_updated",
            json!({
                "pattern": name, "confidence": pattern.confidence, "occurrences": pattern.occurrences,
                "suggested_fix": pattern.suggested_fix, "model_version": next,
            }),
        ));
        summary.push_str(&format!("; promoted as model version {next}"));
    }
    Ok(Applied { summary, follow_ups, leftover })
}

/// The larger of the reported confidence and `n / (n + k)`.
fn confidence(occurrences: u64, given: Option<f64>, k: f64) -> f64 {
    let n = occurrences as f64;
    given.unwrap_or(0.0).max(n / (n + k))
}

/// Records a model update; the version is the next one, or the update's own
/// `model_version` when that is higher.
fn record_model_update(models: &mut Models, event: &Event) -> Result<String> {
    let mut p = Reader::new(event);
    let proposed = p.u64("model_version")?;
    let pattern = p.str("pattern")?;
    // The payload is kept whole in the history: nothing is ignored.
    p.rest();
    models.version = (models.version + 1).max(proposed.unwrap_or(0));
    models.history.push(ModelUpdate {
        version: models.version,
        at: event.timestamp.clone(),
        event_id: event.id.clone(),
        source: event.source.clone(),
        pattern: pattern.clone(),
        payload: Value::Object(event.payload.clone()),
    });
    keep_last(&mut models.history, MAX_UPDATES);
    Ok(match pattern {
        Some(p) => format!("model version {} recorded (pattern {p:?})", models.version),
        None => format!("model version {} recorded", models.version),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: Settings = Settings { k: 2.0, threshold: 0.8 };

    fn event(n: u32, ty: &str, payload: Value) -> Event {
        let envelope = json!({
            "event_id": format!("evt_20251201_1200{n:02}_lrn{n:03}"), "event_type": ty,
            "timestamp": format!("2025-12-01T12:00:{n:02}Z"), "source": "on-task-failure",
            "metadata": {"priority": "medium"}, "payload": payload,
        });
        Event::from_envelope_json(&envelope.to_string()).unwrap()
    }

    fn detected(n: u32, payload: Value) -> Event {
        event(n, "learning.pattern_detected", payload)
    }

    #[test]
    fn confidence_grows_with_occurrences() {
        assert_eq!(confidence(2, None, 2.0), 0.5);
        assert_eq!(confidence(8, None, 2.0), 0.8);
        assert_eq!(confidence(1, Some(0.9), 2.0), 0.9);
        assert_eq!(confidence(8, Some(0.1), 2.0), 0.8);
    }

    #[test]
    fn a_pattern_is_promoted_once_when_confident() {
        let mut kb = Knowledge::default();
        let a = pattern_detected(
            &mut kb,
            &detected(1, json!({"pattern": "p", "occurrences": 3, "suggested_fix": "fix it"})),
            &SETTINGS,
            4,
        )
        .unwrap();
        assert!(a.follow_ups.is_empty(), "3/5 = 0.6 is below 0.8");
        let a = pattern_detected(
            &mut kb,
            &detected(2, json!({"pattern": "p", "occurrences": 5, "source": "ops"})),
            &SETTINGS,
            4,
        )
        .unwrap();
        assert_eq!(a.follow_ups.len(), 1);
        let update = &a.follow_ups[0];
        assert_eq!(update.event_type, "learning.model_updated");
        assert_eq!(update.payload["pattern"], "p");
        assert_eq!(update.payload["confidence"], 0.8);
        assert_eq!(update.payload["occurrences"], 8);
        assert_eq!(update.payload["suggested_fix"], "fix it", "the latest non-empty fix is kept");
        assert_eq!(update.payload["model_version"], 5);
        let entry = &kb.patterns["p"];
        assert!(entry.promoted);
        assert_eq!(entry.sources.iter().collect::<Vec<_>>(), ["on-task-failure", "ops"]);

        let a = pattern_detected(&mut kb, &detected(3, json!({"pattern": "p"})), &SETTINGS, 5).unwrap();
        assert!(a.follow_ups.is_empty(), "not promoted twice");
    }

    #[test]
    fn a_reported_confidence_can_promote_at_once() {
        let mut kb = Knowledge::default();
        let a =
            pattern_detected(&mut kb, &detected(1, json!({"pattern": "q", "confidence": 0.95})), &SETTINGS, 0).unwrap();
        assert_eq!(a.follow_ups[0].payload["model_version"], 1);
        for (n, payload, named) in [
            (2, json!({"pattern": "q", "confidence": 1.5}), "payload.confidence must be a number from 0 to 1, got 1.5"),
            (3, json!({"occurrences": 2}), "payload.pattern is required"),
            (4, json!({"pattern": "q", "occurrences": "often"}), "payload.occurrences must be a non-negative whole"),
            (5, json!({"pattern": "q", "confidence": "sure"}), "payload.confidence must be a number (or its text)"),
        ] {
            let err = pattern_detected(&mut kb, &detected(n, payload), &SETTINGS, 0).unwrap_err();
            assert!(!err.is_retryable() && err.message().starts_with(named), "{err}");
        }
    }

    #[test]
    fn what_the_other_handlers_emit_is_read_whole() {
        let mut kb = Knowledge::default();
        let from_routing = json!({"pattern": "routing drift: m", "master": "m", "consecutive": 5, "mean_confidence": 0.3,
                                  "source": "on-routing-decision", "suggested_fix": "review"});
        let a = pattern_detected(&mut kb, &detected(1, from_routing), &SETTINGS, 0).unwrap();
        assert!(a.leftover.ignored.is_empty(), "{:?}", a.leftover);
        let counted = json!({"pattern": "p", "count": "3", "confidence": "0.5", "recommendation": "x"});
        let a = pattern_detected(&mut kb, &detected(2, counted), &SETTINGS, 0).unwrap();
        assert_eq!(kb.patterns["p"].occurrences, 3);
        assert_eq!(a.leftover.ignored, ["recommendation"]);
    }

    #[test]
    fn the_contracts_match_the_parser() {
        let fixture = |text: &str| Event::from_envelope_json(text).unwrap();
        let read = |e: &Event| match e.event_type.as_str() {
            PATTERN_DETECTED => Detection::read(e).map(|(_, left)| left),
            _ => {
                let mut p = Reader::new(e);
                p.u64("model_version")?;
                p.str("pattern")?;
                Ok(p.finish())
            }
        };
        let detections = [
            fixture(include_str!("../fixtures/pattern-detected.json")),
            detected(1, json!({"pattern": "p", "count": 2, "master": "m", "consecutive": 5, "mean_confidence": 0.1})),
        ];
        cortex_sdk::contract::check(OnLearningPattern::CONTRACTS[0].schema, &detections, read).unwrap();
        let updates = [event(2, MODEL_UPDATED, json!({"pattern": "p", "model_version": "4"}))];
        cortex_sdk::contract::check(OnLearningPattern::CONTRACTS[1].schema, &updates, read).unwrap();
    }

    #[test]
    fn model_updates_are_versioned_and_kept() {
        let mut m = Models::default();
        record_model_update(&mut m, &event(1, "learning.model_updated", json!({"pattern": "p", "model_version": 5})))
            .unwrap();
        assert_eq!(m.version, 5);
        record_model_update(&mut m, &event(2, "learning.model_updated", json!({}))).unwrap();
        assert_eq!(m.version, 6);
        assert_eq!(m.history.len(), 2);
        assert_eq!(m.history[0].pattern.as_deref(), Some("p"));
    }

    #[test]
    fn records_round_trip_through_the_bucket_and_long_names_are_refused() {
        let bucket = Bucket::open(BUCKET).unwrap();
        let mut kb = Knowledge::default();
        pattern_detected(&mut kb, &detected(1, json!({"pattern": "p", "occurrences": 2})), &SETTINGS, 0).unwrap();
        bucket.set(&pattern_key("p"), &kb.patterns["p"]).unwrap();
        let stored: Pattern = bucket.get("pattern/p").unwrap().unwrap();
        assert_eq!(stored.occurrences, 2);
        let text = &cortex_sdk::kv::memory::dump(BUCKET)["pattern/p"];
        assert!(!text.contains("recent_event_ids"), "{text}");
        let long = detected(2, json!({"pattern": "x".repeat(1020)}));
        let err = pattern_detected(&mut kb, &long, &SETTINGS, 0).unwrap_err();
        assert!(
            !err.is_retryable() && err.message().starts_with("payload.pattern must be at most 1000 bytes"),
            "{err}"
        );
    }

    #[test]
    fn fixtures_apply() {
        let mut kb = Knowledge::default();
        let e = Event::from_envelope_json(include_str!("../fixtures/pattern-detected.json")).unwrap();
        assert_eq!(pattern_detected(&mut kb, &e, &SETTINGS, 0).unwrap().follow_ups.len(), 1);
        let mut m = Models::default();
        let e = Event::from_envelope_json(include_str!("../fixtures/model-updated.json")).unwrap();
        record_model_update(&mut m, &e).unwrap();
        assert_eq!(m.version, 3);
    }
}
