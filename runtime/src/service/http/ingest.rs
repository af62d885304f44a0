//! `POST /v1/events`: producers on other hosts queue events over HTTP,
//! through the same [`Producer`] as `cortex emit` (same [`crate::event::Validator`],
//! same CloudEvents mapping, same idempotency by event id).
//!
//! The body's `Content-Type` says what it holds:
//! - `application/json`: a Cortex envelope, or a JSON array of them (a
//!   batch). As a line of `cortex emit --batch`, an envelope may omit
//!   `event_id` (one is made; no look-up is needed), `timestamp` (now),
//!   `payload` (`{}`) and `metadata` (priority `medium`), and may give
//!   `priority`, `master` and `tags` at the top level; `event_type` and
//!   `source` are required.
//! - `application/cloudevents+json`: a structured-mode CloudEvent.
//! - `application/cloudevents-batch+json`: a JSON array of them.
//! - any request with a `ce-specversion` header: a binary-mode CloudEvent
//!   (attributes in `ce-*` headers, the data as a JSON body).
//!
//! Answers: `202 Accepted` once the events are durable (the queue's enqueue
//! returns after its fsync), with a JSON [`Accepted`] naming the ids queued
//! and the duplicates skipped; `400` with one `text/plain` line per
//! problem (`field: what is wrong`, prefixed by `event N:` in a batch),
//! nothing queued; `413` for a body over `http.max_body_bytes` or a single
//! event over `limits.max_event_bytes`; `415` for any other content type;
//! `401`/`403` from the scope guard ([`super::guard`], scope `ingest`).
//!
//! The enqueue runs on the blocking pool, so ingest never holds up the
//! runtime's threads (the listener, the probes); concurrent requests write
//! in parallel and the filesystem merges their syncs. The [`Ledger`] closes
//! the window between the store look-up and the write, so two concurrent
//! requests with the same id queue it once.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;

use super::Ctx;
use crate::cloudevents;
use crate::event::{Event, Invalid};
use crate::lock::{Recover, RecoverRw};
use crate::producer::{BadBatch, Batch, Producer};

/// The reply to an accepted request (`202`).
#[derive(Debug, Serialize)]
pub struct Accepted {
    /// The Cortex ids of the events queued, in body order.
    pub queued: Vec<String>,
    /// Events skipped because their id was already known.
    pub duplicates: Vec<Skipped>,
}

/// One event of a request that was not queued again.
#[derive(Debug, Serialize)]
pub struct Skipped {
    pub event_id: String,
    /// Where it already is: "queued", "being handled", "dead-lettered",
    /// "archived" or "on event N of this batch".
    pub already: String,
    /// Its place in the body ("event 2"), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// What a body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Cortex JSON: one envelope or an array of them.
    Cortex,
    /// A structured-mode CloudEvent.
    Structured,
    /// A JSON array of structured CloudEvents.
    CloudBatch,
    /// A binary-mode CloudEvent.
    Binary,
}

/// How a request ends.
#[derive(Debug)]
enum Answer {
    Accepted(Accepted),
    /// 400: one line per problem.
    Rejected(Vec<String>),
    /// 413, and why.
    TooLarge(String),
    /// 415, and what to send instead.
    Unsupported(String),
    /// 500: the events could not be written (none was queued).
    Failed(String),
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let text = |status: StatusCode, body: String| {
            (
                status,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")],
                body,
            )
                .into_response()
        };
        match self {
            Answer::Accepted(a) => {
                // Two Vec<String>s: serializing cannot fail.
                let body = serde_json::to_string(&a).expect("serialize the ingest reply");
                (StatusCode::ACCEPTED, [(header::CONTENT_TYPE, "application/json")], body + "\n").into_response()
            }
            Answer::Rejected(lines) => text(StatusCode::BAD_REQUEST, lines.iter().map(|l| format!("{l}\n")).collect()),
            Answer::TooLarge(why) => text(StatusCode::PAYLOAD_TOO_LARGE, why + "\n"),
            Answer::Unsupported(why) => text(StatusCode::UNSUPPORTED_MEDIA_TYPE, why + "\n"),
            Answer::Failed(why) => text(StatusCode::INTERNAL_SERVER_ERROR, why + "\n"),
        }
    }
}

/// The ids being written by requests in flight, and the last
/// [`Ledger::RECENT`] ids written: a request whose store look-up ran before
/// another request's write of the same id finished finds it here.
#[derive(Default)]
struct Ledger {
    in_flight: HashSet<String>,
    recent: HashSet<String>,
    order: VecDeque<String>,
}

impl Ledger {
    /// Far more ids than requests can write during one request's look-up.
    const RECENT: usize = 65_536;

    /// Moves the events of `batch` whose id another request is writing, or
    /// just wrote, to its skipped list; marks the rest in flight.
    fn reserve(&mut self, batch: &mut Batch) -> Vec<Skipped> {
        let mut raced = Vec::new();
        let events = std::mem::take(&mut batch.events);
        for e in events {
            if self.in_flight.contains(&e.event_id) || self.recent.contains(&e.event_id) {
                raced.push(Skipped { event_id: e.event_id, already: "queued".into(), at: None });
            } else {
                self.in_flight.insert(e.event_id.clone());
                batch.events.push(e);
            }
        }
        raced
    }

    /// Ends a reservation: `written` ids become recent, the others are free.
    fn finish(&mut self, events: &[Event], written: bool) {
        for e in events {
            self.in_flight.remove(&e.event_id);
            if written && self.recent.insert(e.event_id.clone()) {
                self.order.push_back(e.event_id.clone());
            }
        }
        while self.order.len() > Self::RECENT {
            if let Some(old) = self.order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }
}

/// The route's state: the service's [`Ctx`] and the [`Ledger`].
struct Ingest {
    ctx: Arc<Ctx>,
    ledger: Mutex<Ledger>,
}

/// `POST /v1/events` (wrap it in [`super::guard`] with `Scope::Ingest`).
pub fn routes(ctx: Arc<Ctx>) -> Router {
    let state = Arc::new(Ingest { ctx, ledger: Mutex::default() });
    Router::new().route(
        "/v1/events",
        post(move |req: Request| {
            let state = state.clone();
            async move { state.answer(req).await.into_response() }
        }),
    )
}

/// Counts every answer of `routes` by status class, the guard's 401 and
/// 403 included (so wrap the guarded routes).
pub fn counted(ctx: &Arc<Ctx>, routes: Router) -> Router {
    let metrics = ctx.metrics.clone();
    routes.route_layer(axum::middleware::from_fn(move |req: Request, next: Next| {
        let metrics = metrics.clone();
        async move {
            let response = next.run(req).await;
            metrics.ingest_request(response.status().as_u16());
            response
        }
    }))
}

/// What the body holds, from its `Content-Type` and `ce-*` headers.
///
/// Only the listed JSON types are taken: a browser may post `text/plain`,
/// `application/x-www-form-urlencoded` or `multipart/form-data` to any
/// site without asking first, so refusing them means a page the user
/// visits cannot queue events through a listener that is open to
/// loopback without a token. (Any other type, and any `ce-*` header,
/// makes a browser ask the service first, and the service grants no
/// cross-origin requests.)
fn kind_of(headers: &HeaderMap) -> Result<Kind, Answer> {
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("(not ASCII)"));
    let refuse = |what: String| {
        Answer::Unsupported(format!(
            "{what} is not accepted: send application/json (a Cortex event or an array of them), {} (a CloudEvent), {} (an array of CloudEvents), or a binary-mode CloudEvent (ce-* headers and a JSON body)",
            cloudevents::STRUCTURED,
            cloudevents::BATCH
        ))
    };
    if headers.contains_key("ce-specversion") {
        // Binary mode: the content type is the data's, and data is JSON.
        return match content_type {
            Some(ct) if !cloudevents::is_json_type(ct) => {
                Err(refuse(format!("binary-mode data of type {}", crate::text::quote(ct))))
            }
            _ => Ok(Kind::Binary),
        };
    }
    let Some(content_type) = content_type else { return Err(refuse("a body without a Content-Type".into())) };
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Ok(Kind::Cortex),
        cloudevents::STRUCTURED => Ok(Kind::Structured),
        cloudevents::BATCH => Ok(Kind::CloudBatch),
        _ => Err(refuse(format!("Content-Type {}", crate::text::quote(content_type)))),
    }
}

impl Ingest {
    async fn answer(self: Arc<Self>, req: Request) -> Answer {
        let (parts, body) = req.into_parts();
        let kind = match kind_of(&parts.headers) {
            Ok(k) => k,
            Err(answer) => return answer,
        };
        let config = self.ctx.dispatcher.config_slot().read_locked().clone();
        let limit = config.http.max_body_bytes;
        let body = match axum::body::to_bytes(body, limit).await {
            Ok(b) => b,
            Err(e) if is_length_limit(&e) => {
                return Answer::TooLarge(format!(
                    "the body is over the {limit} byte limit (http.max_body_bytes in cortex.toml); send fewer events per request"
                ));
            }
            Err(_) => return Answer::Rejected(vec!["(body): could not be read to its end".into()]),
        };
        let max_event = config.limits.max_event_bytes;
        let array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
        let single = matches!(kind, Kind::Binary) || (!array && matches!(kind, Kind::Cortex | Kind::Structured));
        if single && body.len() > max_event {
            return Answer::TooLarge(format!(
                "the event is {} bytes, over the {max_event} byte limit (limits.max_event_bytes in cortex.toml)",
                body.len()
            ));
        }
        let validator = config.validator();
        let this = self.clone();
        let headers = parts.headers;
        match tokio::task::spawn_blocking(move || this.queue(kind, &headers, &body, validator)).await {
            Ok(answer) => answer,
            Err(e) => Answer::Failed(format!("ingest failed: {e}; nothing was queued")),
        }
    }

    /// Validates, skips what is known, and durably queues the rest.
    fn queue(&self, kind: Kind, headers: &HeaderMap, body: &Bytes, validator: crate::event::Validator) -> Answer {
        let producer = Producer::new(self.ctx.queue.as_ref(), validator);
        let parsed = match kind {
            Kind::Binary => match binary_headers(headers) {
                Ok(pairs) => producer.parse_binary(pairs, body),
                Err(lines) => return Answer::Rejected(lines),
            },
            _ => {
                let Ok(text) = std::str::from_utf8(body) else {
                    return Answer::Rejected(vec!["(body): is not UTF-8 text".into()]);
                };
                match kind {
                    Kind::CloudBatch if !text.trim_start().starts_with('[') => {
                        return Answer::Rejected(vec![format!(
                            "(document): a CloudEvents batch ({}) is a JSON array",
                            cloudevents::BATCH
                        )]);
                    }
                    Kind::Cortex => producer.parse_json(text),
                    _ => producer.parse_cloudevents(text),
                }
            }
        };
        let mut batch = match parsed {
            Ok(b) => b,
            Err(e) => return rejected(e),
        };
        let raced = self.ledger.locked().reserve(&mut batch);
        // Returns once the events are durable, or none of them is queued.
        let written = self.ctx.queue.enqueue(&batch.events).context("failed to queue the events");
        self.ledger.locked().finish(&batch.events, written.is_ok());
        if let Err(e) = written {
            tracing::error!(error = %format!("{e:#}"), "ingest could not queue events");
            return Answer::Failed(format!("{e:#}; nothing was queued, send the request again"));
        }
        self.ctx.metrics.ingested(batch.events.len(), batch.skipped.len() + raced.len());
        let mut duplicates: Vec<Skipped> = batch
            .skipped
            .into_iter()
            .map(|d| Skipped { at: Some(d.at.to_string()), event_id: d.event_id, already: d.already })
            .collect();
        duplicates.extend(raced);
        Answer::Accepted(Accepted { queued: batch.events.into_iter().map(|e| e.event_id).collect(), duplicates })
    }
}

/// The headers of a binary-mode CloudEvent as text; a `ce-*` header that
/// is not visible ASCII is a problem (values are percent-encoded).
fn binary_headers(headers: &HeaderMap) -> Result<Vec<(&str, &str)>, Vec<String>> {
    let mut pairs = Vec::new();
    let mut problems = Vec::new();
    for (name, value) in headers {
        match value.to_str() {
            Ok(v) => pairs.push((name.as_str(), v)),
            Err(_) if name.as_str().starts_with("ce-") => {
                problems.push(format!("{name}: is not ASCII (percent-encode the value)"));
            }
            Err(_) => {}
        }
    }
    if problems.is_empty() { Ok(pairs) } else { Err(problems) }
}

/// A 400 from the producer's error: one line per problem, prefixed in a
/// batch by the item (`event 2: type: ...`).
fn rejected(e: anyhow::Error) -> Answer {
    if let Some(Invalid(problems)) = e.downcast_ref::<Invalid>() {
        return Answer::Rejected(problems.iter().map(ToString::to_string).collect());
    }
    if let Some(bad) = e.downcast_ref::<BadBatch>() {
        let lines =
            bad.items.iter().flat_map(|(at, Invalid(why))| why.iter().map(move |p| format!("{at}: {p}"))).collect();
        return Answer::Rejected(lines);
    }
    tracing::error!(error = %format!("{e:#}"), "ingest could not check the events");
    Answer::Failed(format!("{e:#}; nothing was queued, send the request again"))
}

/// Whether reading the body stopped at the size limit (the error
/// `axum::body::to_bytes` wraps), rather than on a broken connection.
fn is_length_limit(e: &axum::Error) -> bool {
    std::error::Error::source(e).is_some_and(|inner| inner.is::<http_body_util::LengthLimitError>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(axum::http::HeaderName::from_bytes(n.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_content_type_picks_the_kind_and_a_form_post_is_refused() {
        let kind = |pairs: &[(&str, &str)]| kind_of(&headers(pairs)).ok();
        assert_eq!(kind(&[("content-type", "application/json; charset=utf-8")]), Some(Kind::Cortex));
        assert_eq!(kind(&[("content-type", "Application/CloudEvents+JSON")]), Some(Kind::Structured));
        assert_eq!(kind(&[("content-type", cloudevents::BATCH)]), Some(Kind::CloudBatch));
        assert_eq!(kind(&[("ce-specversion", "1.0"), ("content-type", "application/json")]), Some(Kind::Binary));
        assert_eq!(kind(&[("ce-specversion", "1.0")]), Some(Kind::Binary));
        for refused in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
            assert!(matches!(kind_of(&headers(&[("content-type", refused)])), Err(Answer::Unsupported(_))));
        }
        assert!(matches!(kind_of(&HeaderMap::new()), Err(Answer::Unsupported(_))));
        let xml = headers(&[("ce-specversion", "1.0"), ("content-type", "application/xml")]);
        assert!(matches!(kind_of(&xml), Err(Answer::Unsupported(_))));
    }

    #[test]
    fn the_ledger_skips_ids_in_flight_or_just_written_and_frees_failed_ones() {
        let v = crate::event::Validator::default();
        let event = |id: &str| {
            v.validate(serde_json::json!({
                "event_id": id, "event_type": "task.created", "source": "t",
                "timestamp": "2026-12-01T10:00:00Z", "metadata": {"priority": "low"}, "payload": {}
            }))
            .unwrap()
        };
        let mut ledger = Ledger::default();
        let mut a = Batch { events: vec![event("evt_20261201_100000_aaaaaa")], skipped: Vec::new() };
        assert!(ledger.reserve(&mut a).is_empty());
        let mut b = Batch { events: vec![event("evt_20261201_100000_aaaaaa")], skipped: Vec::new() };
        assert_eq!(ledger.reserve(&mut b).len(), 1, "in flight");
        assert!(b.events.is_empty());
        ledger.finish(&a.events, true);
        let mut c = Batch { events: vec![event("evt_20261201_100000_aaaaaa")], skipped: Vec::new() };
        assert_eq!(ledger.reserve(&mut c).len(), 1, "just written");
        let mut d = Batch { events: vec![event("evt_20261201_100000_bbbbbb")], skipped: Vec::new() };
        assert!(ledger.reserve(&mut d).is_empty());
        ledger.finish(&d.events, false);
        let mut e = Batch { events: vec![event("evt_20261201_100000_bbbbbb")], skipped: Vec::new() };
        assert!(ledger.reserve(&mut e).is_empty(), "a failed write frees the id");
    }
}
