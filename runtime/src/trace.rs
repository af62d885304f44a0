//! `cortex trace ID`: the causal tree of an event, or every tree of a
//! correlation, built from the `metadata.caused_by` link the host puts on
//! every follow-up ([`CausedBy`]).
//!
//! An event is told by its latest record, wherever it is now: a queue entry
//! (waiting, with the delivery record of earlier attempts), a claim
//! (running), a dead letter, or an archive line (`trace/read.rs` gathers
//! them in one pass). [`build`] links each event to the one that caused
//! it: an event id shows the tree of its root ancestor with the asked event
//! marked; a correlation id shows the tree of every root whose tree holds
//! an event of that correlation. Each node says what the handlers did on
//! its event ([`Step`]: ok, failed, refused, dead-lettered or waiting), how
//! long it took from the queue to its end, and how long after its parent it
//! was queued. `trace/render.rs` prints a trace as an indented tree; `--json`
//! serializes [`Trace`] as it is.

use std::collections::{HashMap, HashSet};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::config::Config;
use crate::records::{CausedBy, FaultKind};
use crate::store::Store;
use crate::text::Escaped;

mod read;
mod render;

pub use read::{Gathered, gather};

/// What the asked id named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Named {
    /// An event: the tree of its root ancestor.
    Event,
    /// A correlation id: every tree that holds one of its events.
    Correlation,
}

/// Events by id. Boxed: the table of a large archive holds a pointer per
/// slot rather than a whole node.
pub type Events = HashMap<String, Box<Node>>;

/// The causal trees an id names.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    /// The id asked for.
    pub id: String,
    pub named: Named,
    /// Events in all trees.
    pub events: usize,
    /// Oldest root first.
    pub trees: Vec<Node>,
    /// Archive lines, files and dead letters that could not be read, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// Where an event is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// In the queue: not yet delivered, or waiting for its next attempt.
    Waiting,
    /// Claimed by a dispatcher now.
    Running,
    /// Archived: every handler it routes to succeeded.
    Handled,
    /// Archived: no handler routes to it.
    Unhandled,
    /// Archived in a compacted month, which keeps the event but not how
    /// it was handled.
    Archived,
    /// In the dead-letter queue.
    DeadLettered,
}

/// How one handler's work on an event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Ok,
    /// Failed on its last attempt; the event waits to be tried again.
    Failed,
    /// Said a retry cannot help: its event was dead-lettered at once.
    Refused,
    /// Failed for good: its event was dead-lettered.
    DeadLettered,
    /// Not run yet on this event.
    Waiting,
}

/// One handler on one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub handler: String,
    pub outcome: Outcome,
    /// The run's wall time; unknown for a run on an earlier delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// When an archived run started (RFC 3339, µs), when its record says:
    /// with the duration, whether two runs overlapped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultKind>,
    /// Its summary, or its failure's message (the handler's text).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// One event in a tree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub event_id: String,
    pub event_type: String,
    pub source: String,
    pub timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The event and handler that emitted it; none for a producer's event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caused_by: Option<CausedBy>,
    pub status: Status,
    /// Deliveries so far (0 when unknown).
    pub attempts: u32,
    pub handlers: Vec<Step>,
    /// From its queueing to its archive record or dead letter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// How long after its parent it was queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_parent_ms: Option<f64>,
    /// Why it was dead-lettered.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The asked event (or an event of the asked correlation).
    pub asked: bool,
    /// `caused_by` names an event found nowhere (pruned or purged): this
    /// node is a root only as far as the root can tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_parent: Option<String>,
    /// When it entered the queue (µs since the epoch), from its entry key.
    #[serde(skip)]
    pub enqueued_us: Option<u64>,
    /// The events its handlers emitted, in the order they were queued.
    pub children: Vec<Node>,
}

impl Node {
    /// The id of the event that caused this one.
    fn parent(&self) -> Option<&str> {
        self.caused_by.as_ref().map(|c| c.event_id.as_str())
    }

    /// Sorts siblings and trees: queued first, then by timestamp and id.
    fn order_key(&self) -> (u64, &str, &str) {
        (self.enqueued_us.unwrap_or(u64::MAX), &self.timestamp, &self.event_id)
    }

    /// How long after `parent` this event was queued: from the entry keys
    /// when both have one (the host's clock), else from the timestamps.
    fn after(&self, parent: &Node) -> Option<f64> {
        if let (Some(c), Some(p)) = (self.enqueued_us, parent.enqueued_us) {
            return Some((c as f64 - p as f64) / 1000.0);
        }
        let (c, p) = (
            chrono::DateTime::parse_from_rfc3339(&self.timestamp).ok()?,
            chrono::DateTime::parse_from_rfc3339(&parent.timestamp).ok()?,
        );
        Some((c - p).num_microseconds()? as f64 / 1000.0)
    }

    /// This node and every descendant.
    pub fn count(&self) -> usize {
        1 + self.children.iter().map(Node::count).sum::<usize>()
    }
}

/// The causal trees `id` names, from every event the root holds.
///
/// # Errors
/// When the root cannot be read, or `id` is neither an event id nor a
/// correlation id there.
pub fn trace(store: &dyn Store, config: &Config, id: &str) -> Result<Trace> {
    let gathered = gather(store, config)?;
    let Some((named, trees)) = build(gathered.events, id) else {
        bail!(
            "no event or correlation id {} in the queue, the claims, the dead letters or the archive of {}",
            Escaped(id),
            store.describe()
        );
    };
    let events = trees.iter().map(Node::count).sum();
    Ok(Trace { id: id.to_string(), named, events, trees, skipped: gathered.skipped })
}

/// The trees `id` names among `events` (each event once, by id), or `None`
/// when it names none. An event id is looked up first: a correlation id
/// that is also an event's id (the host's fallback for follow-ups of an
/// event without one) shows that event's tree.
pub fn build(mut events: Events, id: &str) -> Option<(Named, Vec<Node>)> {
    let (named, asked): (Named, Vec<String>) = if events.contains_key(id) {
        (Named::Event, vec![id.to_string()])
    } else {
        let ids: Vec<String> =
            events.values().filter(|n| n.correlation_id.as_deref() == Some(id)).map(|n| n.event_id.clone()).collect();
        if ids.is_empty() {
            return None;
        }
        (Named::Correlation, ids)
    };
    let mut roots: Vec<String> = Vec::new();
    for a in &asked {
        let root = root_of(&events, a);
        if !roots.contains(&root) {
            roots.push(root);
        }
        if let Some(n) = events.get_mut(a) {
            n.asked = true;
        }
    }
    let mut children: HashMap<String, Vec<String>> = HashMap::new();
    for n in events.values() {
        if let Some(p) = n.parent().filter(|p| events.contains_key(*p)) {
            children.entry(p.to_string()).or_default().push(n.event_id.clone());
        }
    }
    for kids in children.values_mut() {
        kids.sort_by(|a, b| events[a].order_key().cmp(&events[b].order_key()));
    }
    roots.sort_by(|a, b| events[a].order_key().cmp(&events[b].order_key()));
    let mut trees = Vec::new();
    for root in roots {
        let missing =
            events.get(&root).and_then(|n| n.parent()).filter(|p| !events.contains_key(*p)).map(str::to_string);
        if let Some(mut node) = take(&mut events, &children, &root) {
            node.missing_parent = missing;
            trees.push(node);
        }
    }
    Some((named, trees))
}

/// The oldest ancestor of `id` that the root holds (a chain that loops,
/// which only a forged file can make, stops where it would repeat).
fn root_of(events: &Events, id: &str) -> String {
    let mut seen = HashSet::new();
    let mut at = id;
    while let Some(parent) = events.get(at).and_then(|n| n.parent()).filter(|p| events.contains_key(*p)) {
        if !seen.insert(at) {
            break;
        }
        at = parent;
    }
    at.to_string()
}

/// Moves `id` and its descendants out of `events` into a tree (an event
/// already placed is never placed again, so a loop cannot recurse).
fn take(events: &mut Events, children: &HashMap<String, Vec<String>>, id: &str) -> Option<Node> {
    let mut node = *events.remove(id)?;
    for kid in children.get(id).into_iter().flatten() {
        if let Some(mut child) = take(events, children, kid) {
            child.since_parent_ms = child.after(&node);
            node.children.push(child);
        }
    }
    Some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event queued at `at` µs, caused by `parent` if given.
    fn node(id: &str, parent: Option<&str>, correlation: Option<&str>, at: u64) -> Node {
        Node {
            event_id: id.into(),
            event_type: "task.created".into(),
            source: "s".into(),
            timestamp: "2025-12-01T12:00:00Z".into(),
            correlation_id: correlation.map(str::to_string),
            caused_by: parent.map(|p| CausedBy {
                event_id: p.into(),
                handler: "h".into(),
                hops: 1,
                ..CausedBy::default()
            }),
            status: Status::Handled,
            attempts: 1,
            handlers: Vec::new(),
            duration_ms: None,
            since_parent_ms: None,
            reason: String::new(),
            asked: false,
            missing_parent: None,
            enqueued_us: Some(at),
            children: Vec::new(),
        }
    }

    fn index(nodes: Vec<Node>) -> Events {
        nodes.into_iter().map(|n| (n.event_id.clone(), Box::new(n))).collect()
    }

    /// The tree as `id(child, child)` text, asked events starred.
    fn shape(n: &Node) -> String {
        let star = if n.asked { "*" } else { "" };
        if n.children.is_empty() {
            return format!("{}{star}", n.event_id);
        }
        let kids: Vec<String> = n.children.iter().map(shape).collect();
        format!("{}{star}({})", n.event_id, kids.join(" "))
    }

    fn sample() -> Events {
        index(vec![
            node("c2", Some("b"), Some("k"), 40),
            node("a", None, Some("k"), 10),
            node("b", Some("a"), Some("k"), 20),
            node("c1", Some("b"), Some("other"), 30),
            node("d", Some("a"), None, 25),
            node("z", None, Some("k"), 5),
            node("lone", None, None, 1),
        ])
    }

    #[test]
    fn an_event_shows_its_root_ancestors_tree_with_itself_marked() {
        let (named, trees) = build(sample(), "c1").unwrap();
        assert_eq!(named, Named::Event);
        assert_eq!(trees.iter().map(shape).collect::<Vec<_>>(), ["a(b(c1* c2) d)"]);
        let b = &trees[0].children[0];
        assert_eq!(b.since_parent_ms, Some(0.01), "queued 10 µs after its parent");
        assert_eq!(b.children[1].since_parent_ms, Some(0.02));
        assert_eq!(trees[0].since_parent_ms, None);
        assert_eq!(trees[0].count(), 5);
    }

    #[test]
    fn a_correlation_shows_every_tree_that_holds_one_of_its_events() {
        let (named, trees) = build(sample(), "k").unwrap();
        assert_eq!(named, Named::Correlation);
        // Oldest root first; c1 (another correlation) is in a's tree all the same.
        assert_eq!(trees.iter().map(shape).collect::<Vec<_>>(), ["z*", "a*(b*(c1 c2*) d)"]);
        assert!(build(sample(), "nobody").is_none());
    }

    #[test]
    fn a_missing_parent_makes_a_root_that_says_so_and_loops_end() {
        let events = index(vec![node("orphan", Some("pruned"), None, 2), node("kid", Some("orphan"), None, 3)]);
        let (_, trees) = build(events, "kid").unwrap();
        assert_eq!(shape(&trees[0]), "orphan(kid*)");
        assert_eq!(trees[0].missing_parent.as_deref(), Some("pruned"));

        // A loop only a forged file can make: each event still shows once.
        let events = index(vec![node("x", Some("y"), None, 1), node("y", Some("x"), None, 2)]);
        let (_, trees) = build(events, "x").unwrap();
        assert_eq!(trees.iter().map(Node::count).sum::<usize>(), 2);
        assert_eq!(trees[0].missing_parent, None, "its parent is in the tree");
    }

    #[test]
    fn without_entry_keys_the_time_since_the_parent_comes_from_timestamps() {
        let mut parent = node("p", None, None, 0);
        let mut kid = node("k", Some("p"), None, 0);
        (parent.enqueued_us, kid.enqueued_us) = (None, None);
        kid.timestamp = "2025-12-01T12:00:01.250Z".into();
        let (_, trees) = build(index(vec![parent, kid]), "p").unwrap();
        assert_eq!(trees[0].children[0].since_parent_ms, Some(1250.0));
    }

    #[test]
    fn json_names_statuses_and_outcomes_in_kebab_case() {
        let mut n = node("a", None, None, 1);
        n.status = Status::DeadLettered;
        n.handlers.push(Step {
            handler: "h".into(),
            outcome: Outcome::DeadLettered,
            duration_ms: Some(1.5),
            started: None,
            fault: Some(FaultKind::Trap),
            message: "boom".into(),
        });
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["status"], "dead-lettered");
        assert_eq!(v["handlers"][0]["outcome"], "dead-lettered");
        assert_eq!(v["handlers"][0]["fault"], "trap");
        assert!(v.get("enqueued_us").is_none() && v.get("correlation_id").is_none(), "{v}");
    }
}
