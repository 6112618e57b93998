//! The [`Store`] implementation: each call, with its retries where they are safe.

use std::time::Duration;

use async_trait::async_trait;
use saga_core::log::{LogLine, Record};
use saga_core::store::{
    CancelRecorded, CancelRequest, CheckReport, Lease, Listing, Store, StoreError, WakeUp,
};
use saga_core::{OperationId, Resource};

use crate::connect::PostgresStore;
use crate::retry::retrying;

/// Retries after transient errors (see [`PostgresOptions::retries`](crate::PostgresOptions::retries)):
/// every read; `claim`, `renew`, `release`, `append_log` and `request_cancel`, whose repetition
/// is harmless (a repeated `request_cancel` finds its own request pending and answers
/// `Recorded`; a repeated `append_log` that is fenced answers `Ok` when its lines are there);
/// `create` and `append` only where the outcome of the failed try is known (a commit whose
/// answer was lost is first checked against what the database holds); never `purge_logs` and
/// `delete_environment`, whose counts a repetition would get wrong.
#[async_trait]
impl Store for PostgresStore {
    async fn create(
        &self,
        record: &Record,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.create_record(record, owner, ttl).await
    }

    async fn append(&self, lease: &Lease, records: &[Record]) -> Result<(), StoreError> {
        self.append_records(lease, records).await
    }

    async fn read(&self, operation: OperationId) -> Result<Vec<Record>, StoreError> {
        retrying(self.retries(), "reading records", || self.read_records(operation)).await
    }

    async fn list_unfinished(&self) -> Result<Listing, StoreError> {
        retrying(self.retries(), "listing unfinished operations", || self.unfinished_once()).await
    }

    async fn claim(
        &self,
        operation: OperationId,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        retrying(self.retries(), "claiming", || self.claim_once(operation, owner, ttl)).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        retrying(self.retries(), "renewing", || self.renew_once(lease, ttl)).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        retrying(self.retries(), "releasing", || self.release_once(lease)).await
    }

    async fn lease(&self, operation: OperationId) -> Result<Option<Lease>, StoreError> {
        Ok(self.operation_state(operation).await?.map(|state| state.lease))
    }

    async fn list_environment(
        &self,
        environment: &str,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Listing, StoreError> {
        retrying(self.retries(), "listing an environment", || {
            self.environment_once(environment, since_ms, until_ms)
        })
        .await
    }

    async fn append_log(&self, lease: &Lease, lines: &[LogLine]) -> Result<(), StoreError> {
        self.append_log_lines(lease, lines).await
    }

    async fn read_log(&self, operation: OperationId) -> Result<Vec<LogLine>, StoreError> {
        retrying(self.retries(), "reading log lines", || self.read_log_once(operation)).await
    }

    async fn purge_logs(&self, before_ms: u64) -> Result<u64, StoreError> {
        self.purge_logs_once(before_ms).await
    }

    async fn delete_environment(&self, environment: &str) -> Result<u64, StoreError> {
        self.delete_environment_once(environment).await
    }

    async fn check(&self, repair: bool) -> Result<CheckReport, StoreError> {
        if repair {
            self.check_once(true).await
        } else {
            retrying(self.retries(), "checking", || self.check_once(false)).await
        }
    }

    async fn request_cancel(&self, request: &CancelRequest) -> Result<CancelRecorded, StoreError> {
        retrying(self.retries(), "requesting a cancel", || self.request_cancel_once(request)).await
    }

    async fn cancel_requests(&self) -> Result<Vec<CancelRequest>, StoreError> {
        retrying(self.retries(), "listing cancel requests", || self.cancel_requests_once()).await
    }

    async fn pending_cancel(
        &self,
        operation: OperationId,
    ) -> Result<Option<CancelRequest>, StoreError> {
        retrying(self.retries(), "reading a cancel request", || self.pending_cancel_once(operation))
            .await
    }

    async fn resource_queue(&self, resource: &Resource) -> Result<Vec<OperationId>, StoreError> {
        retrying(self.retries(), "reading a resource queue", || self.queue_once(resource)).await
    }

    /// Fed by `LISTEN` on a connection of its own, started by the first call (see
    /// [`PostgresStore::cancel_notifications`] and the crate docs for the channels): a
    /// submitted Operation, a lease released unfinished, a cancel request, and an Operation
    /// that finished or needs attention reach every executor on the database as they commit;
    /// [`WakeUp::Missed`] whenever the listening connection (re)connects.
    fn wake_ups(&self) -> Option<tokio::sync::broadcast::Receiver<WakeUp>> {
        Some(self.wake_up_receiver())
    }
}

impl PostgresStore {
    fn retries(&self) -> u32 {
        self.inner.options.retries
    }
}
