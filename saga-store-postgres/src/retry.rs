//! Bounded retries of calls that are safe to repeat, and the pauses between tries: the crate's
//! one backoff rule, saga-core's [`RetryPolicy`] (the rule steps are retried by), so that the
//! store's retries, its appends' own retry loops and the listener's reconnects pause alike.

use std::future::Future;
use std::time::Duration;

use saga_core::store::StoreError;
use saga_core::RetryPolicy;

/// Pauses between tries, by a [`RetryPolicy`]: the delay doubles from the policy's first one up
/// to its cap, each scaled by a random factor in `[0.5, 1]` (jitter), and tries stop when the
/// policy's attempts are spent.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: RetryPolicy,
    /// Failed tries so far.
    failures: u32,
}

impl Backoff {
    /// For a store call: at most `retries` retries, pausing 10–20 ms, then twice as long each
    /// time, at most 0.5–1 s.
    pub(crate) fn calls(retries: u32) -> Self {
        Backoff::new(RetryPolicy {
            max_attempts: retries.saturating_add(1),
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_elapsed: None,
        })
    }

    /// For the notification listener's reconnects, without end: pausing 100–200 ms, then twice
    /// as long each time, at most 1–2 s.
    pub(crate) fn reconnects() -> Self {
        Backoff::new(RetryPolicy {
            max_attempts: u32::MAX,
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
            multiplier: 2.0,
            max_elapsed: None,
        })
    }

    fn new(policy: RetryPolicy) -> Self {
        Backoff { policy, failures: 0 }
    }

    /// How many retries were made so far.
    pub(crate) fn retries(&self) -> u32 {
        self.failures
    }

    /// After a failed try: `false` at once when the policy allows no other, else pauses and
    /// returns `true`.
    pub(crate) async fn retry(&mut self) -> bool {
        if !self.policy.allows_another(self.failures.saturating_add(1), Duration::ZERO) {
            return false;
        }
        self.pause().await;
        true
    }

    /// After a failed try, pauses whatever the policy's bound on attempts (for a loop that never
    /// gives up).
    pub(crate) async fn pause(&mut self) {
        self.failures = self.failures.saturating_add(1);
        tokio::time::sleep(self.policy.delay(self.failures)).await;
    }

    /// After a success: the next failure pauses as briefly as the first.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Calls `call` until it succeeds, fails with an error that is not transient, or failed
/// transiently `retries + 1` times; returns the last answer. Only for calls whose repetition
/// is harmless (reads, idempotent writes).
pub(crate) async fn retrying<T, F, Fut>(
    retries: u32,
    what: &str,
    mut call: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut backoff = Backoff::calls(retries);
    loop {
        match call().await {
            Err(e) if e.is_transient() => {
                if !backoff.retry().await {
                    return Err(e);
                }
                tracing::debug!(error = %e, retry = backoff.retries(), "retried {what}");
            }
            answer => return answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use saga_core::store::StoreError;

    use super::{retrying, Backoff};

    #[tokio::test(start_paused = true)]
    async fn calls_retry_as_often_as_told_with_growing_pauses() {
        for retries in [0, 1, 4] {
            let mut tries = 0;
            let began = tokio::time::Instant::now();
            let answer: Result<(), _> = retrying(retries, "a test", || {
                tries += 1;
                async { Err(StoreError::transient("a test", "down")) }
            })
            .await;
            assert!(answer.is_err());
            assert_eq!(tries, retries + 1);
            // 20 ms, 40 ms, 80 ms, 160 ms before jitter; at least half of each.
            let least: u64 = (0..retries).map(|n| 10 << n).sum();
            assert!(began.elapsed() >= Duration::from_millis(least), "{:?}", began.elapsed());
        }
        let mut tries = 0;
        let answer: Result<(), _> = retrying(4, "a test", || {
            tries += 1;
            async { Err(StoreError::Unavailable("gone".into())) }
        })
        .await;
        assert!(answer.is_err());
        assert_eq!(tries, 1, "a permanent error is not retried");
    }

    #[tokio::test(start_paused = true)]
    async fn reconnects_pause_at_least_100_ms_and_at_most_2_s_and_never_give_up() {
        let mut backoff = Backoff::reconnects();
        for _ in 0..40 {
            let began = tokio::time::Instant::now();
            assert!(backoff.retry().await);
            let paused = began.elapsed();
            assert!(paused >= Duration::from_millis(100) && paused <= Duration::from_secs(2));
        }
        backoff.reset();
        assert_eq!(backoff.retries(), 0);
    }
}
