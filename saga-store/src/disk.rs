//! Making sled's writes survive a power loss.
//!
//! sled 0.34's `flush()` writes its buffers with `pwrite` and then, on Linux, calls
//! `sync_file_range`, which starts and waits for the write-back of those pages but flushes neither
//! the disk's volatile cache nor the file's metadata (its size, when the log grew). So after every
//! `flush()` this module calls `fdatasync` on the `db` file (through a second handle of the same
//! file; `flock` locks belong to sled's handle and are untouched). Values too big for sled's log
//! (more than about 128 KiB with the default 512 KiB segments) go to files under `blobs/`, which
//! sled writes without any sync: every blob file not yet synced is `fdatasync`ed, then the
//! `blobs/` directory, before the `db` file. At open, the `conf` file, the `db` file and the
//! directories (`blobs/`, the store's, and its parent when the store was created) are synced.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use saga_core::store::StoreError;

use crate::codec::sled_error;
use crate::contain::Contained;

/// Syncs one sled database to the disk. Owned by the flusher thread.
#[derive(Debug)]
pub(crate) struct DiskSync {
    db: Contained<sled::Db>,
    /// The `meta` tree, where checkpoints leave their mark ([`DiskSync::mark`]).
    meta: Contained<sled::Tree>,
    /// The changes made since the last checkpoint, which the next one moves into sled.
    memtable: Option<crate::overlay::Memtable>,
    dir: PathBuf,
    db_file: File,
    synced_blobs: HashSet<OsString>,
}

fn io_error(context: String) -> impl FnOnce(io::Error) -> StoreError {
    move |source| StoreError::Io { context, source }
}

/// `fsync`s a directory, so that the entries created in it survive a power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(format!("syncing directory {}", dir.display())))
}

fn sync_file(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_error(format!("syncing {}", path.display())))
}

impl DiskSync {
    /// Prepares to sync the database `db` opened at `dir`, and syncs what sled wrote while it
    /// opened: the `conf` and `db` files and the directories.
    pub(crate) fn open(db: sled::Db, dir: &Path) -> Result<Self, StoreError> {
        let db_path = dir.join("db");
        // Write access for platforms whose sync needs it; no lock is taken through this handle.
        let db_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&db_path)
            .map_err(io_error(format!("opening {} to sync it", db_path.display())))?;
        let conf = dir.join("conf");
        if conf.exists() {
            sync_file(&conf)?;
        }
        db_file.sync_all().map_err(io_error(format!("syncing {}", db_path.display())))?;
        let blobs = dir.join("blobs");
        if blobs.exists() {
            sync_dir(&blobs)?;
        }
        sync_dir(dir)?;
        let meta = db.open_tree(crate::keys::META).map_err(|e| sled_error("opening a tree", e))?;
        let meta = Contained::new(meta, "the sled meta tree (checkpointer)");
        let db = Contained::new(db, "the sled database (checkpointer)");
        let dir = dir.to_owned();
        let synced_blobs = HashSet::new();
        let mut sync = DiskSync { db, meta, memtable: None, dir, db_file, synced_blobs };
        sync.sync_blobs()?;
        Ok(sync)
    }

    /// Makes every write made to the database before the call durable: sled's `flush`, then
    /// `fdatasync` of new blob files, of `blobs/` and of `db`. Used by checkpoints (see
    /// [`crate::flusher`]), never on the path that acknowledges a write.
    pub(crate) fn sync(&mut self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| sled_error("flushing", e))?;
        self.sync_blobs()?;
        let context = format!("fdatasync of {}", self.dir.join("db").display());
        self.db_file.sync_data().map_err(io_error(context))
    }

    /// Makes checkpoints move `memtable`'s changes into sled ([`DiskSync::apply_changes`]).
    pub(crate) fn with_memtable(mut self, memtable: crate::overlay::Memtable) -> Self {
        self.memtable = Some(memtable);
        self
    }

    /// Writes every change made so far into sled's memory (the next [`DiskSync::sync`] makes it
    /// durable); returns how many keys it wrote.
    pub(crate) fn apply_changes(&mut self) -> Result<usize, StoreError> {
        self.memtable.as_ref().map_or(Ok(0), crate::overlay::Memtable::apply)
    }

    /// Forgets the changes [`DiskSync::apply_changes`] wrote, once sled's files hold them.
    pub(crate) fn forget_applied(&mut self) {
        if let Some(memtable) = &self.memtable {
            memtable.thaw();
        }
    }

    /// Records in sled (in memory: the next [`DiskSync::sync`] makes it durable) that its files
    /// hold every change up to the write-ahead log's `lsn`.
    pub(crate) fn mark(&mut self, lsn: u64) -> Result<(), StoreError> {
        let mut value = lsn.to_le_bytes().to_vec();
        value.extend_from_slice(&crc32c::crc32c(&value).to_le_bytes());
        self.meta
            .insert(crate::keys::META_CHECKPOINT_LSN, value)
            .map_err(|e| sled_error("marking a checkpoint in sled", e))?;
        Ok(())
    }

    /// The LSN of the last checkpoint marked in sled's files, if any.
    pub(crate) fn marked(&self) -> Result<Option<u64>, StoreError> {
        let place =
            || format!("the checkpoint mark in {}'s meta tree", self.dir.join("db").display());
        let value = self
            .meta
            .get(crate::keys::META_CHECKPOINT_LSN)
            .map_err(|e| sled_error("reading the checkpoint mark", e))?;
        let Some(value) = value else { return Ok(None) };
        let corrupt = |problem: String| StoreError::Corrupt { place: place(), problem };
        if value.len() != 12 {
            return Err(corrupt(format!("{} bytes where 12 belong", value.len())));
        }
        let mut lsn = [0u8; 8];
        lsn.copy_from_slice(&value[..8]);
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&value[8..]);
        if crc32c::crc32c(&lsn) != u32::from_le_bytes(crc) {
            return Err(corrupt("its checksum does not match".into()));
        }
        Ok(Some(u64::from_le_bytes(lsn)))
    }

    fn sync_blobs(&mut self) -> Result<(), StoreError> {
        let blobs = self.dir.join("blobs");
        let entries = match std::fs::read_dir(&blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error(format!("listing {}", blobs.display()))(e)),
        };
        let mut present = HashSet::new();
        let mut synced_any = false;
        for entry in entries {
            let entry = entry.map_err(io_error(format!("listing {}", blobs.display())))?;
            let name = entry.file_name();
            if !self.synced_blobs.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => f
                        .sync_data()
                        .map_err(io_error(format!("fdatasync of {}", entry.path().display())))?,
                    // Collected by sled since the listing: nothing to sync.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(io_error(format!("opening {}", entry.path().display()))(e))
                    }
                }
                synced_any = true;
            }
            present.insert(name);
        }
        if synced_any {
            sync_dir(&blobs)?;
        }
        self.synced_blobs = present;
        Ok(())
    }
}
