//! Group commit through the store's write-ahead log, and checkpoints of sled.
//!
//! A writer makes its change in its tree's overlay (memory; see [`crate::overlay::Logged`]),
//! recorded in the [`Redo`] buffer, then takes a
//! ticket ([`Flusher::ticket`]): the buffer is drained into one entry of the write-ahead log
//! ([`crate::wal`]) and the ticket is that entry's LSN. [`Flusher::wait`] returns once the log's
//! writer thread has written and `fdatasync`ed that entry: one write and one sync per group of
//! entries, shared by every writer that took a ticket while the previous sync ran. sled itself is
//! not flushed on this path.
//!
//! The checkpointer thread makes sled current and durable now and then (every
//! [`CHECKPOINT_EVERY`], or sooner once [`CHECKPOINT_BYTES`] of log accumulated, and when the
//! store closes): it notes the durable LSN, moves every overlay into sled
//! ([`DiskSync::apply_changes`]), marks the LSN in sled, flushes sled and `fdatasync`s its files
//! ([`DiskSync::sync`]), and then tells the log that everything up to that LSN is in sled, so
//! that the log's older segments are recycled, and forgets the overlays it applied. Every change
//! in a durable entry was made in an overlay before the entry was taken, so the checkpoint holds
//! it.
//!
//! A failed log write or sync poisons the store: after a failed `fdatasync` the kernel may have
//! dropped the dirty pages, so no later sync can prove them written. Every waiting and later
//! writer gets [`StoreError::Unavailable`]. A failed checkpoint does the same, for the same
//! reason (no later sled sync could be trusted to cover it); the log still holds everything since
//! the last good checkpoint, which a reopen replays.
//!
//! [`Tickets`] is the part writers use from other threads.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use saga_core::store::StoreError;

use crate::disk::DiskSync;
#[cfg(feature = "fault-injection")]
use crate::faults::Faults;
use crate::redo::{self, Redo};
use crate::sync_io::SegmentIo;
use crate::wal::{Lsn, Wal, WalError, WalOptions, WalProgress};

/// The longest time between checkpoints.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);

/// The log size after which a checkpoint comes early.
const CHECKPOINT_BYTES: u64 = 32 << 20;

/// When checkpoints come and how large the log's segments are: the defaults above, smaller in
/// tests that must see checkpoints and segment recycling within a second
/// ([`crate::SledStore::open_with_checkpoints`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tuning {
    /// The longest time between checkpoints.
    pub(crate) every: Duration,
    /// The log size after which a checkpoint comes early.
    pub(crate) bytes: u64,
    /// The size of a segment file.
    pub(crate) segment_bytes: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            every: CHECKPOINT_EVERY,
            bytes: CHECKPOINT_BYTES,
            segment_bytes: WalOptions::default().segment_bytes,
        }
    }
}

/// How long closing the store waits for the last checkpoint. sled 0.34.7's flush can hang for
/// ever after a `pwrite` failed with ENOSPC (seen in 3 of 91 runs under `strace -e inject`):
/// past this time the checkpointer is left behind (with its sled handle, so the database stays
/// locked until the process exits) and the close logs why, rather than hang the embedder. The
/// write-ahead log holds everything acknowledged, so nothing is lost; the next open replays it.
const CLOSE_WAIT: Duration = Duration::from_secs(20);

/// The group-commit flusher of one store, with its checkpointer. Stops (after a last
/// checkpoint, unless the store failed) when dropped.
pub(crate) struct Flusher {
    inner: Arc<Inner>,
    io: Arc<SegmentIo>,
    /// Syncs of the log made by opening it, left out of [`Flusher::syncs`].
    syncs_at_open: u64,
    checkpointer: Option<JoinHandle<()>>,
    /// The torn tail opening cut off the log, if it did: reported by every `check`.
    cut: Option<crate::wal::Cut>,
}

impl fmt::Debug for Flusher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flusher").field("wal", &self.inner.wal).finish_non_exhaustive()
    }
}

/// Takes tickets and tells which are durable; cheap to clone, usable from any thread.
#[derive(Clone, Debug)]
pub(crate) struct Tickets(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    wal: Wal<()>,
    redo: Arc<Redo>,
    /// Changes once, when the log fails.
    progress: watch::Receiver<WalProgress>,
    /// The writers waiting for their tickets, each woken once (not at every group).
    waiters: Arc<Waiters>,
    /// Why a checkpoint failed, if one did.
    checkpoint_failed: Mutex<Option<String>>,
    tuning: Tuning,
    /// Wakes the checkpointer early (a large log, or the store closing).
    wake: Condvar,
    stop: Mutex<bool>,
}

impl Inner {
    /// A ticket for every change made before the call: the LSN of the log entry that holds them.
    fn ticket(&self) -> Result<Lsn, StoreError> {
        // Drained and queued under the buffer's lock, so that entries are queued in the order
        // their changes were made.
        let mut ops = self.redo.lock();
        if ops.is_empty() {
            return Ok(self.wal.last_lsn());
        }
        let drained = std::mem::take(&mut *ops);
        let payload = redo::encode(&drained)?;
        let (lsn, mut answer) = self.wal.append_at(payload, ());
        drop(ops);
        if lsn == 0 {
            // Refused at once (the log failed, or the entry is larger than a segment): these
            // changes are not in the log, so no ticket may cover them.
            return Err(match answer.try_recv() {
                Ok(Err(WalError::TooLarge { len, max })) => StoreError::backend(
                    "logging a write",
                    format!("an entry of {len} bytes is larger than a log segment ({max} bytes)"),
                ),
                Ok(Err(e)) => unavailable(&e.to_string()),
                _ => unavailable("the write-ahead log refused the entry"),
            });
        }
        Ok(lsn)
    }

    fn failed(&self) -> Option<String> {
        // The log's writer tells its failure to `progress` (which wakes the waiting writers)
        // before it marks its queue failed: a writer woken with the failure and writing again
        // at once must see it here too.
        if let Some(e) = self.progress.borrow().failed.as_ref() {
            return Some(e.to_string());
        }
        if let Some(e) = self.wal.failure() {
            return Some(e.to_string());
        }
        lock(&self.checkpoint_failed).clone().map(|why| {
            format!(
                "a checkpoint failed ({why}); every write acknowledged before it is in the \
                 write-ahead log, which the next open replays, but the store takes no more \
                 writes in this process"
            )
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Flusher {
    /// Opens the write-ahead log of the store at `dir`, replays what it holds after the last
    /// checkpoint into sled with `replay` (then checkpoints, so that the replayed changes are
    /// in sled's files), and starts the checkpointer over `sync`.
    pub(crate) fn start(
        dir: &Path,
        mut sync: DiskSync,
        redo: Arc<Redo>,
        tuning: Tuning,
        replay: impl FnOnce(Vec<(Lsn, Vec<u8>)>) -> Result<(), StoreError>,
    ) -> Result<Self, StoreError> {
        let io = Arc::new(SegmentIo::default());
        let waiters = Arc::new(Waiters::default());
        let released = waiters.clone();
        let apply = Box::new(move |group: Vec<(Lsn, ())>| {
            if let Some((last, ())) = group.last() {
                released.release_up_to(*last);
            }
            Ok(())
        });
        let options = WalOptions { segment_bytes: tuning.segment_bytes, ..WalOptions::default() };
        let (wal, replayed) = Wal::open(dir, options, io.clone(), apply).map_err(wal_error)?;
        waiters.release_up_to(wal.durable_lsn());
        check_marked(&wal, &sync, dir)?;
        let cut = wal.cut_at_open().cloned();
        if let Some(cut) = &cut {
            tracing::warn!(
                segment = %cut.path.display(),
                offset = cut.offset,
                bytes = cut.bytes,
                "cut a torn write off the end of the write-ahead log: {} bytes at offset {} of {} \
                 (a group whose sync never returned, so nothing in it was acknowledged)",
                cut.bytes,
                cut.offset,
                cut.path.display()
            );
        }
        let replayed_any = !replayed.is_empty();
        replay(replayed)?;
        if replayed_any {
            // The replayed changes are in sled's memory only: put them in its files.
            checkpoint(&wal, &mut sync)?;
        }
        let inner = Arc::new(Inner {
            progress: wal.progress(),
            waiters,
            wal,
            redo,
            checkpoint_failed: Mutex::new(None),
            tuning,
            wake: Condvar::new(),
            stop: Mutex::new(false),
        });
        let thread_inner = inner.clone();
        let checkpointer = std::thread::Builder::new()
            .name("saga-store-checkpointer".into())
            .spawn(move || checkpoints(&thread_inner, sync))
            .map_err(|source| StoreError::Io {
                context: "starting the checkpointer thread".into(),
                source,
            })?;
        let syncs_at_open = io.syncs();
        Ok(Flusher { inner, io, syncs_at_open, cut, checkpointer: Some(checkpointer) })
    }

    /// The torn tail opening cut off the log, if it did.
    pub(crate) fn cut_at_open(&self) -> Option<&crate::wal::Cut> {
        self.cut.as_ref()
    }

    /// Fails if an earlier sync or checkpoint failed, so that no write is made that could never
    /// be durable.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        match self.inner.failed() {
            Some(why) => Err(unavailable(&why)),
            None => Ok(()),
        }
    }

    /// A ticket for the writes made before this call.
    pub(crate) fn ticket(&self) -> Result<u64, StoreError> {
        self.inner.ticket()
    }

    /// The ticket handle, for writers on other threads.
    pub(crate) fn tickets(&self) -> Tickets {
        Tickets(self.inner.clone())
    }

    /// The handle that arms a sync failure, for tests.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn faults(&self) -> &Faults {
        self.io.faults()
    }

    /// Waits until the log entry of `ticket` is durable.
    pub(crate) async fn wait(&self, ticket: u64) -> Result<(), StoreError> {
        let Some(released) = self.inner.waiters.wait_for(ticket) else { return Ok(()) };
        let mut progress = self.inner.progress.clone();
        tokio::select! {
            biased;
            done = released => done.map_err(|_| {
                StoreError::Unavailable("the store's write-ahead log stopped".into())
            }),
            failed = progress.wait_for(|p| p.failed.is_some()) => {
                // It may have been durable just before the failure.
                if self.inner.wal.durable_lsn() >= ticket {
                    return Ok(());
                }
                let why = match failed {
                    Ok(p) => p.failed.as_ref().map_or_else(String::new, ToString::to_string),
                    Err(_) => "the store's write-ahead log stopped".to_owned(),
                };
                Err(unavailable(&why))
            }
        }
    }

    /// Waits until every entry queued to the log before the call is durable: every change made
    /// under the write lock before the call, since writers take their tickets under it.
    pub(crate) async fn wait_queued(&self) -> Result<(), StoreError> {
        self.wait(self.inner.wal.last_lsn()).await
    }

    /// How many times the log was synced to acknowledge writes since the store opened.
    pub(crate) fn syncs(&self) -> u64 {
        self.io.syncs().saturating_sub(self.syncs_at_open)
    }
}

impl Tickets {
    /// A ticket for the writes made before this call.
    pub(crate) fn ticket(&self) -> Result<u64, StoreError> {
        self.0.ticket()
    }

    /// Every ticket up to this one is durable. Never grows again after a failed sync.
    ///
    /// The log's writer releases the waiters of a group (in `apply`) before it publishes the
    /// group's LSN as durable, so a writer may return, and a reader may look, in between: the
    /// tickets released count as durable too, so that a write is shown as soon as its writer
    /// was told it is durable.
    pub(crate) fn durable(&self) -> u64 {
        self.0.wal.durable_lsn().max(self.0.waiters.released())
    }
}

/// The writers waiting for their tickets, by ticket. `apply` releases them group by group; a
/// writer that registers after its ticket was released returns at once (both under one lock).
#[derive(Debug, Default)]
struct Waiters {
    state: Mutex<WaitersState>,
}

#[derive(Debug, Default)]
struct WaitersState {
    /// Every ticket up to this one is durable.
    released: Lsn,
    waiting: std::collections::BTreeMap<Lsn, Vec<tokio::sync::oneshot::Sender<()>>>,
}

impl Waiters {
    /// A receiver that answers once `ticket` is durable, or `None` if it is already.
    fn wait_for(&self, ticket: Lsn) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let mut state = lock(&self.state);
        if state.released >= ticket {
            return None;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        state.waiting.entry(ticket).or_default().push(tx);
        Some(rx)
    }

    /// Every ticket up to this one was released (is durable).
    fn released(&self) -> Lsn {
        lock(&self.state).released
    }

    /// Every ticket up to `lsn` is durable: answers their writers.
    fn release_up_to(&self, lsn: Lsn) {
        let done = {
            let mut state = lock(&self.state);
            state.released = state.released.max(lsn);
            let later = state.waiting.split_off(&lsn.saturating_add(1));
            std::mem::replace(&mut state.waiting, later)
        };
        for tx in done.into_values().flatten() {
            let _ = tx.send(());
        }
    }
}

/// The checkpointer thread: a checkpoint every [`CHECKPOINT_EVERY`] or [`CHECKPOINT_BYTES`], and
/// a last one when the store closes. Stops at the first failure.
fn checkpoints(inner: &Inner, mut sync: DiskSync) {
    let mut last_checkpoint = Instant::now();
    loop {
        let stopping = {
            let stop = lock(&inner.stop);
            let (stop, _) = inner
                .wake
                .wait_timeout(stop, inner.tuning.every.min(Duration::from_secs(1)))
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *stop
        };
        if inner.failed().is_some() {
            // Nothing sled holds now can be trusted to be what was acknowledged.
            return;
        }
        let due = stopping
            || last_checkpoint.elapsed() >= inner.tuning.every
            || inner.wal.bytes_since_checkpoint() >= inner.tuning.bytes;
        if due {
            if let Err(why) = checkpoint(&inner.wal, &mut sync).map_err(|e| e.to_string()) {
                tracing::error!(error = %why, "saga store checkpoint failed; the store takes no more writes");
                *lock(&inner.checkpoint_failed) = Some(why);
                return;
            }
            last_checkpoint = Instant::now();
        }
        if stopping {
            return;
        }
    }
}

/// One checkpoint: everything up to the durable LSN is in sled (its changes were made before
/// their entries were taken, or replayed at open), so once sled is flushed and synced the log
/// may forget it.
fn checkpoint(wal: &Wal<()>, sync: &mut DiskSync) -> Result<(), StoreError> {
    // Read before the changes are frozen: every entry up to it holds changes made before.
    let durable = wal.durable_lsn();
    sync.apply_changes()?;
    sync.mark(durable)?;
    sync.sync()?;
    wal.checkpoint(durable).map_err(wal_error)?;
    sync.forget_applied();
    Ok(())
}

/// Refuses sled files that hold less than the log's checkpoint says they do: every checkpoint
/// marks its LSN in sled before sled's flush and before the log forgets what it covers, so a
/// mark below the checkpoint (or none, where the checkpoint file promises one) means sled's files
/// lost acknowledged writes that no replay brings back (damage sled read past as a torn tail of
/// its own log, or files replaced by older ones). Stores written before the mark (checkpoint
/// file version 1) are not checked, and are marked at their next checkpoint.
fn check_marked(wal: &Wal<()>, sync: &DiskSync, dir: &Path) -> Result<(), StoreError> {
    let (checkpoint, promised) = wal.checkpointed();
    if !promised {
        return Ok(());
    }
    let marked = sync.marked()?;
    if marked.is_some_and(|m| m >= checkpoint) {
        return Ok(());
    }
    let holds = match marked {
        Some(m) => format!("hold the store as of write-ahead log position {m}"),
        None => "hold no checkpoint mark at all".to_owned(),
    };
    Err(StoreError::Corrupt {
        place: format!("sled's files in {}", dir.display()),
        problem: format!(
            "they {holds}, but the write-ahead log was checkpointed at position {checkpoint}: \
             writes acknowledged before that are missing from them (sled's files were damaged \
             or replaced by older ones); restore the store from a copy"
        ),
    })
}

impl Drop for Flusher {
    fn drop(&mut self) {
        *lock(&self.inner.stop) = true;
        self.inner.wake.notify_one();
        if let Some(thread) = self.checkpointer.take() {
            // The thread makes a last checkpoint and returns; it does not panic (sled's drop is
            // contained, see `crate::contain`). It may hang inside sled: see `CLOSE_WAIT`.
            let deadline = Instant::now() + CLOSE_WAIT;
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::error!(
                    waited = ?CLOSE_WAIT,
                    "the store's last checkpoint did not finish (sled's flush hangs); closing \
                     without it: the write-ahead log holds every acknowledged write, and the \
                     store stays locked until this process exits"
                );
            }
        }
    }
}

fn unavailable(why: &str) -> StoreError {
    if why.starts_with("a checkpoint failed") {
        return StoreError::Unavailable(why.to_owned());
    }
    StoreError::Unavailable(format!(
        "an earlier write or sync of the write-ahead log failed, so no later write can be proven \
         durable and the store takes none (what was acknowledged before it is durable): {why}"
    ))
}

/// A log error as a store error that says what and where.
pub(crate) fn wal_error(error: WalError) -> StoreError {
    match error {
        WalError::Corrupt { path, offset, problem } => StoreError::Corrupt {
            place: format!("write-ahead log {} at offset {offset}", path.display()),
            problem,
        },
        WalError::Io { context, path, source } => StoreError::Io {
            context: format!("{context}: {}", path.display()),
            source: io::Error::new(source.kind(), source.to_string()),
        },
        other => StoreError::Unavailable(other.to_string()),
    }
}
