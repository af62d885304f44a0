//! The service's HTTP listener: the probes (`/healthz`, `/readyz`, open to
//! all), `/metrics`, and whatever else the service serves, each route
//! behind the scope it needs ([`auth`]).
//!
//! Routes are grouped by job, one module each, and merged in [`app`]; every
//! group gets the shared [`Ctx`] and says which [`Scope`] each route needs
//! through [`guard`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::config::Scope;
use crate::dispatch::{Broken, Dispatcher};
use crate::layout::Layout;
use crate::lock::RecoverRw;
use crate::metrics::Metrics;
use crate::queue::now_us;
use crate::store::Store;

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod ingest;
pub mod stream;
pub use auth::{Auth, Denied};

/// What the routes share: the root, the queue, the dispatcher (its live
/// config, handlers and metrics), readiness and who may do what.
pub struct Ctx {
    pub layout: Layout,
    pub queue: Arc<dyn Store>,
    pub dispatcher: Arc<Dispatcher>,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    pub broken: Broken,
    pub auth: Auth,
    /// The latest reloads (the dashboard's `/api/reloads`).
    pub reloads: Arc<super::ReloadLog>,
    /// Settled events, live, and the per-handler window (the dashboard).
    pub feed: Arc<stream::Feed>,
}

/// Every route of the listener.
pub fn app(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .merge(probes(ctx.clone()))
        .merge(guard(&ctx, Scope::Read, metrics(ctx.clone())))
        .merge(dashboard::routes(ctx.clone()))
        .merge(ingest::counted(&ctx, guard(&ctx, Scope::Ingest, ingest::routes(ctx.clone()))))
}

/// Lets a request through `routes` only with `scope` (see [`Auth::check`]).
pub fn guard(ctx: &Arc<Ctx>, scope: Scope, routes: Router) -> Router {
    let ctx = ctx.clone();
    routes.route_layer(axum::middleware::from_fn(move |req: Request, next: Next| {
        let ctx = ctx.clone();
        async move {
            match ctx.auth.check(req.method(), req.uri(), req.headers(), scope) {
                Ok(_) => next.run(req).await,
                Err(denied) => denied.into_response(),
            }
        }
    }))
}

/// `/healthz` and `/readyz`: open, so a load balancer or systemd can probe
/// without a token; they say nothing but whether the service serves.
fn probes(ctx: Arc<Ctx>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" })).route(
        "/readyz",
        get(move || {
            // Not ready while the store is unreachable (a Redis server
            // down): nothing claimed, nothing accepted for ingest.
            let store_down = (!ctx.queue.reachable()).then(|| ctx.queue.describe());
            let ready = ctx.ready.load(Ordering::Relaxed);
            // Serving, but some handlers do not load: still ready (the
            // others serve), with the detail for whoever looks.
            let detail: String = ctx
                .broken
                .read_locked()
                .iter()
                .map(|(name, why)| format!("handler {name} does not load: {}\n", crate::text::escape(why)))
                .collect();
            async move {
                if let Some(store) = store_down {
                    return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: the store {store} is unreachable\n"));
                }
                match (ready, detail.is_empty()) {
                    (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string()),
                    (true, true) => (StatusCode::OK, "ready\n".to_string()),
                    (true, false) => (StatusCode::OK, format!("ready (degraded)\n{detail}")),
                }
            }
        }),
    )
}

/// `/metrics`, in the OpenMetrics text format, with the queue's depth read
/// at scrape time.
fn metrics(ctx: Arc<Ctx>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let ctx = ctx.clone();
            async move {
                let depth = ctx.queue.depth();
                ctx.metrics.store_reachable(ctx.queue.reachable());
                match depth {
                    Ok(d) => {
                        let age = d.oldest.as_ref().map_or(0, |o| now_us().saturating_sub(o.enqueued_us) / 1000);
                        ctx.metrics.queue(&d, age);
                    }
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "could not read the queue depth"),
                }
                let body: Response = (
                    [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    ctx.metrics.encode(),
                )
                    .into_response();
                body
            }
        }),
    )
}
