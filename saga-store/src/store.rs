//! [`SledStore`]: the [`Store`] over sled, with group commit.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use saga_core::{Lease, LogLine, OperationId, Record, RecordKind, Store, StoreError};

use crate::disk::DiskSync;
use crate::flusher::Flusher;
use crate::open::{open, Trees};

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

/// A [`Store`] in a sled database directory. See the [crate docs](crate) for the layout and how
/// durability works.
///
/// One process at a time opens a store: a second one gets [`StoreError::Locked`]. Dropping the
/// store stops its flusher thread (after a last sync) and closes the database, so the same path
/// may be opened again at once. Share it behind an `Arc`.
pub struct SledStore {
    // Declared before `trees`: the flusher stops before the trees are dropped.
    flusher: Option<Flusher>,
    trees: Arc<Trees>,
    path: PathBuf,
    durability: Durability,
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
    /// # Errors
    ///
    /// [`StoreError::Locked`] if another process has it open, [`StoreError::NewerFormat`] if a
    /// newer release wrote it, [`StoreError::Io`] and others if it cannot be opened.
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
        let path = path.as_ref().to_owned();
        let trees = Arc::new(open(&path)?);
        let flusher = match durability {
            Durability::Fsync => Some(Flusher::start(DiskSync::open(trees.db.clone(), &path)?)?),
            Durability::NoSync => None,
        };
        Ok(SledStore { flusher, trees, path, durability })
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
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    /// Returns once everything written before the call is durable: a sync that began after the
    /// call has finished. Without fsync, at once.
    async fn commit(&self) -> Result<(), StoreError> {
        match &self.flusher {
            Some(flusher) => flusher.wait(flusher.ticket()).await,
            None => Ok(()),
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
        let (record, owner) = (record.clone(), owner.to_owned());
        let lease = self.write(move |t| t.create(&record, &owner, ttl)).await?;
        self.commit().await?;
        Ok(lease)
    }

    async fn append(&self, lease: &Lease, records: &[Record]) -> Result<(), StoreError> {
        let finishing =
            records.iter().any(|r| matches!(r.kind, RecordKind::OperationFinished { .. }));
        if finishing {
            // A sled transaction (records and the unfinished mark), which may wait for the disk.
            let (lease, records) = (lease.clone(), records.to_vec());
            self.write(move |t| t.append(&lease, &records)).await?;
        } else {
            self.write_inline(|t| t.append(lease, records))?;
        }
        if records.is_empty() {
            return Ok(());
        }
        self.commit().await
    }

    async fn read(&self, operation: OperationId) -> Result<Vec<Record>, StoreError> {
        self.blocking(move |t| t.read(operation)).await
    }

    async fn list_unfinished(&self) -> Result<Vec<OperationId>, StoreError> {
        self.blocking(Trees::list_unfinished).await
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
        self.write_inline(|t| t.release(lease))
    }

    async fn list_environment(
        &self,
        environment: &str,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Vec<OperationId>, StoreError> {
        let environment = environment.to_owned();
        self.blocking(move |t| t.list_environment(&environment, since_ms, until_ms)).await
    }

    async fn append_log(
        &self,
        operation: OperationId,
        lines: &[LogLine],
    ) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        self.write_inline(|t| t.append_log(operation, lines))
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
}
