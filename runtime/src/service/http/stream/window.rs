//! The rolling per-handler window behind `GET /api/handlers`: a bounded
//! in-memory sample of each handler's recent runs, fed by the stream's
//! publisher (one short lock per published batch, off the committer's
//! thread) and summed on request.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::dispatch::Settled;

/// How far back the per-handler window reaches.
const WINDOW_US: u64 = 5 * 60 * 1_000_000;
/// Samples kept per handler, at most (the window's memory bound).
const MAX_SAMPLES: usize = 100_000;

/// Each handler's recent runs, oldest first.
#[derive(Default)]
pub(super) struct Samples {
    by_handler: BTreeMap<String, VecDeque<Sample>>,
}

/// One handler run in the window.
#[derive(Clone, Copy)]
struct Sample {
    at_us: u64,
    ms: f64,
    ok: bool,
}

/// One handler's figures over the window, as `/api/handlers` sends them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Seconds the figures cover (the window, or less since the start).
    pub window_secs: f64,
    pub invocations: usize,
    pub failures: usize,
    /// Invocations per second over the window.
    pub rate_per_sec: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Samples {
    /// Adds the runs of one settled event, forgetting what fell out of the
    /// window or past the bound.
    pub(super) fn record(&mut self, s: &Settled) {
        for h in &s.handlers {
            let samples = self.by_handler.entry(h.handler.clone()).or_default();
            while samples.len() >= MAX_SAMPLES
                || samples.front().is_some_and(|f| s.settled_us.saturating_sub(f.at_us) > WINDOW_US)
            {
                samples.pop_front();
            }
            samples.push_back(Sample { at_us: s.settled_us, ms: h.duration_ms, ok: h.ok() });
        }
    }

    /// Each handler's figures over the window ending at `now_us`, for a
    /// feed that started at `started_us`.
    pub(super) fn windows(&self, now_us: u64, started_us: u64) -> BTreeMap<String, Window> {
        let covered = now_us.saturating_sub(started_us).clamp(1, WINDOW_US) as f64 / 1e6;
        self.by_handler
            .iter()
            .map(|(name, samples)| {
                let live: Vec<&Sample> =
                    samples.iter().filter(|s| now_us.saturating_sub(s.at_us) <= WINDOW_US).collect();
                let mut ms: Vec<f64> = live.iter().map(|s| s.ms).collect();
                ms.sort_by(f64::total_cmp);
                let window = Window {
                    window_secs: covered,
                    invocations: live.len(),
                    failures: live.iter().filter(|s| !s.ok).count(),
                    rate_per_sec: live.len() as f64 / covered,
                    p50_ms: percentile(&ms, 0.50),
                    p99_ms: percentile(&ms, 0.99),
                };
                (name.clone(), window)
            })
            .collect()
    }
}

/// The value at quantile `q` of sorted `v` (nearest rank).
fn percentile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{Ending, HandlerResult};
    use crate::queue::now_us;

    fn run(at_us: u64, ms: f64, ok: bool) -> Settled {
        Settled {
            event_id: "e".into(),
            event_type: "a.b".into(),
            source: "test".into(),
            correlation_id: None,
            priority: "medium".into(),
            attempt: 1,
            ending: if ok { Ending::Handled } else { Ending::Retried },
            handlers: vec![HandlerResult {
                handler: "h".into(),
                fault: (!ok).then_some(crate::records::FaultKind::Error),
                duration_ms: ms,
            }],
            latency_ms: 1.0,
            settled_us: at_us,
        }
    }

    #[test]
    fn the_window_counts_rate_percentiles_and_failures() {
        let (mut samples, now) = (Samples::default(), now_us());
        for i in 1..=100 {
            samples.record(&run(now, i as f64, i % 10 != 0));
        }
        let w = &samples.windows(now, now - 10_000_000)["h"];
        assert_eq!((w.invocations, w.failures), (100, 10));
        assert_eq!((w.p50_ms, w.p99_ms), (Some(51.0), Some(99.0)));
        assert_eq!((w.window_secs, w.rate_per_sec), (10.0, 10.0));
    }

    #[test]
    fn runs_older_than_the_window_are_left_out() {
        let (mut samples, now) = (Samples::default(), now_us());
        samples.record(&run(now - WINDOW_US - 1, 500.0, false));
        samples.record(&run(now, 2.0, true));
        let w = &samples.windows(now, now - 2 * WINDOW_US)["h"];
        assert_eq!((w.invocations, w.failures, w.p99_ms), (1, 0, Some(2.0)));
    }
}
