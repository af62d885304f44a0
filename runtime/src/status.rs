//! `cortex status`: queue depth, the oldest queued event and its age, events
//! by type in the logs, the dead-letter count, and the event loops the
//! dispatcher cut (dead letters past `dispatch.max_hops`).

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use crate::config::Config;
use crate::journal::{Journal, Skipped};
use crate::layout::Layout;
use crate::queue::now_us;
use crate::records::ServiceStatus;
use crate::store::Store;
use crate::text::Escaped;

#[derive(Debug, Serialize)]
pub struct Status {
    pub root: String,
    /// Where events are kept: `filesystem ROOT` or the Redis server and prefix.
    pub store: String,
    pub queue_depth: usize,
    pub queued_by_priority: BTreeMap<String, usize>,
    pub delayed_retries: usize,
    pub claimed: usize,
    pub dead_letters: usize,
    /// Event loops cut at `dispatch.max_hops`, one entry per link that
    /// closed one (handler, the type it handled, the type it emitted).
    pub loops: Vec<Loop>,
    pub oldest: Option<Oldest>,
    pub events_by_type: BTreeMap<String, u64>,
    pub logged_events: u64,
    /// Handlers the running `cortex serve` could not load, with why (their
    /// events wait in the queue).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub handlers_not_loading: BTreeMap<String, String>,
    /// Every live `cortex serve` on this root.
    pub services: Vec<Service>,
    /// What each schedule last fired (`run/schedules.json`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub schedules: BTreeMap<String, crate::schedule::Fired>,
    /// The webhook endpoints: enabled or disabled (410 Gone), deliveries
    /// waiting.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<crate::webhooks::EndpointStatus>,
    #[serde(skip)]
    pub skipped: Vec<Skipped>,
}

/// A running `cortex serve`, as `status` shows it (from its
/// [`ServiceStatus`] record).
#[derive(Debug, Serialize)]
pub struct Service {
    pub pid: u32,
    pub listen: Option<String>,
    pub updated_at: String,
}

impl From<&ServiceStatus> for Service {
    fn from(s: &ServiceStatus) -> Service {
        Service { pid: s.pid, listen: s.listen.clone(), updated_at: s.updated_at.clone() }
    }
}

#[derive(Debug, Serialize)]
pub struct Oldest {
    pub event_id: String,
    pub event_type: String,
    pub priority: String,
    pub age_seconds: f64,
}

/// An event loop the dispatcher cut: handler `handler`, handling a
/// `trigger_type` event, emitted an `event_type` event past the hop limit.
#[derive(Debug, Serialize, PartialEq)]
pub struct Loop {
    pub handler: String,
    pub trigger_type: String,
    pub event_type: String,
    /// Dead letters of this link.
    pub count: usize,
    /// The event id of the latest one, for `cortex dlq show`.
    pub last_event_id: String,
}

/// The loops among the dead letters, most frequent first.
fn loops(store: &dyn Store) -> Result<Vec<Loop>> {
    let mut out: Vec<Loop> = Vec::new();
    for letter in store.dead_letters()?.letters {
        let Some(link) = &letter.record.cut_loop else { continue };
        let (handler, trigger_type, event_type) =
            (link.handler.clone(), link.trigger_type.clone(), link.event_type.clone());
        let id = letter.event().map_or_else(|| letter.key.clone(), |e| e.event_id.clone());
        match out
            .iter_mut()
            .find(|l| (&l.handler, &l.trigger_type, &l.event_type) == (&handler, &trigger_type, &event_type))
        {
            Some(l) => {
                l.count += 1;
                l.last_event_id = id;
            }
            None => out.push(Loop { handler, trigger_type, event_type, count: 1, last_event_id: id }),
        }
    }
    out.sort_by_key(|b| std::cmp::Reverse(b.count));
    Ok(out)
}

/// Gathers the status of the root at `layout` and its store.
///
/// # Errors
/// When the store or the logs cannot be read.
pub fn gather(store: &dyn Store, layout: &Layout, config: &Config) -> Result<Status> {
    let depth = store.depth()?;
    let oldest = match &depth.oldest {
        Some(name) => {
            let event_type = store.peek(name).map(|e| e.event_type).unwrap_or_else(|_| "(being claimed)".into());
            Some(Oldest {
                event_id: name.event_id.clone(),
                event_type,
                priority: name.priority.to_string(),
                age_seconds: now_us().saturating_sub(name.enqueued_us) as f64 / 1e6,
            })
        }
        None => None,
    };
    let (events_by_type, skipped) = Journal::new(layout.clone()).counts_by_type()?;
    let running = crate::service::running(layout);
    let services: Vec<Service> = running.iter().map(Service::from).collect();
    let handlers_not_loading = running.iter().flat_map(|s| s.not_loading.clone()).collect();
    let loops = if depth.dead_letters > 0 { loops(store)? } else { Vec::new() };
    Ok(Status {
        root: layout.root().display().to_string(),
        store: store.describe(),
        queue_depth: depth.queued,
        queued_by_priority: store.by_priority()?.into_iter().map(|(p, n)| (p.to_string(), n)).collect(),
        delayed_retries: depth.delayed,
        claimed: depth.claimed,
        dead_letters: depth.dead_letters,
        loops,
        oldest,
        logged_events: events_by_type.values().sum(),
        events_by_type,
        handlers_not_loading,
        services,
        schedules: crate::schedule::fired(layout),
        webhooks: crate::webhooks::endpoint_status(layout, &crate::webhooks::Routes::of(config)),
        skipped,
    })
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "root:          {}", self.root)?;
        if !self.store.starts_with("filesystem") {
            writeln!(f, "store:         {}", self.store)?;
        }
        let by: Vec<String> = self.queued_by_priority.iter().map(|(p, n)| format!("{p} {n}")).collect();
        let by = if by.is_empty() { String::new() } else { format!(" ({})", by.join(", ")) };
        writeln!(f, "queue depth:   {}{by}", self.queue_depth)?;
        if self.delayed_retries > 0 {
            writeln!(f, "  of which retries not yet due: {}", self.delayed_retries)?;
        }
        writeln!(f, "claimed:       {}", self.claimed)?;
        writeln!(f, "dead letters:  {}", self.dead_letters)?;
        if !self.loops.is_empty() {
            let n: usize = self.loops.iter().map(|l| l.count).sum();
            writeln!(f, "event loops:   {n} cut at dispatch.max_hops (see `cortex dlq show ID`)")?;
            for l in &self.loops {
                // Dead-letter files are not validated: escape what they say.
                writeln!(
                    f,
                    "  {:>8}  {}: {} -> {}  (last {})",
                    l.count,
                    Escaped(&l.handler),
                    Escaped(&l.trigger_type),
                    Escaped(&l.event_type),
                    Escaped(&l.last_event_id)
                )?;
            }
        }
        match &self.oldest {
            Some(o) => writeln!(
                f,
                "oldest queued: {} {} ({}), waiting {:.1}s",
                o.event_id, o.event_type, o.priority, o.age_seconds
            )?,
            None => writeln!(f, "oldest queued: (queue empty)")?,
        }
        if self.services.is_empty() {
            writeln!(f, "services:      none running")?;
        }
        for svc in &self.services {
            let on = svc.listen.as_deref().map_or_else(|| "no listener".to_string(), |l| format!("http://{l}"));
            writeln!(f, "service:       pid {} on {on} (status at {})", svc.pid, svc.updated_at)?;
        }
        for (name, why) in &self.handlers_not_loading {
            writeln!(f, "NOT LOADING:   handler {name} (its events wait in the queue): {why}")?;
        }
        for (name, fired) in &self.schedules {
            let tick = chrono::DateTime::from_timestamp(fired.last_tick, 0).map(|t| t.to_rfc3339()).unwrap_or_default();
            let when =
                fired.last_fired_at.as_deref().map_or("not fired yet".to_string(), |at| format!("fired at {at}"));
            writeln!(f, "schedule:      {name} ({}): last tick {tick}, {when}", fired.spec)?;
        }
        for w in &self.webhooks {
            match &w.disabled {
                None => writeln!(f, "webhook:       {} -> {}: enabled, {} pending", w.name, w.url, w.pending)?,
                Some(d) => writeln!(
                    f,
                    "WEBHOOK DISABLED: {} -> {}: answered {} Gone at {}; {} pending; `cortex webhooks enable {}` (or a new url) sends again",
                    w.name,
                    w.url,
                    d.status,
                    Escaped(&d.at),
                    w.pending,
                    w.name
                )?,
            }
        }
        writeln!(f, "logged events: {}", self.logged_events)?;
        for (t, n) in &self.events_by_type {
            writeln!(f, "  {n:>8}  {t}")?;
        }
        Ok(())
    }
}
