//! Retry policies: exponential backoff with jitter, bounded by attempts and elapsed time.

use std::time::Duration;

/// How a step's `execute` (and, the same way, its `compensate`) is retried after a transient error.
///
/// The delay before attempt `n + 1` is `initial_delay * multiplier^(n - 1)`, capped at
/// `max_delay`, then scaled by a random factor in `[0.5, 1.0]` (jitter) so that Operations failing
/// together do not retry together. Retries stop when `max_attempts` attempts have run or when the
/// first attempt started more than `max_elapsed` ago; both are measured from the log, so they hold
/// across crashes. One exception: an attempt whose outcome a crash lost is run again even when it
/// was the last one allowed, since it may never have run; a crash then ends as the uninterrupted
/// run would have, had that attempt succeeded.
///
/// ```
/// use std::time::Duration;
/// use saga_core::RetryPolicy;
/// let policy = RetryPolicy::exponential(5, Duration::from_millis(100));
/// assert!(policy.delay(1) <= Duration::from_millis(100));
/// assert!(policy.delay(3) >= Duration::from_millis(200));
/// assert_eq!(RetryPolicy::none().max_attempts, 1);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. 1 means no retry.
    pub max_attempts: u32,
    /// Delay after the first failed attempt.
    pub initial_delay: Duration,
    /// Cap on one delay.
    pub max_delay: Duration,
    /// Growth of the delay per attempt.
    pub multiplier: f64,
    /// No retry starts once this much time has passed since the first attempt started.
    pub max_elapsed: Option<Duration>,
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        RetryPolicy { max_attempts: 1, ..Self::default() }
    }

    /// Doubling delays from `initial_delay`, at most `max_attempts` attempts.
    pub fn exponential(max_attempts: u32, initial_delay: Duration) -> Self {
        RetryPolicy { max_attempts, initial_delay, ..Self::default() }
    }

    /// The same policy with a bound on the time since the first attempt.
    pub fn with_max_elapsed(mut self, max_elapsed: Duration) -> Self {
        self.max_elapsed = Some(max_elapsed);
        self
    }

    /// The same policy with another cap on one delay.
    pub fn with_max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// The delay to wait after failed attempt `attempt` (from 1), with jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let base = self.initial_delay.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        let capped = base.min(self.max_delay.as_secs_f64()).max(0.0);
        let jittered = capped * (0.5 + fastrand::f64() * 0.5);
        Duration::try_from_secs_f64(jittered).unwrap_or(self.max_delay)
    }

    /// Whether another attempt may start after `attempts` attempts, the first of which started
    /// `elapsed` ago.
    pub fn allows_another(&self, attempts: u32, elapsed: Duration) -> bool {
        attempts < self.max_attempts && self.max_elapsed.is_none_or(|max| elapsed < max)
    }
}

impl Default for RetryPolicy {
    /// Three attempts, 100 ms then 200 ms apart (before jitter), delays capped at 10 s, no retry
    /// starting later than 5 minutes after the first attempt.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            multiplier: 2.0,
            max_elapsed: Some(Duration::from_secs(300)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_hold() {
        let p = RetryPolicy::exponential(3, Duration::from_millis(10))
            .with_max_elapsed(Duration::from_secs(1));
        assert!(p.allows_another(1, Duration::ZERO));
        assert!(p.allows_another(2, Duration::ZERO));
        assert!(!p.allows_another(3, Duration::ZERO));
        assert!(!p.allows_another(1, Duration::from_secs(2)));
        let capped = RetryPolicy::exponential(100, Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(3));
        assert!(capped.delay(50) <= Duration::from_secs(3));
        assert!(capped.delay(50) >= Duration::from_millis(1500));
    }
}
