//! Several hosts on one Redis (issue 13): three `cortex serve` processes,
//! each on a root of its own (as on three machines) and all on one Redis
//! prefix, share the work of two parallel producers; one is killed with
//! SIGKILL mid-way. Every event must end archived or dead-lettered, none
//! lost; redeliveries are counted (at-least-once) and the key-value counter
//! equals the number of distinct events handled (exactly once per event).
//! Then a private Redis is stopped for five seconds mid-stream: the
//! services report not ready, back off, lose nothing and resume.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cortex_tests::{RedisPrefix, Root, event, http_get, wait_for};
use serde_json::Value;

const COUNTER: &str = r#"
[handlers.counter]
component = "{kv-counter}"
events = ["task.*"]
keyvalue = ["counters"]
keyvalue_read = ["settings"]
max_attempts = 3
backoff_ms = 20
"#;

/// A root of its own on `url` under `prefix`, with a short lease so that a
/// killed host's claims come back within the test.
fn host(url: &str, prefix: &str) -> Result<Root> {
    let root = Root::with_handlers(COUNTER)?;
    let text = std::fs::read_to_string(root.join("cortex.toml"))?;
    std::fs::write(root.join("cortex.toml"), text.replace("lease_secs = 300", "lease_secs = 2"))?;
    root.configure(&format!("\n[backend]\nurl = \"{url}\"\nprefix = \"{prefix}\"\n"))?;
    Ok(root)
}

fn status(root: &Root) -> Result<Value> {
    let out = root.ok(&["status", "--json"])?;
    serde_json::from_str(&out).with_context(|| format!("status printed {out}"))
}

/// Event ids of archive records and of dead letters, as `export` and `dlq
/// list` print them: (archive lines by id, dead-lettered ids).
fn settled(root: &Root) -> Result<(BTreeMap<String, usize>, BTreeSet<String>)> {
    let mut archived: BTreeMap<String, usize> = BTreeMap::new();
    for line in root.ok(&["export", "--format", "jsonl"])?.lines() {
        let e: Value = serde_json::from_str(line)?;
        *archived.entry(e["event_id"].as_str().context("an exported event has an id")?.to_string()).or_insert(0) += 1;
    }
    let letters: Value = serde_json::from_str(&root.ok(&["dlq", "list", "--json"])?)?;
    let dead = letters
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["record"]["event"]["event_id"].as_str().map(str::to_string))
        .collect();
    Ok((archived, dead))
}

/// Queues `n` events from one producer in batches of `per`; returns their
/// ids. Each event carries its own id (the idempotency key), so a batch
/// that failed — Redis gone when its `cortex emit` started — is sent again
/// as a producer would, and a batch sent twice is queued once.
fn produce(root: &Root, tag: &str, n: usize, per: usize) -> Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(per) {
        let batch: Vec<String> =
            (0..per.min(n - chunk * per)).map(|i| format!("evt_20261201_000000_{tag}{chunk:04}x{i:04}")).collect();
        let lines: String = batch
            .iter()
            .map(|id| event("task.created").id(id).at("2026-12-01T00:00:00Z").source(&format!("{tag}-{chunk}")).line())
            .collect();
        let mut tries = 0;
        while let Err(e) = root.batch(&lines) {
            tries += 1;
            if tries > 60 {
                return Err(e.context(format!("batch {chunk} of {tag} failed 60 times")));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        ids.extend(batch);
    }
    Ok(ids)
}

fn counter_total(root: &Root) -> Result<u64> {
    let out = root.ok(&["state", "get", "counters", "total"])?;
    out.trim().parse().with_context(|| format!("state get printed {out:?}"))
}

#[test]
fn three_hosts_share_the_work_and_a_killed_one_loses_nothing() -> Result<()> {
    const PER_PRODUCER: usize = 10_000;
    let redis = RedisPrefix::new("hosts")?;
    let roots: Vec<Root> = (0..3).map(|_| host(&redis.url, &redis.prefix)).collect::<Result<_>>()?;
    let mut services: Vec<_> = roots.iter().map(Root::serve).collect::<Result<_>>()?;

    let (a, b) = (&roots[0], &roots[1]);
    let (ids_a, ids_b) = std::thread::scope(|s| {
        let pa = s.spawn(|| produce(a, "a", PER_PRODUCER, 500));
        let pb = s.spawn(|| produce(b, "b", PER_PRODUCER, 500));
        // Mid-way, the third host dies without a word.
        wait_for(Duration::from_secs(120), || Ok(settled_count(&roots[2])? >= 2_000)).ok();
        services[2].signal(9);
        (pa.join(), pb.join())
    });
    let ids: BTreeSet<String> = ids_a
        .map_err(|_| anyhow::anyhow!("producer a panicked"))??
        .into_iter()
        .chain(ids_b.map_err(|_| anyhow::anyhow!("producer b panicked"))??)
        .collect();
    assert_eq!(ids.len(), 2 * PER_PRODUCER, "every id is distinct");

    // The survivors finish, the killed host's claims included.
    wait_for(Duration::from_secs(300), || {
        let s = status(&roots[0])?;
        Ok(s["queue_depth"] == 0 && s["claimed"] == 0)
    })
    .with_context(|| {
        format!("the queue never drained: {}", status(&roots[0]).map(|s| s.to_string()).unwrap_or_default())
    })?;

    let (archived, dead) = settled(&roots[0])?;
    let seen: BTreeSet<&String> = archived.keys().chain(dead.iter()).collect();
    let missing: Vec<&String> = ids.iter().filter(|id| !seen.contains(id)).collect();
    assert!(missing.is_empty(), "{} events lost, e.g. {:?}", missing.len(), missing.first());
    let redelivered: usize = archived.values().map(|n| n - 1).sum();
    eprintln!(
        "three hosts: {} archived ({} archived more than once), {} dead-lettered",
        archived.len(),
        redelivered,
        dead.len()
    );
    assert!(dead.is_empty(), "nothing here fails: {} dead letters", dead.len());
    // Exactly once per event id, however often an event was delivered.
    assert_eq!(counter_total(&roots[1])?, archived.len() as u64);
    for s in services.iter_mut().take(2) {
        s.signal(15);
    }
    Ok(())
}

/// Archive records the shared store holds (from any host).
fn settled_count(root: &Root) -> Result<usize> {
    Ok(root.ok(&["export", "--format", "jsonl"])?.lines().count())
}

/// A private `redis-server` on a free port, with an append-only file synced
/// on every write, so that it can be stopped and started again without
/// losing what it confirmed. Shut down on drop.
struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    fn start() -> Result<PrivateRedis> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let r = PrivateRedis { port, dir };
        r.up()?;
        Ok(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn up(&self) -> Result<()> {
        let status = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--daemonize", "yes"])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .status()
            .context("redis-server is needed for this test: run `make redis` (it installs it)")?;
        if !status.success() {
            bail!("redis-server did not start on port {}", self.port);
        }
        wait_for(Duration::from_secs(10), || Ok(self.ping()))
    }

    fn ping(&self) -> bool {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "ping"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
    }

    fn down(&self) -> Result<()> {
        Command::new("redis-cli").args(["-p", &self.port.to_string(), "shutdown"]).output()?;
        wait_for(Duration::from_secs(10), || Ok(!self.ping()))
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

#[test]
fn redis_down_for_five_seconds_makes_the_service_unready_and_loses_nothing() -> Result<()> {
    let redis = PrivateRedis::start()?;
    let root = host(&redis.url(), "outage")?;
    let svc = root.serve()?;
    // A producer keeps queueing across the outage (its batches wait and
    // retry while Redis is gone); Redis goes down once dispatch is under way.
    let (produced, saw_503, body) = std::thread::scope(|s| -> Result<_> {
        let producer = s.spawn(|| produce(&root, "during", 3000, 50));
        wait_for(Duration::from_secs(60), || Ok(settled_count(&root)? >= 300))?;
        redis.down()?;
        let saw_503 = wait_for(Duration::from_secs(10), || {
            Ok(http_get(&svc.addr, "/readyz").map(|(s, _)| s == 503).unwrap_or(false))
        });
        let (_, body) = http_get(&svc.addr, "/readyz")?;
        std::thread::sleep(Duration::from_secs(5));
        redis.up()?;
        let produced = producer.join().map_err(|_| anyhow::anyhow!("the producer panicked"))?;
        Ok((produced, saw_503, body))
    })?;
    saw_503.context("/readyz never said 503 while Redis was down")?;
    assert!(body.contains("unreachable"), "{body}");
    let before = produced.context("a producer's batch was lost to the outage")?;

    wait_for(Duration::from_secs(30), || Ok(http_get(&svc.addr, "/readyz").map(|(s, _)| s == 200).unwrap_or(false)))
        .context("/readyz never came back after Redis did")?;
    let after = produce(&root, "after", 500, 100)?;
    wait_for(Duration::from_secs(120), || {
        let s = status(&root)?;
        Ok(s["queue_depth"] == 0 && s["claimed"] == 0)
    })
    .with_context(|| {
        let log = svc.log_text();
        let tail: Vec<&str> = log.lines().filter(|l| !l.contains("handler completed")).collect();
        format!(
            "the queue never drained after the outage: {}\nservice log (without handler lines):\n{}",
            status(&root).map(|s| s.to_string()).unwrap_or_default(),
            tail[tail.len().saturating_sub(40)..].join("\n")
        )
    })?;
    let (archived, dead) = settled(&root)?;
    let missing: Vec<&String> = before.iter().chain(&after).filter(|id| !archived.contains_key(*id)).collect();
    assert!(
        missing.is_empty() && dead.is_empty(),
        "{} lost (e.g. {:?}), {} dead-lettered:\n{}\nstatus: {}\nservice log:\n{}",
        missing.len(),
        missing.first(),
        dead.len(),
        root.ok(&["dlq", "list"])?,
        status(&root)?,
        svc.log_text()
    );
    assert_eq!(counter_total(&root)?, 3500);
    assert!(svc.log_text().contains("unreachable"), "the service said nothing of the outage");
    Ok(())
}
