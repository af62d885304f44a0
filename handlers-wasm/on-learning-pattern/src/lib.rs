//! `on-learning-pattern`: the learning loop's memory. `learning.pattern_detected`
//! events accumulate in a knowledge base, `/state/learning/patterns.json`,
//! where each pattern's confidence grows with its occurrences; a pattern whose
//! confidence first reaches the threshold is promoted with a
//! `learning.model_updated` event. Those events (from here or elsewhere) are
//! recorded in `/state/learning/models.json` and never emit anything, so the
//! loop ends there.

use cortex_sdk::fields::{opt_f64, opt_str, opt_u64, req_str};
use cortex_sdk::{Event, FollowUp, Handler, Result, Value, config_or, json, state};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

const PATTERNS: &str = "/state/learning/patterns.json";
const MODELS: &str = "/state/learning/models.json";
/// Model updates kept in the history.
const MAX_UPDATES: usize = 100;

struct OnLearningPattern;

impl Handler for OnLearningPattern {
    const NAME: &'static str = "on-learning-pattern";
    const EVENTS: &'static [&'static str] = &["learning.pattern_detected", "learning.model_updated"];

    fn handle(event: Event) -> Result<String> {
        let mut models: Models = state::load(MODELS)?;
        if event.event_type == "learning.model_updated" {
            if cortex_sdk::already_applied(&models.recent_event_ids, &event.id) {
                return Ok(cortex_sdk::duplicate_summary(&event.id));
            }
            let summary = record_model_update(&mut models, &event)?;
            state::save(MODELS, &models)?;
            return Ok(summary);
        }
        let settings =
            Settings { k: config_or("confidence_k", 2.0)?, threshold: config_or("confidence_threshold", 0.8)? };
        if settings.k.is_nan() || settings.k <= 0.0 {
            return Err("setting confidence_k must be a positive number".into());
        }
        let mut kb: Knowledge = state::load(PATTERNS)?;
        if cortex_sdk::already_applied(&kb.recent_event_ids, &event.id) {
            return Ok(cortex_sdk::duplicate_summary(&event.id));
        }
        let applied = pattern_detected(&mut kb, &event, &settings, models.version)?;
        for follow_up in applied.follow_ups {
            follow_up.send()?;
        }
        state::save(PATTERNS, &kb)?;
        Ok(applied.summary)
    }
}

cortex_sdk::handler!(OnLearningPattern);

struct Settings {
    /// Occurrences that give confidence 0.5: confidence = n / (n + k).
    k: f64,
    threshold: f64,
}

/// `/state/learning/patterns.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Knowledge {
    patterns: BTreeMap<String, Pattern>,
    recent_event_ids: Vec<String>,
}

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

/// `/state/learning/models.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Models {
    version: u64,
    history: Vec<ModelUpdate>,
    recent_event_ids: Vec<String>,
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
    follow_ups: Vec<FollowUp>,
}

/// Adds a detection to the knowledge base; promotes the pattern when its
/// confidence first reaches the threshold. `model_version` is the current
/// version in `models.json`; a promotion proposes the next one.
fn pattern_detected(kb: &mut Knowledge, event: &Event, settings: &Settings, model_version: u64) -> Result<Applied> {
    let p = &event.payload;
    let name = req_str(p, "pattern")?;
    let given = opt_f64(p, "confidence")?;
    if given.is_some_and(|c| !(0.0..=1.0).contains(&c)) {
        return Err(format!("payload.confidence must be between 0 and 1, got {}", given.unwrap_or_default()));
    }
    let occurrences = opt_u64(p, "occurrences")?.unwrap_or(1).max(1);
    let source = opt_str(p, "source")?.filter(|s| !s.is_empty()).unwrap_or_else(|| event.source.clone());
    let fix = opt_str(p, "suggested_fix")?.filter(|s| !s.trim().is_empty());

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
        follow_ups.push(FollowUp::new(
            "learning.model_updated",
            json!({
                "pattern": name, "confidence": pattern.confidence, "occurrences": pattern.occurrences,
                "suggested_fix": pattern.suggested_fix, "model_version": next,
            }),
        ));
        summary.push_str(&format!("; promoted as model version {next}"));
    }
    cortex_sdk::remember(&mut kb.recent_event_ids, &event.id);
    Ok(Applied { summary, follow_ups })
}

/// The larger of the reported confidence and `n / (n + k)`.
fn confidence(occurrences: u64, given: Option<f64>, k: f64) -> f64 {
    let n = occurrences as f64;
    given.unwrap_or(0.0).max(n / (n + k))
}

/// Records a model update; the version is the next one, or the update's own
/// `model_version` when that is higher.
fn record_model_update(models: &mut Models, event: &Event) -> Result<String> {
    let proposed = opt_u64(&event.payload, "model_version")?;
    models.version = (models.version + 1).max(proposed.unwrap_or(0));
    let pattern = opt_str(&event.payload, "pattern")?;
    models.history.push(ModelUpdate {
        version: models.version,
        at: event.timestamp.clone(),
        event_id: event.id.clone(),
        source: event.source.clone(),
        pattern: pattern.clone(),
        payload: Value::Object(event.payload.clone()),
    });
    cortex_sdk::keep_last(&mut models.history, MAX_UPDATES);
    cortex_sdk::remember(&mut models.recent_event_ids, &event.id);
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
        let err = pattern_detected(&mut kb, &detected(2, json!({"pattern": "q", "confidence": 1.5})), &SETTINGS, 0)
            .unwrap_err();
        assert!(err.contains("payload.confidence"));
        assert!(
            pattern_detected(&mut kb, &detected(3, json!({"occurrences": 2})), &SETTINGS, 0)
                .unwrap_err()
                .contains("payload.pattern")
        );
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
