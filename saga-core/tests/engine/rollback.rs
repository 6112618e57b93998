//! Rollback: what is compensated, in which order, and what the outcome says.

use std::time::Duration;

use saga_core::log::RecordKind;
use saga_core::{NotUndone, NotUndoneReason, Outcome, RollbackCause, Saga, StepKind};

use crate::support::{TestStep, World};

const NAMES: [&str; 5] = ["s0", "s1", "s2", "s3", "s4"];

fn five_steps(world: &World, fail_at: usize) -> Saga {
    let mut builder = Saga::builder("five", 1);
    for (i, name) in NAMES.iter().enumerate() {
        let mut step = TestStep::new(name, world);
        if i == fail_at {
            step = step.failing();
            step.partial = true;
        }
        builder = builder.step(*name, step);
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn a_permanent_error_at_each_position_compensates_exactly_the_started_steps_in_reverse() {
    for fail_at in 0..NAMES.len() {
        let world = World::default();
        let (outcome, _, _) = crate::run(five_steps(&world, fail_at)).await;
        assert_eq!(
            outcome,
            Outcome::RolledBack {
                cause: RollbackCause::StepFailed {
                    step: NAMES[fail_at].into(),
                    error: format!("{} broke", NAMES[fail_at]),
                }
            }
        );
        let expected: Vec<String> = NAMES[..=fail_at].iter().rev().map(|s| s.to_string()).collect();
        assert_eq!(world.compensated(), expected, "failing at {fail_at}");
        // The failed step's partial effect was cleaned up too.
        assert!(world.effects().is_empty(), "failing at {fail_at}: {:?}", world.effects());
        let executed: Vec<String> =
            world.journal().into_iter().filter(|e| e.starts_with("execute")).collect();
        assert_eq!(executed.len(), fail_at + 1, "no step after the failure ran");
    }
}

#[tokio::test]
async fn a_failing_compensation_ends_in_rollback_incomplete_naming_it() {
    let world = World::default();
    let saga = Saga::builder("s", 1)
        .step("a", TestStep::new("a", &world))
        .step("b", TestStep::new("b", &world).broken_compensation())
        .step("c", TestStep::new("c", &world).failing())
        .build()
        .unwrap();
    let (outcome, executor, id) = crate::run(saga).await;
    let Outcome::RollbackIncomplete { cause, not_undone } = &outcome else {
        panic!("unexpected {outcome:?}");
    };
    assert!(matches!(cause, RollbackCause::StepFailed { step, .. } if step == "c"));
    assert_eq!(
        not_undone,
        &[NotUndone {
            step: "b".into(),
            reason: NotUndoneReason::CompensationFailed("cannot undo b".into())
        }]
    );
    // Compensations are retried (3 attempts) and the rollback goes on past the failure.
    assert_eq!(
        world.journal().iter().filter(|e| e.starts_with("compensation failed b")).count(),
        3
    );
    assert_eq!(world.compensated(), ["c", "a"]);
    assert_eq!(world.effects().into_iter().collect::<Vec<_>>(), ["b"]);
    let log = executor.log(id).await.unwrap();
    let last = &log.last().unwrap().message;
    assert!(
        last.starts_with("rollback incomplete")
            && last.contains("b (compensation failed: cannot undo b)"),
        "{last}"
    );
    assert!(outcome.to_string().contains("b (compensation failed"), "{outcome}");
}

#[tokio::test]
async fn irreversible_steps_are_skipped_and_reported_and_read_only_steps_ignored() {
    let world = World::default();
    let saga = Saga::builder("s", 1)
        .step("a", TestStep::new("a", &world))
        .step("migrate", TestStep::new("migrate", &world).kind(StepKind::Irreversible))
        .step("check", TestStep::new("check", &world).kind(StepKind::ReadOnly))
        .step("d", TestStep::new("d", &world).failing())
        .build()
        .unwrap();
    let (outcome, _, _) = crate::run(saga).await;
    let Outcome::RollbackIncomplete { not_undone, .. } = &outcome else {
        panic!("unexpected {outcome:?}");
    };
    assert_eq!(
        not_undone,
        &[NotUndone { step: "migrate".into(), reason: NotUndoneReason::Irreversible }]
    );
    assert_eq!(world.compensated(), ["d", "a"]);
    assert_eq!(world.effects().into_iter().collect::<Vec<_>>(), ["migrate"]);
}

/// On tokio's paused clock (the store is in memory): had the rollback waited for the 3 s sibling,
/// the clock would say so exactly.
#[tokio::test(start_paused = true)]
async fn a_failed_branch_cancels_its_running_sibling_then_compensates_both() {
    let world = World::default();
    let saga = Saga::builder("s", 1)
        .step("a", TestStep::new("a", &world))
        .parallel(|g| {
            g.step("fast-fail", TestStep::new("fast-fail", &world).failing())
                .step("slow", TestStep::new("slow", &world).slow(Duration::from_secs(3)))
        })
        .step("never", TestStep::new("never", &world))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let (outcome, executor, id) = crate::run(saga).await;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    // The rollback did not wait for the 3 s sibling: it was cancelled (no grace: it does not
    // watch its token) and recorded as such.
    assert!(started.elapsed() < Duration::from_secs(1), "waited {:?}", started.elapsed());
    let records = executor.store().read(id).await.unwrap();
    assert!(records.iter().any(|r| matches!(&r.kind,
        RecordKind::StepFailed { step, error, .. } if step == "slow" && error == "cancelled")));
    // The sibling's execute ended after the failure, so it is undone first, then the failed
    // step, then a.
    assert_eq!(world.compensated(), ["slow", "fast-fail", "a"]);
    assert!(world.effects().is_empty());
    assert!(!world.journal().iter().any(|e| e.contains("never")));
}

/// A step whose compensation is slow and fails `flaky` times first, with its own timeout and
/// retry policy for `compensate` when `own` is set (else the step's, which are tight).
struct SlowCleanup {
    own: bool,
    flaky: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl saga_core::Step for SlowCleanup {
    type Output = ();
    async fn execute(&self, _: &saga_core::StepContext) -> Result<(), saga_core::StepError> {
        Ok(())
    }
    async fn compensate(
        &self,
        _: &saga_core::StepContext,
        _: saga_core::Executed<()>,
    ) -> Result<(), saga_core::StepError> {
        tokio::time::sleep(std::time::Duration::from_millis(120)).await;
        if self.flaky.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.flaky.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            return Err(saga_core::StepError::transient("cleanup flaked"));
        }
        Ok(())
    }
    fn retry_policy(&self) -> saga_core::RetryPolicy {
        saga_core::RetryPolicy::none()
    }
    fn timeout(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_millis(50))
    }
    fn compensation_retry_policy(&self) -> saga_core::RetryPolicy {
        if self.own {
            saga_core::RetryPolicy::exponential(4, std::time::Duration::from_millis(5))
        } else {
            self.retry_policy()
        }
    }
    fn compensation_timeout(&self) -> Option<std::time::Duration> {
        if self.own {
            Some(std::time::Duration::from_secs(2))
        } else {
            self.timeout()
        }
    }
}

/// On tokio's paused clock: the 120 ms cleanup against the 50 ms and 2 s timeouts is exact.
#[tokio::test(start_paused = true)]
async fn a_compensation_has_its_own_timeout_and_retry_policy() {
    let world = World::default();
    for own in [false, true] {
        let cleanup = SlowCleanup { own, flaky: std::sync::atomic::AtomicU32::new(2) };
        let saga = Saga::builder("s", 1)
            .step("cleanup", cleanup)
            .step("b", TestStep::new("b", &world).failing())
            .build()
            .unwrap();
        let (outcome, _, _) = crate::run(saga).await;
        if own {
            // 2 s per attempt and 4 attempts: two flakes, then it is undone.
            assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
        } else {
            // The step's 50 ms timeout and single attempt: the slow cleanup times out for good.
            let Outcome::RollbackIncomplete { not_undone, .. } = &outcome else {
                panic!("{outcome:?}")
            };
            assert!(not_undone[0].to_string().contains("timed out after"), "{}", not_undone[0]);
        }
    }
}
