//! `cortex state`: read handler state (the key-value buckets in
//! `<root>/kv/state.db`) — the buckets, one value, the keys, a whole bucket
//! as text or JSON. Read-only: it never creates the database, and takes no
//! lock a running service would wait on (SQLite WAL readers do not block
//! its writer). Keys and values are handlers' text, so text output escapes
//! them.

use std::io::Write;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{Map, Value};

use super::Outcome;
use cortex::kv::Backend;
use cortex::kv::sqlite::SqliteBackend;
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
}

/// Keys read from the backend per page.
const PAGE: usize = 1000;

/// The state database, if any handler ever wrote one.
fn backend(layout: &Layout) -> Result<Option<SqliteBackend>> {
    let path = layout.kv_db();
    if !path.is_file() {
        return Ok(None);
    }
    Ok(Some(SqliteBackend::open(&path)?))
}

/// Every key of `bucket` under `prefix`, page by page.
fn keys(db: &SqliteBackend, bucket: &str, prefix: &str) -> Result<Vec<String>> {
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
                for k in keys(db, &bucket, &prefix)? {
                    writeln!(out, "{}", escape(&k))?;
                }
            }
        }
        Command::Dump { bucket, json } => {
            let mut map = Map::new();
            if let Some(db) = &db {
                for k in keys(db, &bucket, "")? {
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
    }
    Ok(Outcome::Success)
}
