//! The process clock of the queue and its records: wall-clock microseconds
//! and milliseconds since the epoch, an RFC 3339 "now" for records, and the
//! strictly increasing enqueue time that orders a batch in the queue.
//!
//! Crash story: none of this is stored by itself; an enqueue time becomes
//! part of an entry's name, and a process that restarts with the clock set
//! back only sorts its new entries before older ones of the same priority.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static LAST_US: AtomicU64 = AtomicU64::new(0);

/// Strictly increasing microseconds in this process, so a batch keeps its
/// order in the queue.
pub(crate) fn next_enqueue_us() -> u64 {
    let now = now_us();
    let mut last = LAST_US.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST_US.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// Microseconds since the epoch (0 for a clock before it).
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// Milliseconds since the epoch of `t` (0 before it).
pub fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// An RFC 3339 "now" for records.
pub fn now_rfc3339() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enqueue_times_strictly_increase() {
        let mut last = 0;
        for _ in 0..10_000 {
            let t = next_enqueue_us();
            assert!(t > last);
            last = t;
        }
    }
}
