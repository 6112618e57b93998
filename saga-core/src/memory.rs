//! An in-memory store: for tests, and for Operations that need not survive the process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::check::{CheckReport, Finding, Problem};
use crate::error::StoreError;
use crate::id::{now_ms, OperationId};
use crate::oplog::LogLine;
use crate::record::{Record, RecordKind, Resource};
use crate::store::{
    check_create, check_sequence, CancelRecorded, CancelRequest, Creation, ExpectedMarks, Lease,
    Listing, Store, WakeUp, WakeUps,
};

/// A [`Store`] in memory. Nothing is durable beyond the process; records appended are visible to
/// every later read at once. Cloning is not offered: share it behind an `Arc`.
///
/// ```
/// use saga_core::MemoryStore;
/// use saga_core::store::Store;
/// # tokio::runtime::Runtime::new()?.block_on(async {
/// let store = MemoryStore::new();
/// assert!(store.list_unfinished().await?.ids.is_empty());
/// # Ok::<(), saga_core::store::StoreError>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    wake: WakeUps,
}

#[derive(Debug, Default)]
struct Inner {
    operations: HashMap<OperationId, Entry>,
    unfinished: BTreeSet<OperationId>,
    by_environment: BTreeMap<(String, u64, OperationId), ()>,
    leases: HashMap<OperationId, Lease>,
    logs: HashMap<OperationId, Vec<LogLine>>,
    cancels: BTreeMap<OperationId, CancelRequest>,
    /// The unfinished Operations of each resource, in creation order.
    queues: HashMap<Resource, Vec<OperationId>>,
}

#[derive(Debug)]
struct Entry {
    records: Vec<Record>,
    environment: String,
    resource: Resource,
}

impl Inner {
    fn dequeue(&mut self, id: OperationId) {
        let Some(resource) = self.operations.get(&id).map(|e| e.resource.clone()) else { return };
        if let Some(queue) = self.queues.get_mut(&resource) {
            queue.retain(|q| *q != id);
            if queue.is_empty() {
                self.queues.remove(&resource);
            }
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters
        // more than losing the store, so take the data back.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create(
        &self,
        record: &Record,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let Creation { environment, resource } = check_create(record)?;
        let mut inner = self.lock();
        if inner.operations.contains_key(&record.operation) {
            return Err(StoreError::AlreadyExists(record.operation));
        }
        let lease = Lease::claim_after(None, record.operation, owner, ttl, now_ms())?;
        inner.operations.insert(
            record.operation,
            Entry {
                records: vec![record.clone()],
                environment: environment.to_owned(),
                resource: resource.clone(),
            },
        );
        inner.queues.entry(resource.clone()).or_default().push(record.operation);
        inner.unfinished.insert(record.operation);
        inner.by_environment.insert((environment.to_owned(), record.at_ms, record.operation), ());
        inner.leases.insert(record.operation, lease.clone());
        drop(inner);
        if ttl.is_zero() {
            self.wake.send(WakeUp::Claimable(record.operation));
        }
        Ok(lease)
    }

    async fn append(&self, lease: &Lease, records: &[Record]) -> Result<(), StoreError> {
        let id = lease.operation;
        let mut inner = self.lock();
        lease.check_current(inner.leases.get(&id))?;
        let entry = inner.operations.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        check_sequence(id, entry.records.len() as u64, records)?;
        if records.iter().any(|r| r.kind.is_cancel_barrier()) {
            if let Some(request) = inner.cancels.get(&id) {
                let request = Box::new(request.clone());
                return Err(StoreError::CancelPending { operation: id, request });
            }
        }
        let Some(entry) = inner.operations.get_mut(&id) else {
            return Err(StoreError::NotFound(id));
        };
        entry.records.extend_from_slice(records);
        if records.iter().any(|r| r.kind.answers_cancel_request()) {
            inner.cancels.remove(&id);
        }
        if records.iter().any(|r| matches!(r.kind, RecordKind::OperationFinished { .. })) {
            inner.unfinished.remove(&id);
            inner.dequeue(id);
        }
        drop(inner);
        self.wake.appended(id, records);
        Ok(())
    }

    async fn read(&self, operation: OperationId) -> Result<Vec<Record>, StoreError> {
        let inner = self.lock();
        let entry = inner.operations.get(&operation).ok_or(StoreError::NotFound(operation))?;
        Ok(entry.records.clone())
    }

    async fn list_unfinished(&self) -> Result<Listing, StoreError> {
        Ok(Listing::of(self.lock().unfinished.iter().copied().collect()))
    }

    async fn claim(
        &self,
        operation: OperationId,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let mut inner = self.lock();
        if !inner.operations.contains_key(&operation) {
            return Err(StoreError::NotFound(operation));
        }
        let lease =
            Lease::claim_after(inner.leases.get(&operation), operation, owner, ttl, now_ms())?;
        inner.leases.insert(operation, lease.clone());
        Ok(lease)
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        let mut inner = self.lock();
        lease.check_current(inner.leases.get(&lease.operation))?;
        let renewed =
            Lease { expires_ms: now_ms().saturating_add(ttl.as_millis() as u64), ..lease.clone() };
        inner.leases.insert(lease.operation, renewed.clone());
        Ok(renewed)
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if lease.check_current(inner.leases.get(&lease.operation)).is_ok() {
            if let Some(l) = inner.leases.get_mut(&lease.operation) {
                l.expires_ms = 0;
            }
            if inner.unfinished.contains(&lease.operation) {
                drop(inner);
                self.wake.send(WakeUp::Claimable(lease.operation));
            }
        }
        Ok(())
    }

    async fn lease(&self, operation: OperationId) -> Result<Option<Lease>, StoreError> {
        Ok(self.lock().leases.get(&operation).cloned())
    }

    async fn list_environment(
        &self,
        environment: &str,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Listing, StoreError> {
        if since_ms >= until_ms {
            return Ok(Listing::default());
        }
        let inner = self.lock();
        let from = (environment.to_owned(), since_ms, OperationId::from_u128(0));
        let to = (environment.to_owned(), until_ms, OperationId::from_u128(0));
        Ok(Listing::of(inner.by_environment.range(from..to).map(|((_, _, id), _)| *id).collect()))
    }

    async fn append_log(&self, lease: &Lease, lines: &[LogLine]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        lease.check_current(inner.leases.get(&lease.operation))?;
        let stored = inner.logs.entry(lease.operation).or_default();
        for line in lines {
            if line.operation != lease.operation {
                return Err(StoreError::backend(
                    format!("appending log lines to operation {}", lease.operation),
                    format!("log line {} belongs to operation {}", line.seq, line.operation),
                ));
            }
            // Kept in order of their numbers; a number already stored keeps its line.
            if let Err(at) = stored.binary_search_by_key(&line.seq, |l| l.seq) {
                stored.insert(at, line.clone());
            }
        }
        Ok(())
    }

    async fn read_log(&self, operation: OperationId) -> Result<Vec<LogLine>, StoreError> {
        Ok(self.lock().logs.get(&operation).cloned().unwrap_or_default())
    }

    async fn purge_logs(&self, before_ms: u64) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let mut purged = 0;
        for lines in inner.logs.values_mut() {
            let before = lines.len();
            lines.retain(|l| l.at_ms >= before_ms);
            purged += (before - lines.len()) as u64;
        }
        Ok(purged)
    }

    async fn delete_environment(&self, environment: &str) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let ids: Vec<OperationId> = inner
            .operations
            .iter()
            .filter(|(_, e)| e.environment == environment)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            inner.dequeue(*id);
            inner.operations.remove(id);
            inner.unfinished.remove(id);
            inner.leases.remove(id);
            inner.logs.remove(id);
            inner.cancels.remove(id);
        }
        inner.by_environment.retain(|(env, _, _), _| env != environment);
        Ok(ids.len() as u64)
    }

    /// The maps are changed together under one lock, so a check of a `MemoryStore` finds
    /// nothing unless a bug of this crate left them apart; it checks them all the same.
    async fn check(&self, repair: bool) -> Result<CheckReport, StoreError> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut report = CheckReport::default();
        let mut damaged = Vec::new();
        let mut found = |operation, problem| {
            report.findings.push(Finding { operation: Some(operation), problem, repaired: repair })
        };
        for (id, entry) in &inner.operations {
            let expected = match ExpectedMarks::of(*id, &entry.records) {
                Ok(expected) => expected,
                Err(cause) => {
                    // Nothing to repair from.
                    damaged.push(Finding {
                        operation: Some(*id),
                        problem: Problem::DamagedRecords(cause),
                        repaired: false,
                    });
                    continue;
                }
            };
            match expected.unfinished_mark_problem(inner.unfinished.contains(id)) {
                Some(problem @ Problem::StaleUnfinishedMark) => {
                    found(*id, problem);
                    if repair {
                        inner.unfinished.remove(id);
                    }
                }
                Some(problem) => {
                    found(*id, problem);
                    if repair {
                        inner.unfinished.insert(*id);
                    }
                }
                None => {}
            }
            let key = (expected.environment.to_owned(), expected.created_ms, *id);
            if let std::collections::btree_map::Entry::Vacant(slot) =
                inner.by_environment.entry(key)
            {
                found(*id, Problem::MissingIndexEntry);
                if repair {
                    slot.insert(());
                }
            }
        }
        let operations = &inner.operations;
        let matches = |(env, at, id): &(String, u64, OperationId)| {
            operations.get(id).is_some_and(|e| {
                e.environment == *env && e.records.first().is_some_and(|r| r.at_ms == *at)
            })
        };
        let dangling: Vec<OperationId> =
            inner.unfinished.iter().filter(|id| !operations.contains_key(id)).copied().collect();
        for id in dangling {
            found(id, Problem::DanglingEntry { index: "unfinished".into() });
            if repair {
                inner.unfinished.remove(&id);
            }
        }
        let dangling: Vec<_> =
            inner.by_environment.keys().filter(|k| !matches(k)).cloned().collect();
        for key in dangling {
            found(key.2, Problem::DanglingEntry { index: "by_environment".into() });
            if repair {
                inner.by_environment.remove(&key);
            }
        }
        let dangling: Vec<OperationId> =
            inner.leases.keys().filter(|id| !operations.contains_key(id)).copied().collect();
        for id in dangling {
            found(id, Problem::DanglingEntry { index: "leases".into() });
            if repair {
                inner.leases.remove(&id);
            }
        }
        report.findings.extend(damaged);
        report.operations = operations.len() as u64;
        Ok(report)
    }

    async fn request_cancel(&self, request: &CancelRequest) -> Result<CancelRecorded, StoreError> {
        let id = request.operation;
        let mut inner = self.lock();
        if !inner.operations.contains_key(&id) {
            return Err(StoreError::NotFound(id));
        }
        if !inner.unfinished.contains(&id) {
            return Ok(CancelRecorded::Finished);
        }
        if let Some(pending) = inner.cancels.get(&id) {
            return Ok(CancelRecorded::AlreadyPending(pending.clone()));
        }
        inner.cancels.insert(id, request.clone());
        drop(inner);
        self.wake.send(WakeUp::CancelRequested(id));
        Ok(CancelRecorded::Recorded)
    }

    async fn cancel_requests(&self) -> Result<Vec<CancelRequest>, StoreError> {
        Ok(self.lock().cancels.values().cloned().collect())
    }

    async fn pending_cancel(
        &self,
        operation: OperationId,
    ) -> Result<Option<CancelRequest>, StoreError> {
        Ok(self.lock().cancels.get(&operation).cloned())
    }

    async fn resource_queue(&self, resource: &Resource) -> Result<Vec<OperationId>, StoreError> {
        Ok(self.lock().queues.get(resource).cloned().unwrap_or_default())
    }

    /// Every change is made in this process: the wake-ups come from the store's own calls.
    fn wake_ups(&self) -> Option<tokio::sync::broadcast::Receiver<WakeUp>> {
        Some(self.wake.subscribe())
    }
}
