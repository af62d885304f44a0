//! Handler state on both backends (issues 12 and 13): the behaviours of
//! [`cortex::kv`] that a dispatcher relies on, each run against the
//! embedded SQLite backend and against [`RedisKv`] on the test Redis
//! (127.0.0.1:6379, under a prefix of its own, deleted afterwards), so the
//! two cannot drift apart. Test names end in `::sqlite` or `::redis`.
//!
//! With no Redis answering, the `::redis` tests fail saying how to start
//! one (`make redis`); they are never skipped.

use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use cortex::kv::sqlite::SqliteBackend;
use cortex::kv::{Applied, Backend, Changes, Grant, Limits, Mark, Op, PAGE, Read, Txn};
use cortex::store::redis::kv::RedisKv;
use cortex_tests::RedisPrefix;

/// Each case once per backend: `NAME::sqlite` and `NAME::redis`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() -> anyhow::Result<()> {
                let dir = tempfile::tempdir()?;
                super::cases::$name(super::sqlite(&dir)?)
            }

            #[test]
            fn redis() -> anyhow::Result<()> {
                let scratch = cortex_tests::RedisPrefix::new(concat!("kv-", stringify!($name)))?;
                super::cases::$name(super::redis(&scratch))
            }
        }
    )*};
}

on_both!(
    nothing_is_seen_before_commit_and_a_redelivered_buffer_is_skipped,
    concurrent_increments_all_count,
    read_then_write_conflicts_are_refused_whole,
    increments_are_exact_to_u64_and_refuse_non_numbers,
    values_and_keys_are_kept_byte_for_byte,
    keys_page_in_byte_order_by_prefix_and_cursor,
    listing_merges_buffered_writes_and_pages,
    buckets_count_their_keys,
    pruned_marks_are_forgotten,
    a_buffer_built_on_another_applies_only_after_it,
);

fn sqlite(dir: &tempfile::TempDir) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(SqliteBackend::open(&dir.path().join("kv/state.db"))?))
}

fn redis(scratch: &RedisPrefix) -> Arc<dyn Backend> {
    Arc::new(RedisKv::new(scratch.server.clone()))
}

fn mark(event_id: &str) -> Mark {
    Mark { event_id: event_id.into(), handler: "h".into(), generation: 0 }
}

/// An invocation of handler `h` for `event_id`, granted `w` read-write and
/// `x` read-write.
fn txn(backend: &Arc<dyn Backend>, event_id: &str) -> Txn {
    Txn::new(
        backend.clone(),
        vec![Grant { bucket: "w".into(), write: true }, Grant { bucket: "x".into(), write: true }],
        Limits { max_keys_written: 5000, max_value_bytes: 1 << 16, max_bytes_written: 1 << 22 },
        mark(event_id),
    )
}

/// A buffer of `ops` in bucket `w`, read nothing first.
fn changes(event_id: &str, ops: Vec<(&str, Op)>) -> Changes {
    Changes {
        mark: mark(event_id),
        ops: ops.into_iter().map(|(k, op)| ("w".to_string(), k.to_string(), op)).collect(),
        reads: Vec::new(),
        after: Vec::new(),
        fence: None,
    }
}

fn value(b: &Arc<dyn Backend>, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
    Ok(b.get(bucket, key)?.map(|v| v.value))
}

fn text(b: &Arc<dyn Backend>, key: &str) -> Result<Option<String>> {
    value(b, "w", key)?.map(|v| String::from_utf8(v).context("not UTF-8")).transpose()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

mod cases {
    use super::*;

    pub fn nothing_is_seen_before_commit_and_a_redelivered_buffer_is_skipped(b: Arc<dyn Backend>) -> Result<()> {
        let mut t = txn(&b, "e1");
        t.set("w", "k", b"v".to_vec())?;
        assert_eq!(t.get("w", "k")?, Some(b"v".to_vec()), "an invocation reads its own write");
        assert_eq!(t.increment("w", "n", 2)?, 2);
        assert_eq!(t.increment("w", "n", 3)?, 5);
        assert_eq!(b.get("w", "k")?, None, "nothing reaches the backend before commit");
        assert_eq!(b.buckets()?, vec![]);
        let c = t.into_changes();
        assert_eq!(b.commit(std::slice::from_ref(&c))?, vec![Applied::Applied]);
        assert_eq!(text(&b, "n")?.as_deref(), Some("5"));
        let k = b.get("w", "k")?.context("k was committed")?;
        assert_eq!((k.value, k.version), (b"v".to_vec(), 1));

        // The same mark again (a redelivery after a crash) changes nothing.
        assert_eq!(b.commit(std::slice::from_ref(&c))?, vec![Applied::Already]);
        assert_eq!(text(&b, "n")?.as_deref(), Some("5"));
        assert_eq!(b.get("w", "k")?.map(|v| v.version), Some(1), "not rewritten");

        // A replay raises the generation and applies on purpose.
        let replayed = Changes { mark: Mark { generation: 1, ..c.mark.clone() }, ..c };
        assert_eq!(b.commit(&[replayed])?, vec![Applied::Applied]);
        assert_eq!(text(&b, "n")?.as_deref(), Some("10"));
        assert_eq!(b.get("w", "k")?.map(|v| v.version), Some(2));

        // A buffer with no writes is applied and leaves no mark.
        let empty = changes("e2", vec![]);
        assert_eq!(b.commit(std::slice::from_ref(&empty))?, vec![Applied::Applied]);
        assert_eq!(b.commit(&[empty, changes("e2", vec![("z", Op::Set(vec![1]))])])?, vec![Applied::Applied; 2]);
        Ok(())
    }

    pub fn concurrent_increments_all_count(b: Arc<dyn Backend>) -> Result<()> {
        // Two invocations that both increment, in one batch.
        let mut a = txn(&b, "e1");
        let mut c = txn(&b, "e2");
        a.increment("w", "n", 1)?;
        c.increment("w", "n", 1)?;
        assert_eq!(b.commit(&[a.into_changes(), c.into_changes()])?, vec![Applied::Applied; 2]);
        assert_eq!(text(&b, "n")?.as_deref(), Some("2"));

        // Four threads committing one invocation at a time, all racing.
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let b = b.clone();
                std::thread::spawn(move || -> Result<()> {
                    for i in 0..25 {
                        let mut t = txn(&b, &format!("t{thread}-{i}"));
                        t.increment("w", "n", 1)?;
                        t.increment("w", "sum", i)?;
                        let out = b.commit(&[t.into_changes()])?;
                        ensure!(out == vec![Applied::Applied], "increments never conflict: {out:?}");
                    }
                    Ok(())
                })
            })
            .collect();
        for t in threads {
            t.join().map_err(|_| anyhow::anyhow!("a committing thread panicked"))??;
        }
        assert_eq!(text(&b, "n")?.as_deref(), Some("102"), "2 + 4 threads × 25");
        assert_eq!(text(&b, "sum")?.as_deref(), Some("1200"), "4 × (0 + 1 + ... + 24)");
        Ok(())
    }

    pub fn read_then_write_conflicts_are_refused_whole(b: Arc<dyn Backend>) -> Result<()> {
        let mut a = txn(&b, "e1");
        let mut c = txn(&b, "e2");
        a.increment("w", "n", 1)?;
        c.increment("w", "n", 1)?;
        // Both read "x" (absent) and write it.
        assert!(a.get("w", "x")?.is_none());
        a.set("w", "x", b"a".to_vec())?;
        assert!(c.get("w", "x")?.is_none());
        c.set("w", "x", b"c".to_vec())?;
        c.set("x", "other", b"c".to_vec())?;
        let out = b.commit(&[a.into_changes(), c.into_changes()])?;
        assert_eq!(out, vec![Applied::Applied, Applied::Conflict]);
        assert_eq!(text(&b, "x")?.as_deref(), Some("a"));
        assert_eq!(text(&b, "n")?.as_deref(), Some("1"), "the refused buffer's increment is not applied");
        assert_eq!(b.get("x", "other")?, None, "nor its write to another bucket");

        // Run again, the second sees the first's writes and applies.
        let mut c = txn(&b, "e2");
        c.increment("w", "n", 1)?;
        assert_eq!(c.get("w", "x")?, Some(b"a".to_vec()));
        c.set("w", "x", b"c".to_vec())?;
        assert_eq!(b.commit(&[c.into_changes()])?, vec![Applied::Applied]);
        assert_eq!(text(&b, "n")?.as_deref(), Some("2"));
        assert_eq!(text(&b, "x")?.as_deref(), Some("c"));

        // A key read, then changed by another commit, then written: refused;
        // a key deleted since it was read likewise.
        let mut late = txn(&b, "e3");
        assert_eq!(late.get("w", "x")?, Some(b"c".to_vec()));
        late.set("w", "x", b"late".to_vec())?;
        assert_eq!(b.commit(&[changes("e4", vec![("x", Op::Set(b"e4".to_vec()))])])?, vec![Applied::Applied]);
        assert_eq!(b.commit(&[late.into_changes()])?, vec![Applied::Conflict]);
        let stale = Changes {
            mark: mark("e5"),
            ops: vec![("w".into(), "y".into(), Op::Set(b"y".to_vec()))],
            reads: vec![Read { bucket: "w".into(), key: "x".into(), version: 1 }],
            after: Vec::new(),
            fence: None,
        };
        assert_eq!(b.commit(std::slice::from_ref(&stale))?, vec![Applied::Conflict], "x is at version 3");
        assert_eq!(b.get("w", "y")?, None);
        assert_eq!(b.commit(&[changes("e6", vec![("x", Op::Delete)])])?, vec![Applied::Applied]);
        let absent = Changes { reads: vec![Read { version: 0, ..stale.reads[0].clone() }], ..stale };
        assert_eq!(b.commit(&[absent])?, vec![Applied::Applied], "absent as read");
        assert_eq!(text(&b, "y")?.as_deref(), Some("y"));
        Ok(())
    }

    pub fn increments_are_exact_to_u64_and_refuse_non_numbers(b: Arc<dyn Backend>) -> Result<()> {
        let sets = vec![
            ("big", Op::Set(b"18446744073709551614".to_vec())),
            ("padded", Op::Set(b" 007 ".to_vec())),
            ("words", Op::Set(b"seven".to_vec())),
        ];
        assert_eq!(b.commit(&[changes("e1", sets)])?, vec![Applied::Applied]);
        let out = b.commit(&[
            changes("e2", vec![("big", Op::Add(1))]),
            changes("e3", vec![("padded", Op::Add(1)), ("fresh", Op::Add(u64::MAX))]),
        ])?;
        assert_eq!(out, vec![Applied::Applied; 2]);
        assert_eq!(text(&b, "big")?.as_deref(), Some("18446744073709551615"), "exact past 2^53");
        assert_eq!(text(&b, "padded")?.as_deref(), Some("8"));
        assert_eq!(text(&b, "fresh")?.as_deref(), Some("18446744073709551615"));
        // Past u64, or not a number (set by someone else since the
        // invocation read it): run the event again.
        let out = b.commit(&[
            changes("e4", vec![("big", Op::Add(1)), ("n", Op::Set(b"1".to_vec()))]),
            changes("e5", vec![("words", Op::Add(1))]),
        ])?;
        assert_eq!(out, vec![Applied::Conflict; 2]);
        assert_eq!(b.get("w", "n")?, None, "a refused buffer writes nothing");
        assert_eq!(text(&b, "words")?.as_deref(), Some("seven"));
        Ok(())
    }

    pub fn values_and_keys_are_kept_byte_for_byte(b: Arc<dyn Backend>) -> Result<()> {
        let odd = b"a b\0\xff\r\n 12 ".to_vec();
        let keys = ["with space", "ünïcødé/键", "a:b:c", "*?[x]"];
        let mut ops: Vec<(&str, Op)> = keys.iter().map(|k| (*k, Op::Set(odd.clone()))).collect();
        ops.push(("empty", Op::Set(Vec::new())));
        assert_eq!(b.commit(&[changes("e1", ops)])?, vec![Applied::Applied]);
        for k in keys {
            assert_eq!(value(&b, "w", k)?, Some(odd.clone()), "{k:?}");
        }
        assert_eq!(value(&b, "w", "empty")?, Some(Vec::new()));
        let mut listed = b.keys("w", "", None, 100)?;
        listed.sort();
        let mut want: Vec<String> = keys.iter().map(|k| k.to_string()).chain(["empty".to_string()]).collect();
        want.sort();
        assert_eq!(listed, want);
        Ok(())
    }

    pub fn keys_page_in_byte_order_by_prefix_and_cursor(b: Arc<dyn Backend>) -> Result<()> {
        let keys = ["a", "a/", "a/1", "a/2", "a/3", "a0", "b/1", "é", "éa", "Z"];
        let ops = keys.iter().map(|k| (*k, Op::Set(vec![1]))).collect();
        assert_eq!(b.commit(&[changes("e1", ops)])?, vec![Applied::Applied]);
        let all = b.keys("w", "", None, 100)?;
        assert_eq!(all, ["Z", "a", "a/", "a/1", "a/2", "a/3", "a0", "b/1", "é", "éa"], "byte order");
        assert_eq!(b.keys("w", "a/", None, 2)?, ["a/", "a/1"]);
        assert_eq!(b.keys("w", "a/", Some("a/1"), 2)?, ["a/2", "a/3"]);
        assert_eq!(b.keys("w", "a/", Some("a/3"), 2)?, Vec::<String>::new());
        assert_eq!(b.keys("w", "a/", Some("0"), 10)?, ["a/", "a/1", "a/2", "a/3"], "a cursor before the prefix");
        assert_eq!(b.keys("w", "", Some("a0"), 3)?, ["b/1", "é", "éa"]);
        assert_eq!(b.keys("w", "é", None, 10)?, ["é", "éa"]);
        assert_eq!(b.keys("w", "c", None, 10)?, Vec::<String>::new());
        assert_eq!(b.keys("other", "", None, 10)?, Vec::<String>::new());
        // Deleted keys leave the listing.
        assert_eq!(b.commit(&[changes("e2", vec![("a/2", Op::Delete)])])?, vec![Applied::Applied]);
        assert_eq!(b.keys("w", "a/", None, 10)?, ["a/", "a/1", "a/3"]);
        Ok(())
    }

    pub fn listing_merges_buffered_writes_and_pages(b: Arc<dyn Backend>) -> Result<()> {
        let mut t = txn(&b, "e1");
        for i in 0..1500 {
            t.set("w", &format!("k{i:04}"), vec![1])?;
        }
        assert_eq!(b.commit(&[t.into_changes()])?, vec![Applied::Applied]);
        let mut t = txn(&b, "e2");
        t.delete("w", "k0000")?;
        t.set("w", "zz", vec![1])?;
        let (first, next) = t.list_keys("w", None)?;
        assert_eq!(first.len(), PAGE);
        assert_eq!(first[0], "k0001");
        let (rest, end) = t.list_keys("w", next)?;
        assert_eq!(end, None);
        assert_eq!(rest.len(), 500);
        assert_eq!(rest.last().map(String::as_str), Some("zz"));
        Ok(())
    }

    pub fn buckets_count_their_keys(b: Arc<dyn Backend>) -> Result<()> {
        let mut t = txn(&b, "e1");
        for k in ["a", "b", "c"] {
            t.set("w", k, vec![1])?;
        }
        t.increment("x", "n", 1)?;
        assert_eq!(b.commit(&[t.into_changes()])?, vec![Applied::Applied]);
        assert_eq!(b.buckets()?, vec![("w".to_string(), 3), ("x".to_string(), 1)]);
        let mut t = txn(&b, "e2");
        t.delete("x", "n")?;
        t.delete("w", "a")?;
        t.delete("w", "never-there")?;
        assert_eq!(b.commit(&[t.into_changes()])?, vec![Applied::Applied]);
        assert_eq!(b.buckets()?, vec![("w".to_string(), 2)], "an emptied bucket is not listed");
        Ok(())
    }

    pub fn a_buffer_built_on_another_applies_only_after_it(b: Arc<dyn Backend>) -> Result<()> {
        let first = changes("e1", vec![("n", Op::Set(b"1".to_vec()))]);
        let built = Changes { after: vec![mark("e1")], ..changes("e2", vec![("n", Op::Set(b"2".to_vec()))]) };
        // Not applied yet (its commit refused or not here): refused whole.
        assert_eq!(b.commit(std::slice::from_ref(&built))?, vec![Applied::Conflict]);
        assert_eq!(text(&b, "n")?, None);
        assert_eq!(b.get_with_marks("w", "n", &[mark("e1"), mark("e2")])?, (None, vec![false, false]));
        // In one batch behind it, or after it was committed: applied.
        assert_eq!(b.commit(&[first, built.clone()])?, vec![Applied::Applied, Applied::Applied]);
        assert_eq!(text(&b, "n")?.as_deref(), Some("2"));
        let (found, marks) = b.get_with_marks("w", "n", &[mark("e1"), mark("e9"), mark("e2")])?;
        assert_eq!((found.map(|v| v.value), marks), (Some(b"2".to_vec()), vec![true, false, true]));
        assert!(b.applied(&mark("e2"))? && !b.applied(&mark("e9"))?);
        let later = Changes { after: vec![mark("e2")], ..changes("e3", vec![("n", Op::Set(b"3".to_vec()))]) };
        assert_eq!(b.commit(&[later])?, vec![Applied::Applied]);
        Ok(())
    }

    pub fn pruned_marks_are_forgotten(b: Arc<dyn Backend>) -> Result<()> {
        let before = now_ms().saturating_sub(60_000);
        let one = changes("e1", vec![("n", Op::Add(1))]);
        let two = changes("e2", vec![("n", Op::Add(1))]);
        assert_eq!(b.commit(&[one.clone(), two.clone()])?, vec![Applied::Applied; 2]);
        assert_eq!(b.prune_marks(before)?, 0, "marks of a minute ago or later are kept");
        assert_eq!(b.commit(std::slice::from_ref(&one))?, vec![Applied::Already]);
        assert_eq!(b.prune_marks(now_ms() + 60_000)?, 2);
        assert_eq!(b.prune_marks(now_ms() + 60_000)?, 0);
        // A pruned mark no longer guards: that is why only marks of events
        // settled long since are pruned.
        assert_eq!(b.commit(&[one])?, vec![Applied::Applied]);
        assert_eq!(text(&b, "n")?.as_deref(), Some("3"));
        Ok(())
    }
}

/// Everything the Redis backend writes is under the deployment's prefix,
/// in the four kinds of key its module documents, and deleted with it.
#[test]
fn redis_state_stays_under_its_prefix() -> Result<()> {
    let scratch = RedisPrefix::new("kv-prefix")?;
    let b = redis(&scratch);
    let mut t = txn(&b, "e1");
    t.set("w", "k", b"v".to_vec())?;
    assert_eq!(b.commit(&[t.into_changes()])?, vec![Applied::Applied]);
    let p = &scratch.prefix;
    let want: Vec<String> =
        ["kv:buckets", "kv:data:w", "kv:keys:w", "kv:marks"].iter().map(|k| format!("{p}:{k}")).collect();
    assert_eq!(scratch.keys()?, want);
    let again = RedisPrefix { prefix: p.clone(), url: scratch.url.clone(), server: scratch.server.clone() };
    drop(scratch);
    assert_eq!(again.keys()?, Vec::<String>::new(), "the test's keys are deleted when it ends");
    Ok(())
}
