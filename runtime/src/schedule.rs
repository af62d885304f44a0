//! Schedules: `[schedules.NAME]` tables of `cortex.toml` that `cortex serve`
//! turns into durable events on a timer, as the seed's daemons did with
//! their polling loops (the heartbeat check, the daily cleanup).
//!
//! A schedule fires once per tick, across restarts and across several
//! services on one root: the last tick each schedule fired is recorded in
//! `run/schedules.json`, read and written under an exclusive lock on
//! `run/schedules.lock`, so two services never both fire a tick. An event is
//! queued before its tick is recorded; a crash between the two fires the
//! tick again after the restart with the same event id (ids are derived
//! from the schedule and the tick), which the queue's duplicate check and
//! the handlers' idempotency absorb. After a stop that missed several ticks
//! a schedule fires once, for the latest, with `missed` in its payload;
//! `catch_up = true` fires every missed tick instead (at most
//! [`MAX_CATCH_UP`]).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::ScheduleConfig;
use crate::event::{Event, NewEvent, Validator};
use crate::fsio;
use crate::layout::Layout;

/// Missed ticks a `catch_up` schedule fires at most after a long stop.
pub const MAX_CATCH_UP: usize = 1000;

/// The default `source` of scheduled events.
pub const SOURCE: &str = "cortex-scheduler";

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Timing {
    /// Every this many seconds, on multiples of it since the Unix epoch (so
    /// every service agrees on the ticks).
    Every(i64),
    /// A cron expression, evaluated in UTC.
    Cron(Box<croner::Cron>),
}

impl Timing {
    /// The timing of a schedule's config.
    ///
    /// # Errors
    /// When neither or both of `every` and `cron` are given, or either does
    /// not parse.
    pub fn of(config: &ScheduleConfig) -> Result<Timing> {
        match (&config.every, &config.cron) {
            (Some(every), None) => Ok(Timing::Every(parse_period(every)?)),
            (None, Some(cron)) => {
                let parsed =
                    croner::Cron::from_str(cron).map_err(|e| anyhow::anyhow!("cron {cron:?} does not parse: {e}"))?;
                Ok(Timing::Cron(Box::new(parsed)))
            }
            (None, None) => bail!("give `every` (e.g. \"30s\", \"5m\", \"1h\", \"1d\") or `cron` (e.g. \"0 3 * * *\")"),
            (Some(_), Some(_)) => bail!("give `every` or `cron`, not both"),
        }
    }

    /// The latest tick at or before `now`.
    fn latest(&self, now: i64) -> Option<i64> {
        match self {
            Timing::Every(period) => Some(now.div_euclid(*period) * period),
            Timing::Cron(cron) => {
                let at = Utc.timestamp_opt(now, 0).single()?;
                cron.find_previous_occurrence(&at, true).ok().map(|t| t.timestamp())
            }
        }
    }

    /// The ticks after `last` up to `now`, oldest first, at most `limit`;
    /// and how many there were in all.
    fn due(&self, last: i64, now: i64, limit: usize) -> (Vec<i64>, usize) {
        let mut ticks = Vec::new();
        let mut total = 0;
        match self {
            Timing::Every(period) => {
                let first = last.div_euclid(*period) * period + period;
                if first <= now {
                    total = usize::try_from((now - first) / period + 1).unwrap_or(usize::MAX);
                    // Only the newest `limit` ticks matter.
                    let skip = total.saturating_sub(limit) as i64;
                    let mut t = first + skip * period;
                    while t <= now {
                        ticks.push(t);
                        t += period;
                    }
                }
            }
            Timing::Cron(cron) => {
                let Some(from) = Utc.timestamp_opt(last, 0).single() else { return (ticks, 0) };
                for t in cron.iter_after(from) {
                    let t = t.timestamp();
                    if t > now {
                        break;
                    }
                    total += 1;
                    ticks.push(t);
                    if ticks.len() > limit {
                        ticks.remove(0);
                    }
                    // A pattern that fires every second over a year-long stop:
                    // stop counting, the newest ticks are what fire.
                    if total >= 1_000_000 {
                        break;
                    }
                }
            }
        }
        (ticks, total)
    }
}

/// `30s`, `5m`, `1h`, `1d` (or a plain number of seconds) in seconds.
///
/// # Errors
/// When it is not such a period, or is zero.
pub fn parse_period(text: &str) -> Result<i64> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: i64 = digits.parse().with_context(|| format!("{text:?} is not a period like 30s, 5m, 1h or 1d"))?;
    let scale = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => bail!("{text:?}: unknown unit {other:?} (use s, m, h or d)"),
    };
    match n.checked_mul(scale) {
        Some(secs) if secs > 0 => Ok(secs),
        _ => bail!("{text:?}: a period must be at least 1s"),
    }
}

/// What `run/schedules.json` records per schedule.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Fired {
    /// The last tick fired (or, first time round, the tick the schedule was
    /// first seen at: it fires from the next one on), in Unix seconds.
    pub last_tick: i64,
    /// The schedule as it was then; a changed schedule starts afresh.
    pub spec: String,
    /// When the last event was queued, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired_at: Option<String>,
}

/// One schedule, checked.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub timing: Timing,
    pub config: ScheduleConfig,
}

impl Schedule {
    fn spec(&self) -> String {
        match (&self.config.every, &self.config.cron) {
            (Some(e), _) => format!("every {e}"),
            (_, Some(c)) => format!("cron {c}"),
            _ => String::new(),
        }
    }

    /// The event for one tick: its id is derived from the schedule's name
    /// and the tick, so a tick fired twice is the same event twice.
    fn event(&self, tick: i64, missed: usize, validator: &Validator) -> Result<Event> {
        let at = Utc.timestamp_opt(tick, 0).single().context("tick out of range")?;
        let mut payload: Map<String, Value> = match serde_json::to_value(&self.config.payload)? {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        payload.insert("schedule".into(), Value::String(self.name.clone()));
        payload.insert("tick".into(), Value::String(at.to_rfc3339()));
        if missed > 0 {
            payload.insert("missed".into(), Value::from(missed));
        }
        let mut value = NewEvent {
            event_type: self.config.event_type.clone(),
            source: self.config.source.clone().unwrap_or_else(|| SOURCE.into()),
            payload,
            correlation_id: None,
            priority: self.config.priority,
            master: None,
            tags: vec!["scheduled".into()],
        }
        .into_value();
        value["event_id"] = Value::String(tick_id(&self.name, &at));
        value["timestamp"] = Value::String(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        validator
            .validate(value)
            .map_err(|invalid| anyhow::anyhow!("schedules.{}: invalid event: {invalid}", self.name))
    }
}

/// `evt_<tick as YYYYMMDD_HHMMSS>_<12 hex of sha256(name)>`.
fn tick_id(name: &str, at: &DateTime<Utc>) -> String {
    let digest = crate::sandbox::sha256_hex(format!("schedule:{name}").as_bytes());
    format!("evt_{}_{}", at.format("%Y%m%d_%H%M%S"), &digest[..12])
}

/// The schedules of a config, checked.
///
/// # Errors
/// Naming the schedule whose timing does not parse.
pub fn schedules(config: &crate::config::Config) -> Result<Vec<Schedule>> {
    config
        .schedules
        .iter()
        .map(|(name, c)| {
            Ok(Schedule {
                name: name.clone(),
                timing: Timing::of(c).with_context(|| format!("schedules.{name}"))?,
                config: c.clone(),
            })
        })
        .collect()
}

/// Fires what is due now. Returns the events to queue; the caller queues
/// them durably and only then calls [`Pending::commit`], still holding the
/// lock that this returns inside [`Pending`].
///
/// # Errors
/// When the lock or the record cannot be read, or an event is invalid.
pub fn due(layout: &Layout, schedules: &[Schedule], validator: &Validator, now: i64) -> Result<Pending> {
    let dir = layout.run();
    std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let lock_path = layout.schedules_lock();
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("failed to open {}", lock_path.display()))?;
    // SAFETY: flock on a descriptor we own; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("failed to lock {}", lock_path.display()));
    }
    let record_path = layout.schedules_fired();
    let mut record: BTreeMap<String, Fired> = match std::fs::read(&record_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(file = %record_path.display(), error = %e, "unreadable schedule record; schedules start afresh");
            BTreeMap::new()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", record_path.display())),
    };
    let mut events = Vec::new();
    let mut changed = false;
    for s in schedules {
        let spec = s.spec();
        let fired = record.get(&s.name).filter(|f| f.spec == spec);
        let Some(fired) = fired else {
            // First seen (or changed): fire from the next tick on.
            let last_tick = s.timing.latest(now).unwrap_or(now);
            record.insert(s.name.clone(), Fired { last_tick, spec, last_fired_at: None });
            changed = true;
            continue;
        };
        let limit = if s.config.catch_up { MAX_CATCH_UP } else { 1 };
        let (ticks, total) = s.timing.due(fired.last_tick, now, limit);
        let Some(&newest) = ticks.last() else { continue };
        if total > ticks.len() {
            tracing::warn!(schedule = %s.name, missed = total - ticks.len(), "schedule missed ticks while no service ran; firing the latest");
        }
        for &tick in &ticks {
            let missed = if tick == newest { total - ticks.len() } else { 0 };
            events.push(s.event(tick, missed, validator)?);
        }
        record.insert(
            s.name.clone(),
            Fired { last_tick: newest, spec, last_fired_at: Some(crate::queue::now_rfc3339()) },
        );
        changed = true;
    }
    // Schedules removed from the config are forgotten.
    let before = record.len();
    record.retain(|name, _| schedules.iter().any(|s| &s.name == name));
    changed |= record.len() != before;
    Ok(Pending { _lock: lock, events, record, changed, record_path, tmp: layout.tmp() })
}

/// Events due, and the record to write once they are queued.
pub struct Pending {
    _lock: std::fs::File,
    pub events: Vec<Event>,
    record: BTreeMap<String, Fired>,
    changed: bool,
    record_path: std::path::PathBuf,
    tmp: std::path::PathBuf,
}

impl Pending {
    /// Records the ticks fired (after their events were queued) and
    /// releases the lock.
    ///
    /// # Errors
    /// When the record cannot be written durably.
    pub fn commit(self) -> Result<()> {
        if self.changed {
            fsio::write_durably(&self.tmp, &self.record_path, &serde_json::to_vec_pretty(&self.record)?)
                .with_context(|| format!("failed to record fired schedules in {}", self.record_path.display()))?;
        }
        Ok(())
    }
}

/// The record of fired schedules (for `cortex status`).
pub fn fired(layout: &Layout) -> BTreeMap<String, Fired> {
    std::fs::read(layout.schedules_fired()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_parse_and_refuse_nonsense() {
        assert_eq!(parse_period("30s").unwrap(), 30);
        assert_eq!(parse_period("5m").unwrap(), 300);
        assert_eq!(parse_period("2h").unwrap(), 7200);
        assert_eq!(parse_period("1d").unwrap(), 86_400);
        assert_eq!(parse_period("45").unwrap(), 45);
        for bad in ["", "0s", "m", "5x", "-5s", "1.5h"] {
            assert!(parse_period(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_ticks_are_epoch_aligned_and_a_long_stop_fires_once() {
        let t = Timing::Every(60);
        assert_eq!(t.latest(125), Some(120));
        assert_eq!(t.due(120, 179, 1), (vec![], 0));
        assert_eq!(t.due(120, 180, 1), (vec![180], 1));
        // 10 missed minutes: only the newest fires, nine reported missed.
        assert_eq!(t.due(120, 780, 1), (vec![780], 11));
        assert_eq!(t.due(120, 300, 1000), (vec![180, 240, 300], 3));
    }

    #[test]
    fn cron_ticks_follow_the_pattern() {
        let t = Timing::Cron(Box::new(croner::Cron::from_str("0 3 * * *").unwrap()));
        let day = 86_400;
        let three = 3 * 3600;
        assert_eq!(t.latest(10 * day + 5 * 3600), Some(10 * day + three));
        assert_eq!(t.due(10 * day + three, 11 * day, 10), (vec![], 0));
        assert_eq!(t.due(10 * day + three, 12 * day + 4 * 3600, 10), (vec![11 * day + three, 12 * day + three], 2));
        assert_eq!(t.due(10 * day + three, 12 * day + 4 * 3600, 1), (vec![12 * day + three], 2));
    }

    #[test]
    fn tick_ids_are_valid_and_stable() {
        let at = Utc.timestamp_opt(1_764_561_600, 0).single().unwrap();
        let id = tick_id("heartbeat-check", &at);
        assert_eq!(id, tick_id("heartbeat-check", &at));
        assert_ne!(id, tick_id("daily-cleanup", &at));
        assert!(crate::event::is_valid_event_id(&id), "{id}");
    }
}
