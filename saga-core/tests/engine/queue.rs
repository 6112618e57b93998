//! One Operation at a time per resource: a second waits behind the first, in start order, across
//! executors; Operations on different resources never wait for each other.
//!
//! The store is in memory, so the tests on one thread run on tokio's paused clock; the two on
//! several threads (where the clock cannot be paused) run in real time. The spans are measured
//! on tokio's clock either way.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::store::Store;
use saga_core::{
    async_trait, Executor, MemoryStore, OperationId, Outcome, Resource, RollbackCause, Saga, Start,
    Step, StepContext, StepError,
};
use tokio::time::Instant;

/// When each Operation's only step ran: (Operation, start, end).
type Spans = Arc<Mutex<Vec<(OperationId, Instant, Instant)>>>;

struct Timed {
    ms: u64,
    spans: Spans,
}

#[async_trait]
impl Step for Timed {
    type Output = ();
    async fn execute(&self, ctx: &StepContext) -> Result<(), StepError> {
        let start = Instant::now();
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        self.spans.lock().unwrap().push((ctx.operation_id(), start, Instant::now()));
        Ok(())
    }
}

fn timed(ms: u64, spans: &Spans) -> Saga {
    Saga::builder("timed", 1).step("work", Timed { ms, spans: spans.clone() }).build().unwrap()
}

fn node(store: Arc<dyn Store>, name: &str, saga: Saga) -> Executor {
    Executor::builder(store)
        .owner(name)
        .cancel_poll_interval(Duration::from_millis(10))
        .saga(saga)
        .build()
        .unwrap()
}

async fn outcome(executors: &[&Executor], id: OperationId) -> Outcome {
    let start = Instant::now();
    loop {
        for executor in executors {
            if executor.is_running(id) {
                return tokio::time::timeout(Duration::from_secs(20), executor.wait(id))
                    .await
                    .expect("finishes in time")
                    .expect("has an outcome");
            }
            if let Some(outcome) = executor.status(id).await.unwrap().outcome() {
                return outcome.clone();
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{id} never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_operations_on_one_resource_from_two_executors_run_one_after_another_in_start_order() {
    let spans = Spans::default();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = node(store.clone(), "a", timed(30, &spans));
    let b = node(store.clone(), "b", timed(30, &spans));
    let mut ids = Vec::new();
    for i in 0..10 {
        let executor = if i % 2 == 0 { &a } else { &b };
        ids.push(crate::start_on(executor, "timed", "web").await);
    }
    for id in &ids {
        assert_eq!(outcome(&[&a, &b], *id).await, Outcome::Succeeded);
    }
    let spans = spans.lock().unwrap().clone();
    let order: Vec<OperationId> = spans.iter().map(|s| s.0).collect();
    assert_eq!(order, ids, "ran in start order");
    for pair in spans.windows(2) {
        assert!(pair[1].1 >= pair[0].2, "{} started before {} ended", pair[1].0, pair[0].0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_operations_on_ten_resources_run_at_the_same_time() {
    let spans = Spans::default();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = node(store.clone(), "a", timed(300, &spans));
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(crate::start_on(&a, "timed", &format!("web-{i}")).await);
    }
    for id in &ids {
        assert_eq!(outcome(&[&a], *id).await, Outcome::Succeeded);
    }
    let spans = spans.lock().unwrap().clone();
    let last_start = spans.iter().map(|s| s.1).max().unwrap();
    let first_end = spans.iter().map(|s| s.2).min().unwrap();
    assert!(last_start < first_end, "an Operation waited for another of another resource");
}

#[tokio::test(start_paused = true)]
async fn a_waiting_operation_says_what_it_waits_for_and_a_cancel_ends_its_wait() {
    let spans = Spans::default();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = node(store.clone(), "a", timed(400, &spans));
    let first = crate::start_on(&a, "timed", "web").await;
    let second = crate::start_on(&a, "timed", "web").await;
    let third = crate::start_on(&a, "timed", "web").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(a.status(first).await.unwrap().waiting_for(), None);
    assert_eq!(a.status(second).await.unwrap().waiting_for(), Some(first));
    assert_eq!(a.status(third).await.unwrap().waiting_for(), Some(second));
    let log = a.log(third).await.unwrap();
    assert!(
        log.iter()
            .any(|l| l.message == format!("waiting for operation {second} on app web to finish")),
        "{log:?}"
    );
    // Cancelled while it waits: it rolls back at once with nothing to undo, and the third moves up.
    a.cancel(second, "ops", "not now").await.unwrap();
    let cancelled = tokio::time::timeout(Duration::from_millis(200), a.wait(second)).await;
    assert_eq!(
        cancelled.expect("ends at once").unwrap(),
        Outcome::RolledBack {
            cause: RollbackCause::Cancelled { actor: "ops".into(), reason: "not now".into() }
        }
    );
    assert_eq!(a.status(third).await.unwrap().waiting_for(), Some(first));
    assert_eq!(a.wait(first).await.unwrap(), Outcome::Succeeded);
    assert_eq!(a.wait(third).await.unwrap(), Outcome::Succeeded);
    let ran: Vec<OperationId> = spans.lock().unwrap().iter().map(|s| s.0).collect();
    assert_eq!(ran, vec![first, third]);
    assert!(store.resource_queue(&Resource::new("app", "web")).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_queue_survives_a_restart() {
    let spans = Spans::default();
    let store = Arc::new(MemoryStore::new());
    let first_node = node(store.clone(), "n", timed(50, &spans));
    let first = crate::start_on(&first_node, "timed", "web").await;
    let second = crate::start_on(&first_node, "timed", "web").await;
    // The process stops before either finished; the next one resumes both, still in order. (The
    // deadline is far past the running step's end: it finishes on its own.)
    let _ = first_node.shutdown(Duration::from_secs(60)).await;
    let next = node(store.clone(), "n", timed(50, &spans));
    let _ = next.recover().await.unwrap();
    assert_eq!(outcome(&[&next], second).await, Outcome::Succeeded);
    assert_eq!(outcome(&[&next], first).await, Outcome::Succeeded);
    let spans = spans.lock().unwrap().clone();
    let first_end = spans.iter().filter(|s| s.0 == first).map(|s| s.2).max().unwrap();
    let seconds: Vec<_> = spans.iter().filter(|s| s.0 == second).collect();
    assert_eq!(seconds.len(), 1, "{spans:?}");
    assert!(seconds[0].1 >= first_end, "the second started before the first ended");
}

#[tokio::test(start_paused = true)]
async fn start_if_idle_refuses_a_busy_resource() {
    let spans = Spans::default();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = node(store.clone(), "a", timed(200, &spans));
    let on = |resource| Start::new("timed", resource).params(&()).environment("test").actor("t");
    let web = || on(Resource::new("app", "web"));
    let first = a.start_if_idle(web()).await.expect("idle");
    let err = a.start_if_idle(web()).await.expect_err("busy");
    assert!(
        matches!(&err, saga_core::Error::ResourceBusy { operation, .. } if *operation == first),
        "{err}"
    );
    assert_eq!(err.to_string(), format!("app web is busy with operation {first}"));
    a.start_if_idle(on(Resource::new("app", "api"))).await.expect("another resource is idle");
    assert_eq!(a.wait(first).await.unwrap(), Outcome::Succeeded);
    a.start_if_idle(web()).await.expect("idle again");
}
