//! A write-ahead log with group commit, for a store that acknowledges a write once it is in a
//! log file of its own: [`Wal`], opened with [`Wal::open`], written with [`Wal::append`], and
//! trimmed with [`Wal::checkpoint`]. Errors are [`WalError`]s; all file-system calls go through
//! [`io::WalIo`] ([`io::RealIo`] for real disks).
//!
//! # Group commit
//!
//! One writer thread per log. [`Wal::append`] queues a payload (with the store's decoded entry
//! for it) and returns at once. The writer takes every queued payload, writes their frames with
//! one positional write into the active segment, calls `fdatasync` once, hands the entries to
//! the `apply` callback in LSN order, and then answers the waiters with their LSNs. Payloads
//! queued meanwhile form the next group: a lone writer costs one write and one sync, N
//! concurrent writers share them. See [`writer`] for the details.
//!
//! # On disk
//!
//! In `dir/wal/`: segments `<index:020>.seg` holding 8-byte-aligned frames (format in
//! [`frame`]), and a `checkpoint` file (format in [`checkpoint`]) naming the last checkpointed
//! LSN, the first segment to read and that segment's first LSN. With
//! [`WalOptions::preallocate`], a segment is created at its full size with `fallocate(2)` (mode
//! 0, through `rustix`; where the file system lacks it, by writing zeros), synced, and its
//! directory entry synced, before any frame in it is acknowledged; the next segment is always
//! prepared ahead (at open and right after a roll) so that acknowledging stays one write and one
//! sync. (ext4 and XFS keep `fallocate`d blocks as "unwritten" extents, so the first write into
//! each block also makes that `fdatasync` commit an extent conversion; recycled segments, whose
//! blocks were written before, avoid that.)
//! A group that does not fit in the rest of the active segment goes wholly into the next one; a
//! payload larger than a segment can hold is refused ([`WalError::TooLarge`]).
//!
//! Replay (at [`Wal::open`]) and what is a torn tail rather than corruption are described in
//! [`replay`]. The header has one field beyond LSN, length and CRCs: the frame's index in its
//! group, which is what lets replay tell a torn last group (whose pages reached the disk in any
//! order, a crash artefact) from a damaged group followed by later ones (corruption).
//!
//! # Checkpoints
//!
//! [`Wal::checkpoint`] writes the checkpoint file (temporary name, `fdatasync`, rename,
//! directory `fsync`) and only then drops the segments that hold nothing after it: up to
//! two are recycled (renamed as future segments, keeping their blocks; their stale frames have
//! lower LSNs than any frame expected there, so they read as the end of the log), the others are
//! deleted. A failed checkpoint returns the error and leaves every segment in place.
//!
//! # Failures
//!
//! A failed write or sync (or a failing `apply`) fails that group's waiters with the error
//! (naming what failed and the file), and the log for good: after a failed `fdatasync` the
//! kernel may have dropped the dirty pages, so no later sync can prove them written. Queued and
//! later appends get [`WalError::Failed`]; nothing of the failed group is applied. A log reopened
//! after such a failure replays every acknowledged payload and possibly some payloads of the
//! failed group, when their frames reached the disk whole (they were answered with an error
//! meaning "not known to be durable", not "known to be lost"). A group whose `apply` failed was
//! synced, so it is replayed. LSNs of payloads that never reached the disk are given again after
//! a reopen; an LSN once answered with `Ok` is never given again.

mod checkpoint;
mod frame;
pub(crate) mod io;
mod replay;
#[cfg(test)]
mod testio;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use self::checkpoint::Checkpoint;
use self::io::WalIo;
pub(crate) use self::replay::Cut;
use self::replay::{segment_name, SegmentInfo};
use self::writer::{prepare_segment, Pending, Queue, Shared, Table, Writer};

/// A log sequence number: one per appended payload, from 1, strictly increasing, never reused
/// once acknowledged.
pub(crate) type Lsn = u64;

/// The callback that applies each durable group's entries, in LSN order, on the writer thread.
/// An `Err` (or a panic) fails the log.
pub(crate) type ApplyFn<T> = Box<dyn FnMut(Vec<(Lsn, T)>) -> Result<(), String> + Send>;

/// The payloads [`Wal::open`] found after the checkpoint, in LSN order.
pub(crate) type Replayed = Vec<(Lsn, Vec<u8>)>;

/// Whether the log failed: watched by [`Wal::progress`], which changes once, when it fails (the
/// durable LSN is [`Wal::durable_lsn`], and `apply` hears of every durable group).
#[derive(Clone, Debug, Default)]
pub(crate) struct WalProgress {
    /// The first failure, once the log failed.
    pub(crate) failed: Option<WalError>,
}

/// How many unused segments a checkpoint keeps (renamed as future segments) instead of deleting.
const SPARES: usize = 2;

/// How a log is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WalOptions {
    /// The size of a segment file, a multiple of 8 of at least 64 bytes. Default 16 MiB: opening
    /// reads the segments from the checkpoint's on (and the prepared spare), so smaller segments
    /// open faster; larger ones roll less often.
    pub segment_bytes: u64,
    /// Allocate each segment at its full size when creating it. Default true.
    pub preallocate: bool,
    /// `fdatasync` each group before acknowledging it. Default true; false only for tests.
    pub sync: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions { segment_bytes: 16 << 20, preallocate: true, sync: true }
    }
}

/// Why a log call failed. `Clone`, because one failure answers many waiters.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum WalError {
    /// A file-system call failed.
    #[error("{context}: {}: {source}", path.display())]
    Io {
        /// What the log was doing.
        context: String,
        /// The file or directory.
        path: PathBuf,
        /// The error of the call.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The log's bytes are damaged: not a crash artefact.
    #[error("corrupt write-ahead log {} at offset {offset}: {problem}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Where in it.
        offset: u64,
        /// What is wrong.
        problem: String,
    },
    /// The log failed earlier (this is the first failure) and takes no more appends.
    #[error("the write-ahead log failed earlier and takes no more appends: {0}")]
    Failed(Arc<WalError>),
    /// The `apply` callback failed for a durable group.
    #[error("applying a durable group failed: {0}")]
    Apply(String),
    /// A payload too large for one segment.
    #[error("a payload of {len} bytes is larger than a segment holds ({max} bytes)")]
    TooLarge {
        /// The payload's length.
        len: usize,
        /// The largest payload a segment holds.
        max: usize,
    },
    /// A checkpoint asked for an LSN not durable yet.
    #[error("cannot checkpoint LSN {lsn}: only LSNs up to {durable} are durable")]
    CheckpointAhead {
        /// The LSN asked for.
        lsn: Lsn,
        /// The durable LSN.
        durable: Lsn,
    },
    /// Options that cannot work.
    #[error("invalid write-ahead log options: {0}")]
    InvalidOptions(String),
    /// The writer thread went away without answering (it does not, unless it was killed).
    #[error("the write-ahead log's writer stopped without answering")]
    #[cfg_attr(not(test), allow(dead_code))]
    Stopped,
}

/// Maps an `io::Error` of a call on `path` while doing `context`.
pub(super) fn io_error(
    context: impl Into<String>,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> WalError {
    let context = context.into();
    let path = path.to_owned();
    move |source| WalError::Io { context, path, source: Arc::new(source) }
}

/// A write-ahead log of payloads, each with a decoded entry `T` that is applied (by the
/// callback given to [`Wal::open`]) once its group is durable. Dropping it stops the writer
/// after it has written and answered everything queued.
pub(crate) struct Wal<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    io: Arc<dyn WalIo>,
    /// The `wal` directory.
    dir: PathBuf,
    max_payload: usize,
    /// Serializes checkpoints.
    checkpointing: Mutex<()>,
    /// Where open cut a torn tail, if it did.
    cut: Option<Cut>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> fmt::Debug for Wal<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("durable_lsn", &self.durable_lsn())
            .field("failure", &self.failure())
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Wal<T> {
    /// Opens or creates the log in `dir` (its files go in `dir/wal/`). Returns the log and every
    /// payload after the last checkpoint, in LSN order: the caller replays them (entries are
    /// idempotent redo) before checkpointing. A torn tail of the newest segment (a crash
    /// artefact) is cut off; damage anywhere else is [`WalError::Corrupt`]. `apply` is called on
    /// the writer thread with each durable group's entries, in LSN order, never for replayed
    /// payloads.
    pub(crate) fn open(
        dir: &Path,
        options: WalOptions,
        io: Arc<dyn WalIo>,
        apply: ApplyFn<T>,
    ) -> Result<(Wal<T>, Replayed), WalError> {
        if options.segment_bytes < 64 || options.segment_bytes % 8 != 0 {
            return Err(WalError::InvalidOptions(format!(
                "segment_bytes must be a multiple of 8 of at least 64, not {}",
                options.segment_bytes
            )));
        }
        let max_payload = usize::try_from(options.segment_bytes - frame::HEADER as u64)
            .unwrap_or(usize::MAX)
            .min(u32::MAX as usize)
            / frame::ALIGN
            * frame::ALIGN;
        let log_dir = dir.join("wal");
        let recovery = replay::recover(io.as_ref(), &log_dir, &options)?;
        io.sync_dir(dir).map_err(io_error("fsync of the log's parent directory", dir))?;
        let active = &recovery.segments[recovery.active];
        let path = log_dir.join(segment_name(active.index));
        let file = prepare_segment(io.as_ref(), &log_dir, &path, &options)?;
        let offset = active.end;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                pending: VecDeque::new(),
                next_lsn: recovery.next_lsn,
                failed: None,
                stop: false,
            }),
            wake: Condvar::new(),
            durable: AtomicU64::new(recovery.next_lsn - 1),
            table: Mutex::new(Table {
                segments: recovery.segments,
                active: recovery.active,
                checkpoint: recovery.checkpoint,
            }),
            progress: tokio::sync::watch::Sender::new(WalProgress { failed: None }),
        });
        let mut writer = Writer {
            shared: shared.clone(),
            io: io.clone(),
            dir: log_dir.clone(),
            options,
            apply,
            file,
            path,
            offset,
            next: None,
        };
        writer.prepare_next()?;
        let thread = std::thread::Builder::new()
            .name("saga-wal-writer".into())
            .spawn(move || writer.run())
            .map_err(io_error("starting the writer thread", &log_dir))?;
        let wal = Wal {
            shared,
            io,
            dir: log_dir,
            max_payload,
            checkpointing: Mutex::new(()),
            cut: recovery.cut,
            thread: Some(thread),
        };
        Ok((wal, recovery.frames))
    }

    /// Queues one payload (its bytes) with its decoded entry. The receiver resolves once the
    /// payload is durable and `apply` has run for its group, with its LSN; or with an error if
    /// the write, the sync or `apply` failed ([`WalError::Io`], [`WalError::Apply`]), if the log
    /// failed earlier ([`WalError::Failed`]), or if the payload is too large
    /// ([`WalError::TooLarge`], which does not fail the log). Never blocks on the disk.
    #[cfg_attr(not(test), allow(dead_code))] // the store uses `append_at`
    pub(crate) fn append(
        &self,
        payload: Vec<u8>,
        entry: T,
    ) -> oneshot::Receiver<Result<Lsn, WalError>> {
        self.append_at(payload, entry).1
    }

    /// [`Wal::append`], also giving the LSN the payload gets (0 when it is refused at once: the
    /// receiver then holds the error).
    pub(crate) fn append_at(
        &self,
        payload: Vec<u8>,
        entry: T,
    ) -> (Lsn, oneshot::Receiver<Result<Lsn, WalError>>) {
        let (reply, receiver) = oneshot::channel();
        if payload.len() > self.max_payload {
            let _ =
                reply.send(Err(WalError::TooLarge { len: payload.len(), max: self.max_payload }));
            return (0, receiver);
        }
        let mut queue = self.shared.queue();
        if let Some(first) = &queue.failed {
            let error = WalError::Failed(Arc::new(first.clone()));
            drop(queue);
            let _ = reply.send(Err(error));
            return (0, receiver);
        }
        let lsn = queue.next_lsn;
        queue.next_lsn += 1;
        queue.pending.push_back(Pending { lsn, payload, entry, reply });
        drop(queue);
        self.shared.wake.notify_one();
        (lsn, receiver)
    }

    /// Watches for the log's failure: for a caller that waits for an LSN it has no receiver of
    /// (an append of another caller that covers its write), with `apply` telling it of success.
    pub(crate) fn progress(&self) -> tokio::sync::watch::Receiver<WalProgress> {
        self.shared.progress.subscribe()
    }

    /// The LSN of the latest append queued (0 if none since open and none replayed).
    pub(crate) fn last_lsn(&self) -> Lsn {
        self.shared.queue().next_lsn - 1
    }

    /// Every LSN up to this is durable and applied (at open: the last replayed one).
    pub(crate) fn durable_lsn(&self) -> Lsn {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Records that the caller made everything up to `lsn` durable elsewhere, and recorded `lsn`
    /// there too (the checkpoint file says so: [`Wal::checkpointed`]): writes the
    /// checkpoint file durably, then drops (recycles or deletes) every segment whose frames are
    /// all <= `lsn` (never the active one). `lsn` must not exceed [`Wal::durable_lsn`]
    /// ([`WalError::CheckpointAhead`]); one at or below the current checkpoint does nothing. On
    /// error nothing is lost: either checkpoint may be the one in force, and every segment still
    /// needed by the older one is still there. Blocks on the disk; allowed after a failure.
    pub(crate) fn checkpoint(&self, lsn: Lsn) -> Result<(), WalError> {
        let _one_at_a_time = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        let durable = self.durable_lsn();
        if lsn > durable {
            return Err(WalError::CheckpointAhead { lsn, durable });
        }
        let new = {
            let table = self.shared.table();
            if lsn <= table.checkpoint.lsn {
                return Ok(());
            }
            let first = table.segments[..table.active]
                .iter()
                .position(|s| s.last_lsn > lsn)
                .unwrap_or(table.active);
            let segment = &table.segments[first];
            Checkpoint {
                lsn,
                first_segment: segment.index,
                first_lsn: segment.first_lsn,
                marked: true,
            }
        };
        checkpoint::write(self.io.as_ref(), &self.dir, &new)?;
        let result = self.drop_segments(&new);
        result.and_then(|()| {
            self.io.sync_dir(&self.dir).map_err(io_error("fsync of the log directory", &self.dir))
        })
    }

    /// Recycles or deletes the segments before `checkpoint`'s first one.
    fn drop_segments(&self, checkpoint: &Checkpoint) -> Result<(), WalError> {
        let mut table = self.shared.table();
        table.checkpoint = *checkpoint;
        let count =
            table.segments.iter().take_while(|s| s.index < checkpoint.first_segment).count();
        let old: Vec<SegmentInfo> = table.segments.drain(..count).collect();
        table.active -= count;
        for segment in old {
            let path = self.dir.join(segment_name(segment.index));
            let spares = table.segments.len() - table.active - 1;
            if spares < SPARES {
                let index = table.segments.last().map_or(segment.index, |s| s.index) + 1;
                let to = self.dir.join(segment_name(index));
                self.io.rename(&path, &to).map_err(io_error("recycling a segment", &path))?;
                table.segments.push(SegmentInfo::spare(index));
            } else {
                self.io.remove(&path).map_err(io_error("removing a segment", &path))?;
            }
        }
        Ok(())
    }

    /// Bytes of log kept for replay after the last checkpoint: the frames of every segment that
    /// holds a frame after it (so up to one segment's worth too high), for a size-triggered
    /// checkpoint.
    pub(crate) fn bytes_since_checkpoint(&self) -> u64 {
        let table = self.shared.table();
        let after = table.checkpoint.lsn;
        table.segments[..=table.active].iter().filter(|s| s.last_lsn > after).map(|s| s.end).sum()
    }

    /// The first error, if the log failed (a write, sync or `apply` error); it then refuses
    /// every append.
    pub(crate) fn failure(&self) -> Option<WalError> {
        self.shared.queue().failed.clone()
    }

    /// The checkpoint in force: its LSN, and whether the caller recorded that LSN outside the log
    /// before it was written (see [`checkpoint`]'s version 2). A store that has never
    /// checkpointed has `(0, false)`.
    pub(crate) fn checkpointed(&self) -> (Lsn, bool) {
        let table = self.shared.table();
        (table.checkpoint.lsn, table.checkpoint.marked)
    }

    /// Where [`Wal::open`] cut a torn tail off, if it did.
    pub(crate) fn cut_at_open(&self) -> Option<&Cut> {
        self.cut.as_ref()
    }
}

impl<T: Send + 'static> Drop for Wal<T> {
    fn drop(&mut self) {
        self.shared.queue().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // The writer answers what is queued and returns; it does not panic (apply's panics
            // are caught).
            let _ = thread.join();
        }
    }
}
