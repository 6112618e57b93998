//! [`SledStore`]: the [`Store`] over sled, with group commit.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use saga_core::log::{LogLine, Record, RecordKind};
use saga_core::store::{
    CancelRecorded, CancelRequest, CheckReport, Finding, Lease, Listing, Problem, Store,
    StoreError, WakeUp, WakeUps,
};
use saga_core::{OperationId, Resource};

use crate::acks::{Acks, Hidden, StoredCancel};
use crate::cancels::Requested;
use crate::codec::decode_cancel;
use crate::disk::DiskSync;
#[cfg(feature = "fault-injection")]
use crate::faults::SyncHold;
use crate::flusher::{Flusher, Tuning};
use crate::open::{open, Trees};
use crate::records::Appended;

/// How a [`SledStore`] makes its writes durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Every `create`, `append` and `delete_environment` returns after sled's flush and an
    /// `fdatasync` of the files holding the data, shared by concurrent callers (group commit).
    /// Survives a crash of the process and a power loss.
    #[default]
    Fsync,
    /// **Not durable**: writes return as soon as sled holds them in memory. sled writes them out
    /// in the background (every 500 ms) without a barrier, so a crash of the process may lose the
    /// last half second and a power loss may lose more. For tests and throwaway stores only.
    NoSync,
}

/// A [`Store`] in a sled database directory. The repository's `ARCHITECTURE.md` ("The sled
/// store as built") gives its layout and how durability works.
///
/// One process at a time opens a store: a second one gets [`StoreError::Locked`]. Dropping the
/// store stops its flusher thread (after a last sync) and closes the database, so the same path
/// may be opened again at once. Share it behind an `Arc`.
pub struct SledStore {
    // Declared before `trees`: the flusher stops before the trees are dropped.
    flusher: Option<Flusher>,
    /// The writes not acknowledged yet (with the flusher: without fsync, a write is
    /// acknowledged once in sled).
    acks: Option<Arc<Acks>>,
    trees: Arc<Trees>,
    path: PathBuf,
    durability: Durability,
    /// What [`Store::wake_ups`] subscribes to: every writer is in this process.
    wake: WakeUps,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens the store at `path` (a directory, created if missing), durable against power loss
    /// ([`Durability::Fsync`]).
    ///
    /// Blocks while sled recovers its log; in async code, call it inside
    /// `tokio::task::spawn_blocking` if the store may be large.
    ///
    /// A missing path (or an empty directory) is created whole or not at all: sled's files are
    /// made and synced beside it, in `.<name>.creating.<pid>.<n>`, and renamed into place, so an
    /// open interrupted at any instant never leaves a directory that later opens refuse.
    ///
    /// One process opens a store at a time (sled's `flock` on its `db` file). Another process
    /// (or a second open in this one) waits up to one second for the lock, which covers sled's
    /// threads of a store just dropped here, and then gets [`StoreError::Locked`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Locked`] (after that second) if another process has it open,
    /// [`StoreError::NewerFormat`] if a newer release wrote it, [`StoreError::Corrupt`] naming
    /// the file and the offset if its files are damaged (or sled's files hold less than its
    /// write-ahead log's checkpoint), [`StoreError::Io`] and others if it cannot be opened.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, Durability::Fsync)
    }

    /// Opens the store at `path` **without fsync** ([`Durability::NoSync`]): fast, and not
    /// durable. For tests only.
    ///
    /// # Errors
    ///
    /// As [`SledStore::open`].
    pub fn open_without_fsync(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, Durability::NoSync)
    }

    /// Opens the store at `path` with the given durability.
    ///
    /// # Errors
    ///
    /// As [`SledStore::open`].
    pub fn open_with(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        Self::open_tuned(path.as_ref(), durability, Tuning::default())
    }

    /// **For tests only** (hidden from the docs; not part of the stable API): opens a durable
    /// store that checkpoints every `every` or after `bytes` of log, with log segments of
    /// `segment_bytes` (a multiple of 8, at least 64), instead of every 30 s or 32 MiB with
    /// 16 MiB segments: so that a test sees checkpoints and segment recycling within a second.
    ///
    /// # Errors
    ///
    /// As [`SledStore::open`], and [`StoreError::Unavailable`] for a bad segment size.
    #[doc(hidden)]
    pub fn open_with_checkpoints(
        path: impl AsRef<Path>,
        every: Duration,
        bytes: u64,
        segment_bytes: u64,
    ) -> Result<Self, StoreError> {
        let tuning = Tuning { every, bytes, segment_bytes };
        Self::open_tuned(path.as_ref(), Durability::Fsync, tuning)
    }

    fn open_tuned(path: &Path, durability: Durability, tuning: Tuning) -> Result<Self, StoreError> {
        let path = path.to_owned();
        let trees = Arc::new(open(&path, durability == Durability::Fsync)?);
        let flusher = match durability {
            Durability::Fsync => {
                let sync =
                    DiskSync::open((*trees.db).clone(), &path)?.with_memtable(trees.memtable());
                let replaying = trees.clone();
                Some(Flusher::start(&path, sync, trees.redo.clone(), tuning, move |entries| {
                    replaying.replay(entries)
                })?)
            }
            Durability::NoSync => None,
        };
        trees.settle_unacknowledged()?;
        let acks = flusher.as_ref().map(|f| Arc::new(Acks::new(f.tickets())));
        Ok(SledStore { flusher, acks, trees, path, durability, wake: WakeUps::default() })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the store makes writes durable.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// How many flush-and-sync rounds the store has made since it opened (always 0 without
    /// fsync). With group commit, concurrent appends share rounds, so this grows more slowly
    /// than the number of appends.
    pub fn sync_count(&self) -> u64 {
        self.flusher.as_ref().map_or(0, Flusher::syncs)
    }

    /// **For tests only** (hidden from the docs; not part of the stable API): makes a coming
    /// sync fail as if `fdatasync` of the `db` file had returned `error` (for example
    /// `std::io::Error::from_raw_os_error(5)`, EIO, or `28`, ENOSPC). The next `after` syncs
    /// succeed and the one after them fails; sled's flush before it still runs, as it would.
    /// [`SledStore::sync_count`] counts the syncs made so far: with one writer, each `create`,
    /// `append` (of at least one record), recorded `request_cancel`, `purge_logs` and
    /// `delete_environment` is one sync.
    ///
    /// The failure then behaves as a real one: the writers waiting for that sync get
    /// [`StoreError::Unavailable`], what they wrote stays hidden from reads, and the store
    /// refuses every later write. Arming it again before it fired replaces the earlier one.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] if the store was opened without fsync ([`Durability::NoSync`]):
    /// it never syncs, so there is nothing to make fail.
    #[doc(hidden)]
    #[cfg(feature = "fault-injection")]
    pub fn inject_sync_failure(&self, after: u64, error: std::io::Error) -> Result<(), StoreError> {
        let Some(flusher) = self.flusher.as_ref() else {
            return Err(StoreError::Unavailable(
                "no sync to make fail: the store was opened without fsync".into(),
            ));
        };
        flusher.faults().arm(after, error);
        Ok(())
    }

    /// **For tests only** (hidden from the docs; not part of the stable API): holds every sync
    /// of the write-ahead log back until the returned [`SyncHold`] is released or dropped, so
    /// that a test can act while a write is in sled and in the log's file but not acknowledged
    /// ([`SyncHold::wait_until_held`] tells when a sync waits). Combined with
    /// [`SledStore::inject_sync_failure`], the held sync then fails. Release the hold before
    /// dropping the store: closing waits for the log's writer.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] if the store was opened without fsync: it never syncs.
    #[doc(hidden)]
    #[cfg(feature = "fault-injection")]
    pub fn hold_syncs(&self) -> Result<SyncHold, StoreError> {
        let Some(flusher) = self.flusher.as_ref() else {
            return Err(StoreError::Unavailable(
                "no sync to hold: the store was opened without fsync".into(),
            ));
        };
        Ok(SyncHold::new(flusher.faults().clone()))
    }

    /// Runs `f` on the trees in tokio's blocking pool, after refusing to write if syncing has
    /// failed.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Trees) -> Result<T, StoreError> + Send + 'static,
    {
        if let Some(flusher) = &self.flusher {
            flusher.check()?;
        }
        self.blocking(f).await
    }

    /// Runs `f` on the trees on the calling thread, after refusing to write if syncing has
    /// failed: for writes made of plain sled inserts (no transaction), which only touch memory
    /// (sled writes its IO buffers out on its own threads), so that the hand-off to tokio's
    /// blocking pool would cost more than the write.
    fn write_inline<T>(
        &self,
        f: impl FnOnce(&Trees) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Some(flusher) = &self.flusher {
            flusher.check()?;
        }
        f(&self.trees)
    }

    /// Runs `f` on the trees in tokio's blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Trees) -> Result<T, StoreError> + Send + 'static,
    {
        let trees = self.trees.clone();
        tokio::task::spawn_blocking(move || f(&trees))
            .await
            .map_err(|e| StoreError::backend("running a store task", e))?
    }

    /// Returns once everything written before the call is durable: a sync that began after the
    /// call has finished. Without fsync, at once.
    async fn commit(&self) -> Result<(), StoreError> {
        let Some(flusher) = &self.flusher else { return Ok(()) };
        // Taken under the write lock, as every writer takes its ticket: a ticket drains every
        // change recorded so far into one log entry, and taken while another writer is halfway
        // through its changes it would split them between two entries (a crash between their
        // syncs would keep half of that write).
        let ticket = {
            let _writing = self.trees.lock();
            flusher.ticket()?
        };
        flusher.wait(ticket).await
    }

    /// Returns once every write whose ticket was taken before the call is durable (without
    /// taking a ticket of its own): an answer that rests on what another write did (a pending
    /// request, a finish) is given only once that write is acknowledged. Fails as that write's
    /// sync did. Without fsync, at once.
    async fn settled(&self) -> Result<(), StoreError> {
        match &self.flusher {
            Some(flusher) => flusher.wait_queued().await,
            None => Ok(()),
        }
    }

    /// Waits for the sync of `ticket`, which covers the write of `id` registered in `acks` at
    /// `from`, and forgets that write once it is acknowledged. A failed sync leaves it there:
    /// hidden from reads for the life of the store.
    async fn acknowledge(
        &self,
        acks: &Acks,
        id: OperationId,
        from: u64,
        ticket: u64,
    ) -> Result<(), StoreError> {
        let Some(flusher) = &self.flusher else { return Ok(()) };
        flusher.wait(ticket).await?;
        acks.forget(id, from);
        Ok(())
    }

    /// What reads must hide of `id`.
    fn hidden(&self, id: OperationId) -> Option<Hidden> {
        self.acks.as_ref().and_then(|acks| acks.hidden(id))
    }

    /// The acknowledged cancel request of `id`, stored as `stored` when read from sled (read
    /// before this call: see `acks`).
    fn acknowledged_cancel(&self, id: OperationId, stored: StoredCancel) -> StoredCancel {
        match self.acks.as_ref().and_then(|acks| acks.acknowledged_cancel(id)) {
            Some(acknowledged) => acknowledged,
            None => stored,
        }
    }
}

/// The Operations whose `OperationCreated` is not acknowledged.
fn not_created(hidden: &[(OperationId, Hidden)]) -> HashSet<OperationId> {
    hidden.iter().filter(|(_, w)| w.created()).map(|(id, _)| *id).collect()
}

/// The write of an inline `append` while its writer waits for the sync: if the writer stops
/// waiting (its future is dropped), the write's ticket is recorded, so that the write is
/// acknowledged, and shown, once that ticket is durable.
struct Waiting<'a> {
    acks: &'a Acks,
    id: OperationId,
    from: u64,
    ticket: u64,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.acks.set_ticket(self.id, self.from, self.ticket);
        }
    }
}

#[async_trait]
impl Store for SledStore {
    async fn create(
        &self,
        record: &Record,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let id = record.operation;
        let (record, owner, writer_acks) = (record.clone(), owner.to_owned(), self.acks.clone());
        let (lease, ticket) =
            self.write(move |t| t.create(&record, &owner, ttl, writer_acks.as_deref())).await?;
        if let (Some(acks), Some(ticket)) = (self.acks.as_deref(), ticket) {
            self.acknowledge(acks, id, 0, ticket).await?;
        }
        if ttl.is_zero() {
            // Submitted: no live lease, so that any executor may claim it at once.
            self.wake.send(WakeUp::Claimable(id));
        }
        Ok(lease)
    }

    async fn append(&self, lease: &Lease, records: &[Record]) -> Result<(), StoreError> {
        let id = lease.operation;
        let finishing =
            records.iter().any(|r| matches!(r.kind, RecordKind::OperationFinished { .. }));
        let written = if finishing {
            // In the blocking pool (a finish reads the queue key and removes the marks): the
            // ticket is recorded there, since this future may be dropped before the write is
            // made, so that the write is acknowledged once that ticket is durable.
            let writer_acks = self.acks.clone();
            let (lease, records) = (lease.clone(), records.to_vec());
            self.write(move |t| {
                let acks = writer_acks.as_deref();
                let written = t.append(&lease, &records, acks)?;
                if let (Some(acks), Some(w)) = (acks, &written) {
                    if let Some(ticket) = w.ticket {
                        acks.set_ticket(id, w.from, ticket);
                    }
                }
                Ok(written)
            })
            .await
        } else {
            self.write_inline(|t| t.append(lease, records, self.acks.as_deref()))
        };
        let written = match written {
            Ok(written) => written,
            Err(refused @ StoreError::CancelPending { .. }) => {
                // The pending request may not be acknowledged yet (its sync runs): refused
                // because of it only once it is, or with the error of its sync.
                self.settled().await?;
                return Err(refused);
            }
            Err(e) => return Err(e),
        };
        let Some(Appended { from, ticket, .. }) = written else { return Ok(()) };
        if let (Some(acks), Some(ticket)) = (self.acks.as_deref(), ticket) {
            if finishing {
                self.acknowledge(acks, id, from, ticket).await?;
            } else {
                // No await since the write: the ticket covers it. It is recorded with the write
                // only if this future is dropped while it waits.
                let mut waiting = Waiting { acks, id, from, ticket, done: false };
                let result = self.acknowledge(acks, id, from, ticket).await;
                waiting.done = true;
                result?;
            }
        }
        self.wake.appended(id, records);
        Ok(())
    }

    async fn read(&self, operation: OperationId) -> Result<Vec<Record>, StoreError> {
        let mut records = self.blocking(move |t| t.read(operation)).await?;
        // Asked after reading: see `acks`.
        if let Some(hidden) = self.hidden(operation) {
            if hidden.created() {
                return Err(StoreError::NotFound(operation));
            }
            records.truncate(usize::try_from(hidden.from).unwrap_or(usize::MAX));
        }
        Ok(records)
    }

    async fn list_unfinished(&self) -> Result<Listing, StoreError> {
        let mut listing = self.blocking(Trees::list_unfinished).await?;
        let hidden = self.acks.as_ref().map(|acks| acks.all_hidden()).unwrap_or_default();
        if !hidden.is_empty() {
            // An unacknowledged create does not exist yet; an unacknowledged finish did not
            // happen yet.
            let absent = not_created(&hidden);
            listing.ids.retain(|id| !absent.contains(id));
            let unfinished = hidden.iter().filter(|(_, w)| w.finishing && !w.created());
            listing.ids.extend(unfinished.map(|(id, _)| *id));
            listing.ids.sort_unstable();
            listing.ids.dedup();
        }
        Ok(listing)
    }

    async fn claim(
        &self,
        operation: OperationId,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let owner = owner.to_owned();
        self.write(move |t| t.claim(operation, &owner, ttl)).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        self.write_inline(|t| t.renew(lease, ttl))
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        if self.write_inline(|t| t.release(lease))? {
            self.wake.send(WakeUp::Claimable(lease.operation));
        }
        Ok(())
    }

    async fn lease(&self, operation: OperationId) -> Result<Option<Lease>, StoreError> {
        self.trees.lease(operation)
    }

    async fn list_environment(
        &self,
        environment: &str,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Listing, StoreError> {
        let environment = environment.to_owned();
        let mut listing =
            self.blocking(move |t| t.list_environment(&environment, since_ms, until_ms)).await?;
        let hidden = self.acks.as_ref().map(|acks| acks.all_hidden()).unwrap_or_default();
        if !hidden.is_empty() {
            let absent = not_created(&hidden);
            listing.ids.retain(|id| !absent.contains(id));
        }
        Ok(listing)
    }

    async fn append_log(&self, lease: &Lease, lines: &[LogLine]) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        self.write_inline(|t| t.append_log(lease, lines))
    }

    async fn read_log(&self, operation: OperationId) -> Result<Vec<LogLine>, StoreError> {
        self.blocking(move |t| t.read_log(operation)).await
    }

    async fn purge_logs(&self, before_ms: u64) -> Result<u64, StoreError> {
        let purged = self.write(move |t| t.purge_logs(before_ms)).await?;
        self.commit().await?;
        Ok(purged)
    }

    async fn delete_environment(&self, environment: &str) -> Result<u64, StoreError> {
        let environment = environment.to_owned();
        let deleted = self.write(move |t| t.delete_environment(&environment)).await?;
        self.commit().await?;
        Ok(deleted)
    }

    async fn check(&self, repair: bool) -> Result<CheckReport, StoreError> {
        let mut report = if repair {
            let report = self.write(|t| t.check(true)).await?;
            if report.findings.iter().any(|f| f.repaired) {
                self.commit().await?;
            }
            report
        } else {
            self.blocking(|t| t.check(false)).await?
        };
        if let Some(cut) = self.flusher.as_ref().and_then(Flusher::cut_at_open) {
            // Repaired at open (the cut is the repair), and said here so that it is never silent.
            let problem = Problem::TornTailCut {
                file: cut.path.display().to_string(),
                offset: cut.offset,
                bytes: cut.bytes,
            };
            report.findings.insert(0, Finding { operation: None, problem, repaired: true });
        }
        Ok(report)
    }

    async fn request_cancel(&self, request: &CancelRequest) -> Result<CancelRecorded, StoreError> {
        let id = request.operation;
        let requested = self.write_inline(|t| t.request_cancel(request, self.acks.as_deref()))?;
        match requested {
            Requested::Recorded(ticket) => {
                if let (Some(flusher), Some(ticket)) = (&self.flusher, ticket) {
                    flusher.wait(ticket).await?;
                }
                self.wake.send(WakeUp::CancelRequested(id));
                Ok(CancelRecorded::Recorded)
            }
            // Both rest on another write (the pending request, the finish), which may not be
            // acknowledged yet: answered once it is, or with the error of its sync.
            Requested::AlreadyPending(pending) => {
                self.settled().await?;
                Ok(CancelRecorded::AlreadyPending(pending))
            }
            Requested::Finished => {
                self.settled().await?;
                Ok(CancelRecorded::Finished)
            }
        }
    }

    async fn cancel_requests(&self) -> Result<Vec<CancelRequest>, StoreError> {
        let mut requests = self.blocking(Trees::cancel_requests).await?;
        // Asked after reading: see `acks`.
        let changed = self.acks.as_ref().map(|acks| acks.all_acknowledged_cancels());
        let changed = changed.unwrap_or_default();
        if !changed.is_empty() {
            // Requests whose recording or removal is not acknowledged: shown as they were.
            requests.retain(|r| !changed.iter().any(|(id, _)| *id == r.operation));
            for (id, acknowledged) in changed {
                let Some(bytes) = acknowledged else { continue };
                match decode_cancel(&bytes, id) {
                    Ok(request) => requests.push(request),
                    Err(e) => tracing::warn!(error = %e, "a damaged cancel request is left out"),
                }
            }
            requests.sort_by_key(|r| r.operation);
        }
        Ok(requests)
    }

    async fn pending_cancel(
        &self,
        operation: OperationId,
    ) -> Result<Option<CancelRequest>, StoreError> {
        let stored = self.trees.stored_cancel(operation)?;
        let acknowledged = self.acknowledged_cancel(operation, stored);
        acknowledged.map(|bytes| decode_cancel(&bytes, operation)).transpose()
    }

    async fn resource_queue(&self, resource: &Resource) -> Result<Vec<OperationId>, StoreError> {
        let mut queue = self.trees.resource_queue(resource)?;
        let hidden = self.acks.as_ref().map(|acks| acks.all_hidden()).unwrap_or_default();
        if !hidden.is_empty() {
            // As for the unfinished list: an unacknowledged create is not queued yet, and an
            // unacknowledged finish did not leave the queue yet.
            let absent = not_created(&hidden);
            queue.retain(|id| !absent.contains(id));
            for (id, write) in &hidden {
                if write.finishing && !write.created() && !queue.contains(id) {
                    if let Some(key) = self.trees.queue_key(*id)? {
                        if key.starts_with(&crate::keys::resource_prefix(resource)) {
                            queue.push(*id);
                        }
                    }
                }
            }
            queue.sort_unstable();
        }
        Ok(queue)
    }

    /// Every writer is in this process (one process opens a store): the wake-ups come from the
    /// store's own calls, each sent once its write is acknowledged (durable, with fsync).
    fn wake_ups(&self) -> Option<tokio::sync::broadcast::Receiver<WakeUp>> {
        Some(self.wake.subscribe())
    }
}
