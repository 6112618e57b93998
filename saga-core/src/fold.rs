//! The pure fold from an Operation's records to its state.
//!
//! [`OperationState::apply`] is an explicit state machine: every record is checked against the
//! state before it and an illegal one is an [`Error::IllegalRecord`] naming the Operation and the
//! record's sequence number. The executor derives all its decisions from this state.
//!
//! # What `OperationFinished` must agree with
//!
//! The outcome must be the one the executor's planner (`executor::plan`) writes for the state it
//! closes, as far as the records tell it. No step or compensation may be running (while rolling
//! back, an execute whose outcome a crash lost is the exception: it was compensated with
//! `Executed::Unknown`), and:
//!
//! - **succeeded**: not rolling back (no cancel, no permanent step failure), and every step in
//!   the log succeeded (none running, waiting for a retry or failed);
//! - **rolled back** / **rollback incomplete**: rolling back, the cause is exactly
//!   [`OperationState::rollback_cause`] (the cancel if one is recorded, else the first permanent
//!   `StepFailed`), and no compensation waits for a retry;
//! - **rolled back**: no compensation failed for good;
//! - **rollback incomplete**: a non-empty list of steps that started, each named once, in the
//!   rollback order (`executor::plan::rollback_order`), each with a reason the log bears out:
//!   `CompensationFailed(e)` for a step whose compensation failed for good with exactly `e`, and
//!   `Irreversible` for a step whose compensation never started; and every step whose
//!   compensation failed for good is named.
//!
//! The fold does not know the saga, and the planner never compensates an irreversible or a
//! read-only step, so a started step whose compensation never started is, to the fold, either
//! irreversible (the planner names it `Irreversible`) or read-only (the planner leaves it out):
//! it may be named `Irreversible` or left out, and a rolled-back outcome may leave such steps.
//! A compensable step the executor forgot to compensate reads the same and is not caught here;
//! the saga-aware checks in saga-testkit catch it.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::id::OperationId;
use crate::record::{NotUndoneReason, Outcome, Record, RecordKind, Resource, RollbackCause};

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
    /// How many `execute` attempts failed with an error that says they had no effect.
    pub attempts_without_effect: u32,
    /// Where the step's retry policy counts from: (attempts before, Unix ms). The first attempt
    /// at first; an operator's retry of a step that needed attention starts the policy over.
    pub policy_start: (u32, u64),
}

impl StepState {
    /// Whether the step changed nothing: every attempt of it ended with an error that says it
    /// had no effect. The rollback leaves it alone (nothing to compensate, nothing not undone).
    pub fn had_no_effect(&self) -> bool {
        matches!(self.execution, Execution::Retrying { .. } | Execution::Failed { .. })
            && self.attempts_without_effect == self.attempts
    }
}

/// A cancel request that was refused, as its `CancelRefused` record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancelRefusal {
    /// Who asked.
    pub actor: String,
    /// Why they asked.
    pub reason: String,
    /// When they asked (Unix ms).
    pub requested_ms: u64,
    /// Why it was refused.
    pub refusal: String,
    /// When the refusal was recorded (Unix ms).
    pub at_ms: u64,
}

/// The phase of an Operation, derived from its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Executing steps forward.
    Running,
    /// A step failed for good or a cancel was recorded: compensating.
    RollingBack,
    /// Past the point of no return, a step ran out of its retry policy: nothing runs until an
    /// operator retries the step or abandons the Operation.
    NeedsAttention,
    /// It reached its outcome.
    Finished,
}

/// An Operation's state: the fold of its records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationState {
    /// The Operation.
    pub(crate) id: OperationId,
    /// The saga's name.
    pub(crate) saga: String,
    /// The saga's version.
    pub(crate) version: u32,
    /// The parameters (JSON).
    pub(crate) params: Arc<[u8]>,
    /// The environment.
    pub(crate) environment: String,
    /// The resource changed.
    pub(crate) resource: Resource,
    /// Who started it.
    pub(crate) actor: String,
    /// When it was created (Unix ms).
    pub(crate) created_ms: u64,
    /// The steps that started, in the order they first started.
    pub(crate) steps: Vec<StepState>,
    /// The cancel request, if any: (actor, reason).
    pub(crate) cancel: Option<(String, String)>,
    /// The step failure that started the rollback, if any: (step, error).
    pub(crate) failure: Option<(String, String)>,
    /// The outcome, once finished.
    pub(crate) outcome: Option<Outcome>,
    /// When it finished (Unix ms).
    pub(crate) finished_ms: Option<u64>,
    /// The step that needs attention and its last error, while the Operation waits for an
    /// operator (see [`Phase::NeedsAttention`]).
    pub(crate) attention: Option<(String, String)>,
    /// The point of no return's step, once the log records passing it (`PointOfNoReturnPassed`).
    pub(crate) passed_point_of_no_return: Option<String>,
    /// The cancel requests that were refused, in the order their refusals were recorded.
    pub(crate) cancel_refusals: Vec<CancelRefusal>,
    /// The sequence number the next record must have.
    pub(crate) next_seq: u64,
    /// A cancel request pending in the store, not answered yet. Not part of the log:
    /// [`Executor::status`](crate::Executor::status) fills it in from the store; the fold
    /// leaves it `None`.
    pub(crate) pending_cancel: Option<Box<crate::store::CancelRequest>>,
    /// The Operation it waits for, directly ahead of it in its resource's queue, when nothing of
    /// it ran yet. Not part of the log: [`Executor::status`](crate::Executor::status) fills it
    /// in from the store; the fold leaves it `None`.
    pub(crate) waiting_for: Option<OperationId>,
    index: HashMap<String, usize>,
}

impl OperationState {
    /// Makes room for `steps` steps at once, so that the list grows no larger than the saga:
    /// a few hundred bytes per Operation in flight otherwise.
    pub(crate) fn reserve_steps(&mut self, steps: usize) {
        let more = steps.saturating_sub(self.steps.len());
        self.steps.reserve_exact(more);
        self.index.reserve(more);
    }

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

    /// The phase.
    pub fn phase(&self) -> Phase {
        if self.outcome.is_some() {
            Phase::Finished
        } else if self.attention.is_some() {
            Phase::NeedsAttention
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
        self.index.get(name).and_then(|&i| self.steps.get(i))
    }

    /// The Operation.
    pub fn id(&self) -> OperationId {
        self.id
    }

    /// The saga's name.
    pub fn saga(&self) -> &str {
        &self.saga
    }

    /// The saga's version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The parameters, deserialized.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, Error> {
        self.deserialize("the params", &self.params)
    }

    /// The parameters as recorded (JSON).
    pub fn params_json(&self) -> &[u8] {
        &self.params
    }

    /// The output step `step` recorded when it succeeded, deserialized:
    /// [`Error::NoOutput`] if it did not succeed (or did not start).
    ///
    /// ```
    /// # use saga_core::{log::{Record, RecordKind}, state::OperationState, OperationId, Resource};
    /// let id = OperationId::from_u128(1);
    /// let record = |seq, kind| Record { operation: id, seq, at_ms: 0, kind };
    /// let created = RecordKind::OperationCreated {
    ///     saga: "s".into(), version: 1, params: b"null".to_vec(), environment: "dev".into(),
    ///     resource: Resource::new("app", "a"), actor: "bob".into(),
    /// };
    /// let log = [
    ///     record(0, created),
    ///     record(1, RecordKind::StepStarted { step: "reserve".into(), attempt: 1 }),
    ///     record(2, RecordKind::StepSucceeded { step: "reserve".into(), output: b"42".to_vec() }),
    /// ];
    /// let state = OperationState::fold(id, &log)?;
    /// assert_eq!(state.output::<u32>("reserve")?, 42);
    /// assert!(state.output::<u32>("charge").is_err());
    /// # Ok::<(), saga_core::Error>(())
    /// ```
    pub fn output<T: DeserializeOwned>(&self, step: &str) -> Result<T, Error> {
        match self.step(step).map(|s| &s.execution) {
            Some(Execution::Succeeded { output }) => {
                self.deserialize(&format!("the output of step {step}"), output)
            }
            _ => Err(Error::NoOutput { operation: self.id, step: step.to_owned() }),
        }
    }

    fn deserialize<T: DeserializeOwned>(&self, what: &str, json: &[u8]) -> Result<T, Error> {
        serde_json::from_slice(json).map_err(|e| Error::Deserialize {
            operation: self.id,
            what: what.to_owned(),
            type_name: std::any::type_name::<T>(),
            problem: e.to_string(),
        })
    }

    /// The environment.
    pub fn environment(&self) -> &str {
        &self.environment
    }

    /// The resource changed.
    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// Who started it.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// When it was created (Unix ms).
    pub fn created_ms(&self) -> u64 {
        self.created_ms
    }

    /// The steps that started, in the order they first started.
    pub fn steps(&self) -> &[StepState] {
        &self.steps
    }

    /// The cancel, if one is recorded: (who, why).
    pub fn cancel(&self) -> Option<(&str, &str)> {
        self.cancel.as_ref().map(|(a, r)| (a.as_str(), r.as_str()))
    }

    /// The step failure that started the rollback, if any: (step, error).
    pub fn failure(&self) -> Option<(&str, &str)> {
        self.failure.as_ref().map(|(s, e)| (s.as_str(), e.as_str()))
    }

    /// The step that needs attention and its last error, while the Operation waits for an
    /// operator ([`Phase::NeedsAttention`]).
    pub fn attention(&self) -> Option<(&str, &str)> {
        self.attention.as_ref().map(|(s, e)| (s.as_str(), e.as_str()))
    }

    /// The outcome, once finished.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// When it finished (Unix ms).
    pub fn finished_ms(&self) -> Option<u64> {
        self.finished_ms
    }

    /// The sequence number the next record must have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The Operation it waits for, directly ahead of it in its resource's queue, when nothing of
    /// it ran yet. Not part of the log: [`Executor::status`](crate::Executor::status) fills it
    /// in from the store; the fold leaves it `None`.
    pub fn waiting_for(&self) -> Option<OperationId> {
        self.waiting_for
    }

    /// The step marked as the point of no return, once the log records passing it
    /// (`PointOfNoReturnPassed`): from then on a cancel is refused. A log of record format 1
    /// never records it; the executor then reads it from the steps that started after it.
    pub fn passed_point_of_no_return(&self) -> Option<&str> {
        self.passed_point_of_no_return.as_deref()
    }

    /// The cancel requests that were refused (`CancelRefused`), who asked, why, and why they
    /// were refused, in the order the refusals were recorded.
    pub fn cancel_refusals(&self) -> &[CancelRefusal] {
        &self.cancel_refusals
    }

    /// A cancel request pending in the store, which the executor running the Operation (or the
    /// next to claim it) has not answered yet: it will either roll the Operation back or record
    /// its refusal. Not part of the log: [`Executor::status`](crate::Executor::status) fills it
    /// in from the store; the fold leaves it `None`.
    pub fn pending_cancel(&self) -> Option<&crate::store::CancelRequest> {
        self.pending_cancel.as_deref()
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
                            attempts_without_effect: 0,
                            policy_start: (0, record.at_ms),
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
                    s.policy_start = (s.attempts, record.at_ms);
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

    /// Why `outcome` contradicts the state it closes, if it does (see the module doc for the
    /// rules and what the fold cannot tell without the saga).
    fn outcome_problem(&self, outcome: &Outcome) -> Option<String> {
        let status = outcome.status();
        let cause = match outcome {
            Outcome::Succeeded => {
                if let Some(recorded) = self.rollback_cause() {
                    return Some(format!("outcome succeeded while rolling back ({recorded})"));
                }
                return self.steps.iter().find_map(|s| match &s.execution {
                    Execution::Succeeded { .. } => None,
                    Execution::Running => {
                        Some(format!("outcome succeeded while step {} was running", s.name))
                    }
                    Execution::Retrying { error } => Some(format!(
                        "outcome succeeded while step {} waits for a retry (last error: {error})",
                        s.name
                    )),
                    Execution::Failed { error } => {
                        Some(format!("outcome succeeded although step {} failed: {error}", s.name))
                    }
                });
            }
            Outcome::RolledBack { cause } | Outcome::RollbackIncomplete { cause, .. } => cause,
            Outcome::Abandoned { step, error, .. } => {
                return match &self.attention {
                    Some((s, e)) if s == step && e == error => None,
                    Some((s, e)) => Some(format!(
                        "outcome {status} names step {step} ({error}), but step {s} needs \
                         attention ({e})"
                    )),
                    None => Some(format!("outcome {status} while no step needs attention")),
                };
            }
        };
        if let Some((step, _)) = &self.attention {
            return Some(format!("outcome {status} while step {step} needs attention"));
        }
        match self.rollback_cause() {
            None => return Some(format!("outcome {status} while not rolling back")),
            Some(recorded) if recorded != *cause => {
                return Some(format!(
                    "outcome {status} gives the cause \"{cause}\", but the log records \"{recorded}\""
                ));
            }
            Some(_) => {}
        }
        // Every compensation that started has ended (a running one is refused before this).
        if let Some((s, error)) = self.steps.iter().find_map(|s| match &s.compensation {
            Compensation::Retrying { error } => Some((s, error)),
            _ => None,
        }) {
            return Some(format!(
                "outcome {status} while the compensation of step {} waits for a retry (last \
                 error: {error})",
                s.name
            ));
        }
        let not_undone = match outcome {
            Outcome::RollbackIncomplete { not_undone, .. } if not_undone.is_empty() => {
                return Some(format!("outcome {status} names nothing as not undone"));
            }
            Outcome::RollbackIncomplete { not_undone, .. } => not_undone.as_slice(),
            Outcome::Succeeded | Outcome::RolledBack { .. } | Outcome::Abandoned { .. } => &[],
        };
        let mut named: HashSet<&str> = HashSet::new();
        let mut previous: Option<(&str, RollbackRank)> = None;
        for item in not_undone {
            let step = item.step.as_str();
            let Some(&i) = self.index.get(step) else {
                return Some(format!("outcome {status} names step {step}, which never started"));
            };
            let s = &self.steps[i];
            if !named.insert(step) {
                return Some(format!("outcome {status} names step {step} twice"));
            }
            if s.had_no_effect() {
                return Some(format!(
                    "outcome {status} names step {step} not undone, but it failed without effect"
                ));
            }
            let wrong = match (&item.reason, &s.compensation) {
                (NotUndoneReason::Irreversible, Compensation::NotStarted) => None,
                (NotUndoneReason::Irreversible, _) => {
                    Some(format!("names step {step} irreversible, but its compensation ran"))
                }
                (NotUndoneReason::CompensationFailed(said), Compensation::Failed { error })
                    if said == error =>
                {
                    None
                }
                (NotUndoneReason::CompensationFailed(said), Compensation::Failed { error }) => {
                    Some(format!(
                        "says the compensation of step {step} failed with \"{said}\", but it \
                         failed with \"{error}\""
                    ))
                }
                (NotUndoneReason::CompensationFailed(_), Compensation::Succeeded) => {
                    Some(format!("says the compensation of step {step} failed, but it succeeded"))
                }
                (NotUndoneReason::CompensationFailed(_), Compensation::NotStarted) => {
                    Some(format!("says the compensation of step {step} failed, but it never ran"))
                }
                (
                    NotUndoneReason::CompensationFailed(_),
                    Compensation::Running | Compensation::Retrying { .. },
                ) => {
                    Some(format!("says the compensation of step {step} failed, but it never ended"))
                }
            };
            if let Some(wrong) = wrong {
                return Some(format!("outcome {status} {wrong}"));
            }
            let rank = rollback_rank(i, s);
            if let Some((before, before_rank)) = previous {
                if before_rank > rank {
                    return Some(format!(
                        "outcome {status} names step {before} before step {step}, against the \
                         rollback order"
                    ));
                }
            }
            previous = Some((step, rank));
        }
        // No compensation that failed for good is left out (for a rolled-back outcome the list
        // is empty, so any such step contradicts it).
        self.steps.iter().find_map(|s| match &s.compensation {
            Compensation::Failed { error } if !named.contains(s.name.as_str()) => Some(format!(
                "outcome {status} leaves out step {}, whose compensation failed for good: {error}",
                s.name
            )),
            _ => None,
        })
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

/// A key of the rollback order: smaller comes first.
type RollbackRank = (Reverse<u64>, Reverse<usize>);

/// Where a started step comes in the rollback order (smaller first), as the planner orders it
/// (`executor::plan::rollback_order`): reverse order of completion, steps whose execute never
/// ended first, latest started first among them. `start_order` is its index in `steps`.
fn rollback_rank(start_order: usize, s: &StepState) -> RollbackRank {
    (Reverse(s.completed_seq.unwrap_or(u64::MAX)), Reverse(start_order))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::NotUndone;

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

    /// `a` succeeded, then `b` failed once (retryable) and needs attention.
    fn needing_attention() -> Vec<Record> {
        vec![
            created(),
            started(1, "a", 1),
            rec(2, RecordKind::StepSucceeded { step: "a".into(), output: b"1".to_vec() }),
            started(3, "b", 1),
            rec(4, RecordKind::StepFailed { step: "b".into(), error: "x".into(), retryable: true }),
            rec(5, RecordKind::AttentionNeeded { step: "b".into(), error: "x".into() }),
        ]
    }

    fn abandoned(step: &str, error: &str) -> Outcome {
        Outcome::Abandoned {
            step: step.into(),
            error: error.into(),
            actor: "ops".into(),
            reason: "by hand".into(),
        }
    }

    #[test]
    fn attention_stops_everything_until_an_operator_decides() {
        let id = OperationId::from_u128(1);
        let log = needing_attention();
        let state = OperationState::fold(id, &log).expect("legal");
        assert_eq!(state.phase(), Phase::NeedsAttention);
        assert_eq!(state.attention(), Some(("b", "x")));
        let illegal_next = [
            started(6, "b", 2),
            rec(6, RecordKind::CancelRequested { actor: "x".into(), reason: "y".into() }),
            rec(6, RecordKind::CompensationStarted { step: "a".into(), attempt: 1 }),
            rec(6, RecordKind::AttentionNeeded { step: "b".into(), error: "x".into() }),
            rec(6, RecordKind::OperationFinished { outcome: Outcome::Succeeded }),
            rec(6, RecordKind::OperationFinished { outcome: abandoned("a", "x") }),
            rec(6, RecordKind::OperationFinished { outcome: abandoned("b", "other") }),
        ];
        for record in illegal_next {
            let mut state = state.clone();
            assert!(state.apply(&record).is_err(), "{record:?} is refused");
        }
        let mut done = state.clone();
        done.apply(&rec(6, RecordKind::OperationFinished { outcome: abandoned("b", "x") }))
            .expect("abandoned with the step and error that needed attention");
        assert_eq!(done.phase(), Phase::Finished);

        let mut retried = state;
        retried
            .apply(&rec(
                6,
                RecordKind::AttentionRetried { actor: "ops".into(), reason: "r".into() },
            ))
            .expect("retried");
        assert_eq!(retried.phase(), Phase::Running);
        assert_eq!(retried.step("b").map(|s| s.policy_start), Some((1, 6)));
        retried.apply(&started(7, "b", 2)).expect("the step runs again");
    }

    #[test]
    fn attention_needs_a_step_waiting_for_a_retry_and_abandon_needs_attention() {
        let id = OperationId::from_u128(1);
        let mut log = needing_attention();
        log.truncate(4);
        log.push(rec(4, RecordKind::AttentionNeeded { step: "b".into(), error: "x".into() }));
        assert!(OperationState::fold(id, &log).is_err(), "b is running, not waiting");
        let log = vec![
            created(),
            started(1, "a", 1),
            rec(2, RecordKind::StepSucceeded { step: "a".into(), output: b"1".to_vec() }),
            rec(3, RecordKind::OperationFinished { outcome: abandoned("a", "x") }),
        ];
        assert!(OperationState::fold(id, &log).is_err(), "nothing needed attention");
        let log = vec![
            created(),
            rec(1, RecordKind::AttentionRetried { actor: "ops".into(), reason: "r".into() }),
        ];
        assert!(OperationState::fold(id, &log).is_err(), "nothing to retry");
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

    /// Numbers the records after `OperationCreated`.
    fn log(kinds: Vec<RecordKind>) -> Vec<Record> {
        let mut log = vec![created()];
        for (i, kind) in kinds.into_iter().enumerate() {
            log.push(rec(i as u64 + 1, kind));
        }
        log
    }

    fn st(step: &str, attempt: u32) -> RecordKind {
        RecordKind::StepStarted { step: step.into(), attempt }
    }

    fn ok(step: &str) -> RecordKind {
        RecordKind::StepSucceeded { step: step.into(), output: b"null".to_vec() }
    }

    fn fail(step: &str, error: &str, retryable: bool) -> RecordKind {
        RecordKind::StepFailed { step: step.into(), error: error.into(), retryable }
    }

    fn cancel(actor: &str, reason: &str) -> RecordKind {
        RecordKind::CancelRequested { actor: actor.into(), reason: reason.into() }
    }

    fn cst(step: &str, attempt: u32) -> RecordKind {
        RecordKind::CompensationStarted { step: step.into(), attempt }
    }

    fn cok(step: &str) -> RecordKind {
        RecordKind::CompensationSucceeded { step: step.into() }
    }

    fn cfail(step: &str, error: &str, retryable: bool) -> RecordKind {
        RecordKind::CompensationFailed { step: step.into(), error: error.into(), retryable }
    }

    fn fin(outcome: Outcome) -> RecordKind {
        RecordKind::OperationFinished { outcome }
    }

    fn step_failed(step: &str, error: &str) -> RollbackCause {
        RollbackCause::StepFailed { step: step.into(), error: error.into() }
    }

    fn cancelled(actor: &str, reason: &str) -> RollbackCause {
        RollbackCause::Cancelled { actor: actor.into(), reason: reason.into() }
    }

    fn irreversible(step: &str) -> NotUndone {
        NotUndone { step: step.into(), reason: NotUndoneReason::Irreversible }
    }

    fn comp_failed(step: &str, error: &str) -> NotUndone {
        NotUndone { step: step.into(), reason: NotUndoneReason::CompensationFailed(error.into()) }
    }

    /// The log folds without its last record (an `OperationFinished`), and that record is
    /// rejected as illegal, by its sequence number.
    fn assert_finish_rejected(what: &str, kinds: Vec<RecordKind>) {
        let id = OperationId::from_u128(1);
        let log = log(kinds);
        let last = log.len() as u64 - 1;
        assert!(matches!(log[log.len() - 1].kind, RecordKind::OperationFinished { .. }));
        if let Err(e) = OperationState::fold(id, &log[..log.len() - 1]) {
            panic!("{what}: the log before OperationFinished is illegal: {e}");
        }
        match OperationState::fold(id, &log) {
            Err(Error::IllegalRecord { operation, seq, problem }) => {
                assert_eq!(operation, id, "{what}");
                assert_eq!(seq, last, "{what}: {problem}");
            }
            Err(other) => panic!("{what}: rejected with another error: {other}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }

    /// Bob cancels while b runs; b ends cancelled, both are compensated, and the Operation
    /// finishes rolled back with `cause`.
    fn cancelled_log(cause: RollbackCause) -> Vec<RecordKind> {
        vec![
            st("a", 1),
            ok("a"),
            st("b", 1),
            cancel("bob", "wrong app"),
            fail("b", "cancelled", false),
            cst("b", 1),
            cok("b"),
            cst("a", 1),
            cok("a"),
            fin(Outcome::RolledBack { cause }),
        ]
    }

    fn assert_folds(what: &str, kinds: Vec<RecordKind>) -> OperationState {
        OperationState::fold(OperationId::from_u128(1), &log(kinds))
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Stage 1 runs a (compensable), r (read-only) and i (irreversible); stage 2 runs b, which
    /// fails for good. Rollback order: b, i, r, a. The compensation of a fails for good.
    fn incomplete_rollback(not_undone: Vec<NotUndone>) -> Vec<RecordKind> {
        vec![
            st("a", 1),
            st("r", 1),
            st("i", 1),
            ok("a"),
            ok("r"),
            ok("i"),
            st("b", 1),
            fail("b", "x", false),
            cst("b", 1),
            cok("b"),
            cst("a", 1),
            cfail("a", "e1", true),
            cst("a", 2),
            cfail("a", "e2", false),
            fin(Outcome::RollbackIncomplete { cause: step_failed("b", "x"), not_undone }),
        ]
    }

    #[test]
    fn folds_the_outcomes_the_engine_writes() {
        // Success after a retried attempt.
        let state = assert_folds(
            "succeeded",
            vec![
                st("a", 1),
                ok("a"),
                st("b", 1),
                fail("b", "busy", true),
                st("b", 2),
                ok("b"),
                fin(Outcome::Succeeded),
            ],
        );
        assert_eq!(state.outcome, Some(Outcome::Succeeded));
        // Irreversible i named, read-only r left out, in rollback order.
        let state = assert_folds(
            "rollback incomplete",
            incomplete_rollback(vec![irreversible("i"), comp_failed("a", "e2")]),
        );
        assert_eq!(state.phase(), Phase::Finished);
        // A cancel recorded before the failure it caused is the cause.
        assert_folds("cancelled", cancelled_log(cancelled("bob", "wrong app")));
        // A sibling waiting for a retry when the other failed for good is compensated first.
        assert_folds(
            "sibling retrying",
            vec![
                st("a", 1),
                st("b", 1),
                fail("b", "busy", true),
                fail("a", "x", false),
                cst("b", 1),
                cok("b"),
                cst("a", 1),
                cok("a"),
                fin(Outcome::RolledBack { cause: step_failed("a", "x") }),
            ],
        );
        // A read-only step (r) is never compensated, even in a rolled-back outcome; the fold
        // cannot tell it from a compensable step that nobody compensated (see the module doc).
        assert_folds(
            "read-only step left",
            vec![
                st("r", 1),
                ok("r"),
                st("b", 1),
                fail("b", "x", false),
                cst("b", 1),
                cok("b"),
                fin(Outcome::RolledBack { cause: step_failed("b", "x") }),
            ],
        );
    }

    #[test]
    fn rejects_success_after_a_retryable_failure_with_no_later_attempt() {
        assert_finish_rejected(
            "succeeded while retrying",
            vec![st("a", 1), ok("a"), st("b", 1), fail("b", "busy", true), fin(Outcome::Succeeded)],
        );
        assert_finish_rejected(
            "succeeded while rolling back",
            vec![st("a", 1), ok("a"), cancel("bob", "r"), fin(Outcome::Succeeded)],
        );
    }

    #[test]
    fn rejects_a_rollback_while_a_compensation_retries() {
        for outcome in [
            Outcome::RolledBack { cause: step_failed("a", "x") },
            Outcome::RollbackIncomplete {
                cause: step_failed("a", "x"),
                not_undone: vec![comp_failed("a", "e")],
            },
        ] {
            assert_finish_rejected(
                outcome.status(),
                vec![
                    st("a", 1),
                    fail("a", "x", false),
                    cst("a", 1),
                    cfail("a", "e", true),
                    fin(outcome.clone()),
                ],
            );
        }
    }

    #[test]
    fn rejects_a_rollback_that_left_a_started_step_not_compensated() {
        // a's compensation failed for good: its change stays, so "rolled back" is a lie.
        assert_finish_rejected(
            "rolled back, a not undone",
            vec![
                st("a", 1),
                ok("a"),
                st("b", 1),
                fail("b", "x", false),
                cst("b", 1),
                cok("b"),
                cst("a", 1),
                cfail("a", "gone", false),
                fin(Outcome::RolledBack { cause: step_failed("b", "x") }),
            ],
        );
        // Nor may a rollback incomplete call that step irreversible (its compensation ran).
        assert_finish_rejected(
            "rollback incomplete, a called irreversible",
            incomplete_rollback(vec![irreversible("i"), irreversible("a")]),
        );
    }

    #[test]
    fn rejects_a_rollback_cause_other_than_the_recorded_one() {
        assert_finish_rejected("other actor", cancelled_log(cancelled("mallory", "wrong app")));
        assert_finish_rejected("other reason", cancelled_log(cancelled("bob", "because")));
        assert_finish_rejected(
            "the failure, not the cancel",
            cancelled_log(step_failed("b", "cancelled")),
        );
        let failed_log = |cause: RollbackCause| {
            vec![
                st("a", 1),
                ok("a"),
                st("b", 1),
                fail("b", "x", false),
                cst("b", 1),
                cok("b"),
                cst("a", 1),
                cok("a"),
                fin(Outcome::RolledBack { cause }),
            ]
        };
        assert_finish_rejected("other step", failed_log(step_failed("a", "x")));
        assert_finish_rejected("other error", failed_log(step_failed("b", "y")));
        assert_finish_rejected("a cancel never recorded", failed_log(cancelled("bob", "r")));
        assert_folds("the recorded cause", failed_log(step_failed("b", "x")));
    }

    #[test]
    fn rejects_a_rollback_incomplete_that_omits_or_invents_a_not_undone_step() {
        let cases = [
            ("omits a failed compensation", vec![irreversible("i")]),
            ("invents a step", vec![irreversible("i"), comp_failed("a", "e2"), irreversible("z")]),
            (
                "names a compensated step irreversible",
                vec![irreversible("b"), irreversible("i"), comp_failed("a", "e2")],
            ),
            (
                "names a compensated step failed",
                vec![comp_failed("b", "x"), irreversible("i"), comp_failed("a", "e2")],
            ),
            ("another error", vec![irreversible("i"), comp_failed("a", "e1")]),
            (
                "a failed compensation for a skipped step",
                vec![comp_failed("i", "e2"), comp_failed("a", "e2")],
            ),
            (
                "names a step twice",
                vec![irreversible("i"), irreversible("i"), comp_failed("a", "e2")],
            ),
            ("nothing", vec![]),
            ("out of rollback order", vec![comp_failed("a", "e2"), irreversible("i")]),
        ];
        for (what, not_undone) in cases {
            assert_finish_rejected(what, incomplete_rollback(not_undone));
        }
        // What the fold cannot tell: r may be irreversible (named) or read-only (left out).
        assert_folds(
            "r named irreversible",
            incomplete_rollback(vec![irreversible("i"), irreversible("r"), comp_failed("a", "e2")]),
        );
        assert_folds("i left out", incomplete_rollback(vec![comp_failed("a", "e2")]));
    }
}
