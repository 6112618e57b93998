//! `shutdown(deadline)`: stop at step boundaries, interrupt what still runs at the deadline, roll
//! nothing back, and leave every unfinished Operation to `recover()`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use saga_core::log::RecordKind;
use saga_core::state::Execution;
use saga_core::store::Store;
use saga_core::{
    async_trait, Executor, MemoryStore, OperationId, Outcome, Resource, Saga, Start, Step,
    StepContext, StepError,
};

/// How a step behaves when its token fires.
#[derive(Clone, Copy)]
enum OnCancel {
    /// Returns `StepError::cancelled()` at once.
    Return,
    /// Ignores it and goes on sleeping.
    Ignore,
    /// Finishes its work anyway and returns success.
    Finish,
}

/// Sleeps for `work` on its first attempt (later attempts are quick), counting attempts.
struct Work {
    work: Duration,
    on_cancel: OnCancel,
    attempts: Arc<AtomicU32>,
}

#[async_trait]
impl Step for Work {
    type Output = u32;
    async fn execute(&self, ctx: &StepContext) -> Result<u32, StepError> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        if attempt > 1 {
            return Ok(attempt);
        }
        tokio::select! {
            _ = tokio::time::sleep(self.work) => Ok(attempt),
            _ = ctx.cancellation().cancelled() => match self.on_cancel {
                OnCancel::Return => Err(StepError::cancelled()),
                OnCancel::Ignore => {
                    tokio::time::sleep(self.work).await;
                    Ok(attempt)
                }
                OnCancel::Finish => Ok(attempt),
            },
        }
    }
    fn cancel_grace(&self) -> Duration {
        Duration::from_secs(2)
    }
}

struct Quick(Arc<AtomicU32>);

#[async_trait]
impl Step for Quick {
    type Output = ();
    async fn execute(&self, _: &StepContext) -> Result<(), StepError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Fixture {
    slow: Arc<AtomicU32>,
    next: Arc<AtomicU32>,
    work: Duration,
    on_cancel: OnCancel,
}

impl Fixture {
    fn new(work: Duration, on_cancel: OnCancel) -> Self {
        Fixture { slow: Arc::default(), next: Arc::default(), work, on_cancel }
    }

    fn saga(&self) -> Saga {
        Saga::builder("upgrade", 1)
            .step(
                "slow",
                Work { work: self.work, on_cancel: self.on_cancel, attempts: self.slow.clone() },
            )
            .step("next", Quick(self.next.clone()))
            .build()
            .expect("valid saga")
    }

    fn executor(&self, store: &Arc<MemoryStore>, owner: &str) -> Executor {
        Executor::builder(store.clone()).owner(owner).saga(self.saga()).build().expect("executor")
    }
}

/// A fixture whose first step works for `work`, its store and executor (`node-1`), and an
/// Operation started on it, its first step running.
async fn started(
    work: Duration,
    on_cancel: OnCancel,
) -> (Fixture, Arc<MemoryStore>, Executor, OperationId) {
    let fixture = Fixture::new(work, on_cancel);
    let store = Arc::new(MemoryStore::new());
    let executor = fixture.executor(&store, "node-1");
    let id = start(&executor).await;
    (fixture, store, executor, id)
}

async fn start(executor: &Executor) -> OperationId {
    let request = Start::new("upgrade", Resource::new("app", "web")).actor("tester");
    let id = executor.start(request).await.expect("started");
    // Let the first step start.
    tokio::time::sleep(Duration::from_millis(10)).await;
    id
}

/// Recovers on a fresh executor and returns the outcome.
async fn recover(fixture: &Fixture, store: &Arc<MemoryStore>, id: OperationId) -> Outcome {
    let executor = fixture.executor(store, "node-2");
    let report = executor.recover().await.expect("recover");
    assert_eq!(report.resumed, vec![id], "the shutdown left it for recovery");
    match tokio::time::timeout(Duration::from_secs(60), executor.wait(id)).await {
        Ok(outcome) => outcome.expect("an outcome"),
        Err(_) => panic!("the recovered operation did not finish within 60 s"),
    }
}

/// No record of a rollback: no cancel, no compensation, no outcome.
async fn assert_nothing_rolled_back(store: &MemoryStore, id: OperationId) {
    let records = store.read(id).await.expect("records");
    for record in &records {
        assert!(
            !matches!(
                record.kind,
                RecordKind::CancelRequested { .. }
                    | RecordKind::CompensationStarted { .. }
                    | RecordKind::OperationFinished { .. }
                    | RecordKind::StepFailed { .. }
            ),
            "a shutdown wrote {record:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_step_that_ends_before_the_deadline_is_recorded_and_the_next_is_not_started() {
    let (fixture, store, executor, id) = started(Duration::from_secs(3), OnCancel::Return).await;

    let report = executor.shutdown(Duration::from_secs(30)).await;
    assert_eq!(report.left, vec![id]);
    assert!(!report.interrupted, "the step ended on its own");
    let state = executor.status(id).await.expect("status");
    assert!(matches!(state.step("slow").map(|s| &s.execution), Some(Execution::Succeeded { .. })));
    assert!(state.step("next").is_none(), "stopped at the step boundary");
    assert_nothing_rolled_back(&store, id).await;

    assert_eq!(recover(&fixture, &store, id).await, Outcome::Succeeded);
    assert_eq!(fixture.slow.load(Ordering::SeqCst), 1, "its success was kept");
    assert_eq!(fixture.next.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn at_the_deadline_a_step_sees_its_token_and_its_interruption_is_not_a_failure() {
    let (fixture, store, executor, id) = started(Duration::from_secs(3600), OnCancel::Return).await;

    let began = tokio::time::Instant::now();
    let report = executor.shutdown(Duration::from_secs(5)).await;
    let took = began.elapsed();
    assert!(report.interrupted);
    assert_eq!(report.left, vec![id]);
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(7), "took {took:?}");
    let state = executor.status(id).await.expect("status");
    assert_eq!(
        state.step("slow").map(|s| &s.execution),
        Some(&Execution::Running),
        "the attempt's outcome is unknown to the log"
    );
    assert_nothing_rolled_back(&store, id).await;
    let lines = executor.log(id).await.expect("log");
    assert!(lines.iter().any(|l| l.message.contains("interrupted by the shutdown")), "{lines:#?}");

    assert_eq!(recover(&fixture, &store, id).await, Outcome::Succeeded);
    assert_eq!(fixture.slow.load(Ordering::SeqCst), 2, "recovery ran it again");
}

#[tokio::test(start_paused = true)]
async fn a_step_that_finishes_after_its_token_fired_keeps_its_success() {
    let (fixture, store, executor, id) = started(Duration::from_secs(3600), OnCancel::Finish).await;

    let report = executor.shutdown(Duration::from_secs(1)).await;
    assert!(report.interrupted);
    let state = executor.status(id).await.expect("status");
    assert!(matches!(state.step("slow").map(|s| &s.execution), Some(Execution::Succeeded { .. })));
    assert_eq!(recover(&fixture, &store, id).await, Outcome::Succeeded);
    assert_eq!(fixture.slow.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_step_that_ignores_its_token_is_dropped_after_its_grace_period() {
    let (fixture, store, executor, id) = started(Duration::from_secs(3600), OnCancel::Ignore).await;

    let began = tokio::time::Instant::now();
    let report = executor.shutdown(Duration::from_secs(1)).await;
    let took = began.elapsed();
    assert!(report.interrupted);
    assert_eq!(report.left, vec![id]);
    // The deadline, then the step's 2 s grace period; not the hour it would have taken.
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(5), "took {took:?}");
    assert_nothing_rolled_back(&store, id).await;
    assert_eq!(recover(&fixture, &store, id).await, Outcome::Succeeded);
    assert_eq!(fixture.slow.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_shut_down_executor_takes_no_new_operation() {
    let fixture = Fixture::new(Duration::from_millis(1), OnCancel::Return);
    let store = Arc::new(MemoryStore::new());
    let executor = fixture.executor(&store, "node-1");
    let report = executor.shutdown(Duration::from_secs(1)).await;
    assert!(report.left.is_empty() && !report.interrupted);
    let request = Start::new("upgrade", Resource::new("app", "web"));
    assert!(matches!(executor.start(request).await, Err(saga_core::Error::ShuttingDown)));
}
