//! Mutations of an executor-written log and what the fold must say of them.
//!
//! The fold checks sequence numbers, so a mutation that keeps the records' own numbers (*raw*)
//! is always illegal, except dropping the last record, which leaves a legal strict prefix (what
//! a crash leaves). Renumbering after the mutation tests the state machine itself, and there
//! some mutations yield another legal log: the fold does not know the saga, so dropping a
//! `StepSucceeded` of a step that is later compensated reads as "outcome unknown after a crash",
//! and dropping a restarted attempt reads as one attempt fewer. So a renumbered mutation must be
//! illegal only where no legal log can result:
//!
//! - a record written twice in a row (every record kind refuses to follow itself);
//! - a first attempt's start (`StepStarted`/`CompensationStarted` attempt 1) dropped or moved
//!   after a later record of the same step (that record then has no start);
//! - `OperationCreated` dropped or moved, a record moved after `OperationFinished`.
//!
//! Every other renumbered mutation must be legal or illegal at or after the mutated position:
//! the records before it are the executor's and legal, so the fold must not blame them.
//! Every rejection is the typed `Error::IllegalRecord`, never a panic.

use saga_core::{Error, OperationId, OperationState, Record, RecordKind};

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
/// renumbered) checked against the rules above.
pub fn problems(log: &[Record]) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(id) = log.first().map(|r| r.operation) else {
        return vec!["empty log".into()];
    };
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
        must_be_illegal(
            &format!("duplicate of {i} ({name})"),
            id,
            &renumber(doubled),
            &mut problems,
        );

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
