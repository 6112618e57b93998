//! Mutations of an executor-written log and what the fold must say of them.
//!
//! The executor's log itself must fold. Then two families of mutations.
//!
//! **Moving records** (drop, duplicate, swap with the next, at every position). The fold checks
//! sequence numbers, so a mutation that keeps the records' own numbers (*raw*) is always illegal,
//! except dropping the last record, which leaves a legal strict prefix (what a crash leaves).
//! Renumbering after the mutation tests the state machine itself, and there some mutations yield
//! another legal log: the fold does not know the saga, so dropping a `StepSucceeded` of a step
//! that is later compensated reads as "outcome unknown after a crash", and dropping a restarted
//! attempt reads as one attempt fewer. So a renumbered mutation must be illegal only where no
//! legal log can result:
//!
//! - a record written twice in a row (every record kind refuses to follow itself, but
//!   `CancelRefused`: a request recorded again after its answer was lost is refused again);
//! - a first attempt's start (`StepStarted`/`CompensationStarted` attempt 1) dropped or moved
//!   after a later record of the same step (that record then has no start);
//! - `OperationCreated` dropped or moved, a record moved after `OperationFinished`.
//!
//! Every other renumbered mutation must be legal or illegal at or after the mutated position:
//! the records before it are the executor's and legal, so the fold must not blame them.
//!
//! **Rewriting the outcome** of the closing `OperationFinished`, everything else kept: each
//! other outcome kind, another cause (the cancel's actor or reason changed, the failure instead
//! of the cancel, another step or error, a cancel never recorded), and a `not_undone` entry
//! added (any started step or an unknown one, either reason, at any position), dropped or changed
//! (its step, its reason, its error). The fold does not know the saga, but it knows which steps
//! the executor compensated: every started compensable step has a compensation that ended
//! before the outcome, except a step whose every attempt failed without effect
//! (`StepFailedWithoutEffect`), which the rollback leaves alone whatever its kind. Any other
//! started step whose compensation never started is irreversible or read-only, and the log reads
//! the same either way. So the outcomes the fold must accept are exactly those the executor
//! writes for this log under a saga that makes some subset of those never-compensated steps
//! irreversible and the rest read-only: the original cause; every compensation that failed for
//! good named with its last error, every step of the subset named `Irreversible`, nothing else
//! (never a step that failed without effect), in the rollback order (steps whose execute never
//! ended first, latest started first among them, then reverse order of completion); rolled back
//! when that list is empty; succeeded only when the original is. An abandoned Operation's outcome
//! names the step that needed attention and its last error, both in the log (`AttentionNeeded`),
//! and who abandoned it and why, which only the outcome says: any actor and reason are legal, no
//! other step or error, and no other kind of outcome; nor is an abandoned outcome legal for any
//! other log. Every other rewrite contradicts the log and must be rejected, naming the
//! `OperationFinished` record; every such rewrite must be accepted.
//!
//! Every rejection is the typed `Error::IllegalRecord`, never a panic.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use saga_core::log::{Record, RecordKind};
use saga_core::state::{
    CancelledBy, Compensation, Execution, FailedStep, OperationState, StepState,
};
use saga_core::{Error, NotUndone, NotUndoneReason, OperationId, Outcome, RollbackCause};

fn renumber(mut records: Vec<Record>) -> Vec<Record> {
    for (i, r) in records.iter_mut().enumerate() {
        r.seq = i as u64;
    }
    records
}

fn first_start(kind: &RecordKind) -> bool {
    matches!(
        kind,
        RecordKind::StepStarted { attempt: 1, .. }
            | RecordKind::CompensationStarted { attempt: 1, .. }
    )
}

/// Whether a later record (from `from`) is about the same step as `record`.
fn followed_by_same_step(records: &[Record], record: &Record, from: usize) -> bool {
    let step = record.kind.step();
    step.is_some() && records[from..].iter().any(|r| r.kind.step() == step)
}

fn must_be_illegal(what: &str, id: OperationId, log: &[Record], problems: &mut Vec<String>) {
    match OperationState::fold(id, log) {
        Err(Error::IllegalRecord { .. }) => {}
        Err(other) => problems.push(format!("{what}: rejected with an untyped error: {other}")),
        Ok(_) => problems.push(format!("{what}: the fold accepts it")),
    }
}

fn illegal_from(
    what: &str,
    id: OperationId,
    log: &[Record],
    at: usize,
    problems: &mut Vec<String>,
) {
    match OperationState::fold(id, log) {
        Ok(_) => {}
        Err(Error::IllegalRecord { seq, .. }) if seq >= at as u64 => {}
        Err(other) => {
            problems.push(format!("{what}: blames a record before the mutation: {other}"))
        }
    }
}

/// Every mutation of `log` (drop, duplicate, swap with the next, at every position, raw and
/// renumbered; rewrites of its outcome) checked against the rules above.
pub fn problems(log: &[Record]) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(id) = log.first().map(|r| r.operation) else {
        return vec!["empty log".into()];
    };
    if let Err(e) = OperationState::fold(id, log) {
        problems.push(format!("the executor's log is rejected: {e}"));
    }
    outcome_problems(id, log, &mut problems);
    let n = log.len();
    for i in 0..n {
        let r = &log[i];
        let name = r.kind.name();

        // Drop record i.
        let mut dropped = log.to_vec();
        dropped.remove(i);
        if i + 1 == n {
            if let Err(e) = OperationState::fold(id, &dropped) {
                problems.push(format!("dropping the last record leaves a prefix, rejected: {e}"));
            }
        } else {
            must_be_illegal(&format!("raw drop of {i} ({name})"), id, &dropped, &mut problems);
        }
        let renumbered = renumber(dropped);
        if i == 0 || (first_start(&r.kind) && followed_by_same_step(log, r, i + 1)) {
            must_be_illegal(&format!("drop of {i} ({name})"), id, &renumbered, &mut problems);
        } else {
            illegal_from(&format!("drop of {i} ({name})"), id, &renumbered, i, &mut problems);
        }

        // Write record i twice.
        let mut doubled = log.to_vec();
        doubled.insert(i + 1, r.clone());
        must_be_illegal(&format!("raw duplicate of {i} ({name})"), id, &doubled, &mut problems);
        if matches!(r.kind, RecordKind::CancelRefused { .. }) {
            illegal_from(
                &format!("duplicate of {i} ({name})"),
                id,
                &renumber(doubled),
                i,
                &mut problems,
            );
        } else {
            must_be_illegal(
                &format!("duplicate of {i} ({name})"),
                id,
                &renumber(doubled),
                &mut problems,
            );
        }

        // Swap records i and i + 1.
        if i + 1 < n {
            let next = &log[i + 1];
            let mut swapped = log.to_vec();
            swapped.swap(i, i + 1);
            let what = format!("swap of {i} ({name}) and {} ({})", i + 1, next.kind.name());
            must_be_illegal(&format!("raw {what}"), id, &swapped, &mut problems);
            let same_step = r.kind.step().is_some() && r.kind.step() == next.kind.step();
            let finished = matches!(next.kind, RecordKind::OperationFinished { .. });
            if i == 0 || finished || (first_start(&r.kind) && same_step) {
                must_be_illegal(&what, id, &renumber(swapped), &mut problems);
            } else {
                illegal_from(&what, id, &renumber(swapped), i, &mut problems);
            }
        }
    }
    problems
}

/// What the executor writes when it finishes the rollback of `state` for `cause`, if the steps in
/// `irreversible` are irreversible and every other step whose compensation never started is
/// read-only.
fn engine_outcome(
    state: &OperationState,
    cause: &RollbackCause,
    irreversible: &BTreeSet<&str>,
) -> Outcome {
    let mut order: Vec<(usize, &StepState)> = state.steps().iter().enumerate().collect();
    order.sort_by_key(|(start, s)| (Reverse(s.completed_seq.unwrap_or(u64::MAX)), Reverse(*start)));
    let not_undone: Vec<NotUndone> = order
        .into_iter()
        .filter(|(_, s)| !failed_without_effect(s))
        .filter_map(|(_, s)| {
            let reason = match &s.compensation {
                Compensation::NotStarted if irreversible.contains(s.name.as_str()) => {
                    NotUndoneReason::Irreversible
                }
                Compensation::Failed { error } => {
                    NotUndoneReason::CompensationFailed(error.clone())
                }
                _ => return None,
            };
            Some(NotUndone { step: s.name.clone(), reason })
        })
        .collect();
    if not_undone.is_empty() {
        Outcome::RolledBack { cause: cause.clone() }
    } else {
        Outcome::RollbackIncomplete { cause: cause.clone(), not_undone }
    }
}

/// Whether every attempt of the step ended with an error that says it had no effect.
fn failed_without_effect(s: &StepState) -> bool {
    matches!(s.execution, Execution::Retrying { .. } | Execution::Failed { .. })
        && s.attempts_without_effect == s.attempts
}

/// Whether the executor may write `candidate` to close `state`, whose true outcome is `original`.
fn legal_outcome(state: &OperationState, original: &Outcome, candidate: &Outcome) -> bool {
    let cause = match original {
        Outcome::RolledBack { cause } | Outcome::RollbackIncomplete { cause, .. } => cause,
        // Who abandoned it and why are the outcome's alone.
        Outcome::Abandoned { step, error, .. } => {
            return matches!(candidate, Outcome::Abandoned { step: s, error: e, .. }
                if s == step && e == error);
        }
        Outcome::Succeeded => return candidate == original,
        other => panic!("an outcome this test does not know: {other:?}"),
    };
    let named: BTreeSet<&str> = match candidate {
        Outcome::RollbackIncomplete { not_undone, .. } => not_undone
            .iter()
            .filter(|n| n.reason == NotUndoneReason::Irreversible)
            .map(|n| n.step.as_str())
            .collect(),
        _ => BTreeSet::new(),
    };
    let never_compensated =
        |step: &str| state.step(step).is_some_and(|s| s.compensation == Compensation::NotStarted);
    named.iter().all(|s| never_compensated(s)) && *candidate == engine_outcome(state, cause, &named)
}

/// Rewrites of `outcome`, each with a description.
fn rewrites(state: &OperationState, outcome: &Outcome) -> Vec<(String, Outcome)> {
    let mut out: Vec<(String, Outcome)> = Vec::new();
    let steps: Vec<&str> = state.steps().iter().map(|s| s.name.as_str()).collect();
    let first = steps.first().copied().unwrap_or("no-such-step");
    let invented_abandon = Outcome::Abandoned {
        step: first.into(),
        error: "invented".into(),
        actor: "mallory".into(),
        reason: "because".into(),
    };
    // Causes other than the recorded one (and, for a succeeded outcome, invented ones).
    let mut causes = vec![
        RollbackCause::Cancelled { actor: "mallory".into(), reason: "because".into() },
        RollbackCause::StepFailed { step: first.into(), error: "invented".into() },
        RollbackCause::StepFailed { step: "no-such-step".into(), error: "invented".into() },
    ];
    if let Some(CancelledBy { actor, reason }) = state.cancel() {
        causes.push(RollbackCause::Cancelled { actor: format!("{actor}!"), reason: reason.into() });
        causes.push(RollbackCause::Cancelled { actor: actor.into(), reason: format!("{reason}!") });
    }
    if let Some(FailedStep { step, error }) = state.failure() {
        causes.push(RollbackCause::StepFailed { step: step.into(), error: error.into() });
        causes.push(RollbackCause::StepFailed { step: step.into(), error: format!("{error}!") });
        for other in steps.iter().filter(|s| **s != step) {
            causes.push(RollbackCause::StepFailed { step: (*other).into(), error: error.into() });
        }
    }
    let (cause, list) = match outcome {
        Outcome::Abandoned { step, error, actor, reason } => {
            out.push(("abandoned -> succeeded".into(), Outcome::Succeeded));
            for cause in causes {
                out.push((
                    format!("abandoned -> rolled back ({cause})"),
                    Outcome::RolledBack { cause },
                ));
            }
            let abandoned =
                |step: &str, error: &str, actor: &str, reason: &str| Outcome::Abandoned {
                    step: step.into(),
                    error: error.into(),
                    actor: actor.into(),
                    reason: reason.into(),
                };
            for other in steps.iter().copied().chain(["no-such-step"]).filter(|s| s != step) {
                out.push((format!("abandoned at {other}"), abandoned(other, error, actor, reason)));
            }
            out.push((
                "another error".into(),
                abandoned(step, &format!("{error}!"), actor, reason),
            ));
            out.push(("another actor".into(), abandoned(step, error, "mallory", reason)));
            out.push(("another reason".into(), abandoned(step, error, actor, "because")));
            return out;
        }
        Outcome::Succeeded => {
            out.push(("succeeded -> abandoned".into(), invented_abandon));
            for cause in causes {
                out.push((
                    format!("succeeded -> rolled back ({cause})"),
                    Outcome::RolledBack { cause: cause.clone() },
                ));
                let not_undone =
                    vec![NotUndone { step: first.into(), reason: NotUndoneReason::Irreversible }];
                out.push((
                    format!("succeeded -> rollback incomplete ({cause})"),
                    Outcome::RollbackIncomplete { cause, not_undone },
                ));
            }
            return out;
        }
        Outcome::RolledBack { cause } => (cause, Vec::new()),
        Outcome::RollbackIncomplete { cause, not_undone } => (cause, not_undone.clone()),
        other => panic!("an outcome this test does not know: {other:?}"),
    };
    let rebuild = |cause: &RollbackCause, list: Vec<NotUndone>| {
        if matches!(outcome, Outcome::RolledBack { .. }) && list.is_empty() {
            Outcome::RolledBack { cause: cause.clone() }
        } else {
            Outcome::RollbackIncomplete { cause: cause.clone(), not_undone: list }
        }
    };
    // Other kinds.
    out.push(("-> succeeded".into(), Outcome::Succeeded));
    out.push(("-> abandoned".into(), invented_abandon));
    if let Some(FailedStep { step, error }) = state.failure() {
        out.push((
            "-> abandoned at the failed step".into(),
            Outcome::Abandoned {
                step: step.into(),
                error: error.into(),
                actor: "mallory".into(),
                reason: "because".into(),
            },
        ));
    }
    match outcome {
        Outcome::RolledBack { .. } => out.push((
            "rolled back -> rollback incomplete with nothing".into(),
            Outcome::RollbackIncomplete { cause: cause.clone(), not_undone: Vec::new() },
        )),
        _ => out.push((
            "rollback incomplete -> rolled back".into(),
            Outcome::RolledBack { cause: cause.clone() },
        )),
    }
    // Other causes.
    for other in causes.into_iter().filter(|c| c != cause) {
        out.push((format!("cause -> {other}"), rebuild(&other, list.clone())));
    }
    // Entries added, at every position: every started step (and an unknown one), either reason.
    let mut entries: Vec<NotUndone> = Vec::new();
    for step in steps.iter().copied().chain(["no-such-step"]) {
        entries.push(NotUndone { step: step.into(), reason: NotUndoneReason::Irreversible });
        entries.push(NotUndone {
            step: step.into(),
            reason: NotUndoneReason::CompensationFailed("invented".into()),
        });
        if let Some(Compensation::Failed { error }) = state.step(step).map(|s| &s.compensation) {
            entries.push(NotUndone {
                step: step.into(),
                reason: NotUndoneReason::CompensationFailed(error.clone()),
            });
        }
    }
    for entry in &entries {
        for at in 0..=list.len() {
            let mut changed = list.clone();
            changed.insert(at, entry.clone());
            out.push((format!("add {entry} at {at}"), rebuild(cause, changed)));
        }
    }
    // Entries dropped or changed.
    for at in 0..list.len() {
        let mut dropped = list.clone();
        let entry = dropped.remove(at);
        out.push((format!("drop {entry}"), rebuild(cause, dropped)));
        let mut changes: Vec<NotUndone> = Vec::new();
        for step in steps.iter().copied().chain(["no-such-step"]) {
            if step != entry.step {
                changes.push(NotUndone { step: step.into(), reason: entry.reason.clone() });
            }
        }
        changes.push(NotUndone {
            step: entry.step.clone(),
            reason: match &entry.reason {
                NotUndoneReason::Irreversible => {
                    NotUndoneReason::CompensationFailed("invented".into())
                }
                NotUndoneReason::CompensationFailed(_) => NotUndoneReason::Irreversible,
            },
        });
        if let NotUndoneReason::CompensationFailed(error) = &entry.reason {
            changes.push(NotUndone {
                step: entry.step.clone(),
                reason: NotUndoneReason::CompensationFailed(format!("{error}!")),
            });
        }
        for change in changes {
            let mut changed = list.clone();
            changed[at] = change.clone();
            out.push((format!("change {entry} to {change}"), rebuild(cause, changed)));
        }
    }
    out
}

/// Rewrites of the closing `OperationFinished` checked against the rule in the module doc.
fn outcome_problems(id: OperationId, log: &[Record], problems: &mut Vec<String>) {
    let Some((last, before)) = log.split_last() else { return };
    let RecordKind::OperationFinished { outcome } = &last.kind else { return };
    let state = match OperationState::fold(id, before) {
        Ok(state) => state,
        Err(e) => return problems.push(format!("the executor's log before its outcome: {e}")),
    };
    // The rule restates the executor's: its own outcome must be one of those it allows.
    if !legal_outcome(&state, outcome, outcome) {
        problems.push(format!(
            "the executor wrote {outcome:?} ({outcome}), which the rule of mutate.rs does not \
             allow for this log"
        ));
    }
    for (what, candidate) in rewrites(&state, outcome) {
        let mut mutated = log.to_vec();
        if let Some(r) = mutated.last_mut() {
            r.kind = RecordKind::OperationFinished { outcome: candidate.clone() };
        }
        let result = OperationState::fold(id, &mutated);
        let what = format!("outcome rewritten ({what}): {candidate:?}");
        match (legal_outcome(&state, outcome, &candidate), result) {
            (true, Ok(_)) => {}
            (true, Err(e)) => problems.push(format!("{what}: the executor may write it: {e}")),
            (false, Err(Error::IllegalRecord { seq, .. })) if seq == last.seq => {}
            (false, Err(Error::IllegalRecord { seq, problem, .. })) => {
                problems.push(format!("{what}: rejected at {seq}, not at the outcome: {problem}"))
            }
            (false, Err(other)) => {
                problems.push(format!("{what}: rejected with an untyped error: {other}"))
            }
            (false, Ok(_)) => problems.push(format!("{what}: the fold accepts it")),
        }
    }
}
