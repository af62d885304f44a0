//! The live dashboard on the service's listener: `GET /` serves a page
//! whose HTML, CSS and JavaScript are compiled into the binary (no CDN, no
//! framework: it works offline), which reads the JSON APIs of [`super::api`]
//! and follows the event stream of [`super::stream`].
//!
//! The page and its assets hold no data and are open to all; every API
//! behind them needs a scope (reads [`Scope::Read`], the dead-letter retry
//! [`Scope::Write`]). A user gives the page a token by opening
//! `/?access_token=TOKEN`: the page keeps it in `sessionStorage`, takes it
//! out of the address bar, sends it as `Authorization: Bearer` on `fetch`,
//! and as the `access_token` query parameter on the `EventSource` (which
//! cannot send headers).
//!
//! Every response of these routes carries a restrictive
//! Content-Security-Policy (`default-src 'self'`, no inline script),
//! `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` (a
//! token in an address never leaks to another site) and `Cache-Control:
//! no-store`. A write whose `Origin` is another site is refused, so a page
//! elsewhere cannot make a browser on this host retry a dead letter.

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{Ctx, api, guard};
use crate::config::Scope;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// What the page may load and from where: itself, only.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page, its assets and its APIs, each behind its scope.
pub fn routes(ctx: Arc<Ctx>) -> Router {
    let page = Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/dashboard.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/dashboard.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }));
    Router::new()
        .merge(page)
        .merge(guard(&ctx, Scope::Read, api::reads(ctx.clone())))
        .merge(guard(&ctx, Scope::Write, api::writes(ctx.clone())))
        .route_layer(axum::middleware::from_fn(harden))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Refuses cross-site writes and adds the security headers.
async fn harden(req: Request, next: Next) -> Response {
    let cross_site = req.method() != Method::GET && req.method() != Method::HEAD && !same_origin(req.headers());
    let mut response = if cross_site {
        let error = api::ApiError {
            error: "a write from another site's page is refused; use the dashboard on this host, or a script without an Origin header".into(),
        };
        api::json(StatusCode::FORBIDDEN, &error)
    } else {
        next.run(req).await
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Whether a request's `Origin` (if any) is this listener's own address,
/// as its `Host` header names it. Scripts send no `Origin`.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.to_str().ok().and_then(|o| o.split_once("://")).map(|(_, rest)| rest);
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_this_listeners_own_pages_or_scripts_may_write() {
        assert!(same_origin(&headers(None, "127.0.0.1:9464")));
        assert!(same_origin(&headers(Some("http://127.0.0.1:9464"), "127.0.0.1:9464")));
        assert!(!same_origin(&headers(Some("https://evil.example"), "127.0.0.1:9464")));
        assert!(!same_origin(&headers(Some("null"), "127.0.0.1:9464")));
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_writes_no_event_text_as_html() {
        for text in [INDEX, SCRIPT, STYLE] {
            assert!(!text.contains("http://") && !text.contains("https://"), "an outside address in an asset");
        }
        assert!(
            !SCRIPT.contains("innerHTML") && !SCRIPT.contains("outerHTML") && !SCRIPT.contains("insertAdjacentHTML")
        );
        assert!(
            !INDEX.contains("<script>") && !INDEX.contains(" style="),
            "inline script or style would need the CSP relaxed"
        );
    }
}
