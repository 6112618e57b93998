//! The workload on this engine: Operations of a saga of N no-op steps.

use std::sync::Arc;

use saga_core::store::Store;
use saga_core::{
    async_trait, Executor, Outcome, Resource, Saga, Start, Step, StepContext, StepError,
};

/// The saga's name.
pub const SAGA: &str = "noop";

/// A step that does nothing and returns `()`: what is left is the engine's own work.
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

#[async_trait]
impl Step for Noop {
    type Output = ();

    async fn execute(&self, _ctx: &StepContext) -> Result<(), StepError> {
        Ok(())
    }
}

/// The name of step `i`.
pub fn step_name(i: usize) -> String {
    format!("s{i:03}")
}

/// A saga of `steps` no-op steps run one after the other.
pub fn noop_saga(steps: usize) -> Saga {
    let mut builder = Saga::builder(SAGA, 1);
    for i in 0..steps {
        builder = builder.step(step_name(i), Noop);
    }
    builder.build().expect("the no-op saga is valid")
}

/// An executor over `store` that runs the no-op saga of `steps` steps, with room for
/// `max_running` Operations at once.
pub fn executor(store: Arc<dyn Store>, steps: usize, max_running: usize) -> Executor {
    Executor::builder(store)
        .owner("bench")
        .max_running(max_running)
        .saga(noop_saga(steps))
        .build()
        .expect("building the executor")
}

/// Numbers the resources of [`run_one`].
static NEXT_APP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Starts one Operation, on a resource of its own (Operations on one resource run one at a
/// time), and waits for its outcome, which must be a success.
pub async fn run_one(executor: &Executor) {
    let app = format!("web-{}", NEXT_APP.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let id = executor
        .start(
            Start::new(SAGA, Resource::new("app", app))
                .params(&())
                .environment("bench")
                .actor("bench"),
        )
        .await
        .expect("starting an operation");
    let outcome = executor.wait(id).await.expect("waiting for an operation");
    assert_eq!(outcome, Outcome::Succeeded);
}

/// Runs `n` Operations at once (each started and awaited by its own task) and waits for all.
pub async fn run_many(executor: &Executor, n: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let executor = executor.clone();
        tasks.spawn(async move { run_one(&executor).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("an operation's task panicked");
    }
}
