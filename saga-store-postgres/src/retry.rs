//! Bounded retries of calls that are safe to repeat.

use std::future::Future;
use std::time::Duration;

use saga_core::store::StoreError;

/// The pause before retry `attempt` (from 0): 20 ms doubling, at most 1 s, with up to 50 %
/// jitter.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = 20u64.saturating_mul(1 << attempt.min(6)).min(1_000);
    Duration::from_millis(base + fastrand::u64(0..=base / 2))
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
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if e.is_transient() && attempt < retries => {
                tracing::debug!(error = %e, attempt, "retrying {what}");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            answer => return answer,
        }
    }
}
