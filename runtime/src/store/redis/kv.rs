//! Handler state on Redis: [`RedisKv`], the [`crate::kv::Backend`] that
//! keeps the `wasi:keyvalue` buckets of every host of a deployment on one
//! server, with the semantics of the embedded [`crate::kv::sqlite`] backend
//! (see [`crate::kv`]: versions for read-then-write checks, increments as
//! deltas, a mark per buffer so a redelivered event applies once).
//!
//! Keys, all under the deployment's prefix `{p}`:
//!
//! - `{p}:kv:data:{bucket}`: a hash of key → `"<version> <value>"`, so one
//!   `HGET` reads a value and the version it goes with, atomically, in
//!   O(1) however many keys the bucket holds;
//! - `{p}:kv:keys:{bucket}`: a sorted set of the bucket's keys, all at score
//!   0, so `ZRANGEBYLEX` lists them in byte order (the order SQLite's
//!   `ORDER BY key` gives) and pages after a cursor in O(log n);
//! - `{p}:kv:buckets`: the set of buckets that hold a key;
//! - `{p}:kv:marks`: a sorted set of marks (`["event id","handler",gen]`)
//!   scored by the server's clock in ms, so [`Backend::prune_marks`] is one
//!   `ZREMRANGEBYSCORE`.
//!
//! [`Backend::commit`] is one Lua script call (`kv/commit.lua`) for the
//! whole batch (a dispatcher on the same store runs that script inside its
//! batch's settlement instead, see `joint`): Redis runs a script with no
//! other command in between, and the script checks each buffer (mark,
//! versions read, increment sums, exact in 64 bits, and the fencing token
//! of its handler's lease, see [`super::lease`]) before its first write, so
//! a refused buffer leaves nothing behind. How durable a commit is depends on the server's
//! persistence settings (`appendonly yes`, `appendfsync always` for the
//! guarantee the embedded backend gives).
//!
//! Bucket names cannot collide in key names: the part before the bucket is
//! one of two fixed words, and bucket names never hold `:` in config (and
//! even then `data:{a}` and `keys:{b}` differ in their first word). The
//! batch's keys are all passed as `KEYS` to the script; it assumes a single
//! server (not Redis Cluster, whose slots the keys of one batch may span).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{Budget, Redis};
use crate::kv::{Applied, Backend, Changes, Op, Versioned};

/// How long a read keeps retrying while Redis is unreachable: it runs
/// inside a handler's invocation, which has a deadline of its own.
const READ_BUDGET: Budget = Budget::For(Duration::from_secs(5));
/// How long a commit keeps retrying. Repeating a commit whose reply was
/// lost is safe: its buffers' marks are there, so they come back
/// [`Applied::Already`] and nothing is applied twice.
const COMMIT_BUDGET: Budget = Budget::For(Duration::from_secs(30));

/// Handler state in Redis under one deployment's prefix.
pub struct RedisKv {
    server: Arc<Redis>,
    commit: ::redis::Script,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv").field("server", &self.server).finish_non_exhaustive()
    }
}

impl RedisKv {
    /// State on `server`, under its prefix.
    pub fn new(server: Arc<Redis>) -> RedisKv {
        RedisKv { server, commit: ::redis::Script::new(include_str!("kv/commit.lua")) }
    }

    fn data(&self, bucket: &str) -> String {
        self.server.key(&format!("kv:data:{bucket}"))
    }

    fn keys_of(&self, bucket: &str) -> String {
        self.server.key(&format!("kv:keys:{bucket}"))
    }

    fn buckets_key(&self) -> String {
        self.server.key("kv:buckets")
    }

    fn marks(&self) -> String {
        self.server.key("kv:marks")
    }
}

/// A mark as a member of the marks set: JSON, so no event id or handler
/// name can make two marks look alike.
fn member(mark: &crate::kv::Mark) -> String {
    serde_json::json!([mark.event_id, mark.handler, mark.generation]).to_string()
}

/// Splits a stored `"<version> <value>"`.
fn decode(raw: &[u8]) -> Option<Versioned> {
    let space = raw.iter().position(|&b| b == b' ')?;
    let version = std::str::from_utf8(&raw[..space]).ok()?.parse().ok()?;
    Some(Versioned { value: raw[space + 1..].to_vec(), version })
}

/// `ZRANGEBYLEX` bounds for keys starting with `prefix`, after `after`.
/// UTF-8 never holds the byte 0xFF, so every key with the prefix sorts
/// below `prefix + 0xFF` and every key past them above it.
fn lex_range(prefix: &str, after: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    let min = match after {
        Some(a) if a >= prefix => [b"(", a.as_bytes()].concat(),
        _ if prefix.is_empty() => b"-".to_vec(),
        _ => [b"[", prefix.as_bytes()].concat(),
    };
    let max = if prefix.is_empty() { b"+".to_vec() } else { [b"(", prefix.as_bytes(), &[0xFF]].concat() };
    (min, max)
}

/// The script's code for an [`Op`] and its argument.
fn op_args(op: &Op) -> (&'static str, Vec<u8>) {
    match op {
        Op::Set(v) => ("s", v.clone()),
        Op::Delete => ("d", Vec::new()),
        Op::Add(delta) => ("a", delta.to_string().into_bytes()),
    }
}

/// The `KEYS` and `ARGV` of `kv/commit.lua` for `batch` (see the script),
/// on `server`'s prefix; `joint.lua` passes the same.
pub(super) fn commit_call(server: &Redis, batch: &[Changes]) -> (Vec<String>, Vec<Vec<u8>>) {
    let data = |bucket: &str| server.key(&format!("kv:data:{bucket}"));
    let keys_of = |bucket: &str| server.key(&format!("kv:keys:{bucket}"));
    // Buckets by 1-based index, as the script addresses their keys.
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for changes in batch {
        let named = changes.ops.iter().map(|(b, _, _)| b).chain(changes.reads.iter().map(|r| &r.bucket));
        for bucket in named {
            let next = index.len() + 1;
            index.entry(bucket.as_str()).or_insert(next);
        }
    }
    let mut names = vec![""; index.len()];
    for (name, i) in &index {
        names[i - 1] = name;
    }
    // The leases that fence a buffer, by 1-based index after the buckets.
    let mut leases: BTreeMap<&str, usize> = BTreeMap::new();
    for fence in batch.iter().filter_map(|c| c.fence.as_ref()) {
        let next = leases.len() + 1;
        leases.entry(fence.handler.as_str()).or_insert(next);
    }
    let mut fenced = vec![""; leases.len()];
    for (handler, i) in &leases {
        fenced[i - 1] = handler;
    }
    let mut keys = vec![server.key("kv:marks"), server.key("kv:buckets")];
    for name in &names {
        keys.extend([data(name), keys_of(name)]);
    }
    keys.extend(fenced.iter().map(|handler| super::lease::lease_key(server, handler)));
    let mut args = vec![text(&names.len())];
    for name in &names {
        args.push(text(&name));
    }
    args.push(text(&fenced.len()));
    args.push(text(&batch.len()));
    for changes in batch {
        args.push(text(&member(&changes.mark)));
        match &changes.fence {
            Some(f) => {
                args.push(text(&leases[f.handler.as_str()]));
                args.push(text(&f.token));
            }
            None => {
                args.push(text(&0));
                args.push(text(&0));
            }
        }
        args.push(text(&changes.reads.len()));
        for read in &changes.reads {
            args.push(text(&index[read.bucket.as_str()]));
            args.push(text(&read.key));
            args.push(text(&read.version));
        }
        args.push(text(&changes.after.len()));
        for m in &changes.after {
            args.push(text(&member(m)));
        }
        args.push(text(&changes.ops.len()));
        for (bucket, key, op) in &changes.ops {
            let (code, value) = op_args(op);
            args.push(text(&index[bucket.as_str()]));
            args.push(text(&key));
            args.push(text(&code));
            args.push(value);
        }
    }
    (keys, args)
}

/// An argument as the script reads it.
fn text(a: &dyn std::fmt::Display) -> Vec<u8> {
    a.to_string().into_bytes()
}

/// `kv/commit.lua`'s reply for `n` buffers as [`Applied`]s.
pub(super) fn applied_of(codes: Vec<i64>, n: usize) -> Result<Vec<Applied>> {
    anyhow::ensure!(codes.len() == n, "the state commit script answered for {} buffers of {n}", codes.len());
    codes
        .into_iter()
        .map(|c| match c {
            0 => Ok(Applied::Applied),
            1 => Ok(Applied::Already),
            2 => Ok(Applied::Conflict),
            other => anyhow::bail!("the state commit script answered {other}, not 0, 1 or 2"),
        })
        .collect()
}

impl Backend for RedisKv {
    fn get(&self, bucket: &str, key: &str) -> Result<Option<Versioned>> {
        let data = self.data(bucket);
        let raw: Option<Vec<u8>> =
            self.server.run("read a state key", READ_BUDGET, |c| ::redis::cmd("HGET").arg(&data).arg(key).query(c))?;
        raw.map(|r| {
            decode(&r)
                .with_context(|| format!("key {key:?} of bucket {bucket:?} in {data} is not a version and a value"))
        })
        .transpose()
    }

    fn keys(&self, bucket: &str, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let (min, max) = lex_range(prefix, after);
        let keys = self.keys_of(bucket);
        self.server
            .run("list state keys", READ_BUDGET, |c| {
                ::redis::cmd("ZRANGEBYLEX").arg(&keys).arg(&min).arg(&max).arg("LIMIT").arg(0).arg(limit).query(c)
            })
            .with_context(|| format!("failed to list the keys of bucket {bucket:?}"))
    }

    fn buckets(&self) -> Result<Vec<(String, u64)>> {
        let set = self.buckets_key();
        let mut names: Vec<String> = self
            .server
            .run("list state buckets", READ_BUDGET, |c| ::redis::cmd("SMEMBERS").arg(&set).query(c))
            .context("failed to list the state buckets")?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        names.sort();
        let mut pipe = ::redis::pipe();
        for name in &names {
            pipe.cmd("HLEN").arg(self.data(name));
        }
        let counts: Vec<u64> = self
            .server
            .run("count state keys", READ_BUDGET, |c| pipe.query(c))
            .context("failed to count the keys of the state buckets")?;
        // A bucket emptied between the two calls is left out, as it would
        // be had it been emptied before.
        Ok(names.into_iter().zip(counts).filter(|(_, n)| *n > 0).collect())
    }

    fn commit(&self, batch: &[Changes]) -> Result<Vec<Applied>> {
        if batch.iter().all(|c| c.ops.is_empty()) {
            return Ok(vec![Applied::Applied; batch.len()]);
        }
        let (keys, args) = commit_call(&self.server, batch);
        let mut call = self.commit.prepare_invoke();
        for k in &keys {
            call.key(k);
        }
        for a in &args {
            call.arg(a);
        }
        let codes: Vec<i64> = self
            .server
            .run("commit state", COMMIT_BUDGET, |c| call.invoke(c))
            .with_context(|| format!("failed to commit {} state buffers", batch.len()))?;
        applied_of(codes, batch.len())
    }

    fn get_with_marks(
        &self,
        bucket: &str,
        key: &str,
        marks: &[crate::kv::Mark],
    ) -> Result<(Option<Versioned>, Vec<bool>)> {
        if marks.is_empty() {
            return Ok((self.get(bucket, key)?, Vec::new()));
        }
        let (data, set) = (self.data(bucket), self.marks());
        let members: Vec<String> = marks.iter().map(member).collect();
        // One MULTI/EXEC: the value and the marks from one moment.
        let (raw, scores): (Option<Vec<u8>>, Vec<Option<f64>>) =
            self.server.run("read a state key and its marks", READ_BUDGET, |c| {
                ::redis::pipe().atomic().cmd("HGET").arg(&data).arg(key).cmd("ZMSCORE").arg(&set).arg(&members).query(c)
            })?;
        let found = raw
            .map(|r| {
                decode(&r)
                    .with_context(|| format!("key {key:?} of bucket {bucket:?} in {data} is not a version and a value"))
            })
            .transpose()?;
        Ok((found, scores.into_iter().map(|s| s.is_some()).collect()))
    }

    fn applied(&self, mark: &crate::kv::Mark) -> Result<bool> {
        let (set, m) = (self.marks(), member(mark));
        let score: Option<f64> =
            self.server.run("read a state mark", READ_BUDGET, |c| ::redis::cmd("ZSCORE").arg(&set).arg(&m).query(c))?;
        Ok(score.is_some())
    }

    fn prune_marks(&self, before_ms: u64) -> Result<usize> {
        let marks = self.marks();
        let bound = format!("({before_ms}");
        self.server
            .run("prune state marks", READ_BUDGET, |c| {
                ::redis::cmd("ZREMRANGEBYSCORE").arg(&marks).arg("-inf").arg(&bound).query(c)
            })
            .context("failed to prune the state marks")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_split_at_the_first_space() {
        let v = decode(b"12 a b\xff").expect("a version and a value");
        assert_eq!((v.version, v.value), (12, b"a b\xff".to_vec()));
        assert_eq!(decode(b"1 ").map(|v| v.value), Some(Vec::new()));
        assert_eq!(decode(b"x 1"), None);
        assert_eq!(decode(b"12"), None);
    }

    #[test]
    fn key_ranges_cover_the_prefix_after_the_cursor() {
        assert_eq!(lex_range("", None), (b"-".to_vec(), b"+".to_vec()));
        assert_eq!(lex_range("", Some("k")), (b"(k".to_vec(), b"+".to_vec()));
        assert_eq!(lex_range("ab", None), (b"[ab".to_vec(), b"(ab\xff".to_vec()));
        assert_eq!(lex_range("ab", Some("aa")), (b"[ab".to_vec(), b"(ab\xff".to_vec()));
        assert_eq!(lex_range("ab", Some("abc")), (b"(abc".to_vec(), b"(ab\xff".to_vec()));
    }

    #[test]
    fn marks_differ_whatever_their_text() {
        let m = |e: &str, h: &str, g| crate::kv::Mark { event_id: e.into(), handler: h.into(), generation: g };
        assert_ne!(member(&m("a\",\"b", "c", 0)), member(&m("a", "b\",\"c", 0)));
        assert_ne!(member(&m("e", "h", 0)), member(&m("e", "h", 1)));
        assert_eq!(member(&m("e", "h", 2)), r#"["e","h",2]"#);
    }
}
