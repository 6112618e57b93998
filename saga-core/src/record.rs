//! Log records, outcomes and their versioned encoding.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::id::OperationId;

/// The version byte in front of every encoded record. Raise it when the format changes, and keep
/// reading the older versions.
///
/// - 1: the first format.
/// - 2: adds [`RecordKind::PointOfNoReturnPassed`] and [`RecordKind::CancelRefused`]. A log of
///   version 1 reads as it did: its Operations never recorded passing the point of no return,
///   which the executor then reads from which steps started.
pub const FORMAT_VERSION: u8 = 2;

/// The resource an Operation changes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resource {
    /// Its type, such as `app` or `database`.
    pub kind: String,
    /// Its name.
    pub name: String,
}

impl Resource {
    /// A resource of this kind and name.
    pub fn new(kind: impl Into<String>, name: impl Into<String>) -> Self {
        Resource { kind: kind.into(), name: name.into() }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// One entry of an Operation's log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The Operation.
    pub operation: OperationId,
    /// Position in the Operation's log, from 0.
    pub seq: u64,
    /// When it was written, in Unix milliseconds.
    pub at_ms: u64,
    /// What happened.
    pub kind: RecordKind,
}

impl Record {
    /// When it was written, typed: [`Record::at_ms`] is the stored form.
    pub fn at(&self) -> crate::Timestamp {
        crate::Timestamp::from_unix_ms(self.at_ms)
    }
}

/// What a record says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RecordKind {
    /// The Operation was created. Always record 0.
    OperationCreated {
        /// The saga's name.
        saga: String,
        /// The saga's version.
        version: u32,
        /// The parameters, as JSON.
        params: Vec<u8>,
        /// The environment the Operation belongs to.
        environment: String,
        /// The resource it changes.
        resource: Resource,
        /// Who started it.
        actor: String,
    },
    /// An attempt of a step's `execute` is about to run.
    StepStarted {
        /// The step.
        step: String,
        /// The attempt, from 1.
        attempt: u32,
    },
    /// The step's `execute` returned an output.
    StepSucceeded {
        /// The step.
        step: String,
        /// The output, as JSON.
        output: Vec<u8>,
    },
    /// The step's `execute` returned an error.
    StepFailed {
        /// The step.
        step: String,
        /// The error's message.
        error: String,
        /// Whether another attempt follows.
        retryable: bool,
    },
    /// Someone asked to cancel the Operation.
    CancelRequested {
        /// Who.
        actor: String,
        /// Why.
        reason: String,
    },
    /// An attempt of a step's `compensate` is about to run.
    CompensationStarted {
        /// The step.
        step: String,
        /// The attempt, from 1.
        attempt: u32,
    },
    /// The step's `compensate` returned success.
    CompensationSucceeded {
        /// The step.
        step: String,
    },
    /// The step's `compensate` returned an error.
    CompensationFailed {
        /// The step.
        step: String,
        /// The error's message.
        error: String,
        /// Whether another attempt follows.
        retryable: bool,
    },
    /// The Operation reached its terminal outcome. Always the last record.
    OperationFinished {
        /// The outcome.
        outcome: Outcome,
    },
    // New variants go last: postcard encodes a variant by its index, so appending keeps every
    // log written before readable (see `FORMAT_VERSION`).
    /// The step's `execute` returned an error that says it had no effect
    /// ([`StepError::no_effect`](crate::StepError::no_effect)): the attempt changed nothing.
    StepFailedWithoutEffect {
        /// The step.
        step: String,
        /// The error's message.
        error: String,
        /// Whether another attempt follows.
        retryable: bool,
    },
    /// Past the point of no return, the step ran out of its retry policy: the Operation stops
    /// until an operator retries it ([`Executor::retry`](crate::Executor::retry)) or abandons
    /// it ([`Executor::abandon`](crate::Executor::abandon)).
    AttentionNeeded {
        /// The step.
        step: String,
        /// Its last error.
        error: String,
    },
    /// An operator asked to retry the step that needed attention; its retry policy starts over.
    AttentionRetried {
        /// Who.
        actor: String,
        /// Why.
        reason: String,
    },
    /// Every step up to the saga's point of no return succeeded and the executor is about to
    /// start the first step after it: from here a cancel is refused. The store appends it only
    /// while no cancel request is pending ([`RecordKind::is_cancel_barrier`]), which decides a
    /// cancel request and the crossing against each other.
    PointOfNoReturnPassed {
        /// The step marked as the point of no return.
        step: String,
    },
    /// A request to cancel the Operation was refused, and why: it came after the point of no
    /// return was passed. Appending it takes the store's pending request away, as
    /// `CancelRequested` does.
    CancelRefused {
        /// Who asked.
        actor: String,
        /// Why they asked.
        reason: String,
        /// When they asked (Unix ms).
        requested_ms: u64,
        /// Why it was refused.
        refusal: String,
    },
}

impl RecordKind {
    /// The step the record is about, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            RecordKind::StepStarted { step, .. }
            | RecordKind::StepSucceeded { step, .. }
            | RecordKind::StepFailed { step, .. }
            | RecordKind::CompensationStarted { step, .. }
            | RecordKind::CompensationSucceeded { step }
            | RecordKind::CompensationFailed { step, .. }
            | RecordKind::StepFailedWithoutEffect { step, .. }
            | RecordKind::AttentionNeeded { step, .. } => Some(step),
            RecordKind::OperationCreated { .. }
            | RecordKind::CancelRequested { .. }
            | RecordKind::AttentionRetried { .. }
            | RecordKind::OperationFinished { .. }
            | RecordKind::PointOfNoReturnPassed { .. }
            | RecordKind::CancelRefused { .. } => None,
        }
    }

    /// Whether an append holding this record must be refused while the Operation has a pending
    /// cancel request ([`StoreError::CancelPending`]): passing the point of no return, and
    /// finishing otherwise than by a rollback (succeeded, abandoned). So a request recorded
    /// before such an append always wins (the executor applies it, or records its refusal, and
    /// tries again), and none is ever dropped by a finish. See the [`Store`](crate::store::Store)
    /// contract.
    pub fn is_cancel_barrier(&self) -> bool {
        match self {
            RecordKind::PointOfNoReturnPassed { .. } => true,
            RecordKind::OperationFinished { outcome } => {
                matches!(outcome, Outcome::Succeeded | Outcome::Abandoned { .. })
            }
            _ => false,
        }
    }

    /// Whether the record settles what `Executor::wait` answers: the Operation finished, or
    /// stopped to wait for an operator.
    pub fn settles(&self) -> bool {
        matches!(self, RecordKind::OperationFinished { .. } | RecordKind::AttentionNeeded { .. })
    }

    /// Whether appending this record answers the Operation's pending cancel request, so that the
    /// store takes the request away in the same atomic write: the cancel recorded
    /// (`CancelRequested`), its refusal recorded (`CancelRefused`), or the Operation finished.
    pub fn answers_cancel_request(&self) -> bool {
        matches!(
            self,
            RecordKind::CancelRequested { .. }
                | RecordKind::CancelRefused { .. }
                | RecordKind::OperationFinished { .. }
        )
    }

    /// A short name of the record's variant, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            RecordKind::OperationCreated { .. } => "OperationCreated",
            RecordKind::StepStarted { .. } => "StepStarted",
            RecordKind::StepSucceeded { .. } => "StepSucceeded",
            RecordKind::StepFailed { .. } => "StepFailed",
            RecordKind::CancelRequested { .. } => "CancelRequested",
            RecordKind::CompensationStarted { .. } => "CompensationStarted",
            RecordKind::CompensationSucceeded { .. } => "CompensationSucceeded",
            RecordKind::CompensationFailed { .. } => "CompensationFailed",
            RecordKind::OperationFinished { .. } => "OperationFinished",
            RecordKind::StepFailedWithoutEffect { .. } => "StepFailedWithoutEffect",
            RecordKind::AttentionNeeded { .. } => "AttentionNeeded",
            RecordKind::AttentionRetried { .. } => "AttentionRetried",
            RecordKind::PointOfNoReturnPassed { .. } => "PointOfNoReturnPassed",
            RecordKind::CancelRefused { .. } => "CancelRefused",
        }
    }
}

/// Why an Operation rolled back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RollbackCause {
    /// A step failed permanently (or ran out of retries).
    StepFailed {
        /// The step.
        step: String,
        /// Its last error.
        error: String,
    },
    /// Someone cancelled the Operation.
    Cancelled {
        /// Who.
        actor: String,
        /// Why.
        reason: String,
    },
}

impl fmt::Display for RollbackCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RollbackCause::StepFailed { step, error } => write!(f, "step {step} failed: {error}"),
            RollbackCause::Cancelled { actor, reason } => {
                write!(f, "cancelled by {actor}: {reason}")
            }
        }
    }
}

/// A change that the rollback did not undo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotUndone {
    /// The step whose change stays.
    pub step: String,
    /// Why it stays.
    pub reason: NotUndoneReason,
}

/// Why a change was not undone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotUndoneReason {
    /// The step is irreversible.
    Irreversible,
    /// Its compensation failed, with this last error.
    CompensationFailed(String),
}

impl fmt::Display for NotUndone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            NotUndoneReason::Irreversible => write!(f, "{} (irreversible)", self.step),
            NotUndoneReason::CompensationFailed(error) => {
                write!(f, "{} (compensation failed: {error})", self.step)
            }
        }
    }
}

/// The terminal outcome of an Operation: exactly one per Operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Outcome {
    /// Every step succeeded.
    Succeeded,
    /// Every change was undone.
    RolledBack {
        /// Why it rolled back.
        cause: RollbackCause,
    },
    /// Some changes could not be undone; each is named with its reason.
    RollbackIncomplete {
        /// Why it rolled back.
        cause: RollbackCause,
        /// What stays, in the order the rollback met it.
        not_undone: Vec<NotUndone>,
    },
    /// Past its point of no return, a step needed attention and an operator abandoned the
    /// Operation: nothing was rolled back (the changes before the point of no return stay, as
    /// do the failing step's attempts), and the steps after it never ran.
    Abandoned {
        /// The step that needed attention.
        step: String,
        /// Its last error.
        error: String,
        /// Who abandoned the Operation.
        actor: String,
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// [`Status::Succeeded`](crate::Status::Succeeded), `RolledBack`, `RollbackIncomplete` or
    /// `Abandoned`.
    pub fn status(&self) -> crate::Status {
        crate::Status::of_outcome(self)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Succeeded => f.write_str("succeeded"),
            Outcome::RolledBack { .. } => f.write_str("rolled back"),
            Outcome::RollbackIncomplete { not_undone, .. } => {
                f.write_str("rollback incomplete: ")?;
                for (i, item) in not_undone.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                Ok(())
            }
            Outcome::Abandoned { step, error, actor, reason } => write!(
                f,
                "abandoned by {actor} ({reason}) at step {step}, past the point of no return \
                 (last error: {error})"
            ),
        }
    }
}

/// Encodes a record: the format version byte, then postcard. A record that does not serialize
/// is an error naming it ([`StoreError::Encode`]), never bytes that would not decode.
pub fn encode(record: &Record) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(record, vec![FORMAT_VERSION]).map_err(|e| StoreError::Encode {
        operation: record.operation,
        seq: record.seq,
        problem: e.to_string(),
    })
}

/// Decodes a record written by [`encode`]. `operation` and `position` name the record in the
/// error when the bytes are bad.
pub fn decode(bytes: &[u8], operation: OperationId, position: u64) -> Result<Record, StoreError> {
    let corrupt = |problem: String| StoreError::CorruptRecord { operation, position, problem };
    let (&version, body) = bytes.split_first().ok_or_else(|| corrupt("empty record".into()))?;
    if version > FORMAT_VERSION {
        return Err(StoreError::NewerFormat { found: version, supported: FORMAT_VERSION });
    }
    if version == 0 {
        return Err(corrupt("format version 0 does not exist".into()));
    }
    let (record, rest): (Record, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
    if !rest.is_empty() {
        return Err(corrupt(format!("{} trailing bytes", rest.len())));
    }
    if record.operation != operation {
        return Err(corrupt(format!("record belongs to operation {}", record.operation)));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            operation: OperationId::from_u128(7),
            seq: 3,
            at_ms: 1_700_000_000_000,
            kind: RecordKind::StepFailed {
                step: "a".into(),
                error: "boom".into(),
                retryable: true,
            },
        }
    }

    #[test]
    fn at_is_the_stored_milliseconds_typed() {
        assert_eq!(sample().at().unix_ms(), 1_700_000_000_000);
        assert_eq!(sample().at().to_string(), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn round_trips() {
        let r = sample();
        let bytes = encode(&r).expect("encodes");
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode(&bytes, r.operation, 3).expect("decodes"), r);
    }

    #[test]
    fn bad_bytes_are_typed_errors() {
        let r = sample();
        let bytes = encode(&r).expect("encodes");
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], r.operation, 3).is_err(), "cut at {cut}");
        }
        let mut newer = bytes.clone();
        newer[0] = FORMAT_VERSION + 1;
        assert!(matches!(decode(&newer, r.operation, 3), Err(StoreError::NewerFormat { .. })));
        let other = OperationId::from_u128(8);
        assert!(matches!(decode(&bytes, other, 3), Err(StoreError::CorruptRecord { .. })));
    }
}
