//! The pure logic of retrying an endpoint: exponential backoff with full
//! jitter ([`backoff`]), and the circuit breaker ([`Breaker`]) that stops
//! sending to an endpoint after `breaker_failures` failures in a row, then,
//! after `breaker_cooldown_ms`, lets one probe through: its success closes
//! the breaker, its failure opens it again.

use std::time::{Duration, Instant};

/// The wait before attempt `attempts + 1`, after `attempts` failures:
/// uniform in `0..=min(max, base * 2^(attempts-1))` ("full jitter", so
/// deliveries that failed together do not come back together).
pub(super) fn backoff(attempts: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(attempts.saturating_sub(1)).unwrap_or(u32::MAX));
    let cap = exp.min(max);
    Duration::from_millis(fastrand::u64(0..=cap.as_millis().min(u128::from(u64::MAX)) as u64))
}

/// The breaker's state; the metric's value in parentheses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Sending (0).
    Closed,
    /// Not sending until the instant (1).
    Open(Instant),
    /// One probe allowed (2).
    HalfOpen,
}

impl State {
    pub fn metric(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open(_) => 1,
            State::HalfOpen => 2,
        }
    }
}

/// A circuit breaker for one endpoint.
#[derive(Debug)]
pub(super) struct Breaker {
    state: State,
    failures: u32,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker { state: State::Closed, failures: 0, threshold: threshold.max(1), cooldown }
    }

    /// The state at `now` (an open breaker past its cool-down is half-open).
    pub fn state(&mut self, now: Instant) -> State {
        if let State::Open(until) = self.state
            && now >= until
        {
            self.state = State::HalfOpen;
        }
        self.state
    }

    /// How many deliveries may be in flight at `now`, of `concurrency`.
    pub fn allowed(&mut self, now: Instant, concurrency: usize) -> usize {
        match self.state(now) {
            State::Closed => concurrency,
            State::Open(_) => 0,
            State::HalfOpen => 1,
        }
    }

    pub fn success(&mut self) {
        self.failures = 0;
        self.state = State::Closed;
    }

    /// Counts a failure; says whether it opened the breaker.
    pub fn failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        let trip = matches!(self.state, State::HalfOpen) || self.failures >= self.threshold;
        if trip && !matches!(self.state, State::Open(_)) {
            self.state = State::Open(now + self.cooldown);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let (base, max) = (Duration::from_millis(100), Duration::from_millis(1_000));
        for _ in 0..200 {
            assert!(backoff(1, base, max) <= base);
            assert!(backoff(3, base, max) <= base * 4);
            assert!(backoff(40, base, max) <= max);
        }
        // Full jitter reaches past the previous cap sometimes.
        assert!((0..500).any(|_| backoff(4, base, max) > base * 4));
    }

    #[test]
    fn breaker_opens_probes_and_closes() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(10);
        let mut b = Breaker::new(3, cool);
        assert_eq!(b.allowed(t0, 4), 4);
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        b.success();
        assert!(!b.failure(t0) && !b.failure(t0), "a success resets the count");
        assert!(b.failure(t0), "the third failure in a row opens it");
        assert_eq!(b.allowed(t0 + Duration::from_secs(1), 4), 0);
        assert_eq!(b.state(t0 + cool).metric(), 2);
        assert_eq!(b.allowed(t0 + cool, 4), 1, "one probe after the cool-down");
        assert!(b.failure(t0 + cool), "a failed probe opens it again");
        assert_eq!(b.allowed(t0 + cool + Duration::from_secs(1), 4), 0);
        assert_eq!(b.allowed(t0 + cool * 2, 4), 1);
        b.success();
        assert_eq!((b.allowed(t0 + cool * 2, 4), b.state(t0).metric()), (4, 0));
    }
}
