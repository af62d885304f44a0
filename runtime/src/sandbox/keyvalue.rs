//! `wasi:keyvalue` (0.2.0-draft: `store`, `atomics`, `batch`) for handlers
//! of the 0.2.0 world: the guest's calls answered by the invocation's
//! [`kv::Txn`], which holds its grants, its limits and its buffered writes.
//!
//! A `bucket` resource is a [`Bucket`] in the store's `ResourceTable`,
//! pushed by `open` only for a granted bucket, so every later call on it
//! names a bucket the handler may read. Nothing a guest does here reaches
//! the backend as a write: the buffer is handed back with the invocation's
//! result and committed with the event's settlement (see `crate::kv`).
//! 0.1.0 components do not import these interfaces (their world has none).

use wasmtime::component::Resource;

use super::host::State;
use super::world::v02::wasi::keyvalue::{atomics, batch, store};
use crate::kv::{KvError, Txn};

/// An open bucket: its name, checked against the grants when it was opened.
pub struct Bucket {
    name: String,
}

fn error(e: KvError) -> store::Error {
    match e {
        KvError::NoSuchStore(_) => store::Error::NoSuchStore,
        KvError::AccessDenied(_) => store::Error::AccessDenied,
        KvError::Other(m) => store::Error::Other(m),
        KvError::Unavailable(m) => store::Error::Other(format!("state backend: {m}")),
    }
}

impl State {
    /// The invocation's transaction and the name of the bucket `b` stands
    /// for. A handler without key-value grants has no transaction, so it
    /// never gets a bucket to call this with.
    fn bucket(&mut self, b: &Resource<Bucket>) -> Result<(&mut Txn, String), store::Error> {
        let name = self
            .table
            .get(b)
            .map(|b| b.name.clone())
            .map_err(|e| store::Error::Other(format!("bad bucket handle: {e}")))?;
        match self.kv.as_mut() {
            Some(txn) => Ok((txn, name)),
            None => Err(store::Error::NoSuchStore),
        }
    }

    /// Runs `f` on the transaction for bucket `b`, mapping its error.
    fn with<T>(
        &mut self,
        b: &Resource<Bucket>,
        f: impl FnOnce(&mut Txn, &str) -> Result<T, KvError>,
    ) -> Result<T, store::Error> {
        let (txn, name) = self.bucket(b)?;
        let result = f(txn, &name);
        if let Err(KvError::Unavailable(why)) = &result {
            txn.note_unavailable(why);
        }
        result.map_err(error)
    }
}

impl store::Host for State {
    fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, store::Error> {
        match self.kv.as_ref() {
            None => return Err(store::Error::NoSuchStore),
            Some(txn) => txn.open(&identifier).map_err(error)?,
        }
        self.table
            .push(Bucket { name: identifier })
            .map_err(|e| store::Error::Other(format!("cannot open another bucket: {e}")))
    }
}

impl store::HostBucket for State {
    fn get(&mut self, b: Resource<Bucket>, key: String) -> Result<Option<Vec<u8>>, store::Error> {
        self.with(&b, |t, bucket| t.get(bucket, &key))
    }

    fn set(&mut self, b: Resource<Bucket>, key: String, value: Vec<u8>) -> Result<(), store::Error> {
        self.with(&b, |t, bucket| t.set(bucket, &key, value))
    }

    fn delete(&mut self, b: Resource<Bucket>, key: String) -> Result<(), store::Error> {
        self.with(&b, |t, bucket| t.delete(bucket, &key))
    }

    fn exists(&mut self, b: Resource<Bucket>, key: String) -> Result<bool, store::Error> {
        self.with(&b, |t, bucket| t.exists(bucket, &key))
    }

    fn list_keys(&mut self, b: Resource<Bucket>, cursor: Option<u64>) -> Result<store::KeyResponse, store::Error> {
        self.with(&b, |t, bucket| t.list_keys(bucket, cursor)).map(|(keys, cursor)| store::KeyResponse { keys, cursor })
    }

    fn drop(&mut self, b: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(b)?;
        Ok(())
    }
}

impl atomics::Host for State {
    fn increment(&mut self, b: Resource<Bucket>, key: String, delta: u64) -> Result<u64, store::Error> {
        self.with(&b, |t, bucket| t.increment(bucket, &key, delta))
    }
}

impl batch::Host for State {
    fn get_many(
        &mut self,
        b: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, store::Error> {
        self.with(&b, |t, bucket| keys.into_iter().map(|k| Ok(t.get(bucket, &k)?.map(|v| (k, v)))).collect())
    }

    fn set_many(&mut self, b: Resource<Bucket>, key_values: Vec<(String, Vec<u8>)>) -> Result<(), store::Error> {
        self.with(&b, |t, bucket| key_values.into_iter().try_for_each(|(k, v)| t.set(bucket, &k, v)))
    }

    fn delete_many(&mut self, b: Resource<Bucket>, keys: Vec<String>) -> Result<(), store::Error> {
        self.with(&b, |t, bucket| keys.iter().try_for_each(|k| t.delete(bucket, k)))
    }
}
