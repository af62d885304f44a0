//! Time for handlers: RFC 3339 timestamps to and from seconds since the Unix
//! epoch (chrono, with no clock or time-zone features), and the WASI wall
//! clock through `std::time`.

use chrono::{DateTime, SecondsFormat, Utc};

/// Seconds since the Unix epoch of an RFC 3339 timestamp
/// (`2025-12-01T12:00:00.123-06:00`); fractions of a second are dropped.
pub fn parse_rfc3339(ts: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(ts).ok().map(|t| t.timestamp())
}

/// The RFC 3339 UTC form (`2025-12-01T18:00:00Z`) of seconds since the
/// epoch; `None` out of chrono's range (about ±262,000 years).
pub fn format_rfc3339(epoch: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp(epoch, 0).map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// Seconds since the Unix epoch, from the WASI wall clock (0 before 1970).
pub fn now_epoch_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2025-12-01T12:00:00-06:00"), Some(1_764_612_000));
        assert_eq!(parse_rfc3339("2025-12-01T18:00:00.250+00:00"), Some(1_764_612_000));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00z"), Some(1_709_164_800));
        assert_eq!(parse_rfc3339("nope"), None);
        assert_eq!(parse_rfc3339("2025-12-01 12:00:00"), None, "no offset");
        assert_eq!(format_rfc3339(1_764_612_000).as_deref(), Some("2025-12-01T18:00:00Z"));
        assert_eq!(format_rfc3339(-1).as_deref(), Some("1969-12-31T23:59:59Z"));
        assert_eq!(parse_rfc3339(&format_rfc3339(1_764_612_345).unwrap()), Some(1_764_612_345));
        assert_eq!(format_rfc3339(i64::MAX), None);
        assert!(now_epoch_seconds() > 1_764_612_000);
    }
}
