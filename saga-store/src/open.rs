//! Opening the sled database: the lock, the format check and the trees.

use std::path::Path;
use std::sync::Mutex;

use saga_core::store::{StoreError, FORMAT_VERSION};

use crate::codec::sled_error;
use crate::disk::sync_dir;
use crate::keys;

/// The version of the key layout described in [`keys`]. Raise it when the layout changes.
pub(crate) const LAYOUT_VERSION: u8 = 1;

/// The trees of one open store.
#[derive(Debug)]
pub(crate) struct Trees {
    pub(crate) db: sled::Db,
    pub(crate) records: sled::Tree,
    pub(crate) unfinished: sled::Tree,
    pub(crate) by_environment: sled::Tree,
    pub(crate) leases: sled::Tree,
    pub(crate) cancels: sled::Tree,
    pub(crate) by_resource: sled::Tree,
    pub(crate) logs: sled::Tree,
    pub(crate) logs_by_time: sled::Tree,
    /// Serializes read-check-write sequences (lease and sequence checks, then the write). Only
    /// one process opens a store, so an in-process lock is enough.
    pub(crate) writing: Mutex<()>,
}

/// Opens (creating it if needed) the store at `path`, checks its format and syncs what opening
/// wrote. Blocks.
pub(crate) fn open(path: &Path) -> Result<Trees, StoreError> {
    let created = !path.exists();
    // sled's own periodic flusher is off: the store's flusher does every flush (and the fdatasync
    // after it), and sled's thread would keep the file, and its lock, open for up to its period
    // after the store is dropped.
    let db = open_db(path)?;
    if created {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    let tree = |name: &str| db.open_tree(name).map_err(|e| sled_error("opening a tree", e));
    let meta = tree(keys::META)?;
    check_version(&meta, keys::META_LAYOUT, LAYOUT_VERSION, "key layout")?;
    check_version(&meta, keys::META_RECORD_FORMAT, FORMAT_VERSION, "record format")?;
    let trees = Trees {
        records: tree(keys::RECORDS)?,
        unfinished: tree(keys::UNFINISHED)?,
        by_environment: tree(keys::BY_ENVIRONMENT)?,
        leases: tree(keys::LEASES)?,
        cancels: tree(keys::CANCELS)?,
        by_resource: tree(keys::BY_RESOURCE)?,
        logs: tree(keys::LOGS)?,
        logs_by_time: tree(keys::LOGS_BY_TIME)?,
        writing: Mutex::new(()),
        db,
    };
    trees.db.flush().map_err(|e| sled_error("flushing after open", e))?;
    Ok(trees)
}

/// Refuses a store whose `key` version is newer than `supported`; records `supported` otherwise
/// (keeping a newer one, which never happens past the check).
fn check_version(
    meta: &sled::Tree,
    key: &[u8],
    supported: u8,
    what: &str,
) -> Result<(), StoreError> {
    let stored = meta.get(key).map_err(|e| sled_error("reading the store's format", e))?;
    match stored.as_deref() {
        None => {}
        Some(&[found]) if found > supported => {
            tracing::error!(found, supported, "store written with a newer {what} version");
            return Err(StoreError::NewerFormat { found, supported });
        }
        Some(&[found]) if found == supported => return Ok(()),
        Some(&[_]) => {}
        Some(other) => {
            return Err(StoreError::Corrupt {
                place: format!("meta key {:?}", String::from_utf8_lossy(key)),
                problem: format!("{} bytes where one version byte belongs", other.len()),
            })
        }
    }
    meta.insert(key, &[supported]).map_err(|e| sled_error("writing the store's format", e))?;
    Ok(())
}

/// sled 0.34 reports a held `flock` as an `Other` I/O error "could not acquire lock on ...".
/// How long opening waits for the file lock. sled's short-lived write threads can keep the file of
/// a store just dropped in this process open for a moment; another process holding the store is
/// still reported as [`StoreError::Locked`] after this wait, never a hang.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        // sled's own periodic flusher is off: the store's flusher does every flush (and the
        // fdatasync after it), and sled's thread would keep the file open after a drop.
        let opened = sled::Config::new().path(path).flush_every_ms(None).open();
        match opened.map_err(|e| open_error(path, e)) {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn open_error(path: &Path, error: sled::Error) -> StoreError {
    match error {
        sled::Error::Io(e) if e.to_string().contains("could not acquire lock") => {
            StoreError::Locked { path: path.display().to_string() }
        }
        other => sled_error(&format!("opening {}", path.display()), other),
    }
}

impl Trees {
    /// Takes the write lock (a poisoned one too: the lock guards no data).
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
