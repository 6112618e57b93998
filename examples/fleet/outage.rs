//! [`Watched`]: a store that passes every call through and says on standard output when the
//! store starts failing and when it answers again, so that a worker tells the outage it saw (a
//! failover of its database, a restart): the time from its first failed call to the first call
//! that succeeded after it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use saga_core::log::{LogLine, Record};
use saga_core::store::{
    CancelRecorded, CancelRequest, Lease, Listing, Store, StoreError, StoreWrapper,
};
use saga_core::{async_trait, OperationId, Resource, Timestamp};

/// What the worker saw of the store's calls.
#[derive(Debug, Default)]
struct Seen {
    /// The outage under way: when its first failed call started.
    failing: Option<Instant>,
    /// When the last outage ended (its first successful call's start): a failure of a call that
    /// started before it belongs to that outage, not a new one.
    recovered: Option<Instant>,
}

/// A store that passes every call to `inner` and prints, on standard output,
///
/// - `store failing since MS: ERROR` at the first call that fails (Unix ms of its end: a
///   transient, backend or I/O error, or the store unavailable; refusals such as a lost lease
///   or a claim of an owned Operation are answers, not failures);
/// - `store answering again after N ms` at the first call that succeeds and that started after
///   the outage began: N is from the start of the first failed call to the end of this one.
pub(crate) struct Watched {
    inner: Arc<dyn Store>,
    seen: Mutex<Seen>,
}

impl Watched {
    /// Wraps `inner`.
    pub(crate) fn new(inner: Arc<dyn Store>) -> Watched {
        Watched { inner, seen: Mutex::new(Seen::default()) }
    }

    /// Notes the answer of a call that started at `started`, and passes it on.
    fn note<T>(&self, started: Instant, answer: Result<T, StoreError>) -> Result<T, StoreError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match &answer {
            Err(e) if is_failure(e) => {
                let after_recovery = seen.recovered.is_none_or(|at| started >= at);
                if seen.failing.is_none() && after_recovery {
                    seen.failing = Some(started);
                    say!("store failing since {}: {e}", Timestamp::now().unix_ms());
                }
            }
            _ => {
                if let Some(since) = seen.failing {
                    if started >= since {
                        seen.failing = None;
                        seen.recovered = Some(started);
                        say!("store answering again after {} ms", since.elapsed().as_millis());
                    }
                }
            }
        }
        answer
    }
}

/// Whether an error is the store failing rather than its answer to the call.
fn is_failure(e: &StoreError) -> bool {
    e.is_transient()
        || matches!(
            e,
            StoreError::Backend { .. } | StoreError::Io { .. } | StoreError::Unavailable(_)
        )
}

#[async_trait]
impl StoreWrapper for Watched {
    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }

    async fn create(
        &self,
        record: &Record,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let started = Instant::now();
        self.note(started, self.inner.create(record, owner, ttl).await)
    }

    async fn append(&self, lease: &Lease, records: &[Record]) -> Result<(), StoreError> {
        let started = Instant::now();
        self.note(started, self.inner.append(lease, records).await)
    }

    async fn read(&self, operation: OperationId) -> Result<Vec<Record>, StoreError> {
        let started = Instant::now();
        self.note(started, self.inner.read(operation).await)
    }

    async fn list_unfinished(&self) -> Result<Listing, StoreError> {
        let started = Instant::now();
        self.note(started, self.inner.list_unfinished().await)
    }

    async fn claim(
        &self,
        operation: OperationId,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let started = Instant::now();
        self.note(started, self.inner.claim(operation, owner, ttl).await)
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        let started = Instant::now();
        self.note(started, self.inner.renew(lease, ttl).await)
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let started = Instant::now();
        self.note(started, self.inner.release(lease).await)
    }

    async fn lease(&self, operation: OperationId) -> Result<Option<Lease>, StoreError> {
        let started = Instant::now();
        self.note(started, self.inner.lease(operation).await)
    }

    async fn append_log(&self, lease: &Lease, lines: &[LogLine]) -> Result<(), StoreError> {
        let started = Instant::now();
        self.note(started, self.inner.append_log(lease, lines).await)
    }

    async fn request_cancel(&self, request: &CancelRequest) -> Result<CancelRecorded, StoreError> {
        let started = Instant::now();
        self.note(started, self.inner.request_cancel(request).await)
    }

    async fn cancel_requests(&self) -> Result<Vec<CancelRequest>, StoreError> {
        let started = Instant::now();
        self.note(started, self.inner.cancel_requests().await)
    }

    async fn pending_cancel(
        &self,
        operation: OperationId,
    ) -> Result<Option<CancelRequest>, StoreError> {
        let started = Instant::now();
        self.note(started, self.inner.pending_cancel(operation).await)
    }

    async fn resource_queue(&self, resource: &Resource) -> Result<Vec<OperationId>, StoreError> {
        let started = Instant::now();
        self.note(started, self.inner.resource_queue(resource).await)
    }
}
