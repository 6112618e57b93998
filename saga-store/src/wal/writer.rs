//! The writer thread: one group per round, one write and one `fdatasync` per group.
//!
//! It sleeps until appends are queued, takes every queued one that fits in the active segment
//! (or, if not even the first fits, rolls to the next segment, prepared ahead, and takes what
//! fits in a whole segment), encodes their frames into one buffer, writes it with one positional
//! write, syncs once, hands the entries to `apply`, publishes the new durable LSN, and answers
//! the waiters. Appends that arrive meanwhile wait for the next round. After a roll it prepares
//! the next segment (create, allocate, sync, directory sync), off the path of any waiter.
//!
//! A failed write, sync or apply fails the group's waiters with that error and the log for good:
//! the error is kept, queued appends are refused, and so is every later one.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::checkpoint::Checkpoint;
use super::frame::{self, frame_size};
use super::io::{WalFile, WalIo};
use super::replay::{segment_name, SegmentInfo};
use super::{io_error, ApplyFn, Lsn, WalError, WalOptions};

/// State shared by the [`super::Wal`] handle, the writer thread and checkpoints.
pub(super) struct Shared<T> {
    /// The appends waiting for the writer.
    pub(super) queue: Mutex<Queue<T>>,
    /// Wakes the writer.
    pub(super) wake: Condvar,
    /// Every LSN up to this is durable and applied.
    pub(super) durable: AtomicU64,
    /// The segments and the checkpoint.
    pub(super) table: Mutex<Table>,
    /// The failure, for those who wait without a receiver of their own (changed once, when the
    /// log fails, so that watching it wakes nobody at every group).
    pub(super) progress: tokio::sync::watch::Sender<super::WalProgress>,
}

/// The queue of appends, with what decides whether one is taken.
pub(super) struct Queue<T> {
    /// Appends in LSN order, not yet taken by the writer.
    pub(super) pending: VecDeque<Pending<T>>,
    /// The LSN the next append gets.
    pub(super) next_lsn: Lsn,
    /// The first failure; every append is refused once set.
    pub(super) failed: Option<WalError>,
    /// Set by drop: the writer finishes the queue and stops.
    pub(super) stop: bool,
}

/// One queued append.
pub(super) struct Pending<T> {
    /// Its LSN.
    pub(super) lsn: Lsn,
    /// Its bytes.
    pub(super) payload: Vec<u8>,
    /// Its decoded entry, for `apply`.
    pub(super) entry: T,
    /// Answers the caller.
    pub(super) reply: oneshot::Sender<Result<Lsn, WalError>>,
}

/// The segments of the log from the checkpoint's first on, and the checkpoint.
#[derive(Debug)]
pub(super) struct Table {
    /// Used, active, then spare segments, by index.
    pub(super) segments: Vec<SegmentInfo>,
    /// The position of the active segment in `segments`.
    pub(super) active: usize,
    /// The checkpoint in force.
    pub(super) checkpoint: Checkpoint,
}

impl<T> Shared<T> {
    /// Locks the queue (a panic elsewhere never makes it unusable).
    pub(super) fn queue(&self) -> MutexGuard<'_, Queue<T>> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Locks the segment table.
    pub(super) fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What the writer thread owns.
pub(super) struct Writer<T> {
    pub(super) shared: Arc<Shared<T>>,
    pub(super) io: Arc<dyn WalIo>,
    pub(super) dir: PathBuf,
    pub(super) options: WalOptions,
    pub(super) apply: ApplyFn<T>,
    /// The active segment and its path.
    pub(super) file: Box<dyn WalFile>,
    pub(super) path: PathBuf,
    /// Where the next group goes in the active segment.
    pub(super) offset: u64,
    /// The next segment, prepared: its handle and path.
    pub(super) next: Option<(Box<dyn WalFile>, PathBuf)>,
}

impl<T> Writer<T> {
    /// Runs until stopped and the queue is empty.
    pub(super) fn run(mut self) {
        loop {
            let Some((group, roll)) = self.take() else { return };
            if let Err(e) = self.commit(group, roll) {
                self.fail(e);
            }
        }
    }

    /// Waits for appends and takes the next group; `None` when stopped with nothing queued.
    fn take(&self) -> Option<(Vec<Pending<T>>, bool)> {
        let mut queue = self.shared.queue();
        while queue.pending.is_empty() && !queue.stop {
            queue = self.shared.wake.wait(queue).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if queue.pending.is_empty() {
            return None;
        }
        let capacity = self.options.segment_bytes;
        let fits = |room: u64| {
            let mut used = 0u64;
            queue
                .pending
                .iter()
                .take_while(|p| {
                    used += frame_size(p.payload.len()) as u64;
                    used <= room
                })
                .count()
        };
        let here = fits(capacity.saturating_sub(self.offset));
        let (count, roll) = if here > 0 { (here, false) } else { (fits(capacity).max(1), true) };
        Some((queue.pending.drain(..count).collect(), roll))
    }

    /// Writes, syncs and applies one group, then answers it. On error nothing is answered.
    fn commit(&mut self, group: Vec<Pending<T>>, roll: bool) -> Result<(), Failure<T>> {
        let first = group.first().map_or(0, |p| p.lsn);
        let last = group.last().map_or(0, |p| p.lsn);
        if roll {
            if let Err(e) = self.roll(first) {
                return Err(Failure { error: e, group });
            }
        }
        let mut buf = Vec::with_capacity(group.iter().map(|p| frame_size(p.payload.len())).sum());
        for p in &group {
            // Bounded by the segment size, checked at append: fits in u32.
            let index = u32::try_from(p.lsn - first).unwrap_or(u32::MAX);
            frame::encode(&mut buf, p.lsn, index, &p.payload);
        }
        let context = |what: &str| format!("{what} of LSNs {first}..={last}");
        if let Err(e) = self.file.write_at(&buf, self.offset) {
            let error = io_error(context("writing the frames"), &self.path)(e);
            return Err(Failure { error, group });
        }
        if self.options.sync {
            if let Err(e) = self.file.sync_data() {
                let error = io_error(context("fdatasync"), &self.path)(e);
                return Err(Failure { error, group });
            }
        }
        self.offset += buf.len() as u64;
        {
            let mut table = self.shared.table();
            let active = table.active;
            let segment = &mut table.segments[active];
            segment.last_lsn = last;
            segment.end = self.offset;
        }
        let mut replies = Vec::with_capacity(group.len());
        let mut entries = Vec::with_capacity(group.len());
        for p in group {
            replies.push((p.lsn, p.reply));
            entries.push((p.lsn, p.entry));
        }
        let applied = catch_unwind(AssertUnwindSafe(|| (self.apply)(entries)))
            .unwrap_or_else(|_| Err("apply panicked".into()));
        if let Err(why) = applied {
            let error = WalError::Apply(format!("LSNs {first}..={last}: {why}"));
            self.fail_replies(error, replies);
            return Ok(());
        }
        self.shared.durable.store(last, Ordering::Release);
        for (lsn, reply) in replies {
            let _ = reply.send(Ok(lsn));
        }
        if roll {
            // Off every waiter's path; if it fails, the next roll tries again.
            let _ = self.prepare_next();
        }
        Ok(())
    }

    /// Makes the prepared next segment the active one, its first frame to be `first`.
    fn roll(&mut self, first: Lsn) -> Result<(), WalError> {
        let (file, path) = match self.next.take() {
            Some(next) => next,
            None => self.prepare()?,
        };
        let mut table = self.shared.table();
        table.active += 1;
        let active = table.active;
        let segment = &mut table.segments[active];
        segment.first_lsn = first;
        segment.last_lsn = first - 1;
        segment.end = 0;
        drop(table);
        self.file = file;
        self.path = path;
        self.offset = 0;
        Ok(())
    }

    /// Prepares the segment after the active one and keeps it for the next roll.
    pub(super) fn prepare_next(&mut self) -> Result<(), WalError> {
        self.next = Some(self.prepare()?);
        Ok(())
    }

    /// Prepares the segment after the active one: reuses a spare (recycled) or creates one,
    /// allocates it when preallocating, syncs it and the directory.
    fn prepare(&mut self) -> Result<(Box<dyn WalFile>, PathBuf), WalError> {
        // Under the table lock: checkpoints add spares under it too.
        let mut table = self.shared.table();
        let active = table.active;
        let index = match table.segments.get(active + 1) {
            Some(spare) => spare.index,
            None => {
                let index = table.segments[active].index + 1;
                table.segments.push(SegmentInfo::spare(index));
                index
            }
        };
        let path = self.dir.join(segment_name(index));
        let file = prepare_segment(self.io.as_ref(), &self.dir, &path, &self.options)?;
        drop(table);
        Ok((file, path))
    }

    fn fail(&mut self, failure: Failure<T>) {
        let replies = failure.group.into_iter().map(|p| (p.lsn, p.reply)).collect();
        self.fail_replies(failure.error, replies);
    }

    /// Records `error` as the log's failure, refuses what is queued, and answers `replies`.
    fn fail_replies(&mut self, error: WalError, replies: Vec<(Lsn, oneshot::Sender<Reply>)>) {
        self.shared.progress.send_modify(|p| {
            if p.failed.is_none() {
                p.failed = Some(error.clone());
            }
        });
        let refused: Vec<_> = {
            let mut queue = self.shared.queue();
            if queue.failed.is_none() {
                queue.failed = Some(error.clone());
            }
            queue.pending.drain(..).collect()
        };
        let first = Arc::new(error.clone());
        for (_, reply) in replies {
            let _ = reply.send(Err(error.clone()));
        }
        for p in refused {
            let _ = p.reply.send(Err(WalError::Failed(first.clone())));
        }
    }
}

type Reply = Result<Lsn, WalError>;

/// A group that could not be made durable, with why.
struct Failure<T> {
    error: WalError,
    group: Vec<Pending<T>>,
}

/// Opens (or creates) the segment at `path` ready for frames: allocated when preallocating,
/// synced, and its directory entry synced.
pub(super) fn prepare_segment(
    io: &dyn WalIo,
    dir: &Path,
    path: &Path,
    options: &WalOptions,
) -> Result<Box<dyn WalFile>, WalError> {
    let file = match io.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            io.create(path).map_err(io_error("creating a segment", path))?
        }
        Err(e) => return Err(io_error("opening a segment", path)(e)),
    };
    if options.preallocate {
        file.allocate(options.segment_bytes).map_err(io_error("allocating a segment", path))?;
    }
    file.sync_data().map_err(io_error("fdatasync of a new segment", path))?;
    io.sync_dir(dir).map_err(io_error("fsync of the log directory", dir))?;
    Ok(file)
}
