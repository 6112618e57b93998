//! A step error can say that the attempt changed nothing, so that the verdict stays exact: such
//! a step is neither compensated nor reported as not undone.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use saga_core::log::{Record, RecordKind};
use saga_core::state::OperationState;
use saga_core::{
    async_trait, Error, Executed, NotUndone, NotUndoneReason, OperationId, Outcome, Resource,
    RetryPolicy, RollbackCause, Saga, Step, StepContext, StepError, StepKind,
};

use super::run;

/// Records its compensations; `execute` succeeds.
struct Reserve(Arc<AtomicU32>);

#[async_trait]
impl Step for Reserve {
    type Output = ();
    async fn execute(&self, _: &StepContext) -> Result<(), StepError> {
        Ok(())
    }
    async fn compensate(&self, _: &StepContext, _: Executed<()>) -> Result<(), StepError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Fails each attempt with the next error of `errors` (the last one repeats), counting its
/// compensations.
struct Charge {
    kind: StepKind,
    errors: Vec<StepError>,
    attempts: AtomicU32,
    compensations: Arc<AtomicU32>,
}

impl Charge {
    fn new(kind: StepKind, errors: Vec<StepError>, compensations: &Arc<AtomicU32>) -> Self {
        Charge { kind, errors, attempts: AtomicU32::new(0), compensations: compensations.clone() }
    }
}

#[async_trait]
impl Step for Charge {
    type Output = ();
    async fn execute(&self, _: &StepContext) -> Result<(), StepError> {
        let n = self.attempts.fetch_add(1, Ordering::SeqCst) as usize;
        let error = self.errors.get(n).or(self.errors.last());
        Err(error.cloned().unwrap_or_else(|| StepError::permanent("no error given")))
    }
    async fn compensate(&self, _: &StepContext, _: Executed<()>) -> Result<(), StepError> {
        self.compensations.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn kind(&self) -> StepKind {
        self.kind
    }
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy { max_attempts: 2, ..RetryPolicy::default() }
    }
}

fn saga(charge: Charge, reserved: &Arc<AtomicU32>) -> Saga {
    Saga::builder("book", 1)
        .step("reserve", Reserve(reserved.clone()))
        .step("charge", charge)
        .build()
        .expect("valid saga")
}

fn declined() -> RollbackCause {
    RollbackCause::StepFailed { step: "charge".into(), error: "card declined".into() }
}

#[tokio::test(start_paused = true)]
async fn an_irreversible_step_that_failed_without_effect_is_not_reported_as_not_undone() {
    let (reserved, charged) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let charge = Charge::new(
        StepKind::Irreversible,
        vec![StepError::permanent("card declined").no_effect()],
        &charged,
    );
    let (outcome, executor, id) = run(saga(charge, &reserved)).await;
    assert_eq!(outcome, Outcome::RolledBack { cause: declined() });
    assert_eq!(reserved.load(Ordering::SeqCst), 1, "the earlier step is undone");
    let state = executor.status(id).await.expect("status");
    assert!(state.step("charge").expect("started").had_no_effect());
    let lines = executor.log(id).await.expect("log");
    assert!(
        lines.iter().any(|l| l.message.contains("failed (without effect): card declined")),
        "{lines:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_same_step_failing_with_a_plain_error_is_reported_as_not_undone() {
    let (reserved, charged) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let charge =
        Charge::new(StepKind::Irreversible, vec![StepError::permanent("card declined")], &charged);
    let (outcome, _, _) = run(saga(charge, &reserved)).await;
    let not_undone =
        vec![NotUndone { step: "charge".into(), reason: NotUndoneReason::Irreversible }];
    assert_eq!(outcome, Outcome::RollbackIncomplete { cause: declined(), not_undone });
}

#[tokio::test(start_paused = true)]
async fn a_compensable_step_that_failed_without_effect_is_not_compensated() {
    let (reserved, charged) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let charge = Charge::new(
        StepKind::Compensable,
        vec![StepError::permanent("card declined").no_effect()],
        &charged,
    );
    let (outcome, _, _) = run(saga(charge, &reserved)).await;
    assert_eq!(outcome, Outcome::RolledBack { cause: declined() });
    assert_eq!(charged.load(Ordering::SeqCst), 0, "nothing of it to undo");
    assert_eq!(reserved.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn one_attempt_that_may_have_acted_is_enough_to_undo_the_step() {
    // The first attempt timed out after it may have charged; the second was refused outright.
    let (reserved, charged) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let errors = vec![
        StepError::transient("timed out waiting for the bank"),
        StepError::permanent("card declined").no_effect(),
    ];
    let charge = Charge::new(StepKind::Compensable, errors.clone(), &charged);
    let (outcome, _, _) = run(saga(charge, &reserved)).await;
    assert_eq!(outcome, Outcome::RolledBack { cause: declined() });
    assert_eq!(charged.load(Ordering::SeqCst), 1, "compensated: attempt 1 may have acted");

    let charge = Charge::new(StepKind::Irreversible, errors, &charged);
    let (outcome, _, _) = run(saga(charge, &reserved)).await;
    let not_undone =
        vec![NotUndone { step: "charge".into(), reason: NotUndoneReason::Irreversible }];
    assert_eq!(outcome, Outcome::RollbackIncomplete { cause: declined(), not_undone });
}

#[test]
fn the_fold_refuses_a_verdict_that_contradicts_a_step_without_effect() {
    let id = OperationId::from_u128(9);
    let record = |seq, kind| Record { operation: id, seq, at_ms: 0, kind };
    let created = RecordKind::OperationCreated {
        saga: "book".into(),
        version: 1,
        params: b"null".to_vec(),
        environment: "test".into(),
        resource: Resource::new("trip", "t1"),
        actor: "tester".into(),
    };
    let log = vec![
        record(0, created),
        record(1, RecordKind::StepStarted { step: "charge".into(), attempt: 1 }),
        record(
            2,
            RecordKind::StepFailedWithoutEffect {
                step: "charge".into(),
                error: "card declined".into(),
                retryable: false,
            },
        ),
    ];
    let not_undone =
        vec![NotUndone { step: "charge".into(), reason: NotUndoneReason::Irreversible }];
    let wrong = Outcome::RollbackIncomplete { cause: declined(), not_undone };
    let mut bad = log.clone();
    bad.push(record(3, RecordKind::OperationFinished { outcome: wrong }));
    let err = OperationState::fold(id, &bad).expect_err("refused");
    assert!(
        matches!(&err, Error::IllegalRecord { seq: 3, problem, .. } if problem.contains("failed without effect")),
        "{err}"
    );
    let mut compensated = log.clone();
    compensated
        .push(record(3, RecordKind::CompensationStarted { step: "charge".into(), attempt: 1 }));
    assert!(OperationState::fold(id, &compensated).is_err(), "nothing to compensate");

    let mut right = log;
    right.push(record(
        3,
        RecordKind::OperationFinished { outcome: Outcome::RolledBack { cause: declined() } },
    ));
    let state = OperationState::fold(id, &right).expect("a legal log");
    assert_eq!(state.outcome(), Some(&Outcome::RolledBack { cause: declined() }));
}
