//! Black-box tests of the executor on the in-memory store.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod support;

mod api;
mod attention;
mod cancel;
mod crash;
mod faults;
mod fleet;
mod forward;
mod logs;
mod many;
mod no_effect;
mod queue;
mod report;
mod rollback;
mod shutdown;

use std::sync::Arc;

use saga_core::store::Store;
use saga_core::{Executor, OperationId, Outcome, Resource, Saga, Start};

/// An executor over `store` with these sagas, named like a restarted node would be.
pub fn executor(store: Arc<dyn Store>, sagas: Vec<Saga>) -> Executor {
    let mut builder = Executor::builder(store).owner("node-1");
    for saga in sagas {
        builder = builder.saga(saga);
    }
    builder.build().expect("valid executor")
}

/// Starts an Operation of `saga` with empty params, on resource `app web`.
pub async fn start(executor: &Executor, saga: &str) -> OperationId {
    start_on(executor, saga, "web").await
}

/// Starts an Operation of `saga` with empty params, on resource `app <app>`: Operations on one
/// resource run one at a time, in start order.
pub async fn start_on(executor: &Executor, saga: &str, app: &str) -> OperationId {
    let request =
        Start::new(saga, Resource::new("app", app)).params(&()).environment("test").actor("tester");
    executor.start(request).await.expect("started")
}

/// Runs one Operation of `saga` to its outcome.
pub async fn run(saga: Saga) -> (Outcome, Executor, OperationId) {
    let name = saga.name().to_owned();
    let executor = executor(Arc::new(saga_core::MemoryStore::new()), vec![saga]);
    let id = start(&executor, &name).await;
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(20), executor.wait(id))
        .await
        .expect("finishes in time")
        .expect("has an outcome");
    (outcome, executor, id)
}
