//! Log records, outcomes and their versioned encoding.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::id::OperationId;

/// The version byte in front of every value a store writes: records ([`encode`]), and the
/// stores' own values ([`encode_value`]: leases, cancel requests, log lines). A release reads
/// every older version, and refuses a newer one by name ([`StoreError::NewerFormat`]).
///
/// **The rule:** raise it whenever the bytes written change, including a new variant of
/// [`RecordKind`] or [`Outcome`] (postcard encodes a variant by its index, so an older release
/// would misread or refuse the new one without saying why), and add the new version's variants
/// to the table of the test `format_versions::every_variant_is_known_at_the_current_version`
/// (in this file), which fails until both are done.
///
/// - 1: the first format: the version byte, then postcard. (Three variants,
///   `StepFailedWithoutEffect`, `AttentionNeeded` and `AttentionRetried`, and
///   `Outcome::Abandoned`, were added within version 1, before the rule was tested.)
/// - 2: adds [`RecordKind::PointOfNoReturnPassed`] and [`RecordKind::CancelRefused`]. A log of
///   version 1 reads as it did: its Operations never recorded passing the point of no return,
///   which the executor then reads from which steps started.
/// - 3: every value ends with a checksum: the CRC32C (Castagnoli) of all the bytes before it,
///   as a little-endian `u32` (for a value bound to its key, [`encode_value`], of the key and
///   then those bytes), so that a store finds bytes its backend changed (sled keeps no
///   checksums of its own) instead of reading them as something else. Values of versions 1
///   and 2 have none and read as before. Every later version keeps this trailer, whatever it
///   changes before it, so that a newer value is told from a damaged one: a version byte above
///   this one is [`StoreError::NewerFormat`] only when the trailer matches.
pub const FORMAT_VERSION: u8 = 3;

/// The first version whose values end with the CRC32C trailer.
const CHECKSUMMED_FROM: u8 = 3;

/// The length of the trailer: a little-endian CRC32C.
const CHECKSUM_LEN: usize = 4;

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

/// The checksum of a value's bytes `covered` (all but the trailer), bound to `key`.
fn checksum(key: &[u8], covered: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(key), covered)
}

/// Appends the trailer of [`FORMAT_VERSION`] to `bytes`: the CRC32C of `key`, then of
/// everything before the trailer.
fn seal(mut bytes: Vec<u8>, key: &[u8]) -> Vec<u8> {
    let checksum = checksum(key, &bytes);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    bytes
}

/// Why a stored value's framing (version byte, checksum) does not read.
enum Unframed {
    /// A version newer than this release, with a matching trailer.
    Newer(u8),
    /// Damaged: what is wrong.
    Corrupt(String),
}

/// The postcard body of a stored value, once its version byte and (from version 3 on) its
/// checksum, bound to `key`, are checked.
fn body<'a>(bytes: &'a [u8], key: &[u8]) -> Result<&'a [u8], Unframed> {
    let Some((&version, rest)) = bytes.split_first() else {
        return Err(Unframed::Corrupt("the value is empty".into()));
    };
    if version == 0 {
        return Err(Unframed::Corrupt("format version 0 does not exist".into()));
    }
    if version < CHECKSUMMED_FROM {
        return Ok(rest);
    }
    let Some(split) = bytes.len().checked_sub(CHECKSUM_LEN).filter(|&at| at >= 1) else {
        return Err(Unframed::Corrupt(format!(
            "{} bytes of format version {version} are too few to hold its {CHECKSUM_LEN}-byte \
             checksum",
            bytes.len()
        )));
    };
    let (covered, trailer) = bytes.split_at(split);
    let mut stored = [0u8; CHECKSUM_LEN];
    stored.copy_from_slice(trailer);
    let stored = u32::from_le_bytes(stored);
    let computed = checksum(key, covered);
    if stored != computed {
        return Err(Unframed::Corrupt(format!(
            "checksum mismatch (stored CRC32C {stored:#010x}, computed {computed:#010x})"
        )));
    }
    if version > FORMAT_VERSION {
        return Err(Unframed::Newer(version));
    }
    Ok(&covered[1..])
}

/// Decodes a postcard body that must hold exactly one `T`.
fn from_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let (value, rest): (T, &[u8]) = postcard::take_from_bytes(body).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes after the value", rest.len()));
    }
    Ok(value)
}

/// Encodes a record in [`FORMAT_VERSION`]: the version byte, postcard, then the CRC32C of all
/// the bytes before it (little-endian `u32`). A record that does not serialize is an error
/// naming it ([`StoreError::Encode`]), never bytes that would not decode.
pub fn encode(record: &Record) -> Result<Vec<u8>, StoreError> {
    let bytes = postcard::to_extend(record, vec![FORMAT_VERSION]).map_err(|e| {
        StoreError::Encode { operation: record.operation, seq: record.seq, problem: e.to_string() }
    })?;
    Ok(seal(bytes, &[]))
}

/// Decodes a record written by [`encode`], of this release or an earlier one (versions 1 and 2
/// have no checksum), stored as record `position` of `operation`.
///
/// # Errors
///
/// [`StoreError::NewerFormat`] for a record of a newer release (its checksum matching), and
/// [`StoreError::CorruptRecord`] naming `operation` and `position` for anything else wrong:
/// bytes whose checksum does not match, that do not decode, or that are the record of another
/// Operation or another position (so that a damaged key never moves a record).
pub fn decode(bytes: &[u8], operation: OperationId, position: u64) -> Result<Record, StoreError> {
    let corrupt = |problem: String| StoreError::CorruptRecord { operation, position, problem };
    let body = body(bytes, &[]).map_err(|e| match e {
        Unframed::Newer(found) => StoreError::NewerFormat { found, supported: FORMAT_VERSION },
        Unframed::Corrupt(problem) => corrupt(problem),
    })?;
    let record: Record = from_body(body).map_err(corrupt)?;
    if record.operation != operation {
        return Err(corrupt(format!("the bytes are a record of operation {}", record.operation)));
    }
    if record.seq != position {
        return Err(corrupt(format!("the bytes are record {} of the operation", record.seq)));
    }
    Ok(record)
}

/// Encodes any other value a store keeps (a lease, a cancel request, a log line) as records
/// are ([`encode`]): the [`FORMAT_VERSION`] byte, postcard, then the CRC32C trailer, computed
/// over `key` and then the bytes before the trailer. `key` binds the value to where it is
/// stored, so that the value read under another key (a damaged key) does not match: pass the
/// store's key for a value that does not name its own place (a lease or a cancel request,
/// stored under its Operation's id), or nothing (`&[]`) for one that does (a log line names
/// its Operation and number, which [`decode_value`]'s caller compares). `what` names the value
/// in the error ([`StoreError::Backend`]) when it does not serialize.
pub fn encode_value<T: Serialize + ?Sized>(
    value: &T,
    key: &[u8],
    what: &str,
) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(value, vec![FORMAT_VERSION])
        .map(|bytes| seal(bytes, key))
        .map_err(|e| StoreError::backend(format!("encoding {what}"), e))
}

/// Decodes a value written by [`encode_value`] with the same `key`, of this release or an
/// earlier one (versions 1 and 2: the version byte and postcard, without a checksum). `place`
/// says where the value is stored, for the error.
///
/// # Errors
///
/// [`StoreError::NewerFormat`] for a value of a newer release (its checksum matching), and
/// [`StoreError::Corrupt`] at `place()` for bytes whose checksum does not match or that do
/// not decode.
pub fn decode_value<T: DeserializeOwned>(
    bytes: &[u8],
    key: &[u8],
    place: &dyn Fn() -> String,
) -> Result<T, StoreError> {
    let corrupt = |problem: String| StoreError::Corrupt { place: place(), problem };
    let body = body(bytes, key).map_err(|e| match e {
        Unframed::Newer(found) => StoreError::NewerFormat { found, supported: FORMAT_VERSION },
        Unframed::Corrupt(problem) => corrupt(problem),
    })?;
    from_body(body).map_err(corrupt)
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
        let (covered, trailer) = bytes.split_at(bytes.len() - 4);
        assert_eq!(trailer, crc32c::crc32c(covered).to_le_bytes(), "the CRC32C trailer");
        assert_eq!(decode(&bytes, r.operation, 3).expect("decodes"), r);
    }

    /// A record as releases of versions 1 and 2 wrote it: the version byte, then postcard.
    fn unsealed(record: &Record, version: u8) -> Vec<u8> {
        postcard::to_extend(record, vec![version]).expect("encodes")
    }

    /// `bytes` with the version byte `version` and the trailer made again: what a newer release
    /// that kept the trailer would write.
    fn resealed(bytes: &[u8], version: u8) -> Vec<u8> {
        let mut body = bytes[..bytes.len() - 4].to_vec();
        body[0] = version;
        seal(body, &[])
    }

    #[test]
    fn versions_1_and_2_read_without_a_checksum() {
        let r = sample();
        for version in [1, 2] {
            let bytes = unsealed(&r, version);
            assert_eq!(decode(&bytes, r.operation, 3).expect("decodes"), r, "version {version}");
            // A trailer on an old version is four bytes too many.
            let sealed = seal(bytes, &[]);
            assert!(matches!(
                decode(&sealed, r.operation, 3),
                Err(StoreError::CorruptRecord { ref problem, .. }) if problem.contains("4 trailing bytes")
            ));
        }
    }

    #[test]
    fn bad_bytes_are_typed_errors() {
        let r = sample();
        let bytes = encode(&r).expect("encodes");
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], r.operation, 3).is_err(), "cut at {cut}");
        }
        // A newer release's record: refused by name when its checksum matches, and damaged
        // when it does not.
        let newer = resealed(&bytes, FORMAT_VERSION + 1);
        assert!(matches!(
            decode(&newer, r.operation, 3),
            Err(StoreError::NewerFormat { found, supported: FORMAT_VERSION }) if found == FORMAT_VERSION + 1
        ));
        let mut flipped = bytes.clone();
        flipped[0] = FORMAT_VERSION + 1;
        assert!(matches!(decode(&flipped, r.operation, 3), Err(StoreError::CorruptRecord { .. })));
        let other = OperationId::from_u128(8);
        assert!(matches!(decode(&bytes, other, 3), Err(StoreError::CorruptRecord { .. })));
    }

    #[test]
    fn a_record_read_at_another_position_is_corrupt() {
        let r = sample();
        let bytes = encode(&r).expect("encodes");
        match decode(&bytes, r.operation, 4) {
            Err(e @ StoreError::CorruptRecord { position: 4, .. }) => {
                assert_eq!(
                    e.to_string(),
                    format!(
                        "operation {}: record at position 4 is corrupt: the bytes are record 3 \
                         of the operation",
                        r.operation
                    )
                );
            }
            other => panic!("expected a corrupt record, got {other:?}"),
        }
    }

    #[test]
    fn a_checksum_mismatch_says_both_checksums() {
        let r = sample();
        let mut bytes = encode(&r).expect("encodes");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let stored = u32::from_le_bytes(bytes[last - 3..].try_into().expect("4 bytes"));
        let computed = crc32c::crc32c(&bytes[..last - 3]);
        match decode(&bytes, r.operation, 3) {
            Err(e @ StoreError::CorruptRecord { position: 3, .. }) => assert_eq!(
                e.to_string(),
                format!(
                    "operation {}: record at position 3 is corrupt: checksum mismatch (stored \
                     CRC32C {stored:#010x}, computed {computed:#010x})",
                    r.operation
                )
            ),
            other => panic!("expected a checksum mismatch, got {other:?}"),
        }
    }

    /// Every byte of `bytes` changed in the ways given by `masks`: `decode` must fail, never
    /// return other content.
    fn every_byte_changed<T: fmt::Debug>(
        bytes: &[u8],
        masks: &[u8],
        decode: impl Fn(&[u8]) -> Result<T, StoreError>,
    ) {
        for at in 0..bytes.len() {
            for &mask in masks {
                let mut changed = bytes.to_vec();
                changed[at] ^= mask;
                if let Ok(value) = decode(&changed) {
                    panic!("byte {at} xor {mask:#04x} still decodes, as {value:?}");
                }
            }
        }
    }

    #[test]
    fn every_byte_flipped_is_an_error() {
        let long = Record {
            operation: OperationId::from_u128(0x0190_1234_5678_9abc_def0_1234_5678_9abc),
            seq: 300,
            at_ms: 1_700_000_000_000,
            kind: RecordKind::OperationFinished {
                outcome: Outcome::RollbackIncomplete {
                    cause: RollbackCause::Cancelled { actor: "amy".into(), reason: "stop".into() },
                    not_undone: vec![NotUndone {
                        step: "dns".into(),
                        reason: NotUndoneReason::CompensationFailed("timeout".into()),
                    }],
                },
            },
        };
        let bytes = encode(&long).expect("encodes");
        // Every value of every byte but the one stored.
        let masks: Vec<u8> = (1..=255).collect();
        every_byte_changed(&bytes, &masks, |b| decode(b, long.operation, 300));
    }

    #[test]
    fn every_bit_flipped_in_a_short_record_is_an_error() {
        let short = Record {
            operation: OperationId::from_u128(1),
            seq: 0,
            at_ms: 0,
            kind: RecordKind::CompensationSucceeded { step: String::new() },
        };
        let bytes = encode(&short).expect("encodes");
        let masks: Vec<u8> = (0..8).map(|bit| 1 << bit).collect();
        every_byte_changed(&bytes, &masks, |b| decode(b, short.operation, 0));
    }

    #[test]
    fn values_are_framed_as_records_and_bound_to_their_key() {
        let value = ("owner".to_owned(), 7u64);
        let key = [0x01, 0x90, 0x00, 0x07];
        let place = || "the test value".to_owned();
        let decode = |b: &[u8], key: &[u8]| decode_value::<(String, u64)>(b, key, &place);
        let bytes = encode_value(&value, &key, "a test value").expect("encodes");
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode(&bytes, &key).expect("decodes"), value);
        let (covered, trailer) = bytes.split_at(bytes.len() - 4);
        let mut keyed = key.to_vec();
        keyed.extend_from_slice(covered);
        assert_eq!(trailer, crc32c::crc32c(&keyed).to_le_bytes(), "the key, then the bytes");
        let old = postcard::to_extend(&value, vec![2]).expect("encodes");
        assert_eq!(decode(&old, &key).expect("an old value has no checksum"), value);

        let masks: Vec<u8> = (1..=255).collect();
        every_byte_changed(&bytes, &masks, |b| decode(b, &key));
        // Read under another key: each byte of the key changed.
        every_byte_changed(&key, &masks, |k| decode(&bytes, k));
        let mut bad = bytes.clone();
        bad[3] ^= 0x20;
        let e = decode(&bad, &key).expect_err("damaged");
        assert!(
            matches!(&e, StoreError::Corrupt { place, problem }
                if place == "the test value" && problem.starts_with("checksum mismatch")),
            "{e}"
        );
        let mut newer = bytes[..bytes.len() - 4].to_vec();
        newer[0] = FORMAT_VERSION + 1;
        let newer = seal(newer, &key);
        assert!(matches!(decode(&newer, &key), Err(StoreError::NewerFormat { .. })));
    }
}

/// The variants of the stored enums known at each format version, and the test that a new one
/// comes with a new version (see [`FORMAT_VERSION`]).
#[cfg(test)]
mod format_versions {
    use std::cell::RefCell;
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::Deserialize;

    use super::*;

    /// The variant names of one enum: its name, then theirs in declaration order.
    type Variants = (&'static str, &'static [&'static str]);

    /// The variant names of the enums a record holds, at each format version: from the git
    /// history of this file (the last commit writing each version).
    const KNOWN: &[(u8, &[Variants])] = &[
        (1, &[("RecordKind", RECORD_KINDS_1), ("Outcome", OUTCOMES)]),
        (2, &[("RecordKind", RECORD_KINDS_2), ("Outcome", OUTCOMES)]),
        // Version 3 added the checksum trailer, and no variant.
        (3, &[("RecordKind", RECORD_KINDS_2), ("Outcome", OUTCOMES)]),
    ];

    const RECORD_KINDS_1: &[&str] = &[
        "OperationCreated",
        "StepStarted",
        "StepSucceeded",
        "StepFailed",
        "CancelRequested",
        "CompensationStarted",
        "CompensationSucceeded",
        "CompensationFailed",
        "OperationFinished",
        "StepFailedWithoutEffect",
        "AttentionNeeded",
        "AttentionRetried",
    ];

    const RECORD_KINDS_2: &[&str] = &[
        "OperationCreated",
        "StepStarted",
        "StepSucceeded",
        "StepFailed",
        "CancelRequested",
        "CompensationStarted",
        "CompensationSucceeded",
        "CompensationFailed",
        "OperationFinished",
        "StepFailedWithoutEffect",
        "AttentionNeeded",
        "AttentionRetried",
        "PointOfNoReturnPassed",
        "CancelRefused",
    ];

    const OUTCOMES: &[&str] = &["Succeeded", "RolledBack", "RollbackIncomplete", "Abandoned"];

    /// What [`TakeVariants`] stops deserializing with.
    #[derive(Debug)]
    struct Stop(String);

    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Stop {}

    impl de::Error for Stop {
        fn custom<T: fmt::Display>(msg: T) -> Self {
            Stop(msg.to_string())
        }
    }

    /// A deserializer that reads nothing: it keeps the variant names that
    /// `#[derive(Deserialize)]` of an enum hands to `deserialize_enum`, and stops.
    struct TakeVariants<'a>(&'a RefCell<Option<&'static [&'static str]>>);

    impl<'de> de::Deserializer<'de> for TakeVariants<'_> {
        type Error = Stop;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop("not an enum".into()))
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0.borrow_mut() = Some(variants);
            Err(Stop("variants taken".into()))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
            ignored_any
        }
    }

    /// The variant names of `T`, an enum deriving `Deserialize`, in declaration order.
    fn variants_of<T: for<'de> Deserialize<'de>>() -> Vec<&'static str> {
        let taken = RefCell::new(None);
        let _ = T::deserialize(TakeVariants(&taken));
        taken.into_inner().expect("an enum deriving Deserialize").to_vec()
    }

    #[test]
    fn the_deserializer_takes_the_variants_in_order() {
        assert_eq!(variants_of::<NotUndoneReason>(), ["Irreversible", "CompensationFailed"]);
    }

    #[test]
    fn every_variant_is_known_at_the_current_version() {
        let current =
            [("RecordKind", variants_of::<RecordKind>()), ("Outcome", variants_of::<Outcome>())];
        let known = KNOWN.iter().find(|(version, _)| *version == FORMAT_VERSION);
        let Some((_, known)) = known else {
            panic!(
                "FORMAT_VERSION is {FORMAT_VERSION}, and the table KNOWN in saga-core's \
                 record.rs has no entry for it: add one listing the variants of this version"
            );
        };
        for (name, variants) in &current {
            let listed = known.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_vec());
            assert_eq!(
                listed.as_ref(),
                Some(variants),
                "the variants of {name} are not those the table KNOWN lists for format version \
                 {FORMAT_VERSION}: a variant changes the bytes stores write, so bump \
                 FORMAT_VERSION (saga-core's record.rs), say what the new version adds in its \
                 docs, and add an entry for it to KNOWN (new variants go last)"
            );
        }
        // Each version's variants start with the previous version's: an older release's
        // records keep their meaning.
        for pair in KNOWN.windows(2) {
            let ((older, before), (newer, after)) = (&pair[0], &pair[1]);
            assert_eq!(*newer, older + 1, "the table lists every version in order");
            for ((name, old), (same, new)) in before.iter().zip(after.iter()) {
                assert_eq!(name, same);
                assert!(new.starts_with(old), "{name}: version {newer} reorders variants");
            }
        }
    }
}
