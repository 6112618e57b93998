//! The engine's errors, the errors a step returns and the errors a store returns.

use std::fmt;

use crate::id::OperationId;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A saga definition was rejected while it was built.
    #[error("saga {saga}: {problem}")]
    InvalidSaga {
        /// The saga's name.
        saga: String,
        /// What is wrong with it.
        problem: String,
    },
    /// No saga of this name (and version, when given) is registered with the executor.
    #[error("unknown saga {name}{}", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    UnknownSaga {
        /// The saga name asked for.
        name: String,
        /// The version asked for, if any.
        version: Option<u32>,
    },
    /// A record names a step the saga does not have.
    #[error("operation {operation}: record {seq} names step {step:?}, which saga {saga} version {version} does not have")]
    UnknownStep {
        /// The Operation.
        operation: OperationId,
        /// The record's sequence number.
        seq: u64,
        /// The step named.
        step: String,
        /// The saga's name.
        saga: String,
        /// The saga's version.
        version: u32,
    },
    /// A record cannot follow the records before it; the log is corrupt or was written by a bug.
    #[error("operation {operation}: record {seq} is illegal: {problem}")]
    IllegalRecord {
        /// The Operation.
        operation: OperationId,
        /// The record's sequence number (or the position where one was expected).
        seq: u64,
        /// Why it cannot follow the records before it.
        problem: String,
    },
    /// No Operation has this id in the store.
    #[error("operation {0} not found")]
    NotFound(OperationId),
    /// The text is not an Operation id.
    #[error("{0:?} is not an operation id")]
    InvalidOperationId(String),
    /// The text is not an RFC 3339 time at or after the Unix epoch.
    #[error("{text:?} is not a time (RFC 3339, at or after 1970-01-01T00:00:00Z): {why}")]
    InvalidTimestamp {
        /// The text.
        text: String,
        /// Why it is not one.
        why: String,
    },
    /// The text is not a fencing token (`<operation>/<epoch>`).
    #[error("{0:?} is not a fencing token (<operation>/<epoch>)")]
    InvalidFencingToken(String),
    /// The Operation already finished, so it cannot be cancelled.
    #[error("operation {operation} already finished: {outcome}")]
    AlreadyFinished {
        /// The Operation.
        operation: OperationId,
        /// How it finished (boxed: an outcome is large, and errors travel in every `Result`).
        outcome: Box<crate::record::Outcome>,
    },
    /// The Operation is past its point of no return, so it cannot be cancelled.
    #[error("operation {operation} is past its point of no return (step {step}) and cannot be cancelled")]
    PastPointOfNoReturn {
        /// The Operation.
        operation: OperationId,
        /// The last step before the point of no return.
        step: String,
    },
    /// The Operation cannot be resumed by this executor: its saga is unknown, or its log is bad.
    #[error("operation {operation} is unrecoverable: {cause}")]
    Unrecoverable {
        /// The Operation.
        operation: OperationId,
        /// Why.
        #[source]
        cause: std::sync::Arc<Error>,
    },
    /// [`Executor::wait_here`](crate::Executor::wait_here): no driver of the Operation runs on
    /// this executor.
    #[error("operation {0} is not running on this executor")]
    NotRunning(OperationId),
    /// [`Executor::wait_timeout`](crate::Executor::wait_timeout) gave up: the Operation had
    /// neither finished nor stopped for an operator when the time the caller chose was up. It
    /// goes on wherever it runs.
    #[error("operation {operation} had not finished after {waited:?} of waiting")]
    WaitTimedOut {
        /// The Operation.
        operation: OperationId,
        /// How long the caller waited.
        waited: std::time::Duration,
    },
    /// The Operation's driver stopped because the store failed (permanently, or transiently for
    /// longer than the executor retries) or its log became illegal. What the store acknowledged
    /// is all that is known: the Operation has no outcome the log can stand behind until
    /// `recover()` on an executor over the same store resumes it.
    #[error("operation {operation} halted: {cause}")]
    Halted {
        /// The Operation.
        operation: OperationId,
        /// Why: typically [`Error::Store`] with the store's reason.
        #[source]
        cause: std::sync::Arc<Error>,
    },
    /// The step has no recorded output: it did not succeed, or did not start.
    #[error("operation {operation}: step {step} has no recorded output")]
    NoOutput {
        /// The Operation.
        operation: OperationId,
        /// The step.
        step: String,
    },
    /// A recorded value (the params, a step's output) does not deserialize to the type asked
    /// for.
    #[error("operation {operation}: {what} does not deserialize to {type_name}: {problem}")]
    Deserialize {
        /// The Operation.
        operation: OperationId,
        /// What was read.
        what: String,
        /// The Rust type asked for.
        type_name: &'static str,
        /// The deserializer's message.
        problem: String,
    },
    /// The Operation needs attention: past its point of no return, a step ran out of its retry
    /// policy. [`Executor::retry`](crate::Executor::retry) runs it again;
    /// [`Executor::abandon`](crate::Executor::abandon) ends the Operation.
    #[error("operation {operation} needs attention: step {step} keeps failing past the point of no return: {error}")]
    NeedsAttention {
        /// The Operation.
        operation: OperationId,
        /// The step.
        step: String,
        /// Its last error.
        error: String,
    },
    /// The Operation does not need attention, so it cannot be retried or abandoned.
    #[error("operation {operation} does not need attention")]
    NoAttentionNeeded {
        /// The Operation.
        operation: OperationId,
    },
    /// A report could not be written.
    #[error("cannot write the report: {0}")]
    Report(String),
    /// The resource has an unfinished Operation, and the caller asked not to wait behind it.
    #[error("{resource} is busy with operation {operation}")]
    ResourceBusy {
        /// The resource.
        resource: crate::record::Resource,
        /// The unfinished Operation that heads its queue.
        operation: OperationId,
    },
    /// The executor is shutting down and takes no new Operations.
    #[error("the executor is shutting down")]
    ShuttingDown,
    /// Parameters or an output do not serialize.
    #[error("cannot serialize {what}: {source}")]
    Serialize {
        /// What was serialized.
        what: String,
        /// The serializer's error.
        source: serde_json::Error,
    },
    /// The executor could not renew the Operation's lease before it would expire (the store did
    /// not answer in time), so it stopped driving the Operation while the lease was still its
    /// own: the running steps' tokens fired and their futures were dropped, nothing new started.
    /// Another executor (or this one, once the store answers) may take it over.
    #[error("operation {operation}: the lease could not be renewed before it expires (last renewed {since:?} ago); stopped driving it")]
    LeaseExpiring {
        /// The Operation.
        operation: OperationId,
        /// How long before the stop the lease was last granted or renewed.
        since: std::time::Duration,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What went wrong in a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another executor holds the Operation, or this executor's lease was taken over (fenced).
    #[error("operation {operation}: lease epoch {epoch} is not current (held by {holder})")]
    Fenced {
        /// The Operation.
        operation: OperationId,
        /// The epoch presented.
        epoch: u64,
        /// Who holds the current lease.
        holder: String,
    },
    /// The Operation is owned by another executor whose lease has not expired.
    #[error("operation {operation} is owned by {holder} until its lease expires")]
    Owned {
        /// The Operation.
        operation: OperationId,
        /// The current owner.
        holder: String,
    },
    /// Records appended out of sequence.
    #[error("operation {operation}: expected record {expected}, got {got}")]
    OutOfSequence {
        /// The Operation.
        operation: OperationId,
        /// The sequence number the store expected.
        expected: u64,
        /// The sequence number it got.
        got: u64,
    },
    /// The append passes the point of no return or finishes the Operation (a record for which
    /// [`RecordKind::is_cancel_barrier`](crate::log::RecordKind::is_cancel_barrier) holds) while
    /// a cancel request is pending: nothing was written. The executor answers the request first
    /// (records the cancel, or its refusal) and tries again.
    #[error("operation {operation}: a cancel requested by {} is pending", request.actor)]
    CancelPending {
        /// The Operation.
        operation: OperationId,
        /// The pending request.
        request: Box<crate::store::CancelRequest>,
    },
    /// An Operation with this id already exists.
    #[error("operation {0} already exists")]
    AlreadyExists(OperationId),
    /// No Operation has this id.
    #[error("operation {0} not found")]
    NotFound(OperationId),
    /// The store is closed or unavailable (for example after a simulated crash).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A write through the read-only view of an executor's store
    /// ([`Executor::store`](crate::Executor::store)): every write goes through the executor,
    /// which holds the lease and keeps the log's rules.
    #[error("{method} refused: an executor's store is read-only to its callers; write through the executor")]
    ReadOnly {
        /// The store method refused.
        method: &'static str,
    },
    /// Stored bytes do not decode.
    #[error("corrupt data in {place}: {problem}")]
    Corrupt {
        /// Where (the Operation and position, or the tree and key).
        place: String,
        /// What is wrong.
        problem: String,
    },
    /// A record's bytes do not decode.
    #[error("operation {operation}: record at position {position} is corrupt: {problem}")]
    CorruptRecord {
        /// The Operation, when known.
        operation: OperationId,
        /// The position of the record in the Operation's log.
        position: u64,
        /// What the decoder said.
        problem: String,
    },
    /// A record could not be encoded (nothing was written).
    #[error("operation {operation}: record {seq} cannot be encoded: {problem}")]
    Encode {
        /// The Operation.
        operation: OperationId,
        /// The record's sequence number.
        seq: u64,
        /// What the encoder said.
        problem: String,
    },
    /// A record was written by a newer release whose format this release cannot read.
    #[error("record format version {found} is newer than this release reads (up to {supported})")]
    NewerFormat {
        /// The version found.
        found: u8,
        /// The newest version this release reads.
        supported: u8,
    },
    /// The store is locked by another process.
    #[error("store at {path} is in use by another process")]
    Locked {
        /// The store's path.
        path: String,
    },
    /// An I/O error from the backing storage.
    #[error("i/o error in {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Any other backend error; the backend's own error is the [`source`](std::error::Error::source).
    #[error("store backend error in {context}: {source}")]
    Backend {
        /// What was being done.
        context: String,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A failure that may pass (a dropped connection, a busy backend, a full queue): the same
    /// call may succeed later. Nothing was acknowledged. The backend's own error is the
    /// [`source`](std::error::Error::source).
    #[error("store temporarily unavailable in {context}: {source}")]
    Transient {
        /// What was being done.
        context: String,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// A [`StoreError::Backend`]: `source` is the backend's error (or, for a `&str` or a
    /// `String`, a message), `context` says what was being done.
    ///
    /// ```
    /// use saga_core::store::StoreError;
    /// let e = StoreError::backend("reading a lease", "tree missing");
    /// assert_eq!(e.to_string(), "store backend error in reading a lease: tree missing");
    /// assert!(!e.is_transient());
    /// ```
    pub fn backend(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Backend { context: context.into(), source: source.into() }
    }

    /// A [`StoreError::Transient`]: `source` is the backend's error (or, for a `&str` or a
    /// `String`, a message), `context` says what was being done.
    ///
    /// ```
    /// use saga_core::store::StoreError;
    /// let e = StoreError::transient("appending records", "connection reset");
    /// assert!(e.is_transient());
    /// ```
    pub fn transient(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Transient { context: context.into(), source: source.into() }
    }

    /// Whether the same call may succeed if made again later. The executor retries such errors
    /// with backoff; every other error halts what needed the store.
    ///
    /// Transient are [`StoreError::Transient`], and [`StoreError::Io`] whose
    /// [`io::ErrorKind`](std::io::ErrorKind) says the call was cut short rather than refused:
    /// `Interrupted`, `WouldBlock`, `TimedOut`, `ConnectionReset`, `ConnectionAborted` and
    /// `BrokenPipe`. Every other I/O error is permanent, notably a full disk (`ENOSPC`) and
    /// `EIO`: after a failed sync the kernel may have dropped the dirty pages, so a store whose
    /// sync failed is poisoned ([`StoreError::Unavailable`]) and no retry can make it durable.
    pub fn is_transient(&self) -> bool {
        use std::io::ErrorKind::{
            BrokenPipe, ConnectionAborted, ConnectionReset, Interrupted, TimedOut, WouldBlock,
        };
        match self {
            StoreError::Transient { .. } => true,
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                Interrupted
                    | WouldBlock
                    | TimedOut
                    | ConnectionReset
                    | ConnectionAborted
                    | BrokenPipe
            ),
            _ => false,
        }
    }
}

impl Error {
    /// Whether the same call may succeed if made again later (a transient store error).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Store(e) if e.is_transient())
    }
}

/// Whether a step error is worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    /// Retry with backoff, within the step's retry policy.
    Transient,
    /// Do not retry: start the rollback (or, past the point of no return, retry forward).
    Permanent,
}

/// The error a step's `execute` or `compensate` returns.
///
/// ```
/// use saga_core::StepError;
/// let e = StepError::transient("connection reset");
/// assert!(e.is_transient());
/// assert_eq!(e.to_string(), "connection reset");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepError {
    kind: ErrorKind,
    message: String,
    no_effect: bool,
}

impl StepError {
    /// A transient error: retried with backoff.
    pub fn transient(message: impl fmt::Display) -> Self {
        StepError { kind: ErrorKind::Transient, message: message.to_string(), no_effect: false }
    }

    /// A permanent error: not retried.
    pub fn permanent(message: impl fmt::Display) -> Self {
        StepError { kind: ErrorKind::Permanent, message: message.to_string(), no_effect: false }
    }

    /// The error a step gets when its Operation is cancelled while it runs.
    pub fn cancelled() -> Self {
        StepError::permanent("cancelled")
    }

    /// Says that the attempt failed before it changed anything (the request was refused, the
    /// check before the change failed): the log records it
    /// ([`RecordKind::StepFailedWithoutEffect`](crate::log::RecordKind::StepFailedWithoutEffect)),
    /// and a step whose every attempt failed this way is left alone by the rollback: it is not
    /// compensated, and an irreversible one is not reported as not undone, so the verdict stays
    /// exact. Only for `execute`; a compensation's error ignores it. Say it only when it is
    /// certain: a step that may have acted must return a plain error.
    ///
    /// ```
    /// use saga_core::StepError;
    /// let e = StepError::permanent("card declined").no_effect();
    /// assert!(e.has_no_effect());
    /// assert!(!StepError::permanent("timed out after charging").has_no_effect());
    /// ```
    #[must_use]
    pub fn no_effect(mut self) -> Self {
        self.no_effect = true;
        self
    }

    /// Whether the error says the attempt changed nothing (see [`StepError::no_effect`]).
    pub fn has_no_effect(&self) -> bool {
        self.no_effect
    }

    /// Transient or permanent.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether it is transient.
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StepError {}

/// A step asked its context for something it does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// The saga has no step of that name.
    #[error("step {asking} asked for the output of {name:?}, which is not a step of this saga")]
    UnknownStep {
        /// The step asking.
        asking: String,
        /// The name asked for.
        name: String,
    },
    /// The step named does not run before the step asking.
    #[error("step {asking} asked for the output of {name}, which does not run before it")]
    NotEarlier {
        /// The step asking.
        asking: String,
        /// The name asked for.
        name: String,
    },
    /// The step named has no recorded output (it did not succeed).
    #[error("step {asking} asked for the output of {name}, which has none recorded")]
    NoOutput {
        /// The step asking.
        asking: String,
        /// The name asked for.
        name: String,
    },
    /// The value does not deserialize to the type asked for.
    #[error("step {asking}: {what} does not deserialize to {type_name}: {problem}")]
    WrongType {
        /// The step asking.
        asking: String,
        /// What was read (the params, or a step's output).
        what: String,
        /// The Rust type asked for.
        type_name: &'static str,
        /// The deserializer's message.
        problem: String,
    },
}

impl From<ContextError> for StepError {
    fn from(e: ContextError) -> Self {
        StepError::permanent(e)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::io;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("backend said no")]
    struct BackendFailure;

    #[test]
    fn store_errors_keep_the_backend_error_as_source() {
        let e = StoreError::backend("reading a lease", BackendFailure);
        assert_eq!(e.to_string(), "store backend error in reading a lease: backend said no");
        let source = e.source().expect("has a source");
        assert!(source.downcast_ref::<BackendFailure>().is_some());

        let reset = io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer");
        let e = StoreError::transient("appending records", reset);
        assert_eq!(
            e.to_string(),
            "store temporarily unavailable in appending records: reset by peer"
        );
        let source = e.source().expect("has a source");
        let io = source.downcast_ref::<io::Error>().expect("an io::Error");
        assert_eq!(io.kind(), io::ErrorKind::ConnectionReset);

        let e = StoreError::backend("encoding", "a message");
        assert_eq!(e.source().map(|s| s.to_string()).as_deref(), Some("a message"));

        let e = Error::from(StoreError::backend("listing", BackendFailure));
        assert!(e.source().and_then(|s| s.downcast_ref::<BackendFailure>()).is_some());
    }

    #[test]
    fn transient_store_errors_follow_the_rule() {
        assert!(StoreError::transient("x", "busy").is_transient());
        assert!(!StoreError::backend("x", "broken").is_transient());
        assert!(!StoreError::Unavailable("crashed".into()).is_transient());

        let io_error = |kind: io::ErrorKind| StoreError::Io {
            context: "writing".into(),
            source: io::Error::from(kind),
        };
        for kind in [
            io::ErrorKind::Interrupted,
            io::ErrorKind::WouldBlock,
            io::ErrorKind::TimedOut,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::BrokenPipe,
        ] {
            assert!(io_error(kind).is_transient(), "{kind:?}");
            assert!(Error::from(io_error(kind)).is_transient(), "{kind:?}");
        }
        for kind in [
            io::ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::Other,
        ] {
            assert!(!io_error(kind).is_transient(), "{kind:?}");
        }
        let full = io::Error::from_raw_os_error(28); // ENOSPC
        let eio = io::Error::from_raw_os_error(5); // EIO
        for source in [full, eio] {
            let e = StoreError::Io { context: "fdatasync".into(), source };
            assert!(!e.is_transient(), "{e}");
        }
    }
}
