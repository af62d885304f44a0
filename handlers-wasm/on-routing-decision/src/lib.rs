//! `on-routing-decision`: the MoE routing monitor. Every `routing.decision_made`
//! updates its master's statistics in `/state/routing/stats.json` (decisions,
//! experts chosen, running mean confidence, low-confidence rate); a run of
//! low-confidence decisions is reported as routing drift with a
//! `learning.pattern_detected` event for the learning loop.

use cortex_sdk::fields::{opt_f64, opt_str, req_str};
use cortex_sdk::{Event, FollowUp, Handler, Priority, Result, config_or, json, state};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const STATS: &str = "/state/routing/stats.json";

struct OnRoutingDecision;

impl Handler for OnRoutingDecision {
    const NAME: &'static str = "on-routing-decision";
    const EVENTS: &'static [&'static str] = &["routing.decision_made"];

    fn handle(event: Event) -> Result<String> {
        let settings =
            Settings { low_confidence: config_or("low_confidence", 0.5)?, drift_window: config_or("drift_window", 5)? };
        if settings.drift_window == 0 {
            return Err("setting drift_window must be at least 1".into());
        }
        let mut stats: Stats = state::load(STATS)?;
        if cortex_sdk::already_applied(&stats.recent_event_ids, &event.id) {
            return Ok(cortex_sdk::duplicate_summary(&event.id));
        }
        let applied = apply(&mut stats, &event, &settings)?;
        for follow_up in applied.follow_ups {
            follow_up.send()?;
        }
        state::save(STATS, &stats)?;
        Ok(applied.summary)
    }
}

cortex_sdk::handler!(OnRoutingDecision);

struct Settings {
    /// A decision below this confidence is low.
    low_confidence: f64,
    /// Consecutive low decisions that count as drift.
    drift_window: u64,
}

/// `/state/routing/stats.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stats {
    masters: BTreeMap<String, MasterStats>,
    recent_event_ids: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
struct MasterStats {
    decisions: u64,
    /// Expert name → times chosen.
    experts: BTreeMap<String, u64>,
    mean_confidence: f64,
    low_confidence: u64,
    low_confidence_rate: f64,
    consecutive_low: u64,
    drift_alerts: u64,
    last_decision: String,
}

#[derive(Debug)]
struct Applied {
    summary: String,
    follow_ups: Vec<FollowUp>,
}

fn apply(stats: &mut Stats, event: &Event, settings: &Settings) -> Result<Applied> {
    let p = &event.payload;
    let master = opt_str(p, "master")?
        .or_else(|| event.master.clone())
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| "unknown".into());
    let expert = req_str(p, "expert")?;
    let confidence = opt_f64(p, "confidence")?.ok_or("payload.confidence is required")?;
    if !(0.0..=1.0).contains(&confidence) {
        return Err(format!("payload.confidence must be between 0 and 1, got {confidence}"));
    }
    let task = opt_str(p, "task_id")?;

    let m = stats.masters.entry(master.clone()).or_default();
    m.decisions += 1;
    *m.experts.entry(expert.clone()).or_default() += 1;
    m.mean_confidence += (confidence - m.mean_confidence) / m.decisions as f64;
    let low = confidence < settings.low_confidence;
    if low {
        m.low_confidence += 1;
        m.consecutive_low += 1;
    } else {
        m.consecutive_low = 0;
    }
    m.low_confidence_rate = m.low_confidence as f64 / m.decisions as f64;
    m.last_decision = event.timestamp.clone();

    let mut summary = format!(
        "{master} routed{} to {expert} at {confidence:.2}{} (mean {:.2})",
        task.map(|t| format!(" {t}")).unwrap_or_default(),
        if low { ", low" } else { "" },
        m.mean_confidence
    );
    let mut follow_ups = Vec::new();
    if m.consecutive_low >= settings.drift_window {
        follow_ups.push(
            FollowUp::new(
                "learning.pattern_detected",
                json!({
                    "pattern": format!("routing drift: {master}"), "master": master,
                    "consecutive": m.consecutive_low, "mean_confidence": m.mean_confidence,
                    "source": "on-routing-decision",
                    "suggested_fix": format!("review the routing rules or experts of {master}"),
                }),
            )
            .priority(Priority::High)
            .master(master.clone()),
        );
        summary.push_str(&format!("; drift: {} low decisions in a row", m.consecutive_low));
        m.consecutive_low = 0;
        m.drift_alerts += 1;
    }
    cortex_sdk::remember(&mut stats.recent_event_ids, &event.id);
    Ok(Applied { summary, follow_ups })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cortex_sdk::Value;

    const SETTINGS: Settings = Settings { low_confidence: 0.5, drift_window: 5 };

    fn decision(n: u32, payload: Value) -> Event {
        let envelope = json!({
            "event_id": format!("evt_20251201_1200{n:02}_rte{n:03}"), "event_type": "routing.decision_made",
            "timestamp": format!("2025-12-01T12:00:{n:02}Z"), "source": "router",
            "metadata": {"priority": "medium", "master": "code-master"}, "payload": payload,
        });
        Event::from_envelope_json(&envelope.to_string()).unwrap()
    }

    #[test]
    fn statistics_accumulate_per_master() {
        let mut s = Stats::default();
        apply(&mut s, &decision(1, json!({"expert": "rust", "confidence": 0.9})), &SETTINGS).unwrap();
        apply(&mut s, &decision(2, json!({"expert": "rust", "confidence": 0.3})), &SETTINGS).unwrap();
        apply(&mut s, &decision(3, json!({"expert": "sql", "confidence": 0.6, "master": "data-master"})), &SETTINGS)
            .unwrap();
        let code = &s.masters["code-master"];
        assert_eq!((code.decisions, code.experts["rust"], code.low_confidence, code.consecutive_low), (2, 2, 1, 1));
        assert!((code.mean_confidence - 0.6).abs() < 1e-9);
        assert!((code.low_confidence_rate - 0.5).abs() < 1e-9);
        assert_eq!(s.masters["data-master"].decisions, 1, "payload.master wins over metadata.master");
    }

    #[test]
    fn drift_is_reported_after_the_window_of_low_decisions() {
        let mut s = Stats::default();
        let mut emitted = Vec::new();
        for n in 1..=11 {
            // One good decision in the middle restarts the count.
            let confidence = if n == 3 { 0.9 } else { 0.2 };
            let a =
                apply(&mut s, &decision(n, json!({"expert": "rust", "confidence": confidence})), &SETTINGS).unwrap();
            emitted.extend(a.follow_ups.into_iter().map(|f| (n, f)));
        }
        assert_eq!(emitted.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [8]);
        let f = &emitted[0].1;
        assert_eq!(f.event_type, "learning.pattern_detected");
        assert_eq!(f.payload["pattern"], "routing drift: code-master");
        assert_eq!(f.payload["consecutive"], 5);
        assert_eq!(f.payload["source"], "on-routing-decision");
        assert_eq!(f.payload["suggested_fix"], "review the routing rules or experts of code-master");
        let m = &s.masters["code-master"];
        assert_eq!((m.consecutive_low, m.drift_alerts), (3, 1));
    }

    #[test]
    fn bad_payloads_are_errors() {
        let mut s = Stats::default();
        let err = apply(&mut s, &decision(1, json!({"confidence": 0.5})), &SETTINGS).unwrap_err();
        assert!(err.contains("payload.expert"), "{err}");
        let err = apply(&mut s, &decision(2, json!({"expert": "x"})), &SETTINGS).unwrap_err();
        assert!(err.contains("payload.confidence"), "{err}");
        let err = apply(&mut s, &decision(3, json!({"expert": "x", "confidence": 7})), &SETTINGS).unwrap_err();
        assert!(err.contains("payload.confidence"), "{err}");
        assert!(s.masters.is_empty());
    }

    #[test]
    fn fixture_applies() {
        let mut s = Stats::default();
        let e = Event::from_envelope_json(include_str!("../fixtures/decision-made.json")).unwrap();
        apply(&mut s, &e, &SETTINGS).unwrap();
        assert_eq!(s.masters["code-master"].experts["rust-expert"], 1);
    }
}
