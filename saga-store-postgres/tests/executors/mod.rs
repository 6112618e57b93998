//! Executors over one database, each with a store (a pool) of its own as separate processes
//! have: a submitted Operation is claimed by a worker at once, a cancel made by another
//! executor reaches the owner at once, and a `wait` on an executor that does not run the
//! Operation is answered as it settles, all through `LISTEN`/`NOTIFY` (the polls are set far
//! apart, so that only the notifications can explain the speed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_core::executor::CancelAnswer;
use saga_core::log::RecordKind;
use saga_core::store::Store;
use saga_core::{
    async_trait, Executed, Executor, Outcome, Resource, Saga, Start, Step, StepContext, StepError,
};

use crate::support::{url, Schema};

/// A step that finishes at once, or (`wait`) runs until its token fires.
struct Work {
    wait: bool,
}

#[async_trait]
impl Step for Work {
    type Output = ();

    async fn execute(&self, ctx: &StepContext) -> Result<(), StepError> {
        if self.wait {
            ctx.cancellation().cancelled().await;
            return Err(StepError::permanent("cancelled"));
        }
        Ok(())
    }

    async fn compensate(&self, _: &StepContext, _: Executed<()>) -> Result<(), StepError> {
        Ok(())
    }
}

fn saga(wait: bool) -> Saga {
    Saga::builder("work", 1).step("work", Work { wait }).build().expect("a valid saga")
}

/// An executor that only submits and cancels (it never claims), and a worker that scans only
/// once a minute and polls cancel requests every 10 s on its own.
async fn api_and_worker(schema: &Schema, wait: bool) -> (Executor, Executor) {
    let api = Executor::builder(schema.store().await)
        .saga(saga(wait))
        .owner("api")
        .takeover_interval(None)
        .build()
        .expect("builds");
    // Its own application name, to see its listener connect.
    let worker_name = format!("{}-worker", schema.name);
    let worker_store = schema.store_with(schema.options().application_name(&worker_name)).await;
    let worker = Executor::builder(worker_store)
        .saga(saga(wait))
        .owner("worker")
        .takeover_interval(Some(Duration::from_secs(60)))
        .cancel_poll_interval(Duration::from_secs(10))
        .build()
        .expect("builds");
    // Starts the worker's watcher (and its LISTEN connection), then waits until it listens: the
    // event, not a guess of how long it takes.
    let _ = worker.recover().await.expect("recovers");
    crate::support::listening(&crate::support::admin(&schema.url).await, &worker_name, 1).await;
    (api, worker)
}

/// Polls the store until the Operation has an outcome, for at most `limit`.
async fn outcome_within(store: &dyn Store, id: saga_core::OperationId, limit: Duration) -> Outcome {
    let deadline = Instant::now() + limit;
    loop {
        let records = store.read(id).await.expect("reads");
        if let Some(outcome) = records.iter().find_map(|r| match &r.kind {
            RecordKind::OperationFinished { outcome } => Some(outcome.clone()),
            _ => None,
        }) {
            return outcome;
        }
        assert!(Instant::now() < deadline, "no outcome within {limit:?}: {records:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_operation_is_claimed_by_a_worker_at_once() {
    let Some(url) = url("a_submitted_operation_is_claimed_by_a_worker_at_once") else { return };
    let schema = Schema::new(&url);
    let (api, worker) = api_and_worker(&schema, false).await;
    let submitted = Instant::now();
    let id = api.submit(Start::new("work", Resource::new("app", "web"))).await.expect("submits");
    let outcome = outcome_within(api.store().as_ref(), id, Duration::from_secs(5)).await;
    let took = submitted.elapsed();
    assert_eq!(outcome, Outcome::Succeeded);
    assert!(!api.is_running(id), "the submitter never runs it");
    // The worker's own scan is a minute away: only the notification explains this, within
    // any time well short of that (a loaded machine takes seconds at most).
    assert!(took < Duration::from_secs(5), "the worker took {took:?}");
    println!("submitted to finished by the worker: {took:?}");
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_another_executor_reaches_the_owner_at_once() {
    let Some(url) = url("a_cancel_from_another_executor_reaches_the_owner_at_once") else {
        return;
    };
    let schema = Schema::new(&url);
    let (api, worker) = api_and_worker(&schema, true).await;
    let id = api.submit(Start::new("work", Resource::new("app", "web"))).await.expect("submits");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !worker.is_running(id) {
        assert!(Instant::now() < deadline, "the worker never took the Operation");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cancelled = Instant::now();
    match api.cancel(id, "operator", "test").await.expect("records the cancel request") {
        CancelAnswer::Requested { pending } => {
            assert_eq!((pending.operation, pending.actor.as_str()), (id, "operator"))
        }
        other => panic!("a cancel of an Operation running elsewhere: {other:?}"),
    }
    let outcome = outcome_within(api.store().as_ref(), id, Duration::from_secs(5)).await;
    let took = cancelled.elapsed();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    // The worker's own poll is 10 s away: only the notification explains this, within any time
    // well short of that (a loaded machine takes seconds at most).
    assert!(took < Duration::from_secs(5), "the rollback took {took:?}");
    println!("cancel requested to rolled back: {took:?}");
    drop(Arc::new(worker));
}

/// An executor that does not run the Operation (it never claims; its own polls of the store,
/// four times its cancel poll interval, are 40 s apart) waits for it: the worker rolls it back
/// after a cancel, and the `Settled` notification of the finishing append answers the wait at
/// once. A second cancel then is refused as finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_on_another_executor_is_answered_when_the_operation_settles() {
    let Some(url) = url("a_wait_on_another_executor_is_answered_when_the_operation_settles") else {
        return;
    };
    let schema = Schema::new(&url);
    let (_, worker) = api_and_worker(&schema, true).await;
    let api = Executor::builder(schema.store().await)
        .saga(saga(true))
        .owner("api")
        .takeover_interval(None)
        .cancel_poll_interval(Duration::from_secs(10))
        .build()
        .expect("builds");
    let id = api.submit(Start::new("work", Resource::new("app", "web"))).await.expect("submits");
    let waiting = {
        let api = api.clone();
        tokio::spawn(async move { api.wait_timeout(id, Duration::from_secs(30)).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !worker.is_running(id) {
        assert!(Instant::now() < deadline, "the worker never took the Operation");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answer = api.cancel(id, "operator", "test").await.expect("records the cancel request");
    assert!(matches!(answer, CancelAnswer::Requested { .. }), "{answer:?}");
    let outcome = waiting.await.expect("joins").expect("the wait is answered");
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    match api.cancel(id, "operator", "again").await {
        Err(saga_core::Error::AlreadyFinished { operation, .. }) => assert_eq!(operation, id),
        other => panic!("a cancel of a finished Operation: {other:?}"),
    }
    drop(worker);
}

/// How soon a `wait` on an executor that does not run the Operation answers after the Operation
/// ends on another: for 20 Operations, each waited for on the api executor (whose own polls are
/// 40 s apart, so only the `Settled` notification explains a quick answer), from the time of the
/// worker's `OperationFinished` record (taken before its commit, so the figure includes the
/// commit) to the answer. Prints the median and the slowest; the target is 200 ms, asserted
/// with room for a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_elsewhere_answers_within_moments_of_the_end() {
    let Some(url) = url("a_wait_elsewhere_answers_within_moments_of_the_end") else {
        return;
    };
    let schema = Schema::new(&url);
    let (_, worker) = api_and_worker(&schema, false).await;
    let _ = worker.recover().await.expect("recovers");
    let api = Executor::builder(schema.store().await)
        .saga(saga(false))
        .owner("api")
        .takeover_interval(None)
        .cancel_poll_interval(Duration::from_secs(10))
        .build()
        .expect("builds");
    let mut latencies = Vec::new();
    for i in 0..20 {
        let request = Start::new("work", Resource::new("app", format!("web-{i}")));
        let id = api.submit(request).await.expect("submits");
        let outcome = api.wait_timeout(id, Duration::from_secs(30)).await;
        let answered_ms = saga_core::Timestamp::now().unix_ms();
        assert_eq!(outcome.expect("answered"), Outcome::Succeeded, "operation {id}");
        let records = api.store().read(id).await.expect("reads");
        let finished_ms = records
            .iter()
            .find(|r| matches!(r.kind, RecordKind::OperationFinished { .. }))
            .map(|r| r.at_ms)
            .expect("an outcome");
        latencies.push(Duration::from_millis(answered_ms.saturating_sub(finished_ms)));
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let slowest = latencies[latencies.len() - 1];
    println!("wait on another executor, after the end: median {median:?}, slowest {slowest:?}");
    assert!(slowest < Duration::from_secs(5), "{latencies:?}");
    drop(worker);
}
