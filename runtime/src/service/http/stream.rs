//! The dashboard's live side: the [`Feed`] the committer tells of every
//! settled event (see [`crate::dispatch::Observe`]), the Server-Sent Events
//! stream `GET /api/stream` built on it, and the rolling per-handler
//! window behind `GET /api/handlers`.
//!
//! A slow or gone browser never slows dispatch: publishing is a send on a
//! bounded tokio broadcast channel, which never waits for a reader; each
//! client reads it at its own pace through its own cursor, and a client
//! that falls [`CLIENT_BUFFER`] events behind is told so and dropped
//! (counted in `cortex_dashboard_stream_dropped_clients`). The window is a
//! bounded in-memory sample per handler, updated under one short lock per
//! batch.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::dispatch::{Ending, Settled};
use crate::lock::Recover;
use crate::metrics::Metrics;
use crate::queue::now_us;

/// Events a client may fall behind before it is dropped.
pub const CLIENT_BUFFER: usize = 1024;
/// Recent events a new client is sent first, so the page is not empty.
const RECENT: usize = 100;
/// How far back the per-handler window reaches.
const WINDOW_US: u64 = 5 * 60 * 1_000_000;
/// Samples kept per handler, at most (the window's memory bound).
const MAX_SAMPLES: usize = 100_000;

/// One settled event, serialized once for every client.
pub struct Item {
    pub settled: Settled,
    json: String,
}

/// Where settled events go: the live stream and the handler window.
pub struct Feed {
    tx: broadcast::Sender<Arc<Item>>,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    started_us: u64,
}

#[derive(Default)]
struct State {
    recent: VecDeque<Arc<Item>>,
    samples: BTreeMap<String, VecDeque<Sample>>,
}

/// One handler run in the window.
#[derive(Clone, Copy)]
struct Sample {
    at_us: u64,
    ms: f64,
    ok: bool,
}

impl crate::dispatch::Observe for Feed {
    fn settled(&self, batch: Vec<Settled>) {
        let items: Vec<Arc<Item>> = batch
            .into_iter()
            .map(|settled| {
                // Serializing a plain record of strings and numbers cannot fail.
                let json = serde_json::to_string(&settled).unwrap_or_default();
                Arc::new(Item { settled, json })
            })
            .collect();
        {
            let mut state = self.state.locked();
            for item in &items {
                state.record(&item.settled);
                if state.recent.len() == RECENT {
                    state.recent.pop_front();
                }
                state.recent.push_back(item.clone());
            }
        }
        for item in items {
            // No receiver is not an error: nobody is watching.
            let _ = self.tx.send(item);
        }
    }
}

impl State {
    fn record(&mut self, s: &Settled) {
        for h in &s.handlers {
            let samples = self.samples.entry(h.handler.clone()).or_default();
            while samples.len() >= MAX_SAMPLES
                || samples.front().is_some_and(|f| s.settled_us.saturating_sub(f.at_us) > WINDOW_US)
            {
                samples.pop_front();
            }
            samples.push_back(Sample { at_us: s.settled_us, ms: h.duration_ms, ok: h.ok() });
        }
    }
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

impl Feed {
    pub fn new(metrics: Arc<Metrics>) -> Feed {
        let (tx, _) = broadcast::channel(CLIENT_BUFFER);
        Feed { tx, state: Mutex::default(), metrics, started_us: now_us() }
    }

    /// Each handler's figures over the last five minutes.
    pub fn windows(&self) -> BTreeMap<String, Window> {
        let now = now_us();
        let covered = now.saturating_sub(self.started_us).clamp(1, WINDOW_US) as f64 / 1e6;
        let state = self.state.locked();
        state
            .samples
            .iter()
            .map(|(name, samples)| {
                let live: Vec<&Sample> = samples.iter().filter(|s| now.saturating_sub(s.at_us) <= WINDOW_US).collect();
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

    /// The live stream for one client: first the recent events that pass
    /// `filter`, then each new one, until the client goes or falls behind.
    pub fn sse(&self, filter: Filter) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>> + use<>> {
        let rx = self.tx.subscribe();
        let backlog: VecDeque<Arc<Item>> =
            self.state.locked().recent.iter().filter(|i| filter.matches(&i.settled)).cloned().collect();
        let client = Client { rx, backlog, filter, metrics: self.metrics.clone(), done: false };
        client.metrics.stream_client(1);
        let stream = futures_util::stream::unfold(client, |mut c| async move {
            let event = c.next().await?;
            Some((Ok(event), c))
        });
        Sse::new(stream).keep_alive(KeepAlive::default())
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

/// Which events a client wants (query parameters of `/api/stream`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// `type`: an event type glob (`worker.*`, see [`crate::pattern`]).
    pub event_type: Option<String>,
    /// `source`: the source, exact or a glob.
    pub source: Option<String>,
    /// `correlation_id`: exact.
    pub correlation_id: Option<String>,
}

impl Filter {
    /// The filter a query string asks for; unknown and empty parameters
    /// are ignored (`access_token` among them).
    pub fn from_query(query: Option<&str>) -> Filter {
        let mut f = Filter::default();
        for pair in query.unwrap_or("").split('&') {
            let Some((k, v)) = pair.split_once('=') else { continue };
            let v = super::auth::percent_decode(v);
            if v.is_empty() {
                continue;
            }
            match k {
                "type" => f.event_type = Some(v),
                "source" => f.source = Some(v),
                "correlation_id" => f.correlation_id = Some(v),
                _ => {}
            }
        }
        f
    }

    pub fn matches(&self, s: &Settled) -> bool {
        self.event_type.as_deref().is_none_or(|p| crate::pattern::glob_match(p, &s.event_type))
            && self.source.as_deref().is_none_or(|p| crate::pattern::glob_match(p, &s.source))
            && self.correlation_id.as_deref().is_none_or(|c| s.correlation_id.as_deref() == Some(c))
    }
}

/// One connected client's cursor.
struct Client {
    rx: broadcast::Receiver<Arc<Item>>,
    backlog: VecDeque<Arc<Item>>,
    filter: Filter,
    metrics: Arc<Metrics>,
    done: bool,
}

impl Client {
    async fn next(&mut self) -> Option<SseEvent> {
        if self.done {
            return None;
        }
        if let Some(item) = self.backlog.pop_front() {
            return Some(settled_event(&item));
        }
        loop {
            match self.rx.recv().await {
                Ok(item) if self.filter.matches(&item.settled) => return Some(settled_event(&item)),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    self.done = true;
                    self.metrics.stream_dropped();
                    let why = format!(
                        "this client fell {missed} events behind (more than {CLIENT_BUFFER}) and was dropped; reconnect to follow the stream again"
                    );
                    return Some(SseEvent::default().event("lagged").data(why));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.metrics.stream_client(-1);
    }
}

fn settled_event(item: &Item) -> SseEvent {
    let kind = match item.settled.ending {
        Ending::DeadLettered => "dead-lettered",
        _ => "settled",
    };
    SseEvent::default().event(kind).id(item.settled.event_id.clone()).data(item.json.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{HandlerResult, Observe};

    fn settled(id: &str, event_type: &str, ms: f64, ok: bool) -> Settled {
        Settled {
            event_id: id.into(),
            event_type: event_type.into(),
            source: "test".into(),
            correlation_id: Some("c-1".into()),
            priority: "medium".into(),
            attempt: 1,
            ending: if ok { Ending::Handled } else { Ending::Retried },
            handlers: vec![HandlerResult {
                handler: "h".into(),
                fault: (!ok).then_some(crate::records::FaultKind::Error),
                duration_ms: ms,
            }],
            latency_ms: 1.0,
            settled_us: now_us(),
        }
    }

    #[test]
    fn the_window_counts_rate_percentiles_and_failures() {
        let feed = Feed::new(Arc::new(Metrics::new()));
        let batch: Vec<Settled> = (1..=100).map(|i| settled(&format!("e{i}"), "a.b", i as f64, i % 10 != 0)).collect();
        feed.settled(batch);
        let w = &feed.windows()["h"];
        assert_eq!((w.invocations, w.failures), (100, 10));
        assert_eq!((w.p50_ms, w.p99_ms), (Some(51.0), Some(99.0)));
        assert!(w.rate_per_sec > 0.0);
    }

    #[test]
    fn filters_take_a_type_glob_a_source_and_a_correlation_id() {
        let f = Filter::from_query(Some("type=worker.%2A&source=&correlation_id=c-1&access_token=x"));
        assert_eq!(f.event_type.as_deref(), Some("worker.*"));
        assert_eq!(f.source, None);
        assert!(f.matches(&settled("e1", "worker.heartbeat", 1.0, true)));
        assert!(!f.matches(&settled("e2", "task.created", 1.0, true)));
        let other = Filter { correlation_id: Some("c-2".into()), ..Filter::default() };
        assert!(!other.matches(&settled("e3", "worker.heartbeat", 1.0, true)));
    }

    #[test]
    fn publishing_never_waits_for_a_reader_and_a_lagging_one_is_told_and_dropped() {
        let metrics = Arc::new(Metrics::new());
        let feed = Feed::new(metrics.clone());
        let rx = feed.tx.subscribe();
        let mut client =
            Client { rx, backlog: VecDeque::new(), filter: Filter::default(), metrics: metrics.clone(), done: false };
        metrics.stream_client(1);
        // The reader never reads while more than its buffer is published.
        for i in 0..(CLIENT_BUFFER + 10) {
            feed.settled(vec![settled(&format!("e{i}"), "a.b", 1.0, true)]);
        }
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime builds");
        assert!(rt.block_on(client.next()).is_some(), "the lagged notice");
        assert!(rt.block_on(client.next()).is_none(), "then the stream ends");
        let text = metrics.encode();
        assert!(text.contains("cortex_dashboard_stream_dropped_clients_total 1"), "{text}");
        drop(client);
        assert!(metrics.encode().contains("cortex_dashboard_stream_clients 0"));
    }
}
