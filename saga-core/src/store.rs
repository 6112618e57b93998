//! What a store author implements and what tools reading a store use: the [`Store`] trait (the
//! durable log, ownership leases, the environment index, log lines, cancel requests, resource
//! queues), its errors, the record encoding ([`encode`], [`decode`]) and [`Store::check`]'s report.
//! The conformance suite in `saga-testkit` checks a store against this contract.

use std::time::Duration;

use async_trait::async_trait;

pub use crate::check::{CheckReport, ExpectedMarks, Finding, Problem};
pub use crate::error::StoreError;
use crate::id::OperationId;
use crate::oplog::LogLine;
pub use crate::record::{decode, decode_value, encode, encode_value, FORMAT_VERSION};
use crate::record::{Record, RecordKind, Resource};
use crate::step::FencingToken;
pub use crate::wrapper::StoreWrapper;

/// Ownership of one Operation by one executor, for a time.
///
/// Every append presents the lease; a store refuses an append whose epoch is not the current one
/// ([`StoreError::Fenced`]), so that an executor whose lease was taken over after it stalled can
/// never write again. Epochs only grow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The Operation.
    pub operation: OperationId,
    /// The executor holding it.
    pub owner: String,
    /// Grows by one at every claim.
    pub epoch: u64,
    /// When it expires unless renewed (Unix ms).
    pub expires_ms: u64,
}

impl Lease {
    /// When it expires unless renewed, typed: [`Lease::expires_ms`] is the stored form.
    pub fn expires(&self) -> crate::Timestamp {
        crate::Timestamp::from_unix_ms(self.expires_ms)
    }

    /// The fencing token of this lease: the Operation and the epoch, which grows with every
    /// claim. See [`FencingToken`].
    pub fn fencing_token(&self) -> FencingToken {
        FencingToken { operation: self.operation, epoch: self.epoch }
    }
}

/// A durable request to cancel an Operation, made by an executor that does not run it (another
/// executor runs it, or none does yet). Its owner sees it (at once through the store's
/// [wake-ups](Store::wake_ups), at its next poll otherwise, and at the latest when it passes the
/// point of no return or finishes, which the store refuses while a request is pending) and
/// either rolls back as for a local cancel (`CancelRequested`) or records why it refused
/// (`CancelRefused`); an executor that claims the Operation later sees it at claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancelRequest {
    /// The Operation.
    pub operation: OperationId,
    /// Who asked.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When (Unix ms).
    pub at_ms: u64,
}

impl CancelRequest {
    /// When it was asked, typed: [`CancelRequest::at_ms`] is the stored form.
    pub fn at(&self) -> crate::Timestamp {
        crate::Timestamp::from_unix_ms(self.at_ms)
    }
}

/// What [`Store::request_cancel`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelRecorded {
    /// The request is durable and pending: the Operation's owner answers it.
    Recorded,
    /// Another request was pending already (this one was not recorded); the owner answers
    /// that one, and with it this one.
    AlreadyPending(CancelRequest),
    /// The Operation has finished: nothing was recorded.
    Finished,
}

/// What a store tells the executors that share it, as it happens (see [`Store::wake_ups`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WakeUp {
    /// The Operation may be claimed at once: it was created without a live lease
    /// (`Executor::submit`), or its lease was released while it is unfinished.
    Claimable(OperationId),
    /// A cancel request of the Operation was recorded.
    CancelRequested(OperationId),
    /// The Operation finished, or stopped to wait for an operator (`AttentionNeeded`): what
    /// `Executor::wait` answers changed.
    Settled(OperationId),
    /// Some wake-ups may have been missed (a receiver fell behind, a connection was lost): look
    /// at everything.
    Missed,
}

/// A sender of [`WakeUp`]s for a store whose every writer is in this process (the memory and
/// sled stores): what [`Store::wake_ups`] subscribes to.
#[derive(Debug)]
pub struct WakeUps(tokio::sync::broadcast::Sender<WakeUp>);

impl Default for WakeUps {
    fn default() -> Self {
        WakeUps(tokio::sync::broadcast::channel(WAKE_UP_CAPACITY).0)
    }
}

/// How many wake-ups a slow receiver may fall behind before it is told it missed some.
pub const WAKE_UP_CAPACITY: usize = 4096;

impl WakeUps {
    /// Tells every receiver (none listening is fine).
    pub fn send(&self, wake_up: WakeUp) {
        let _ = self.0.send(wake_up);
    }

    /// Tells every receiver what an acknowledged append of `records` to `operation` changed:
    /// [`WakeUp::Settled`] when one finishes it or asks for attention.
    pub fn appended(&self, operation: OperationId, records: &[Record]) {
        if records.iter().any(|r| r.kind.settles()) {
            self.send(WakeUp::Settled(operation));
        }
    }

    /// A new receiver.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<WakeUp> {
        self.0.subscribe()
    }
}

/// What a listing from an index found: the Operations it names, and the entries that name none
/// (a key or value that does not decode), each a typed error saying where. One damaged entry
/// never hides the others.
#[derive(Debug, Default)]
pub struct Listing {
    /// The Operations named, in the index's order.
    pub ids: Vec<OperationId>,
    /// The entries that could not be read, each saying which index and key.
    pub damaged: Vec<StoreError>,
}

impl Listing {
    /// A listing of these ids with nothing damaged.
    pub fn of(ids: Vec<OperationId>) -> Self {
        Listing { ids, damaged: Vec::new() }
    }
}

/// Where Operations live: their records, their leases, their indexes (unfinished, by
/// environment, by resource), cancel requests and log lines.
///
/// One contract for one process or many: every rule below is the store's to enforce, atomically
/// and with its own clock, whatever executors (in one process or on several machines) call it
/// at once. A store for several machines (PostgreSQL) implements it without reading any other
/// store's code; saga-testkit's `conformance` suite states it as tests that every store runs.
///
/// **Why one trait.** The methods are grouped below by what they store (records, leases,
/// indexes, requests, log lines, maintenance), but they stay one trait: several of them must
/// change more than one group in one atomic, durable write (`create` writes a record, a lease,
/// and three index entries; a finishing `append` writes records and clears the unfinished mark,
/// the resource queue entry and the cancel request), which separate traits over separate
/// backends could not promise. An embedder passes one `Arc<dyn Store>`.
///
/// # Contract
///
/// Records ([`create`](Store::create), [`append`](Store::append), [`read`](Store::read)):
///
/// - **Durability.** When `create` or `append` returns `Ok`, the records are durable: they
///   survive a crash of the process (and, for a store that says so, a power loss). A store that
///   does not sync says so in its name. Concurrent appends of different Operations may share one
///   flush (group commit).
/// - **Order.** An Operation's records are appended in sequence order with no gap; a store refuses
///   any other sequence number with [`StoreError::OutOfSequence`] and returns records in order.
/// - **Damaged bytes.** A store keeps a record as [`encode`] writes it and reads it with
///   [`decode`] (its other values with [`encode_value`] and [`decode_value`]), which check the
///   checksum, the Operation and the position: bytes its backend changed are a typed error
///   naming the Operation and the position ([`StoreError::CorruptRecord`]), never another
///   record.
/// - **Acknowledged reads.** `read`, the listings and `read_log` show what was acknowledged: a
///   record whose `create` or `append` failed is never shown as if it were durable (it may
///   reappear after a restart, since an unacknowledged write may or may not have reached the
///   disk, but never as an answer given while the failure is known).
///
/// Leases ([`claim`](Store::claim), [`renew`](Store::renew), [`release`](Store::release)):
///
/// - `create` grants the creator the first lease. `claim` succeeds when no lease is held, when it
///   expired (by the store's clock), or when the caller already holds it, and always grants a
///   higher epoch; of concurrent claims exactly one wins. `append` and `renew` with a lease that
///   is not current fail with [`StoreError::Fenced`] and write nothing (fencing is checked in the
///   same atomic write as the append). A store that only one process opens may keep lease
///   changes in memory until its next durable write (a lease lost in a crash belonged to the
///   executor that crashed); a store shared by several processes must make `claim` durable
///   before it returns, or epochs could repeat. Calling `release` twice is harmless.
///
/// Indexes ([`list_unfinished`](Store::list_unfinished),
/// [`list_environment`](Store::list_environment), [`resource_queue`](Store::resource_queue)):
///
/// - **Unfinished.** `list_unfinished` lists Operations without an `OperationFinished` record,
///   without reading finished ones; an append of `OperationFinished` removes the Operation from
///   that list in the same durable write. An index entry that does not decode is returned in
///   [`Listing::damaged`], never as an error of the whole listing.
/// - **By environment.** `list_environment` returns the ids of one environment created in
///   `[since_ms, until_ms)`, in creation order, from an index; damaged entries as above.
/// - **Resource queues.** `resource_queue` lists the unfinished Operations of one resource in
///   creation order: `create` adds the Operation at the end in its durable write, an append of
///   `OperationFinished` (and `delete_environment`) removes it in the same durable write. The
///   executor runs an Operation only when it heads its resource's queue.
///
/// Requests ([`request_cancel`](Store::request_cancel), [`cancel_requests`](Store::cancel_requests),
/// [`pending_cancel`](Store::pending_cancel)), decided against the point of no return:
///
/// - `request_cancel` is durable when it returns [`CancelRecorded::Recorded`]; one request per
///   Operation is pending at a time (a later one is answered
///   [`CancelRecorded::AlreadyPending`] with the pending one, and not recorded), and none is
///   recorded for a finished Operation ([`CancelRecorded::Finished`]).
/// - **A pending request is never dropped.** An append holding a record for which
///   [`RecordKind::is_cancel_barrier`] holds (passing the point of no return; finishing as
///   succeeded or abandoned) fails with [`StoreError::CancelPending`], writing nothing, while a
///   request is pending; the check and the write are one atomic step with respect to
///   `request_cancel`. An append holding a record for which
///   [`RecordKind::answers_cancel_request`] holds (`CancelRequested`, `CancelRefused`,
///   `OperationFinished`) removes the pending request in the same durable write. So a request
///   recorded before the point of no return is passed always wins, and one recorded after is
///   always answered with a recorded refusal.
/// - `cancel_requests` lists every pending one; `pending_cancel` tells one Operation's.
///
/// Log lines ([`append_log`](Store::append_log), [`read_log`](Store::read_log),
/// [`purge_logs`](Store::purge_logs)):
///
/// - `append_log` is fenced like `append`: with a lease that is not current it fails with
///   [`StoreError::Fenced`] and writes nothing, so that an executor whose lease passed to
///   another never writes lines the new owner numbers as its own. A line whose number is
///   already stored is dropped (a stored line is never replaced).
/// - Log lines need not be durable when `append_log` returns; they are written with the next
///   durable write at the latest. They may be purged by age while records stay.
///
/// Wake-ups ([`wake_ups`](Store::wake_ups)): a store that several executors share tells them
/// of what changed ([`WakeUp`]) as it commits; see the method.
///
/// Maintenance ([`delete_environment`](Store::delete_environment), [`check`](Store::check)):
///
/// - `check` reconciles the indexes with the records and, when asked, repairs from the records
///   alone what disagrees; it never changes a record.
///
/// Every method may be called concurrently. [`StoreError::is_transient`] tells the executor which
/// errors to retry; a backend's own error travels as the `source` of [`StoreError::Backend`] or
/// [`StoreError::Transient`].
///
/// A store that keeps everything in a `Vec`, to show the shape (see [`MemoryStore`] for a whole one):
///
/// ```
/// use std::sync::Mutex;
/// use std::time::Duration;
/// use async_trait::async_trait;
/// use saga_core::log::{LogLine, Record};
/// use saga_core::store::{CancelRecorded, CancelRequest, CheckReport, Lease, Listing, Store, StoreError};
/// use saga_core::{OperationId, Resource};
///
/// #[derive(Default)]
/// struct VecStore(Mutex<Vec<Record>>);
///
/// #[async_trait]
/// impl Store for VecStore {
///     async fn create(&self, record: &Record, owner: &str, ttl: Duration) -> Result<Lease, StoreError> {
///         self.0.lock().unwrap().push(record.clone());
///         Ok(Lease { operation: record.operation, owner: owner.into(), epoch: 1, expires_ms: u64::MAX })
///     }
///     async fn append(&self, _: &Lease, records: &[Record]) -> Result<(), StoreError> {
///         self.0.lock().unwrap().extend_from_slice(records);
///         Ok(())
///     }
///     async fn read(&self, id: OperationId) -> Result<Vec<Record>, StoreError> {
///         Ok(self.0.lock().unwrap().iter().filter(|r| r.operation == id).cloned().collect())
///     }
///     async fn list_unfinished(&self) -> Result<Listing, StoreError> { Ok(Listing::default()) }
///     async fn claim(&self, id: OperationId, owner: &str, _: Duration) -> Result<Lease, StoreError> {
///         Ok(Lease { operation: id, owner: owner.into(), epoch: 2, expires_ms: u64::MAX })
///     }
///     async fn renew(&self, lease: &Lease, _: Duration) -> Result<Lease, StoreError> { Ok(lease.clone()) }
///     async fn release(&self, _: &Lease) -> Result<(), StoreError> { Ok(()) }
///     async fn lease(&self, _: OperationId) -> Result<Option<Lease>, StoreError> { Ok(None) }
///     async fn list_environment(&self, _: &str, _: u64, _: u64) -> Result<Listing, StoreError> { Ok(Listing::default()) }
///     async fn append_log(&self, _: &Lease, _: &[LogLine]) -> Result<(), StoreError> { Ok(()) }
///     async fn read_log(&self, _: OperationId) -> Result<Vec<LogLine>, StoreError> { Ok(vec![]) }
///     async fn purge_logs(&self, _: u64) -> Result<u64, StoreError> { Ok(0) }
///     async fn delete_environment(&self, _: &str) -> Result<u64, StoreError> { Ok(0) }
///     async fn check(&self, _: bool) -> Result<CheckReport, StoreError> { Ok(CheckReport::default()) }
///     async fn request_cancel(&self, _: &CancelRequest) -> Result<CancelRecorded, StoreError> { Ok(CancelRecorded::Finished) }
///     async fn cancel_requests(&self) -> Result<Vec<CancelRequest>, StoreError> { Ok(vec![]) }
///     async fn resource_queue(&self, _: &Resource) -> Result<Vec<OperationId>, StoreError> { Ok(vec![]) }
/// }
/// ```
///
/// [`MemoryStore`]: crate::MemoryStore
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new Operation's `OperationCreated` record (sequence number 0) durably, indexes it
    /// by environment and creation time, and grants `owner` its first lease.
    async fn create(
        &self,
        record: &Record,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError>;

    /// Appends records of the lease's Operation durably, in order; refused while a cancel
    /// request is pending when one of them is a barrier, and taking the pending request away
    /// when one answers it (see the contract above).
    async fn append(&self, lease: &Lease, records: &[Record]) -> Result<(), StoreError>;

    /// All records of one Operation, in order. [`StoreError::NotFound`] if it does not exist.
    async fn read(&self, operation: OperationId) -> Result<Vec<Record>, StoreError>;

    /// The Operations that have not finished, in id order, and the entries of that index that
    /// do not decode.
    async fn list_unfinished(&self) -> Result<Listing, StoreError>;

    /// Takes ownership of an Operation for `ttl`.
    async fn claim(
        &self,
        operation: OperationId,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError>;

    /// Extends a lease that is still current.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError>;

    /// Gives up a lease, so that another executor may claim the Operation at once.
    async fn release(&self, lease: &Lease) -> Result<(), StoreError>;

    /// The Operation's current lease as the store holds it (an expired or released one too,
    /// with its epoch), or `None` if it has none or does not exist. For reading only: an
    /// executor tells from it whether another executor claimed an Operation after it stopped
    /// here.
    async fn lease(&self, operation: OperationId) -> Result<Option<Lease>, StoreError>;

    /// Ids of the Operations of `environment` created in `[since_ms, until_ms)`, in creation
    /// order, and the entries of that range that do not decode.
    async fn list_environment(
        &self,
        environment: &str,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Listing, StoreError>;

    /// Appends log lines of the lease's Operation (not necessarily durable on return), fenced
    /// like [`append`](Store::append): [`StoreError::Fenced`] when the lease is not current.
    async fn append_log(&self, lease: &Lease, lines: &[LogLine]) -> Result<(), StoreError>;

    /// All stored log lines of one Operation, in order (empty if none or purged).
    async fn read_log(&self, operation: OperationId) -> Result<Vec<LogLine>, StoreError>;

    /// Deletes the log lines written before `before_ms`; records stay. Returns how many went.
    async fn purge_logs(&self, before_ms: u64) -> Result<u64, StoreError>;

    /// Deletes every Operation of an environment: records, index entries, leases and log lines.
    /// Returns how many Operations went.
    async fn delete_environment(&self, environment: &str) -> Result<u64, StoreError>;

    /// Reconciles the indexes (unfinished, environment, leases, log lines) with the records:
    /// reports every mismatch and, when `repair` is set, repairs what the records alone can
    /// repair (see [`Problem`]). Records are never changed. Safe to call while
    /// Operations run: each Operation is checked atomically with respect to its appends.
    async fn check(&self, repair: bool) -> Result<CheckReport, StoreError>;

    /// Records a request to cancel an unfinished Operation, durably, unless one is pending
    /// already or the Operation finished (see [`CancelRecorded`]); [`StoreError::NotFound`] if
    /// it does not exist.
    async fn request_cancel(&self, request: &CancelRequest) -> Result<CancelRecorded, StoreError>;

    /// Every pending cancel request (of Operations that have not finished), in id order.
    async fn cancel_requests(&self) -> Result<Vec<CancelRequest>, StoreError>;

    /// The Operation's pending cancel request, if any. The default looks through
    /// [`cancel_requests`](Store::cancel_requests); a store with an index overrides it.
    async fn pending_cancel(
        &self,
        operation: OperationId,
    ) -> Result<Option<CancelRequest>, StoreError> {
        Ok(self.cancel_requests().await?.into_iter().find(|r| r.operation == operation))
    }

    /// The unfinished Operations of `resource`, in the order they were created.
    async fn resource_queue(&self, resource: &Resource) -> Result<Vec<OperationId>, StoreError>;

    /// What changed, as the store commits it, told to every executor over the store (in this
    /// process or, for a shared store, in any): an Operation that may be claimed at once
    /// (submitted, or released unfinished), a cancel request recorded, an Operation that
    /// finished or needs attention ([`WakeUp`]). The executor then claims, hands the request to
    /// the Operation's driver, or answers its `wait`ers at once, instead of at its next poll;
    /// the polls stay, as the fallback for a wake-up that is lost. A receiver that falls behind
    /// sees `Lagged`, which the executor reads as [`WakeUp::Missed`]. `None` (the default): the
    /// executor polls only.
    fn wake_ups(&self) -> Option<tokio::sync::broadcast::Receiver<WakeUp>> {
        None
    }
}

impl Lease {
    /// The lease that a claim by `owner` gets when `previous` is the Operation's current lease (if
    /// any), at `now_ms`: the shared rule of every store. Fails with [`StoreError::Owned`] when
    /// another owner's lease has not expired.
    pub fn claim_after(
        previous: Option<&Lease>,
        operation: OperationId,
        owner: &str,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<Lease, StoreError> {
        if let Some(p) = previous {
            if p.owner != owner && p.expires_ms > now_ms {
                return Err(StoreError::Owned { operation, holder: p.owner.clone() });
            }
        }
        Ok(Lease {
            operation,
            owner: owner.to_owned(),
            epoch: previous.map_or(1, |p| p.epoch + 1),
            expires_ms: now_ms.saturating_add(ttl.as_millis() as u64),
        })
    }

    /// Checks that this lease is `current`, the store's lease of the Operation: the shared fencing
    /// rule of every store.
    pub fn check_current(&self, current: Option<&Lease>) -> Result<(), StoreError> {
        match current {
            Some(c) if c.epoch == self.epoch && c.owner == self.owner => Ok(()),
            Some(c) => Err(StoreError::Fenced {
                operation: self.operation,
                epoch: self.epoch,
                holder: c.owner.clone(),
            }),
            None => Err(StoreError::Fenced {
                operation: self.operation,
                epoch: self.epoch,
                holder: "nobody".into(),
            }),
        }
    }
}

/// Milliseconds since the Unix epoch, now: the clock of record times and lease expiries.
#[deprecated(since = "0.2.0", note = "use `saga_core::Timestamp::now().unix_ms()`")]
pub fn now_ms() -> u64 {
    crate::Timestamp::now().unix_ms()
}

/// What a store indexes of an Operation it creates, read from its first record by
/// [`check_create`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Creation<'a> {
    /// The environment it belongs to.
    pub environment: &'a str,
    /// The resource it changes (its queue).
    pub resource: &'a Resource,
}

/// Checks that `record` can open an Operation's log (an `OperationCreated` with sequence number
/// 0) and gives what the store indexes of it: the shared rule of every store's
/// [`Store::create`].
///
/// # Errors
///
/// [`StoreError::OutOfSequence`] (expected 0) for any other record.
pub fn check_create(record: &Record) -> Result<Creation<'_>, StoreError> {
    let RecordKind::OperationCreated { environment, resource, .. } = &record.kind else {
        return Err(StoreError::OutOfSequence {
            operation: record.operation,
            expected: 0,
            got: record.seq,
        });
    };
    check_sequence(record.operation, 0, std::slice::from_ref(record))?;
    Ok(Creation { environment, resource })
}

/// Checks that `records` all belong to `operation` and continue its log at `next_seq` without a
/// gap: the shared ordering rule of every store. Returns the sequence number after them.
pub fn check_sequence(
    operation: OperationId,
    next_seq: u64,
    records: &[Record],
) -> Result<u64, StoreError> {
    let mut expected = next_seq;
    for r in records {
        if r.operation != operation || r.seq != expected {
            return Err(StoreError::OutOfSequence { operation, expected, got: r.seq });
        }
        expected += 1;
    }
    Ok(expected)
}
