//! The dashboard's live side: the [`Feed`] the committer tells of every
//! settled event (see [`crate::dispatch::Observe`]), the Server-Sent Events
//! stream `GET /api/stream` built on it, and the rolling per-handler
//! window behind `GET /api/handlers` ([`window`]).
//!
//! A slow or gone browser never slows dispatch. The committer's part is a
//! bounded, non-blocking hand-off: it appends its batch to an inbox under
//! one short lock and returns. A publisher thread of the feed's own takes
//! the inbox at most once per [`FLUSH`], serializes each event's SSE frame
//! once into one shared buffer (a [`Flush`]), records the handler window,
//! and wakes the clients once. Each client ([`client`]) then sends what was
//! published after its cursor in one write, at its own turn in the flush
//! interval ([`client::turn`]), so 100 clients cost 100 writes per flush
//! interval whatever the event rate, spread over it rather than at once,
//! and no serializing each.
//!
//! Buffers are bounded: the feed keeps the flushes that hold the last
//! [`CLIENT_BUFFER`] events; a client that falls further behind is told so
//! and dropped (counted in `cortex_dashboard_stream_dropped_clients`). The
//! publisher sees how far each client has read ([`Cursor`]), so one that
//! stops reading altogether (its connection stuck on a full socket, never
//! polled again) is counted as dropped when it falls behind, not only when
//! it wakes. Should the publisher itself fall [`INBOX`] events behind the
//! committer, what does not fit is not kept and every client is dropped,
//! rather than shown a stream with holes.
//!
//! The stream speaks Server-Sent Events: `settled` (and `dead-lettered`)
//! events whose `data` is a [`Settled`] record, `lagged` when the client is
//! dropped, and a comment every [`KEEP_ALIVE`] so proxies keep it open.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::watch;

use crate::dispatch::{Ending, Settled};
use crate::lock::Recover;
use crate::metrics::Metrics;
use crate::queue::now_us;

mod client;
mod window;
use client::Client;
pub use client::Filter;
pub use window::Window;

/// Events a client may fall behind before it is dropped.
pub const CLIENT_BUFFER: usize = 1024;
/// Settled events the committer may hand on before the publisher takes
/// them, at most.
pub const INBOX: usize = 16 * CLIENT_BUFFER;
/// The publisher publishes at most once per this: what settles meanwhile
/// goes out together, in one write per client.
pub const FLUSH: Duration = Duration::from_millis(50);
/// Recent events a new client is sent first, so the page is not empty.
const RECENT: usize = 100;
/// What a filtered client is sent in one write, about (more waits for its
/// next write).
pub const MAX_WRITE: usize = 64 * 1024;
/// How often an idle stream sends a comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Where settled events go: the live stream and the handler window. Its
/// publisher thread stops when it is dropped.
pub struct Feed {
    shared: Arc<Shared>,
}

/// What the committer, the publisher and the clients share.
struct Shared {
    inbox: Mutex<Inbox>,
    arrived: Condvar,
    log: Mutex<Log>,
    /// Told of each publication (the last event's place) by the publisher,
    /// whose end closes it; each client watches a clone.
    published: watch::Receiver<u64>,
    window: Mutex<window::Samples>,
    metrics: Arc<Metrics>,
    started_us: u64,
    /// Clients connected so far: places each new one's turn in a flush
    /// interval (see [`client::turn`]).
    joined: AtomicU64,
}

/// What the committer handed on and the publisher has not yet taken.
#[derive(Default)]
struct Inbox {
    settled: Vec<Settled>,
    /// Events that did not fit.
    lost: u64,
    closed: bool,
}

/// What was published, as far back as clients may need it.
#[derive(Default)]
struct Log {
    /// Oldest first: those holding the last [`CLIENT_BUFFER`] events.
    flushes: VecDeque<Arc<Flush>>,
    /// The last [`RECENT`] events (a flush and its place in it).
    recent: VecDeque<(Arc<Flush>, usize)>,
    /// The place of the last event published (1, 2, ...; 0 before any).
    last: u64,
    cursors: Vec<Weak<Cursor>>,
}

/// Events published together, each framed once, all in one buffer.
struct Flush {
    /// The place of its first event in the stream.
    first: u64,
    settled: Vec<Settled>,
    /// Where each event's frame ends in `all`.
    ends: Vec<usize>,
    /// The events' SSE frames, one after the other.
    all: Bytes,
}

impl Flush {
    /// The place of its last event.
    fn last(&self) -> u64 {
        self.first + self.settled.len() as u64 - 1
    }

    /// The SSE frame of its `i`th event.
    fn frame(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.all[start..self.ends[i]]
    }
}

/// How far one client has read, shared with the publisher.
#[derive(Debug, Default)]
struct Cursor {
    /// The place of the last event it took.
    seen: AtomicU64,
    /// Dropped for falling behind (counted once, by whoever saw it first).
    dropped: AtomicBool,
}

impl crate::dispatch::Observe for Feed {
    fn settled(&self, batch: Vec<Settled>) {
        let mut inbox = self.shared.inbox.locked();
        let room = INBOX.saturating_sub(inbox.settled.len());
        if batch.len() > room {
            inbox.lost += (batch.len() - room) as u64;
        }
        inbox.settled.extend(batch.into_iter().take(room));
        drop(inbox);
        self.shared.arrived.notify_one();
    }
}

impl Feed {
    /// A feed and its publisher thread.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn new(metrics: Arc<Metrics>) -> anyhow::Result<Feed> {
        let (tell, published) = watch::channel(0);
        let shared = Arc::new(Shared {
            inbox: Mutex::default(),
            arrived: Condvar::new(),
            log: Mutex::default(),
            published,
            window: Mutex::default(),
            metrics,
            started_us: now_us(),
            joined: AtomicU64::new(0),
        });
        let publisher = shared.clone();
        std::thread::Builder::new()
            .name("cortex-stream".into())
            .spawn(move || publisher.run(&tell))
            .context("failed to start the dashboard stream's publisher thread")?;
        Ok(Feed { shared })
    }

    /// A new client's cursor, with the recent events that pass `filter`
    /// to send first.
    fn client(&self, filter: Filter) -> Client {
        let cursor = Arc::new(Cursor::default());
        let shared = &self.shared;
        // Watching before the cursor is placed: any publication after the
        // place wakes it.
        let published = shared.published.clone();
        let backlog = {
            let mut log = shared.log.locked();
            // It starts at the current place: a new client is not behind.
            cursor.seen.store(log.last, Ordering::Relaxed);
            log.cursors.push(Arc::downgrade(&cursor));
            let passes = log.recent.iter().filter(|(f, i)| filter.matches(&f.settled[*i]));
            passes.map(|(f, i)| f.all.slice_ref(f.frame(*i))).collect()
        };
        shared.metrics.stream_client(1);
        let turn = client::turn(shared.joined.fetch_add(1, Ordering::Relaxed));
        Client { shared: shared.clone(), cursor, backlog, filter, published, turn, done: false }
    }

    /// Each handler's figures over the last five minutes.
    pub fn windows(&self) -> BTreeMap<String, Window> {
        self.shared.window.locked().windows(now_us(), self.shared.started_us)
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

impl Drop for Feed {
    fn drop(&mut self) {
        self.shared.inbox.locked().closed = true;
        self.shared.arrived.notify_one();
    }
}

impl Shared {
    /// The publisher thread: waits for settled events, lets more arrive
    /// until a [`FLUSH`] has passed since the last publication, publishes;
    /// until the feed is dropped. Its end (dropping `tell`) ends the
    /// clients' streams.
    fn run(&self, tell: &watch::Sender<u64>) {
        let mut last: Option<Instant> = None;
        loop {
            {
                let mut inbox = self.inbox.locked();
                while inbox.settled.is_empty() && inbox.lost == 0 && !inbox.closed {
                    inbox = crate::lock::recover(self.arrived.wait(inbox));
                }
                if inbox.closed {
                    return;
                }
            }
            if let Some(wait) = last.and_then(|at| FLUSH.checked_sub(at.elapsed())) {
                std::thread::sleep(wait);
            }
            last = Some(Instant::now());
            if let Some(place) = self.publish() {
                tell.send_replace(place);
            }
        }
    }

    /// Publishes what is in the inbox: frames each event once, records the
    /// window, and drops the clients too far behind; returns the place of
    /// the last event published, for the clients to be told, if there was
    /// anything to tell.
    fn publish(&self) -> Option<u64> {
        let (settled, lost) = {
            let mut inbox = self.inbox.locked();
            (std::mem::take(&mut inbox.settled), std::mem::take(&mut inbox.lost))
        };
        if settled.is_empty() && lost == 0 {
            return None;
        }
        {
            let mut window = self.window.locked();
            for s in &settled {
                window.record(s);
            }
        }
        let mut all = Vec::with_capacity(settled.len() * 400);
        let ends = settled
            .iter()
            .map(|s| {
                frame(&mut all, s);
                all.len()
            })
            .collect();
        let mut log = self.log.locked();
        if !settled.is_empty() {
            let flush = Arc::new(Flush { first: log.last + 1, settled, ends, all: Bytes::from(all) });
            log.push(flush);
        }
        // Clients now past what is kept are dropped (all of them when
        // events were lost), and gone ones forgotten.
        let last = log.last;
        log.cursors.retain(|weak| {
            let Some(cursor) = weak.upgrade() else { return false };
            if lost > 0 || last.saturating_sub(cursor.seen.load(Ordering::Relaxed)) > CLIENT_BUFFER as u64 {
                if !cursor.dropped.swap(true, Ordering::Relaxed) {
                    self.metrics.stream_dropped();
                }
                return false;
            }
            !cursor.dropped.load(Ordering::Relaxed)
        });
        drop(log);
        if lost > 0 {
            tracing::warn!(
                lost,
                "the dashboard stream's publisher fell {INBOX} events behind; events not streamed, clients dropped"
            );
        }
        Some(last)
    }
}

impl Log {
    /// Appends `flush`, forgetting the flushes and recent events no client
    /// may still need.
    fn push(&mut self, flush: Arc<Flush>) {
        self.last = flush.last();
        for i in 0..flush.settled.len() {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back((flush.clone(), i));
        }
        self.flushes.push_back(flush);
        let keep_after = self.last.saturating_sub(CLIENT_BUFFER as u64);
        while self.flushes.front().is_some_and(|f| f.last() <= keep_after) {
            self.flushes.pop_front();
        }
    }
}

/// Appends one settled event in the SSE format. The JSON is compact (no
/// newline can end its `data` line early); the id is a validated event id,
/// stripped of line breaks all the same.
fn frame(out: &mut Vec<u8>, s: &Settled) {
    let kind = match s.ending {
        Ending::DeadLettered => "dead-lettered",
        _ => "settled",
    };
    let id: String = s.event_id.chars().filter(|c| *c != '\n' && *c != '\r').collect();
    // Writing into a Vec cannot fail, nor can serializing a plain record
    // of strings and numbers.
    let _ = write!(out, "event: {kind}\nid: {id}\ndata: ");
    let _ = serde_json::to_writer(&mut *out, s);
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::{HandlerResult, Observe};

    fn settled(id: &str, event_type: &str) -> Settled {
        Settled {
            event_id: id.into(),
            event_type: event_type.into(),
            source: "test".into(),
            correlation_id: Some("c-1".into()),
            priority: "medium".into(),
            attempt: 1,
            ending: if event_type.ends_with("failed") { Ending::DeadLettered } else { Ending::Handled },
            handlers: vec![HandlerResult { handler: "h".into(), fault: None, duration_ms: 1.0 }],
            latency_ms: 1.0,
            settled_us: now_us(),
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a current-thread runtime builds")
    }

    /// Hands `batch` to the feed and waits until the `upto`th event is published.
    fn publish(rt: &tokio::runtime::Runtime, feed: &Feed, batch: Vec<Settled>, upto: u64) {
        let mut published = feed.shared.published.clone();
        feed.settled(batch);
        rt.block_on(published.wait_for(|p| *p >= upto)).expect("the publisher runs");
    }

    fn frames(chunk: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(chunk).split_terminator("\n\n").map(str::to_string).collect()
    }

    #[test]
    fn a_filtered_client_gets_the_events_that_pass_in_one_write_in_the_sse_format() {
        let (rt, feed) = (runtime(), Feed::new(Arc::new(Metrics::new())).expect("a feed"));
        let mut client = feed.client(Filter { event_type: Some("a.*".into()), ..Filter::default() });
        publish(&rt, &feed, vec![settled("e1", "a.b"), settled("e2", "x.y")], 2);
        publish(&rt, &feed, vec![settled("e3", "a.failed")], 3);
        let chunk = rt.block_on(client.next_chunk()).expect("a chunk");
        let frames = frames(&chunk);
        assert_eq!(frames.len(), 2, "both flushes in one write: {frames:?}");
        assert!(frames[0].starts_with("event: settled\nid: e1\ndata: {"), "{frames:?}");
        assert!(frames[1].starts_with("event: dead-lettered\nid: e3\n"), "{frames:?}");
        let back: Settled = serde_json::from_str(frames[1].split_once("data: ").expect("data").1).expect("a Settled");
        assert_eq!((back.event_id.as_str(), back.ending), ("e3", Ending::DeadLettered));
    }

    #[test]
    fn open_clients_share_each_flush_bytes_and_a_new_one_gets_the_recent_events_first() {
        let (rt, feed) = (runtime(), Feed::new(Arc::new(Metrics::new())).expect("a feed"));
        let (mut one, mut two) = (feed.client(Filter::default()), feed.client(Filter::default()));
        publish(&rt, &feed, vec![settled("e1", "a.b"), settled("e2", "x.y")], 2);
        publish(&rt, &feed, vec![settled("e3", "a.c")], 3);
        let (a, b) = (rt.block_on(one.next_chunk()).expect("a chunk"), rt.block_on(two.next_chunk()).expect("a chunk"));
        assert_eq!(frames(&a).len(), 2);
        assert_eq!((a.as_ptr(), a.len()), (b.as_ptr(), b.len()), "the same bytes, framed once");
        let next = rt.block_on(one.next_chunk()).expect("the second flush");
        assert!(frames(&next)[0].starts_with("event: settled\nid: e3\n"), "{next:?}");
        let mut late = feed.client(Filter { event_type: Some("a.*".into()), ..Filter::default() });
        let backlog = frames(&rt.block_on(late.next_chunk()).expect("the backlog"));
        assert_eq!(backlog.len(), 2, "{backlog:?}");
        assert!(backlog[0].contains("\nid: e1\n") && backlog[1].contains("\nid: e3\n"), "{backlog:?}");
    }

    #[test]
    fn publishing_never_waits_for_a_reader_and_a_lagging_one_is_told_and_dropped() {
        let (rt, metrics) = (runtime(), Arc::new(Metrics::new()));
        let feed = Feed::new(metrics.clone()).expect("a feed");
        let mut client = feed.client(Filter::default());
        // The reader never reads while more than its buffer is published:
        // the publisher counts it dropped then, before it reads again.
        for i in 0..(CLIENT_BUFFER + 10) {
            feed.settled(vec![settled(&format!("e{i}"), "a.b")]);
        }
        publish(&rt, &feed, vec![settled("last", "a.b")], CLIENT_BUFFER as u64 + 11);
        assert!(metrics.encode().contains("cortex_dashboard_stream_dropped_clients_total 1"));
        assert!(feed.shared.log.locked().cursors.is_empty(), "the publisher forgot it");
        let notice = rt.block_on(client.next_chunk()).expect("the lagged notice");
        assert!(notice.starts_with(b"event: lagged\ndata: this client fell behind"), "{notice:?}");
        assert!(rt.block_on(client.next_chunk()).is_none(), "then the stream ends");
        let text = metrics.encode();
        assert!(text.contains("cortex_dashboard_stream_dropped_clients_total 1"), "{text}");
        drop(client);
        assert!(metrics.encode().contains("cortex_dashboard_stream_clients 0"));
    }

    #[test]
    fn the_hand_off_is_bounded_and_what_does_not_fit_drops_every_client() {
        let (rt, metrics) = (runtime(), Arc::new(Metrics::new()));
        let feed = Feed::new(metrics.clone()).expect("a feed");
        let (mut one, mut two) = (feed.client(Filter::default()), feed.client(Filter::default()));
        let mut published = feed.shared.published.clone();
        // One batch over the inbox's bound: the rest is not kept.
        feed.settled((0..INBOX + 5).map(|i| settled(&format!("e{i}"), "a.b")).collect());
        rt.block_on(published.wait_for(|p| *p > 0)).expect("the publisher runs");
        assert!(*published.borrow() <= INBOX as u64, "at most the bound was kept");
        for client in [&mut one, &mut two] {
            let notice = rt.block_on(client.next_chunk()).expect("the lagged notice");
            assert!(notice.starts_with(b"event: lagged\n"), "{notice:?}");
        }
        assert!(metrics.encode().contains("cortex_dashboard_stream_dropped_clients_total 2"));
    }

    #[test]
    fn the_log_keeps_the_flushes_of_the_last_client_buffer_events() {
        let mut log = Log::default();
        let flush = |first: u64, n: usize| {
            let settled: Vec<Settled> = (0..n).map(|i| settled(&format!("e{i}"), "a.b")).collect();
            let ends = (1..=n).collect();
            Arc::new(Flush { first, settled, ends, all: Bytes::from(vec![b'x'; n]) })
        };
        log.push(flush(1, 600));
        log.push(flush(601, 600));
        assert_eq!(log.flushes.len(), 2, "event 177 on may still be needed");
        log.push(flush(1201, 600));
        assert_eq!((log.flushes.len(), log.last, log.recent.len()), (2, 1800, RECENT));
        assert_eq!(log.flushes[0].frame(1), b"x");
    }
}
