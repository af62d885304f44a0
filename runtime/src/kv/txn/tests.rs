use super::*;
use crate::kv::{Applied, sqlite};

fn txn(backend: Arc<dyn Backend>, id: &str) -> Txn {
    Txn::new(
        backend,
        vec![Grant { bucket: "w".into(), write: true }, Grant { bucket: "r".into(), write: false }],
        Limits { max_keys_written: 3, max_value_bytes: 8, max_bytes_written: 64 },
        Mark { event_id: id.into(), handler: "h".into(), generation: 0 },
    )
}

fn db() -> (tempfile::TempDir, Arc<dyn Backend>) {
    let dir = tempfile::tempdir().unwrap();
    let b = sqlite::SqliteBackend::open(&dir.path().join("kv.db")).unwrap();
    (dir, Arc::new(b))
}

#[test]
fn reads_see_own_writes_and_nothing_reaches_the_backend_before_commit() {
    let (_d, b) = db();
    let mut t = txn(b.clone(), "e1");
    t.set("w", "k", b"v".to_vec()).unwrap();
    assert_eq!(t.get("w", "k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(t.increment("w", "n", 2).unwrap(), 2);
    assert_eq!(t.increment("w", "n", 3).unwrap(), 5);
    assert_eq!(b.get("w", "k").unwrap(), None);
    let c = t.into_changes();
    assert_eq!(b.commit(std::slice::from_ref(&c)).unwrap(), vec![Applied::Applied]);
    assert_eq!(b.get("w", "n").unwrap().unwrap().value, b"5");
    // The same mark again (a redelivery after a crash) changes nothing.
    assert_eq!(b.commit(&[c]).unwrap(), vec![Applied::Already]);
    assert_eq!(b.get("w", "n").unwrap().unwrap().value, b"5");
}

#[test]
fn grants_and_limits_are_enforced() {
    let (_d, b) = db();
    let mut t = txn(b, "e1");
    assert_eq!(t.open("x"), Err(KvError::NoSuchStore("x".into())));
    assert_eq!(t.set("r", "k", vec![]), Err(KvError::AccessDenied("r".into())));
    assert!(t.get("r", "k").unwrap().is_none());
    assert!(matches!(t.set("w", "k", vec![0; 9]), Err(KvError::Other(m)) if m.contains("kv_value_bytes")));
    for k in ["a", "b", "c"] {
        t.set("w", k, vec![1]).unwrap();
    }
    t.set("w", "a", vec![2]).unwrap();
    assert!(matches!(t.set("w", "d", vec![1]), Err(KvError::Other(m)) if m.contains("kv_keys_written")));
    assert!(matches!(t.set("w", "", vec![1]), Err(KvError::Other(_))));
}

#[test]
fn concurrent_increments_all_count_and_read_then_write_conflicts() {
    let (_d, b) = db();
    let mut a = txn(b.clone(), "e1");
    let mut c = txn(b.clone(), "e2");
    a.increment("w", "n", 1).unwrap();
    c.increment("w", "n", 1).unwrap();
    // Both read "x" (absent) and write it.
    assert!(a.get("w", "x").unwrap().is_none());
    a.set("w", "x", b"a".to_vec()).unwrap();
    assert!(c.get("w", "x").unwrap().is_none());
    c.set("w", "x", b"c".to_vec()).unwrap();
    let out = b.commit(&[a.into_changes(), c.into_changes()]).unwrap();
    assert_eq!(out, vec![Applied::Applied, Applied::Conflict]);
    assert_eq!(b.get("w", "x").unwrap().unwrap().value, b"a");
    assert_eq!(b.get("w", "n").unwrap().unwrap().value, b"1");
    // Run again, the second sees the first's writes and applies.
    let mut c = txn(b.clone(), "e2");
    c.increment("w", "n", 1).unwrap();
    assert_eq!(c.get("w", "x").unwrap(), Some(b"a".to_vec()));
    c.set("w", "x", b"c".to_vec()).unwrap();
    assert_eq!(b.commit(&[c.into_changes()]).unwrap(), vec![Applied::Applied]);
    assert_eq!(b.get("w", "n").unwrap().unwrap().value, b"2");
}

#[test]
fn listing_merges_buffered_writes_and_pages() {
    let (_d, b) = db();
    let mut t = Txn::new(
        b.clone(),
        vec![Grant { bucket: "w".into(), write: true }],
        Limits { max_keys_written: 5000, max_value_bytes: 8, max_bytes_written: 1 << 20 },
        Mark { event_id: "e1".into(), handler: "h".into(), generation: 0 },
    );
    for i in 0..1500 {
        t.set("w", &format!("k{i:04}"), vec![1]).unwrap();
    }
    b.commit(&[t.into_changes()]).unwrap();
    let mut t = txn(b.clone(), "e2");
    t.delete("w", "k0000").unwrap();
    t.set("w", "zz", vec![1]).unwrap();
    let (first, next) = t.list_keys("w", None).unwrap();
    assert_eq!(first.len(), PAGE);
    assert_eq!(first[0], "k0001");
    let (rest, end) = t.list_keys("w", next).unwrap();
    assert_eq!(end, None);
    assert_eq!(rest.len(), 500);
    assert_eq!(rest.last().map(String::as_str), Some("zz"));
    assert_eq!(b.buckets().unwrap(), vec![("w".to_string(), 1500)]);
}

#[test]
fn a_lane_reads_its_pending_writes_and_what_it_builds_on_them_commits_in_order() {
    let (_d, b) = db();
    let lane = Arc::new(Overlay::default());
    let mut t1 = txn(b.clone(), "e1").with_overlay(lane.clone());
    assert_eq!(t1.get("w", "k").unwrap(), None);
    t1.set("w", "k", b"1".to_vec()).unwrap();
    t1.increment("w", "n", 1).unwrap();
    t1.set("w", "x", b"a".to_vec()).unwrap();
    let c1 = t1.into_changes();
    lane.push(&c1);
    // The next event runs before e1 is committed, and reads it.
    let mut t2 = txn(b.clone(), "e2").with_overlay(lane.clone());
    assert_eq!(t2.get("w", "k").unwrap(), Some(b"1".to_vec()));
    t2.set("w", "k", b"2".to_vec()).unwrap();
    assert_eq!(t2.increment("w", "n", 1).unwrap(), 2);
    let c2 = t2.into_changes();
    lane.push(&c2);
    // A blind write of a key with a pending write is ordered too.
    let mut t3 = txn(b.clone(), "e3").with_overlay(lane.clone());
    t3.set("w", "x", b"c".to_vec()).unwrap();
    let c3 = t3.into_changes();
    // Reaching the committer before e1, what was built on e1 is refused.
    assert_eq!(b.commit(&[c2.clone(), c3.clone()]).unwrap(), vec![Applied::Conflict, Applied::Conflict]);
    assert_eq!(b.get("w", "n").unwrap(), None);
    // e1 commits, flagged first as the committer does; until the
    // committer removes it from the overlay, a reader must not count it
    // twice.
    lane.committing(&c1.mark);
    assert_eq!(b.commit(std::slice::from_ref(&c1)).unwrap(), vec![Applied::Applied]);
    let mut t4 = txn(b.clone(), "e4").with_overlay(lane.clone());
    assert_eq!(t4.increment("w", "n", 1).unwrap(), 3, "e1 once (committed), e2 once (pending), e4");
    lane.resolve(&c1.mark, false);
    assert_eq!(b.commit(&[c2.clone(), c3]).unwrap(), vec![Applied::Applied, Applied::Applied]);
    lane.resolve(&c2.mark, false);
    assert!(lane.is_empty());
    assert_eq!(b.get("w", "k").unwrap().unwrap().value, b"2");
    assert_eq!(b.get("w", "n").unwrap().unwrap().value, b"2");
    assert_eq!(b.get("w", "x").unwrap().unwrap().value, b"c");
}

#[test]
fn a_reader_of_a_pending_write_that_is_refused_runs_again() {
    let (_d, b) = db();
    let lane = Arc::new(Overlay::default());
    let mut t1 = txn(b.clone(), "e1").with_overlay(lane.clone());
    assert_eq!(t1.get("w", "k").unwrap(), None);
    t1.set("w", "k", b"1".to_vec()).unwrap();
    let c1 = t1.into_changes();
    lane.push(&c1);
    let mut t2 = txn(b.clone(), "e2").with_overlay(lane.clone());
    // Read only, and another key written from it.
    assert_eq!(t2.get("w", "k").unwrap(), Some(b"1".to_vec()));
    t2.set("w", "copy", b"1".to_vec()).unwrap();
    let c2 = t2.into_changes();
    // Someone else writes k first: e1 conflicts, and so does e2.
    let mut other = txn(b.clone(), "o");
    other.set("w", "k", b"9".to_vec()).unwrap();
    b.commit(&[other.into_changes()]).unwrap();
    assert_eq!(b.commit(&[c1.clone(), c2]).unwrap(), vec![Applied::Conflict, Applied::Conflict]);
    assert_eq!(b.get("w", "copy").unwrap(), None);
}

#[test]
fn a_refused_read_then_write_drains_the_lane_and_its_rerun_commits() {
    let (_d, b) = db();
    let lane = Arc::new(Overlay::default());
    // The demo's pattern: read a key, write it back changed.
    let rmw = |id: &str| -> Changes {
        lane.begin();
        let mut t = txn(b.clone(), id).with_overlay(lane.clone());
        let n: u64 = t.get("w", "n").unwrap().map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap());
        t.set("w", "n", (n + 1).to_string().into_bytes()).unwrap();
        let c = t.into_changes();
        lane.push(&c);
        c
    };
    let (c1, c2) = (rmw("e1"), rmw("e2"));
    assert_eq!(c2.after, vec![c1.mark.clone()], "e2 ran ahead, on e1's pending write");
    // A forced conflict: another writer changes n first.
    let mut other = txn(b.clone(), "o");
    other.set("w", "n", b"10".to_vec()).unwrap();
    b.commit(&[other.into_changes()]).unwrap();
    assert_eq!(b.commit(&[c1.clone(), c2.clone()]).unwrap(), vec![Applied::Conflict, Applied::Conflict]);
    lane.resolve(&c1.mark, true);
    // Here the old overlay ran e1 again at once, through e2's pending
    // write, which was itself to be refused: the re-runs were built on
    // refused writes, and refused, without end.
    assert!(lane.has("w", "n"), "e2's doomed write is still pending");
    lane.resolve(&c2.mark, true);
    // Now the re-run begins only once the lane has drained: it reads
    // committed state only, and what follows builds on it.
    let (r1, r2) = (rmw("e1"), rmw("e2"));
    assert!(r1.after.is_empty(), "the re-run is built on no pending write");
    assert_eq!(lane.drains(), 1);
    assert_eq!(b.commit(&[r1.clone(), r2.clone()]).unwrap(), vec![Applied::Applied, Applied::Applied]);
    lane.resolve(&r1.mark, false);
    lane.resolve(&r2.mark, false);
    assert_eq!(b.get("w", "n").unwrap().unwrap().value, b"12", "10, then e1 and e2 once each");
    assert!(lane.is_empty());
}

#[test]
fn pruned_marks_are_forgotten() {
    let (_d, b) = db();
    let mut t = txn(b.clone(), "e1");
    t.increment("w", "n", 1).unwrap();
    let c = t.into_changes();
    b.commit(std::slice::from_ref(&c)).unwrap();
    assert_eq!(b.prune_marks(0).unwrap(), 0, "nothing is older than the epoch");
    let later = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64 + 1000;
    assert_eq!(b.prune_marks(later).unwrap(), 1);
    // Forgotten: the same buffer would apply again.
    assert_eq!(b.commit(&[c]).unwrap(), vec![Applied::Applied]);
    assert_eq!(b.get("w", "n").unwrap().unwrap().value, b"2");
}
