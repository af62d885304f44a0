//! One at a time across hosts (issue 13): a stateful handler with
//! `concurrency = 1` runs on one `cortex serve` at a time, however many
//! share the Redis prefix, under a lease with a fencing token.
//!
//! - Three hosts, a read-then-write counter made a little slow (it reads
//!   state keys first), a few thousand events: no two archived invocations
//!   overlap in time (each archive record says when its invocation started
//!   and how long it took), and the counters are exact.
//! - The host holding the lease is killed with SIGKILL mid-stream: another
//!   takes the handler over within the lease (plus slack), every event is
//!   archived and the counters are exact.
//! - Fencing, on the store itself: writes made under a token that is no
//!   longer the lease's are refused, whole.
//!
//! Only invocations whose event was archived are seen here (an invocation
//! refused as a conflict runs again and leaves no record of its own).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cortex::kv::{Applied, Backend, Changes, Fence, Mark, Op};
use cortex::store::lease::{Leases, Renewal};
use cortex::store::redis::kv::RedisKv;
use cortex::store::redis::lease::RedisLeases;
use cortex_tests::{RedisPrefix, Root, Service, event, metric, parse_metrics, wait_for};
use serde_json::{Value, json};

const COUNTER: &str = r#"
[handlers.counter]
component = "{kv-counter}"
events = ["task.*"]
keyvalue = ["counters"]
max_attempts = 5
backoff_ms = 20
"#;

/// A root of its own on the shared prefix, with short claim leases (so a
/// killed host's claims come back within the test) and `lease_ms`.
fn host(redis: &RedisPrefix, lease_ms: u64) -> Result<Root> {
    let root = Root::with_handlers(COUNTER)?;
    let text = std::fs::read_to_string(root.join("cortex.toml"))?;
    std::fs::write(root.join("cortex.toml"), text.replace("lease_secs = 300", "lease_secs = 2"))?;
    root.configure(&format!(
        "\n[backend]\nurl = \"{}\"\nprefix = \"{}\"\nlease_ms = {lease_ms}\n",
        redis.url, redis.prefix
    ))?;
    Ok(root)
}

/// Queues `n` read-then-write events that each first read `gets` keys, in
/// batches of 250; returns their ids.
fn produce(root: &Root, n: usize, gets: u64) -> Result<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    for chunk in 0..n.div_ceil(250) {
        let batch: Vec<String> =
            (0..250.min(n - chunk * 250)).map(|i| format!("evt_20261201_000000_lease{chunk:04}x{i:04}")).collect();
        let lines: String = batch
            .iter()
            .map(|id| {
                event("task.created")
                    .id(id)
                    .at("2026-12-01T00:00:00Z")
                    .payload(json!({ "rmw": true, "gets": gets }))
                    .line()
            })
            .collect();
        root.batch(&lines)?;
        ids.extend(batch);
    }
    Ok(ids)
}

/// The counter's invocations as (start µs, end µs, event id), by start.
fn invocations(records: &[Value]) -> Result<Vec<(i64, i64, String)>> {
    let mut out = Vec::new();
    for r in records {
        for run in r["handlers"].as_array().into_iter().flatten().filter(|h| h["name"] == "counter") {
            let started = run["started"].as_str().with_context(|| format!("a handler run without `started`: {run}"))?;
            let start = chrono::DateTime::parse_from_rfc3339(started)?.timestamp_micros();
            let took = (run["duration_ms"].as_f64().context("duration_ms")? * 1000.0).round() as i64;
            out.push((start, start + took, r["event"]["event_id"].as_str().unwrap_or_default().to_string()));
        }
    }
    out.sort();
    Ok(out)
}

/// The first two invocations that overlap in time, if any.
fn first_overlap(runs: &[(i64, i64, String)]) -> Option<String> {
    let mut latest: Option<&(i64, i64, String)> = None;
    for run in runs {
        if let Some(prev) = latest
            && run.0 < prev.1
        {
            return Some(format!(
                "{} ran {}..{} µs and {} started at {} µs, {} µs before it ended",
                prev.2,
                prev.0,
                prev.1,
                run.2,
                run.0,
                prev.1 - run.0
            ));
        }
        if latest.is_none_or(|p| run.1 > p.1) {
            latest = Some(run);
        }
    }
    None
}

fn state(root: &Root, key: &str) -> Result<u64> {
    let out = root.ok(&["state", "get", "counters", key])?;
    out.trim().parse().with_context(|| format!("state get counters {key} printed {out:?}"))
}

/// Invocations of the counter a service ran, from its `/metrics`.
fn ran(service: &Service) -> Result<f64> {
    let samples = parse_metrics(&service.metrics()?)?;
    Ok(metric(&samples, &["cortex_handler_invocations", "handler=\"counter\"", "result=\"ok\""]).unwrap_or(0.0))
}

/// Waits until every id is archived and nothing is queued or claimed; the
/// archive records, and the distinct ids archived.
fn drained(root: &Root, redis: &RedisPrefix, ids: &BTreeSet<String>) -> Result<Vec<Value>> {
    wait_for(Duration::from_secs(300), || {
        let s: Value = serde_json::from_str(&root.ok(&["status", "--json"])?)?;
        Ok(s["queue_depth"] == 0 && s["claimed"] == 0)
    })
    .context("the queue never drained")?;
    let records = redis.archive()?;
    let archived: BTreeSet<&str> = records.iter().filter_map(|r| r["event"]["event_id"].as_str()).collect();
    let missing: Vec<&String> = ids.iter().filter(|id| !archived.contains(id.as_str())).collect();
    ensure!(missing.is_empty(), "{} events not archived, e.g. {:?}", missing.len(), missing.first());
    ensure!(archived.len() == ids.len(), "{} ids archived, {} queued", archived.len(), ids.len());
    Ok(records)
}

#[test]
fn three_hosts_run_a_concurrency_one_handler_one_at_a_time() -> Result<()> {
    const EVENTS: usize = 3_000;
    let redis = RedisPrefix::new("lease-3")?;
    let roots: Vec<Root> = (0..3).map(|_| host(&redis, 5_000)).collect::<Result<_>>()?;
    let services: Vec<Service> = roots.iter().map(Root::serve).collect::<Result<_>>()?;
    let ids = produce(&roots[0], EVENTS, 20)?;
    let records = drained(&roots[0], &redis, &ids)?;

    let runs = invocations(&records)?;
    ensure!(runs.len() >= EVENTS, "{} invocations archived for {EVENTS} events", runs.len());
    if let Some(overlap) = first_overlap(&runs) {
        anyhow::bail!("two invocations of the counter overlapped across hosts: {overlap}");
    }
    // Exactly once per event, read-then-write included.
    assert_eq!(state(&roots[1], "total")?, EVENTS as u64);
    assert_eq!(state(&roots[1], "rmw")?, EVENTS as u64);
    // The hosts shared the handler (the lease went round), so the absence
    // of overlap is the lease's doing, not one host's.
    let per_host: Vec<f64> = services.iter().map(ran).collect::<Result<_>>()?;
    eprintln!("counter invocations per host: {per_host:?}");
    ensure!(per_host.iter().filter(|n| **n > 0.0).count() >= 2, "one host ran everything: {per_host:?}");
    for s in services {
        s.stop()?;
    }
    Ok(())
}

#[test]
fn a_killed_lease_holder_is_taken_over_within_the_lease() -> Result<()> {
    const EVENTS: usize = 2_000;
    const LEASE: Duration = Duration::from_millis(2_000);
    let redis = RedisPrefix::new("lease-kill")?;
    let roots: Vec<Root> = (0..3).map(|_| host(&redis, LEASE.as_millis() as u64)).collect::<Result<_>>()?;
    let mut services: Vec<Service> = roots.iter().map(Root::serve).collect::<Result<_>>()?;
    let ids = produce(&roots[0], EVENTS, 20)?;

    // The holder is the one host whose invocations rise (one at a time).
    let mut holder = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while holder.is_none() && Instant::now() < deadline {
        let before: Vec<f64> = services.iter().map(ran).collect::<Result<_>>()?;
        std::thread::sleep(Duration::from_millis(150));
        let after: Vec<f64> = services.iter().map(ran).collect::<Result<_>>()?;
        let rising: Vec<usize> = (0..3).filter(|&i| after[i] > before[i]).collect();
        if let [only] = rising[..]
            && after.iter().sum::<f64>() >= 200.0
        {
            holder = Some(only);
        }
    }
    let holder = holder.context("no single host was seen running the counter")?;
    services[holder].signal(9);
    let killed = Instant::now();
    let _ = services[holder].child.wait();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != holder).collect();
    let at_kill: Vec<f64> = survivors.iter().map(|&i| ran(&services[i])).collect::<Result<_>>()?;
    wait_for(Duration::from_secs(30), || {
        let now: Vec<f64> = survivors.iter().map(|&i| ran(&services[i])).collect::<Result<_>>()?;
        Ok(now.iter().zip(&at_kill).any(|(n, k)| n > k))
    })
    .context("no survivor ran the counter after the holder died")?;
    let takeover = killed.elapsed();
    eprintln!("lease {LEASE:?}: another host ran the counter {takeover:?} after the holder was killed");
    ensure!(takeover <= LEASE + Duration::from_secs(2), "the takeover took {takeover:?}, the lease is {LEASE:?}");

    let records = drained(&roots[survivors[0]], &redis, &ids)?;
    if let Some(overlap) = first_overlap(&invocations(&records)?) {
        anyhow::bail!("two invocations of the counter overlapped across hosts: {overlap}");
    }
    assert_eq!(state(&roots[survivors[0]], "total")?, EVENTS as u64);
    assert_eq!(state(&roots[survivors[0]], "rmw")?, EVENTS as u64);
    for i in survivors.into_iter().rev() {
        services.remove(i).stop()?;
    }
    Ok(())
}

fn fenced(event_id: &str, value: &str, fence: Option<Fence>) -> Changes {
    Changes {
        mark: Mark { event_id: event_id.into(), handler: "h".into(), generation: 0 },
        ops: vec![("w".into(), "k".into(), Op::Set(value.as_bytes().to_vec()))],
        reads: Vec::new(),
        after: Vec::new(),
        fence,
    }
}

#[test]
fn writes_under_a_lost_lease_are_refused() -> Result<()> {
    let redis = RedisPrefix::new("lease-fence")?;
    let leases = RedisLeases::new(redis.server.clone(), Duration::from_millis(300));
    let kv = RedisKv::new(redis.server.clone());
    let fence = |token| Some(Fence { handler: "h".into(), token });

    let first = leases.acquire("h")?.context("a free lease is granted")?;
    ensure!(leases.acquire("h")?.is_none(), "a held lease is not granted twice");
    assert_eq!(kv.commit(&[fenced("e1", "1", fence(first))])?, vec![Applied::Applied]);

    // The holder stalls past its lease; another host takes it over.
    std::thread::sleep(Duration::from_millis(400));
    let second = leases.acquire("h")?.context("an expired lease is granted again")?;
    ensure!(second > first, "tokens rise: {first} then {second}");
    assert_eq!(leases.renew("h", first)?, Renewal::Lost, "the old holder cannot renew the new holder's lease");
    ensure!(!leases.release("h", first)?, "nor give it back");

    // The old holder's late write is refused whole, next to a write that is
    // not fenced, and one under the current token, in one batch.
    let late = fenced("e2", "2", fence(first));
    let now = Changes { ops: vec![("w".into(), "j".into(), Op::Add(1))], ..fenced("e3", "3", fence(second)) };
    let free = Changes { ops: vec![("w".into(), "f".into(), Op::Add(1))], ..fenced("e4", "", None) };
    assert_eq!(kv.commit(&[late, now, free])?, vec![Applied::Conflict, Applied::Applied, Applied::Applied]);
    assert_eq!(kv.get("w", "k")?.map(|v| v.value), Some(b"1".to_vec()), "the late write changed nothing");
    assert_eq!(kv.get("w", "j")?.map(|v| v.value), Some(b"1".to_vec()));
    ensure!(!kv.applied(&Mark { event_id: "e2".into(), handler: "h".into(), generation: 0 })?, "no mark of e2");

    // The holder renews its own lease, and hears when another host waits.
    assert_eq!(leases.renew("h", second)?, Renewal::Kept { wanted: false });
    ensure!(leases.acquire("h")?.is_none(), "a held lease is not granted twice");
    assert_eq!(leases.renew("h", second)?, Renewal::Kept { wanted: true });
    // Given back: nothing holds the lease, so no token writes.
    ensure!(leases.release("h", second)?, "and gives it back");
    assert_eq!(kv.commit(&[fenced("e5", "5", fence(second))])?, vec![Applied::Conflict]);
    let third = leases.acquire("h")?.context("a released lease is granted at once")?;
    ensure!(third > second, "tokens rise: {second} then {third}");
    Ok(())
}
