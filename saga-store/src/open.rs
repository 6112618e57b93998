//! Opening the sled database: the lock, the format check and the trees.

use std::path::Path;
use std::sync::{Arc, Mutex};

use saga_core::store::{StoreError, FORMAT_VERSION};

use crate::codec::sled_error;
use crate::contain::Contained;
use crate::disk::sync_dir;
use crate::keys;
use crate::overlay::Logged;
use crate::redo::Redo;

/// The version of the store's layout: the key layout described in [`keys`] and, from version 2,
/// the write-ahead log in `wal/` (see [`crate::flusher`]), which holds acknowledged writes not
/// yet checkpointed into the trees. Raise it when either changes. A store of version 1 (written
/// before the log) opens as is and is marked 2; a release that knows only 1 refuses a store
/// marked 2 ([`StoreError::NewerFormat`]) rather than miss what its log holds. Version 3: every
/// checkpoint marks its LSN in sled's `meta` tree ([`keys::META_CHECKPOINT_LSN`]), and opening
/// refuses sled files whose mark is below the log's checkpoint; a store of version 2 opens as
/// is and is marked at its next checkpoint.
pub(crate) const LAYOUT_VERSION: u8 = 3;

/// The trees of one open store. Every change to them is recorded in `redo` (see
/// [`crate::redo`]); `meta` is written at open only, and synced there.
#[derive(Debug)]
pub(crate) struct Trees {
    pub(crate) db: Contained<sled::Db>,
    pub(crate) records: Logged,
    pub(crate) unfinished: Logged,
    pub(crate) by_environment: Logged,
    pub(crate) leases: Logged,
    pub(crate) cancels: Logged,
    pub(crate) by_resource: Logged,
    pub(crate) logs: Logged,
    pub(crate) logs_by_time: Logged,
    /// The changes not yet drained into the write-ahead log.
    pub(crate) redo: Arc<Redo>,
    /// Serializes read-check-write sequences (lease and sequence checks, then the write). Only
    /// one process opens a store, so an in-process lock is enough.
    pub(crate) writing: Mutex<()>,
}

/// Opens (creating it if needed) the store at `path`, checks its format and syncs what opening
/// wrote; with `record`, every later change is recorded for the write-ahead log. Blocks.
pub(crate) fn open(path: &Path, record: bool) -> Result<Trees, StoreError> {
    let created = is_missing_or_empty(path)?;
    if created {
        create(path)?;
    }
    // sled's own periodic flusher is off: the store's flusher does every flush (and the fdatasync
    // after it), and sled's thread would keep the file, and its lock, open for up to its period
    // after the store is dropped.
    let db = Contained::new(open_db(path)?, "the sled database");
    let tree = |name: &str| db.open_tree(name).map_err(|e| sled_error("opening a tree", e));
    let meta = Contained::new(tree(keys::META)?, "the sled meta tree");
    check_version(&meta, keys::META_LAYOUT, LAYOUT_VERSION, "key layout")?;
    check_version(&meta, keys::META_RECORD_FORMAT, FORMAT_VERSION, "record format")?;
    let redo = Arc::new(Redo::new(record));
    // The numbers are part of the write-ahead log's format: never renumber a tree.
    let logged = |name: &str, number: u8| Ok(Logged::new(tree(name)?, number, redo.clone()));
    let bundled = |name: &'static str, prefix: usize, number: u8| {
        Ok(Logged::bundled(tree(name)?, name, prefix, number, redo.clone()))
    };
    let trees = Trees {
        records: bundled(keys::RECORDS, crate::bundle::PREFIX, 1)?,
        unfinished: logged(keys::UNFINISHED, 2)?,
        by_environment: logged(keys::BY_ENVIRONMENT, 3)?,
        leases: logged(keys::LEASES, 4)?,
        cancels: logged(keys::CANCELS, 5)?,
        by_resource: logged(keys::BY_RESOURCE, 6)?,
        logs: bundled(keys::LOGS, crate::bundle::PREFIX, 7)?,
        logs_by_time: bundled(keys::LOGS_BY_TIME, crate::bundle::TIME_PREFIX, 8)?,
        writing: Mutex::new(()),
        redo,
        db,
    };
    trees.db.flush().map_err(|e| sled_error("flushing after open", e))?;
    Ok(trees)
}

/// Whether `path` is where a store must be created: nothing there, or an empty directory.
fn is_missing_or_empty(path: &Path) -> Result<bool, StoreError> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(StoreError::Io {
            context: format!("reading the directory {}", path.display()),
            source,
        }),
    }
}

/// The directory holding `path`.
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The prefix of the name a store at `path` is created under before it is renamed into place,
/// followed by the creating process's id.
fn creating_prefix(path: &Path) -> Result<String, StoreError> {
    let name = path.file_name().ok_or_else(|| StoreError::Io {
        context: format!("creating a store at {}", path.display()),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path names no directory (it ends in `..` or is a root)",
        ),
    })?;
    Ok(format!(".{}.creating.", name.to_string_lossy()))
}

/// Creates the store at `path` whole or not at all: sled's files are made (and synced) in a
/// directory beside it, `.<name>.creating.<pid>.<n>`, which is renamed into place once complete, so a
/// creation interrupted at any instant (a kill, EIO, ENOSPC) leaves no half-written `conf` (sled
/// 0.34 writes it with two `write`s and fails every later open on a torn one). Leftovers of
/// creations whose process is gone are removed first. If another process creates the same store
/// meanwhile, its store wins and this one's is removed.
fn create(path: &Path) -> Result<(), StoreError> {
    let io = |context: String| move |source| StoreError::Io { context, source };
    let parent = parent_of(path);
    let prefix = creating_prefix(path)?;
    std::fs::create_dir_all(parent)
        .map_err(io(format!("creating the directory {}", parent.display())))?;
    remove_abandoned_creations(parent, &prefix)?;
    // The process's id, then a number of its own: threads of one process creating the same
    // store each build their own (one wins the rename; the other opens it, or waits for it).
    static CREATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CREATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = parent.join(format!("{prefix}{}.{n}", std::process::id()));
    {
        let db = Contained::new(open_db(&temp)?, "the sled database being created");
        let meta = Contained::new(
            db.open_tree(keys::META).map_err(|e| sled_error("opening a tree", e))?,
            "the sled meta tree being created",
        );
        check_version(&meta, keys::META_LAYOUT, LAYOUT_VERSION, "key layout")?;
        check_version(&meta, keys::META_RECORD_FORMAT, FORMAT_VERSION, "record format")?;
        db.flush().map_err(|e| sled_error("flushing a new store", e))?;
    }
    for file in ["conf", "db"] {
        let file = temp.join(file);
        std::fs::File::open(&file)
            .and_then(|f| f.sync_all())
            .map_err(io(format!("syncing {}", file.display())))?;
    }
    let blobs = temp.join("blobs");
    if blobs.exists() {
        sync_dir(&blobs)?;
    }
    sync_dir(&temp)?;
    match std::fs::rename(&temp, path) {
        Ok(()) => sync_dir(parent),
        Err(_) if !is_missing_or_empty(path)? => {
            tracing::info!(store = %path.display(), "another process created the store first");
            std::fs::remove_dir_all(&temp)
                .map_err(io(format!("removing the creation {}", temp.display())))
        }
        Err(source) => Err(StoreError::Io {
            context: format!("renaming the new store {} into place", temp.display()),
            source,
        }),
    }
}

/// Removes `parent`'s directories named `prefix`, the id of a process that no longer runs, and a
/// number: creations interrupted before their rename. (A leftover of an earlier process whose id
/// this one reuses stays: it is harmless, and removed once this process is gone.)
fn remove_abandoned_creations(parent: &Path, prefix: &str) -> Result<(), StoreError> {
    let entries = std::fs::read_dir(parent).map_err(|source| StoreError::Io {
        context: format!("listing {}", parent.display()),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else { continue };
        let pid = rest.split('.').next().unwrap_or_default();
        let Some(pid) = pid.parse().ok().and_then(rustix::process::Pid::from_raw) else { continue };
        let gone = matches!(
            rustix::process::test_kill_process(pid),
            Err(e) if e == rustix::io::Errno::SRCH
        );
        if gone {
            tracing::warn!(
                directory = %entry.path().display(),
                "removing a store creation its process did not finish"
            );
            std::fs::remove_dir_all(entry.path()).map_err(|source| StoreError::Io {
                context: format!("removing an abandoned creation {}", entry.path().display()),
                source,
            })?;
        }
    }
    Ok(())
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
                place: format!("meta key `{}`", String::from_utf8_lossy(key)),
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
    remove_unfinished_snapshots(path)?;
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

/// Removes the `snap.*.generating` files sled leaves behind when an open is killed, or runs out
/// of space, while it writes a snapshot: sled 0.34 then fails every later open with "corrupt
/// data in sled log at None", although the file is only an unfinished snapshot (sled renames it
/// to `snap.<lsn>` once it is complete, and recovers from its log without it). Only when no
/// other process holds the store (sled's `flock` on `db`), so that a live store's snapshot in
/// progress is never touched; the opener then gets [`StoreError::Locked`] from sled.
fn remove_unfinished_snapshots(path: &Path) -> Result<(), StoreError> {
    if let Ok(db) = std::fs::File::open(path.join("db")) {
        let flags = rustix::fs::FlockOperation::NonBlockingLockExclusive;
        if rustix::fs::flock(&db, flags).is_err() {
            return Ok(());
        }
        // Unlocked when `db` is closed, at the end of this function, before sled takes it.
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StoreError::Io { context: format!("listing {}", path.display()), source })
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %entry.path().display(), "removing an unfinished sled snapshot");
            std::fs::remove_file(entry.path()).map_err(|source| StoreError::Io {
                context: format!("removing the unfinished snapshot {}", entry.path().display()),
                source,
            })?;
        }
    }
    Ok(())
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
    /// Every logged tree, in the order of their numbers.
    fn all(&self) -> [&Logged; 8] {
        [
            &self.records,
            &self.unfinished,
            &self.by_environment,
            &self.leases,
            &self.cancels,
            &self.by_resource,
            &self.logs,
            &self.logs_by_time,
        ]
    }

    /// Every logged tree's overlay, for the checkpointer (see [`crate::overlay::Logged`]).
    pub(crate) fn memtable(&self) -> crate::overlay::Memtable {
        crate::overlay::Memtable::new(self.all().into_iter().cloned().collect(), self.redo.clone())
    }

    /// The tree of this number in the write-ahead log's entries.
    pub(crate) fn by_number(&self, number: u8) -> Option<&Logged> {
        self.all().into_iter().find(|t| t.number() == number)
    }

    /// Makes the changes of write-ahead log entries again, in order (at open, before anything
    /// else writes).
    pub(crate) fn replay(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<(), StoreError> {
        for (lsn, bytes) in entries {
            let place = format!("write-ahead log entry {lsn}");
            for op in crate::redo::decode(&bytes, &place)? {
                let tree = self.by_number(op.tree).ok_or_else(|| StoreError::Corrupt {
                    place: place.clone(),
                    problem: format!("names tree {}, which does not exist", op.tree),
                })?;
                tree.redo(&op)?;
            }
        }
        Ok(())
    }

    /// Takes the write lock (a poisoned one too: the lock guards no data).
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
