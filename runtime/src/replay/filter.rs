//! The filters of `cortex replay` and `cortex dlq`: the flags themselves
//! (`Filter` is flattened into both commands), what each accepts, and
//! whether an event passes them all.

use anyhow::{Result, bail};
use chrono::{DateTime, FixedOffset, NaiveDate};

use crate::event::{Event, Priority, is_valid_event_id};
use crate::pattern::glob_match;

/// `--date`: a calendar date written `YYYY-MM-DD`.
///
/// # Errors
/// Saying what the expected form is.
pub fn parse_date(s: &str) -> std::result::Result<String, String> {
    let shaped = s.len() == 10
        && s.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
    match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        Ok(_) if shaped => Ok(s.to_string()),
        _ => Err(format!("{s:?} is not a date in the form YYYY-MM-DD (e.g. 2025-12-01)")),
    }
}

/// `--since` / `--until`: an RFC 3339 time with its offset, or a time
/// relative to now: `30s`, `10m`, `2h`, `3d` or `1w` ago.
///
/// # Errors
/// Saying what the expected forms are.
pub fn parse_time(s: &str) -> std::result::Result<DateTime<FixedOffset>, String> {
    parse_time_at(s, chrono::Local::now().fixed_offset())
}

fn parse_time_at(s: &str, now: DateTime<FixedOffset>) -> std::result::Result<DateTime<FixedOffset>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t);
    }
    let ago = s
        .char_indices()
        .last()
        .and_then(|(i, unit)| Some((s[..i].parse::<i64>().ok().filter(|n| *n >= 0)?, unit)))
        .and_then(|(n, unit)| match unit {
            's' => chrono::TimeDelta::try_seconds(n),
            'm' => chrono::TimeDelta::try_minutes(n),
            'h' => chrono::TimeDelta::try_hours(n),
            'd' => chrono::TimeDelta::try_days(n),
            'w' => chrono::TimeDelta::try_weeks(n),
            _ => None,
        })
        .and_then(|d| now.checked_sub_signed(d));
    ago.ok_or_else(|| {
        format!(
            "{s:?} is neither an RFC 3339 time with an offset (e.g. 2025-12-01T00:00:00Z or 2025-12-01T06:00:00-06:00) nor a time ago such as 30s, 10m, 2h, 3d or 1w"
        )
    })
}

/// `--event-id`: an event id.
///
/// # Errors
/// Saying what an id looks like.
pub fn parse_event_id(s: &str) -> std::result::Result<String, String> {
    if is_valid_event_id(s) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not an event id (evt_YYYYMMDD_HHMMSS_<suffix>, e.g. evt_20251201_120000_abc123)"))
    }
}

// The field docs are the help texts of the flags (`cortex replay` and the
// `cortex dlq` commands flatten this struct), so they speak to the user.
/// Which events; every filter given must match.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// One event, by id.
    #[arg(long, value_name = "ID", value_parser = parse_event_id)]
    pub event_id: Option<String>,
    // Compared with the date the event's timestamp is written in.
    /// Events whose timestamp is on this date (as written in the timestamp).
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    pub date: Option<String>,
    /// Events at or after this time: RFC 3339, or a time ago (30s, 10m, 2h, 3d, 1w).
    #[arg(long, value_name = "RFC3339|AGO", value_parser = parse_time)]
    pub since: Option<DateTime<FixedOffset>>,
    /// Events before this time: RFC 3339, or a time ago (30s, 10m, 2h, 3d, 1w).
    #[arg(long, value_name = "RFC3339|AGO", value_parser = parse_time)]
    pub until: Option<DateTime<FixedOffset>>,
    /// Event type, exact or a glob, e.g. 'worker.*'.
    #[arg(long = "type", value_name = "GLOB")]
    pub event_type: Option<String>,
    /// Source, exact or a glob.
    #[arg(long)]
    pub source: Option<String>,
    /// critical, high, medium or low.
    #[arg(long)]
    pub priority: Option<Priority>,
    /// Events with this correlation id.
    #[arg(long, value_name = "ID")]
    pub correlation_id: Option<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.event_id.is_none()
            && self.date.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.event_type.is_none()
            && self.source.is_none()
            && self.priority.is_none()
            && self.correlation_id.is_none()
    }

    /// Whether an event passes every filter that is set.
    pub fn matches(&self, e: &Event) -> bool {
        self.event_id.as_ref().is_none_or(|id| &e.event_id == id)
            && self.date.as_ref().is_none_or(|d| e.timestamp.get(..10) == Some(d.as_str()))
            && self.event_type.as_ref().is_none_or(|g| glob_match(g, &e.event_type))
            && self.source.as_ref().is_none_or(|g| glob_match(g, &e.source))
            && self.priority.is_none_or(|p| e.priority() == p)
            && self.correlation_id.as_ref().is_none_or(|c| e.correlation_id.as_ref() == Some(c))
            && (self.since.is_none() && self.until.is_none() || {
                let t = e.time();
                self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
            })
    }

    /// Rejects filters that cannot select anything sensible.
    ///
    /// # Errors
    /// Naming the flags at fault.
    pub fn check(&self) -> Result<()> {
        if let (Some(s), Some(u)) = (self.since, self.until)
            && s >= u
        {
            bail!("--since {} is not before --until {}: nothing could match", s.to_rfc3339(), u.to_rfc3339());
        }
        Ok(())
    }

    /// The filters that are set, as flags (for messages).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut add = |flag: &str, v: Option<String>| {
            if let Some(v) = v {
                parts.push(format!("--{flag} {v}"));
            }
        };
        add("event-id", self.event_id.clone());
        add("date", self.date.clone());
        add("since", self.since.map(|t| t.to_rfc3339()));
        add("until", self.until.map(|t| t.to_rfc3339()));
        add("type", self.event_type.clone());
        add("source", self.source.clone());
        add("priority", self.priority.map(|p| p.to_string()));
        add("correlation-id", self.correlation_id.clone());
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::replay::testing::event;

    #[test]
    fn flags_are_checked_with_the_expected_form_named() {
        assert!(parse_date("2025-12-01").is_ok());
        for bad in ["2025/12/01", "2025-1-01", "2025-02-30", "01-12-2025", "yesterday"] {
            assert!(parse_date(bad).unwrap_err().contains("YYYY-MM-DD"), "{bad}");
        }
        assert!(parse_time("2025-12-01T00:00:00Z").is_ok());
        assert!(parse_time("2025-12-01").unwrap_err().contains("RFC 3339"));
        let now = parse_time("2025-12-01T12:00:00-06:00").unwrap();
        for (ago, then) in [
            ("10m", "2025-12-01T11:50:00-06:00"),
            ("2h", "2025-12-01T10:00:00-06:00"),
            ("3d", "2025-11-28T12:00:00-06:00"),
            ("1w", "2025-11-24T12:00:00-06:00"),
            ("30s", "2025-12-01T11:59:30-06:00"),
        ] {
            assert_eq!(parse_time_at(ago, now), parse_time(then), "{ago}");
        }
        for bad in ["10", "m", "-5m", "10x", "1.5h", "10 m", "99999999999999999d"] {
            assert!(parse_time_at(bad, now).unwrap_err().contains("10m"), "{bad}");
        }
        assert!(parse_event_id("evt_20251201_120000_abc123").is_ok());
        assert!(parse_event_id("abc").unwrap_err().contains("evt_YYYYMMDD_HHMMSS"));
    }
    #[test]
    fn filters_combine_with_and() {
        let e = event("evt_20251201_120000_abc123", "2025-12-01T23:30:00-06:00", "worker.completed");
        let mut f = Filter { event_type: Some("worker.*".into()), ..Filter::default() };
        assert!(f.matches(&e));
        f.date = Some("2025-12-01".into());
        assert!(f.matches(&e), "the date is the one the timestamp is written in");
        f.since = parse_time("2025-12-02T05:30:00Z").ok();
        assert!(f.matches(&e), "since is inclusive");
        f.until = parse_time("2025-12-02T05:30:00Z").ok();
        assert!(!f.matches(&e), "until is exclusive");
        f.until = None;
        f.source = Some("src-*".into());
        f.correlation_id = Some("other".into());
        assert!(!f.matches(&e));
    }
}
