//! Polling AWS until a change is done: a bounded interval, a deadline, and prompt cancellation.

use std::future::Future;
use std::time::Duration;

use saga_core::{CancellationToken, StepError};
use tokio::time::Instant;

/// How a step polls AWS while it waits for a change (attached, detached, healthy, ...).
///
/// The first poll is immediate; the interval then starts at `initial_interval` and grows by half
/// each poll up to `max_interval`. A wait that has not finished after `timeout` fails with a
/// transient error naming the last state seen, so the step's retry policy decides what follows.
/// Every wait in `execute` ends promptly when the Operation is cancelled.
///
/// ```
/// use std::time::Duration;
/// use saga_steps_aws::WaitPolicy;
/// let policy = WaitPolicy::default().with_timeout(Duration::from_secs(60));
/// assert_eq!(policy.timeout, Duration::from_secs(60));
/// assert!(policy.max_interval >= policy.initial_interval);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitPolicy {
    /// The pause after the first poll.
    pub initial_interval: Duration,
    /// The longest pause between two polls.
    pub max_interval: Duration,
    /// How long one wait may last.
    pub timeout: Duration,
}

impl Default for WaitPolicy {
    /// Polls after 1 s, then up to every 10 s, for at most 10 minutes.
    fn default() -> Self {
        WaitPolicy {
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(600),
        }
    }
}

impl WaitPolicy {
    /// Polls every `interval` for at most `timeout`.
    pub fn fixed(interval: Duration, timeout: Duration) -> Self {
        WaitPolicy { initial_interval: interval, max_interval: interval, timeout }
    }

    /// The same policy with another deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The pause after a pause of `previous`: half as long again, within the bounds.
    fn next_interval(&self, previous: Duration) -> Duration {
        previous
            .mul_f64(1.5)
            .min(self.max_interval)
            .max(self.initial_interval.min(self.max_interval))
    }
}

/// What one look at a resource says about the change being waited for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Progress<T> {
    /// The change is done.
    Done(T),
    /// Not yet; the text says what was seen.
    Waiting(String),
    /// It will not happen; the text says why.
    Failed(String),
}

/// Polls `check` until it reports [`Progress::Done`], under `policy`.
///
/// A transient error from `check` is remembered and polling goes on until the deadline; a
/// permanent one ends the wait. Cancellation of `cancel` ends it at once with a permanent error.
pub(crate) async fn wait_for<T, F, Fut>(
    policy: &WaitPolicy,
    cancel: &CancellationToken,
    what: &str,
    mut check: F,
) -> Result<T, StepError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Progress<T>, StepError>>,
{
    let started = Instant::now();
    let deadline = started + policy.timeout;
    let mut interval = policy.initial_interval.min(policy.max_interval);
    let cancelled = || StepError::permanent(format!("cancelled while waiting for {what}"));
    loop {
        let seen = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(cancelled()),
            seen = check() => seen,
        };
        let last = match seen {
            Ok(Progress::Done(value)) => return Ok(value),
            Ok(Progress::Failed(why)) => {
                return Err(StepError::permanent(format!("{what} will not happen: {why}")));
            }
            Ok(Progress::Waiting(state)) => state,
            Err(e) if e.is_transient() => format!("error: {e}"),
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(StepError::transient(format!(
                "timed out after {:.1} s waiting for {what}; last seen: {last}",
                started.elapsed().as_secs_f64()
            )));
        }
        tracing::debug!(what, last = %last, "waiting");
        let pause = interval.min(deadline - now);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(cancelled()),
            _ = tokio::time::sleep(pause) => {}
        }
        interval = policy.next_interval(interval);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn quick() -> WaitPolicy {
        WaitPolicy {
            initial_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(5),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn polls_until_done_and_rides_out_transient_errors() {
        let polls = AtomicU32::new(0);
        let result = wait_for(&quick(), &CancellationToken::new(), "the thing", || async {
            match polls.fetch_add(1, Ordering::SeqCst) {
                0 => Ok(Progress::Waiting("attaching".into())),
                1 => Err(StepError::transient("Throttling")),
                _ => Ok(Progress::Done(7)),
            }
        })
        .await;
        assert_eq!(result, Ok(7));
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn failed_and_permanent_errors_end_the_wait() {
        let cancel = CancellationToken::new();
        let failed: Result<(), _> = wait_for(&quick(), &cancel, "attach", || async {
            Ok(Progress::Failed("volume deleted".into()))
        })
        .await;
        let e = failed.expect_err("a failed state ends the wait");
        assert!(!e.is_transient());
        assert_eq!(e.message(), "attach will not happen: volume deleted");

        let permanent: Result<(), _> =
            wait_for(&quick(), &cancel, "attach", || async { Err(StepError::permanent("gone")) })
                .await;
        assert_eq!(permanent, Err(StepError::permanent("gone")));
    }

    #[tokio::test]
    async fn times_out_with_the_last_state_as_a_transient_error() {
        let policy = WaitPolicy::fixed(Duration::from_millis(5), Duration::from_millis(30));
        let result: Result<(), _> =
            wait_for(&policy, &CancellationToken::new(), "healthy targets", || async {
                Ok(Progress::Waiting("i-1: initial".into()))
            })
            .await;
        let e = result.expect_err("never done");
        assert!(e.is_transient());
        assert!(
            e.message().contains("waiting for healthy targets; last seen: i-1: initial"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn cancellation_ends_a_long_pause_promptly() {
        let policy = WaitPolicy::fixed(Duration::from_secs(60), Duration::from_secs(600));
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            trigger.cancel();
        });
        let started = std::time::Instant::now();
        let result: Result<(), _> = wait_for(&policy, &cancel, "detach", || async {
            Ok(Progress::Waiting("detaching".into()))
        })
        .await;
        assert!(started.elapsed() < Duration::from_secs(5));
        let e = result.expect_err("cancelled");
        assert!(!e.is_transient());
        assert!(e.message().contains("cancelled"), "{e}");
    }

    #[test]
    fn intervals_grow_within_bounds() {
        let p = WaitPolicy {
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        };
        assert_eq!(p.next_interval(Duration::from_secs(1)), Duration::from_millis(1500));
        assert_eq!(p.next_interval(Duration::from_millis(1500)), Duration::from_secs(2));
        assert_eq!(p.next_interval(Duration::from_secs(2)), Duration::from_secs(2));
    }
}
