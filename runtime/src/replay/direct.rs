//! Direct mode: the handlers run in-process on the selected events, now;
//! a candidate component may stand in for one, and a dry run gives it a
//! throwaway copy of its grants.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::{Candidate, EventReport, Progress, Report, Request, Run};
use crate::config::Config;
use crate::event::Event;
use crate::fsio;
use crate::layout::Layout;
use crate::route;
use crate::sandbox::{Loaded, Sandbox};
use crate::store::Store;

/// Runs the handlers in-process; queues their follow-ups unless a dry run.
pub(super) fn direct(
    store: &dyn Store,
    layout: &Layout,
    config: &Config,
    request: &Request,
    events: Vec<Event>,
    report: &mut Report,
    progress: Progress,
) -> Result<()> {
    let candidate = match &request.component {
        None => None,
        Some(path) => {
            let name = match &request.handler {
                Some(h) => h.clone(),
                None => {
                    let reached: BTreeSet<&str> =
                        events.iter().flat_map(|e| route::handlers_for_event(config, e)).collect();
                    match reached.len() {
                        1 => reached.into_iter().next().unwrap_or_default().to_string(),
                        0 => bail!(
                            "the selected events reach no handler, so --component {} stands in for none: name one with --handler",
                            path.display()
                        ),
                        _ => bail!(
                            "--component needs --handler NAME: the selected events reach {}",
                            reached.into_iter().collect::<Vec<_>>().join(", ")
                        ),
                    }
                }
            };
            Some((name, path.clone()))
        }
    };
    let only = request.handler.as_deref().or(candidate.as_ref().map(|(n, _)| n.as_str()));
    let plan: Vec<(Event, Vec<String>)> = events
        .into_iter()
        .map(|e| {
            let hs = route::handlers_for_event(config, &e)
                .into_iter()
                .filter(|h| only.is_none_or(|o| o == *h))
                .map(str::to_string)
                .collect::<Vec<_>>();
            (e, hs)
        })
        .filter(|(_, hs)| only.is_none() || !hs.is_empty())
        .collect();

    // A dry run gives the candidate copies of its grants in a scratch root,
    // so whatever it writes is thrown away with it.
    let scratch = if request.dry_run {
        let dir = tempfile::Builder::new()
            .prefix("cortex-replay-")
            .tempdir()
            .context("failed to create a scratch directory for the dry run")?;
        let scratch = Layout::new(dir.path());
        for d in [scratch.tmp(), scratch.cache()] {
            std::fs::create_dir_all(&d).with_context(|| format!("failed to create {}", d.display()))?;
        }
        let names: BTreeSet<&str> = plan.iter().flat_map(|(_, hs)| hs.iter().map(String::as_str)).collect();
        // Outermost grants first; one inside a grant already copied came with it.
        let mut grants: Vec<(&str, Vec<&str>)> = names
            .iter()
            .flat_map(|name| config.handlers[*name].grants.iter().map(move |g| (*name, g.parts())))
            .collect();
        grants.sort_by_key(|(_, parts)| parts.len());
        let mut copied: Vec<Vec<&str>> = Vec::new();
        for (name, parts) in grants {
            if copied.iter().any(|c| parts.starts_with(c)) {
                continue;
            }
            let rel = parts.join("/");
            // copy_tree follows no link: a grant a handler swapped for a
            // symlink is refused instead of read from (or written onto).
            fsio::copy_tree(&layout.root().join(&rel), &dir.path().join(&rel))
                .with_context(|| format!("failed to copy grant {rel} of handler {name} for the dry run"))?;
            copied.push(parts);
        }
        Some(dir)
    } else {
        None
    };
    let root = scratch.as_ref().map_or(layout.root(), |d| d.path());
    let mut sandbox =
        Sandbox::new(root, config.validator(), config.needs_fuel()).context("failed to start the sandbox")?;
    if !request.dry_run {
        // The store's state, which another host may share.
        sandbox = sandbox.with_state(store.state()?);
    }
    let mut loaded: BTreeMap<String, Loaded> = BTreeMap::new();
    for (_, hs) in &plan {
        for name in hs {
            if loaded.contains_key(name) {
                continue;
            }
            let mut h = config.handlers[name].clone();
            h.component = h.component_path(layout.root());
            let l = match &candidate {
                Some((c, path)) if c == name => {
                    let bytes = std::fs::read(path)
                        .with_context(|| format!("failed to read candidate component {}", path.display()))?;
                    let l = sandbox
                        .load_bytes(name, &h, path, &bytes)
                        .with_context(|| format!("candidate {} does not load as handler {name}", path.display()))?;
                    report.candidate =
                        Some(Candidate { handler: name.clone(), component: path.clone(), sha256: l.sha256.clone() });
                    l
                }
                _ => sandbox.load(name, &h)?,
            };
            loaded.insert(name.clone(), l);
        }
    }

    let total = plan.len() as u64;
    let mut follow_ups = Vec::new();
    for (i, (event, hs)) in plan.iter().enumerate() {
        let mut changes = Vec::new();
        let mut er = EventReport {
            event_id: event.event_id.clone(),
            event_type: event.event_type.clone(),
            timestamp: event.timestamp.clone(),
            source: event.source.clone(),
            handlers: hs.clone(),
            replay_count: crate::records::ReplayMark::of(event).map_or(0, |m| m.count),
            runs: Vec::new(),
        };
        for name in hs {
            let l = &loaded[name];
            let inv = sandbox.invoke(l, event, 1);
            report.invocations += 1;
            *report.handlers.entry(name.clone()).or_insert(0) += 1;
            let emitted = inv.emitted.iter().map(|e| json!({"event_id": e.event_id, "event_type": e.event_type}));
            let mut run = Run {
                handler: name.clone(),
                component_sha256: l.sha256.clone(),
                candidate: candidate.as_ref().is_some_and(|(c, _)| c == name),
                ok: inv.result.is_ok(),
                summary: None,
                kind: None,
                message: None,
                emitted: Vec::new(),
                duration_ms: inv.duration.as_secs_f64() * 1000.0,
                stderr: inv.stderr.trim_end().to_string(),
            };
            match inv.result {
                Ok(summary) => {
                    report.succeeded += 1;
                    report.emitted += inv.emitted.len();
                    run.summary = Some(summary);
                    run.emitted = emitted.collect();
                    follow_ups.extend(inv.emitted);
                    changes.extend(inv.changes);
                }
                // As in dispatch: a failed invocation's emits are dropped.
                Err(fault) => {
                    report.failed += 1;
                    run.kind = Some(fault.kind);
                    run.message = Some(fault.message);
                }
            }
            er.runs.push(run);
        }
        // Their key-value writes, under the replay's generation (see
        // HANDLERS.md, "State"), one event at a time so the next one reads
        // them; never in a dry run.
        if !request.dry_run && !changes.is_empty() {
            let applied = sandbox
                .state()?
                .commit(&changes)
                .context("the handlers ran, but their state could not be committed")?;
            if applied.contains(&crate::kv::Applied::Conflict) {
                tracing::warn!(event_id = %event.event_id, "another process changed a key this replay read and wrote: its state change was not applied");
            }
        }
        report.events.push(er);
        progress("running handlers", i as u64 + 1, total);
    }
    report.selected = plan.len();
    if !request.dry_run {
        store
            .enqueue(&follow_ups)
            .context("the handlers ran, but their follow-up events could not be queued; none of them was")?;
        report.follow_ups_queued = follow_ups.len();
        // The state the handlers wrote, durable like a dispatcher's.
        fsio::sync_filesystem(&layout.tmp())?;
    }
    Ok(())
}
