//! `on-routing-decision`: the MoE routing monitor. Every `routing.decision_made`
//! updates its master's statistics in the `routing` bucket (key: the master;
//! decisions, experts chosen, running mean confidence, low-confidence rate);
//! a run of low-confidence decisions is reported as routing drift with a
//! `learning.pattern_detected` event for the learning loop.
//!
//! The host commits the statistics with the event and its follow-up: a
//! redelivered decision is counted once, and two decisions of one master
//! handled at once are settled one after the other (the record is read and
//! then written, so the later one runs again on the new record).
//!
//! The choice may come as `expert`, `selected_expert` or `selected_master`
//! (a coordinator choosing a master); the accepted shapes are the JSON Schema
//! in `src/schema/` (returned by `describe()`). Unknown fields are logged at
//! warn level; an unusable payload is refused as not retryable.

use cortex_sdk::kv::{self, Bucket};
use cortex_sdk::{Contract, Emit, Event, Handler, Leftover, Priority, Reader, Result, config_or, json};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One key per master, a [`MasterStats`] record each.
const BUCKET: &str = "routing";

struct OnRoutingDecision;

impl Handler for OnRoutingDecision {
    const NAME: &'static str = "on-routing-decision";
    const EVENTS: &'static [&'static str] = &["routing.decision_made"];
    const EMITS: &'static [&'static str] = &["learning.pattern_detected"];
    const CONTRACTS: &'static [Contract] =
        &[Contract { event_type: "routing.decision_made", schema: include_str!("schema/routing.decision_made.json") }];

    fn handle(event: Event) -> Result<String> {
        let settings =
            Settings { low_confidence: config_or("low_confidence", 0.5)?, drift_window: config_or("drift_window", 5)? };
        if settings.drift_window == 0 {
            return Err("setting drift_window must be at least 1".into());
        }
        let bucket = Bucket::open(BUCKET)?;
        let master = Decision::read(&event)?.0.master;
        let mut stats = Stats::default();
        if let Some(m) = bucket.get(&master)? {
            stats.masters.insert(master.clone(), m);
        }
        let applied = apply(&mut stats, &event, &settings)?;
        applied.leftover.warn();
        for follow_up in applied.follow_ups {
            follow_up.send()?;
        }
        bucket.set(&master, &stats.masters[&master])?;
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

/// The masters' records an event sees: `handle` loads the one it is about.
#[derive(Debug, Default)]
struct Stats {
    masters: BTreeMap<String, MasterStats>,
}

/// One master's statistics: the value of its key.
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
    follow_ups: Vec<Emit>,
    leftover: Leftover,
}

/// A `routing.decision_made` payload.
#[derive(Debug)]
struct Decision {
    /// Who decided: `payload.master`, else `metadata.master`, else "unknown".
    master: String,
    /// What was chosen.
    expert: String,
    confidence: f64,
    task: Option<String>,
}

impl Decision {
    fn read(event: &Event) -> Result<(Decision, Leftover)> {
        let mut p = Reader::new(event);
        let master = p.str("master")?.or_else(|| event.master.clone()).filter(|m| !m.trim().is_empty());
        if let Some(m) = master.as_ref().filter(|m| !kv::valid_key(m)) {
            return Err(p.wrong("master", "at most 1024 bytes of text without NUL", &json!(m)));
        }
        let expert = p.req_str(["expert", "selected_expert", "selected_master"])?;
        let confidence = match p.value(["confidence", "confidence_score"]) {
            None => return Err(cortex_sdk::Error::refuse("payload.confidence is required (a number from 0 to 1)")),
            Some((key, v)) => match p.f64(key)? {
                Some(c) if (0.0..=1.0).contains(&c) => c,
                _ => return Err(p.wrong(key, "a number from 0 to 1", v)),
            },
        };
        let task = p.str("task_id")?;
        // Accepted and not used: the router's other candidates and its reasons.
        p.known(["alternatives", "reasoning", "reason"]);
        let decision = Decision { master: master.unwrap_or_else(|| "unknown".into()), expert, confidence, task };
        Ok((decision, p.finish()))
    }
}

fn apply(stats: &mut Stats, event: &Event, settings: &Settings) -> Result<Applied> {
    let (Decision { master, expert, confidence, task }, leftover) = Decision::read(event)?;

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
            Emit::with_payload(
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
    Ok(Applied { summary, follow_ups, leftover })
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
        for (n, payload, named) in [
            (1, json!({"confidence": 0.5}), "payload.expert (or selected_expert, selected_master) is required"),
            (2, json!({"expert": "x"}), "payload.confidence is required"),
            (3, json!({"expert": "x", "confidence": 7}), "payload.confidence must be a number from 0 to 1, got 7"),
            (4, json!({"expert": "x", "confidence": "high"}), "payload.confidence must be a number (or its text)"),
            (5, json!({"expert": ["x"], "confidence": 0.5}), "payload.expert must be a string"),
        ] {
            let err = apply(&mut s, &decision(n, payload), &SETTINGS).unwrap_err();
            assert!(!err.is_retryable() && err.message().starts_with(named), "{err}");
        }
        assert!(s.masters.is_empty());
        let long = json!({"expert": "x", "confidence": 0.5, "master": "m".repeat(1025)});
        let err = apply(&mut s, &decision(6, long), &SETTINGS).unwrap_err();
        assert!(!err.is_retryable() && err.message().starts_with("payload.master must be at most 1024 bytes"), "{err}");
    }

    #[test]
    fn a_masters_record_round_trips_through_the_bucket() {
        let bucket = Bucket::open(BUCKET).unwrap();
        let mut s = Stats::default();
        apply(&mut s, &decision(1, json!({"expert": "rust", "confidence": 0.25})), &SETTINGS).unwrap();
        bucket.set("code-master", &s.masters["code-master"]).unwrap();
        let stored: MasterStats = bucket.get("code-master").unwrap().unwrap();
        assert_eq!(stored, s.masters["code-master"]);
        let text = &cortex_sdk::kv::memory::dump(BUCKET)["code-master"];
        assert!(text.contains(r#""experts":{"rust":1}"#) && !text.contains("recent_event_ids"), "{text}");
    }

    #[test]
    fn a_coordinator_choosing_a_master_is_a_decision() {
        let mut s = Stats::default();
        let seed = json!({"task_id": "t-1", "selected_master": "security-master", "confidence": "0.92",
                          "reasoning": "CVE in the diff", "alternatives": ["code-master"]});
        let a = apply(&mut s, &decision(1, seed), &SETTINGS).unwrap();
        assert!(a.leftover.ignored.is_empty(), "{:?}", a.leftover);
        assert_eq!(s.masters["code-master"].experts["security-master"], 1, "kept under the deciding master");
        assert!(a.summary.contains("routed t-1 to security-master at 0.92"), "{}", a.summary);
        let a = apply(
            &mut s,
            &decision(2, json!({"selected_expert": "sql", "confidence_score": 0.4, "repo": "x"})),
            &SETTINGS,
        )
        .unwrap();
        assert_eq!(a.leftover.ignored, ["repo"]);
        assert_eq!(s.masters["code-master"].experts["sql"], 1);
    }

    #[test]
    fn the_contract_matches_the_parser() {
        let samples = [
            Event::from_envelope_json(include_str!("../fixtures/decision-made.json")).unwrap(),
            decision(
                1,
                json!({"selected_master": "m", "confidence": "0.9", "reasoning": "r", "reason": "r", "master": "c"}),
            ),
            decision(2, json!({"selected_expert": "e", "confidence_score": 0.1})),
        ];
        let read = |e: &Event| Decision::read(e).map(|(_, left)| left);
        cortex_sdk::contract::check(OnRoutingDecision::CONTRACTS[0].schema, &samples, read).unwrap();
    }

    #[test]
    fn fixture_applies() {
        let mut s = Stats::default();
        let e = Event::from_envelope_json(include_str!("../fixtures/decision-made.json")).unwrap();
        apply(&mut s, &e, &SETTINGS).unwrap();
        assert_eq!(s.masters["code-master"].experts["rust-expert"], 1);
    }
}
