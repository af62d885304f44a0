//! Per-endpoint metrics of outbound webhooks, registered with the rest of
//! Cortex's on `/metrics` (see [`crate::metrics::Metrics::webhooks`]):
//! deliveries made and failed, attempts, latency, breaker state, whether
//! the endpoint is disabled, and the outbox depth.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Endpoint {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Attempt {
    endpoint: String,
    /// `ok`, `failed`, `gone`.
    result: String,
}

type Latency = Family<Endpoint, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The webhook metrics.
pub struct WebhookMetrics {
    attempts: Family<Attempt, Counter>,
    delivered: Family<Endpoint, Counter>,
    dead_lettered: Family<Endpoint, Counter>,
    latency: Latency,
    breaker: Family<Endpoint, Gauge>,
    disabled: Family<Endpoint, Gauge>,
    outbox: Family<Endpoint, Gauge>,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        WebhookMetrics {
            attempts: Family::default(),
            delivered: Family::default(),
            dead_lettered: Family::default(),
            latency: Latency::new_with_constructor(latency_histogram),
            breaker: Family::default(),
            disabled: Family::default(),
            outbox: Family::default(),
        }
    }
}

fn ep(endpoint: &str) -> Endpoint {
    Endpoint { endpoint: endpoint.into() }
}

impl WebhookMetrics {
    /// Registers every family under `cortex_webhook_*`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "webhook_attempts",
            "Webhook delivery attempts by endpoint and result (ok, failed, gone)",
            self.attempts.clone(),
        );
        registry.register("webhook_delivered", "Webhook deliveries answered 2xx", self.delivered.clone());
        registry.register(
            "webhook_dead_lettered",
            "Webhook deliveries that ran out of attempts (dead letters)",
            self.dead_lettered.clone(),
        );
        registry.register("webhook_latency_seconds", "Webhook attempt time, request to response", self.latency.clone());
        registry.register(
            "webhook_breaker_state",
            "Circuit breaker per endpoint: 0 closed, 1 open, 2 half-open",
            self.breaker.clone(),
        );
        registry.register(
            "webhook_disabled",
            "1 for an endpoint disabled after 410 Gone (cortex webhooks enable NAME)",
            self.disabled.clone(),
        );
        registry.register("webhook_outbox_depth", "Webhook deliveries waiting per endpoint", self.outbox.clone());
    }

    /// One attempt ended: `result` is `ok`, `failed` or `gone`.
    pub fn attempt(&self, endpoint: &str, result: &str, took: std::time::Duration) {
        self.attempts.get_or_create(&Attempt { endpoint: endpoint.into(), result: result.into() }).inc();
        self.latency.get_or_create(&ep(endpoint)).observe(took.as_secs_f64());
        if result == "ok" {
            self.delivered.get_or_create(&ep(endpoint)).inc();
        }
    }

    pub fn dead_lettered(&self, endpoint: &str) {
        self.dead_lettered.get_or_create(&ep(endpoint)).inc();
    }

    pub fn breaker(&self, endpoint: &str, state: i64) {
        self.breaker.get_or_create(&ep(endpoint)).set(state);
    }

    pub fn disabled(&self, endpoint: &str, disabled: bool) {
        self.disabled.get_or_create(&ep(endpoint)).set(i64::from(disabled));
    }

    pub fn outbox(&self, endpoint: &str, depth: usize) {
        self.outbox.get_or_create(&ep(endpoint)).set(depth as i64);
    }
}
