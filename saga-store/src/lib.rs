//! The sled store of the saga engine: [`SledStore`], a durable [`saga_core::store::Store`] in
//! one directory, the embedded default for a single process.
//!
//! Main types: [`SledStore`] (opened with [`SledStore::open`], or, for tests only,
//! [`SledStore::open_without_fsync`]) and [`Durability`]. Errors are
//! [`saga_core::store::StoreError`]s. With the `fault-injection` feature (for tests only),
//! `SledStore::inject_sync_failure` (hidden from these docs) makes a coming sync fail as a
//! failing `fdatasync` would.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use saga_core::log::{Record, RecordKind};
//! use saga_core::store::Store;
//! use saga_core::{OperationId, Resource};
//! use saga_store::SledStore;
//!
//! # let dir = tempfile::tempdir()?;
//! let store = Arc::new(SledStore::open(dir.path().join("store"))?);
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let id = OperationId::new();
//! let created = Record {
//!     operation: id,
//!     seq: 0,
//!     at_ms: id.created_ms(),
//!     kind: RecordKind::OperationCreated {
//!         saga: "deploy".into(),
//!         version: 1,
//!         params: b"{}".to_vec(),
//!         environment: "prod".into(),
//!         resource: Resource::new("app", "web"),
//!         actor: "alice".into(),
//!     },
//! };
//! // Durable (synced to the disk) when it returns.
//! let lease = store.create(&created, "executor-1", Duration::from_secs(30)).await?;
//! assert_eq!(lease.epoch, 1);
//! assert_eq!(store.read(id).await?, vec![created]);
//! assert_eq!(store.list_unfinished().await?.ids, vec![id]);
//! # Ok::<(), saga_core::store::StoreError>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! With an executor: `Executor::builder(Arc::new(SledStore::open(path)?))`, and
//! `executor.recover()` after a restart.
//!
//! # Layout
//!
//! Integers are big-endian, so that sled's byte order is numeric order. Every value starts with
//! the format version byte ([`saga_core::store::FORMAT_VERSION`]), followed by postcard.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `records` | id (16) ++ seq (8) | [`saga_core::store::encode`]d record |
//! | `unfinished` | id (16) | empty |
//! | `by_environment` | len(env) (8) ++ env ++ created ms (8) ++ id (16) | empty |
//! | `leases` | id (16) | owner, epoch, expiry |
//! | `logs` | id (16) ++ seq (8) | log line |
//! | `logs_by_time` | at ms (8) ++ id (16) ++ seq (8) | empty |
//! | `by_resource` | len(kind) (8) ++ kind ++ len(name) (8) ++ name ++ id (16) | empty |
//! | `cancels` | id (16) | actor, reason, at ms of the Operation's pending cancel request |
//! | `meta` | `layout`, `record_format` | one version byte each |
//!
//! - `create` writes the `unfinished` mark, the index entry, the lease, the queue entry and then
//!   the first record; an `append` holding `OperationFinished` writes the records and then
//!   removes the mark. Readers never see half of either (see "Acknowledged reads"), and each is
//!   one entry of the write-ahead log, replayed whole; what a crash can leave in sled of an
//!   unacknowledged one is an index entry naming no record or a finished Operation still marked
//!   unfinished, which opening settles (see "Faults") and
//!   [`check`](saga_core::store::Store::check) repairs. [`list_unfinished`](saga_core::store::Store::list_unfinished) reads the
//!   `unfinished` tree only, never a finished Operation.
//! - Cancel requests are decided against the point of no return under the write lock: an
//!   `append` holding a cancel barrier (`PointOfNoReturnPassed`, or `OperationFinished` as
//!   succeeded or abandoned) is refused with
//!   [`StoreError::CancelPending`](saga_core::store::StoreError::CancelPending), writing nothing,
//!   when the Operation's `cancels` entry is there, even if the same append also answers it
//!   (the answer goes in an append of its own first); an `append` holding an answer (`CancelRequested`, `CancelRefused`,
//!   `OperationFinished`) removes the entry after its records, in the same log entry, so that
//!   a crash keeps the answer and the removal together or neither (what sled's own files can
//!   keep of an unacknowledged one is the answer with its request still pending, never a
//!   request gone without its answer). `request_cancel` writes the entry only while the
//!   Operation is marked unfinished and has none.
//! - `append_log` checks the lease under the write lock, like `append`, and never replaces a
//!   stored line: a line whose key is taken is dropped.
//! - The environment name is length-prefixed, so that `"a"` and `"a\0..."` never share keys.
//! - `purge_logs` walks `logs_by_time` up to the cut-off only; records stay.
//! - At open, a store whose `meta` versions are newer than this release's is refused with
//!   [`StoreError::NewerFormat`](saga_core::store::StoreError::NewerFormat); a record with a
//!   newer version byte is refused the same way when read. Bad bytes in a record are
//!   [`StoreError::CorruptRecord`](saga_core::store::StoreError::CorruptRecord) naming the
//!   Operation and the position, never a panic.
//! - Isolation: a key of `unfinished` or `by_environment` that does not follow the layout is
//!   returned in [`Listing::damaged`](saga_core::store::Listing::damaged) as a
//!   [`StoreError::Corrupt`](saga_core::store::StoreError::Corrupt) naming the tree and the key;
//!   the other entries are listed as usual. A damaged lease fails its own Operation's writes only.
//! - A second process opening the same directory gets
//!   [`StoreError::Locked`](saga_core::store::StoreError::Locked) at once (sled takes a
//!   non-blocking `flock` on the `db` file).
//!
//! # Durability: a write-ahead log of the store's own
//!
//! [`Durability::Fsync`] (the default) acknowledges a `create`, `append`, `purge_logs`,
//! `delete_environment`, `request_cancel` or repairing `check` once its changes are in the
//! store's **write-ahead log** (`wal/`, see the `wal` module's docs for the format): appended
//! with one positional write and made durable with one `fdatasync` of the log segment. sled is
//! not flushed on that path: it is the long-term copy and index, changed in memory as before,
//! and made durable by **checkpoints** (every 30 s, sooner after 32 MiB of log, and when the store
//! closes): the durable LSN is noted, sled is flushed and its files `fdatasync`ed (the `db`
//! file through a second handle, new files under `blobs/` and that directory), and only then
//! does the log drop the segments before that LSN (two are recycled, so that the log reuses
//! allocated blocks, the rest deleted). The log never grows past what the last checkpoint left.
//!
//! Every change to a tree is recorded as it is made: a writer takes a ticket after its
//! change, which drains every change recorded so far (the `redo` module) into one log entry; the
//! entry's LSN is the ticket. Every ticket is taken under the write lock, at the end of the
//! writer's changes, so that no ticket drains half of another writer's changes: each write is
//! whole in one entry (a `create`, a finish with its marks, an answer with its request's
//! removal). So an entry holds every change made before it, including the log lines and lease
//! changes (`append_log`, `claim`, `renew`, `release`), which take no ticket of their own and
//! become durable with the next entry (or the next checkpoint). Opening replays the entries after
//! the last checkpoint into sled (entries set keys, so replaying one sled already holds changes
//! nothing), then checkpoints. A torn write at the very end of the newest segment is what a crash
//! leaves: it is cut off. Damage anywhere else is
//! [`StoreError::Corrupt`](saga_core::store::StoreError::Corrupt) naming the segment and
//! the offset.
//!
//! Seen with `strace -f -y -e trace=pwrite64,fdatasync,sync_file_range` around the quickstart (one
//! Operation of five steps): each acknowledged `append` is one `pwrite64` and one `fdatasync` of
//! `wal/00000000000000000000.seg`, and nothing else waits for the disk in between; sled's `db`
//! gets `pwrite64` and `sync_file_range` only at the checkpoint when the store closes.
//!
//! # Group commit
//!
//! One writer thread per log does every write and sync: it takes every entry queued, writes them
//! with one `pwrite64`, syncs once and releases their writers; entries queued meanwhile form the
//! next group. An Operation running alone costs one sync per `append` call; many running at once
//! share them ([`SledStore::sync_count`] counts the syncs). After a failed sync the store refuses
//! every later write with [`StoreError::Unavailable`](saga_core::store::StoreError::Unavailable):
//! the kernel may have dropped the pages, so no later sync could prove them written. A failed
//! checkpoint does the same; the log still holds everything since the last good one.
//!
//! # What sled leaves behind
//!
//! sled 0.34 writes a snapshot `snap.*.generating` at every open and renames it when complete;
//! an open killed (or out of space) in between left a file that made every later open fail with
//! "corrupt data in sled log at None". Opening removes such leftovers first, when no other
//! process holds the store.
//!
//! # Acknowledged reads
//!
//! A `create` or `append` changes sled (memory) before its log entry is synced, so sled holds
//! records that are
//! not acknowledged: while the sync runs, and for good if it fails. Reads never show them. The
//! store keeps in memory, for each Operation with a `create` or `append` not yet acknowledged,
//! the first sequence number that write added (registered under the write lock before the
//! write reaches sled), and whether it finished the Operation. Then:
//!
//! - `read` returns the records before the first unacknowledged one, and
//!   [`StoreError::NotFound`](saga_core::store::StoreError::NotFound) when even
//!   `OperationCreated` is not acknowledged;
//! - `list_unfinished` still lists an Operation whose `OperationFinished` is not acknowledged,
//!   and neither listing shows an Operation whose `create` is not;
//! - a write is forgotten once the sync covering it succeeds (also when its caller stopped
//!   waiting: the next read that finds its sync done forgets it). After a failed sync the
//!   unacknowledged writes stay hidden for the life of the store object, which refuses every
//!   later write anyway. A store reopened after the failure shows what reached the disk: every
//!   acknowledged record, and perhaps some that were not (as after a crash: a prefix of them).
//!
//! Cancel requests are tracked the same way, by value: a `request_cancel` not acknowledged is
//! not shown by `pending_cancel` and `cancel_requests`, and a request whose removal (by an
//! answering `append`) is not acknowledged is still shown. Answers that rest on another write
//! wait until that write is acknowledged, and fail as its sync did: `request_cancel` answers
//! `AlreadyPending` or `Finished`, and `append` answers `CancelPending`, only once the pending
//! request, or the finish that removed the unfinished mark, is durable. A released ticket
//! counts as durable as soon as its writer is told (the log's writer publishes the durable LSN
//! a moment later), so that a reader right after a write sees it.
//!
//! The cost is a few short locks of a small map, never held across I/O: an `append` without
//! `OperationFinished` takes it once before its write and once after its sync; a `create` or a
//! finishing `append` (which run in the blocking pool) once more, to record its sync's ticket.
//! A store opened without fsync acknowledges a write once sled holds it, and tracks nothing.
//!
//! # Wake-ups
//!
//! Every writer is in this process, so [`Store::wake_ups`](saga_core::store::Store::wake_ups)
//! subscribes to the store's own [`WakeUps`](saga_core::store::WakeUps), sent once the write is
//! acknowledged (after its sync; at once without fsync), never for a write that failed:
//! `Claimable` for a `create` with a zero ttl and for a `release` (by the current lease) of an
//! Operation still marked unfinished, `CancelRequested` when a request is recorded, `Settled`
//! after an `append` that finishes an Operation or asks for attention. A caller that stops
//! waiting before its write is acknowledged sends none: the executors' polls find the change.
//!
//! # Check
//!
//! [`check`](saga_core::store::Store::check) walks the `records` tree one Operation at a time, each
//! under the write lock (so never halfway through an `append`; the other Operations' appends go
//! on between): records that do not read, or whose first is not `OperationCreated`, are
//! `DamagedRecords`; a finished Operation still marked is a `StaleUnfinishedMark`, an unfinished
//! one not marked a `MissingUnfinishedMark`; a missing `by_environment` entry (from the
//! `OperationCreated` record's environment and time) a `MissingIndexEntry`. Then every entry of
//! `unfinished`, `by_environment`, `leases` and `logs`: an entry whose Operation has no records
//! (or, in `by_environment`, another environment or creation time) is a `DanglingEntry`; a key
//! or value that does not decode (a lease of a newer format too) is a `DamagedEntry`. With
//! `repair`, each finding but `DamagedRecords` is fixed (the mark or the entry added or
//! removed) and the repairs are synced, through the group commit, before `check` returns;
//! records are never changed. A poisoned store refuses a repairing check and still answers one
//! without repair.
//!
//! # Evidence
//!
//! On Linux 6.x with sled 0.34.7 and `strace` 6.1 from apt, the test `one_append_one_sync` (open
//! a new store, `create` one Operation, `append` one record, with a line on stderr between the
//! calls) was run (at the change that contained sled's close) as
//!
//! ```text
//! cargo test -p saga-store --test store --no-run
//! strace -f -y -e trace=pwrite64,fdatasync,fsync,sync_file_range,flock,write -e signal=none \
//!     -o /tmp/strace.txt target/debug/deps/store-<hash> one_append_one_sync --exact --nocapture
//! ```
//!
//! and printed (pids, wake-ups and stdout dropped, the temporary directory shown as `$TMP`, the
//! sync flags shortened):
//!
//! ```text
//! write(9<$TMP/store/conf>, "segment_size: 524288\nuse_compres"..., 58) = 58
//! write(9<$TMP/store/conf>, "v\31Q\301", 4) = 4
//! flock(9<$TMP/store/db>, LOCK_EX|LOCK_NB) = 0
//! fsync(11<$TMP>)        = 0                       <- the new store's parent directory
//! pwrite64(9<$TMP/store/db>, ..., 1117, 0) = 1117  <- sled, while it opens
//! sync_file_range(9<$TMP/store/db>, 0, 1117, WAIT_BEFORE|WRITE|WAIT_AFTER) = 0
//! fsync(12<$TMP/store/conf>) = 0                   <- what opening wrote: conf, db, directories
//! fsync(11<$TMP/store/db>) = 0
//! fsync(12<$TMP/store/blobs>) = 0
//! fsync(12<$TMP/store>)  = 0
//! fsync(12<$TMP/store>)  = 0
//! fdatasync(12<$TMP/store/wal/00000000000000000000.seg>) = 0   <- the log's first segment
//! fsync(13<$TMP/store/wal>) = 0
//! fdatasync(13<$TMP/store/wal/00000000000000000001.seg>) = 0   <- and its spare
//! fsync(14<$TMP/store/wal>) = 0
//! write(2</dev/null>, "STRACE-MARK create\n", 19) = 19
//! pwrite64(12<$TMP/store/wal/00000000000000000000.seg>, ..., 240, 0) = 240
//! fdatasync(12<$TMP/store/wal/00000000000000000000.seg>) = 0   <- before `create` returned
//! write(2</dev/null>, "STRACE-MARK append\n", 19) = 19
//! pwrite64(12<$TMP/store/wal/00000000000000000000.seg>, ..., 80, 240) = 80
//! fdatasync(12<$TMP/store/wal/00000000000000000000.seg>) = 0   <- before `append` returned
//! write(2</dev/null>, "STRACE-MARK done\n", 17) = 17
//! pwrite64(9<$TMP/store/db>, ..., 307, 1117) = 307 <- the checkpoint at close: sled's flush,
//! sync_file_range(9<$TMP/store/db>, 1117, 307, WAIT_BEFORE|WRITE|WAIT_AFTER) = 0
//! fdatasync(11<$TMP/store/db>) = 0                 <- its fdatasync,
//! pwrite64(14<$TMP/store/wal/checkpoint.tmp>, "SGWALCK1"..., 48, 0) = 48
//! fdatasync(14<$TMP/store/wal/checkpoint.tmp>) = 0 <- then the log's head moves
//! fsync(14<$TMP/store/wal>) = 0
//! fsync(14<$TMP/store/wal>) = 0
//! fsync(9<$TMP/store/db>) = 0                      <- sled's own, when its last handle drops
//! ```
//!
//! Each acknowledged write is one `pwrite64` and one `fdatasync` of the log segment; between the
//! marks, sled writes nothing and `sync_file_range` is never called.
//!
//! # Faults
//!
//! Tested under `strace -f -e inject=<call>:error=<errno>:when=k+` around the quickstart, for
//! every k up to the number of calls a plain run makes (`examples/tests/quickstart.rs`):
//! `fdatasync` (EIO, ENOSPC), `fsync` (EIO), `pwrite64` (ENOSPC, EIO), `fallocate` (ENOSPC),
//! `sync_file_range` (EIO) and `rename` (EIO). Every run ends within its time limit without a
//! panic, says "succeeded" only for what the store then holds, and the next open succeeds.
//! Three things make that so:
//!
//! - sled 0.34.7 panics when `fsync` fails as its last handle drops (`Log::drop` calls
//!   `sync_all().unwrap()`): every sled handle this crate holds drops inside `catch_unwind`,
//!   and the panic is logged instead (the `contain` module). Nothing is lost: the log holds
//!   what was acknowledged.
//! - sled's flush can hang after a `pwrite` ENOSPC: closing waits at most 20 s for the last
//!   checkpoint, then leaves it (the database stays locked until the process exits).
//! - sled writes its buffers out on its own and when it closes, including unacknowledged
//!   changes after a failed sync: opening settles what such a write left half made (a finished
//!   Operation still marked unfinished, marks of a create without its record), so that no stale
//!   queue entry keeps a resource waiting.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

mod acks;
mod cancels;
mod check;
mod codec;
mod contain;
mod disk;
mod environment;
#[cfg(feature = "fault-injection")]
mod faults;
mod flusher;
mod keys;
mod leases;
mod logs;
mod open;
mod records;
mod redo;
mod resources;
mod store;
mod sync_io;
mod wal;

#[doc(hidden)]
#[cfg(feature = "fault-injection")]
pub use crate::faults::SyncHold;
pub use crate::store::{Durability, SledStore};
