//! The verdict on one event, from what its handlers did: archived when
//! every handler it routes to succeeded (or none does), retried with
//! exponential backoff while attempts remain, dead-lettered with its
//! forensic record when they do not, when it was delivered more often than
//! allowed, or when it closes an event loop; put back unrun (deferred)
//! when a handler it routes to does not load, or put back to run again at
//! once when its state writes conflicted ([`rerun`]).
//!
//! Pure decisions: nothing here writes; the committer settles the verdicts
//! of a batch in one group commit.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Summary;
use super::lanes::{Pending, Ran};
use crate::event::Event;
use crate::queue::{AttemptRecord, Claim, Delivery, Failure, Settlement, Verdict, now_rfc3339};
use crate::records::{DeadLetterRecord, HandlerRef, HandlerRun, LoopLink, Outcome};
use crate::sandbox::{Fault, FaultKind};
use crate::text::Escaped;

/// Decides how one event ends, from what its handlers did, and counts it
/// in `summary`.
pub(super) fn settle_one(pending: Arc<Pending>, summary: &mut Summary) -> Settlement {
    let pending = Pending::into_inner(pending);
    let claim = pending.claim;
    if !pending.waits_for.is_empty() {
        summary.deferred += 1;
        tracing::debug!(event_id = %claim.event.event_id, handlers = ?pending.waits_for, "event waits for handlers that do not load");
        let due = SystemTime::now() + pending.defer_for;
        return Settlement { claim, emitted: Vec::new(), verdict: Verdict::Defer { due } };
    }
    let ran: Vec<Ran> = crate::lock::recover(pending.results.into_inner()).into_iter().flatten().collect();
    let tally = Tally::of(&ran, summary);
    summary.emitted += tally.emitted.len() as u64;

    if let Some(max_hops) = pending.looped {
        return cut_loop(summary, claim, tally.emitted, max_hops);
    }
    if let Some(max_attempts) = pending.exhausted {
        let attempt = claim.name.attempt;
        let reason = format!(
            "delivered {attempt} times, over max_attempts = {max_attempts}, without being settled (see history: its dispatchers stopped)"
        );
        let delivery = claim.delivery.clone();
        let end = DeadEnd { claim, emitted: tally.emitted, max_attempts, reason, failed: Vec::new(), delivery };
        return dead_letter(summary, end);
    }
    if tally.failures.is_empty() {
        let outcome = if pending.names.is_empty() && claim.delivery.done.is_empty() {
            summary.unhandled += 1;
            Outcome::Unhandled
        } else {
            summary.handled += 1;
            Outcome::Handled
        };
        let record = claim.archived(outcome, tally.runs);
        return Settlement { claim, emitted: tally.emitted, verdict: Verdict::Ack(Box::new(record)) };
    }
    retry_or_dead_letter(summary, claim, tally)
}

/// The verdict on an event whose key-value writes were refused as a
/// conflict (another invocation changed a key a handler read and wrote):
/// nothing of it is settled; it goes back to the queue due now, its attempt
/// unchanged, and all its handlers run again (those that applied their
/// writes find their mark and apply nothing twice).
pub(super) fn rerun(pending: Arc<Pending>, summary: &mut Summary) -> Settlement {
    let claim = Pending::into_inner(pending).claim;
    counted_rerun(&claim, summary);
    rerun_of(claim)
}

/// The re-run settlement of `claim` (see [`rerun`]), not counted yet.
pub(super) fn rerun_of(claim: Claim) -> Settlement {
    Settlement { claim, emitted: Vec::new(), verdict: Verdict::Defer { due: SystemTime::now() } }
}

/// Counts a re-run of `claim` in `summary`.
pub(super) fn counted_rerun(claim: &Claim, summary: &mut Summary) {
    summary.rerun += 1;
    tracing::debug!(event_id = %claim.event.event_id, "state conflict: the event runs again");
}

/// What the handlers of one event did.
struct Tally<'r> {
    /// The follow-up events of the handlers that succeeded.
    emitted: Vec<Event>,
    /// The runs that succeeded, for the archive record.
    runs: Vec<HandlerRun>,
    /// The names of the handlers that succeeded.
    succeeded: Vec<String>,
    failures: Vec<(&'r Ran, Fault)>,
}

impl<'r> Tally<'r> {
    /// Sorts the runs into successes and failures, counting each in the
    /// handler's stats.
    fn of(ran: &'r [Ran], summary: &mut Summary) -> Tally<'r> {
        let mut tally = Tally { emitted: Vec::new(), runs: Vec::new(), succeeded: Vec::new(), failures: Vec::new() };
        for r in ran {
            let stats = summary.handlers.entry(r.handler.clone()).or_default();
            stats.invocations += 1;
            stats.total_ms += r.duration.as_secs_f64() * 1000.0;
            match &r.result {
                Ok(text) => {
                    stats.succeeded += 1;
                    tally.succeeded.push(r.handler.clone());
                    tally.runs.push(HandlerRun {
                        name: r.handler.clone(),
                        version: r.version.clone(),
                        component_sha256: r.sha256.clone(),
                        summary: text.clone(),
                        duration_ms: crate::text::millis(r.duration),
                        started: chrono::DateTime::<chrono::Utc>::from(r.started)
                            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                        emitted: r.emitted.iter().map(|e| e.event_id.clone()).collect(),
                    });
                    tally.emitted.extend(r.emitted.iter().cloned());
                }
                Err(fault) => {
                    stats.failed += 1;
                    tally.failures.push((r, fault.clone()));
                }
            }
        }
        tally
    }
}

/// An event with failed handlers: retried with backoff while the strictest
/// handler's `max_attempts` allows, else dead-lettered. Handlers that
/// succeeded are remembered and not run again.
fn retry_or_dead_letter(summary: &mut Summary, claim: Claim, tally: Tally) -> Settlement {
    let attempt = claim.name.attempt;
    let mut delivery = claim.delivery.clone();
    delivery.done.extend(tally.succeeded);
    delivery.history.push(AttemptRecord {
        attempt,
        at: now_rfc3339(),
        failures: tally
            .failures
            .iter()
            .map(|(r, f)| Failure {
                handler: r.handler.clone(),
                component_sha256: r.sha256.clone(),
                fault: f.clone(),
                duration_ms: crate::text::millis(r.duration),
            })
            .collect(),
    });
    let failures = &tally.failures;
    let max_attempts = failures.iter().map(|(r, _)| r.max_attempts).min().unwrap_or(1);
    // A handler that refused the event (not retryable) would refuse it again.
    let refused = failures.iter().any(|(_, f)| f.kind == FaultKind::Refused);
    if attempt >= max_attempts || refused {
        let reason = failures
            .iter()
            .map(|(r, f)| format!("{}: {} ({})", r.handler, f.message, f.kind))
            .collect::<Vec<_>>()
            .join("; ");
        let failed = failures
            .iter()
            .map(|(r, _)| HandlerRef {
                name: r.handler.clone(),
                component_sha256: r.sha256.clone(),
                version: r.version.clone(),
            })
            .collect();
        return dead_letter(summary, DeadEnd { claim, emitted: tally.emitted, max_attempts, reason, failed, delivery });
    }
    summary.retried += 1;
    let backoff = failures.iter().map(|(r, _)| r.backoff_ms).max().unwrap_or(0);
    let delay = backoff.saturating_mul(1u64 << (attempt - 1).min(20));
    let due = SystemTime::now() + Duration::from_millis(delay);
    Settlement { claim, emitted: tally.emitted, verdict: Verdict::Retry { due, delivery } }
}

/// An event that failed for good, and what its dead letter says.
struct DeadEnd {
    claim: Claim,
    /// Follow-ups of the handlers that succeeded: still queued.
    emitted: Vec<Event>,
    max_attempts: u32,
    reason: String,
    /// The handlers whose failures ended it.
    failed: Vec<HandlerRef>,
    delivery: Delivery,
}

/// The verdict for an event that failed for good, with its forensic record.
fn dead_letter(summary: &mut Summary, end: DeadEnd) -> Settlement {
    summary.dead_lettered += 1;
    let DeadEnd { claim, emitted, max_attempts, reason, failed, delivery } = end;
    let attempt = claim.name.attempt;
    tracing::error!(event_id = %claim.event.event_id, attempts = attempt, reason = %Escaped(&reason), "event moved to the dead-letter queue");
    let record = DeadLetterRecord {
        event: Some(claim.event.clone()),
        entry: claim.name.key(),
        attempts: Some(attempt),
        max_attempts: Some(max_attempts),
        dead_lettered_at: now_rfc3339(),
        reason,
        failed_handlers: Some(failed),
        succeeded_handlers: Some(delivery.done),
        history: Some(delivery.history),
        ..DeadLetterRecord::default()
    };
    Settlement { claim, emitted, verdict: Verdict::DeadLetter(Box::new(record)) }
}

/// The dead letter of an event past `dispatch.max_hops`: the reason names
/// the loop, and the record's `loop` the link that closed it, for `cortex
/// status` to report.
fn cut_loop(summary: &mut Summary, claim: Claim, emitted: Vec<Event>, max_hops: u32) -> Settlement {
    let event = &claim.event;
    let cause = event.metadata.extra.get("caused_by");
    let text = |key: &str| cause.and_then(|c| c[key].as_str()).unwrap_or("?").to_string();
    let (handler, trigger_type, trigger_id) = (text("handler"), text("event_type"), text("event_id"));
    let hops = event.hops();
    let reason = format!(
        "event loop: {hops} hops of caused_by from a producer's event, over dispatch.max_hops = {max_hops}; handler {handler} emitted this {} while handling {trigger_type} {trigger_id}; not run (fix the handler's emits, or raise dispatch.max_hops if the chain is meant to be this long)",
        event.event_type
    );
    let link = LoopLink { hops, max_hops, handler, trigger_type, trigger_id, event_type: event.event_type.clone() };
    let (delivery, attempt) = (claim.delivery.clone(), claim.name.attempt);
    let end = DeadEnd { claim, emitted, max_attempts: attempt, reason, failed: Vec::new(), delivery };
    let mut settlement = dead_letter(summary, end);
    if let Verdict::DeadLetter(record) = &mut settlement.verdict {
        record.cut_loop = Some(link);
    }
    settlement
}
