//! Handler state: typed access to the key-value buckets the host provides
//! through `wasi:keyvalue@0.2.0-draft` (`store`, `atomics`, `batch`).
//!
//! ```ignore
//! use cortex_sdk::kv::{self, Bucket};
//!
//! let workers = Bucket::open("workers")?;            // granted by `keyvalue = ["workers"]`
//! let mut w: Worker = workers.get("w-1")?.unwrap_or_default();
//! w.status = "busy".into();
//! workers.set("w-1", &w)?;
//! let runs = workers.increment("w-1/runs", 1)?;      // a counter: adds, never loses a delta
//! let ids = workers.keys("w-")?;                     // every key starting with "w-"
//! let total: Option<u64> = kv::get("cost", "tokens")?; // free functions open the bucket per call
//! ```
//!
//! Values are JSON (`serde_json`), except counters: [`Bucket::increment`]
//! stores decimal text, which is also JSON, so `get::<u64>` reads a counter.
//! The host buffers an invocation's writes and commits them with the event's
//! settlement (HANDLERS.md, "State"): reads see the invocation's own writes,
//! a failed invocation changes nothing, and a redelivered event's writes are
//! applied once, so handlers keep no lists of applied event ids.
//!
//! Errors: a bucket that is not granted (`no-such-store`) or is granted
//! read-only (`access-denied`) is a configuration problem, and a host-side
//! failure or per-invocation limit (`other`) may pass: both are retryable,
//! like a bad setting ([`crate::config_or`]) — the event is fine and can be
//! delivered again once the configuration is fixed, or dead-lettered after
//! its attempts and retried with `cortex dlq retry`. A stored value that does
//! not parse as the handler's type, or a value that does not serialize, is a
//! bug that the same bytes will repeat: it is not retryable (the message
//! names the bucket and key, to repair with `cortex state set/delete`).
//!
//! On targets other than `wasm32` (the handlers' native unit tests) the
//! buckets are an in-memory map per thread with the host's observable
//! behaviour — see [`memory`].

#[cfg(not(target_arch = "wasm32"))]
pub mod memory;

use crate::{Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[cfg(target_arch = "wasm32")]
use self::wasi as backend;
#[cfg(not(target_arch = "wasm32"))]
use memory as backend;

/// Why a key-value call failed, as the host says it (`wasi:keyvalue/store.error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KvFault {
    /// The bucket is not in the handler's `keyvalue` / `keyvalue_read` grants.
    NoSuchStore,
    /// The bucket is granted read-only and the call writes.
    AccessDenied,
    /// A per-invocation limit, a bad key, or the backend; the host's text.
    Other(String),
}

impl KvFault {
    /// The SDK error for `what` (e.g. `set workers/w-1`), retryable: see the
    /// module docs.
    fn into_error(self, bucket: &str, what: &str) -> Error {
        Error::retry(match self {
            KvFault::NoSuchStore => format!(
                "cannot {what}: bucket {bucket:?} is not granted to this handler (add it to `keyvalue` in its [handlers] table)"
            ),
            KvFault::AccessDenied => {
                format!("cannot {what}: bucket {bucket:?} is granted read-only (`keyvalue_read`)")
            }
            KvFault::Other(message) => format!("cannot {what}: {message}"),
        })
    }
}

/// An open bucket: a named collection of keys to values.
pub struct Bucket {
    name: String,
    inner: backend::Bucket,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("name", &self.name).finish()
    }
}

impl Bucket {
    /// Opens the bucket `name`.
    ///
    /// # Errors
    /// Retryable when the bucket is not granted to this handler.
    pub fn open(name: &str) -> Result<Bucket> {
        let inner = backend::open(name).map_err(|f| f.into_error(name, &format!("open bucket {name:?}")))?;
        Ok(Bucket { name: name.to_string(), inner })
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn fault(&self, verb: &str, key: &str) -> impl FnOnce(KvFault) -> Error {
        let (bucket, what) = (self.name.clone(), format!("{verb} {}/{key}", self.name));
        move |f| f.into_error(&bucket, &what)
    }

    /// The value of `key` as JSON bytes (or a counter's decimal text).
    ///
    /// # Errors
    /// Retryable when the host refuses the call.
    pub fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get(key).map_err(self.fault("get", key))
    }

    /// The value of `key` parsed as `T`, or `None` when it has none.
    ///
    /// # Errors
    /// Retryable when the host refuses the call; not retryable when the value
    /// does not parse as `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get_bytes(key)? {
            None => Ok(None),
            Some(bytes) => decode(&self.name, key, &bytes).map(Some),
        }
    }

    /// Sets `key` to `value` as JSON.
    ///
    /// # Errors
    /// Retryable when the host refuses the write (not granted, read-only, a
    /// limit); not retryable when `value` does not serialize.
    pub fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        let bytes = encode(&self.name, key, value)?;
        self.inner.set(key, &bytes).map_err(self.fault("set", key))
    }

    /// Removes `key`; no error when it has no value.
    ///
    /// # Errors
    /// Retryable when the host refuses the write.
    pub fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).map_err(self.fault("delete", key))
    }

    /// Whether `key` has a value.
    ///
    /// # Errors
    /// Retryable when the host refuses the call.
    pub fn exists(&self, key: &str) -> Result<bool> {
        self.inner.exists(key).map_err(self.fault("check", key))
    }

    /// Adds `delta` to the counter at `key` (absent counts as 0) and returns
    /// the new value. The host commits the delta, not the sum, so concurrent
    /// invocations never lose an increment; the counter is stored as decimal
    /// text.
    ///
    /// # Errors
    /// Retryable when the host refuses the write or the value is not a
    /// counter.
    pub fn increment(&self, key: &str, delta: u64) -> Result<u64> {
        self.inner.increment(key, delta).map_err(self.fault("increment", key))
    }

    /// The counter at `key`, 0 when absent.
    ///
    /// # Errors
    /// As [`Bucket::get`].
    pub fn counter(&self, key: &str) -> Result<u64> {
        Ok(self.get::<u64>(key)?.unwrap_or(0))
    }

    /// Every key starting with `prefix` (`""` for all), sorted, paging
    /// through `list-keys`. The host lists the whole bucket, so keep buckets
    /// that are listed per event small, or prefix their keys.
    ///
    /// # Errors
    /// Retryable when the host refuses the call.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        all_keys(prefix, |cursor| self.inner.list_keys(cursor).map_err(self.fault("list", prefix)))
    }

    /// The values of `keys`, in order, each parsed as `T`.
    ///
    /// # Errors
    /// As [`Bucket::get`].
    pub fn get_many<T: DeserializeOwned, K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<T>>> {
        let keys: Vec<String> = keys.iter().map(|k| k.as_ref().to_string()).collect();
        let found = self.inner.get_many(&keys).map_err(self.fault("get", "(several keys)"))?;
        keys.iter().zip(found).map(|(key, bytes)| bytes.map(|b| decode(&self.name, key, &b)).transpose()).collect()
    }
}

/// The value of `key` in `bucket` (opened for this call).
///
/// # Errors
/// As [`Bucket::open`] and [`Bucket::get`].
pub fn get<T: DeserializeOwned>(bucket: &str, key: &str) -> Result<Option<T>> {
    Bucket::open(bucket)?.get(key)
}

/// Sets `key` in `bucket` to `value` as JSON.
///
/// # Errors
/// As [`Bucket::open`] and [`Bucket::set`].
pub fn set<T: Serialize + ?Sized>(bucket: &str, key: &str, value: &T) -> Result<()> {
    Bucket::open(bucket)?.set(key, value)
}

/// Removes `key` from `bucket`.
///
/// # Errors
/// As [`Bucket::open`] and [`Bucket::delete`].
pub fn delete(bucket: &str, key: &str) -> Result<()> {
    Bucket::open(bucket)?.delete(key)
}

/// Adds `delta` to the counter `key` in `bucket`; returns the new value.
///
/// # Errors
/// As [`Bucket::open`] and [`Bucket::increment`].
pub fn increment(bucket: &str, key: &str, delta: u64) -> Result<u64> {
    Bucket::open(bucket)?.increment(key, delta)
}

/// The keys of `bucket` starting with `prefix`.
///
/// # Errors
/// As [`Bucket::open`] and [`Bucket::keys`].
pub fn list(bucket: &str, prefix: &str) -> Result<Vec<String>> {
    Bucket::open(bucket)?.keys(prefix)
}

/// Whether the host accepts `key`: 1 to 1024 bytes without NUL. Keys made
/// from payload fields are checked with it, so that an unusable one is
/// refused with the event rather than failing every retry.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 1024 && !key.contains('\0')
}

/// A value as stored: JSON.
fn encode<T: Serialize + ?Sized>(bucket: &str, key: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::refuse(format!("value for {bucket}/{key} does not serialize: {e}")))
}

/// A stored value parsed as `T`.
fn decode<T: DeserializeOwned>(bucket: &str, key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        let shown: String = String::from_utf8_lossy(bytes).chars().take(80).collect();
        Error::refuse(format!(
            "stored value {bucket}/{key} ({shown:?}) is not what this handler reads: {e} (repair it with `cortex state set` or `cortex state delete`)"
        ))
    })
}

/// Collects the keys starting with `prefix` from pages of `list-keys`:
/// `page(cursor)` returns one page and the cursor of the next (`None` on the
/// last).
fn all_keys(
    prefix: &str,
    mut page: impl FnMut(Option<u64>) -> Result<(Vec<String>, Option<u64>)>,
) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor = None;
    loop {
        let (batch, next) = page(cursor)?;
        keys.extend(batch.into_iter().filter(|k| k.starts_with(prefix)));
        match next {
            // A cursor that does not move would page forever.
            Some(n) if Some(n) != cursor => cursor = Some(n),
            _ => break,
        }
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// The real buckets: the host's `wasi:keyvalue` imports.
#[cfg(target_arch = "wasm32")]
mod wasi {
    use super::KvFault;
    use crate::bindings::wasi::keyvalue::{atomics, batch, store};

    pub(super) struct Bucket(store::Bucket);

    fn fault(e: store::Error) -> KvFault {
        match e {
            store::Error::NoSuchStore => KvFault::NoSuchStore,
            store::Error::AccessDenied => KvFault::AccessDenied,
            store::Error::Other(message) => KvFault::Other(message),
        }
    }

    pub(super) fn open(name: &str) -> Result<Bucket, KvFault> {
        store::open(name).map(Bucket).map_err(fault)
    }

    impl Bucket {
        pub(super) fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvFault> {
            self.0.get(key).map_err(fault)
        }
        pub(super) fn set(&self, key: &str, value: &[u8]) -> Result<(), KvFault> {
            self.0.set(key, value).map_err(fault)
        }
        pub(super) fn delete(&self, key: &str) -> Result<(), KvFault> {
            self.0.delete(key).map_err(fault)
        }
        pub(super) fn exists(&self, key: &str) -> Result<bool, KvFault> {
            self.0.exists(key).map_err(fault)
        }
        pub(super) fn increment(&self, key: &str, delta: u64) -> Result<u64, KvFault> {
            atomics::increment(&self.0, key, delta).map_err(fault)
        }
        pub(super) fn list_keys(&self, cursor: Option<u64>) -> Result<(Vec<String>, Option<u64>), KvFault> {
            self.0.list_keys(cursor).map(|page| (page.keys, page.cursor)).map_err(fault)
        }
        pub(super) fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvFault> {
            let found = batch::get_many(&self.0, keys).map_err(fault)?;
            Ok(found.into_iter().map(|kv| kv.map(|(_, v)| v)).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Worker {
        status: String,
        runs: u64,
    }

    #[test]
    fn values_round_trip_as_json_and_counters_as_decimal_text() {
        let b = Bucket::open("workers").unwrap();
        assert_eq!(b.get::<Worker>("w-1").unwrap(), None);
        b.set("w-1", &Worker { status: "busy".into(), runs: 2 }).unwrap();
        assert_eq!(b.get_bytes("w-1").unwrap().unwrap(), br#"{"status":"busy","runs":2}"#);
        assert_eq!(b.get::<Worker>("w-1").unwrap().unwrap().runs, 2);
        assert_eq!(b.increment("w-1/beats", 3).unwrap(), 3);
        assert_eq!(b.increment("w-1/beats", 4).unwrap(), 7);
        assert_eq!(b.get_bytes("w-1/beats").unwrap().unwrap(), b"7");
        assert_eq!((b.counter("w-1/beats").unwrap(), b.counter("w-9/beats").unwrap()), (7, 0));
        assert!(b.exists("w-1").unwrap());
        b.delete("w-1").unwrap();
        b.delete("w-1").unwrap();
        assert!(!b.exists("w-1").unwrap());
        assert_eq!(get::<u64>("workers", "w-1/beats").unwrap(), Some(7), "the free functions see the same bucket");
        set("other", "k", "v").unwrap();
        assert_eq!(increment("other", "n", 1).unwrap(), 1);
        assert_eq!(list("other", "").unwrap(), ["k", "n"]);
        assert_eq!(get::<u64>("workers", "k").unwrap(), None, "buckets are separate");
    }

    #[test]
    fn a_value_of_another_shape_is_not_retryable_and_names_the_key() {
        let b = Bucket::open("workers").unwrap();
        b.set("w-1", &["not", "a", "worker"]).unwrap();
        let err = b.get::<Worker>("w-1").unwrap_err();
        assert!(!err.is_retryable(), "{err}");
        assert!(err.message().starts_with(r#"stored value workers/w-1 ("[\"not\",\"a\",\"worker\"]")"#), "{err}");
        assert!(err.message().contains("cortex state set"), "{err}");
        b.set("w-1/beats", "x").unwrap();
        assert!(b.increment("w-1/beats", 1).unwrap_err().is_retryable());
    }

    #[test]
    fn host_refusals_are_retryable_and_say_what_to_configure() {
        let err = KvFault::NoSuchStore.into_error("cost", "open bucket \"cost\"");
        assert!(err.is_retryable());
        assert_eq!(
            err.message(),
            "cannot open bucket \"cost\": bucket \"cost\" is not granted to this handler (add it to `keyvalue` in its [handlers] table)"
        );
        let err = KvFault::AccessDenied.into_error("cost", "set cost/x");
        assert!(err.is_retryable() && err.message().contains("read-only"), "{err}");
        let err = KvFault::Other("more than 1000 keys written".into()).into_error("cost", "set cost/x");
        assert_eq!(err.message(), "cannot set cost/x: more than 1000 keys written");
        memory::deny("secret");
        let err = Bucket::open("secret").unwrap_err();
        assert!(err.is_retryable() && err.message().contains("not granted"), "{err}");
        memory::read_only("routing");
        let routing = Bucket::open("routing").unwrap();
        assert_eq!(routing.get::<u64>("n").unwrap(), None, "reads are allowed");
        let err = routing.increment("n", 1).unwrap_err();
        assert_eq!(
            err.message(),
            "cannot increment routing/n: bucket \"routing\" is granted read-only (`keyvalue_read`)"
        );
    }

    #[test]
    fn valid_keys_are_what_the_host_accepts() {
        assert!(valid_key("w-1") && valid_key(&"k".repeat(1024)));
        assert!(!valid_key("") && !valid_key(&"k".repeat(1025)) && !valid_key("a\0b"));
    }

    #[test]
    fn keys_page_through_cursors_and_filter_by_prefix() {
        let pages = [(vec!["a/1", "b/1"], Some(2)), (vec!["a/2", "c"], Some(4)), (vec!["a/3"], None)];
        let mut seen = Vec::new();
        let keys = all_keys("a/", |cursor| {
            seen.push(cursor);
            let i = seen.len() - 1;
            Ok((pages[i].0.iter().map(|s| s.to_string()).collect(), pages[i].1))
        })
        .unwrap();
        assert_eq!(keys, ["a/1", "a/2", "a/3"]);
        assert_eq!(seen, [None, Some(2), Some(4)]);
        // A host that repeats its cursor does not make the guest loop forever.
        let mut calls = 0;
        all_keys("", |_| {
            calls += 1;
            Ok((vec!["k".into()], Some(7)))
        })
        .unwrap();
        assert_eq!(calls, 2);
        let err = all_keys("", |_| Err(Error::retry("cannot list"))).unwrap_err();
        assert_eq!(err.message(), "cannot list");
    }

    #[test]
    fn keys_and_get_many_span_several_pages() {
        let b = Bucket::open("big").unwrap();
        for i in 0..(memory::PAGE * 2 + 1) {
            b.increment(&format!("n/{i:02}"), i as u64).unwrap();
        }
        b.set("other", &1).unwrap();
        let keys = b.keys("n/").unwrap();
        assert_eq!(keys.len(), memory::PAGE * 2 + 1);
        assert_eq!(b.keys("").unwrap().len(), keys.len() + 1);
        let values: Vec<Option<u64>> = b.get_many(&["n/01", "missing", "n/02"]).unwrap();
        assert_eq!(values, [Some(1), None, Some(2)]);
    }
}
