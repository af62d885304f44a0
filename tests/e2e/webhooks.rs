//! Outbound webhooks against receivers on loopback, run inside the test
//! (std `TcpListener` threads): signatures and bodies, retries with one
//! `webhook-id`, a hanging endpoint beside a healthy one, `410 Gone`,
//! dead letters and `dlq retry`, and `kill -9` during delivery.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use cortex::webhooks::sign::{Secret, TOLERANCE_SECS};
use cortex::webhooks::webhook_id;
use cortex_tests::{Root, metric, parse_metrics, wait_for};
use serde_json::Value;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_VAR: &str = "CORTEX_TEST_WEBHOOK_SECRET";
const LONG: Duration = Duration::from_secs(60);

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    timestamp: String,
    signature: Option<String>,
    content_type: String,
    body: Vec<u8>,
    /// The status it was answered with; 0 while unanswered.
    answered: u16,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// What a receiver does with its `n`th request (0-based).
enum Reply {
    Status(u16),
    /// Never answers.
    Hang,
    /// Answers `200` once the flag is set.
    Hold(Arc<AtomicBool>),
}

/// A webhook receiver on 127.0.0.1.
struct Receiver {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Receiver {
    fn start(behave: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (behave, count) = (Arc::new(behave), Arc::new(AtomicUsize::new(0)));
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (behave, count, record) = (behave.clone(), count.clone(), record.clone());
                std::thread::spawn(move || {
                    let _ = serve_one(stream, &*behave, &count, &record);
                });
            }
        });
        Ok(Receiver { addr, seen })
    }

    fn url(&self) -> String {
        format!("http://{}/hook?token=not-logged", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests answered `status`.
    fn answered(&self, status: u16) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.answered == status).collect()
    }
}

fn serve_one(
    stream: std::net::TcpStream,
    behave: &(dyn Fn(usize) -> Reply + Send + Sync),
    count: &AtomicUsize,
    record: &Mutex<Vec<Seen>>,
) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut headers = BTreeMap::new();
    let mut line = String::new();
    reader.read_line(&mut line)?;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let n = count.fetch_add(1, Ordering::SeqCst);
    let at = {
        let mut r = record.lock().unwrap();
        r.push(Seen {
            id: headers.get("webhook-id").cloned().unwrap_or_default(),
            timestamp: headers.get("webhook-timestamp").cloned().unwrap_or_default(),
            signature: headers.get("webhook-signature").cloned(),
            content_type: headers.get("content-type").cloned().unwrap_or_default(),
            body,
            answered: 0,
        });
        r.len() - 1
    };
    let status = match behave(n) {
        Reply::Status(s) => s,
        Reply::Hang => {
            std::thread::sleep(Duration::from_secs(600));
            return Ok(());
        }
        Reply::Hold(flag) => {
            while !flag.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            200
        }
    };
    let mut stream = stream;
    write!(stream, "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")?;
    stream.flush()?;
    record.lock().unwrap()[at].answered = status;
    Ok(())
}

/// A root without handlers (every event is archived unhandled) whose
/// config also holds `webhooks`.
fn root_with(webhooks: &str) -> Result<Root> {
    let root = Root::with_handlers("")?;
    let text = std::fs::read_to_string(root.join("cortex.toml"))?
        .replace("custom_types = []", "custom_types = [\"hook.ping\", \"other.thing\"]");
    std::fs::write(root.join("cortex.toml"), format!("{text}\n{webhooks}"))?;
    Ok(root)
}

fn samples(svc: &cortex_tests::Service) -> Result<Vec<(String, f64)>> {
    parse_metrics(&svc.metrics()?)
}

fn outbox(root: &Root, endpoint: &str) -> Vec<String> {
    root.files(&format!("events/outbox/{endpoint}")).into_iter().filter(|f| f.starts_with("msg_")).collect()
}

#[test]
fn deliveries_are_signed_cloudevents_with_a_stable_id_and_data_goes_as_is() -> Result<()> {
    let signed = Receiver::start(|_| Reply::Status(204))?;
    let slack = Receiver::start(|_| Reply::Status(200))?;
    let root = root_with(&format!(
        "[webhooks.sink]\nurl = \"{}\"\nevents = [\"hook.*\"]\nsecret_env = \"{SECRET_VAR}\"\n\n\
         [webhooks.slack]\nurl = \"{}\"\nevents = [\"hook.ping\"]\nformat = \"data\"\n",
        signed.url(),
        slack.url()
    ))?;
    // A secret that is not there stops the start, naming the variable.
    let out = root.fails(&["serve", "--listen", "off"])?;
    assert!(out.stderr.contains(&format!("{SECRET_VAR} is not set")), "{}", out.stderr);

    let ids: Vec<String> =
        (0..3).map(|n| root.emit("hook.ping", &format!("{{\"text\":\"hello {n}\"}}"))).collect::<Result<_>>()?;
    let other = root.emit("other.thing", "{}")?;
    let svc = root.serve_with(&[(SECRET_VAR, SECRET)])?;
    wait_for(LONG, || Ok(signed.answered(204).len() >= 3 && slack.answered(200).len() >= 3))?;
    wait_for(LONG, || Ok(root.archived_record(&other)?.is_some() && outbox(&root, "sink").is_empty()))?;

    let secret = Secret::parse(SECRET)?;
    let now = chrono::Utc::now().timestamp();
    let mut delivered = BTreeSet::new();
    for s in signed.seen() {
        let ce = s.json();
        let event_id = ce["id"].as_str().context("no id")?.to_string();
        assert_eq!(s.content_type, "application/cloudevents+json");
        assert_eq!((ce["specversion"].as_str(), ce["type"].as_str()), (Some("1.0"), Some("hook.ping")));
        assert_eq!(s.id, webhook_id("sink", &event_id), "the webhook-id is derived from endpoint and event");
        let ts: i64 = s.timestamp.parse()?;
        secret.verify(&s.id, ts, &s.body, s.signature.as_deref().context("unsigned")?, now, TOLERANCE_SECS)?;
        // A tampered body does not verify.
        let mut forged = s.body.clone();
        forged.push(b' ');
        assert!(secret.verify(&s.id, ts, &forged, s.signature.as_deref().unwrap_or(""), now, TOLERANCE_SECS).is_err());
        delivered.insert(event_id);
    }
    assert_eq!(delivered, ids.iter().cloned().collect::<BTreeSet<_>>(), "each matching event once; not {other}");
    // format = "data": the payload as-is, for Slack; no secret, no signature.
    let texts: BTreeSet<String> =
        slack.seen().iter().map(|s| s.json()["text"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(texts, (0..3).map(|n| format!("hello {n}")).collect());
    assert!(slack.seen().iter().all(|s| s.content_type == "application/json" && s.signature.is_none()));

    wait_for(LONG, || Ok(metric(&samples(&svc)?, &["cortex_webhook_outbox_depth", "endpoint=\"sink\""]) == Some(0.0)))?;
    let m = samples(&svc)?;
    assert_eq!(metric(&m, &["cortex_webhook_delivered_total", "endpoint=\"sink\""]), Some(3.0));
    assert_eq!(metric(&m, &["cortex_webhook_breaker_state", "endpoint=\"sink\""]), Some(0.0));
    assert!(!svc.log_text().contains("not-logged"), "the URL's query is never logged");
    let status = root.ok(&["status"])?;
    assert!(status.contains("webhook:       sink -> http://127.0.0.1:"), "{status}");
    assert!(!status.contains("not-logged"), "{status}");
    Ok(())
}

#[test]
fn a_failing_endpoint_is_retried_with_the_same_webhook_id_until_it_succeeds() -> Result<()> {
    let rx = Receiver::start(|n| Reply::Status(if n < 3 { 500 } else { 200 }))?;
    let root = root_with(&format!(
        "[webhooks.flaky]\nurl = \"{}\"\nevents = [\"hook.ping\"]\nmax_attempts = 6\nbackoff_ms = 20\nmax_backoff_ms = 100\n",
        rx.url()
    ))?;
    let id = root.emit("hook.ping", "{}")?;
    let svc = root.serve()?;
    wait_for(LONG, || Ok(!rx.answered(200).is_empty() && outbox(&root, "flaky").is_empty()))?;
    let seen = rx.seen();
    assert_eq!(seen.iter().map(|s| s.answered).collect::<Vec<_>>(), [500, 500, 500, 200]);
    assert!(seen.iter().all(|s| s.id == webhook_id("flaky", &id)), "one webhook-id for every attempt");
    let m = samples(&svc)?;
    assert_eq!(metric(&m, &["cortex_webhook_attempts_total", "endpoint=\"flaky\"", "result=\"failed\""]), Some(3.0));
    assert_eq!(metric(&m, &["cortex_webhook_attempts_total", "endpoint=\"flaky\"", "result=\"ok\""]), Some(1.0));
    assert!(root.dead_letters()?.is_empty());
    Ok(())
}

#[test]
fn a_hanging_endpoint_times_out_and_never_stalls_dispatch_or_another_endpoint() -> Result<()> {
    let slow = Receiver::start(|_| Reply::Hang)?;
    let fast = Receiver::start(|_| Reply::Status(200))?;
    let root = root_with(&format!(
        "[webhooks.slow]\nurl = \"{}\"\nevents = [\"hook.ping\"]\ntimeout_ms = 300\nmax_attempts = 1000\nbackoff_ms = 10\nmax_backoff_ms = 50\nbreaker_failures = 1000\n\n\
         [webhooks.fast]\nurl = \"{}\"\nevents = [\"hook.ping\"]\n",
        slow.url(),
        fast.url()
    ))?;
    let svc = root.serve()?;
    let ids: Vec<String> = (0..5).map(|_| root.emit("hook.ping", "{}")).collect::<Result<_>>()?;
    // While `slow` holds every request it gets, `fast` gets them all, and
    // every event is archived.
    wait_for(LONG, || Ok(fast.answered(200).len() >= 5))?;
    for id in &ids {
        assert!(root.archived_record(id)?.is_some(), "{id} archived");
    }
    assert!(slow.answered(200).is_empty());
    assert_eq!(outbox(&root, "slow").len(), 5, "the slow endpoint's deliveries wait in its outbox");
    // Its attempts end at timeout_ms and are recorded for a retry.
    wait_for(LONG, || {
        Ok(metric(&samples(&svc)?, &["cortex_webhook_attempts_total", "endpoint=\"slow\"", "result=\"failed\""])
            .is_some_and(|n| n >= 5.0))
    })?;
    // Failed attempts count across the five deliveries (retries
    // included), so look for one that has been tried, not the first.
    let mut tried = None;
    wait_for(LONG, || {
        for file in outbox(&root, "slow") {
            let Ok(record) = root.read_json(&format!("events/outbox/slow/{file}")) else { continue };
            if record["attempts"].as_u64().unwrap_or(0) >= 1 {
                tried = Some(record);
                return Ok(true);
            }
        }
        Ok(false)
    })?;
    let record = tried.context("no slow delivery was attempted")?;
    let message = record["history"][0]["failures"][0]["message"].as_str().unwrap_or("");
    assert!(message.contains("timeout_ms 300"), "{record}");
    assert!(record["attempts"].as_u64().unwrap_or(0) >= 1);
    Ok(())
}

#[test]
fn an_endpoint_that_answers_410_is_disabled_until_enabled() -> Result<()> {
    let gone = Arc::new(AtomicBool::new(true));
    let flag = gone.clone();
    let rx = Receiver::start(move |_| Reply::Status(if flag.load(Ordering::SeqCst) { 410 } else { 200 }))?;
    let root =
        root_with(&format!("[webhooks.old]\nurl = \"{}\"\nevents = [\"hook.ping\"]\nconcurrency = 1\n", rx.url()))?;
    let ids: Vec<String> = (0..2).map(|_| root.emit("hook.ping", "{}")).collect::<Result<_>>()?;
    let svc = root.serve()?;
    wait_for(LONG, || {
        let status: Value = serde_json::from_str(&root.ok(&["status", "--json"])?)?;
        Ok(status["webhooks"][0]["state"] == "disabled")
    })?;
    let status = root.ok(&["status"])?;
    assert!(status.contains("WEBHOOK DISABLED: old") && status.contains("410 Gone"), "{status}");
    assert!(status.contains("cortex webhooks enable old"), "{status}");
    wait_for(LONG, || Ok(metric(&samples(&svc)?, &["cortex_webhook_disabled", "endpoint=\"old\""]) == Some(1.0)))?;
    assert_eq!(rx.seen().len(), 1, "nothing more is sent once it answered 410");
    assert_eq!(outbox(&root, "old").len(), 2, "its deliveries are kept");

    gone.store(false, Ordering::SeqCst);
    let out = root.ok(&["webhooks", "enable", "old"])?;
    assert!(out.contains("enabled"), "{out}");
    wait_for(LONG, || Ok(rx.answered(200).len() >= 2 && outbox(&root, "old").is_empty()))?;
    let delivered: BTreeSet<String> = rx.answered(200).iter().map(|s| s.id.clone()).collect();
    assert_eq!(delivered, ids.iter().map(|id| webhook_id("old", id)).collect());
    assert!(root.ok(&["webhooks", "list"])?.contains("old  http://127.0.0.1:"));
    Ok(())
}

#[test]
fn exhausted_deliveries_become_dead_letters_that_dlq_retry_delivers() -> Result<()> {
    let failing = Arc::new(AtomicBool::new(true));
    let flag = failing.clone();
    let rx = Receiver::start(move |_| Reply::Status(if flag.load(Ordering::SeqCst) { 503 } else { 200 }))?;
    let root = root_with(&format!(
        "[webhooks.sink]\nurl = \"{}\"\nevents = [\"hook.ping\"]\nmax_attempts = 2\nbackoff_ms = 10\nmax_backoff_ms = 20\n",
        rx.url()
    ))?;
    let id = root.emit("hook.ping", "{}")?;
    let _svc = root.serve()?;
    wait_for(LONG, || Ok(!root.dead_letters()?.is_empty()))?;
    assert_eq!(rx.seen().len(), 2, "max_attempts attempts");
    let list = root.ok(&["dlq", "list"])?;
    assert!(list.contains(&id) && list.contains("webhook delivery to sink"), "{list}");
    let show = root.ok(&["dlq", "show", &id])?;
    assert!(show.contains("webhook: HTTP 503"), "{show}");
    assert!(outbox(&root, "sink").is_empty());

    failing.store(false, Ordering::SeqCst);
    let out = root.ok(&["dlq", "retry", &id])?;
    assert!(out.contains(&id), "{out}");
    wait_for(LONG, || Ok(rx.answered(200).len() == 1 && outbox(&root, "sink").is_empty()))?;
    assert!(rx.seen().iter().all(|s| s.id == webhook_id("sink", &id)), "the retry keeps the webhook-id");
    assert!(root.dead_letters()?.is_empty());
    // The event itself was not run again: one archive line.
    let lines = root.archived()?.into_iter().filter(|r| r["event"]["event_id"] == id.as_str()).count();
    assert_eq!(lines, 1);
    Ok(())
}

#[test]
fn kill_9_during_delivery_loses_nothing_and_keeps_the_webhook_id() -> Result<()> {
    let release = Arc::new(AtomicBool::new(false));
    let first_life = Arc::new(AtomicBool::new(true));
    let (r, f) = (release.clone(), first_life.clone());
    let rx =
        Receiver::start(move |_| if f.load(Ordering::SeqCst) { Reply::Hold(r.clone()) } else { Reply::Status(200) })?;
    let root =
        root_with(&format!("[webhooks.sink]\nurl = \"{}\"\nevents = [\"hook.ping\"]\nconcurrency = 3\n", rx.url()))?;
    let ids: Vec<String> = (0..8).map(|_| root.emit("hook.ping", "{}")).collect::<Result<_>>()?;
    let mut svc = root.serve()?;
    wait_for(LONG, || Ok(rx.seen().len() >= 3))?;
    svc.signal(9);
    svc.child.wait()?;
    let before = rx.seen().len();
    let held: BTreeSet<String> = rx.seen().iter().map(|s| s.id.clone()).collect();
    first_life.store(false, Ordering::SeqCst);
    release.store(true, Ordering::SeqCst);

    let _svc = root.serve()?;
    wait_for(LONG, || Ok(outbox(&root, "sink").is_empty()))?;
    // Nothing was answered before the kill: all went out after the restart.
    let after: BTreeSet<String> =
        rx.seen()[before..].iter().filter(|s| s.answered == 200).map(|s| s.id.clone()).collect();
    let expected: BTreeSet<String> = ids.iter().map(|id| webhook_id("sink", id)).collect();
    assert_eq!(after, expected, "every event delivered at least once, each with its own webhook-id");
    assert!(rx.seen().iter().all(|s| expected.contains(&s.id)), "no other webhook-id ever");
    assert!(held.is_subset(&after), "held {held:?} not redelivered");
    Ok(())
}

#[test]
fn the_circuit_breaker_opens_after_failures_in_a_row_and_one_probe_closes_it() -> Result<()> {
    let failing = Arc::new(AtomicBool::new(true));
    let flag = failing.clone();
    let rx = Receiver::start(move |_| Reply::Status(if flag.load(Ordering::SeqCst) { 500 } else { 200 }))?;
    let root = root_with(&format!(
        "[webhooks.sink]\nurl = \"{}\"\nevents = [\"hook.ping\"]\nmax_attempts = 100\nbackoff_ms = 1\nmax_backoff_ms = 5\n\
         breaker_failures = 2\nbreaker_cooldown_ms = 5000\n",
        rx.url()
    ))?;
    let svc = root.serve()?;
    let ids: Vec<String> = (0..2).map(|_| root.emit("hook.ping", "{}")).collect::<Result<_>>()?;
    let open = |svc: &cortex_tests::Service| -> Result<bool> {
        Ok(metric(&samples(svc)?, &["cortex_webhook_breaker_state", "endpoint=\"sink\""]) == Some(1.0))
    };
    wait_for(LONG, || open(&svc))?;
    // Open: with a 1 ms backoff, nothing but the breaker holds the retries.
    let failed = rx.seen().len();
    assert!((2..=3).contains(&failed), "{failed} requests before it opened");
    assert!(open(&svc)?);
    assert_eq!(rx.seen().len(), failed, "nothing is sent while the breaker is open");
    assert!(svc.log_text().contains("webhook circuit breaker opened"));

    failing.store(false, Ordering::SeqCst);
    wait_for(LONG, || Ok(outbox(&root, "sink").is_empty()))?;
    let seen = rx.seen();
    // After the cool-down one probe goes alone; its success closes the
    // breaker and the other delivery follows.
    assert_eq!(seen[failed..].iter().map(|s| s.answered).collect::<Vec<_>>(), [200, 200]);
    let delivered: BTreeSet<String> = seen[failed..].iter().map(|s| s.id.clone()).collect();
    assert_eq!(delivered, ids.iter().map(|id| webhook_id("sink", id)).collect());
    wait_for(
        LONG,
        || Ok(metric(&samples(&svc)?, &["cortex_webhook_breaker_state", "endpoint=\"sink\""]) == Some(0.0)),
    )?;
    Ok(())
}

#[test]
fn an_endpoint_added_by_a_reload_gets_the_events_archived_after_it() -> Result<()> {
    let rx = Receiver::start(|_| Reply::Status(200))?;
    let root = root_with("")?;
    let svc = root.serve()?;
    let before = root.emit("hook.ping", "{}")?;
    wait_for(LONG, || Ok(root.archived_record(&before)?.is_some()))?;
    root.configure(&format!("\n[webhooks.late]\nurl = \"{}\"\nevents = [\"hook.ping\"]\n", rx.url()))?;
    wait_for(LONG, || Ok(svc.log_text().contains("webhook endpoint (re)started")))?;
    let after = root.emit("hook.ping", "{}")?;
    wait_for(LONG, || Ok(!rx.answered(200).is_empty() && outbox(&root, "late").is_empty()))?;
    let ids: Vec<String> = rx.seen().iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids, [webhook_id("late", &after)], "only the event archived after the reload; not {before}");
    Ok(())
}
