//! The fold's tests: legal logs fold, illegal ones are errors naming the record.

use super::*;
use crate::error::Error;
use crate::id::OperationId;
use crate::record::{
    NotUndone, NotUndoneReason, Outcome, Record, RecordKind, Resource, RollbackCause,
};

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
    assert_eq!(state.attention(), Some(FailedStep { step: "b", error: "x" }));
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
        .apply(&rec(6, RecordKind::AttentionRetried { actor: "ops".into(), reason: "r".into() }))
        .expect("retried");
    assert_eq!(retried.phase(), Phase::Running);
    assert_eq!(
        retried.step("b").map(|s| s.policy_start),
        Some(PolicyStart { attempts_before: 1, at_ms: 6 })
    );
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
        rec(4, RecordKind::StepFailed { step: "b".into(), error: "x".into(), retryable: false }),
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
            &outcome.status().to_string(),
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
        ("names a step twice", vec![irreversible("i"), irreversible("i"), comp_failed("a", "e2")]),
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
