//! The buckets of a native build (the handlers' unit tests, which run on the
//! build machine, where the `wasi:keyvalue` imports do not exist): one
//! in-memory map per thread, so each `#[test]` starts empty. It behaves as
//! the host does where a handler can see it — counters are decimal text,
//! `increment` refuses a value that is not one, `list-keys` pages with a
//! cursor (a small [`PAGE`], so paging is exercised) — but it has no
//! transaction: a test that wants a failed invocation to change nothing
//! checks the handler's logic, not this map.

use super::KvFault;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

/// Keys per `list-keys` page.
pub const PAGE: usize = 4;

#[derive(Default)]
struct Memory {
    buckets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    denied: BTreeSet<String>,
    read_only: BTreeSet<String>,
}

thread_local! {
    static MEMORY: RefCell<Memory> = RefCell::new(Memory::default());
}

fn with<R>(f: impl FnOnce(&mut Memory) -> R) -> R {
    MEMORY.with(|m| f(&mut m.borrow_mut()))
}

/// Makes `open(bucket)` fail as an ungranted bucket does (`no-such-store`).
pub fn deny(bucket: &str) {
    with(|m| m.denied.insert(bucket.to_string()));
}

/// Makes writes to `bucket` fail as in a `keyvalue_read` grant (`access-denied`).
pub fn read_only(bucket: &str) {
    with(|m| m.read_only.insert(bucket.to_string()));
}

/// Empties every bucket of this thread.
pub fn reset() {
    with(|m| *m = Memory::default());
}

/// The keys and values (as text) of `bucket` on this thread.
pub fn dump(bucket: &str) -> BTreeMap<String, String> {
    with(|m| {
        m.buckets
            .get(bucket)
            .map(|b| b.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect())
            .unwrap_or_default()
    })
}

pub(super) struct Bucket(String);

pub(super) fn open(name: &str) -> Result<Bucket, KvFault> {
    if with(|m| m.denied.contains(name)) { Err(KvFault::NoSuchStore) } else { Ok(Bucket(name.to_string())) }
}

impl Bucket {
    fn map<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Vec<u8>>) -> R) -> R {
        with(|m| f(m.buckets.entry(self.0.clone()).or_default()))
    }

    fn writable(&self) -> Result<(), KvFault> {
        if with(|m| m.read_only.contains(&self.0)) { Err(KvFault::AccessDenied) } else { Ok(()) }
    }

    pub(super) fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvFault> {
        Ok(self.map(|b| b.get(key).cloned()))
    }

    pub(super) fn set(&self, key: &str, value: &[u8]) -> Result<(), KvFault> {
        self.writable()?;
        self.map(|b| b.insert(key.to_string(), value.to_vec()));
        Ok(())
    }

    pub(super) fn delete(&self, key: &str) -> Result<(), KvFault> {
        self.writable()?;
        self.map(|b| b.remove(key));
        Ok(())
    }

    pub(super) fn exists(&self, key: &str) -> Result<bool, KvFault> {
        Ok(self.map(|b| b.contains_key(key)))
    }

    pub(super) fn increment(&self, key: &str, delta: u64) -> Result<u64, KvFault> {
        self.writable()?;
        self.map(|b| {
            let now = match b.get(key) {
                None => 0,
                Some(v) => std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| KvFault::Other("cannot increment a value that is not a decimal number".into()))?,
            };
            let now =
                now.checked_add(delta).ok_or_else(|| KvFault::Other("increment overflows a 64-bit counter".into()))?;
            b.insert(key.to_string(), now.to_string().into_bytes());
            Ok(now)
        })
    }

    pub(super) fn list_keys(&self, cursor: Option<u64>) -> Result<(Vec<String>, Option<u64>), KvFault> {
        let skip = cursor.unwrap_or(0) as usize;
        Ok(self.map(|b| {
            let page: Vec<String> = b.keys().skip(skip).take(PAGE).cloned().collect();
            let next = (skip + page.len() < b.len()).then_some((skip + page.len()) as u64);
            (page, next)
        }))
    }

    pub(super) fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvFault> {
        keys.iter().map(|k| self.get(k)).collect()
    }
}
