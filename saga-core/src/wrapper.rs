//! [`StoreWrapper`]: a store that passes every call to another and changes a few, without
//! forwarding the others by hand (a forgotten one would silently fall back to a default, as
//! `Store::wake_ups` did in a wrapper that forgot it).

use std::time::Duration;

use async_trait::async_trait;

use crate::id::OperationId;
use crate::oplog::LogLine;
use crate::record::{Record, Resource};
use crate::store::{
    CancelRecorded, CancelRequest, CheckReport, Lease, Listing, Store, StoreError, WakeUp,
};

/// A store over another (`inner`): every method passes the call on unless overridden. Every
/// `StoreWrapper` is a [`Store`]. For test doubles that inject faults or damage, and for
/// instrumentation (say, noting each claim).
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use saga_core::store::{Lease, Store, StoreError, StoreWrapper};
/// use saga_core::{async_trait, MemoryStore, OperationId};
///
/// /// Counts claims; everything else goes straight to the store inside.
/// struct CountingClaims { inner: MemoryStore, claims: AtomicU64 }
///
/// #[async_trait]
/// impl StoreWrapper for CountingClaims {
///     fn inner(&self) -> &dyn Store {
///         &self.inner
///     }
///     async fn claim(&self, id: OperationId, owner: &str, ttl: std::time::Duration)
///         -> Result<Lease, StoreError> {
///         self.claims.fetch_add(1, Ordering::Relaxed);
///         self.inner.claim(id, owner, ttl).await
///     }
/// }
///
/// let store: Arc<dyn Store> = Arc::new(CountingClaims { inner: MemoryStore::new(), claims: AtomicU64::new(0) });
/// ```
#[async_trait]
#[allow(missing_docs)] // Each method is the `Store` method of the same name, passed on.
pub trait StoreWrapper: Send + Sync + 'static {
    /// The store the calls go to.
    fn inner(&self) -> &dyn Store;

    async fn create(
        &self,
        record: &Record,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.inner().create(record, owner, ttl).await
    }

    async fn append(&self, lease: &Lease, records: &[Record]) -> Result<(), StoreError> {
        self.inner().append(lease, records).await
    }

    async fn read(&self, operation: OperationId) -> Result<Vec<Record>, StoreError> {
        self.inner().read(operation).await
    }

    async fn list_unfinished(&self) -> Result<Listing, StoreError> {
        self.inner().list_unfinished().await
    }

    async fn claim(
        &self,
        operation: OperationId,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.inner().claim(operation, owner, ttl).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        self.inner().renew(lease, ttl).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.inner().release(lease).await
    }

    async fn lease(&self, operation: OperationId) -> Result<Option<Lease>, StoreError> {
        self.inner().lease(operation).await
    }

    async fn list_environment(
        &self,
        environment: &str,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Listing, StoreError> {
        self.inner().list_environment(environment, since_ms, until_ms).await
    }

    async fn append_log(&self, lease: &Lease, lines: &[LogLine]) -> Result<(), StoreError> {
        self.inner().append_log(lease, lines).await
    }

    async fn read_log(&self, operation: OperationId) -> Result<Vec<LogLine>, StoreError> {
        self.inner().read_log(operation).await
    }

    async fn purge_logs(&self, before_ms: u64) -> Result<u64, StoreError> {
        self.inner().purge_logs(before_ms).await
    }

    async fn delete_environment(&self, environment: &str) -> Result<u64, StoreError> {
        self.inner().delete_environment(environment).await
    }

    async fn check(&self, repair: bool) -> Result<CheckReport, StoreError> {
        self.inner().check(repair).await
    }

    async fn request_cancel(&self, request: &CancelRequest) -> Result<CancelRecorded, StoreError> {
        self.inner().request_cancel(request).await
    }

    async fn cancel_requests(&self) -> Result<Vec<CancelRequest>, StoreError> {
        self.inner().cancel_requests().await
    }

    async fn pending_cancel(
        &self,
        operation: OperationId,
    ) -> Result<Option<CancelRequest>, StoreError> {
        self.inner().pending_cancel(operation).await
    }

    async fn resource_queue(&self, resource: &Resource) -> Result<Vec<OperationId>, StoreError> {
        self.inner().resource_queue(resource).await
    }

    fn wake_ups(&self) -> Option<tokio::sync::broadcast::Receiver<WakeUp>> {
        self.inner().wake_ups()
    }
}

#[async_trait]
impl<W: StoreWrapper> Store for W {
    async fn create(
        &self,
        record: &Record,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        StoreWrapper::create(self, record, owner, ttl).await
    }

    async fn append(&self, lease: &Lease, records: &[Record]) -> Result<(), StoreError> {
        StoreWrapper::append(self, lease, records).await
    }

    async fn read(&self, operation: OperationId) -> Result<Vec<Record>, StoreError> {
        StoreWrapper::read(self, operation).await
    }

    async fn list_unfinished(&self) -> Result<Listing, StoreError> {
        StoreWrapper::list_unfinished(self).await
    }

    async fn claim(
        &self,
        operation: OperationId,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        StoreWrapper::claim(self, operation, owner, ttl).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        StoreWrapper::renew(self, lease, ttl).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        StoreWrapper::release(self, lease).await
    }

    async fn lease(&self, operation: OperationId) -> Result<Option<Lease>, StoreError> {
        StoreWrapper::lease(self, operation).await
    }

    async fn list_environment(
        &self,
        environment: &str,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Listing, StoreError> {
        StoreWrapper::list_environment(self, environment, since_ms, until_ms).await
    }

    async fn append_log(&self, lease: &Lease, lines: &[LogLine]) -> Result<(), StoreError> {
        StoreWrapper::append_log(self, lease, lines).await
    }

    async fn read_log(&self, operation: OperationId) -> Result<Vec<LogLine>, StoreError> {
        StoreWrapper::read_log(self, operation).await
    }

    async fn purge_logs(&self, before_ms: u64) -> Result<u64, StoreError> {
        StoreWrapper::purge_logs(self, before_ms).await
    }

    async fn delete_environment(&self, environment: &str) -> Result<u64, StoreError> {
        StoreWrapper::delete_environment(self, environment).await
    }

    async fn check(&self, repair: bool) -> Result<CheckReport, StoreError> {
        StoreWrapper::check(self, repair).await
    }

    async fn request_cancel(&self, request: &CancelRequest) -> Result<CancelRecorded, StoreError> {
        StoreWrapper::request_cancel(self, request).await
    }

    async fn cancel_requests(&self) -> Result<Vec<CancelRequest>, StoreError> {
        StoreWrapper::cancel_requests(self).await
    }

    async fn pending_cancel(
        &self,
        operation: OperationId,
    ) -> Result<Option<CancelRequest>, StoreError> {
        StoreWrapper::pending_cancel(self, operation).await
    }

    async fn resource_queue(&self, resource: &Resource) -> Result<Vec<OperationId>, StoreError> {
        StoreWrapper::resource_queue(self, resource).await
    }

    fn wake_ups(&self) -> Option<tokio::sync::broadcast::Receiver<WakeUp>> {
        StoreWrapper::wake_ups(self)
    }
}

/// The view of an executor's store that its callers get ([`Executor::store`](crate::Executor::store)):
/// every read passes through; every write is refused with [`StoreError::ReadOnly`], so that no
/// caller appends, claims, cancels or repairs past the executor.
pub(crate) struct ReadOnly(pub(crate) std::sync::Arc<dyn Store>);

fn refused<T>(method: &'static str) -> Result<T, StoreError> {
    Err(StoreError::ReadOnly { method })
}

#[async_trait]
impl StoreWrapper for ReadOnly {
    fn inner(&self) -> &dyn Store {
        self.0.as_ref()
    }

    async fn create(&self, _: &Record, _: &str, _: Duration) -> Result<Lease, StoreError> {
        refused("create")
    }

    async fn append(&self, _: &Lease, _: &[Record]) -> Result<(), StoreError> {
        refused("append")
    }

    async fn claim(&self, _: OperationId, _: &str, _: Duration) -> Result<Lease, StoreError> {
        refused("claim")
    }

    async fn renew(&self, _: &Lease, _: Duration) -> Result<Lease, StoreError> {
        refused("renew")
    }

    async fn release(&self, _: &Lease) -> Result<(), StoreError> {
        refused("release")
    }

    async fn append_log(&self, _: &Lease, _: &[LogLine]) -> Result<(), StoreError> {
        refused("append_log")
    }

    async fn purge_logs(&self, _: u64) -> Result<u64, StoreError> {
        refused("purge_logs")
    }

    async fn delete_environment(&self, _: &str) -> Result<u64, StoreError> {
        refused("delete_environment")
    }

    async fn check(&self, repair: bool) -> Result<CheckReport, StoreError> {
        if repair {
            return refused("check with repair");
        }
        self.0.check(false).await
    }

    async fn request_cancel(&self, _: &CancelRequest) -> Result<CancelRecorded, StoreError> {
        refused("request_cancel")
    }
}
