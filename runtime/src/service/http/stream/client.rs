//! One follower of `GET /api/stream`: its [`Filter`] and its [`Client`],
//! which turns the published [`Flush`]es after its cursor into the chunks
//! its connection writes.
//!
//! A client does no serializing: every event's SSE frame was written once,
//! by the publisher. A client without a filter sends each flush's shared
//! bytes as they are (no copy); a filtered one copies the frames that pass
//! into one chunk. Either way a client is woken once per flush, so its
//! connection makes one write per flush interval, not one per event.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use super::{CLIENT_BUFFER, Cursor, FLUSH, Flush, KEEP_ALIVE, MAX_WRITE, Shared};
use crate::dispatch::Settled;
use crate::lock::Recover;

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
            let v = super::super::auth::percent_decode(v);
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

    /// Whether every event passes (the client can be sent shared bytes).
    fn is_open(&self) -> bool {
        self == &Filter::default()
    }
}

/// One connected client: its cursor in the published flushes.
pub(super) struct Client {
    pub(super) shared: Arc<Shared>,
    pub(super) cursor: Arc<Cursor>,
    /// Frames of recent events to send first.
    pub(super) backlog: VecDeque<Bytes>,
    pub(super) filter: Filter,
    /// Tells of each publication (its value is not used).
    pub(super) published: watch::Receiver<u64>,
    /// How long after each publication this client takes it (see [`turn`]).
    pub(super) turn: Duration,
    pub(super) done: bool,
}

/// The turn of the `n`th client to connect: a delay in `[0, FLUSH)` after
/// each publication before it sends, spread evenly over the interval
/// whatever the number of clients (the golden-ratio sequence), so that a
/// hundred clients make a write each half-millisecond rather than a
/// hundred at once. A burst of writes at every flush, each waking its
/// reader, would take both cores of a small machine from the dispatcher for
/// a millisecond or two twenty times a second; spread out, they leave it a
/// core. A client sees each event at most one flush interval later.
pub(super) fn turn(n: u64) -> Duration {
    const GOLDEN: f64 = 0.618_033_988_749_894_9;
    FLUSH.mul_f64((n as f64 * GOLDEN).fract())
}

/// What a look at the published flushes found for a client.
enum Taken {
    Chunk(Bytes),
    /// Nothing new passes the filter.
    Nothing,
    /// What the client had not read is no longer kept.
    Lagged,
}

impl Client {
    /// What to write next: the backlog, else what was published after this
    /// client's cursor (waiting for a publication), a keep-alive comment,
    /// or the notice that this client is dropped. `None` ends the stream.
    pub(super) async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.done {
                return None;
            }
            if self.cursor.dropped.load(Ordering::Relaxed) {
                return Some(self.drop_lagging());
            }
            if !self.backlog.is_empty() {
                let mut out = BytesMut::new();
                while out.len() < MAX_WRITE
                    && let Some(frame) = self.backlog.pop_front()
                {
                    out.extend_from_slice(&frame);
                }
                return Some(out.freeze());
            }
            // Marked seen before looking, so a publication after the look
            // wakes the wait below.
            self.published.borrow_and_update();
            match self.take() {
                Taken::Chunk(chunk) => return Some(chunk),
                Taken::Lagged => return Some(self.drop_lagging()),
                Taken::Nothing => {}
            }
            match tokio::time::timeout(KEEP_ALIVE, self.published.changed()).await {
                Err(_) => return Some(Bytes::from_static(b": keep-alive\n\n")),
                // The feed is gone: the service is stopping.
                Ok(Err(_)) => return None,
                Ok(Ok(())) => {
                    // Its turn in the interval, not everyone's at once.
                    tokio::time::sleep(self.turn).await;
                }
            }
        }
    }

    /// Takes what was published after the cursor: an open client the next
    /// flush's shared bytes, a filtered one the frames that pass, from as
    /// many flushes as fit in [`MAX_WRITE`].
    fn take(&mut self) -> Taken {
        let (seen, open) = (self.cursor.seen.load(Ordering::Relaxed), self.filter.is_open());
        let flushes: Vec<Arc<Flush>> = {
            let log = self.shared.log.locked();
            if log.last == seen {
                return Taken::Nothing;
            }
            if log.flushes.front().is_none_or(|f| f.first > seen + 1) {
                return Taken::Lagged;
            }
            let mut size = 0;
            let after = log.flushes.iter().filter(|f| f.first > seen);
            // An open client takes one flush a chunk, shared; one that is
            // behind gets the rest on its next calls, at once (its
            // connection writes what is ready together).
            let fits = |f: &&Arc<Flush>| {
                let more = size < MAX_WRITE && !(open && size > 0);
                size += f.all.len();
                more
            };
            after.take_while(fits).cloned().collect()
        };
        let Some(last) = flushes.last() else { return Taken::Nothing };
        self.cursor.seen.store(last.last(), Ordering::Relaxed);
        if open {
            return Taken::Chunk(last.all.clone());
        }
        let mut out = BytesMut::new();
        for flush in &flushes {
            for (i, settled) in flush.settled.iter().enumerate() {
                if self.filter.matches(settled) {
                    out.extend_from_slice(flush.frame(i));
                }
            }
        }
        if out.is_empty() { Taken::Nothing } else { Taken::Chunk(out.freeze()) }
    }

    /// Marks this client done (counted once) and says why, as a `lagged` event.
    fn drop_lagging(&mut self) -> Bytes {
        self.done = true;
        if !self.cursor.dropped.swap(true, Ordering::Relaxed) {
            self.shared.metrics.stream_dropped();
        }
        Bytes::from(format!(
            "event: lagged\ndata: this client fell behind (over the {CLIENT_BUFFER} events it may) and was dropped; reconnect to follow the stream again\n\n"
        ))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.metrics.stream_client(-1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_fall_in_the_interval_and_spread_over_it_whatever_the_clients() {
        for clients in [1u64, 7, 100, 1000] {
            let turns: Vec<Duration> = (0..clients).map(turn).collect();
            assert!(turns.iter().all(|t| *t < FLUSH), "{clients} clients: a turn outside the interval");
            // Cut the interval in ten: no tenth holds much more than its
            // share, so no moment sees most of the writes.
            let mut tenths = [0u64; 10];
            for t in &turns {
                tenths[(t.as_secs_f64() / FLUSH.as_secs_f64() * 10.0) as usize] += 1;
            }
            let most = *tenths.iter().max().unwrap();
            assert!(most <= clients / 10 + 2, "{clients} clients: {tenths:?}");
        }
    }
}
