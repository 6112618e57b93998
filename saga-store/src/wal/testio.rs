//! Test doubles for [`WalIo`]: [`MemIo`], an in-memory file system that keeps what is synced
//! apart from what is only written and can produce the image a crash would leave, and
//! [`FaultIo`], a wrapper that counts calls, fails the Nth call of a kind with a given error, and
//! can slow syncs down.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::io::{WalFile, WalIo};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A small xorshift generator, so tests need no crate for randomness.
#[derive(Clone, Debug)]
pub(super) struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub(super) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value.
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n` (`n` > 0).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a crash leaves of the page cache.
#[derive(Clone, Debug)]
pub(super) enum Crash {
    /// Only what was synced: file data and lengths as of their last `fdatasync`, directory
    /// entries as of their directory's last `fsync`.
    SyncedOnly,
    /// Synced data plus, for every 512-byte sector written since, either the new or the old
    /// bytes (chosen by the generator), and either length: pages reach the disk in any order.
    Torn(Rng),
    /// Everything written (a process crash: the kernel keeps the page cache).
    Everything,
}

/// An in-memory file system. Directories are durable once created (a simplification: the log
/// creates its directory once, and the store's directory is someone else's concern).
#[derive(Clone, Debug, Default)]
pub(super) struct MemIo(Arc<Mutex<MemFs>>);

#[derive(Clone, Debug, Default)]
struct MemFs {
    next_inode: u64,
    inodes: HashMap<u64, Inode>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
}

#[derive(Clone, Debug, Default)]
struct Inode {
    data: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Debug)]
struct MemFile {
    fs: Arc<Mutex<MemFs>>,
    inode: u64,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display()))
}

impl MemIo {
    /// A new, empty file system.
    pub(super) fn new() -> Self {
        MemIo::default()
    }

    /// The file system a crash now would leave.
    pub(super) fn crash(&self, how: Crash) -> MemIo {
        let fs = lock(&self.0);
        let mut image =
            MemFs { next_inode: fs.next_inode, dirs: fs.dirs.clone(), ..MemFs::default() };
        let names = match how {
            Crash::Everything => fs.names.clone(),
            _ => fs.durable_names.clone(),
        };
        let mut rng = match &how {
            Crash::Torn(rng) => Some(rng.clone()),
            _ => None,
        };
        for &inode in names.values() {
            let Some(old) = fs.inodes.get(&inode) else { continue };
            let data = match (&how, rng.as_mut()) {
                (Crash::Everything, _) => old.data.clone(),
                (Crash::Torn(_), Some(rng)) => torn(old, rng),
                _ => old.synced.clone(),
            };
            image.inodes.insert(inode, Inode { synced: data.clone(), data });
        }
        image.durable_names = names.clone();
        image.names = names;
        MemIo(Arc::new(Mutex::new(image)))
    }

    /// Changes the bytes of the file at `path` (written and synced alike).
    pub(super) fn edit(&self, path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
        let mut fs = lock(&self.0);
        let inode = *fs.names.get(path).unwrap_or_else(|| panic!("no file {}", path.display()));
        let file = fs.inodes.entry(inode).or_default();
        change(&mut file.data);
        file.synced = file.data.clone();
    }

    /// Writes a file (synced, with its directory entry).
    pub(super) fn put(&self, path: &Path, bytes: Vec<u8>) {
        let mut fs = lock(&self.0);
        let inode = fs.next_inode;
        fs.next_inode += 1;
        fs.inodes.insert(inode, Inode { synced: bytes.clone(), data: bytes });
        fs.names.insert(path.to_owned(), inode);
        fs.durable_names.insert(path.to_owned(), inode);
        if let Some(parent) = path.parent() {
            fs.dirs.insert(parent.to_owned());
        }
    }

    /// The bytes of the file at `path`, as written.
    pub(super) fn read(&self, path: &Path) -> Vec<u8> {
        let fs = lock(&self.0);
        fs.names
            .get(path)
            .and_then(|i| fs.inodes.get(i))
            .map(|f| f.data.clone())
            .unwrap_or_default()
    }

    /// The files directly in `dir`, sorted.
    pub(super) fn files(&self, dir: &Path) -> Vec<PathBuf> {
        lock(&self.0).names.keys().filter(|p| p.parent() == Some(dir)).cloned().collect()
    }
}

fn torn(inode: &Inode, rng: &mut Rng) -> Vec<u8> {
    const SECTOR: usize = 512;
    let len = if rng.below(2) == 0 { inode.synced.len() } else { inode.data.len() };
    let mut out = inode.synced.clone();
    out.resize(len, 0);
    for start in (0..len).step_by(SECTOR) {
        let end = (start + SECTOR).min(len);
        let new = inode.data.get(start..end.min(inode.data.len()));
        if new.is_some_and(|n| n != &out[start..start + n.len()]) && rng.below(2) == 0 {
            if let Some(new) = new {
                out[start..start + new.len()].copy_from_slice(new);
            }
        }
    }
    out
}

impl WalIo for MemIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut fs = lock(&self.0);
        for ancestor in dir.ancestors() {
            fs.dirs.insert(ancestor.to_owned());
        }
        Ok(())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let fs = lock(&self.0);
        let inode = *fs.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(MemFile { fs: self.0.clone(), inode }))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let mut fs = lock(&self.0);
        if !path.parent().is_some_and(|p| fs.dirs.contains(p)) {
            return Err(not_found(path));
        }
        let inode = match fs.names.get(path) {
            Some(&inode) => {
                fs.inodes.entry(inode).or_default().data.clear();
                inode
            }
            None => {
                let inode = fs.next_inode;
                fs.next_inode += 1;
                fs.inodes.insert(inode, Inode::default());
                fs.names.insert(path.to_owned(), inode);
                inode
            }
        };
        Ok(Box::new(MemFile { fs: self.0.clone(), inode }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut fs = lock(&self.0);
        let inode = fs.names.remove(from).ok_or_else(|| not_found(from))?;
        fs.names.insert(to.to_owned(), inode);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        lock(&self.0).names.remove(path).map(|_| ()).ok_or_else(|| not_found(path))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let fs = lock(&self.0);
        if !fs.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(fs
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_owned()))
            .collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut fs = lock(&self.0);
        let fs = &mut *fs;
        fs.durable_names.retain(|p, _| p.parent() != Some(dir));
        for (path, &inode) in &fs.names {
            if path.parent() == Some(dir) {
                fs.durable_names.insert(path.clone(), inode);
            }
        }
        Ok(())
    }
}

impl MemFile {
    fn with<R>(&self, f: impl FnOnce(&mut Inode) -> R) -> R {
        let mut fs = lock(&self.fs);
        f(fs.inodes.entry(self.inode).or_default())
    }
}

impl WalFile for MemFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let offset = usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
        self.with(|f| {
            if f.data.len() < offset + buf.len() {
                f.data.resize(offset + buf.len(), 0);
            }
            f.data[offset..offset + buf.len()].copy_from_slice(buf);
        });
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let offset = usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
        Ok(self.with(|f| {
            let available = f.data.get(offset..).unwrap_or_default();
            let n = available.len().min(buf.len());
            buf[..n].copy_from_slice(&available[..n]);
            n
        }))
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.with(|f| f.data.len() as u64))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|f| f.synced = f.data.clone());
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("length too large"))?;
        self.with(|f| f.data.resize(len, 0));
        Ok(())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("length too large"))?;
        self.with(|f| {
            if f.data.len() < len {
                f.data.resize(len, 0);
            }
        });
        Ok(())
    }
}

/// A kind of call [`FaultIo`] counts and can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Op {
    /// `WalFile::write_at`.
    Write,
    /// `WalFile::sync_data`.
    Sync,
    /// `WalIo::sync_dir`.
    SyncDir,
    /// `WalIo::rename`.
    Rename,
    /// `WalIo::create`.
    Create,
    /// `WalIo::remove`.
    Remove,
    /// `WalFile::allocate`.
    Allocate,
}

#[derive(Debug)]
struct Armed {
    op: Op,
    /// Calls (of `op`, on a matching path) still to let through before failing one.
    skip: u64,
    errno: i32,
    /// Only calls on a path containing this count.
    path_part: Option<String>,
}

#[derive(Debug, Default)]
struct FaultState {
    counts: HashMap<Op, u64>,
    armed: Vec<Armed>,
    sync_delay: Duration,
}

/// Wraps a [`WalIo`]: counts calls, fails armed ones (the call is then not made), and sleeps in
/// every file sync when a delay is set.
#[derive(Clone, Debug)]
pub(super) struct FaultIo {
    inner: Arc<dyn WalIo>,
    state: Arc<Mutex<FaultState>>,
}

#[derive(Debug)]
struct FaultFile {
    inner: Box<dyn WalFile>,
    path: PathBuf,
    state: Arc<Mutex<FaultState>>,
}

fn check(state: &Mutex<FaultState>, op: Op, path: &Path) -> io::Result<()> {
    let mut state = lock(state);
    *state.counts.entry(op).or_default() += 1;
    let path = path.to_string_lossy();
    let hit = state.armed.iter_mut().position(|armed| {
        let matches = armed.op == op
            && armed.path_part.as_ref().is_none_or(|part| path.contains(part.as_str()));
        if matches && armed.skip > 0 {
            armed.skip -= 1;
            return false;
        }
        matches
    });
    match hit {
        Some(i) => Err(io::Error::from_raw_os_error(state.armed.remove(i).errno)),
        None => Ok(()),
    }
}

impl FaultIo {
    /// Wraps `inner`.
    pub(super) fn new(inner: Arc<dyn WalIo>) -> Self {
        FaultIo { inner, state: Arc::default() }
    }

    /// Fails the `nth` (1 = the next) call of `op` from now with OS error `errno`, counting only
    /// calls on paths containing `path_part`.
    pub(super) fn fail_on(&self, op: Op, nth: u64, errno: i32, path_part: &str) {
        self.arm(op, nth, errno, Some(path_part.to_owned()));
    }

    fn arm(&self, op: Op, nth: u64, errno: i32, path_part: Option<String>) {
        let skip = nth.saturating_sub(1);
        lock(&self.state).armed.push(Armed { op, skip, errno, path_part });
    }

    /// How many calls of `op` were made (failed ones included) since the last reset.
    pub(super) fn count(&self, op: Op) -> u64 {
        lock(&self.state).counts.get(&op).copied().unwrap_or(0)
    }

    /// Sets every count to zero.
    pub(super) fn reset_counts(&self) {
        lock(&self.state).counts.clear();
    }

    /// Makes every file sync sleep `delay` first.
    pub(super) fn set_sync_delay(&self, delay: Duration) {
        lock(&self.state).sync_delay = delay;
    }
}

impl WalIo for FaultIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let inner = self.inner.open(path)?;
        Ok(Box::new(FaultFile { inner, path: path.to_owned(), state: self.state.clone() }))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        check(&self.state, Op::Create, path)?;
        let inner = self.inner.create(path)?;
        Ok(Box::new(FaultFile { inner, path: path.to_owned(), state: self.state.clone() }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        check(&self.state, Op::Rename, to)?;
        self.inner.rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        check(&self.state, Op::Remove, path)?;
        self.inner.remove(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        self.inner.list(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        check(&self.state, Op::SyncDir, dir)?;
        self.inner.sync_dir(dir)
    }
}

impl WalFile for FaultFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check(&self.state, Op::Write, &self.path)?;
        self.inner.write_at(buf, offset)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn sync_data(&self) -> io::Result<()> {
        let delay = lock(&self.state).sync_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        check(&self.state, Op::Sync, &self.path)?;
        self.inner.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        check(&self.state, Op::Allocate, &self.path)?;
        self.inner.allocate(len)
    }
}
