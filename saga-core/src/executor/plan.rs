//! What to do next, decided from the folded state alone (plus what is in flight right now).
//!
//! Pure functions, so that the rules of the engine read in one place: which stage runs, which steps
//! (re)start, which step is compensated next, and the outcome once nothing is left to do.

use std::collections::HashSet;

use crate::error::Error;
use crate::fold::{Compensation, Execution, OperationState, Phase, StepState};
use crate::record::{NotUndone, NotUndoneReason, Outcome};
use crate::saga::Saga;
use crate::step::StepKind;

/// What the driver does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Start (or, after a crash, restart) an attempt of this step's `execute`.
    Execute(String),
    /// Start an attempt of this step's `compensate`.
    Compensate(String),
    /// The step is waiting to be retried and no timer is set (after a restart): set one.
    ScheduleRetry { step: String, compensation: bool },
    /// Record the outcome.
    Finish(Outcome),
}

/// What is running in this process for the Operation, which the log cannot say.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    /// Steps whose `execute` or `compensate` future is being polled.
    pub(crate) running: HashSet<String>,
    /// Steps with a retry timer set.
    pub(crate) waiting: HashSet<String>,
    /// Steps whose retry timer fired.
    pub(crate) due: HashSet<String>,
    /// Where the last scan for the current stage ended (see [`current_stage_from`]).
    pub(crate) stage_hint: std::cell::Cell<usize>,
}

impl InFlight {
    fn busy(&self, step: &str) -> bool {
        self.running.contains(step) || self.waiting.contains(step)
    }
}

/// The index of the first stage not yet wholly succeeded (`stages.len()` when all are),
/// scanning from stage `from`, which must be at most the answer: a success is
/// final, so a stage found wholly succeeded once stays so, and the driver resumes each scan where
/// the last one ended (amortised O(1) per step instead of O(stages)). Scanning in order, rather
/// than bisecting, keeps the answer right for a log whose succeeded stages are not a prefix.
pub(crate) fn current_stage_from(saga: &Saga, state: &OperationState, from: usize) -> usize {
    let stages = saga.stages();
    let from = from.min(stages.len());
    stages[from..]
        .iter()
        .position(|stage| {
            !stage.iter().all(|e| {
                matches!(
                    state.step(&e.name).map(|s| &s.execution),
                    Some(Execution::Succeeded { .. })
                )
            })
        })
        .map_or(stages.len(), |i| from + i)
}

/// Whether the Operation passed its point of no return: its log records it
/// (`PointOfNoReturnPassed`, appended only while no cancel request is pending, so that the store
/// decides a cancel and the crossing against each other), or, for a log of record format 1,
/// which never records it, a step after the point of no return started.
pub(crate) fn past_point_of_no_return(saga: &Saga, state: &OperationState) -> bool {
    state.passed_point_of_no_return.is_some()
        || saga.point_of_no_return_stage().is_some_and(|p| {
            state.steps.iter().any(|s| saga.stage_of(&s.name).is_some_and(|stage| stage > p))
        })
}

/// Refuses to cancel a finished Operation, or one past its point of no return (without its
/// saga, only what the log records): the one rule of a local cancel and of a cancel through the
/// store.
pub(crate) fn refuse_cancel(saga: Option<&Saga>, state: &OperationState) -> Result<(), Error> {
    if let Some(outcome) = &state.outcome {
        return Err(Error::AlreadyFinished {
            operation: state.id,
            outcome: Box::new(outcome.clone()),
        });
    }
    let past = match saga {
        Some(saga) if past_point_of_no_return(saga, state) => {
            Some(saga.point_of_no_return().unwrap_or_default())
        }
        _ => state.passed_point_of_no_return.as_deref(),
    };
    if let Some(step) = past {
        return Err(Error::PastPointOfNoReturn { operation: state.id, step: step.to_owned() });
    }
    Ok(())
}

/// The next actions. Empty means: wait for something in flight.
pub(crate) fn next_actions(saga: &Saga, state: &OperationState, flight: &InFlight) -> Vec<Action> {
    match state.phase() {
        Phase::Finished | Phase::NeedsAttention => Vec::new(),
        Phase::Running => forward(saga, state, flight),
        Phase::RollingBack => backward(saga, state, flight),
    }
}

fn forward(saga: &Saga, state: &OperationState, flight: &InFlight) -> Vec<Action> {
    let stage = current_stage_from(saga, state, flight.stage_hint.get());
    flight.stage_hint.set(stage);
    let Some(entries) = saga.stages().get(stage) else {
        return vec![Action::Finish(Outcome::Succeeded)];
    };
    let mut actions = Vec::new();
    for e in entries {
        if flight.busy(&e.name) {
            continue;
        }
        match state.step(&e.name).map(|s| &s.execution) {
            // Not started, or started with no recorded outcome and not running here: (re)run it.
            None | Some(Execution::Running) => actions.push(Action::Execute(e.name.clone())),
            Some(Execution::Retrying { .. }) if flight.due.contains(&e.name) => {
                actions.push(Action::Execute(e.name.clone()))
            }
            Some(Execution::Retrying { .. }) => {
                actions.push(Action::ScheduleRetry { step: e.name.clone(), compensation: false })
            }
            Some(Execution::Succeeded { .. } | Execution::Failed { .. }) => {}
        }
    }
    actions
}

/// The started steps in rollback order: reverse order of completion, steps whose execute never
/// ended (unknown after a crash, or waiting for a retry) first, latest started first among them.
pub(crate) fn rollback_order(state: &OperationState) -> Vec<&StepState> {
    let mut steps: Vec<(usize, &StepState)> = state.steps.iter().enumerate().collect();
    // The one rule, which the fold checks an outcome's `not_undone` against too.
    steps.sort_by_key(|(start_order, s)| crate::fold::rollback_rank(*start_order, s));
    steps.into_iter().map(|(_, s)| s).collect()
}

fn backward(saga: &Saga, state: &OperationState, flight: &InFlight) -> Vec<Action> {
    // Wait for executes still running (cancelled, or siblings of a failed step) to end first.
    let executing = state
        .steps
        .iter()
        .any(|s| s.execution == Execution::Running && flight.running.contains(&s.name));
    if executing {
        return Vec::new();
    }
    let order = rollback_order(state);
    for s in &order {
        if kind_of(saga, &s.name) != StepKind::Compensable
            || s.compensation.is_done()
            || s.had_no_effect()
        {
            continue;
        }
        if flight.busy(&s.name) {
            return Vec::new();
        }
        return vec![match &s.compensation {
            Compensation::Retrying { .. } if !flight.due.contains(&s.name) => {
                Action::ScheduleRetry { step: s.name.clone(), compensation: true }
            }
            _ => Action::Compensate(s.name.clone()),
        }];
    }
    let cause = match state.rollback_cause() {
        Some(cause) => cause,
        None => return Vec::new(),
    };
    // A step that failed without effect changed nothing: nothing to undo, nothing stays.
    let not_undone: Vec<NotUndone> = order
        .iter()
        .filter(|s| !s.had_no_effect())
        .filter_map(|s| match (kind_of(saga, &s.name), &s.compensation) {
            (StepKind::Irreversible, _) => {
                Some(NotUndone { step: s.name.clone(), reason: NotUndoneReason::Irreversible })
            }
            (StepKind::Compensable, Compensation::Failed { error }) => Some(NotUndone {
                step: s.name.clone(),
                reason: NotUndoneReason::CompensationFailed(error.clone()),
            }),
            _ => None,
        })
        .collect();
    vec![Action::Finish(if not_undone.is_empty() {
        Outcome::RolledBack { cause }
    } else {
        Outcome::RollbackIncomplete { cause, not_undone }
    })]
}

fn kind_of(saga: &Saga, step: &str) -> StepKind {
    // Steps are checked against the saga before the driver starts, so an unknown name does not
    // occur; treating it as read-only would skip it, which is the safe reading.
    saga.entry(step).map_or(StepKind::ReadOnly, |e| e.step.kind())
}
