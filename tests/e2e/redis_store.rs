//! The Redis backend's queue, driven through the library against the Redis
//! on 127.0.0.1:6379: priority and FIFO order, settlement (archive, retry,
//! dead letter, follow-ups) as one idempotent step, two consumers, lease
//! recovery, depth and the idempotency check. Each test works under its own
//! key prefix and deletes its keys when it ends, pass or fail; a server
//! that does not answer fails the test, saying to start it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use cortex::event::{Event, NewEvent, Priority};
use cortex::queue::{AttemptRecord, Claim, Delivery, Queue, Settlement, Verdict, now_rfc3339};
use cortex::records::{DeadLetterRecord, FaultKind, Outcome};
use cortex::store::redis::{Budget, Redis, RedisStore};
use cortex::store::{LiveState, Store};

const URL: &str = "redis://127.0.0.1:6379/0";

/// A prefix of this test's own, whose keys are deleted when it drops.
struct Prefix {
    server: Arc<Redis>,
}

impl Prefix {
    fn new() -> Result<Prefix> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("cortex-test-{}-{n}-{:06x}", std::process::id(), fastrand::u32(..0xff_ffff));
        let server = Redis::open(URL, &prefix).context(
            "these tests need Redis on 127.0.0.1:6379: start it with `redis-server --daemonize yes --save '' --appendonly no`",
        )?;
        Ok(Prefix { server: Arc::new(server) })
    }

    /// A store on this prefix: a consumer of its own, as another process would be.
    fn store(&self) -> Result<RedisStore> {
        RedisStore::open(self.server.clone())
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let pattern = format!("{}:*", self.server.prefix());
        let _ = self.server.run("delete the test's keys", Budget::Once, |c| {
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) =
                    redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query(c)?;
                if !keys.is_empty() {
                    redis::cmd("DEL").arg(&keys).exec(c)?;
                }
                if next == 0 {
                    return Ok(());
                }
                cursor = next;
            }
        });
    }
}

fn event(event_type: &str, priority: Priority) -> Result<Event> {
    let v = NewEvent {
        event_type: event_type.into(),
        source: "redis-test".into(),
        priority: Some(priority),
        ..NewEvent::default()
    }
    .into_value();
    Ok(serde_json::from_value(v)?)
}

fn ack(claim: Claim, emitted: Vec<Event>) -> Settlement {
    let record = claim.archived(Outcome::Handled, Vec::new());
    Settlement { claim, emitted, verdict: Verdict::Ack(Box::new(record)) }
}

/// Every archive line of the store, parsed.
fn archived(store: &RedisStore) -> Result<Vec<cortex::records::ArchiveRecord>> {
    use std::io::BufRead;
    let mut out = Vec::new();
    let Some(archive) = store.archive()? else { return Ok(out) };
    for seg in archive.segments()? {
        for line in archive.lines(&seg)?.lines() {
            out.push(serde_json::from_str(&line?)?);
        }
    }
    Ok(out)
}

/// Claims until nothing is due.
fn drain(store: &RedisStore) -> Result<Vec<Claim>> {
    let mut out = Vec::new();
    while let Some(c) = store.claim()? {
        out.push(c);
    }
    Ok(out)
}

#[test]
fn claims_come_critical_first_and_fifo_and_an_ack_is_archived_by_day() -> Result<()> {
    let p = Prefix::new()?;
    let store = p.store()?;
    let low = event("test.low", Priority::Low)?;
    let m1 = event("test.m1", Priority::Medium)?;
    let crit = event("test.crit", Priority::Critical)?;
    let m2 = event("test.m2", Priority::Medium)?;
    store.enqueue(&[low.clone(), m1.clone()])?;
    store.enqueue(&[crit.clone(), m2.clone()])?;
    let d = store.depth()?;
    assert_eq!((d.queued, d.claimed, d.delayed), (4, 0, 0));
    assert_eq!(d.oldest.map(|o| o.event_id), Some(low.event_id.clone()));
    let waiting: Vec<String> = store.entries()?.into_iter().map(|n| n.event_id).collect();
    let order = vec![crit.event_id.clone(), m1.event_id.clone(), m2.event_id.clone(), low.event_id.clone()];
    assert_eq!(waiting, order, "entries() lists claim order");
    assert_eq!(store.peek(&store.entries()?[0])?, crit);

    let claims = drain(&store)?;
    let got: Vec<String> = claims.iter().map(|c| c.event.event_id.clone()).collect();
    assert_eq!(got, order);
    assert!(claims.iter().all(|c| c.name.attempt == 1));
    let known = store.known(&[&crit, &low])?;
    assert_eq!(known.get(&crit.event_id).copied(), Some("being handled"));
    assert!(store.live()?.iter().all(|l| l.state == LiveState::Claimed));

    let keys: BTreeSet<String> = claims.iter().map(|c| c.name.key()).collect();
    store.settle(claims.into_iter().map(|c| ack(c, Vec::new())).collect())?;
    let d = store.depth()?;
    assert_eq!((d.queued, d.claimed), (0, 0));
    let archive = store.archive()?.context("an archive after four acks")?;
    let segs = archive.segments()?;
    assert_eq!(segs.iter().map(|s| s.stem.as_str()).collect::<Vec<_>>(), vec![&crit.timestamp[..10]]);
    assert!(segs[0].content_bytes > 0);
    assert!(archive.describe(&segs[0]).contains(&format!("{}:archive:", p.server.prefix())));
    let lines = archived(&store)?;
    assert_eq!(lines.iter().map(|r| r.entry.clone()).collect::<BTreeSet<_>>(), keys);
    assert_eq!(store.known(&[&crit, &low])?.get(&low.event_id).copied(), Some("archived"));
    Ok(())
}

#[test]
fn a_retry_waits_until_due_then_returns_with_its_delivery_history() -> Result<()> {
    let p = Prefix::new()?;
    let store = p.store()?;
    let e = event("test.retry", Priority::High)?;
    store.enqueue(std::slice::from_ref(&e))?;
    let claim = store.claim()?.context("the entry")?;
    let delivery = Delivery {
        history: vec![AttemptRecord { attempt: 1, at: now_rfc3339(), failures: Vec::new() }],
        done: vec!["already-ran".into()],
    };
    let due = SystemTime::now() + Duration::from_millis(1500);
    store.retry(claim, due, delivery.clone())?;
    assert!(store.claim()?.is_none(), "a retry is not claimable before it is due");
    let d = store.depth()?;
    assert_eq!((d.queued, d.delayed, d.claimed), (1, 1, 0));
    assert!(d.next_due_ms.is_some());
    let live = store.live()?;
    assert_eq!(live.len(), 1);
    assert_eq!((live[0].state, live[0].name.attempt), (LiveState::Waiting, 2));
    assert!(live[0].name.due_ms.is_some());
    assert_eq!(live[0].delivery, delivery);
    assert_eq!(store.known(&[&e])?.get(&e.event_id).copied(), Some("queued"));
    let started = Instant::now();
    let again = loop {
        if let Some(c) = store.claim()? {
            break c;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(20), "the retry never became claimable");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(again.event, e);
    assert_eq!(again.name.attempt, 2);
    assert_eq!(again.delivery, delivery);
    Ok(())
}

#[test]
fn a_dead_letter_is_listed_and_removable() -> Result<()> {
    let p = Prefix::new()?;
    let store = p.store()?;
    let e = event("test.doomed", Priority::Medium)?;
    store.enqueue(std::slice::from_ref(&e))?;
    let claim = store.claim()?.context("the entry")?;
    let key = claim.name.key();
    let record = DeadLetterRecord {
        event: Some(e.clone()),
        entry: key.clone(),
        attempts: Some(1),
        dead_lettered_at: now_rfc3339(),
        reason: "failed for good".into(),
        ..DeadLetterRecord::default()
    };
    store.dead_letter(claim, record.clone())?;
    assert_eq!(store.depth()?.dead_letters, 1);
    let listing = store.dead_letters()?;
    assert!(listing.unreadable.is_empty());
    assert_eq!(listing.letters.len(), 1);
    let letter = &listing.letters[0];
    assert_eq!(letter.key, key);
    assert_eq!(letter.record, record);
    assert_eq!(letter.path.display().to_string(), format!("{}:dead/{key}", p.server.prefix()));
    assert_eq!(store.known(&[&e])?.get(&e.event_id).copied(), Some("dead-lettered"));
    assert!(archived(&store)?.is_empty());
    store.remove_dead_letters(&[&key, "0-0000000000000001-evt_gone"])?;
    assert!(store.dead_letters()?.letters.is_empty());
    assert_eq!(store.depth()?.dead_letters, 0);
    assert!(store.known(&[&e])?.is_empty());
    Ok(())
}

#[test]
fn a_batch_is_queued_once_per_token_in_priority_and_batch_order_with_every_id_known() -> Result<()> {
    let prefix = Prefix::new()?;
    let store = prefix.store()?;
    // More events than one HSET of known ids takes, in every priority.
    let priorities = [Priority::Low, Priority::Critical, Priority::Medium, Priority::High];
    let events: Vec<Event> = (0..2500).map(|i| event("task.created", priorities[i % 4])).collect::<Result<_>>()?;
    assert!(store.enqueue_once(&events, "batch-1")?, "the first call queues the batch");
    // A call repeated after a lost reply carries the same token.
    assert!(!store.enqueue_once(&events, "batch-1")?, "the same token again queues nothing");
    assert_eq!(store.depth()?.queued, 2500, "queued once");
    let refs: Vec<&Event> = events.iter().collect();
    let known = store.known(&refs)?;
    assert_eq!(known.len(), 2500, "every id is known, so a producer re-sending one is told");
    assert!(known.values().all(|place| *place == "queued"), "{known:?}");

    let claimed: Vec<String> = drain(&store)?.into_iter().map(|c| c.event.event_id).collect();
    let mut expected = Vec::new();
    for p in [Priority::Critical, Priority::High, Priority::Medium, Priority::Low] {
        expected.extend(events.iter().filter(|e| e.priority() == p).map(|e| e.event_id.clone()));
    }
    assert_eq!(claimed, expected, "critical first, batch order within a priority");
    // Another token is another batch.
    assert!(store.enqueue_once(&events[..3], "batch-2")?);
    assert_eq!(store.depth()?.queued, 3);
    Ok(())
}

#[test]
fn two_consumers_never_get_the_same_entry() -> Result<()> {
    let p = Prefix::new()?;
    let (a, b) = (p.store()?, p.store()?);
    assert_ne!(a.consumer(), b.consumer());
    let events: Vec<Event> = (0..300).map(|_| event("test.shared", Priority::Medium)).collect::<Result<_>>()?;
    a.enqueue(&events)?;
    let run = |s: &RedisStore| -> Result<Vec<String>> {
        let mut ids = Vec::new();
        while let Some(c) = s.claim()? {
            ids.push(c.event.event_id.clone());
            s.settle(vec![ack(c, Vec::new())])?;
        }
        Ok(ids)
    };
    let (got_a, got_b) = std::thread::scope(|scope| {
        let ta = scope.spawn(|| run(&a));
        let tb = scope.spawn(|| run(&b));
        (ta.join(), tb.join())
    });
    let (got_a, got_b) = (
        got_a.map_err(|_| anyhow::anyhow!("consumer a panicked"))??,
        got_b.map_err(|_| anyhow::anyhow!("consumer b panicked"))??,
    );
    let set_a: BTreeSet<&String> = got_a.iter().collect();
    let set_b: BTreeSet<&String> = got_b.iter().collect();
    assert!(set_a.is_disjoint(&set_b), "an entry went to both consumers");
    assert_eq!(got_a.len() + got_b.len(), events.len());
    assert_eq!(set_a.len() + set_b.len(), events.len());
    assert_eq!(archived(&a)?.len(), events.len());
    Ok(())
}

#[test]
fn recovery_after_the_lease_requeues_a_dead_consumers_entries_with_the_attempt_raised() -> Result<()> {
    let p = Prefix::new()?;
    let dead = p.store()?;
    let events: Vec<Event> = (0..3).map(|_| event("test.orphan", Priority::High)).collect::<Result<_>>()?;
    dead.enqueue(&events)?;
    // It takes one; the other two were prefetched into its pending list.
    let held = dead.claim()?.context("an entry")?;
    assert_eq!(dead.depth()?.claimed, 3);
    std::thread::sleep(Duration::from_millis(300));
    let alive = p.store()?;
    let r = alive.recover(Duration::from_millis(200))?;
    assert_eq!(r.requeued, 3);
    let d = alive.depth()?;
    assert_eq!((d.queued, d.claimed), (3, 0));
    let again = drain(&alive)?;
    assert_eq!(again.len(), 3);
    for c in &again {
        assert_eq!(c.name.attempt, 2);
        let last = c.delivery.history.last().context("a history entry for the expired lease")?;
        assert_eq!(last.attempt, 1);
        assert_eq!(last.failures[0].fault.kind, FaultKind::LeaseExpired);
    }
    // The stopped consumer comes back and settles what it held: its entry
    // was taken back, so nothing is applied, follow-ups included.
    dead.settle(vec![ack(held, vec![event("test.follow", Priority::Low)?])])?;
    assert!(archived(&alive)?.is_empty());
    assert_eq!(alive.depth()?.queued, 0);
    alive.settle(again.into_iter().map(|c| ack(c, Vec::new())).collect())?;
    assert_eq!(archived(&alive)?.len(), 3);
    // Nothing is taken back from a consumer that keeps its claims fresh.
    alive.enqueue(&[event("test.kept", Priority::Low)?])?;
    let kept = alive.claim()?.context("an entry")?;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(alive.recover(Duration::from_millis(200))?.requeued, 0);
    alive.settle(vec![ack(kept, Vec::new())])?;
    assert_eq!(archived(&alive)?.len(), 4);
    Ok(())
}

#[test]
fn a_settlement_queues_its_follow_ups_in_the_same_step_and_applies_once_when_repeated() -> Result<()> {
    let p = Prefix::new()?;
    let store = p.store()?;
    let cause = event("test.cause", Priority::Medium)?;
    store.enqueue(std::slice::from_ref(&cause))?;
    let claim = store.claim()?.context("the entry")?;
    let follow = vec![event("test.effect", Priority::Critical)?, event("test.effect", Priority::Low)?];
    let settlement = ack(claim, follow.clone());
    store.settle(vec![settlement.clone()])?;
    store.settle(vec![settlement.clone()])?;
    // A second store (a repeated call from a fresh process) does not apply it either.
    p.store()?.settle(vec![settlement])?;
    assert_eq!(archived(&store)?.len(), 1);
    let d = store.depth()?;
    assert_eq!((d.queued, d.claimed), (2, 0));
    let known = store.known(&[&follow[0], &follow[1], &cause])?;
    assert_eq!(known.get(&follow[0].event_id).copied(), Some("queued"));
    assert_eq!(known.get(&cause.event_id).copied(), Some("archived"));
    let next = drain(&store)?;
    assert_eq!(next.iter().map(|c| c.event.clone()).collect::<Vec<_>>(), follow);
    Ok(())
}

#[test]
fn a_batch_mixing_every_verdict_applies_once_and_leaves_the_same_keys_as_one_by_one() -> Result<()> {
    let p = Prefix::new()?;
    let store = p.store()?;
    let again = event("test.again", Priority::High)?;
    store.enqueue(std::slice::from_ref(&again))?;
    let first = store.claim()?.context("the entry")?;
    let history = Delivery {
        history: vec![AttemptRecord { attempt: 1, at: now_rfc3339(), failures: Vec::new() }],
        done: Vec::new(),
    };
    store.retry(first, SystemTime::now(), history.clone())?;
    let redelivered = store.claim()?.context("the retry, due at once")?;
    assert_eq!((redelivered.name.attempt, &redelivered.delivery), (2, &history));
    let others: Vec<Event> = ["test.ack", "test.dead", "test.retry", "test.defer"]
        .iter()
        .map(|t| event(t, Priority::Medium))
        .collect::<Result<_>>()?;
    store.enqueue(&others)?;
    let claims = drain(&store)?;
    let [a, d, r, f] = <[Claim; 4]>::try_from(claims).map_err(|c| anyhow::anyhow!("{} claims", c.len()))?;
    let (retry_key, again_key) = (r.name.key(), redelivered.name.key());
    let follow = event("test.follow", Priority::Low)?;
    let dead = DeadLetterRecord { entry: d.name.key(), reason: "bad".into(), ..DeadLetterRecord::default() };
    let later = SystemTime::now() + Duration::from_secs(3600);
    let batch = vec![
        ack(redelivered, vec![follow.clone()]),
        Settlement { claim: d, emitted: Vec::new(), verdict: Verdict::DeadLetter(Box::new(dead)) },
        Settlement { claim: r, emitted: Vec::new(), verdict: Verdict::Retry { due: later, delivery: history.clone() } },
        Settlement { claim: f, emitted: Vec::new(), verdict: Verdict::Defer { due: later } },
        ack(a, Vec::new()),
    ];
    store.settle(batch.clone())?;
    store.settle(batch.clone())?;
    p.store()?.settle(batch)?;

    let lines = archived(&store)?;
    assert_eq!(lines.len(), 2);
    let d = store.depth()?;
    assert_eq!((d.queued, d.delayed, d.claimed, d.dead_letters), (3, 2, 0, 1));
    let known = store.known(&[&again, &others[0], &others[1], &others[2], &others[3], &follow])?;
    let places: Vec<Option<&str>> = [&again, &others[0], &others[1], &others[2], &others[3], &follow]
        .iter()
        .map(|e| known.get(&e.event_id).copied())
        .collect();
    let expected =
        [Some("archived"), Some("archived"), Some("dead-lettered"), Some("queued"), Some("queued"), Some("queued")];
    assert_eq!(places, expected);
    // The acked redelivery's record is gone, the retry's is written; the
    // archive's byte count is its lines' (each with its newline).
    let key = |k: &str| p.server.key(k);
    let (gone, kept, bytes, day): (Option<String>, Option<String>, Vec<u64>, Vec<String>) =
        p.server.run("read the settled keys", Budget::Once, |c| {
            redis::pipe()
                .cmd("HGET")
                .arg(key("delivery"))
                .arg(&again_key)
                .cmd("HGET")
                .arg(key("delivery"))
                .arg(&retry_key)
                .cmd("HVALS")
                .arg(key("archive-bytes"))
                .cmd("ZRANGE")
                .arg(key("archive-days"))
                .arg(0)
                .arg(-1)
                .query(c)
        })?;
    assert_eq!(gone, None);
    assert_eq!(serde_json::from_str::<Delivery>(&kept.context("the retry's delivery record")?)?, history);
    let day = day.first().context("an archive day")?;
    let raw: Vec<String> = p.server.run("read the archive day", Budget::Once, |c| {
        redis::cmd("LRANGE").arg(key(&format!("archive:{day}"))).arg(0).arg(-1).query(c)
    })?;
    assert_eq!(bytes, vec![raw.iter().map(|l| l.len() as u64 + 1).sum::<u64>()]);
    let ids: BTreeSet<String> = p.server.run("read the archived ids", Budget::Once, |c| {
        redis::cmd("SMEMBERS").arg(key(&format!("archive-ids:{day}"))).query(c)
    })?;
    assert_eq!(ids, BTreeSet::from([again.event_id.clone(), others[0].event_id.clone()]));
    assert_eq!(drain(&store)?.into_iter().map(|c| c.event).collect::<Vec<_>>(), vec![follow]);
    Ok(())
}

#[test]
fn flush_gives_back_prefetched_claims_and_depth_follows() -> Result<()> {
    let p = Prefix::new()?;
    let store = p.store()?;
    let events: Vec<Event> = (0..3).map(|_| event("test.depth", Priority::Medium)).collect::<Result<_>>()?;
    store.enqueue(&events)?;
    let first = store.claim()?.context("an entry")?;
    assert_eq!(first.event, events[0]);
    store.flush();
    let d = store.depth()?;
    assert_eq!((d.queued, d.claimed, d.delayed, d.dead_letters), (2, 1, 0, 0));
    assert_eq!(store.by_priority()?, vec![(Priority::Medium, 2)]);
    let rest = drain(&store)?;
    assert_eq!(rest.iter().map(|c| c.event.clone()).collect::<Vec<_>>(), events[1..].to_vec());
    assert!(rest.iter().all(|c| c.name.attempt == 1), "a prefetched claim given back keeps its attempt");
    let unknown = event("test.never", Priority::Low)?;
    assert!(store.known(&[&unknown])?.is_empty());
    Ok(())
}

#[test]
fn a_server_that_does_not_answer_is_named_in_the_error() {
    let err = Redis::open("redis://:hunter2@127.0.0.1:1/0", "cortex-test").err().map(|e| format!("{e:#}"));
    let err = err.unwrap_or_default();
    assert!(err.contains("is redis-server running at"), "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(!err.contains("hunter2"), "a password was shown: {err}");
}
