//! The pure fold from an Operation's records to its state.
//!
//! [`OperationState::apply`] is an explicit state machine: every record is checked against the
//! state before it and an illegal one is an [`Error::IllegalRecord`] naming the Operation and the
//! record's sequence number. The executor derives all its decisions from this state.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::Error;
use crate::id::OperationId;
use crate::record::{Outcome, Record, RecordKind, Resource, RollbackCause};

/// Where a step's `execute` stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Execution {
    /// An attempt started and its outcome is not recorded: running now, or unknown after a crash.
    Running,
    /// An attempt failed and another will follow.
    Retrying {
        /// The last error.
        error: String,
    },
    /// It succeeded with this output (JSON).
    Succeeded {
        /// The recorded output.
        output: Arc<[u8]>,
    },
    /// It failed for good.
    Failed {
        /// The last error.
        error: String,
    },
}

/// Where a step's `compensate` stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compensation {
    /// Not started.
    NotStarted,
    /// An attempt started and its outcome is not recorded.
    Running,
    /// An attempt failed and another will follow.
    Retrying {
        /// The last error.
        error: String,
    },
    /// The change was undone.
    Succeeded,
    /// It failed for good; the change stays.
    Failed {
        /// The last error.
        error: String,
    },
}

impl Compensation {
    /// Whether no more compensation attempts will run.
    pub fn is_done(&self) -> bool {
        matches!(self, Compensation::Succeeded | Compensation::Failed { .. })
    }
}

/// One step's state, as its records say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepState {
    /// The step's name.
    pub name: String,
    /// How many `execute` attempts started.
    pub attempts: u32,
    /// When the first attempt started (Unix ms).
    pub first_started_ms: u64,
    /// Where `execute` stands.
    pub execution: Execution,
    /// The sequence number of the record that ended `execute` (succeeded or failed for good).
    pub completed_seq: Option<u64>,
    /// How many `compensate` attempts started.
    pub compensation_attempts: u32,
    /// When the first compensation attempt started (Unix ms).
    pub compensation_first_started_ms: u64,
    /// Where `compensate` stands.
    pub compensation: Compensation,
}

/// The phase of an Operation, derived from its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Executing steps forward.
    Running,
    /// A step failed for good or a cancel was recorded: compensating.
    RollingBack,
    /// It reached its outcome.
    Finished,
}

/// An Operation's state: the fold of its records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationState {
    /// The Operation.
    pub id: OperationId,
    /// The saga's name.
    pub saga: String,
    /// The saga's version.
    pub version: u32,
    /// The parameters (JSON).
    pub params: Arc<[u8]>,
    /// The environment.
    pub environment: String,
    /// The resource changed.
    pub resource: Resource,
    /// Who started it.
    pub actor: String,
    /// When it was created (Unix ms).
    pub created_ms: u64,
    /// The steps that started, in the order they first started.
    pub steps: Vec<StepState>,
    /// The cancel request, if any: (actor, reason).
    pub cancel: Option<(String, String)>,
    /// The step failure that started the rollback, if any: (step, error).
    pub failure: Option<(String, String)>,
    /// The outcome, once finished.
    pub outcome: Option<Outcome>,
    /// When it finished (Unix ms).
    pub finished_ms: Option<u64>,
    /// The sequence number the next record must have.
    pub next_seq: u64,
    index: HashMap<String, usize>,
}

impl OperationState {
    /// Folds a whole log. The first record must be `OperationCreated` with sequence number 0.
    pub fn fold<'a>(
        operation: OperationId,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Result<Self, Error> {
        let mut records = records.into_iter();
        let first = records.next().ok_or_else(|| Error::IllegalRecord {
            operation,
            seq: 0,
            problem: "the log is empty".into(),
        })?;
        let mut state = Self::created(first)?;
        if state.id != operation {
            return Err(Error::IllegalRecord {
                operation,
                seq: 0,
                problem: format!("record belongs to operation {}", state.id),
            });
        }
        for record in records {
            state.apply(record)?;
        }
        Ok(state)
    }

    /// The state after the first record, which must be `OperationCreated` with sequence number 0.
    pub fn created(record: &Record) -> Result<Self, Error> {
        let illegal = |problem: &str| Error::IllegalRecord {
            operation: record.operation,
            seq: record.seq,
            problem: problem.to_owned(),
        };
        if record.seq != 0 {
            return Err(illegal("the first record must have sequence number 0"));
        }
        match &record.kind {
            RecordKind::OperationCreated {
                saga,
                version,
                params,
                environment,
                resource,
                actor,
            } => Ok(OperationState {
                id: record.operation,
                saga: saga.clone(),
                version: *version,
                params: Arc::from(params.as_slice()),
                environment: environment.clone(),
                resource: resource.clone(),
                actor: actor.clone(),
                created_ms: record.at_ms,
                steps: Vec::new(),
                cancel: None,
                failure: None,
                outcome: None,
                finished_ms: None,
                next_seq: 1,
                index: HashMap::new(),
            }),
            other => Err(illegal(&format!(
                "the first record must be OperationCreated, not {}",
                other.name()
            ))),
        }
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        if self.outcome.is_some() {
            Phase::Finished
        } else if self.cancel.is_some() || self.failure.is_some() {
            Phase::RollingBack
        } else {
            Phase::Running
        }
    }

    /// Why it is rolling back (or rolled back), if it is.
    pub fn rollback_cause(&self) -> Option<RollbackCause> {
        // A cancel recorded first wins over the failures of steps it interrupted.
        match (&self.cancel, &self.failure) {
            (Some((actor, reason)), _) => {
                Some(RollbackCause::Cancelled { actor: actor.clone(), reason: reason.clone() })
            }
            (None, Some((step, error))) => {
                Some(RollbackCause::StepFailed { step: step.clone(), error: error.clone() })
            }
            (None, None) => None,
        }
    }

    /// A step's state, if it started.
    pub fn step(&self, name: &str) -> Option<&StepState> {
        self.index.get(name).map(|&i| &self.steps[i])
    }

    /// Applies one record, or says why it cannot follow the records before it.
    pub fn apply(&mut self, record: &Record) -> Result<(), Error> {
        let illegal =
            |problem: String| Error::IllegalRecord { operation: self.id, seq: record.seq, problem };
        if record.operation != self.id {
            return Err(illegal(format!("record belongs to operation {}", record.operation)));
        }
        if record.seq != self.next_seq {
            return Err(illegal(format!("expected sequence number {}", self.next_seq)));
        }
        if self.outcome.is_some() {
            return Err(illegal(format!("{} after the operation finished", record.kind.name())));
        }
        match &record.kind {
            RecordKind::OperationCreated { .. } => {
                return Err(illegal("a second OperationCreated".into()));
            }
            RecordKind::StepStarted { step, attempt } => {
                if self.phase() != Phase::Running {
                    return Err(illegal(format!("step {step} started while rolling back")));
                }
                match self.index.get(step) {
                    None => {
                        if *attempt != 1 {
                            return Err(illegal(format!(
                                "step {step} started with attempt {attempt}, expected 1"
                            )));
                        }
                        self.index.insert(step.clone(), self.steps.len());
                        self.steps.push(StepState {
                            name: step.clone(),
                            attempts: 1,
                            first_started_ms: record.at_ms,
                            execution: Execution::Running,
                            completed_seq: None,
                            compensation_attempts: 0,
                            compensation_first_started_ms: 0,
                            compensation: Compensation::NotStarted,
                        });
                    }
                    Some(&i) => {
                        let s = &mut self.steps[i];
                        if !matches!(s.execution, Execution::Running | Execution::Retrying { .. }) {
                            return Err(illegal(format!("step {step} started after it ended")));
                        }
                        if *attempt != s.attempts + 1 {
                            return Err(illegal(format!(
                                "step {step} started with attempt {attempt}, expected {}",
                                s.attempts + 1
                            )));
                        }
                        s.attempts = *attempt;
                        s.execution = Execution::Running;
                    }
                }
            }
            RecordKind::StepSucceeded { step, output } => {
                let seq = record.seq;
                let s = self.running_step(step, record.seq, "succeeded")?;
                s.execution = Execution::Succeeded { output: Arc::from(output.as_slice()) };
                s.completed_seq = Some(seq);
            }
            RecordKind::StepFailed { step, error, retryable } => {
                let seq = record.seq;
                let s = self.running_step(step, record.seq, "failed")?;
                if *retryable {
                    s.execution = Execution::Retrying { error: error.clone() };
                } else {
                    s.execution = Execution::Failed { error: error.clone() };
                    s.completed_seq = Some(seq);
                    if self.failure.is_none() {
                        self.failure = Some((step.clone(), error.clone()));
                    }
                }
            }
            RecordKind::CancelRequested { actor, reason } => {
                if self.cancel.is_some() {
                    return Err(illegal("a second CancelRequested".into()));
                }
                self.cancel = Some((actor.clone(), reason.clone()));
            }
            RecordKind::CompensationStarted { step, attempt } => {
                if self.phase() != Phase::RollingBack {
                    return Err(illegal(format!(
                        "compensation of step {step} started while not rolling back"
                    )));
                }
                let Some(&i) = self.index.get(step) else {
                    return Err(illegal(format!(
                        "compensation of step {step}, which never started"
                    )));
                };
                let s = &mut self.steps[i];
                if s.compensation.is_done() {
                    return Err(illegal(format!(
                        "compensation of step {step} started after it ended"
                    )));
                }
                if *attempt != s.compensation_attempts + 1 {
                    return Err(illegal(format!(
                        "compensation of step {step} started with attempt {attempt}, expected {}",
                        s.compensation_attempts + 1
                    )));
                }
                if s.compensation_attempts == 0 {
                    s.compensation_first_started_ms = record.at_ms;
                }
                s.compensation_attempts = *attempt;
                s.compensation = Compensation::Running;
            }
            RecordKind::CompensationSucceeded { step } => {
                let s = self.compensating_step(step, record.seq, "succeeded")?;
                s.compensation = Compensation::Succeeded;
            }
            RecordKind::CompensationFailed { step, error, retryable } => {
                let s = self.compensating_step(step, record.seq, "failed")?;
                s.compensation = if *retryable {
                    Compensation::Retrying { error: error.clone() }
                } else {
                    Compensation::Failed { error: error.clone() }
                };
            }
            RecordKind::OperationFinished { outcome } => {
                // While rolling back, an execute still "running" is one whose outcome a crash lost
                // (the executor waits for the executes it runs before finishing); it was
                // compensated with `Executed::Unknown`. A running compensation is always illegal.
                let rolling_back = self.phase() == Phase::RollingBack;
                if let Some(s) = self.steps.iter().find(|s| {
                    (s.execution == Execution::Running && !rolling_back)
                        || s.compensation == Compensation::Running
                }) {
                    return Err(illegal(format!(
                        "operation finished while step {} was running",
                        s.name
                    )));
                }
                let consistent = match outcome {
                    Outcome::Succeeded => self.phase() == Phase::Running,
                    Outcome::RolledBack { .. } | Outcome::RollbackIncomplete { .. } => {
                        self.phase() == Phase::RollingBack
                    }
                };
                if !consistent {
                    return Err(illegal(format!(
                        "outcome {} does not match the phase {:?}",
                        outcome.status(),
                        self.phase()
                    )));
                }
                self.outcome = Some(outcome.clone());
                self.finished_ms = Some(record.at_ms);
            }
        }
        self.next_seq += 1;
        Ok(())
    }

    fn running_step(&mut self, step: &str, seq: u64, what: &str) -> Result<&mut StepState, Error> {
        let id = self.id;
        match self.index.get(step) {
            Some(&i) if self.steps[i].execution == Execution::Running => Ok(&mut self.steps[i]),
            Some(_) => Err(Error::IllegalRecord {
                operation: id,
                seq,
                problem: format!("step {step} {what} while no attempt of it was running"),
            }),
            None => Err(Error::IllegalRecord {
                operation: id,
                seq,
                problem: format!("step {step} {what} before it started"),
            }),
        }
    }

    fn compensating_step(
        &mut self,
        step: &str,
        seq: u64,
        what: &str,
    ) -> Result<&mut StepState, Error> {
        let id = self.id;
        match self.index.get(step) {
            Some(&i) if self.steps[i].compensation == Compensation::Running => {
                Ok(&mut self.steps[i])
            }
            _ => Err(Error::IllegalRecord {
                operation: id,
                seq,
                problem: format!("compensation of step {step} {what} while not running"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, kind: RecordKind) -> Record {
        Record { operation: OperationId::from_u128(1), seq, at_ms: seq, kind }
    }

    fn created() -> Record {
        rec(
            0,
            RecordKind::OperationCreated {
                saga: "s".into(),
                version: 1,
                params: b"null".to_vec(),
                environment: "prod".into(),
                resource: Resource::new("app", "web"),
                actor: "alice".into(),
            },
        )
    }

    fn started(seq: u64, step: &str, attempt: u32) -> Record {
        rec(seq, RecordKind::StepStarted { step: step.into(), attempt })
    }

    #[test]
    fn folds_a_rollback() {
        let log = vec![
            created(),
            started(1, "a", 1),
            rec(2, RecordKind::StepSucceeded { step: "a".into(), output: b"1".to_vec() }),
            started(3, "b", 1),
            rec(
                4,
                RecordKind::StepFailed { step: "b".into(), error: "x".into(), retryable: false },
            ),
            rec(5, RecordKind::CompensationStarted { step: "b".into(), attempt: 1 }),
            rec(6, RecordKind::CompensationSucceeded { step: "b".into() }),
        ];
        let state = OperationState::fold(OperationId::from_u128(1), &log).expect("legal");
        assert_eq!(state.phase(), Phase::RollingBack);
        assert_eq!(state.step("b").map(|s| s.completed_seq), Some(Some(4)));
        assert_eq!(state.next_seq, 7);
    }

    #[test]
    fn a_rollback_may_finish_with_an_execute_outcome_lost_in_a_crash() {
        let log = vec![
            created(),
            started(1, "a", 1),
            rec(2, RecordKind::CancelRequested { actor: "a".into(), reason: "r".into() }),
            rec(3, RecordKind::CompensationStarted { step: "a".into(), attempt: 1 }),
            rec(4, RecordKind::CompensationSucceeded { step: "a".into() }),
            rec(
                5,
                RecordKind::OperationFinished {
                    outcome: Outcome::RolledBack {
                        cause: RollbackCause::Cancelled { actor: "a".into(), reason: "r".into() },
                    },
                },
            ),
        ];
        let state = OperationState::fold(OperationId::from_u128(1), &log).expect("legal");
        assert_eq!(state.phase(), Phase::Finished);
        // Going forward, a step without an outcome cannot finish the Operation.
        let forward = vec![
            created(),
            started(1, "a", 1),
            rec(2, RecordKind::OperationFinished { outcome: Outcome::Succeeded }),
        ];
        assert!(OperationState::fold(OperationId::from_u128(1), &forward).is_err());
    }

    #[test]
    fn rejects_illegal_sequences() {
        let id = OperationId::from_u128(1);
        let succeeded_before_start =
            vec![created(), rec(1, RecordKind::StepSucceeded { step: "a".into(), output: vec![] })];
        let err = OperationState::fold(id, &succeeded_before_start).expect_err("illegal");
        assert!(matches!(err, Error::IllegalRecord { seq: 1, .. }), "{err}");

        let compensation_of_unstarted = vec![
            created(),
            rec(1, RecordKind::CancelRequested { actor: "a".into(), reason: "r".into() }),
            rec(2, RecordKind::CompensationStarted { step: "a".into(), attempt: 1 }),
        ];
        let err = OperationState::fold(id, &compensation_of_unstarted).expect_err("illegal");
        assert!(matches!(err, Error::IllegalRecord { seq: 2, .. }), "{err}");

        let gap = vec![created(), started(2, "a", 1)];
        assert!(OperationState::fold(id, &gap).is_err());

        let start_after_cancel = vec![
            created(),
            rec(1, RecordKind::CancelRequested { actor: "a".into(), reason: "r".into() }),
            started(2, "a", 1),
        ];
        assert!(OperationState::fold(id, &start_after_cancel).is_err());
        assert!(OperationState::fold(id, &[]).is_err());
    }
}
