//! A store wrapper that "crashes" after a number of records.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use saga_core::async_trait;
use saga_core::log::Record;
use saga_core::store::{Lease, Store, StoreError};

/// Wraps a store and stops accepting records once `budget` of them (`OperationCreated`
/// included) were written, as if the process died right after the last one became durable: a
/// batch is cut where the budget ends. Reads, claims and log lines go through; `release` fails
/// (a dead process releases nothing), so the lease stays with the crashed executor's owner name
/// and a new executor with the same `owner` reclaims it at once.
///
/// ```
/// use std::sync::Arc;
/// use saga_core::store::Store;
/// use saga_core::MemoryStore;
/// use saga_testkit::CrashingStore;
/// let durable = Arc::new(MemoryStore::new());
/// let crashing = CrashingStore::new(durable.clone(), 3);
/// assert!(!crashing.crashed());
/// ```
pub struct CrashingStore {
    inner: Arc<dyn Store>,
    budget: AtomicU64,
}

impl fmt::Debug for CrashingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrashingStore")
            .field("budget", &self.budget.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl CrashingStore {
    /// Wraps `inner`, which keeps what was written before the crash.
    pub fn new(inner: Arc<dyn Store>, budget: u64) -> Self {
        CrashingStore { inner, budget: AtomicU64::new(budget) }
    }

    /// Whether the budget is spent (the next record would not be written).
    pub fn crashed(&self) -> bool {
        self.budget.load(Ordering::SeqCst) == 0
    }

    /// Takes up to `n` from the budget; returns how many were granted.
    fn take(&self, n: u64) -> u64 {
        let mut granted = 0;
        let _ = self.budget.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            granted = left.min(n);
            Some(left - granted)
        });
        granted
    }
}

fn crashed() -> StoreError {
    StoreError::Unavailable("crashed (saga-testkit)".into())
}

#[async_trait]
impl saga_core::store::StoreWrapper for CrashingStore {
    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }

    async fn create(
        &self,
        record: &Record,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        if self.take(1) == 0 {
            return Err(crashed());
        }
        self.inner.create(record, owner, ttl).await
    }

    async fn append(&self, lease: &Lease, records: &[Record]) -> Result<(), StoreError> {
        let granted = usize::try_from(self.take(records.len() as u64)).unwrap_or(records.len());
        if granted > 0 {
            self.inner.append(lease, &records[..granted]).await?;
        }
        if granted < records.len() {
            return Err(crashed());
        }
        Ok(())
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        if self.crashed() {
            return Err(crashed());
        }
        self.inner.renew(lease, ttl).await
    }

    async fn release(&self, _lease: &Lease) -> Result<(), StoreError> {
        Err(crashed())
    }
}
