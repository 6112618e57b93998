//! How long a driver may act on its lease, and the guard that keeps a step's code from running
//! past it.
//!
//! The store's lease runs from the store's grant, which comes after the request was sent, so it
//! expires later than the instant the driver sent its last claim or renewal plus the TTL. The
//! driver counts from that instant ([`LeaseClock`]):
//!
//! - until the **deadline** (five sixths of the TTL) it acts: commits, launches, renews;
//! - past the deadline it sends nothing more for the Operation; its running steps' tokens fire
//!   and they may still return until the **cutoff** (eleven twelfths), while the lease is surely
//!   still held (the twelfth left over covers clocks that run at slightly different rates);
//! - past the cutoff no step code of the Operation runs here: [`WithinLease`] stops polling it,
//!   whatever woke the task first after a pause of the process.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

/// A fixed instant of this process, which lease grants are counted from.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// When a driver's lease was last granted or renewed (the instant the request was sent), shared
/// by the driver and its step futures.
#[derive(Debug)]
pub(crate) struct LeaseClock {
    /// Nanoseconds from [`base`] to the grant.
    granted_ns: AtomicU64,
    ttl: Duration,
}

impl LeaseClock {
    /// A clock for a lease of `ttl` granted at `at`.
    pub(crate) fn new(ttl: Duration, at: Instant) -> Arc<Self> {
        let clock = LeaseClock { granted_ns: AtomicU64::new(0), ttl };
        clock.granted_at(at);
        Arc::new(clock)
    }

    /// The lease was granted (or renewed) by a request sent at `at`.
    pub(crate) fn granted_at(&self, at: Instant) {
        let ns = u64::try_from(at.saturating_duration_since(base()).as_nanos()).unwrap_or(u64::MAX);
        self.granted_ns.store(ns, Ordering::Release);
    }

    /// When the lease was last granted or renewed.
    pub(crate) fn granted(&self) -> Instant {
        base() + Duration::from_nanos(self.granted_ns.load(Ordering::Acquire))
    }

    /// Past this instant the driver no longer acts on the lease.
    pub(crate) fn deadline(&self) -> Instant {
        self.granted() + self.ttl * 5 / 6
    }

    /// Past this instant no step code of the Operation runs here.
    pub(crate) fn cutoff(&self) -> Instant {
        self.granted() + self.ttl * 11 / 12
    }
}

/// A step's future that is no longer polled once its driver's lease reaches its
/// [cutoff](LeaseClock::cutoff): after that instant it stays pending for ever without running
/// any more of the step, and the driver (whose deadline comes first) drops it.
pub(crate) struct WithinLease<F> {
    future: F,
    clock: Arc<LeaseClock>,
}

impl<F> WithinLease<F> {
    pub(crate) fn new(clock: Arc<LeaseClock>, future: F) -> Self {
        WithinLease { future, clock }
    }
}

impl<F: Future + Unpin> Future for WithinLease<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if Instant::now() >= self.clock.cutoff() {
            // Not even a waker: nothing of the step may run again here.
            return Poll::Pending;
        }
        Pin::new(&mut self.future).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_step_is_not_polled_past_the_cutoff() {
        let clock = LeaseClock::new(Duration::from_millis(1200), Instant::now());
        let polls = Arc::new(AtomicU64::new(0));
        let counted = polls.clone();
        let step = std::future::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::SeqCst);
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        });
        tokio::pin!(step);
        let mut fenced = WithinLease::new(clock.clone(), step);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut fenced).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // Past the deadline (1000 ms) but before the cutoff (1100 ms): still polled.
        tokio::time::advance(Duration::from_millis(1050)).await;
        assert!(Instant::now() >= clock.deadline() && Instant::now() < clock.cutoff());
        assert!(Pin::new(&mut fenced).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        // Past the cutoff (as after a pause of the process): never polled again.
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..3 {
            assert!(Pin::new(&mut fenced).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        // A renewal moves both instants on.
        clock.granted_at(Instant::now());
        assert!(Pin::new(&mut fenced).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }
}
