//! The dashboard's JSON APIs, for the page and for scripts: the root's
//! status (`/api/status`, as `cortex status --json`), the queue's depth by
//! priority and the oldest event's age (`/api/queue`), the causal trace of
//! an event or correlation id (`/api/trace/{id}`, as `cortex trace --json`),
//! the dead letters and one's forensic record (`/api/dead-letters`,
//! `/api/dead-letters/{id}`), per-handler figures over the live window
//! (`/api/handlers`), the latest reloads (`/api/reloads`) and the scopes of
//! the caller's token (`/api/session`), all with [`Scope::Read`]; and one
//! write, `POST /api/dead-letters/{id}/retry` ([`Scope::Write`], as `cortex
//! dlq retry ID`).
//!
//! Every answer is JSON, one serde type each; a failure is an [`ApiError`]
//! with the status that fits. Work that reads the root runs on the
//! blocking pool, never on the listener's threads.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::Ctx;
use super::stream::{Filter, Window};
use crate::config::Scope;
use crate::lock::RecoverRw;
use crate::queue::now_us;
use crate::records::DeadLetterRecord;
use crate::text::Escaped;

/// What a failed API call answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// `/api/queue`: what waits, by priority, and for how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueView {
    pub queued: usize,
    pub by_priority: BTreeMap<String, usize>,
    /// Of the queued, retries not yet due.
    pub delayed: usize,
    pub claimed: usize,
    pub dead_letters: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_age_secs: Option<f64>,
}

/// One line of `/api/dead-letters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LetterLine {
    /// What `/api/dead-letters/{id}` accepts: the event id, else the key.
    pub id: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    pub dead_lettered_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    pub reason: String,
}

/// `/api/dead-letters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Letters {
    pub letters: Vec<LetterLine>,
    /// Files that are not dead-letter records, with why.
    pub unreadable: Vec<String>,
}

/// `/api/dead-letters/{id}`: the forensic record, as stored and as `cortex
/// dlq show` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Letter {
    pub key: String,
    pub record: DeadLetterRecord,
    pub text: String,
}

/// One handler in `/api/handlers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandlerView {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Why it does not load (its events wait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_loading: Option<String>,
    /// Its figures over the last five minutes (none before its first run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
}

/// `/api/session`: what the caller's token (or the loopback rule) allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub scopes: Vec<Scope>,
}

/// `POST /api/dead-letters/{id}/retry`: the event ids queued again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retried {
    pub retried: Vec<String>,
}

/// A failed call: its status and what to say.
struct Problem(StatusCode, String);

impl From<anyhow::Error> for Problem {
    fn from(e: anyhow::Error) -> Problem {
        Problem(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

/// `value` as a JSON response.
pub(super) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("failed to serialize the answer: {e}\n")).into_response(),
    }
}

/// Runs `f` on the blocking pool and answers what it returns.
async fn blocking<T: Serialize + Send + 'static>(f: impl FnOnce() -> Result<T, Problem> + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => json(StatusCode::OK, &v),
        Ok(Err(Problem(status, error))) => json(status, &ApiError { error }),
        Err(e) => {
            json(StatusCode::INTERNAL_SERVER_ERROR, &ApiError { error: format!("the request's task failed: {e}") })
        }
    }
}

/// The routes that read.
pub(super) fn reads(ctx: Arc<Ctx>) -> Router {
    let c = ctx.clone();
    let status = get(move || {
        let c = c.clone();
        blocking(move || {
            let config = c.dispatcher.config_slot().read_locked().clone();
            Ok(crate::status::gather(c.queue.as_ref(), &c.layout, &config)?)
        })
    });
    let c = ctx.clone();
    let queue = get(move || {
        let c = c.clone();
        blocking(move || queue_view(&c))
    });
    let c = ctx.clone();
    let trace = get(move |Path(id): Path<String>| {
        let c = c.clone();
        blocking(move || trace(&c, &id))
    });
    let c = ctx.clone();
    let letters = get(move || {
        let c = c.clone();
        blocking(move || letters(&c))
    });
    let c = ctx.clone();
    let letter = get(move |Path(id): Path<String>| {
        let c = c.clone();
        blocking(move || letter(&c, &id))
    });
    let c = ctx.clone();
    let handlers = get(move || {
        let c = c.clone();
        async move { json(StatusCode::OK, &handlers(&c)) }
    });
    let c = ctx.clone();
    let reloads = get(move || {
        let c = c.clone();
        async move { json(StatusCode::OK, &c.reloads.list()) }
    });
    let c = ctx.clone();
    let session = get(move |req: Request| {
        let c = c.clone();
        async move {
            let scopes = Scope::ALL
                .into_iter()
                .filter(|s| c.auth.check(req.method(), req.uri(), req.headers(), *s).is_ok())
                .collect();
            json(StatusCode::OK, &Session { scopes })
        }
    });
    let c = ctx;
    let stream = get(move |req: Request| {
        let c = c.clone();
        async move { c.feed.sse(Filter::from_query(req.uri().query())).into_response() }
    });
    Router::new()
        .route("/api/status", status)
        .route("/api/queue", queue)
        .route("/api/trace/{id}", trace)
        .route("/api/dead-letters", letters)
        .route("/api/dead-letters/{id}", letter)
        .route("/api/handlers", handlers)
        .route("/api/reloads", reloads)
        .route("/api/session", session)
        .route("/api/stream", stream)
}

/// The routes that change the root.
pub(super) fn writes(ctx: Arc<Ctx>) -> Router {
    let retry = post(move |Path(id): Path<String>| {
        let c = ctx.clone();
        blocking(move || retry(&c, &id))
    });
    Router::new().route("/api/dead-letters/{id}/retry", retry)
}

fn queue_view(ctx: &Ctx) -> Result<QueueView, Problem> {
    let depth = ctx.queue.depth()?;
    let by_priority = ctx.queue.by_priority()?.into_iter().map(|(p, n)| (p.to_string(), n)).collect();
    Ok(QueueView {
        queued: depth.queued,
        by_priority,
        delayed: depth.delayed,
        claimed: depth.claimed,
        dead_letters: depth.dead_letters,
        oldest_event_id: depth.oldest.as_ref().map(|o| o.event_id.clone()),
        oldest_age_secs: depth.oldest.as_ref().map(|o| now_us().saturating_sub(o.enqueued_us) as f64 / 1e6),
    })
}

fn trace(ctx: &Ctx, id: &str) -> Result<crate::trace::Trace, Problem> {
    let config = ctx.dispatcher.config_slot().read_locked().clone();
    let gathered = crate::trace::gather(ctx.queue.as_ref(), &config)?;
    let Some((named, trees)) = crate::trace::build(gathered.events, id) else {
        let error = format!(
            "no event or correlation id {} in the queue, the claims, the dead letters or the archive",
            Escaped(id)
        );
        return Err(Problem(StatusCode::NOT_FOUND, error));
    };
    let events = trees.iter().map(crate::trace::Node::count).sum();
    Ok(crate::trace::Trace { id: id.to_string(), named, events, trees, skipped: gathered.skipped })
}

fn letters(ctx: &Ctx) -> Result<Letters, Problem> {
    let listing = ctx.queue.dead_letters()?;
    let letters = listing
        .letters
        .iter()
        .map(|l| {
            let e = l.event();
            LetterLine {
                id: l.event_id().unwrap_or(&l.key).to_string(),
                key: l.key.clone(),
                event_type: e.map(|e| e.event_type.clone()),
                source: e.map(|e| e.source.clone()),
                correlation_id: e.and_then(|e| e.correlation_id.clone()),
                dead_lettered_at: l.record.dead_lettered_at.clone(),
                attempts: l.record.attempts,
                reason: l.reason().to_string(),
            }
        })
        .collect();
    Ok(Letters { letters, unreadable: listing.unreadable })
}

fn letter(ctx: &Ctx, id: &str) -> Result<Letter, Problem> {
    let listing = ctx.queue.dead_letters()?;
    let found = listing.find(id).map_err(|e| Problem(StatusCode::NOT_FOUND, format!("{e:#}")))?;
    // `find` names at least one or fails.
    let l = found[0];
    Ok(Letter { key: l.key.clone(), record: l.record.clone(), text: l.describe() })
}

fn handlers(ctx: &Ctx) -> Vec<HandlerView> {
    let mut windows = ctx.feed.windows();
    let serving = ctx.dispatcher.handlers().read_locked().clone();
    let broken = ctx.broken.read_locked().clone();
    let mut out: Vec<HandlerView> = serving
        .values()
        .map(|l| HandlerView {
            name: l.name.clone(),
            version: Some(l.info.version.clone()),
            sha256: Some(l.sha256.clone()),
            not_loading: None,
            window: windows.remove(&l.name),
        })
        .collect();
    out.extend(broken.into_iter().map(|(name, why)| HandlerView {
        window: windows.remove(&name),
        name,
        version: None,
        sha256: None,
        not_loading: Some(why),
    }));
    // Handlers that ran in the window but serve no more (removed by a reload).
    out.extend(windows.into_iter().map(|(name, w)| HandlerView {
        name,
        version: None,
        sha256: None,
        not_loading: None,
        window: Some(w),
    }));
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn retry(ctx: &Ctx, id: &str) -> Result<Retried, Problem> {
    let listing = ctx.queue.dead_letters()?;
    let selection = listing
        .for_retry(Some(id), false, &crate::replay::Filter::default())
        .map_err(|e| Problem(StatusCode::NOT_FOUND, format!("{e:#}")))?;
    let config = ctx.dispatcher.config_slot().read_locked().clone();
    let events = crate::dlq::retry(ctx.queue.as_ref(), &config.validator(), &selection.letters)
        .map_err(|e| Problem(StatusCode::CONFLICT, format!("{e:#}")))?;
    tracing::info!(id = %Escaped(id), events = events.len(), "dead letter retried from the dashboard");
    Ok(Retried { retried: events.into_iter().map(|e| e.event_id).collect() })
}
