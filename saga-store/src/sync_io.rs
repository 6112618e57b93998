//! The file system under the store's write-ahead log: the real one, counting the syncs of log
//! segments (the syncs that acknowledge writes, [`crate::SledStore::sync_count`]). With the
//! `fault-injection` feature (tests only) those syncs also pass through
//! [`crate::faults::Faults`], which can hold them back or make one fail.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[cfg(feature = "fault-injection")]
use crate::faults::Faults;
use crate::wal::io::{RealIo, WalFile, WalIo};

/// The real file system, counting segment syncs.
#[derive(Debug, Default)]
pub(crate) struct SegmentIo {
    syncs: Arc<AtomicU64>,
    #[cfg(feature = "fault-injection")]
    faults: Faults,
}

impl SegmentIo {
    /// Syncs of log segments made so far.
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// The handle that arms a sync failure or holds syncs back.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    fn wrap(&self, path: &Path, file: Box<dyn WalFile>) -> Box<dyn WalFile> {
        let segment = path.extension().is_some_and(|e| e == "seg");
        Box::new(SegmentFile {
            file,
            segment,
            syncs: self.syncs.clone(),
            #[cfg(feature = "fault-injection")]
            faults: self.faults.clone(),
        })
    }
}

#[derive(Debug)]
struct SegmentFile {
    file: Box<dyn WalFile>,
    /// A segment (its syncs acknowledge writes), not the checkpoint file.
    segment: bool,
    syncs: Arc<AtomicU64>,
    #[cfg(feature = "fault-injection")]
    faults: Faults,
}

impl WalIo for SegmentIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        RealIo.create_dir_all(dir)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        Ok(self.wrap(path, RealIo.open(path)?))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        Ok(self.wrap(path, RealIo.create(path)?))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealIo.rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        RealIo.remove(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
        RealIo.list(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        RealIo.sync_dir(dir)
    }
}

impl WalFile for SegmentFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_at(buf, offset)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }

    fn sync_data(&self) -> io::Result<()> {
        if !self.segment {
            return self.file.sync_data();
        }
        #[cfg(feature = "fault-injection")]
        self.faults.pass();
        self.syncs.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "fault-injection")]
        if let Some(error) = self.faults.take() {
            return Err(error);
        }
        self.file.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        self.file.allocate(len)
    }
}
