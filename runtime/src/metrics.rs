//! Prometheus metrics: what the dispatcher did, per event type and handler,
//! and the state of the queue, served by `cortex serve` on `/metrics`.

use std::sync::Mutex;
use std::time::Duration;

use crate::lock::Recover;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event_type: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InvocationLabels {
    handler: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabel {
    handler: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    handler: String,
    sha256: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IngestLabels {
    code: String,
}

type HistogramFamily = Family<HandlerLabel, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Every metric Cortex exports.
pub struct Metrics {
    registry: Registry,
    events: Family<EventLabels, Counter>,
    invocations: Family<InvocationLabels, Counter>,
    durations: HistogramFamily,
    retries: Counter,
    dead_letters_total: Counter,
    emitted: Counter,
    reloads: Family<ReloadLabels, Counter>,
    active: Family<VersionLabels, Gauge>,
    active_keys: Mutex<Vec<VersionLabels>>,
    broken: Family<HandlerLabel, Gauge>,
    broken_keys: Mutex<Vec<HandlerLabel>>,
    queue_depth: Gauge,
    queue_delayed: Gauge,
    claimed: Gauge,
    oldest_age_ms: Gauge,
    dead_letters: Gauge,
    store_reachable: Gauge,
    stream_clients: Gauge,
    stream_dropped: Counter,
    ingest_requests: Family<IngestLabels, Counter>,
    ingested: Counter,
    ingest_duplicates: Counter,
    lease_grants: Family<HandlerLabel, Counter>,
    lease_lost: Family<HandlerLabel, Counter>,
    lease_wait: Family<HandlerLabel, Counter<f64>>,
    webhooks: crate::webhooks::metrics::WebhookMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cortex");
        let m = Metrics {
            events: Family::default(),
            invocations: Family::default(),
            durations: HistogramFamily::new_with_constructor(duration_histogram),
            retries: Counter::default(),
            dead_letters_total: Counter::default(),
            emitted: Counter::default(),
            reloads: Family::default(),
            active: Family::default(),
            broken: Family::default(),
            broken_keys: Mutex::default(),
            active_keys: Mutex::new(Vec::new()),
            queue_depth: Gauge::default(),
            queue_delayed: Gauge::default(),
            claimed: Gauge::default(),
            oldest_age_ms: Gauge::default(),
            dead_letters: Gauge::default(),
            store_reachable: Gauge::default(),
            stream_clients: Gauge::default(),
            stream_dropped: Counter::default(),
            ingest_requests: Family::default(),
            ingested: Counter::default(),
            ingest_duplicates: Counter::default(),
            lease_grants: Family::default(),
            lease_lost: Family::default(),
            lease_wait: Family::default(),
            webhooks: crate::webhooks::metrics::WebhookMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events",
            "Events settled, by type and outcome (handled, unhandled, retried, dead_lettered)",
            m.events.clone(),
        );
        registry.register(
            "handler_invocations",
            "Handler invocations by result (ok, error, trap, timeout, memory, fuel, ...)",
            m.invocations.clone(),
        );
        registry.register(
            "handler_duration_seconds",
            "Handler invocation time, instantiate to return",
            m.durations.clone(),
        );
        registry.register("retries", "Deliveries put back for another attempt", m.retries.clone());
        registry.register("dead_lettered", "Events moved to the dead-letter queue", m.dead_letters_total.clone());
        registry.register("emitted_events", "Follow-up events emitted by handlers and queued", m.emitted.clone());
        registry.register("reloads", "Component and configuration reloads by result (ok, failed)", m.reloads.clone());
        registry.register(
            "handler_active_version",
            "1 for the component version each handler is serving",
            m.active.clone(),
        );
        registry.register(
            "handler_load_failed",
            "1 for each configured handler that does not load (its events wait in the queue)",
            m.broken.clone(),
        );
        registry.register("queue_depth", "Events waiting in the queue (ready or delayed)", m.queue_depth.clone());
        registry.register("queue_delayed", "Queued retries not yet due", m.queue_delayed.clone());
        registry.register("queue_claimed", "Events claimed and not yet settled", m.claimed.clone());
        registry.register("queue_oldest_age_milliseconds", "Age of the oldest queued event", m.oldest_age_ms.clone());
        registry.register("dead_letters", "Events in the dead-letter queue", m.dead_letters.clone());
        registry.register(
            "store_reachable",
            "1 while the store (filesystem, or the Redis server) answered the last call, 0 while it is unreachable",
            m.store_reachable.clone(),
        );
        registry.register("dashboard_stream_clients", "Clients connected to /api/stream", m.stream_clients.clone());
        registry.register(
            "dashboard_stream_dropped_clients",
            "Clients of /api/stream dropped for falling behind (their bounded buffer overflowed)",
            m.stream_dropped.clone(),
        );
        registry.register(
            "ingest_requests",
            "POST /v1/events requests by status class (2xx, 4xx, 5xx)",
            m.ingest_requests.clone(),
        );
        registry.register("ingested_events", "Events queued through POST /v1/events", m.ingested.clone());
        registry.register(
            "ingest_duplicate_events",
            "Events POST /v1/events skipped because their id was already known",
            m.ingest_duplicates.clone(),
        );
        registry.register(
            "handler_lease_grants",
            "Handler leases this host took (Redis, concurrency = 1 handlers with state): each is a handover",
            m.lease_grants.clone(),
        );
        registry.register(
            "handler_lease_lost",
            "Handler leases this host lost while it held them (its late writes are refused and run again)",
            m.lease_lost.clone(),
        );
        registry.register(
            "handler_lease_wait_seconds",
            "Time lanes of this host waited for a handler lease another host held",
            m.lease_wait.clone(),
        );
        m.webhooks.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// The outbound webhooks' metrics.
    pub fn webhooks(&self) -> &crate::webhooks::metrics::WebhookMetrics {
        &self.webhooks
    }

    pub fn invocation(&self, handler: &str, result: &str, took: Duration) {
        self.invocations.get_or_create(&InvocationLabels { handler: handler.into(), result: result.into() }).inc();
        self.durations.get_or_create(&HandlerLabel { handler: handler.into() }).observe(took.as_secs_f64());
    }

    pub fn settled(&self, event_type: &str, outcome: &str, emitted: usize) {
        self.events.get_or_create(&EventLabels { event_type: event_type.into(), outcome: outcome.into() }).inc();
        match outcome {
            "retried" => {
                self.retries.inc();
            }
            "dead_lettered" => {
                self.dead_letters_total.inc();
            }
            _ => {}
        }
        self.emitted.inc_by(emitted as u64);
    }

    /// A handler lease taken after waiting `waited` for it.
    pub fn lease_granted(&self, handler: &str, waited: Duration) {
        let label = HandlerLabel { handler: handler.into() };
        self.lease_grants.get_or_create(&label).inc();
        self.lease_wait.get_or_create(&label).inc_by(waited.as_secs_f64());
    }

    /// A handler lease lost while held.
    pub fn lease_lost(&self, handler: &str) {
        self.lease_lost.get_or_create(&HandlerLabel { handler: handler.into() }).inc();
    }

    /// Whether the store answered its last call.
    pub fn store_reachable(&self, reachable: bool) {
        self.store_reachable.set(i64::from(reachable));
    }

    /// One `POST /v1/events` answered with `status`.
    pub fn ingest_request(&self, status: u16) {
        self.ingest_requests.get_or_create(&IngestLabels { code: format!("{}xx", status / 100) }).inc();
    }

    /// Events one accepted ingest request queued, and those it skipped.
    pub fn ingested(&self, queued: usize, duplicates: usize) {
        self.ingested.inc_by(queued as u64);
        self.ingest_duplicates.inc_by(duplicates as u64);
    }

    pub fn reload(&self, ok: bool) {
        self.reloads.get_or_create(&ReloadLabels { result: if ok { "ok" } else { "failed" }.into() }).inc();
    }

    /// Records the versions now serving, replacing the previous set.
    pub fn set_active<'a>(&self, versions: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) {
        let mut keys = self.active_keys.locked();
        for old in keys.drain(..) {
            self.active.remove(&old);
        }
        for (handler, sha256, version) in versions {
            let k = VersionLabels { handler: handler.into(), sha256: sha256.into(), version: version.into() };
            self.active.get_or_create(&k).set(1);
            keys.push(k);
        }
    }

    /// Records the handlers that do not load, replacing the previous set.
    pub fn set_broken<'a>(&self, handlers: impl IntoIterator<Item = &'a str>) {
        let mut keys = self.broken_keys.locked();
        for old in keys.drain(..) {
            self.broken.remove(&old);
        }
        for handler in handlers {
            let k = HandlerLabel { handler: handler.into() };
            self.broken.get_or_create(&k).set(1);
            keys.push(k);
        }
    }

    pub fn queue(&self, depth: &crate::queue::Depth, oldest_age_ms: u64) {
        self.queue_depth.set(depth.queued as i64);
        self.queue_delayed.set(depth.delayed as i64);
        self.claimed.set(depth.claimed as i64);
        self.dead_letters.set(depth.dead_letters as i64);
        self.oldest_age_ms.set(oldest_age_ms as i64);
    }

    /// A client of the live stream connected (`1`) or went (`-1`).
    pub fn stream_client(&self, delta: i64) {
        self.stream_clients.inc_by(delta);
    }

    /// A client of the live stream was dropped for falling behind.
    pub fn stream_dropped(&self) {
        self.stream_dropped.inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encode metrics");
        out
    }
}
