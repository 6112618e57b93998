//! The state machine: each record checked against the state before it, then applied.

use std::collections::HashMap;
use std::sync::Arc;

use super::{
    CancelRefusal, Compensation, Execution, OperationState, Phase, PolicyStart, StepState,
};
use crate::error::Error;
use crate::id::OperationId;
use crate::record::{Record, RecordKind};

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
    pub(crate) fn created(record: &Record) -> Result<Self, Error> {
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
                passed_point_of_no_return: None,
                cancel_refusals: Vec::new(),
                next_seq: 1,
                pending_cancel: None,
                waiting_for: None,
                attention: None,
                index: HashMap::new(),
            }),
            other => Err(illegal(&format!(
                "the first record must be OperationCreated, not {}",
                other.name()
            ))),
        }
    }

    /// Applies one record, or says why it cannot follow the records before it.
    pub(crate) fn apply(&mut self, record: &Record) -> Result<(), Error> {
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
                            attempts_without_effect: 0,
                            policy_start: PolicyStart { attempts_before: 0, at_ms: record.at_ms },
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
            RecordKind::StepFailed { step, error, retryable }
            | RecordKind::StepFailedWithoutEffect { step, error, retryable } => {
                let seq = record.seq;
                let s = self.running_step(step, record.seq, "failed")?;
                if matches!(record.kind, RecordKind::StepFailedWithoutEffect { .. }) {
                    s.attempts_without_effect += 1;
                }
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
            RecordKind::AttentionNeeded { step, error } => {
                if self.phase() != Phase::Running {
                    return Err(illegal(format!(
                        "step {step} needs attention while the operation is not running forward"
                    )));
                }
                match self.step(step).map(|s| &s.execution) {
                    Some(Execution::Retrying { .. }) => {}
                    _ => {
                        return Err(illegal(format!(
                            "step {step} needs attention but is not waiting for a retry"
                        )))
                    }
                }
                self.attention = Some((step.clone(), error.clone()));
            }
            RecordKind::AttentionRetried { .. } => {
                let Some((step, _)) = self.attention.take() else {
                    return Err(illegal("a retry while no step needs attention".into()));
                };
                if let Some(&i) = self.index.get(&step) {
                    let s = &mut self.steps[i];
                    s.policy_start =
                        PolicyStart { attempts_before: s.attempts, at_ms: record.at_ms };
                }
            }
            RecordKind::CancelRequested { .. } if self.attention.is_some() => {
                return Err(illegal("a cancel while a step needs attention".into()));
            }
            RecordKind::CancelRequested { actor, reason } => {
                if self.cancel.is_some() {
                    return Err(illegal("a second CancelRequested".into()));
                }
                if self.passed_point_of_no_return.is_some() {
                    return Err(illegal("a cancel after the point of no return was passed".into()));
                }
                self.cancel = Some((actor.clone(), reason.clone()));
            }
            RecordKind::PointOfNoReturnPassed { step } => {
                if self.phase() != Phase::Running {
                    return Err(illegal(format!(
                        "the point of no return (step {step}) passed while not running forward"
                    )));
                }
                if self.passed_point_of_no_return.is_some() {
                    return Err(illegal("the point of no return passed twice".into()));
                }
                self.passed_point_of_no_return = Some(step.clone());
            }
            RecordKind::CancelRefused { actor, reason, requested_ms, refusal } => {
                self.cancel_refusals.push(CancelRefusal {
                    actor: actor.clone(),
                    reason: reason.clone(),
                    requested_ms: *requested_ms,
                    refusal: refusal.clone(),
                    at_ms: record.at_ms,
                });
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
                if s.had_no_effect() {
                    return Err(illegal(format!(
                        "compensation of step {step}, which failed without effect"
                    )));
                }
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
                if let Some(problem) = self.outcome_problem(outcome) {
                    return Err(illegal(problem));
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
