//! [`Store`] for Redis: the reads and repairs of the operators' commands
//! (`status`, `trace`, `dlq`, `replay`) over the keys `queue` describes,
//! and the idempotency check behind [`crate::queue::Queue::known`].
//! A stream's entries after the group's last delivered id wait; those at or
//! before it are claimed (settled ones are deleted), so one `XINFO GROUPS`
//! and one `XRANGE` per priority tell them apart. Delayed entries wait
//! too, with their due time.
//!
//! Crash story: reads only, except [`Store::remove_dead_letters`]
//! (`purge.lua`, atomic per call). A read sees each key at one moment; an
//! entry that moves on between two of them may be missed or seen twice,
//! as on the filesystem.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::archive::RedisArchive;
use super::queue::{GROUP, RETRY, RedisStore, SCRIPTS};
use crate::dlq::{DeadLetter, Listing};
use crate::event::{Event, Priority};
use crate::queue::{Delivery, EntryName};
use crate::records::DeadLetterRecord;
use crate::store::{ArchiveRead, Live, LiveState, Store};

/// A stream entry as `XRANGE` returns it: id and field/value pairs.
type Raw = (String, Vec<(String, String)>);

/// One queued or claimed entry as read, before its event is parsed.
#[derive(Clone)]
struct Found {
    name: EntryName,
    state: LiveState,
    event: String,
}

impl RedisStore {
    /// Every waiting, delayed and claimed entry, most urgent first, FIFO
    /// within a priority (delayed ones after the ready ones, by due time).
    fn found(&self) -> Result<Vec<Found>> {
        let mut out = Vec::new();
        let delayed = self.delayed()?;
        for p in Priority::ALL {
            let stream = self.server.key(&format!("q:{}", p.rank()));
            let (groups, all): (Vec<Vec<redis::Value>>, Vec<Raw>) =
                self.server.run("list queued entries", RETRY, |c| {
                    redis::pipe()
                        .cmd("XINFO")
                        .arg("GROUPS")
                        .arg(&stream)
                        .cmd("XRANGE")
                        .arg(&stream)
                        .arg("-")
                        .arg("+")
                        .query(c)
                })?;
            let last = last_delivered(&groups).unwrap_or_default();
            let mut claimed = Vec::new();
            for (id, fields) in all {
                let state = if stream_id_le(&id, &last) { LiveState::Claimed } else { LiveState::Waiting };
                let field = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone()).unwrap_or_default();
                let Some(name) = EntryName::parse(&format!("{}-a{}.json", field("key"), field("attempt"))) else {
                    continue;
                };
                let found = Found { name, state, event: field("event") };
                match state {
                    LiveState::Claimed => claimed.push(found),
                    LiveState::Waiting => out.push(found),
                }
            }
            out.extend(delayed.iter().filter(|f| f.name.priority == p).cloned());
            out.extend(claimed);
        }
        Ok(out)
    }

    /// The delayed entries, by due time.
    fn delayed(&self) -> Result<Vec<Found>> {
        let (due, bodies): (Vec<(String, f64)>, std::collections::HashMap<String, String>) =
            self.server.run("list delayed entries", RETRY, |c| {
                redis::pipe()
                    .cmd("ZRANGE")
                    .arg(self.server.key("delayed"))
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .cmd("HGETALL")
                    .arg(self.server.key("delayed:body"))
                    .query(c)
            })?;
        let mut out = Vec::new();
        for (key, at) in due {
            let Some((attempt, event)) = bodies.get(&key).and_then(|b| b.split_once('\n')) else { continue };
            let Some(mut name) = EntryName::parse(&format!("{key}-a{attempt}.json")) else { continue };
            name.due_ms = Some(at.max(0.0) as u64);
            out.push(Found { name, state: LiveState::Waiting, event: event.to_string() });
        }
        Ok(out)
    }

    fn deliveries(&self, keys: &[String]) -> Result<Vec<Option<String>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.server.run("read delivery records", RETRY, |c| {
            redis::cmd("HMGET").arg(self.server.key("delivery")).arg(keys).query(c)
        })
    }

    /// Which of `events` the store holds: the known-ids hash for queued,
    /// claimed and dead-lettered ones, then the id sets of the archive days
    /// that can hold them (the dates of their timestamps and of their ids,
    /// a day either side, as the filesystem's check reads).
    pub(super) fn known_ids(&self, events: &[&Event]) -> Result<BTreeMap<String, &'static str>> {
        let mut out = BTreeMap::new();
        if events.is_empty() {
            return Ok(out);
        }
        let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect::<BTreeSet<_>>().into_iter().collect();
        let places: Vec<Option<String>> = self.server.run("check which event ids are known", RETRY, |c| {
            redis::cmd("HMGET").arg(self.server.key("known")).arg(&ids).query(c)
        })?;
        let mut rest = Vec::new();
        for (id, place) in ids.iter().zip(places) {
            match place.as_deref() {
                Some("q") => out.insert((*id).to_string(), "queued"),
                Some("h") => out.insert((*id).to_string(), "being handled"),
                Some("d") => out.insert((*id).to_string(), "dead-lettered"),
                _ => {
                    rest.push(*id);
                    None
                }
            };
        }
        if rest.is_empty() {
            return Ok(out);
        }
        let mut days = BTreeSet::from(["undated".to_string()]);
        for e in events {
            let id_date = e.event_id.get(4..12).and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y%m%d").ok());
            let ts_date = e.timestamp.get(..10).and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
            for d in id_date.into_iter().chain(ts_date) {
                for d in [d.pred_opt(), Some(d), d.succ_opt()].into_iter().flatten() {
                    days.insert(d.format("%Y-%m-%d").to_string());
                }
            }
        }
        let found: Vec<Vec<bool>> = self.server.run("check which event ids are archived", RETRY, |c| {
            let mut pipe = redis::pipe();
            for day in &days {
                pipe.cmd("SMISMEMBER").arg(self.server.key(&format!("archive-ids:{day}"))).arg(&rest);
            }
            pipe.query(c)
        })?;
        for in_day in found {
            for (id, yes) in rest.iter().zip(in_day) {
                if yes {
                    out.entry((*id).to_string()).or_insert("archived");
                }
            }
        }
        Ok(out)
    }

    /// Where a dead letter is kept, for messages: `{prefix}:dead/{key}`.
    fn dead_letter_path(&self, key: &str) -> PathBuf {
        PathBuf::from(format!("{}/{key}", self.server.key("dead")))
    }
}

/// The `last-delivered-id` of the `dispatch` group in an `XINFO GROUPS` reply.
fn last_delivered(groups: &[Vec<redis::Value>]) -> Option<String> {
    let text = |v: &redis::Value| redis::from_redis_value_ref::<String>(v).ok();
    groups.iter().find_map(|g| {
        let pairs: Vec<(String, &redis::Value)> =
            g.chunks(2).filter_map(|kv| Some((text(kv.first()?)?, kv.get(1)?))).collect();
        let named = pairs.iter().any(|(k, v)| k == "name" && text(v).as_deref() == Some(GROUP));
        named.then(|| pairs.iter().find(|(k, _)| k == "last-delivered-id").and_then(|(_, v)| text(v)))?
    })
}

/// Whether stream id `a` (`ms-seq`) is at or before `b`.
fn stream_id_le(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> (u64, u64) {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    };
    parse(a) <= parse(b)
}

impl Store for RedisStore {
    fn describe(&self) -> String {
        self.server.describe()
    }

    fn entries(&self) -> Result<Vec<EntryName>> {
        Ok(self.found()?.into_iter().filter(|f| f.state == LiveState::Waiting).map(|f| f.name).collect())
    }

    fn peek(&self, name: &EntryName) -> Result<Event> {
        let key = name.key();
        let found = self.found()?.into_iter().find(|f| f.name.key() == key && f.state == LiveState::Waiting);
        let Some(found) = found else { anyhow::bail!("queue entry {key} is no longer queued in {}", self.describe()) };
        serde_json::from_str(&found.event).with_context(|| format!("invalid queued event {key} in {}", self.describe()))
    }

    fn live(&self) -> Result<Vec<Live>> {
        let found = self.found()?;
        let keys: Vec<String> = found.iter().filter(|f| f.name.attempt > 1).map(|f| f.name.key()).collect();
        let mut records: std::collections::HashMap<String, String> =
            keys.iter().cloned().zip(self.deliveries(&keys)?).filter_map(|(k, v)| Some((k, v?))).collect();
        Ok(found
            .into_iter()
            .map(|f| {
                let where_ = format!("{} entry {}", self.describe(), f.name.key());
                let event = serde_json::from_str::<Event>(&f.event).map_err(|e| format!("{where_}: not an event: {e}"));
                // A delivery record that does not read is as good as none here.
                let delivery: Delivery =
                    records.remove(&f.name.key()).and_then(|d| serde_json::from_str(&d).ok()).unwrap_or_default();
                Live { name: f.name, state: f.state, event, delivery }
            })
            .collect())
    }

    fn dead_letters(&self) -> Result<Listing> {
        let all: std::collections::BTreeMap<String, String> = self
            .server
            .run("list the dead letters", RETRY, |c| redis::cmd("HGETALL").arg(self.server.key("dead")).query(c))?;
        let mut out = Listing::default();
        for (key, text) in all {
            let path = self.dead_letter_path(&key);
            match serde_json::from_str::<DeadLetterRecord>(&text) {
                Ok(record) => out.letters.push(DeadLetter { key, path, record }),
                Err(e) => {
                    out.unreadable.push(format!("dead letter {} is not a dead-letter record: {e}", path.display()))
                }
            }
        }
        Ok(out)
    }

    fn remove_dead_letters(&self, keys: &[&str]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut args = vec![self.server.prefix().to_string()];
        for key in keys {
            args.extend([(*key).to_string(), crate::queue::key_event_id(key).unwrap_or_default().to_string()]);
        }
        self.server.run("remove dead letters", RETRY, |c| {
            let mut inv = SCRIPTS.purge.prepare_invoke();
            for a in &args {
                inv.arg(a);
            }
            inv.invoke::<i64>(c)
        })?;
        Ok(())
    }

    fn archive(&self) -> Result<Option<Box<dyn ArchiveRead + '_>>> {
        let days: usize = self.server.run("look for the archive", RETRY, |c| {
            redis::cmd("ZCARD").arg(self.server.key("archive-days")).query(c)
        })?;
        Ok((days > 0).then(|| Box::new(RedisArchive { server: self.server.clone() }) as Box<dyn ArchiveRead>))
    }

    fn state(&self) -> Result<Arc<dyn crate::kv::Backend>> {
        Ok(self.state.get_or_init(|| Arc::new(super::kv::RedisKv::new(self.server.clone()))).clone())
    }

    fn reachable(&self) -> bool {
        self.server.reachable()
    }

    fn announce(&self, who: &str, alive: bool) -> Result<()> {
        if alive { super::hosts::announce(&self.server, who) } else { super::hosts::withdraw(&self.server, who) }
    }

    fn watch(&self, wake: std::sync::mpsc::Sender<()>, stop: Arc<std::sync::atomic::AtomicBool>) -> Result<()> {
        let server = self.server.clone();
        std::thread::Builder::new()
            .name("cortex-redis-wake".into())
            .spawn(move || super::wake::subscribe(&server, &wake, &stop))
            .context("failed to start the Redis wake-up subscriber")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_by_time_then_sequence() {
        assert!(stream_id_le("5-0", "5-0"));
        assert!(stream_id_le("5-1", "6-0"));
        assert!(stream_id_le("10-0", "10-2"));
        assert!(!stream_id_le("10-0", "9-9"));
        assert!(!stream_id_le("1-0", "0-0"));
    }
}
