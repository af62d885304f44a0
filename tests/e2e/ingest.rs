//! HTTP ingest: `POST /v1/events` on `cortex serve` queues Cortex JSON and
//! CloudEvents (structured, binary, batch) through the producer's path,
//! answers 202 only once they are durable, refuses bad bodies line by line
//! with nothing queued, holds the size limits, refuses other content types,
//! asks for a token with the ingest scope, and queues an id once.

use anyhow::{Context, Result};
use cortex_tests::{HttpResponse, Root, Service, http_request, metric, parse_metrics, wait_for};
use serde_json::{Value, json};
use std::time::Duration;

const SINK: &str = "[handlers.sink]\ncomponent = \"{noop}\"\nevents = [\"*\"]\nmax_attempts = 1\n";
const INGEST_TOKEN: &str = "ingest-token-0123456789";
const READ_TOKEN: &str = "read-only-token-0123456789";
const TOKENS: &str = "\n[http.tokens.ci]\nvalue = \"ingest-token-0123456789\"\nscopes = [\"ingest\"]\n\
    \n[http.tokens.dash]\nvalue = \"read-only-token-0123456789\"\nscopes = [\"read\"]\n";

/// A served root with the no-op sink, the two tokens and `max_event_bytes`;
/// `extra` is more TOML.
fn serve_with(max_event_bytes: usize, extra: &str) -> Result<(Root, Service)> {
    let root = Root::with_handlers(SINK)?;
    let path = root.join("cortex.toml");
    let text = std::fs::read_to_string(&path)?
        .replace("max_event_bytes = 1048576", &format!("max_event_bytes = {max_event_bytes}"));
    std::fs::write(&path, text)?;
    root.configure(&format!("{TOKENS}{extra}"))?;
    let svc = root.serve()?;
    Ok((root, svc))
}

fn serve(extra: &str) -> Result<(Root, Service)> {
    serve_with(1048576, extra)
}

fn post(svc: &Service, content_type: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<HttpResponse> {
    let auth = format!("Bearer {INGEST_TOKEN}");
    let mut all = vec![("Authorization", auth.as_str())];
    if !content_type.is_empty() {
        all.push(("Content-Type", content_type));
    }
    all.extend_from_slice(headers);
    http_request(&svc.addr, "POST", "/v1/events", &all, body)
}

/// The ids a 202 queued.
fn queued(r: &HttpResponse) -> Result<Vec<String>> {
    anyhow::ensure!(r.status == 202, "expected 202, got {}: {}", r.status, r.body);
    anyhow::ensure!(r.header("content-type") == Some("application/json"), "{:?}", r.headers);
    let v: Value = serde_json::from_str(&r.body)?;
    Ok(v["queued"].as_array().context("queued")?.iter().filter_map(|i| i.as_str().map(str::to_string)).collect())
}

/// The archived event of `id`, once the service has handled it.
fn handled(root: &Root, id: &str) -> Result<Value> {
    wait_for(Duration::from_secs(20), || Ok(root.archived_record(id)?.is_some()))
        .with_context(|| format!("{id} was never archived"))?;
    Ok(root.archived_record(id)?.context("archived")?["event"].clone())
}

/// Events the root ever logged as queued (every category's journal).
fn logged(root: &Root) -> Result<usize> {
    let mut n = 0;
    for f in root.files("events").iter().filter(|f| f.ends_with("-events.jsonl")) {
        n += root.log(f.trim_end_matches("-events.jsonl"))?.len();
    }
    Ok(n)
}

fn scan() -> Value {
    json!({
        "specversion": "1.0", "id": "A234-1234-1234", "source": "https://ci.example.com/scanner",
        "type": "security.scan_completed", "time": "2026-11-30T08:00:00Z", "subject": "build-77",
        "cortexpriority": "high", "cortextags": "ci,nightly", "comexampleteam": "platform",
        "data": {"scanner": "trivy", "findings": {"high": 2}}
    })
}

#[test]
fn every_body_kind_is_queued_then_dispatched_with_its_mapped_fields() -> Result<()> {
    let (root, svc) = serve("")?;

    // Cortex JSON, partial: the id, timestamp and metadata are filled in.
    let one = json!({"event_type": "task.created", "source": "planner", "correlation_id": "c-1",
                     "priority": "high", "tags": ["http"], "payload": {"task_id": "t-1"}});
    let id = queued(&post(&svc, "application/json; charset=utf-8", &[], one.to_string().as_bytes())?)?;
    let e = handled(&root, &id[0])?;
    assert_eq!((e["event_type"].as_str(), e["source"].as_str()), (Some("task.created"), Some("planner")));
    assert_eq!((e["correlation_id"].as_str(), e["metadata"]["priority"].as_str()), (Some("c-1"), Some("high")));
    assert_eq!((e["metadata"]["tags"][0].as_str(), e["payload"]["task_id"].as_str()), (Some("http"), Some("t-1")));

    // A Cortex batch: a JSON array, one given id kept.
    let batch = json!([
        {"event_type": "task.created", "source": "planner", "payload": {"n": 1}},
        {"event_id": "evt_20261201_090000_cortex", "event_type": "task.created", "source": "planner",
         "timestamp": "2026-12-01T09:00:00Z", "metadata": {"priority": "low"}, "payload": {"n": 2}}
    ]);
    let ids = queued(&post(&svc, "application/json", &[], batch.to_string().as_bytes())?)?;
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[1], "evt_20261201_090000_cortex");
    assert_eq!(handled(&root, &ids[1])?["payload"]["n"], 2);
    assert_eq!(handled(&root, &ids[0])?["payload"]["n"], 1);

    // Structured mode.
    let id = queued(&post(&svc, "application/cloudevents+json", &[], scan().to_string().as_bytes())?)?;
    assert!(id[0].starts_with("evt_20261130_080000_"), "{id:?}");
    let e = handled(&root, &id[0])?;
    assert_eq!(e["source"], "https://ci.example.com/scanner");
    assert_eq!(
        (e["correlation_id"].as_str(), e["timestamp"].as_str()),
        (Some("build-77"), Some("2026-11-30T08:00:00Z"))
    );
    assert_eq!(e["metadata"]["tags"], json!(["ci", "nightly"]));
    assert_eq!(e["metadata"]["cloudevent"]["extensions"]["comexampleteam"], "platform");
    assert_eq!(e["payload"]["findings"]["high"], 2);

    // Binary mode: attributes in ce-* headers (percent-encoded), data in the body.
    let headers = [
        ("ce-specversion", "1.0"),
        ("ce-id", "hb-77"),
        ("ce-source", "/workers/w%201"),
        ("ce-type", "worker.heartbeat"),
        ("ce-subject", "run-5"),
        ("ce-cortexpriority", "low"),
    ];
    let id = queued(&post(&svc, "application/json", &headers, br#"{"worker_id": "w 1"}"#)?)?;
    let e = handled(&root, &id[0])?;
    assert_eq!((e["event_type"].as_str(), e["source"].as_str()), (Some("worker.heartbeat"), Some("/workers/w 1")));
    assert_eq!((e["correlation_id"].as_str(), e["metadata"]["priority"].as_str()), (Some("run-5"), Some("low")));
    assert_eq!(e["metadata"]["cloudevent"]["id"], "hb-77");
    assert_eq!(e["payload"]["worker_id"], "w 1");

    // A CloudEvents batch.
    let batch = json!([
        {"specversion": "1.0", "id": "evt_20261201_100000_batch1", "source": "/planner", "type": "task.created",
         "time": "2026-12-01T10:00:00Z", "data": {"task_id": "t-9"}},
        {"specversion": "1.0", "id": "b-2", "source": "/workers/w-2", "type": "worker.heartbeat"}
    ]);
    let ids = queued(&post(&svc, "application/cloudevents-batch+json", &[], batch.to_string().as_bytes())?)?;
    assert_eq!(ids[0], "evt_20261201_100000_batch1");
    assert_eq!(handled(&root, &ids[0])?["payload"]["task_id"], "t-9");
    assert_eq!(handled(&root, &ids[1])?["source"], "/workers/w-2");

    let samples = parse_metrics(&svc.metrics()?)?;
    assert_eq!(metric(&samples, &["cortex_ingest_requests_total", "code=\"2xx\""]), Some(5.0));
    assert_eq!(metric(&samples, &["cortex_ingested_events_total"]), Some(7.0));
    Ok(())
}

#[test]
fn bad_bodies_get_a_line_per_problem_and_nothing_is_queued() -> Result<()> {
    let (root, svc) = serve_with(600, "")?;
    // One envelope: every field problem on its own line.
    let bad = json!({"event_type": "no.such_type", "source": "", "priority": "urgent"});
    let r = post(&svc, "application/json", &[], bad.to_string().as_bytes())?;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/plain")), "{:?}", r.headers);
    let lines: Vec<&str> = r.body.lines().collect();
    assert_eq!(lines.len(), 3, "{}", r.body);
    for want in ["event_type: unknown event type", "source: must not be empty", "metadata.priority: "] {
        assert!(lines.iter().any(|l| l.starts_with(want)), "no {want:?} line in {}", r.body);
    }
    // A CloudEvents batch with one bad element: the element and each of
    // its attributes named; the good element is not queued either.
    let batch = json!([
        scan(),
        {"specversion": "1.0", "id": "x", "source": "s", "type": "nosuch.thing", "cortexpriority": "urgent"}
    ]);
    let r = post(&svc, "application/cloudevents-batch+json", &[], batch.to_string().as_bytes())?;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body.lines().collect::<Vec<_>>().len(), 2, "{}", r.body);
    assert!(r.body.lines().all(|l| l.starts_with("event 2: ")), "{}", r.body);
    assert!(r.body.contains("event 2: type: ") && r.body.contains("event 2: cortexpriority: "), "{}", r.body);
    // Malformed JSON, a batch that is not an array, a binary event with a bad header.
    let r = post(&svc, "application/cloudevents+json", &[], b"{\"specversion\": ")?;
    assert!(r.status == 400 && r.body.starts_with("(document): malformed JSON"), "{} {}", r.status, r.body);
    let r = post(&svc, "application/cloudevents-batch+json", &[], scan().to_string().as_bytes())?;
    assert!(r.status == 400 && r.body.contains("is a JSON array"), "{} {}", r.status, r.body);
    let r = post(&svc, "", &[("ce-specversion", "1.0"), ("ce-id", "%zz")], b"")?;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.lines().any(|l| l.starts_with("ce-id: ")), "{}", r.body);

    // 413: one event over limits.max_event_bytes.
    let big = json!({"event_type": "task.created", "source": "planner", "payload": {"blob": "x".repeat(700)}});
    let r = post(&svc, "application/json", &[], big.to_string().as_bytes())?;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("limits.max_event_bytes"), "{}", r.body);
    // 415: a form post or plain text, as a browser could send cross-site.
    let event = json!({"event_type": "task.created", "source": "planner"}).to_string();
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let r = post(&svc, ct, &[], event.as_bytes())?;
        assert_eq!(r.status, 415, "{ct}: {}", r.body);
        assert!(r.body.contains("application/json"), "{}", r.body);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((logged(&root)?, root.archived()?.len()), (0, 0), "something was queued");
    let samples = parse_metrics(&svc.metrics()?)?;
    assert_eq!(metric(&samples, &["cortex_ingest_requests_total", "code=\"4xx\""]), Some(8.0));
    assert_eq!(metric(&samples, &["cortex_ingest_requests_total", "code=\"2xx\""]), None);
    drop(svc);

    // 413: a batch over http.max_body_bytes.
    let (_root, svc) = serve("\n[http]\nmax_body_bytes = 1024\n")?;
    let batch: Vec<Value> =
        (0..20).map(|i| json!({"event_type": "task.created", "source": "p", "payload": {"n": i}})).collect();
    let r = post(&svc, "application/json", &[], serde_json::to_string(&batch)?.as_bytes())?;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("http.max_body_bytes"), "{}", r.body);
    Ok(())
}

#[test]
fn ingest_needs_a_token_with_its_scope_unless_loopback_opens_it() -> Result<()> {
    let (root, svc) = serve("")?;
    let event = json!({"event_type": "task.created", "source": "planner"}).to_string();
    let json_ct = ("Content-Type", "application/json");
    let r = http_request(&svc.addr, "POST", "/v1/events", &[json_ct], event.as_bytes())?;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.header("www-authenticate").is_some_and(|h| h.starts_with("Bearer")), "{:?}", r.headers);
    let read = format!("Bearer {READ_TOKEN}");
    let r = http_request(&svc.addr, "POST", "/v1/events", &[json_ct, ("Authorization", &read)], event.as_bytes())?;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("ingest"), "{}", r.body);
    let wrong = format!("Bearer {INGEST_TOKEN}x");
    let r = http_request(&svc.addr, "POST", "/v1/events", &[json_ct, ("Authorization", &wrong)], event.as_bytes())?;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(queued(&post(&svc, "application/json", &[], event.as_bytes())?)?.len(), 1);
    assert_eq!(logged(&root)?, 1);
    drop(svc);

    // loopback_scopes with "ingest": a loopback listener takes it without a token.
    let root = Root::with_handlers(SINK)?;
    root.configure("\n[http]\nloopback_scopes = [\"read\", \"ingest\"]\n")?;
    let svc = root.serve()?;
    let r = http_request(&svc.addr, "POST", "/v1/events", &[json_ct], event.as_bytes())?;
    assert_eq!(queued(&r)?.len(), 1);
    Ok(())
}

#[test]
fn an_id_sent_twice_or_at_once_is_queued_once() -> Result<()> {
    let (root, svc) = serve("")?;
    let body = scan().to_string();
    let first = queued(&post(&svc, "application/cloudevents+json", &[], body.as_bytes())?)?;
    let again = post(&svc, "application/cloudevents+json", &[], body.as_bytes())?;
    assert!(queued(&again)?.is_empty(), "{}", again.body);
    let reply: Value = serde_json::from_str(&again.body)?;
    assert_eq!(reply["duplicates"][0]["event_id"], first[0].as_str());
    assert!(reply["duplicates"][0]["already"].is_string(), "{reply}");

    // The same new id from eight clients at once.
    let ce = json!({"specversion": "1.0", "id": "race-1", "source": "/racer", "type": "worker.heartbeat",
                    "time": "2026-12-01T11:00:00Z"})
    .to_string();
    let svc = std::sync::Arc::new(svc);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (svc, ce) = (svc.clone(), ce.clone());
            std::thread::spawn(move || {
                post(&svc, "application/cloudevents+json", &[], ce.as_bytes()).and_then(|r| queued(&r))
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in threads {
        ids.extend(t.join().map_err(|_| anyhow::anyhow!("client panicked"))??);
    }
    assert_eq!(ids.len(), 1, "queued {ids:?}");
    handled(&root, &ids[0])?;
    std::thread::sleep(Duration::from_millis(300));
    let records = root.archived()?.into_iter().filter(|r| r["event"]["event_id"] == ids[0].as_str()).count();
    assert_eq!(records, 1);
    assert_eq!(logged(&root)?, 2);
    Ok(())
}

#[test]
fn a_public_listener_without_a_token_refuses_to_start() -> Result<()> {
    let root = Root::with_handlers(SINK)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let out = root
        .command()
        .env_remove("CORTEX_HTTP_TOKEN")
        .args(["serve", "--listen", &format!("0.0.0.0:{port}")])
        .stdin(std::process::Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve started: {stderr}");
    assert!(stderr.contains("without a token") && stderr.contains("CORTEX_HTTP_TOKEN"), "{stderr}");
    Ok(())
}
