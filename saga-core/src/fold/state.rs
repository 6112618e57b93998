//! The fold's state: an Operation's and each step's, with what they answer.

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::id::OperationId;
use crate::record::{Outcome, Resource, RollbackCause};

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
    /// Where the step's retry policy counts from: the first attempt at first; an operator's
    /// retry of a step that needed attention starts the policy over.
    pub policy_start: PolicyStart,
}

/// Where a step's retry policy counts from ([`StepState::policy_start`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyStart {
    /// The attempts made before it, which the policy does not count.
    pub attempts_before: u32,
    /// When it started (Unix ms): the policy's time limit counts from here.
    pub at_ms: u64,
}

/// Who cancelled an Operation and why ([`OperationState::cancel`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CancelledBy<'a> {
    /// Who asked.
    pub actor: &'a str,
    /// Why.
    pub reason: &'a str,
}

/// A step and its error: the failure that started a rollback ([`OperationState::failure`]), or
/// the step that needs attention ([`OperationState::attention`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailedStep<'a> {
    /// The step.
    pub step: &'a str,
    /// Its (last) error.
    pub error: &'a str,
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

impl CancelRefusal {
    /// When they asked, typed.
    pub fn requested(&self) -> crate::Timestamp {
        crate::Timestamp::from_unix_ms(self.requested_ms)
    }

    /// When the refusal was recorded, typed.
    pub fn at(&self) -> crate::Timestamp {
        crate::Timestamp::from_unix_ms(self.at_ms)
    }
}

/// The phase of an Operation, derived from its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
    pub(super) index: HashMap<String, usize>,
}

impl OperationState {
    /// Makes room for `steps` steps at once, so that the list grows no larger than the saga:
    /// a few hundred bytes per Operation in flight otherwise.
    pub(crate) fn reserve_steps(&mut self, steps: usize) {
        let more = steps.saturating_sub(self.steps.len());
        self.steps.reserve_exact(more);
        self.index.reserve(more);
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

    /// The cancel, if one is recorded.
    pub fn cancel(&self) -> Option<CancelledBy<'_>> {
        self.cancel.as_ref().map(|(actor, reason)| CancelledBy { actor, reason })
    }

    /// The step failure that started the rollback, if any.
    pub fn failure(&self) -> Option<FailedStep<'_>> {
        self.failure.as_ref().map(|(step, error)| FailedStep { step, error })
    }

    /// The step that needs attention and its last error, while the Operation waits for an
    /// operator ([`Phase::NeedsAttention`]).
    pub fn attention(&self) -> Option<FailedStep<'_>> {
        self.attention.as_ref().map(|(step, error)| FailedStep { step, error })
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
}
