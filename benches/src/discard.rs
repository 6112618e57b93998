//! [`DiscardStore`]: a store that keeps nothing, to measure what the executor alone holds per
//! Operation in flight (the `memory` figure of the `scale` bench reports both this and the
//! same run over `MemoryStore`, whose copy of every record and log line is the store's memory,
//! not the executor's).
//!
//! Not a store anyone could run on: it acknowledges every write and forgets it, and answers
//! every read as if nothing existed. The measured workload never reads (it starts Operations
//! and waits for their outcomes through the executor).

use std::time::Duration;

use async_trait::async_trait;
use saga_core::log::{LogLine, Record};
use saga_core::store::{
    CancelRecorded, CancelRequest, CheckReport, Lease, Listing, Store, StoreError,
};
use saga_core::{OperationId, Resource};

/// Acknowledges every write and keeps nothing; see the [module docs](self).
#[derive(Debug, Default)]
pub struct DiscardStore;

fn lease(operation: OperationId, owner: &str, ttl: Duration) -> Lease {
    Lease {
        operation,
        owner: owner.to_owned(),
        epoch: 1,
        expires_ms: saga_core::Timestamp::now().unix_ms().saturating_add(ttl.as_millis() as u64),
    }
}

#[async_trait]
impl Store for DiscardStore {
    async fn create(
        &self,
        record: &Record,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        Ok(lease(record.operation, owner, ttl))
    }
    async fn append(&self, _: &Lease, _: &[Record]) -> Result<(), StoreError> {
        Ok(())
    }
    async fn read(&self, operation: OperationId) -> Result<Vec<Record>, StoreError> {
        Err(StoreError::NotFound(operation))
    }
    async fn list_unfinished(&self) -> Result<Listing, StoreError> {
        Ok(Listing::default())
    }
    async fn claim(
        &self,
        operation: OperationId,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        Ok(lease(operation, owner, ttl))
    }
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        Ok(self::lease(lease.operation, &lease.owner, ttl))
    }
    async fn release(&self, _: &Lease) -> Result<(), StoreError> {
        Ok(())
    }
    async fn lease(&self, _: OperationId) -> Result<Option<Lease>, StoreError> {
        Ok(None)
    }
    async fn list_environment(&self, _: &str, _: u64, _: u64) -> Result<Listing, StoreError> {
        Ok(Listing::default())
    }
    async fn append_log(&self, _: &Lease, _: &[LogLine]) -> Result<(), StoreError> {
        Ok(())
    }
    async fn read_log(&self, _: OperationId) -> Result<Vec<LogLine>, StoreError> {
        Ok(Vec::new())
    }
    async fn purge_logs(&self, _: u64) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn delete_environment(&self, _: &str) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn check(&self, _: bool) -> Result<CheckReport, StoreError> {
        Ok(CheckReport::default())
    }
    async fn request_cancel(&self, request: &CancelRequest) -> Result<CancelRecorded, StoreError> {
        Err(StoreError::NotFound(request.operation))
    }
    async fn cancel_requests(&self) -> Result<Vec<CancelRequest>, StoreError> {
        Ok(Vec::new())
    }
    async fn resource_queue(&self, _: &Resource) -> Result<Vec<OperationId>, StoreError> {
        // Every Operation heads its resource's queue.
        Ok(Vec::new())
    }
}
