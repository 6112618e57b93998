//! Past the point of no return: a step that keeps failing is bounded by its retry policy, then
//! the Operation needs attention until an operator retries the step or abandons the Operation.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use saga_core::log::RecordKind;
use saga_core::state::FailedStep;
use saga_core::state::Phase;
use saga_core::store::Store;
use saga_core::Status;
use saga_core::{
    async_trait, Error, Executed, Executor, MemoryStore, OperationId, Outcome, Resource,
    RetryPolicy, Saga, Start, Step, StepContext, StepError, StepKind,
};

use super::executor;
use crate::support::report;

/// Counts its attempts; fails (permanently) while `failing` is set.
struct Switch {
    attempts: Arc<AtomicU32>,
    failing: Arc<AtomicBool>,
}

#[async_trait]
impl Step for Switch {
    type Output = u32;
    async fn execute(&self, _: &StepContext) -> Result<u32, StepError> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        if self.failing.load(Ordering::SeqCst) {
            Err(StepError::permanent(format!("dns is down (attempt {attempt})")))
        } else {
            Ok(attempt)
        }
    }
    fn kind(&self) -> StepKind {
        StepKind::Irreversible
    }
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy { max_attempts: 3, ..RetryPolicy::default() }
    }
}

/// Succeeds; counts how often it ran.
struct Count(Arc<AtomicU32>);

#[async_trait]
impl Step for Count {
    type Output = ();
    async fn execute(&self, _: &StepContext) -> Result<(), StepError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn compensate(&self, _: &StepContext, _: Executed<()>) -> Result<(), StepError> {
        Ok(())
    }
}

struct Fixture {
    attempts: Arc<AtomicU32>,
    failing: Arc<AtomicBool>,
    after: Arc<AtomicU32>,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            attempts: Arc::new(AtomicU32::new(0)),
            failing: Arc::new(AtomicBool::new(true)),
            after: Arc::new(AtomicU32::new(0)),
        }
    }

    /// `commit` (the point of no return), then `switch` (fails while told to), then `after`.
    fn saga(&self) -> Saga {
        Saga::builder("migrate", 1)
            .step("commit", Count(Arc::new(AtomicU32::new(0))))
            .point_of_no_return()
            .step(
                "switch",
                Switch { attempts: self.attempts.clone(), failing: self.failing.clone() },
            )
            .step("after", Count(self.after.clone()))
            .build()
            .expect("valid saga")
    }
}

/// A fixture, its store and executor, and an Operation started on it.
async fn started() -> (Fixture, Arc<MemoryStore>, Executor, OperationId) {
    let fixture = Fixture::new();
    let store = Arc::new(MemoryStore::new());
    let executor = executor(store.clone(), vec![fixture.saga()]);
    let id = start(&executor).await;
    (fixture, store, executor, id)
}

async fn start(executor: &Executor) -> OperationId {
    let request =
        Start::new("migrate", Resource::new("db", "orders")).environment("test").actor("tester");
    executor.start(request).await.expect("started")
}

async fn needs_attention(executor: &Executor, id: OperationId) -> (String, String) {
    match tokio::time::timeout(Duration::from_secs(600), executor.wait(id)).await {
        Ok(Err(Error::NeedsAttention { operation, step, error })) => {
            assert_eq!(operation, id);
            (step, error)
        }
        Ok(other) => panic!("expected the operation to need attention, got {other:?}"),
        Err(_) => panic!("operation {id} neither finished nor stopped for attention in 600 s"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_step_failing_past_the_point_of_no_return_stops_for_attention_after_its_policy() {
    let (fixture, store, executor, id) = started().await;

    let (step, error) = needs_attention(&executor, id).await;
    assert_eq!(step, "switch");
    assert_eq!(error, "dns is down (attempt 3)");
    assert_eq!(fixture.attempts.load(Ordering::SeqCst), 3, "the policy's three attempts");
    assert_eq!(fixture.after.load(Ordering::SeqCst), 0, "nothing after it runs");

    let state = executor.status(id).await.expect("status");
    assert_eq!(state.phase(), Phase::NeedsAttention);
    assert_eq!(
        state.attention(),
        Some(FailedStep { step: "switch", error: "dns is down (attempt 3)" })
    );
    assert!(state.outcome().is_none());
    // Nothing rolls back, and a cancel is refused: the Operation is past its point of no return.
    let records = store.read(id).await.expect("records");
    assert!(!records.iter().any(|r| matches!(r.kind, RecordKind::CompensationStarted { .. })));
    assert!(matches!(
        executor.cancel(id, "ops", "stop it").await,
        Err(Error::PastPointOfNoReturn { .. })
    ));
    let lines = executor.log(id).await.expect("log");
    assert!(
        lines.iter().any(|l| l.message.contains("needs attention")),
        "the log says so: {lines:#?}"
    );

    // The report shows it, naming the step and its last error.
    let rows = report(store.as_ref(), "test", 0, u64::MAX).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, Status::NeedsAttention);
    assert_eq!(rows[0].status.to_string(), "needs attention");
    assert_eq!(rows[0].failed_step.as_deref(), Some("switch"));
    assert_eq!(rows[0].failure.as_deref(), Some("dns is down (attempt 3)"));

    // Another executor's recovery leaves it waiting for an operator rather than running it.
    let other = executor_named(store.clone(), &fixture, "node-2");
    let report = other.recover().await.expect("recover");
    assert_eq!(report.needs_attention, vec![id]);
    assert!(report.resumed.is_empty());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(fixture.attempts.load(Ordering::SeqCst), 3, "recovery did not run the step");
    assert!(matches!(other.wait(id).await, Err(Error::NeedsAttention { .. })));
}

fn executor_named(store: Arc<MemoryStore>, fixture: &Fixture, owner: &str) -> Executor {
    Executor::builder(store).owner(owner).saga(fixture.saga()).build().expect("executor")
}

#[tokio::test(start_paused = true)]
async fn an_operator_retry_starts_the_policy_over_and_finishes_the_operation() {
    let (fixture, store, executor, id) = started().await;
    needs_attention(&executor, id).await;

    // Still failing: the retry gives it a whole policy again, then it needs attention again.
    executor.retry(id, "alice", "dns should be back").await.expect("retried");
    let (_, error) = needs_attention(&executor, id).await;
    assert_eq!(error, "dns is down (attempt 6)");
    assert_eq!(fixture.attempts.load(Ordering::SeqCst), 6);

    fixture.failing.store(false, Ordering::SeqCst);
    executor.retry(id, "bob", "fixed the resolver").await.expect("retried");
    let outcome = executor.wait(id).await.expect("outcome");
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(fixture.after.load(Ordering::SeqCst), 1);

    let records = store.read(id).await.expect("records");
    let retries: Vec<(&str, &str)> = records
        .iter()
        .filter_map(|r| match &r.kind {
            RecordKind::AttentionRetried { actor, reason } => {
                Some((actor.as_str(), reason.as_str()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(retries, [("alice", "dns should be back"), ("bob", "fixed the resolver")]);
    let state = executor.status(id).await.expect("status");
    assert_eq!(state.output::<u32>("switch").expect("typed output"), 7);

    // Nothing needs attention now.
    assert!(matches!(
        executor.retry(id, "carol", "again").await,
        Err(Error::AlreadyFinished { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_operation_says_who_abandoned_it_in_its_verdict_and_report() {
    let (fixture, store, executor, id) = started().await;
    needs_attention(&executor, id).await;

    let outcome = executor.abandon(id, "alice", "migrating by hand").await.expect("abandoned");
    let expected = Outcome::Abandoned {
        step: "switch".into(),
        error: "dns is down (attempt 3)".into(),
        actor: "alice".into(),
        reason: "migrating by hand".into(),
    };
    assert_eq!(outcome, expected);
    assert_eq!(outcome.status(), saga_core::Status::Abandoned);
    assert!(outcome.to_string().contains("abandoned by alice (migrating by hand) at step switch"));
    // Durable, and the same from the log on any executor.
    assert_eq!(executor.wait(id).await.expect("outcome"), expected);
    let other = executor_named(store.clone(), &fixture, "node-2");
    assert_eq!(other.status(id).await.expect("status").outcome(), Some(&expected));
    assert_eq!(fixture.after.load(Ordering::SeqCst), 0, "the steps after it never ran");

    let rows = report(store.as_ref(), "test", 0, u64::MAX).await;
    assert_eq!(rows[0].status, Status::Abandoned);
    assert_eq!(rows[0].abandoned_by.as_deref(), Some("alice"));
    assert_eq!(rows[0].abandon_reason.as_deref(), Some("migrating by hand"));
    assert_eq!(rows[0].failed_step.as_deref(), Some("switch"));
    let lines = executor.log(id).await.expect("log");
    assert!(lines.iter().any(|l| l.message.contains("abandoned by alice")), "{lines:#?}");

    assert!(matches!(
        executor.abandon(id, "bob", "again").await,
        Err(Error::AlreadyFinished { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn only_an_operation_that_needs_attention_can_be_retried_or_abandoned() {
    let fixture = Fixture::new();
    fixture.failing.store(false, Ordering::SeqCst);
    let executor = executor(Arc::new(MemoryStore::new()), vec![fixture.saga()]);
    let id = start(&executor).await;
    assert_eq!(executor.wait(id).await.expect("outcome"), Outcome::Succeeded);
    assert!(matches!(
        executor.abandon(id, "alice", "no").await,
        Err(Error::AlreadyFinished { .. })
    ));
    let missing = OperationId::new();
    assert!(executor.retry(missing, "alice", "no").await.is_err());
}
