//! How claims end on Redis: [`RedisStore::settle_batch`] turns a batch of
//! settlements into the arguments of ONE `settle.lua` call (see the
//! module docs of `queue` for what it does and why it is safe to repeat),
//! [`RedisStore::recover_claims`] takes back the entries of consumers that
//! stopped; from recovery, once an hour, the archive retention runs (as
//! the filesystem's does) and consumers that stopped a day ago holding
//! nothing are removed from the group.
//!
//! Crash story: a script runs whole or not at all, so a settlement is
//! either applied with everything it writes, or not, and then its entry is
//! still pending in the group and is taken back after its lease. Between
//! `reclaim.lua` and `requeue.lua` entries sit in this consumer's pending
//! list: a crash there leaves them to the next recovery.

use std::time::Duration;

use anyhow::{Context, Result};

use super::queue::{GROUP, Held, RETRY, RedisStore, SCRIPTS, Wire};
use crate::lock::Recover;
use crate::queue::{AttemptRecord, Failure, Recovered, Settlement, Verdict, ms_of, now_ms, now_rfc3339};
use crate::records::{DeadLetterRecord, FaultKind};
use crate::sandbox::Fault;

/// How often a long-running store applies the archive retention from
/// `recover` (the filesystem's interval).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// A consumer holding nothing and idle this long is forgotten.
const CONSUMER_IDLE: Duration = Duration::from_secs(86_400);
/// Entries taken back per recovery, at most (the next one takes the rest).
const RECLAIM: usize = 256;

impl RedisStore {
    /// [`crate::queue::Queue::settle`] on Redis.
    pub(super) fn settle_batch(&self, batch: Vec<Settlement>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let p = self.server.prefix().to_string();
        let mut args = vec![p, GROUP.to_string(), now_ms().to_string()];
        let held = self.take_held(batch.iter());
        let mut sent = 0;
        for (s, h) in batch.iter().zip(held) {
            // Not held: settled already, or never claimed here; nothing to ack.
            if let Some(h) = h {
                Self::settlement_args(s, &h, &mut args)?;
                sent += 1;
            }
        }
        if sent > 0 {
            let what = format!("settle {sent} entries");
            let applied: Vec<i64> = self.server.run(&what, RETRY, |c| {
                let mut inv = SCRIPTS.settle.prepare_invoke();
                for a in &args {
                    inv.arg(a);
                }
                inv.invoke(c)
            })?;
            self.warn_skipped(&applied);
        }
        self.prune_if_cleanup(batch.iter());
        Ok(())
    }

    /// Takes what this process holds of each settlement's entry (`None`:
    /// not held, settled already or never claimed here, which is said in a
    /// warning): a settled entry is no longer refreshed.
    pub(super) fn take_held<'s>(&self, batch: impl Iterator<Item = &'s Settlement>) -> Vec<Option<Held>> {
        let held: Vec<Option<Held>> = {
            let mut held = self.held.locked();
            batch.map(|s| held.remove(&s.claim.name.key())).collect()
        };
        let not_held = held.iter().filter(|h| h.is_none()).count();
        if not_held > 0 {
            tracing::warn!(
                count = not_held,
                "settlements of entries this process does not hold were skipped (settled already)"
            );
        }
        held
    }

    /// Says how many settlements of a `settle.lua` reply were not applied.
    pub(super) fn warn_skipped(&self, applied: &[i64]) {
        let skipped = applied.iter().filter(|&&a| a == 0).count();
        if skipped > 0 {
            tracing::warn!(
                count = skipped,
                "settlements found their entries no longer claimed (taken back after their lease, or settled by a repeated call); they were not applied again"
            );
        }
    }

    /// Applies the archive retention when `batch` acks a
    /// `system.cleanup_needed` event.
    pub(super) fn prune_if_cleanup<'s>(&self, mut batch: impl Iterator<Item = &'s Settlement>) {
        let cleanup =
            batch.any(|s| matches!(s.verdict, Verdict::Ack(_)) && s.claim.event.event_type == "system.cleanup_needed");
        if cleanup && let Err(e) = self.prune_archive() {
            tracing::warn!(error = %format!("{e:#}"), "failed to apply the archive retention");
        }
    }

    /// The `settle.lua` arguments of one settlement of an entry held as
    /// `h`, appended to `args`.
    pub(super) fn settlement_args(s: &Settlement, h: &Held, args: &mut Vec<String>) -> Result<()> {
        let name = &s.claim.name;
        let event = &s.claim.event;
        let body = |attempt: u32| format!("{attempt}\n{}", event.to_json());
        // The fields after the common five, by verdict (settle.lua).
        let (verdict, fields) = match &s.verdict {
            Verdict::Ack(r) => {
                let line = serde_json::to_string(r).context("failed to serialize an archive record")?;
                ("ack", vec![line, crate::queue::archive_day(event).to_string()])
            }
            Verdict::DeadLetter(r) => {
                ("dead", vec![serde_json::to_string(r).context("failed to serialize a dead letter")?])
            }
            Verdict::Retry { due, delivery } => {
                let json = serde_json::to_string(delivery).context("failed to serialize a delivery record")?;
                ("retry", vec![json, ms_of(*due).to_string(), body(name.attempt + 1)])
            }
            Verdict::Defer { due } => ("defer", vec![ms_of(*due).to_string(), body(name.attempt)]),
        };
        args.extend([verdict.to_string(), h.rank.to_string(), h.id.clone(), name.key(), name.attempt.to_string()]);
        args.extend(fields);
        args.push(s.emitted.len().to_string());
        Self::new_entries(&s.emitted, args);
        Ok(())
    }

    /// Dead-letters an entry that is not a Cortex event (added to a stream
    /// by hand), keeping its text, so it neither blocks nor vanishes.
    pub(super) fn reject(&self, w: &Wire, why: &str) -> Result<()> {
        let key = w.name().map_or_else(|| format!("invalid-{}-{}", w.rank, w.id), |n| n.key());
        let record = DeadLetterRecord {
            entry: key.clone(),
            raw: Some(w.event.clone()),
            dead_lettered_at: now_rfc3339(),
            reason: format!("{why}; it was added to the stream by something other than Cortex"),
            ..DeadLetterRecord::default()
        };
        let record = serde_json::to_string(&record).context("failed to serialize a dead letter")?;
        let p = self.server.prefix().to_string();
        let args = [p, GROUP.into(), now_ms().to_string(), "dead".into(), w.rank.to_string(), w.id.clone()];
        // The attempt as the entry holds it: a delivery record of an
        // attempt past the first is deleted with the entry.
        let rest = [key, w.attempt.clone(), record, "0".into()];
        self.server.run("dead-letter an entry that is not an event", RETRY, |c| {
            let mut inv = SCRIPTS.settle.prepare_invoke();
            for a in args.iter().chain(&rest) {
                inv.arg(a);
            }
            inv.invoke::<Vec<i64>>(c)
        })?;
        tracing::warn!(stream_id = %w.id, "dead-lettered a stream entry that is not a Cortex event: {why}");
        Ok(())
    }

    /// [`crate::queue::Queue::recover`] on Redis: keeps this process's own
    /// claims alive, then takes back entries idle longer than `lease`
    /// (their consumer stopped) with the attempt raised. Applies the
    /// archive retention when it is an hour since it last did.
    pub(super) fn recover_claims(&self, lease: Duration) -> Result<Recovered> {
        *self.lease.locked() = lease;
        let due = self.last_prune.locked().is_none_or(|t| t.elapsed() > PRUNE_EVERY);
        if due {
            if let Err(e) = self.prune_archive() {
                tracing::warn!(error = %format!("{e:#}"), "failed to apply the archive retention");
            }
            let p = self.server.prefix().to_string();
            let idle = u64::try_from(CONSUMER_IDLE.as_millis()).unwrap_or(u64::MAX);
            let forgot = self.server.run("forget stopped consumers", RETRY, |c| {
                SCRIPTS.consumers.arg(&p).arg(GROUP).arg(idle).invoke::<i64>(c)
            })?;
            if forgot > 0 {
                tracing::info!(consumers = forgot, "forgot consumers that stopped holding nothing");
            }
        }
        self.refresh()?;
        let mut out = Recovered::default();
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        loop {
            let p = self.server.prefix().to_string();
            let rows: Vec<Vec<String>> = self.server.run("take back expired claims", RETRY, |c| {
                SCRIPTS.reclaim.arg(&p).arg(GROUP).arg(&self.consumer).arg(lease_ms).arg(RECLAIM).invoke(c)
            })?;
            let wires = Wire::rows(rows)?;
            let full = wires.len() >= RECLAIM;
            let mut args = Vec::new();
            for w in &wires {
                // Its own claims: held here (refreshed above, unless the
                // lease is shorter than a round trip), never taken back.
                if self.held.locked().contains_key(&w.key) {
                    continue;
                }
                let claim = match w.claim() {
                    Ok(c) => c,
                    Err(why) => {
                        self.reject(w, &why)?;
                        continue;
                    }
                };
                let mut delivery = claim.delivery;
                let failure = Failure {
                    handler: String::new(),
                    component_sha256: String::new(),
                    fault: Fault {
                        kind: FaultKind::LeaseExpired,
                        message: format!(
                            "claim held for more than {}s without being settled: its dispatcher stopped",
                            lease.as_secs()
                        ),
                        detail: String::new(),
                    },
                    duration_ms: lease.as_secs_f64() * 1000.0,
                };
                delivery.history.push(AttemptRecord {
                    attempt: claim.name.attempt,
                    at: now_rfc3339(),
                    failures: vec![failure],
                });
                args.extend([
                    w.rank.to_string(),
                    w.id.clone(),
                    w.key.clone(),
                    claim.event.event_id.clone(),
                    (claim.name.attempt + 1).to_string(),
                    w.event.clone(),
                    serde_json::to_string(&delivery).context("failed to serialize a delivery record")?,
                ]);
            }
            let n = self.requeue(&args)?;
            out.requeued += n;
            if !full || n == 0 {
                return Ok(out);
            }
        }
    }
}
