//! What a dispatch run did ([`Summary`], with per-handler [`HandlerStats`]),
//! as `cortex dispatch` prints it and `--json` writes it.

use std::collections::BTreeMap;

use serde::Serialize;

/// Per-handler counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HandlerStats {
    pub invocations: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub total_ms: f64,
}

/// What a dispatch run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub claimed: u64,
    pub handled: u64,
    pub unhandled: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    /// Events put back because a handler they route to does not load.
    pub deferred: u64,
    /// Events put back to run again at once: a key a handler read and
    /// wrote was changed by another invocation first (see `crate::kv`).
    pub rerun: u64,
    pub emitted: u64,
    pub recovered_claims: usize,
    /// Handlers that did not load, with why (their events wait).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub broken: BTreeMap<String, String>,
    pub handlers: BTreeMap<String, HandlerStats>,
    pub elapsed_ms: f64,
}

impl Summary {
    /// Adds the counts of `other` (e.g. what one event's verdict counted).
    pub(super) fn absorb(&mut self, other: Summary) {
        let Summary {
            claimed,
            handled,
            unhandled,
            retried,
            dead_lettered,
            deferred,
            rerun,
            emitted,
            recovered_claims,
            broken,
            handlers,
            elapsed_ms: _,
        } = other;
        self.claimed += claimed;
        self.handled += handled;
        self.unhandled += unhandled;
        self.retried += retried;
        self.dead_lettered += dead_lettered;
        self.deferred += deferred;
        self.rerun += rerun;
        self.emitted += emitted;
        self.recovered_claims += recovered_claims;
        self.broken.extend(broken);
        for (name, s) in handlers {
            let t = self.handlers.entry(name).or_default();
            t.invocations += s.invocations;
            t.succeeded += s.succeeded;
            t.failed += s.failed;
            t.total_ms += s.total_ms;
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = if self.elapsed_ms > 0.0 { self.claimed as f64 / (self.elapsed_ms / 1000.0) } else { 0.0 };
        writeln!(
            f,
            "dispatched {} events in {:.1} ms ({rate:.0}/s): {} handled, {} unhandled, {} retried, {} dead-lettered; {} follow-up events emitted",
            self.claimed, self.elapsed_ms, self.handled, self.unhandled, self.retried, self.dead_lettered, self.emitted
        )?;
        if self.deferred > 0 {
            writeln!(f, "{} events wait in the queue for handlers that do not load", self.deferred)?;
        }
        if self.rerun > 0 {
            writeln!(f, "{} events ran again: another invocation changed a key they read and wrote", self.rerun)?;
        }
        if self.recovered_claims > 0 {
            writeln!(f, "recovered {} stale claims from a stopped dispatcher", self.recovered_claims)?;
        }
        for (name, s) in &self.handlers {
            let mean = if s.invocations > 0 { s.total_ms / s.invocations as f64 } else { 0.0 };
            writeln!(
                f,
                "  {name:<24} {:>7} runs  {:>7} ok  {:>5} failed  {mean:>8.3} ms mean",
                s.invocations, s.succeeded, s.failed
            )?;
        }
        Ok(())
    }
}

/// How a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Until the queue is empty, waiting for retries that are not yet due.
    Drained,
    /// Until the queue holds nothing due now (retries stay queued).
    NothingDue,
}
