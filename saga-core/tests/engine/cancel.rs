//! Cancellation: prompt, durable, refused past the point of no return, never of a compensation.
//!
//! The executor runs on the in-memory store here, so the tests run on tokio's paused clock: a
//! sleep of the test or of a step takes no real time, and elapsed times are exact.

use std::sync::atomic::Ordering;
use std::time::Duration;

use saga_core::log::RecordKind;
use saga_core::state::{Compensation, Execution};
use saga_core::{Error, Outcome, RollbackCause, Saga};
use tokio::time::Instant;

use crate::support::{poll_status, TestStep, World};

async fn wait_until_started(
    executor: &saga_core::Executor,
    id: saga_core::OperationId,
    step: &str,
) {
    poll_status(executor, id, &format!("step {step} starts"), |s| s.step(step).is_some()).await;
}

#[tokio::test(start_paused = true)]
async fn a_cancel_during_a_long_step_ends_it_within_100_ms_and_rolls_back() {
    let world = World::default();
    let saga = Saga::builder("s", 1)
        .step("a", TestStep::new("a", &world))
        .step("long", TestStep::new("long", &world).slow(Duration::from_secs(30)))
        .step("c", TestStep::new("c", &world))
        .build()
        .unwrap();
    let executor = crate::executor(std::sync::Arc::new(saga_core::MemoryStore::new()), vec![saga]);
    let id = crate::start(&executor, "s").await;
    wait_until_started(&executor, id, "long").await;
    let asked = Instant::now();
    executor.cancel(id, "ops", "wrong version").await.unwrap();
    // CancelRequested is durable when cancel returns.
    let records = executor.store().read(id).await.unwrap();
    assert!(records.iter().any(|r| matches!(r.kind, RecordKind::CancelRequested { .. })));
    let outcome =
        tokio::time::timeout(Duration::from_secs(5), executor.wait(id)).await.unwrap().unwrap();
    // The 30 s step was stopped, not waited for: the whole rollback took under 100 ms of the
    // (paused, so exact) clock.
    let took = asked.elapsed();
    assert!(took < Duration::from_millis(100), "took {took:?}");
    assert_eq!(
        outcome,
        Outcome::RolledBack {
            cause: RollbackCause::Cancelled { actor: "ops".into(), reason: "wrong version".into() }
        }
    );
    let records = executor.store().read(id).await.unwrap();
    assert!(
        records.iter().any(|r| matches!(&r.kind,
            RecordKind::StepFailed { step, error, .. } if step == "long" && error == "cancelled")),
        "the long step's end is recorded: {records:?}"
    );
    assert_eq!(world.compensated(), ["long", "a"]);
    assert!(!world.journal().iter().any(|e| e.contains("execute c")));
    // Cancelling a finished Operation is a clear error.
    let err = executor.cancel(id, "ops", "again").await.unwrap_err();
    assert!(matches!(err, Error::AlreadyFinished { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_cancel_after_the_point_of_no_return_is_refused_naming_the_step() {
    let world = World::default();
    let saga = Saga::builder("s", 1)
        .step("a", TestStep::new("a", &world))
        .step("commit", TestStep::new("commit", &world))
        .point_of_no_return()
        .step("slow", TestStep::new("slow", &world).slow(Duration::from_millis(300)))
        .build()
        .unwrap();
    let executor = crate::executor(std::sync::Arc::new(saga_core::MemoryStore::new()), vec![saga]);
    let id = crate::start(&executor, "s").await;
    wait_until_started(&executor, id, "slow").await;
    let err = executor.cancel(id, "ops", "too late").await.unwrap_err();
    match &err {
        Error::PastPointOfNoReturn { step, .. } => assert_eq!(step, "commit"),
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("point of no return (step commit)"), "{err}");
    assert_eq!(executor.wait(id).await.unwrap(), Outcome::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_does_not_interrupt_a_compensation() {
    let world = World::default();
    let a = TestStep::new("a", &world).slow_compensation(Duration::from_millis(300));
    let compensate_calls = a.compensation_calls.clone();
    let saga = Saga::builder("s", 1)
        .step("a", a)
        .step("b", TestStep::new("b", &world).failing())
        .build()
        .unwrap();
    let executor = crate::executor(std::sync::Arc::new(saga_core::MemoryStore::new()), vec![saga]);
    let id = crate::start(&executor, "s").await;
    poll_status(&executor, id, "the compensation of a starts", |s| {
        s.step("a").is_some_and(|a| a.compensation == Compensation::Running)
    })
    .await;
    executor.cancel(id, "ops", "hurry").await.expect("cancel while rolling back is accepted");
    // The cancel came while the compensation of a ran (it takes 300 ms).
    assert_eq!(world.compensated(), ["b"], "a's compensation ended before the cancel");
    assert_eq!(executor.wait(id).await.unwrap().status(), saga_core::Status::RolledBack);
    assert_eq!(world.compensated(), ["b", "a"]);
    assert!(world.effects().is_empty());
    // The running compensation of a was not interrupted and run again: exactly one attempt ran
    // (compensate was called once), the log counts one, records one start, and no
    // CancelRequested (the Operation was already rolling back).
    assert_eq!(compensate_calls.load(Ordering::SeqCst), 1, "attempts of a's compensation");
    let state = executor.status(id).await.unwrap();
    assert_eq!(state.step("a").unwrap().compensation_attempts, 1, "{state:?}");
    let records = executor.store().read(id).await.unwrap();
    let starts = records
        .iter()
        .filter(|r| matches!(&r.kind, RecordKind::CompensationStarted { step, .. } if step == "a"))
        .count();
    assert_eq!(starts, 1, "{records:?}");
    assert!(!records.iter().any(|r| matches!(r.kind, RecordKind::CancelRequested { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_cancel_during_a_retry_wait_rolls_back_without_another_attempt() {
    let world = World::default();
    let mut flaky = TestStep::new("flaky", &world).transient_failures(100);
    flaky.retry = saga_core::RetryPolicy::exponential(100, Duration::from_secs(10));
    let saga = Saga::builder("s", 1)
        .step("a", TestStep::new("a", &world))
        .step("flaky", flaky)
        .build()
        .unwrap();
    let executor = crate::executor(std::sync::Arc::new(saga_core::MemoryStore::new()), vec![saga]);
    let id = crate::start(&executor, "s").await;
    poll_status(&executor, id, "flaky waits to retry", |s| {
        s.step("flaky").is_some_and(|s| matches!(s.execution, Execution::Retrying { .. }))
    })
    .await;
    executor.cancel(id, "ops", "stop").await.unwrap();
    let outcome =
        tokio::time::timeout(Duration::from_secs(2), executor.wait(id)).await.unwrap().unwrap();
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    assert_eq!(world.journal().iter().filter(|e| e.starts_with("execute flaky")).count(), 1);
    assert_eq!(world.compensated(), ["flaky", "a"]);
}

#[tokio::test(start_paused = true)]
async fn a_queued_operation_can_be_cancelled_at_once_and_never_starts() {
    let world = World::default();
    let saga = Saga::builder("s", 1)
        .step("slow", TestStep::new("slow", &world).slow(Duration::from_millis(500)))
        .build()
        .unwrap();
    let executor = saga_core::Executor::builder(std::sync::Arc::new(saga_core::MemoryStore::new()))
        .saga(saga)
        .max_running(1)
        .build()
        .unwrap();
    let running = crate::start(&executor, "s").await;
    let queued = crate::start(&executor, "s").await;
    wait_until_started(&executor, running, "slow").await;
    let asked = Instant::now();
    tokio::time::timeout(Duration::from_millis(200), executor.cancel(queued, "ops", "not needed"))
        .await
        .expect("cancel of a queued Operation answers at once")
        .unwrap();
    assert!(asked.elapsed() < Duration::from_millis(200));
    let outcome = executor.wait(queued).await.unwrap();
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    assert!(executor.status(queued).await.unwrap().steps().is_empty(), "nothing of it ran");
    assert_eq!(executor.wait(running).await.unwrap(), Outcome::Succeeded);
}

/// A long step that watches its token (`cleans_up`) and returns after cleaning up, or ignores it.
struct Watching {
    cleans_up: bool,
    world: World,
}

#[async_trait::async_trait]
impl saga_core::Step for Watching {
    type Output = ();
    async fn execute(&self, ctx: &saga_core::StepContext) -> Result<(), saga_core::StepError> {
        if self.cleans_up {
            ctx.cancellation().cancelled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.world.record_note("cleaned up long");
            return Err(saga_core::StepError::permanent("stopped: half-copied files removed"));
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(())
    }
    fn cancel_grace(&self) -> Duration {
        Duration::from_millis(300)
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_step_sees_its_token_and_has_its_grace_period_to_return() {
    for cleans_up in [true, false] {
        let world = World::default();
        let saga = Saga::builder("s", 1)
            .step("long", Watching { cleans_up, world: world.clone() })
            .build()
            .unwrap();
        let executor =
            crate::executor(std::sync::Arc::new(saga_core::MemoryStore::new()), vec![saga]);
        let id = crate::start(&executor, "s").await;
        wait_until_started(&executor, id, "long").await;
        let asked = Instant::now();
        executor.cancel(id, "ops", "stop").await.unwrap();
        let outcome =
            tokio::time::timeout(Duration::from_secs(5), executor.wait(id)).await.unwrap().unwrap();
        assert_eq!(outcome.status(), saga_core::Status::RolledBack);
        let took = asked.elapsed();
        let records = executor.store().read(id).await.unwrap();
        let error = records
            .iter()
            .find_map(|r| match &r.kind {
                RecordKind::StepFailed { step, error, .. } if step == "long" => Some(error.clone()),
                _ => None,
            })
            .expect("the step's end is recorded");
        if cleans_up {
            // It returned within its grace: what it returned is recorded, its cleanup ran.
            assert_eq!(error, "stopped: half-copied files removed");
            assert!(world.journal().contains(&"cleaned up long".to_owned()));
            assert!(took < Duration::from_millis(300), "took {took:?}");
        } else {
            // It ignored its token: dropped once the 300 ms grace passed, recorded as cancelled.
            assert_eq!(error, "cancelled");
            assert!(took >= Duration::from_millis(300), "dropped before its grace ended: {took:?}");
            assert!(took < Duration::from_secs(2), "took {took:?}");
        }
    }
}
