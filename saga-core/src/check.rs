//! Consistency checks of a store: its indexes reconciled with its records.

use std::fmt;

use crate::error::StoreError;
use crate::id::OperationId;

/// What [`Store::check`](crate::store::Store::check) found: every mismatch between the store's indexes
/// and its records, and whether it was repaired.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// How many Operations' records were read.
    pub operations: u64,
    /// Every mismatch, in the order found.
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// Whether nothing is wrong, or everything wrong was repaired.
    pub fn is_healthy(&self) -> bool {
        self.findings.iter().all(|f| f.repaired)
    }
}

/// One mismatch found by a check.
#[derive(Debug)]
pub struct Finding {
    /// The Operation it concerns, when an id can be read.
    pub operation: Option<OperationId>,
    /// What is wrong.
    pub problem: Problem,
    /// Whether the check repaired it (only when asked to, and only from the records alone).
    pub repaired: bool,
}

/// What a check found wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum Problem {
    /// The records have no `OperationFinished`, but the unfinished index does not list the
    /// Operation, so recovery would never resume it. Repair: list it.
    MissingUnfinishedMark,
    /// The records end with `OperationFinished`, but the unfinished index still lists the
    /// Operation. Repair: unlist it.
    StaleUnfinishedMark,
    /// The environment index has no entry for the Operation, so no report shows it. Repair: add
    /// the entry from its `OperationCreated` record.
    MissingIndexEntry,
    /// An index entry (`index` names which) names an Operation that has no records, or an entry
    /// disagreeing with its `OperationCreated` record. Repair: remove the entry.
    DanglingEntry {
        /// The index (`unfinished`, `by_environment`, `leases`, `cancels`, `logs`).
        index: String,
    },
    /// An index entry whose key or value does not decode, or whose checksum does not match.
    /// Repair: remove it (the records alone say what it should have been, and the other repairs
    /// re-create it); an entry whose value alone is damaged, its key confirmed by the records,
    /// gets its value written again instead.
    DamagedEntry {
        /// The index.
        index: String,
        /// The decoder's error, saying where.
        cause: StoreError,
    },
    /// The Operation's records do not read (a record that does not decode, a gap, a first record
    /// that is not `OperationCreated`). Not repairable from the records alone.
    DamagedRecords(StoreError),
    /// Opening the store cut a torn write off the end of its write-ahead log: a group of writes
    /// whose sync never returned, so nothing in it was acknowledged. Repaired by the cut; said so
    /// that no cut is silent (a disk that damaged an acknowledged write at the very end of the log
    /// would look the same, unless the damage is one flipped bit, which opening refuses).
    TornTailCut {
        /// The log file.
        file: String,
        /// Where the log now ends in it.
        offset: u64,
        /// How many bytes of the torn write were cut.
        bytes: u64,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::MissingUnfinishedMark => {
                f.write_str("unfinished, but missing from the unfinished index")
            }
            Problem::StaleUnfinishedMark => {
                f.write_str("finished, but still listed in the unfinished index")
            }
            Problem::MissingIndexEntry => f.write_str("missing from the environment index"),
            Problem::DanglingEntry { index } => {
                write!(f, "the {index} index names it, but it has no matching records")
            }
            Problem::DamagedEntry { index, cause } => {
                write!(f, "a damaged entry in the {index} index: {cause}")
            }
            Problem::DamagedRecords(cause) => write!(f, "its records do not read: {cause}"),
            Problem::TornTailCut { file, offset, bytes } => write!(
                f,
                "opening cut a torn write off the end of the write-ahead log: {bytes} bytes at \
                 offset {offset} of {file} (a write whose sync never returned, so nothing \
                 acknowledged)"
            ),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.operation {
            Some(id) => write!(f, "operation {id}: {}", self.problem)?,
            None => write!(f, "{}", self.problem)?,
        }
        if self.repaired {
            f.write_str(" (repaired)")?;
        }
        Ok(())
    }
}

/// What an Operation's records say its marks in a store's indexes must be: the shared rule of
/// every store's [`check`](crate::store::Store::check), which then compares them with its own
/// index entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectedMarks<'a> {
    /// Whether its log ends with `OperationFinished` (else it must be marked unfinished).
    pub finished: bool,
    /// The environment its index entry must name.
    pub environment: &'a str,
    /// The creation time its index entry must carry (Unix ms, its first record's).
    pub created_ms: u64,
    /// The resource whose queue lists it while unfinished.
    pub resource: &'a crate::record::Resource,
}

impl<'a> ExpectedMarks<'a> {
    /// The marks of Operation `operation`, from its records.
    ///
    /// # Errors
    ///
    /// [`StoreError::CorruptRecord`] (position 0) when the first record is missing or not
    /// `OperationCreated`: a check reports it as [`Problem::DamagedRecords`] and repairs nothing.
    pub fn of(
        operation: OperationId,
        records: &'a [crate::record::Record],
    ) -> Result<Self, StoreError> {
        use crate::record::RecordKind;
        let Some(first) = records.first() else {
            return Err(StoreError::CorruptRecord {
                operation,
                position: 0,
                problem: "the operation has no records".into(),
            });
        };
        let RecordKind::OperationCreated { environment, resource, .. } = &first.kind else {
            return Err(StoreError::CorruptRecord {
                operation,
                position: 0,
                problem: "the first record is not OperationCreated".into(),
            });
        };
        let finished =
            records.last().is_some_and(|r| matches!(r.kind, RecordKind::OperationFinished { .. }));
        Ok(ExpectedMarks { finished, environment, created_ms: first.at_ms, resource })
    }

    /// What is wrong with the unfinished mark, given whether the store has it: a finished
    /// Operation still marked ([`Problem::StaleUnfinishedMark`]: remove the mark), or an
    /// unfinished one not marked ([`Problem::MissingUnfinishedMark`]: add it).
    pub fn unfinished_mark_problem(&self, marked_unfinished: bool) -> Option<Problem> {
        match (self.finished, marked_unfinished) {
            (true, true) => Some(Problem::StaleUnfinishedMark),
            (false, false) => Some(Problem::MissingUnfinishedMark),
            _ => None,
        }
    }
}
