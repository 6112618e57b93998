//! Checks one run of the real executor against the reference model.

use std::collections::{BTreeMap, BTreeSet};

use saga_core::log::{Record, RecordKind};
use saga_core::state::OperationState;
use saga_core::{NotUndoneReason, Outcome, RollbackCause, StepKind};
use saga_testkit::{CancelAnswer, Run, SagaShape};

use crate::reference::{Cancel, Cause, Expected, NotUndone};

/// The steps of which a crash lost an attempt's outcome: more starts than ends in the log.
pub fn lost_attempts(records: &[Record]) -> BTreeSet<String> {
    let mut balance: BTreeMap<&str, i64> = BTreeMap::new();
    for r in records {
        match &r.kind {
            RecordKind::StepStarted { step, .. } => *balance.entry(step).or_default() += 1,
            RecordKind::StepSucceeded { step, .. }
            | RecordKind::StepFailed { step, .. }
            | RecordKind::StepFailedWithoutEffect { step, .. } => {
                *balance.entry(step).or_default() -= 1
            }
            _ => {}
        }
    }
    balance.into_iter().filter(|(_, n)| *n > 0).map(|(step, _)| step.to_owned()).collect()
}

/// Every problem found, in words; empty when the run matches the model.
pub fn problems(
    shape: &SagaShape,
    expected: &Expected,
    run: &Run<BTreeSet<String>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, problem: String| {
        if !ok {
            problems.push(problem);
        }
    };
    let records = &run.records;
    let crashed = run.recovered;

    // The outcome matches the model.
    let (cause, not_undone, abandoned) = match &run.outcome {
        Outcome::Succeeded => (None, Vec::new(), None),
        Outcome::RolledBack { cause } => (Some(cause), Vec::new(), None),
        Outcome::RollbackIncomplete { cause, not_undone } => {
            (Some(cause), not_undone.clone(), None)
        }
        Outcome::Abandoned { step, .. } => (None, Vec::new(), Some(step)),
        other => panic!("an outcome this test does not know: {other:?}"),
    };
    let cause = cause.map(|c| match c {
        RollbackCause::StepFailed { step, .. } => Cause::Step(step.clone()),
        RollbackCause::Cancelled { .. } => Cause::Cancelled,
    });
    match (&cause, abandoned) {
        (None, None) => check(
            expected.succeeds(),
            format!(
                "succeeded; the model expects a rollback caused by one of {:?}, or abandoned \
                 at one of {:?}",
                expected.causes, expected.runs_out
            ),
        ),
        (None, Some(step)) => {
            check(
                expected.ends_abandoned() && expected.runs_out.contains(step),
                format!(
                    "abandoned at {step}; the model expects {}",
                    if expected.ends_abandoned() {
                        format!("one of {:?}", expected.runs_out)
                    } else {
                        "no abandon".into()
                    }
                ),
            );
            check(
                run.attention == [step.clone()],
                format!("abandoned at {step}, but needed attention for {:?}", run.attention),
            );
        }
        (Some(c), _) => check(
            expected.causes.contains(c),
            format!("rolled back because of {c:?}; the model expects {:?}", expected.causes),
        ),
    }
    // Attention: needed only for steps that ran out of their policy, and needed if one did.
    check(
        run.attention.iter().all(|s| expected.runs_out.contains(s)),
        format!("needed attention for {:?}; only {:?} run out", run.attention, expected.runs_out),
    );
    check(
        run.attention.is_empty() == expected.runs_out.is_empty(),
        format!(
            "needed attention for {:?}; the model expects it for some of {:?}",
            run.attention, expected.runs_out
        ),
    );
    let reported: BTreeMap<String, NotUndone> = not_undone
        .iter()
        .map(|n| {
            let why = match n.reason {
                NotUndoneReason::Irreversible => NotUndone::Irreversible,
                NotUndoneReason::CompensationFailed(_) => NotUndone::CompensationFailed,
            };
            (n.step.clone(), why)
        })
        .collect();
    check(reported.len() == not_undone.len(), format!("a step is reported twice: {not_undone:?}"));
    check(
        reported == expected.not_undone,
        format!("not undone: {reported:?}; the model expects {:?}", expected.not_undone),
    );
    if matches!(run.outcome, Outcome::RollbackIncomplete { .. }) {
        check(!not_undone.is_empty(), "rollback incomplete with nothing not undone".into());
    }

    // The log: legal at every prefix, and its fold agrees with the outcome.
    let id = records.first().map(|r| r.operation);
    if let Some(id) = id {
        for n in 1..=records.len() {
            if let Err(e) = OperationState::fold(id, &records[..n]) {
                check(false, format!("the fold rejects the executor's log at length {n}: {e}"));
                break;
            }
        }
        let state = OperationState::fold(id, records);
        check(
            state.as_ref().is_ok_and(|s| s.outcome() == Some(&run.outcome)),
            "the folded outcome differs from the returned one".into(),
        );
    }

    // Exactly the expected steps started; nothing started after a cancel or a rollback began.
    let started: BTreeSet<String> = records
        .iter()
        .filter_map(|r| match &r.kind {
            RecordKind::StepStarted { step, .. } => Some(step.clone()),
            _ => None,
        })
        .collect();
    check(
        started == expected.started,
        format!("started {started:?}; the model expects {:?}", expected.started),
    );
    let ran: BTreeSet<&String> =
        run.stats.iter().filter(|(_, s)| s.attempts > 0).map(|(n, _)| n).collect();
    check(
        ran.iter().all(|s| started.contains(*s)),
        format!("steps ran without a StepStarted record: {ran:?}"),
    );
    if let Some(cancel_seq) = seq_of(records, |k| matches!(k, RecordKind::CancelRequested { .. })) {
        let late: Vec<&Record> = records
            .iter()
            .filter(|r| r.seq > cancel_seq && matches!(r.kind, RecordKind::StepStarted { .. }))
            .collect();
        check(late.is_empty(), format!("steps started after the cancel was recorded: {late:?}"));
    }

    // Compensations: exactly the started compensable steps, once each (at least once across a
    // crash), failing ones on every allowed attempt; never irreversible or read-only steps.
    let comp_started =
        count_by_step(records, |k| matches!(k, RecordKind::CompensationStarted { .. }));
    let comp_succeeded =
        count_by_step(records, |k| matches!(k, RecordKind::CompensationSucceeded { .. }));
    let compensated: BTreeSet<String> = comp_started.keys().cloned().collect();
    check(
        compensated == expected.compensated,
        format!("compensated {compensated:?}; the model expects {:?}", expected.compensated),
    );
    for step in &expected.compensated {
        let attempts = comp_started.get(step).copied().unwrap_or(0);
        let calls = run.stats.get(step).map_or(0, |s| s.compensation_attempts);
        if expected.not_undone.get(step) == Some(&NotUndone::CompensationFailed) {
            let max = SagaShape::MAX_ATTEMPTS as usize;
            check(
                if crashed { attempts >= max } else { attempts == max },
                format!("the failing compensation of {step} was attempted {attempts} times"),
            );
        } else {
            check(
                comp_succeeded.get(step) == Some(&1),
                format!("{step} is compensated {:?} times in the log", comp_succeeded.get(step)),
            );
            check(
                if crashed { attempts >= 1 && calls >= 1 } else { attempts == 1 && calls == 1 },
                format!("{step}: {attempts} compensation attempts recorded, {calls} ran"),
            );
        }
    }
    for (step, stats) in &run.stats {
        if shape.kind_of(step) != Some(StepKind::Compensable) {
            check(
                stats.compensation_attempts == 0,
                format!("{step} is not compensable but was compensated"),
            );
        }
    }

    // Order: a step is compensated after every step of a later stage (which depends on it).
    for (later, earlier) in &expected.order {
        let later_end = last_seq(records, later, |k| {
            matches!(
                k,
                RecordKind::CompensationSucceeded { .. }
                    | RecordKind::CompensationFailed { retryable: false, .. }
            )
        });
        let earlier_start =
            first_seq(records, earlier, |k| matches!(k, RecordKind::CompensationStarted { .. }));
        if let (Some(end), Some(start)) = (later_end, earlier_start) {
            check(end < start, format!("{earlier} was compensated (record {start}) before {later} was done (record {end})"));
        } else {
            check(false, format!("no compensation records to order {later} before {earlier}"));
        }
    }

    // The cancel was answered as the model says.
    match expected.cancel {
        Cancel::NotAsked => {
            check(run.cancel.is_none(), format!("a cancel was answered: {:?}", run.cancel))
        }
        Cancel::AcceptedIfAsked => check(
            matches!(run.cancel, None | Some(CancelAnswer::Accepted)),
            format!("the cancel was answered {:?}", run.cancel),
        ),
        Cancel::RefusedIfAsked => check(
            matches!(run.cancel, None | Some(CancelAnswer::Refused(_))),
            format!("the cancel past the point of no return was answered {:?}", run.cancel),
        ),
        Cancel::Refused => check(
            matches!(run.cancel, Some(CancelAnswer::Refused(_))),
            format!("the cancel past the point of no return was answered {:?}", run.cancel),
        ),
    }
    if cause == Some(Cause::Cancelled) {
        check(
            run.cancel == Some(CancelAnswer::Accepted),
            "cancelled without an accepted cancel".into(),
        );
    }

    // The world: every effect that ran and was not undone, nothing else.
    let undone: BTreeSet<&String> = comp_succeeded.keys().collect();
    let world: BTreeSet<String> = shape
        .steps()
        .map(|(_, s)| s)
        .filter(|s| s.kind != StepKind::ReadOnly)
        .filter(|s| run.stats.get(&s.name).is_some_and(|st| st.executions > 0))
        .filter(|s| !undone.contains(&s.name))
        .map(|s| s.name.clone())
        .collect();
    check(run.after == world, format!("world {:?}; expected {world:?}", run.after));
    if expected.succeeds() {
        let all: BTreeSet<String> = shape
            .steps()
            .filter(|(_, s)| s.kind != StepKind::ReadOnly)
            .map(|(_, s)| s.name.clone())
            .collect();
        check(run.after == all, format!("succeeded with world {:?}", run.after));
    }
    problems
}

fn seq_of(records: &[Record], f: impl Fn(&RecordKind) -> bool) -> Option<u64> {
    records.iter().find(|r| f(&r.kind)).map(|r| r.seq)
}

fn count_by_step(records: &[Record], f: impl Fn(&RecordKind) -> bool) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in records.iter().filter(|r| f(&r.kind)) {
        if let Some(step) = r.kind.step() {
            *counts.entry(step.to_owned()).or_default() += 1;
        }
    }
    counts
}

fn first_seq(records: &[Record], step: &str, f: impl Fn(&RecordKind) -> bool) -> Option<u64> {
    records.iter().find(|r| r.kind.step() == Some(step) && f(&r.kind)).map(|r| r.seq)
}

fn last_seq(records: &[Record], step: &str, f: impl Fn(&RecordKind) -> bool) -> Option<u64> {
    records.iter().rev().find(|r| r.kind.step() == Some(step) && f(&r.kind)).map(|r| r.seq)
}
