//! The checkpoint file: where replay starts.
//!
//! `wal/checkpoint`, 48 bytes, little-endian: magic `SGWALCK1` (8), format version (u32: 2; 1
//! in stores written before the mark below), zero (u32), checkpoint LSN (u64), index of the first segment to read (u64), LSN of that
//! segment's first frame (u64), CRC32C of bytes 0..40 (u32), zero (u32). It is written to
//! `checkpoint.tmp`, `fdatasync`ed, renamed over `checkpoint`, and the directory is `fsync`ed.

use std::path::Path;

use super::io::{read_all, WalIo};
use super::{io_error, Lsn, WalError};

/// The checkpoint file's name in the log directory.
pub(super) const NAME: &str = "checkpoint";
/// The temporary name it is written under.
pub(super) const TEMP_NAME: &str = "checkpoint.tmp";

const MAGIC: &[u8; 8] = b"SGWALCK1";
const VERSION: u32 = 2;
const SIZE: usize = 48;

/// What a checkpoint records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Checkpoint {
    /// Every LSN up to this is durable outside the log: replay yields only later ones.
    pub(super) lsn: Lsn,
    /// The index of the first segment replay reads (earlier ones are leftovers to delete).
    pub(super) first_segment: u64,
    /// The LSN the first frame of that segment has (or will have, if it has none yet).
    pub(super) first_lsn: Lsn,
    /// Written by a release that records the LSN outside the log before the checkpoint (file
    /// version 2); false for a version 1 file, which promises nothing about it.
    pub(super) marked: bool,
}

impl Checkpoint {
    fn encode(&self) -> [u8; SIZE] {
        let mut buf = [0u8; SIZE];
        buf[0..8].copy_from_slice(MAGIC);
        buf[8..12].copy_from_slice(&VERSION.to_le_bytes());
        buf[16..24].copy_from_slice(&self.lsn.to_le_bytes());
        buf[24..32].copy_from_slice(&self.first_segment.to_le_bytes());
        buf[32..40].copy_from_slice(&self.first_lsn.to_le_bytes());
        let crc = crc32c::crc32c(&buf[0..40]);
        buf[40..44].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    fn decode(buf: &[u8], path: &Path) -> Result<Self, WalError> {
        let corrupt = |offset: u64, problem: String| WalError::Corrupt {
            path: path.to_owned(),
            offset,
            problem,
        };
        if buf.len() != SIZE {
            return Err(corrupt(0, format!("checkpoint file of {} bytes, not {SIZE}", buf.len())));
        }
        let u32_at =
            |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[at..at + 8]);
            u64::from_le_bytes(b)
        };
        if &buf[0..8] != MAGIC {
            return Err(corrupt(0, "not a checkpoint file (bad magic)".into()));
        }
        if crc32c::crc32c(&buf[0..40]) != u32_at(40) {
            return Err(corrupt(40, "checkpoint CRC mismatch".into()));
        }
        let marked = match u32_at(8) {
            1 => false,
            VERSION => true,
            other => {
                return Err(corrupt(
                    8,
                    format!("checkpoint format version {other}, which this release does not know"),
                ))
            }
        };
        let checkpoint = Checkpoint {
            lsn: u64_at(16),
            first_segment: u64_at(24),
            first_lsn: u64_at(32),
            marked,
        };
        if checkpoint.first_lsn == 0 || checkpoint.first_lsn > checkpoint.lsn.saturating_add(1) {
            return Err(corrupt(32, format!("impossible checkpoint {checkpoint:?}")));
        }
        Ok(checkpoint)
    }
}

/// Reads the checkpoint of the log in `dir`; `None` when there is none.
pub(super) fn read(io: &dyn WalIo, dir: &Path) -> Result<Option<Checkpoint>, WalError> {
    let path = dir.join(NAME);
    let file = match io.open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("opening the checkpoint", &path)(e)),
    };
    let buf = read_all(file.as_ref()).map_err(io_error("reading the checkpoint", &path))?;
    Checkpoint::decode(&buf, &path).map(Some)
}

/// Makes `checkpoint` the durable checkpoint of the log in `dir`. On error the previous
/// checkpoint may still be the one in force (or, after a failed directory sync, either).
pub(super) fn write(io: &dyn WalIo, dir: &Path, checkpoint: &Checkpoint) -> Result<(), WalError> {
    let temp = dir.join(TEMP_NAME);
    let path = dir.join(NAME);
    let file = io.create(&temp).map_err(io_error("creating the checkpoint", &temp))?;
    file.write_at(&checkpoint.encode(), 0).map_err(io_error("writing the checkpoint", &temp))?;
    file.sync_data().map_err(io_error("fdatasync of the checkpoint", &temp))?;
    drop(file);
    io.rename(&temp, &path).map_err(io_error("renaming the checkpoint into place", &path))?;
    io.sync_dir(dir).map_err(io_error("fsync of the log directory after a checkpoint", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let path = Path::new("checkpoint");
        let checkpoint = Checkpoint { lsn: 41, first_segment: 3, first_lsn: 30, marked: true };
        let buf = checkpoint.encode();
        assert_eq!(Checkpoint::decode(&buf, path).ok(), Some(checkpoint));
        // A version 1 file (no mark) still reads.
        let mut old = buf;
        old[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32c::crc32c(&old[0..40]);
        old[40..44].copy_from_slice(&crc.to_le_bytes());
        let unmarked = Checkpoint { marked: false, ..checkpoint };
        assert_eq!(Checkpoint::decode(&old, path).ok(), Some(unmarked));
        for i in 0..SIZE {
            let mut bad = buf;
            bad[i] ^= 0x10;
            let result = Checkpoint::decode(&bad, path);
            // Bytes 44..48 are padding after the CRC; every other flip is caught.
            if (44..48).contains(&i) {
                assert!(result.is_ok());
            } else {
                assert!(matches!(result, Err(WalError::Corrupt { .. })), "byte {i}");
            }
        }
        assert!(Checkpoint::decode(&buf[..47], path).is_err());
    }
}
