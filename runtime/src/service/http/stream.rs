//! The dashboard's live side: the [`Feed`] the committer tells of every
//! settled event (see [`crate::dispatch::Observe`]), the Server-Sent Events
//! stream `GET /api/stream` built on it, and the rolling per-handler
//! window behind `GET /api/handlers`.
//!
//! A slow or gone browser never slows dispatch: publishing is a send on a
//! bounded tokio broadcast channel, which never waits for a reader; each
//! client reads it at its own pace through its own cursor, and a client
//! that falls [`CLIENT_BUFFER`] events behind is told so and dropped
//! (counted in `cortex_dashboard_stream_dropped_clients`). The publisher
//! sees how far each client has read ([`Cursor`]), so a client that stops
//! reading altogether (its connection stuck on a full socket, never polled
//! again) is counted as dropped when it falls behind, not only when it
//! wakes. What is waiting
//! for a client goes out in one write (up to [`MAX_WRITE`] bytes), so a busy
//! stream costs a syscall per batch, not per event. The window is a bounded
//! in-memory sample per handler, updated under one short lock per batch.
//!
//! The stream speaks Server-Sent Events: `settled` (and `dead-lettered`)
//! events whose `data` is a [`Settled`] record, `lagged` when the client is
//! dropped, and a comment every [`KEEP_ALIVE`] so proxies keep it open.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
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
/// What a client is sent in one write, at most (more waits for the next).
pub const MAX_WRITE: usize = 64 * 1024;
/// How often an idle stream sends a comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One settled event, serialized once for every client.
pub struct Item {
    /// Its place in the stream (1, 2, ...).
    seq: u64,
    pub settled: Settled,
    json: String,
}

/// How far one client has read, shared with the publisher.
#[derive(Debug, Default)]
struct Cursor {
    /// The `seq` of the last item it received.
    seen: AtomicU64,
    /// Dropped for falling behind (counted once, by whoever saw it first).
    dropped: AtomicBool,
}

/// Where settled events go: the live stream and the handler window.
pub struct Feed {
    tx: broadcast::Sender<Arc<Item>>,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    started_us: u64,
    /// The `seq` of the last item published.
    seq: AtomicU64,
    cursors: Mutex<Vec<Weak<Cursor>>>,
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
                let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
                Arc::new(Item { seq, settled, json })
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
        // Clients now past the broadcast's memory are dropped (and gone
        // ones forgotten).
        let last = self.seq.load(Ordering::Relaxed);
        self.cursors.locked().retain(|weak| {
            let Some(cursor) = weak.upgrade() else { return false };
            if last.saturating_sub(cursor.seen.load(Ordering::Relaxed)) > CLIENT_BUFFER as u64 {
                if !cursor.dropped.swap(true, Ordering::Relaxed) {
                    self.metrics.stream_dropped();
                }
                return false;
            }
            !cursor.dropped.load(Ordering::Relaxed)
        });
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
        Feed {
            tx,
            state: Mutex::default(),
            metrics,
            started_us: now_us(),
            seq: AtomicU64::new(0),
            cursors: Mutex::default(),
        }
    }

    /// A new client's cursor, with the recent events that pass `filter`
    /// to send first.
    fn client(&self, filter: Filter) -> Client {
        let cursor = Arc::new(Cursor::default());
        // It starts at the current place: a new client is not behind.
        let rx = {
            let mut cursors = self.cursors.locked();
            cursor.seen.store(self.seq.load(Ordering::Relaxed), Ordering::Relaxed);
            cursors.push(Arc::downgrade(&cursor));
            self.tx.subscribe()
        };
        let backlog = self.state.locked().recent.iter().filter(|i| filter.matches(&i.settled)).cloned().collect();
        self.metrics.stream_client(1);
        Client { rx, cursor, backlog, filter, metrics: self.metrics.clone(), done: false }
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
    pub fn sse(&self, filter: Filter) -> Response {
        let client = self.client(filter);
        let stream = futures_util::stream::unfold(client, |mut c| async move {
            let chunk = c.next_chunk().await?;
            Some((Ok::<_, Infallible>(chunk), c))
        });
        ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(stream))
            .into_response()
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
    cursor: Arc<Cursor>,
    backlog: VecDeque<Arc<Item>>,
    filter: Filter,
    metrics: Arc<Metrics>,
    done: bool,
}

impl Client {
    /// What to write next: the backlog, else the next events that pass the
    /// filter (waiting for the first, then taking what is already there),
    /// a keep-alive comment, or the notice that this client is dropped.
    /// `None` ends the stream.
    async fn next_chunk(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        if self.cursor.dropped.load(Ordering::Relaxed) {
            return Some(self.drop_lagging(None));
        }
        let mut out = String::new();
        while out.len() < MAX_WRITE
            && let Some(item) = self.backlog.pop_front()
        {
            frame(&mut out, &item);
        }
        if !out.is_empty() {
            return Some(out);
        }
        while out.is_empty() {
            match tokio::time::timeout(KEEP_ALIVE, self.rx.recv()).await {
                Err(_) => return Some(": keep-alive\n\n".into()),
                Ok(Ok(item)) => self.take(&mut out, &item),
                Ok(Err(broadcast::error::RecvError::Lagged(missed))) => return Some(self.drop_lagging(Some(missed))),
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            }
        }
        while out.len() < MAX_WRITE {
            match self.rx.try_recv() {
                Ok(item) => self.take(&mut out, &item),
                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                    out.push_str(&self.drop_lagging(Some(missed)));
                    break;
                }
                Err(_) => break,
            }
        }
        Some(out)
    }

    /// Notes `item` read, and frames it when it passes the filter.
    fn take(&self, out: &mut String, item: &Item) {
        self.cursor.seen.store(item.seq, Ordering::Relaxed);
        if self.filter.matches(&item.settled) {
            frame(out, item);
        }
    }

    /// Marks this client done (counted once) and says why, as a `lagged` event.
    fn drop_lagging(&mut self, missed: Option<u64>) -> String {
        self.done = true;
        if !self.cursor.dropped.swap(true, Ordering::Relaxed) {
            self.metrics.stream_dropped();
        }
        let missed = missed.map_or_else(|| "over".to_string(), |n| format!("{n} events, over"));
        format!(
            "event: lagged\ndata: this client fell behind ({missed} the {CLIENT_BUFFER} it may) and was dropped; reconnect to follow the stream again\n\n"
        )
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.metrics.stream_client(-1);
    }
}

/// Appends one settled event in the SSE format. The JSON is compact (no
/// newline can end its `data` line early); the id is a validated event id,
/// stripped of line breaks all the same.
fn frame(out: &mut String, item: &Item) {
    let kind = match item.settled.ending {
        Ending::DeadLettered => "dead-lettered",
        _ => "settled",
    };
    let id: String = item.settled.event_id.chars().filter(|c| *c != '\n' && *c != '\r').collect();
    // Writing into a String cannot fail.
    let _ = write!(out, "event: {kind}\nid: {id}\ndata: {}\n\n", item.json);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{HandlerResult, Observe};

    #[test]
    fn waiting_events_go_out_in_one_write_each_in_the_sse_format() {
        let metrics = Arc::new(Metrics::new());
        let feed = Feed::new(metrics.clone());
        let mut client = feed.client(Filter { event_type: Some("a.*".into()), ..Filter::default() });
        feed.settled(vec![
            settled("e1", "a.b", 1.0, true),
            settled("e2", "x.y", 1.0, true),
            settled("e3", "a.c", 1.0, false),
        ]);
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime builds");
        let chunk = rt.block_on(client.next_chunk()).expect("a chunk");
        let frames: Vec<&str> = chunk.split_terminator("\n\n").collect();
        assert_eq!(frames.len(), 2, "{chunk}");
        assert!(frames[0].starts_with("event: settled\nid: e1\ndata: {"), "{chunk}");
        let back: Settled = serde_json::from_str(frames[1].split_once("data: ").expect("data").1).expect("a Settled");
        assert_eq!((back.event_id.as_str(), back.ending), ("e3", Ending::Retried));
    }

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
        let mut client = feed.client(Filter::default());
        // The reader never reads while more than its buffer is published:
        // the publisher counts it dropped then, before it reads again.
        for i in 0..(CLIENT_BUFFER + 10) {
            feed.settled(vec![settled(&format!("e{i}"), "a.b", 1.0, true)]);
        }
        assert!(metrics.encode().contains("cortex_dashboard_stream_dropped_clients_total 1"));
        assert!(feed.cursors.locked().is_empty(), "the publisher forgot it");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime builds");
        let notice = rt.block_on(client.next_chunk()).expect("the lagged notice");
        assert!(notice.starts_with("event: lagged\ndata: this client fell behind"), "{notice}");
        assert!(rt.block_on(client.next_chunk()).is_none(), "then the stream ends");
        let text = metrics.encode();
        assert!(text.contains("cortex_dashboard_stream_dropped_clients_total 1"), "{text}");
        drop(client);
        assert!(metrics.encode().contains("cortex_dashboard_stream_clients 0"));
    }
}
