//! The file-system calls the log makes, behind [`WalIo`] so that tests can inject faults and
//! simulate crashes; [`RealIo`] is the one for real disks.

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The directory operations of the log. Every call is synchronous and may block on the disk.
pub(crate) trait WalIo: Send + Sync + fmt::Debug {
    /// Creates `dir` and its missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn WalFile>>;
    /// Creates a file for reading and writing, truncating it if it exists.
    fn create(&self, path: &Path) -> io::Result<Box<dyn WalFile>>;
    /// Renames `from` to `to`, replacing `to` (atomic, as `rename(2)`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The names of the entries of `dir`, in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// `fsync`s `dir`, so that its entries created, renamed or removed survive a power loss.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// One open file of the log. Positional calls only, so a handle has no cursor to share.
pub(crate) trait WalFile: Send + Sync + fmt::Debug {
    /// Writes all of `buf` at `offset` (extending the file if needed).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// The file's length.
    fn len(&self) -> io::Result<u64>;
    /// `fdatasync`: the data written and the length are on the disk when it returns.
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends (with zeros, without allocating) the file to `len`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Allocates disk blocks for `0..len` (a real allocation: later writes in that range need no
    /// new blocks), extending the file with zeros if it is shorter. Never shrinks it.
    fn allocate(&self, len: u64) -> io::Result<()>;
}

/// Reads a whole file into memory.
pub(crate) fn read_all(file: &dyn WalFile) -> io::Result<Vec<u8>> {
    let len = usize::try_from(file.len()?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large for memory"))?;
    let mut buf = vec![0; len];
    let mut done = 0;
    while done < len {
        let n = file.read_at(&mut buf[done..], done as u64)?;
        if n == 0 {
            break; // shrunk meanwhile: what was read is what there is
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}

/// The real file system (`std::fs`, `rustix` for `fallocate`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RealIo;

#[derive(Debug)]
struct RealFile(File);

impl WalIo for RealIo {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(dir)?.map(|entry| entry.map(|e| e.file_name())).collect()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl WalFile for RealFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.0.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        match rustix::fs::fallocate(&self.0, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            // A file system without fallocate: allocate by writing zeros past the end.
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
                self.write_zeros_up_to(len)
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl RealFile {
    fn write_zeros_up_to(&self, len: u64) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK as usize];
        let mut at = self.len()?;
        while at < len {
            let n = CHUNK.min(len - at);
            // `n` <= CHUNK, which fits in usize.
            self.0.write_all_at(&zeros[..n as usize], at)?;
            at += n;
        }
        Ok(())
    }
}
