//! Forward progress: retries, outputs, parallel groups, typed context errors.

use std::time::Duration;

use saga_core::state::Execution;
use saga_core::{
    async_trait, Outcome, Resource, RetryPolicy, Saga, Start, Step, StepContext, StepError,
};

use crate::support::{TestStep, World};

#[tokio::test]
async fn a_transient_error_is_retried_then_succeeds() {
    let world = World::default();
    let saga = Saga::builder("s", 1)
        .step("a", TestStep::new("a", &world))
        .step("b", TestStep::new("b", &world).transient_failures(2))
        .build()
        .unwrap();
    let (outcome, executor, id) = crate::run(saga).await;
    assert_eq!(outcome, Outcome::Succeeded);
    let state = executor.status(id).await.unwrap();
    assert_eq!(state.step("b").unwrap().attempts, 3);
    assert!(matches!(state.step("b").unwrap().execution, Execution::Succeeded { .. }));
    assert_eq!(world.effects().into_iter().collect::<Vec<_>>(), ["a", "b"]);
    let log: Vec<String> =
        executor.log(id).await.unwrap().iter().map(|l| l.message.clone()).collect();
    assert!(log.iter().any(|l| l.starts_with("retrying b in")), "{log:?}");
    assert!(log.iter().any(|l| l == "step b started (attempt 3)"), "{log:?}");
}

#[tokio::test]
async fn transient_errors_past_the_attempt_bound_roll_back() {
    let world = World::default();
    let saga = Saga::builder("s", 1)
        .step("a", TestStep::new("a", &world))
        .step("b", TestStep::new("b", &world).transient_failures(10))
        .build()
        .unwrap();
    let (outcome, executor, id) = crate::run(saga).await;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);
    assert_eq!(executor.status(id).await.unwrap().step("b").unwrap().attempts, 3);
    assert!(world.effects().is_empty());
}

struct Reads;

#[async_trait]
impl Step for Reads {
    type Output = u32;
    async fn execute(&self, ctx: &StepContext) -> Result<u32, StepError> {
        let params: Vec<u32> = ctx.params()?;
        let first: String = ctx.output("a")?;
        assert_eq!(first, "a-output");
        // Wrong type, unknown step and a step that does not run earlier are typed errors.
        assert!(ctx.output::<u64>("a").is_err());
        assert!(ctx.output::<String>("nope").is_err());
        assert!(ctx.output::<String>("c").is_err());
        assert!(ctx.params::<String>().is_err());
        Ok(params.iter().sum())
    }
}

#[tokio::test]
async fn steps_read_params_and_earlier_outputs_typed() {
    let world = World::default();
    let saga = Saga::builder("s", 1)
        .step("a", TestStep::new("a", &world))
        .step("b", Reads)
        .needs(&["a"])
        .step("c", TestStep::new("c", &world))
        .build()
        .unwrap();
    let executor = crate::executor(std::sync::Arc::new(saga_core::MemoryStore::new()), vec![saga]);
    let request = Start::new("s", Resource::new("app", "x"))
        .params(&vec![1u32, 2, 3])
        .environment("test")
        .actor("me");
    let id = executor.start(request).await.unwrap();
    assert_eq!(executor.wait(id).await.unwrap(), Outcome::Succeeded);
    let state = executor.status(id).await.unwrap();
    match &state.step("b").unwrap().execution {
        Execution::Succeeded { output } => assert_eq!(&output[..], b"6"),
        other => panic!("unexpected {other:?}"),
    }
}

struct NeedsMissing;

#[async_trait]
impl Step for NeedsMissing {
    type Output = ();
    async fn execute(&self, ctx: &StepContext) -> Result<(), StepError> {
        let _: u8 = ctx.output("a")?;
        Ok(())
    }
}

#[tokio::test]
async fn a_wrong_output_type_fails_the_step_with_a_typed_message() {
    let world = World::default();
    let saga = Saga::builder("s", 1)
        .step("a", TestStep::new("a", &world))
        .step("b", NeedsMissing)
        .build()
        .unwrap();
    let (outcome, _, _) = crate::run(saga).await;
    match outcome {
        Outcome::RolledBack { cause: saga_core::RollbackCause::StepFailed { step, error } } => {
            assert_eq!(step, "b");
            assert!(error.contains("does not deserialize to u8"), "{error}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// On tokio's paused clock (the store is in memory): the steps' 300 ms take no real time and the
/// elapsed time is exact.
#[tokio::test(start_paused = true)]
async fn a_parallel_group_runs_its_steps_at_once() {
    let world = World::default();
    let saga = Saga::builder("s", 1)
        .parallel(|g| {
            g.step("a", TestStep::new("a", &world).slow(Duration::from_millis(300)))
                .step("b", TestStep::new("b", &world).slow(Duration::from_millis(300)))
        })
        .step("c", TestStep::new("c", &world))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let (outcome, _, _) = crate::run(saga).await;
    assert_eq!(outcome, Outcome::Succeeded);
    // Sequential would take 600 ms or more.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(590), "{took:?}");
    let journal = world.journal();
    assert_eq!(journal.last().map(String::as_str), Some("execute c #1"));
}

#[tokio::test(start_paused = true)]
async fn past_the_point_of_no_return_failures_retry_forward() {
    // Five permanent failures, then success, with a policy of six attempts: before the point of
    // no return the first failure rolls back (a permanent error is not retried); past it, every
    // error is retried forward within the policy, and the sixth attempt succeeds.
    let flaky = |world: &World| {
        let mut flaky = TestStep::new("b", world).permanent_failures(5);
        flaky.retry = RetryPolicy::exponential(6, Duration::from_millis(1));
        flaky
    };

    let world = World::default();
    let saga = Saga::builder("s", 1)
        .step("a", TestStep::new("a", &world))
        .step("b", flaky(&world))
        .build()
        .unwrap();
    let (outcome, executor, id) = crate::run(saga).await;
    assert_eq!(outcome.status(), saga_core::Status::RolledBack, "{outcome:?}");
    assert_eq!(executor.status(id).await.unwrap().step("b").unwrap().attempts, 1);

    let world = World::default();
    let saga = Saga::builder("s", 1)
        .step("a", TestStep::new("a", &world))
        .point_of_no_return()
        .step("b", flaky(&world))
        .build()
        .unwrap();
    let (outcome, executor, id) = crate::run(saga).await;
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(executor.status(id).await.unwrap().step("b").unwrap().attempts, 6);
    assert_eq!(world.effects().into_iter().collect::<Vec<_>>(), ["a", "b"]);
}
