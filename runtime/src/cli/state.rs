//! `cortex state`: read handler state (the key-value buckets in
//! `<root>/kv/state.db`) — the buckets, one value, the keys, a whole bucket
//! as text or JSON — and repair it (`set`, `delete`). Reading never creates
//! the database and takes no lock a running service would wait on (SQLite
//! WAL readers do not block its writer). Keys and values are handlers'
//! text, so text output escapes them.
//!
//! A repair is one backend transaction ([`Backend::commit`]) under a mark of
//! its own, so it is atomic and durable like a handler's writes. It is
//! refused while a `cortex serve` holds the root (`run/services/<pid>.json`
//! of a live process, or on a Redis backend a service of any host listed
//! under the prefix), unless `--force`: a handler invocation in flight read
//! the old value and would write over the repair.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{Map, Value};

use super::Outcome;
use cortex::config::BackendKind;
use cortex::kv::sqlite::SqliteBackend;
use cortex::kv::{Backend, Changes, Mark, Op};
use cortex::layout::Layout;
use cortex::text::escape;

#[derive(Subcommand)]
pub enum Command {
    /// Every bucket that holds a key, with its key count.
    Buckets {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The value of one key (exit 1 when it has none).
    Get { bucket: String, key: String },
    /// The keys of a bucket, in order.
    List {
        bucket: String,
        /// Only keys that start with this.
        #[arg(long, value_name = "P", default_value = "")]
        prefix: String,
    },
    /// Every key of a bucket with its value.
    Dump {
        bucket: String,
        /// One JSON object: a value that is UTF-8 as a string, any other as
        /// `{"hex": "..."}`.
        #[arg(long)]
        json: bool,
    },
    /// Repair: sets one key. VALUE is JSON text (checked, stored as given),
    /// or any bytes with `--raw`; `-` reads it from stdin. Refused while a
    /// `cortex serve` runs on the root, unless `--force`.
    Set {
        bucket: String,
        key: String,
        /// The value; `-` reads it from stdin.
        value: String,
        /// Store the bytes as they are instead of checking they are JSON.
        #[arg(long)]
        raw: bool,
        /// Write even while a service runs (its in-flight invocations may
        /// conflict with the repair or overwrite it).
        #[arg(long)]
        force: bool,
    },
    /// Repair: removes one key (exit 1 when it has none). Refused while a
    /// `cortex serve` runs on the root, unless `--force`.
    Delete {
        bucket: String,
        key: String,
        /// Delete even while a service runs.
        #[arg(long)]
        force: bool,
    },
}

/// Keys read from the backend per page.
const PAGE: usize = 1000;

/// The state backend of the root's store: on the filesystem, the database
/// if any handler ever wrote one (reading never creates it).
fn backend(layout: &Layout) -> Result<Option<Arc<dyn Backend>>> {
    match cortex::config::BackendConfig::load(layout.root())?.resolve()? {
        BackendKind::Filesystem => {
            let path = layout.kv_db();
            if !path.is_file() {
                return Ok(None);
            }
            Ok(Some(Arc::new(SqliteBackend::open(&path)?)))
        }
        BackendKind::Redis { url, prefix } => Ok(Some(cortex::store::open_state(&url, &prefix)?)),
    }
}

/// Every key of `bucket` under `prefix`, page by page.
fn keys(db: &dyn Backend, bucket: &str, prefix: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    loop {
        let page = db.keys(bucket, prefix, out.last().map(String::as_str), PAGE)?;
        let done = page.len() < PAGE;
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

fn json_value(bytes: Vec<u8>) -> Value {
    match String::from_utf8(bytes) {
        Ok(s) => Value::String(s),
        Err(e) => {
            let hex: String = e.into_bytes().iter().map(|b| format!("{b:02x}")).collect();
            serde_json::json!({ "hex": hex })
        }
    }
}

/// Refuses a repair while a service runs on the root, unless `force`.
/// On a Redis backend, services on every host of the root count (see
/// [`cortex::store::redis::hosts`]).
fn check_no_service(layout: &Layout, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    let running = cortex::service::running(layout);
    if !running.is_empty() {
        let pids: Vec<String> = running.iter().map(|s| s.pid.to_string()).collect();
        anyhow::bail!(
            "refusing to change handler state while `cortex serve` runs on {} (pid {}): stop it first, or pass --force \
             (an invocation in flight may then conflict with the repair or write over it)",
            layout.root().display(),
            pids.join(", ")
        )
    }
    if let BackendKind::Redis { url, prefix } = cortex::config::BackendConfig::load(layout.root())?.resolve()? {
        let server = cortex::store::redis::Redis::open(&url, &prefix)?;
        let hosts = cortex::store::redis::hosts::listed(&server)?;
        if !hosts.is_empty() {
            anyhow::bail!(
                "refusing to change handler state while `cortex serve` runs on {} ({}): stop them first, or pass --force \
                 (an invocation in flight may then conflict with the repair or write over it)",
                server.describe(),
                hosts.join(", ")
            )
        }
    }
    Ok(())
}

/// The bytes to store: VALUE, or stdin for `-`; checked to be JSON unless `raw`.
fn value_bytes(value: String, raw: bool) -> Result<Vec<u8>> {
    let bytes = if value == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut buf)
            .context("failed to read the value from stdin")?;
        buf
    } else {
        value.into_bytes()
    };
    if !raw {
        serde_json::from_slice::<Value>(&bytes).context(
            "the value is not JSON (handlers read their values as JSON): quote a string as '\"text\"', or pass --raw to store the bytes as they are",
        )?;
    }
    Ok(bytes)
}

/// Applies one repair in one transaction, under a mark of its own.
fn repair(layout: &Layout, bucket: &str, key: &str, op: Op) -> Result<()> {
    cortex::kv::check_bucket(bucket)?;
    anyhow::ensure!(
        !key.is_empty() && key.len() <= 1024 && !key.contains('\0'),
        "bad key {:?}: keys are 1 to 1024 bytes without NUL",
        escape(key)
    );
    let db = match backend(layout)? {
        Some(db) => db,
        None => Arc::new(SqliteBackend::open(&layout.kv_db())?),
    };
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mark = Mark {
        event_id: format!("repair-{}-{}", at.as_nanos(), std::process::id()),
        handler: "cortex state".into(),
        generation: 0,
    };
    db.commit(&[Changes {
        mark,
        ops: vec![(bucket.to_string(), key.to_string(), op)],
        reads: Vec::new(),
        after: Vec::new(),
        fence: None,
    }])
    .with_context(|| format!("failed to write key {} of bucket {}", escape(key), escape(bucket)))?;
    Ok(())
}

pub fn run(layout: &Layout, command: Command) -> Result<Outcome> {
    let db = backend(layout)?;
    let mut out = std::io::stdout().lock();
    match command {
        Command::Buckets { json } => {
            let buckets = match &db {
                Some(db) => db.buckets()?,
                None => Vec::new(),
            };
            if json {
                let map: Map<String, Value> = buckets.into_iter().map(|(b, n)| (b, Value::from(n))).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&map)?)?;
            } else {
                for (bucket, n) in buckets {
                    writeln!(out, "{bucket}\t{n} keys")?;
                }
            }
        }
        Command::Get { bucket, key } => {
            let found = match &db {
                Some(db) => db.get(&bucket, &key)?,
                None => None,
            };
            let Some(v) = found else {
                eprintln!("bucket {} has no key {}", escape(&bucket), escape(&key));
                return Ok(Outcome::Failure);
            };
            match String::from_utf8(v.value) {
                Ok(s) => writeln!(out, "{}", escape(&s))?,
                Err(e) => out.write_all(e.as_bytes()).context("failed to write the value")?,
            }
        }
        Command::List { bucket, prefix } => {
            if let Some(db) = &db {
                for k in keys(db.as_ref(), &bucket, &prefix)? {
                    writeln!(out, "{}", escape(&k))?;
                }
            }
        }
        Command::Dump { bucket, json } => {
            let mut map = Map::new();
            if let Some(db) = &db {
                for k in keys(db.as_ref(), &bucket, "")? {
                    // A key removed since it was listed is skipped.
                    if let Some(v) = db.get(&bucket, &k)? {
                        map.insert(k, json_value(v.value));
                    }
                }
            }
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&Value::Object(map))?)?;
            } else {
                for (k, v) in map {
                    let text = match &v {
                        Value::String(s) => escape(s).into_owned(),
                        other => other.to_string(),
                    };
                    writeln!(out, "{}\t{text}", escape(&k))?;
                }
            }
        }
        Command::Set { bucket, key, value, raw, force } => {
            check_no_service(layout, force)?;
            repair(layout, &bucket, &key, Op::Set(value_bytes(value, raw)?))?;
        }
        Command::Delete { bucket, key, force } => {
            check_no_service(layout, force)?;
            let exists = match &db {
                Some(db) => db.get(&bucket, &key)?.is_some(),
                None => false,
            };
            if !exists {
                eprintln!("bucket {} has no key {}", escape(&bucket), escape(&key));
                return Ok(Outcome::Failure);
            }
            repair(layout, &bucket, &key, Op::Delete)?;
        }
    }
    Ok(Outcome::Success)
}
