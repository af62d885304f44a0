//! The live dashboard of `cortex serve`: its JSON APIs (shapes, 404s,
//! security headers), the event stream and its filters, tokens and scopes
//! on a public listener, a browser that never reads (dispatch goes on), and
//! the page itself in a real headless Chromium driven through
//! chromedriver's W3C WebDriver API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cortex::dispatch::{Ending, Settled};
use cortex::service::http::api::{ApiError, HandlerView, Letter, Letters, QueueView, Retried, Session};
use cortex::service::{ReloadResult, Reloaded};
use cortex_tests::{HttpResponse, Root, Service, event, http_request, jsonl, metric, parse_metrics, wait_for};
use serde::de::DeserializeOwned;

mod browser;

const HANDLERS: &str = r#"
[handlers.sink]
component = "{noop}"
events = ["task.*", "worker.*"]

[handlers.counter]
component = "{refuse-payload}"
events = ["task.failed"]
"#;

fn get(svc: &Service, path: &str, token: Option<&str>) -> Result<HttpResponse> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    http_request(&svc.addr, "GET", path, &headers, b"")
}

/// GETs `path` and reads its JSON answer as `T`, requiring a 200.
fn read<T: DeserializeOwned>(svc: &Service, path: &str, token: Option<&str>) -> Result<T> {
    let r = get(svc, path, token)?;
    ensure!(r.status == 200, "{path} answered {}: {}", r.status, r.body);
    ensure!(r.header("content-type") == Some("application/json"), "{path}: {:?}", r.header("content-type"));
    serde_json::from_str(&r.body).with_context(|| format!("{path} answered {}", r.body))
}

/// A root with a handled and a dead-lettered event, served.
fn served() -> Result<(Root, Service, String, String)> {
    let root = Root::with_handlers(HANDLERS)?;
    let svc = root.serve()?;
    let ok = root.emit("task.created", "{}")?;
    let bad = root.emit("task.failed", r#"{"count": "<b id=pwn>many</b>"}"#)?;
    // Settled: archived and dead-lettered, and the claims gone (they go
    // last in a settlement).
    wait_for(Duration::from_secs(20), || {
        Ok(root.archived()?.len() == 1 && root.dead_letters()?.len() == 1 && root.claims().is_empty())
    })?;
    Ok((root, svc, ok, bad))
}

#[test]
fn the_json_apis_answer_typed_records_a_script_can_use() -> Result<()> {
    let (_root, svc, ok, bad) = served()?;

    let q: QueueView = read(&svc, "/api/queue", None)?;
    assert_eq!((q.queued, q.claimed, q.dead_letters, q.oldest_age_secs), (0, 0, 1, None));

    let status = get(&svc, "/api/status", None)?;
    assert_eq!(status.status, 200);
    let status: serde_json::Value = serde_json::from_str(&status.body)?;
    assert_eq!(status["dead_letters"], 1, "{status}");

    let letters: Letters = read(&svc, "/api/dead-letters", None)?;
    assert_eq!(letters.letters.len(), 1);
    let line = &letters.letters[0];
    assert_eq!((line.id.as_str(), line.event_type.as_deref()), (bad.as_str(), Some("task.failed")));
    let letter: Letter = read(&svc, &format!("/api/dead-letters/{bad}"), None)?;
    assert!(letter.record.reason.contains("payload.count must be a non-negative integer"), "{letter:?}");
    assert!(letter.text.contains("counter"), "the forensic text names the handler: {}", letter.text);
    let missing = get(&svc, "/api/dead-letters/evt_20250101_000000_nothere", None)?;
    assert_eq!(missing.status, 404);
    let e: ApiError = serde_json::from_str(&missing.body)?;
    assert!(e.error.contains("no dead letter"), "{}", e.error);

    // The per-handler window is updated by the stream's publisher, once per
    // flush (50 ms), not by the committer: give it a flush.
    let mut handlers: Vec<HandlerView> = Vec::new();
    wait_for(Duration::from_secs(5), || {
        handlers = read(&svc, "/api/handlers", None)?;
        Ok(handlers.iter().filter(|h| h.window.is_some()).count() == 2)
    })?;
    let by = |n: &str| handlers.iter().find(|h| h.name == n).cloned().context("handler listed");
    let (sink, counter) = (by("sink")?, by("counter")?);
    let (sw, cw) = (sink.window.context("sink ran")?, counter.window.context("counter ran")?);
    assert_eq!((sw.invocations, sw.failures), (1, 0));
    assert_eq!((cw.invocations, cw.failures), (1, 1));
    assert!(sw.p50_ms.is_some() && sw.p99_ms.is_some() && sw.rate_per_sec > 0.0);
    assert!(sink.version.is_some() && sink.sha256.is_some());

    let reloads: Vec<Reloaded> = read(&svc, "/api/reloads", None)?;
    assert_eq!(reloads[0].result, ReloadResult::Started);
    assert_eq!(reloads[0].handlers.len(), 2);

    let trace = get(&svc, &format!("/api/trace/{ok}"), None)?;
    assert_eq!(trace.status, 200, "{}", trace.body);
    let trace: serde_json::Value = serde_json::from_str(&trace.body)?;
    assert_eq!(trace["trees"][0]["event_id"], ok.as_str(), "{trace}");
    assert_eq!(trace["trees"][0]["handlers"][0]["handler"], "sink", "{trace}");
    let nothing = get(&svc, "/api/trace/evt_20250101_000000_nothere", None)?;
    assert_eq!(nothing.status, 404);

    // Loopback without a token: read, not write.
    let session: Session = read(&svc, "/api/session", None)?;
    assert_eq!(session.scopes, vec![cortex::config::Scope::Read]);
    let refused = http_request(&svc.addr, "POST", &format!("/api/dead-letters/{bad}/retry"), &[], b"")?;
    assert_eq!(refused.status, 401, "{}", refused.body);
    Ok(())
}

#[test]
fn every_answer_carries_a_restrictive_policy_and_the_page_is_compiled_in() -> Result<()> {
    let root = Root::with_handlers(HANDLERS)?;
    let svc = root.serve()?;
    for path in ["/", "/dashboard.js", "/dashboard.css", "/api/queue", "/api/trace/nothing"] {
        let r = get(&svc, path, None)?;
        let csp = r.header("content-security-policy").with_context(|| format!("{path}: no CSP"))?;
        assert!(csp.starts_with("default-src 'self'") && !csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{path}");
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{path}");
    }
    let page = get(&svc, "/", None)?;
    assert!(page.body.contains("<title>Cortex</title>") && page.body.contains("/dashboard.js"));
    let script = get(&svc, "/dashboard.js", None)?;
    assert!(script.body.contains("EventSource") && !script.body.contains("innerHTML"));
    Ok(())
}

/// Opens `/api/stream` on a raw connection and returns it, past the headers.
fn stream(svc: &Service, query: &str) -> Result<TcpStream> {
    let mut s = TcpStream::connect(&svc.addr)?;
    write!(s, "GET /api/stream{query} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n", svc.addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(s.read(&mut byte)? == 1, "the stream closed before its headers");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    ensure!(head.starts_with("HTTP/1.1 200") && head.contains("text/event-stream"), "{head}");
    Ok(s)
}

/// Reads the stream until `until` appears in what it sent; returns the
/// `settled` events sent so far.
fn read_until(s: &mut TcpStream, until: &str) -> Result<Vec<Settled>> {
    let mut text = String::new();
    let mut buf = [0u8; 8192];
    while !text.contains(until) {
        let n = s.read(&mut buf).context("reading the stream")?;
        ensure!(n > 0, "the stream ended before {until}:\n{text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // Chunk-size lines sit between events; every event's data is one line.
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).with_context(|| format!("not a settled event: {d}")))
        .collect()
}

#[test]
fn the_stream_sends_settled_events_filtered_by_type_source_and_correlation_id() -> Result<()> {
    let root = Root::with_handlers(HANDLERS)?;
    let svc = root.serve()?;
    let mut all = stream(&svc, "")?;
    let mut typed = stream(&svc, "?type=worker.%2A")?;
    let mut sourced = stream(&svc, "?source=billing")?;
    let mut correlated = stream(&svc, "?correlation_id=c-7")?;
    let ids = root.batch(&jsonl([
        event("task.created").source("api").correlation("c-7"),
        event("worker.heartbeat").source("api").payload(serde_json::json!({"worker_id": "w-1"})),
        event("task.created").source("billing"),
        event("task.failed").source("api").payload(serde_json::json!({"count": -1})),
    ]))?;
    let seen = read_until(&mut all, &ids[3])?;
    let endings: Vec<(&str, Ending)> = seen.iter().map(|s| (s.event_id.as_str(), s.ending)).collect();
    assert_eq!(endings.len(), 4, "{endings:?}");
    assert!(endings.contains(&(ids[0].as_str(), Ending::Handled)));
    assert!(endings.contains(&(ids[3].as_str(), Ending::DeadLettered)));
    let failed = seen.iter().find(|s| s.event_id == ids[3]).context("the failed event")?;
    let counter = failed.handlers.iter().find(|h| h.handler == "counter").context("counter ran")?;
    assert_eq!(counter.fault, Some(cortex::records::FaultKind::Refused));
    let first = &seen.iter().find(|s| s.event_id == ids[0]).context("the first event")?;
    assert_eq!((first.source.as_str(), first.correlation_id.as_deref()), ("api", Some("c-7")));
    assert!(first.latency_ms > 0.0 && first.handlers[0].handler == "sink");

    // Each filtered stream saw its one event: the next that passes its
    // filter must be the marker emitted after.
    let markers = root.batch(&jsonl([event("worker.started")
        .source("billing")
        .correlation("c-7")
        .payload(serde_json::json!({"worker_id": "w-2"}))]))?;
    for (s, want) in [(&mut typed, &ids[1]), (&mut sourced, &ids[2]), (&mut correlated, &ids[0])] {
        let got: Vec<String> = read_until(s, &markers[0])?.into_iter().map(|e| e.event_id).collect();
        assert_eq!(got, vec![want.clone(), markers[0].clone()]);
    }
    Ok(())
}

/// Starts `cortex serve` on every interface (a public listener), with
/// `env` set; the returned [`Service`] talks to it over loopback.
fn serve_public(root: &Root, env: &[(&str, &str)]) -> Result<Service> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let log = root.scratch().join(format!("serve-{port}.log"));
    let mut cmd = root.command();
    cmd.args(["serve", "--listen", &format!("0.0.0.0:{port}")]);
    cmd.env_remove(cortex::config::TOKEN_ENV).envs(env.iter().copied());
    let child = cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log)?).spawn()?;
    let mut svc = Service { child, addr: format!("127.0.0.1:{port}"), log };
    let ready = wait_for(Duration::from_secs(30), || {
        if svc.child.try_wait()?.is_some() {
            bail!("serve exited");
        }
        Ok(cortex_tests::http_get(&svc.addr, "/readyz").map(|(s, _)| s == 200).unwrap_or(false))
    });
    ready.map_err(|e| anyhow::anyhow!("{e}: serve never became ready:\n{}", svc.log_text()))?;
    Ok(svc)
}

#[test]
fn a_public_listener_needs_a_token_and_a_retry_needs_the_write_scope() -> Result<()> {
    let root = Root::with_handlers(HANDLERS)?;
    root.configure(
        r#"
[http.tokens.viewer]
value = "viewer-token-0123456789"
scopes = ["read"]

[http.tokens.operator]
value = "operator-token-0123456789"
scopes = ["read", "write"]
"#,
    )?;
    let svc = serve_public(&root, &[])?;
    let bad = root.emit("task.failed", r#"{"count": "x"}"#)?;
    wait_for(Duration::from_secs(20), || Ok(root.dead_letters()?.len() == 1))?;
    let (viewer, operator) = (Some("viewer-token-0123456789"), Some("operator-token-0123456789"));

    // The page holds no data: open. Every API needs a token.
    assert_eq!(get(&svc, "/", None)?.status, 200);
    for path in ["/api/queue", "/api/status", "/api/dead-letters", "/api/handlers", "/api/reloads", "/api/stream"] {
        let r = get(&svc, path, None)?;
        assert_eq!(r.status, 401, "{path} without a token: {}", r.body);
        assert!(r.body.contains("bearer token"), "{path}: {}", r.body);
        assert_eq!(get(&svc, path, Some("not-a-token"))?.status, 401, "{path} with a wrong token");
    }
    let q: QueueView = read(&svc, "/api/queue", viewer)?;
    assert_eq!(q.dead_letters, 1);
    let q: QueueView = read(&svc, "/api/queue?access_token=viewer-token-0123456789", None)?;
    assert_eq!(q.dead_letters, 1);
    let session: Session = read(&svc, "/api/session", operator)?;
    assert!(session.scopes.contains(&cortex::config::Scope::Write));

    let path = format!("/api/dead-letters/{bad}/retry");
    let as_viewer =
        http_request(&svc.addr, "POST", &path, &[("Authorization", "Bearer viewer-token-0123456789")], b"")?;
    assert_eq!(as_viewer.status, 403, "{}", as_viewer.body);
    let in_query =
        http_request(&svc.addr, "POST", &format!("{path}?access_token=operator-token-0123456789"), &[], b"")?;
    assert_eq!(in_query.status, 401, "a query token counts on GET only");
    let auth = ("Authorization", "Bearer operator-token-0123456789");
    let cross_site = http_request(&svc.addr, "POST", &path, &[auth, ("Origin", "https://elsewhere.example")], b"")?;
    assert_eq!(cross_site.status, 403, "{}", cross_site.body);
    assert_eq!(root.dead_letters()?.len(), 1, "nothing refused changed the root");
    let done = http_request(&svc.addr, "POST", &path, &[auth], b"")?;
    assert_eq!(done.status, 200, "{}", done.body);
    let retried: Retried = serde_json::from_str(&done.body)?;
    assert_eq!(retried.retried, vec![bad.clone()]);
    // It fails again (same payload) and comes back, a second attempt in its record.
    wait_for(Duration::from_secs(20), || {
        Ok(root.dead_letters()?.iter().any(|d| d["event"]["metadata"]["dlq_retry"]["count"] == 1))
    })?;
    Ok(())
}

#[test]
fn a_client_that_never_reads_does_not_stall_dispatch() -> Result<()> {
    let root = Root::with_handlers(HANDLERS)?;
    let svc = root.serve()?;
    // Connected, then never read: their socket buffers fill (a few MB),
    // then they fall more than 1,024 events behind and are dropped.
    let stalled: Vec<TcpStream> = (0..3).map(|_| stream(&svc, "")).collect::<Result<_>>()?;
    let n = 25_000;
    let lines: Vec<_> =
        (0..n).map(|i| event("worker.heartbeat").payload(serde_json::json!({"worker_id": format!("w-{i}")}))).collect();
    for chunk in lines.chunks(5000) {
        root.batch(&jsonl(chunk.iter().cloned()))?;
    }
    // Listing the queue is cheap; parsing the archive each poll is not.
    wait_for(Duration::from_secs(120), || Ok(root.files("events/queue").is_empty() && root.claims().is_empty()))?;
    assert_eq!(root.archived()?.len(), n);
    // The service still streams to a client that reads.
    let mut fresh = stream(&svc, "?type=task.*")?;
    let id = root.emit("task.created", "{}")?;
    read_until(&mut fresh, &id)?;
    let samples = parse_metrics(&svc.metrics()?)?;
    let clients = metric(&samples, &["cortex_dashboard_stream_clients"]).context("clients gauge")?;
    let dropped = metric(&samples, &["cortex_dashboard_stream_dropped_clients_total"]).context("dropped counter")?;
    assert!(clients >= 1.0);
    assert_eq!(dropped, 3.0, "the three that never read are counted dropped");
    drop(stalled);
    Ok(())
}
