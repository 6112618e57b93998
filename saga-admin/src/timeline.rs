//! An Operation's detail: its folded state, and each step's attempts folded from its records.

use std::collections::HashMap;

use crate::api::rfc3339;
use saga_core::log::{Record, RecordKind};
use saga_core::state::{Compensation, Execution, FailedStep, OperationState};
use saga_core::Outcome;

use crate::api::{
    Attempt, AttemptResult, CancelInfo, CancelRefusal, CompensationStatus, CompensationTimeline,
    NotUndoneInfo, OperationDetail, OutcomeInfo, Status, StepError, StepStatus, StepTimeline,
};

/// The detail of an Operation from its records and their fold.
pub(crate) fn detail(records: &[Record], state: &OperationState) -> OperationDetail {
    let not_undone = match state.outcome() {
        Some(Outcome::RollbackIncomplete { not_undone, .. }) => {
            not_undone.iter().map(NotUndoneInfo::of).collect()
        }
        _ => Vec::new(),
    };
    let cancel_at = records.iter().find_map(|r| match r.kind {
        RecordKind::CancelRequested { .. } => Some(rfc3339(r.at_ms)),
        _ => None,
    });
    let (attempts, compensations) = attempts(records);
    let steps = state
        .steps()
        .iter()
        .map(|step| {
            let attempts = attempts.get(&step.name).cloned().unwrap_or_default();
            let compensation_attempts = compensations.get(&step.name).cloned().unwrap_or_default();
            let status = match step.execution {
                Execution::Running => StepStatus::Running,
                Execution::Retrying { .. } => StepStatus::Retrying,
                Execution::Succeeded { .. } => StepStatus::Succeeded,
                Execution::Failed { .. } => StepStatus::Failed,
            };
            let compensation = match step.compensation {
                Compensation::NotStarted => CompensationStatus::NotStarted,
                Compensation::Running => CompensationStatus::Running,
                Compensation::Retrying { .. } => CompensationStatus::Retrying,
                Compensation::Succeeded => CompensationStatus::Succeeded,
                Compensation::Failed { .. } => CompensationStatus::Failed,
            };
            StepTimeline {
                name: step.name.clone(),
                status,
                started_at: rfc3339(step.first_started_ms),
                ended_at: attempts.last().and_then(|a| a.ended_at.clone()),
                attempts,
                compensation: CompensationTimeline {
                    status: compensation,
                    attempts: compensation_attempts,
                },
                not_undone: not_undone
                    .iter()
                    .find(|n: &&NotUndoneInfo| n.step == step.name)
                    .map(|n| n.reason.clone()),
            }
        })
        .collect();
    let pair = |p: Option<FailedStep<'_>>| {
        p.map(|f| StepError { step: f.step.to_owned(), error: f.error.to_owned() })
    };
    OperationDetail {
        id: state.id().to_string(),
        environment: state.environment().to_owned(),
        saga: state.saga().to_owned(),
        version: state.version(),
        status: Status::of(state),
        resource_type: state.resource().kind.clone(),
        resource: state.resource().name.clone(),
        actor: state.actor().to_owned(),
        created_at: rfc3339(state.created_ms()),
        finished_at: state.finished_ms().map(rfc3339),
        cancel: state.cancel().map(|c| CancelInfo {
            actor: c.actor.to_owned(),
            reason: c.reason.to_owned(),
            at: cancel_at,
        }),
        cancel_pending: None,
        cancels_refused: state
            .cancel_refusals()
            .iter()
            .map(|r| CancelRefusal {
                actor: r.actor.clone(),
                reason: r.reason.clone(),
                requested_at: rfc3339(r.requested_ms),
                refusal: r.refusal.clone(),
                at: rfc3339(r.at_ms),
            })
            .collect(),
        failure: pair(state.failure()),
        attention: pair(state.attention()),
        outcome: state.outcome().map(OutcomeInfo::of),
        not_undone,
        steps,
        waiting_for: None,
        running_here: false,
        problem: None,
    }
}

type Attempts = HashMap<String, Vec<Attempt>>;

/// Attempts as they are folded: each with its start in Unix ms.
type Open = HashMap<String, Vec<(u64, Attempt)>>;

/// Each step's `execute` attempts and `compensate` attempts, from the records.
fn attempts(records: &[Record]) -> (Attempts, Attempts) {
    let mut executes: Open = HashMap::new();
    let mut compensations: Open = HashMap::new();
    for record in records {
        let at = record.at_ms;
        match &record.kind {
            RecordKind::StepStarted { step, attempt } => {
                start(executes.entry(step.clone()).or_default(), *attempt, at)
            }
            RecordKind::CompensationStarted { step, attempt } => {
                start(compensations.entry(step.clone()).or_default(), *attempt, at)
            }
            RecordKind::StepSucceeded { step, .. } => {
                end(executes.get_mut(step), at, AttemptResult::Succeeded, None)
            }
            RecordKind::CompensationSucceeded { step } => {
                end(compensations.get_mut(step), at, AttemptResult::Succeeded, None)
            }
            RecordKind::StepFailed { step, error, retryable } => {
                let result =
                    if *retryable { AttemptResult::FailedWillRetry } else { AttemptResult::Failed };
                end(executes.get_mut(step), at, result, Some(error))
            }
            RecordKind::StepFailedWithoutEffect { step, error, .. } => {
                end(executes.get_mut(step), at, AttemptResult::FailedWithoutEffect, Some(error))
            }
            RecordKind::CompensationFailed { step, error, retryable } => {
                let result =
                    if *retryable { AttemptResult::FailedWillRetry } else { AttemptResult::Failed };
                end(compensations.get_mut(step), at, result, Some(error))
            }
            _ => {}
        }
    }
    let done = |open: Open| -> Attempts {
        open.into_iter().map(|(k, v)| (k, v.into_iter().map(|(_, a)| a).collect())).collect()
    };
    (done(executes), done(compensations))
}

fn start(list: &mut Vec<(u64, Attempt)>, attempt: u32, at_ms: u64) {
    // An attempt still open when the next one starts was cut short: its end is unknown.
    if let Some((_, open)) = list.last_mut().filter(|(_, a)| a.result == AttemptResult::Running) {
        open.result = AttemptResult::Unknown;
    }
    let attempt = Attempt {
        attempt,
        started_at: rfc3339(at_ms),
        ended_at: None,
        duration_ms: None,
        result: AttemptResult::Running,
        error: None,
    };
    list.push((at_ms, attempt));
}

fn end(
    list: Option<&mut Vec<(u64, Attempt)>>,
    at_ms: u64,
    result: AttemptResult,
    error: Option<&String>,
) {
    let Some((started, open)) =
        list.and_then(|l| l.last_mut()).filter(|(_, a)| a.result == AttemptResult::Running)
    else {
        return;
    };
    open.ended_at = Some(rfc3339(at_ms));
    open.duration_ms = Some(at_ms.saturating_sub(*started));
    open.result = result;
    open.error = error.cloned();
}
