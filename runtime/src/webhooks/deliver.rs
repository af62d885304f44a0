//! The deliverer: sends what the outbox holds, in `cortex serve`.
//!
//! One task per endpoint, each with its own in-flight limit
//! (`concurrency`), circuit breaker and retry schedule, all on the
//! service's async runtime and none on the dispatch thread: a slow, failing
//! or hanging endpoint holds only its own task's slots, each for at most
//! `timeout_ms`. Every `SCAN` the task lists its outbox directory (records
//! written by the group commit or by `cortex dlq retry`, the `410 Gone`
//! mark), so the files are the only state that matters: a crash or a kill
//! loses nothing but in-memory backoff, and every record left is sent again
//! with its `webhook-id`.
//!
//! A supervisor follows reloads of `cortex.toml`: the queue's routes are
//! swapped at once, and an endpoint whose table changed is restarted (its
//! in-flight attempts are dropped and made again by the new task).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::task::JoinSet;

use super::breaker::{Breaker, backoff};
use super::sign::Secret;
use super::{Routes, outbox, url_sha256};
use crate::config::{Config, WebhookConfig, WebhookFormat};
use crate::layout::Layout;
use crate::lock::RecoverRw;
use crate::metrics::Metrics;
use crate::queue::{FsQueue, now_ms, now_rfc3339};
use crate::records::{AttemptRecord, EndpointDisabled, Failure, FaultKind, OutboxRecord};
use crate::sandbox::Fault;
use crate::text::Escaped;

/// How often an endpoint re-lists its outbox.
const SCAN: Duration = Duration::from_millis(250);
/// How long an idle endpoint task sleeps between looks.
const TICK: Duration = Duration::from_millis(50);
/// How often the supervisor looks for a reloaded config.
const RELOAD_POLL: Duration = Duration::from_millis(500);

/// One configured endpoint with its secret read.
struct Endpoint {
    name: String,
    config: WebhookConfig,
    secret: Option<Secret>,
    shown_url: String,
    url_sha256: String,
}

/// Reads the secrets of every endpoint of `config`.
fn resolve(config: &Config) -> Result<BTreeMap<String, Arc<Endpoint>>> {
    let mut out = BTreeMap::new();
    for (name, w) in &config.webhooks {
        let secret = w.secret(name)?;
        if secret.is_none() {
            tracing::warn!(endpoint = %name, "webhook endpoint has no secret_env: its deliveries are not signed");
        }
        let ep = Endpoint {
            name: name.clone(),
            config: w.clone(),
            secret,
            shown_url: w.shown_url(),
            url_sha256: url_sha256(&w.url),
        };
        out.insert(name.clone(), Arc::new(ep));
    }
    Ok(out)
}

/// Sends the outbox of every endpoint until stopped.
pub struct Deliverer {
    layout: Layout,
    client: reqwest::Client,
    endpoints: BTreeMap<String, Arc<Endpoint>>,
}

impl Deliverer {
    /// Reads every endpoint's secret and builds the HTTP client.
    ///
    /// # Errors
    /// When a `secret_env` variable is unset or unusable (named, never its
    /// value), or the TLS client cannot be built.
    pub fn new(layout: Layout, config: &Config) -> Result<Deliverer> {
        let endpoints = resolve(config)?;
        let client = reqwest::Client::builder()
            // A redirect is a failure, not an invitation to send the event
            // (and its signature) somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cortex/", env!("CARGO_PKG_VERSION"), " webhooks"))
            .build()
            .context("failed to build the webhook HTTP client")?;
        Ok(Deliverer { layout, client, endpoints })
    }

    /// Runs the endpoint tasks until `stop`, following config reloads in
    /// `slot` (and swapping `queue`'s routes with them).
    pub async fn run(
        self,
        slot: Arc<RwLock<Arc<Config>>>,
        queue: Arc<FsQueue>,
        metrics: Arc<Metrics>,
        stop: Arc<AtomicBool>,
    ) {
        let Deliverer { layout, client, endpoints } = self;
        let mut running: BTreeMap<String, Running> = BTreeMap::new();
        let start = |ep: Arc<Endpoint>| {
            let flag = Arc::new(AtomicBool::new(false));
            let task =
                Task { ep: ep.clone(), layout: layout.clone(), client: client.clone(), metrics: metrics.clone() };
            let handle = tokio::spawn(task.run(flag.clone()));
            Running { ep, stop: flag, handle }
        };
        for (name, ep) in endpoints {
            running.insert(name, start(ep));
        }
        let mut current = slot.read_locked().clone();
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(RELOAD_POLL).await;
            let config = slot.read_locked().clone();
            if Arc::ptr_eq(&config, &current) {
                continue;
            }
            let changed = config.webhooks != current.webhooks;
            current = config;
            if !changed {
                continue;
            }
            if let Err(e) = queue.set_webhooks(Routes::of(&current)) {
                tracing::error!(error = %format!("{e:#}"), "webhook endpoints could not be prepared after a reload");
            }
            let resolved = match resolve(&current) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "webhook deliverers not reloaded; the running ones keep sending");
                    continue;
                }
            };
            running.retain(|name, r| {
                let keep = resolved.get(name).is_some_and(|new| new.config == r.ep.config);
                if !keep {
                    r.stop.store(true, Ordering::Relaxed);
                }
                keep
            });
            for (name, ep) in resolved {
                if let Entry::Vacant(slot) = running.entry(name) {
                    tracing::info!(endpoint = %slot.key(), url = %ep.shown_url, "webhook endpoint (re)started");
                    slot.insert(start(ep));
                }
            }
        }
        for r in running.into_values() {
            r.stop.store(true, Ordering::Relaxed);
            let _ = r.handle.await;
        }
    }
}

/// An endpoint task and how to stop it.
struct Running {
    ep: Arc<Endpoint>,
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<()>,
}

/// How an attempt ended.
enum Answer {
    Delivered(u16),
    Gone,
    Failed(String),
}

/// One endpoint's task.
struct Task {
    ep: Arc<Endpoint>,
    layout: Layout,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl Task {
    async fn run(self, stop: Arc<AtomicBool>) {
        let name = self.ep.name.clone();
        let c = &self.ep.config;
        let mut pending: BTreeMap<String, OutboxRecord> = BTreeMap::new();
        let mut unreadable: BTreeSet<String> = BTreeSet::new();
        let mut in_flight: BTreeSet<String> = BTreeSet::new();
        let mut sends: JoinSet<(String, Answer, Duration)> = JoinSet::new();
        let mut breaker = Breaker::new(c.breaker_failures, Duration::from_millis(c.breaker_cooldown_ms));
        let mut next_scan = Instant::now();
        let mut disabled = false;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_scan {
                next_scan = now + SCAN;
                disabled = self.scan(&mut pending, &mut unreadable, &in_flight).await;
            }
            let allowed = breaker.allowed(now, c.concurrency);
            self.metrics.webhooks().breaker(&name, breaker.state(now).metric());
            if !disabled && in_flight.len() < allowed {
                let due_by = now_ms();
                let mut due: Vec<&OutboxRecord> = pending
                    .iter()
                    .filter(|(n, r)| !in_flight.contains(*n) && r.next_attempt_ms <= due_by)
                    .map(|(_, r)| r)
                    .collect();
                due.sort_by_key(|r| (r.next_attempt_ms, r.created_us));
                for r in due.into_iter().take(allowed - in_flight.len()) {
                    let file = format!("{}.json", r.webhook_id);
                    in_flight.insert(file.clone());
                    let (client, ep, record) = (self.client.clone(), self.ep.clone(), r.clone());
                    sends.spawn(async move {
                        let started = Instant::now();
                        let answer = send(&client, &ep, &record).await;
                        (file, answer, started.elapsed())
                    });
                }
            }
            tokio::select! {
                Some(joined) = sends.join_next(), if !sends.is_empty() => {
                    // A send task only panics on a bug; its record stays and is sent again.
                    let Ok((file, answer, took)) = joined else { continue };
                    in_flight.remove(&file);
                    if let Some(record) = pending.remove(&file)
                        && let Some(back) = self.settle(record, answer, took, &mut breaker, &mut disabled).await
                    {
                        pending.insert(file, back);
                    }
                    self.metrics.webhooks().outbox(&name, pending.len());
                }
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Re-lists the outbox: reads records not seen yet, forgets those gone.
    /// Returns whether the endpoint is disabled.
    async fn scan(
        &self,
        pending: &mut BTreeMap<String, OutboxRecord>,
        unreadable: &mut BTreeSet<String>,
        in_flight: &BTreeSet<String>,
    ) -> bool {
        let (layout, ep) = (self.layout.clone(), self.ep.clone());
        let known: BTreeSet<String> = pending.keys().chain(unreadable.iter()).cloned().collect();
        let listed = tokio::task::spawn_blocking(move || -> Result<_> {
            let names = outbox::names(&layout, &ep.name)?;
            let mut new = Vec::new();
            for n in names.iter().filter(|n| !known.contains(*n)) {
                new.push((n.clone(), outbox::read(&layout, &ep.name, n)));
            }
            let disabled = outbox::disabled(&layout, &ep.name, &ep.url_sha256);
            Ok((names, new, disabled))
        })
        .await;
        let (names, new, disabled) = match listed {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                tracing::warn!(endpoint = %self.ep.name, error = %format!("{e:#}"), "cannot read the webhook outbox");
                return false;
            }
            Err(_) => return false,
        };
        let names: BTreeSet<String> = names.into_iter().collect();
        pending.retain(|n, _| names.contains(n) || in_flight.contains(n));
        unreadable.retain(|n| names.contains(n));
        for (n, read) in new {
            match read {
                Ok(r) => {
                    pending.insert(n, r);
                }
                // Often a record being renamed into place; else said once.
                Err(e) if names.contains(&n) => {
                    tracing::warn!(endpoint = %self.ep.name, error = %format!("{e:#}"), "skipping an unreadable webhook delivery");
                    unreadable.insert(n);
                }
                Err(_) => {}
            }
        }
        let m = self.metrics.webhooks();
        m.outbox(&self.ep.name, pending.len());
        m.disabled(&self.ep.name, disabled.is_some());
        disabled.is_some()
    }

    /// Records how an attempt ended; returns the record when it stays
    /// pending.
    async fn settle(
        &self,
        mut record: OutboxRecord,
        answer: Answer,
        took: Duration,
        breaker: &mut Breaker,
        disabled: &mut bool,
    ) -> Option<OutboxRecord> {
        let (ep, m) = (&self.ep, self.metrics.webhooks());
        let (layout, id, event_id) = (self.layout.clone(), record.webhook_id.clone(), record.event.event_id.clone());
        match answer {
            Answer::Delivered(status) => {
                m.attempt(&ep.name, "ok", took);
                breaker.success();
                tracing::info!(endpoint = %ep.name, webhook_id = %id, %event_id, status, attempts = record.attempts + 1, "webhook delivered");
                let name = ep.name.clone();
                blocking("remove a delivered webhook", move || outbox::remove(&layout, &name, &id)).await;
                None
            }
            Answer::Gone => {
                m.attempt(&ep.name, "gone", took);
                *disabled = true;
                m.disabled(&ep.name, true);
                tracing::error!(endpoint = %ep.name, url = %ep.shown_url, "webhook endpoint answered 410 Gone: disabled; `cortex webhooks enable {}` (or a new url) turns it back on", ep.name);
                let mark = EndpointDisabled {
                    at: now_rfc3339(),
                    status: 410,
                    reason: format!("{} answered 410 Gone to {id}", ep.shown_url),
                    url_sha256: ep.url_sha256.clone(),
                };
                let name = ep.name.clone();
                blocking("mark a webhook endpoint disabled", move || outbox::disable(&layout, &name, &mark)).await;
                Some(record)
            }
            Answer::Failed(message) => {
                m.attempt(&ep.name, "failed", took);
                if breaker.failure(Instant::now()) {
                    tracing::warn!(endpoint = %ep.name, cooldown_ms = ep.config.breaker_cooldown_ms, "webhook circuit breaker opened");
                }
                record.attempts += 1;
                record.history.push(AttemptRecord {
                    attempt: record.attempts,
                    at: now_rfc3339(),
                    failures: vec![Failure {
                        handler: format!("webhook {}", ep.name),
                        component_sha256: String::new(),
                        fault: Fault::new(FaultKind::Webhook, message.clone()),
                        duration_ms: took.as_secs_f64() * 1e3,
                    }],
                });
                let c = &ep.config;
                if record.attempts >= c.max_attempts {
                    m.dead_lettered(&ep.name);
                    tracing::error!(endpoint = %ep.name, webhook_id = %id, %event_id, attempts = record.attempts, error = %Escaped(&message), "webhook delivery moved to the dead-letter queue");
                    let (max, url) = (c.max_attempts, ep.shown_url.clone());
                    blocking("dead-letter a webhook delivery", move || {
                        outbox::dead_letter(&layout, &record, max, &url)
                    })
                    .await;
                    return None;
                }
                let wait = backoff(
                    record.attempts,
                    Duration::from_millis(c.backoff_ms),
                    Duration::from_millis(c.max_backoff_ms),
                );
                record.next_attempt_ms = now_ms() + wait.as_millis() as u64;
                tracing::warn!(endpoint = %ep.name, webhook_id = %id, %event_id, attempt = record.attempts, retry_in_ms = wait.as_millis() as u64, error = %Escaped(&message), "webhook delivery failed");
                let copy = record.clone();
                blocking("record a webhook attempt", move || outbox::write(&layout, &copy)).await;
                Some(record)
            }
        }
    }
}

/// Runs file work off the async threads; logs its failure (the record on
/// disk is then the older one, which is sent again: at least once).
async fn blocking(what: &'static str, f: impl FnOnce() -> Result<()> + Send + 'static) {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "failed to {what}"),
        Err(_) => tracing::error!("failed to {what}: the task panicked"),
    }
}

/// The body and its content type.
fn body(format: WebhookFormat, record: &OutboxRecord) -> (Vec<u8>, &'static str) {
    let value = match format {
        WebhookFormat::Cloudevents => crate::cloudevents::to_structured(&record.event),
        WebhookFormat::Data => serde_json::Value::Object(record.event.payload.clone()),
    };
    // Serializing a JSON value cannot fail.
    let bytes = serde_json::to_vec(&value).unwrap_or_default();
    match format {
        WebhookFormat::Cloudevents => (bytes, "application/cloudevents+json"),
        WebhookFormat::Data => (bytes, "application/json"),
    }
}

/// One attempt: POST the body with the Standard Webhooks headers.
async fn send(client: &reqwest::Client, ep: &Endpoint, record: &OutboxRecord) -> Answer {
    let (bytes, content_type) = body(ep.config.format, record);
    let ts = chrono::Utc::now().timestamp();
    let mut req = client
        .post(&ep.config.url)
        .timeout(Duration::from_millis(ep.config.timeout_ms))
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .header("webhook-id", &record.webhook_id)
        .header("webhook-timestamp", ts.to_string());
    if let Some(secret) = &ep.secret {
        req = req.header("webhook-signature", secret.sign(&record.webhook_id, ts, &bytes));
    }
    match req.body(bytes).send().await {
        Ok(resp) if resp.status().is_success() => Answer::Delivered(resp.status().as_u16()),
        Ok(resp) if resp.status() == reqwest::StatusCode::GONE => Answer::Gone,
        Ok(resp) => {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let text: String = text.chars().take(200).collect();
            Answer::Failed(format!("HTTP {status}: {}", text.trim()))
        }
        Err(e) if e.is_timeout() => Answer::Failed(format!("no answer within timeout_ms {}", ep.config.timeout_ms)),
        // Without the URL: it may hold a token.
        Err(e) => Answer::Failed(format!("{:#}", anyhow::Error::new(e.without_url()))),
    }
}
