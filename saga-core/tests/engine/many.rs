//! Several executors over one store: cancel from anywhere, and takeover when one dies.
//!
//! A takeover waits for a lease to expire on the store's clock, the system's: those tests run in
//! real time. The others run on tokio's paused clock (the store is in memory).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::log::RecordKind;
use saga_core::state::OperationState;
use saga_core::store::Store;
use saga_core::{
    async_trait, Error, Executor, MemoryStore, OperationId, Outcome, RollbackCause, Saga, Step,
    StepContext, StepError,
};
use tokio::time::Instant;

use crate::support::{CrashingStore, TestStep, World};

/// A step that takes `ms` (watching cancellation) and counts how many of its executes overlap,
/// in all and within one Operation.
struct Slow {
    ms: u64,
    overlap: Overlap,
}

#[derive(Clone, Default)]
struct Overlap {
    /// Executes running now, in all.
    now: Arc<AtomicUsize>,
    /// The most executes of one Operation that ran at once.
    most: Arc<AtomicUsize>,
    per_operation: Arc<Mutex<HashMap<OperationId, usize>>>,
}

/// Counts one execute as running until dropped: a step whose future is dropped (its executor
/// stopped driving it) stops running too.
struct Running<'a> {
    overlap: &'a Overlap,
    operation: OperationId,
}

impl<'a> Running<'a> {
    fn new(overlap: &'a Overlap, operation: OperationId) -> Self {
        overlap.now.fetch_add(1, Ordering::SeqCst);
        let mine = {
            let mut map = overlap.per_operation.lock().unwrap();
            let n = map.entry(operation).or_default();
            *n += 1;
            *n
        };
        overlap.most.fetch_max(mine, Ordering::SeqCst);
        Running { overlap, operation }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        *self.overlap.per_operation.lock().unwrap().entry(self.operation).or_default() -= 1;
        self.overlap.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Step for Slow {
    type Output = ();
    async fn execute(&self, ctx: &StepContext) -> Result<(), StepError> {
        let _running = Running::new(&self.overlap, ctx.operation_id());
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(self.ms)) => Ok(()),
            _ = ctx.cancellation().cancelled() => Err(StepError::cancelled()),
        }
    }
}

fn slow_saga(ms: u64, overlap: &Overlap, world: &World) -> Saga {
    Saga::builder("slow", 1)
        .step("first", TestStep::new("first", world))
        .step("slow", Slow { ms, overlap: overlap.clone() })
        .build()
        .unwrap()
}

fn node(store: Arc<dyn Store>, name: &str, saga: Saga) -> Executor {
    Executor::builder(store)
        .owner(name)
        .lease_ttl(Duration::from_millis(300))
        .takeover_interval(Some(Duration::from_millis(100)))
        .cancel_poll_interval(Duration::from_millis(50))
        .saga(saga)
        .build()
        .unwrap()
}

/// Polls `done` every 10 ms until it holds, failing with `what` after `limit` (of tokio's clock,
/// paused or not).
async fn eventually(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn finishes(store: &dyn Store, id: OperationId) -> usize {
    let records = store.read(id).await.unwrap();
    records.iter().filter(|r| matches!(r.kind, RecordKind::OperationFinished { .. })).count()
}

#[tokio::test(start_paused = true)]
async fn a_cancel_from_another_executor_rolls_back_within_a_second() {
    let (world, overlap) = (World::default(), Overlap::default());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = node(store.clone(), "a", slow_saga(30_000, &overlap, &world));
    let b = node(store.clone(), "b", slow_saga(30_000, &overlap, &world));
    let id = crate::start(&a, "slow").await;
    eventually(Duration::from_secs(5), "the slow step starts", || {
        overlap.now.load(Ordering::SeqCst) == 1
    })
    .await;
    let asked = Instant::now();
    b.cancel(id, "bob", "wrong version").await.expect("a durable request");
    let outcome = tokio::time::timeout(Duration::from_secs(5), a.wait(id)).await.unwrap().unwrap();
    assert!(asked.elapsed() < Duration::from_secs(1), "rolled back after {:?}", asked.elapsed());
    assert_eq!(
        outcome,
        Outcome::RolledBack {
            cause: RollbackCause::Cancelled { actor: "bob".into(), reason: "wrong version".into() }
        }
    );
    assert_eq!(world.compensated(), vec!["first"]);
    // The request went with the finish.
    assert!(store.cancel_requests().await.unwrap().is_empty());
    // Asked again, from either executor: it finished.
    assert!(matches!(b.cancel(id, "bob", "again").await, Err(Error::AlreadyFinished { .. })));
}

#[tokio::test]
async fn a_cancel_of_an_operation_nobody_runs_is_seen_at_claim() {
    let (world, overlap) = (World::default(), Overlap::default());
    let memory = Arc::new(MemoryStore::new());
    // The first executor dies right after the slow step started.
    let crashing = Arc::new(CrashingStore::new(memory.clone(), 4));
    let dead = node(crashing, "dead", slow_saga(200, &overlap, &world));
    let id = crate::start(&dead, "slow").await;
    assert!(matches!(dead.wait(id).await, Err(Error::Halted { .. })));
    drop(dead);
    let cli = Executor::builder(memory.clone())
        .owner("cli")
        .takeover_interval(None)
        .saga(slow_saga(200, &overlap, &world))
        .build()
        .unwrap();
    cli.cancel(id, "carol", "stop it").await.expect("recorded for whoever claims it");
    assert_eq!(memory.cancel_requests().await.unwrap().len(), 1);
    let executes_before = world.journal().len();
    // The dead executor's lease runs out; the heir's takeover scan claims the Operation then.
    let heir = node(memory.clone(), "heir", slow_saga(200, &overlap, &world));
    let _ = heir.recover().await.unwrap();
    let store = memory.clone();
    eventually(Duration::from_secs(5), "taken over and finished", move || {
        futures_finished(&store, id)
    })
    .await;
    let outcome = heir.status(id).await.map(|s| s.outcome().cloned().unwrap());
    assert!(
        matches!(outcome, Ok(Outcome::RolledBack { cause: RollbackCause::Cancelled { ref actor, .. } }) if actor == "carol"),
        "{outcome:?}"
    );
    // Nothing ran forward after the claim: only compensations were added to the journal.
    assert!(world.journal()[executes_before..].iter().all(|e| e.starts_with("compensate")));
    assert_eq!(finishes(memory.as_ref(), id).await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_from_elsewhere_past_the_point_of_no_return_is_refused() {
    let world = World::default();
    let saga = || {
        Saga::builder("pnr", 1)
            .step("a", TestStep::new("a", &world))
            .point_of_no_return()
            .step("b", TestStep::new("b", &world).slow(Duration::from_millis(400)))
            .build()
            .unwrap()
    };
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = node(store.clone(), "a", saga());
    let b = node(store.clone(), "b", saga());
    let id = crate::start(&a, "pnr").await;
    eventually(Duration::from_secs(5), "step b starts", || {
        world.journal().iter().any(|e| e.starts_with("execute b"))
    })
    .await;
    let err = b.cancel(id, "bob", "too late").await.expect_err("refused");
    assert!(matches!(err, Error::PastPointOfNoReturn { .. }), "{err}");
    assert_eq!(a.wait(id).await.unwrap(), Outcome::Succeeded);
}

#[tokio::test]
async fn when_one_executor_dies_the_others_finish_its_operations_one_driver_at_a_time() {
    let (world, overlap) = (World::default(), Overlap::default());
    let memory = Arc::new(MemoryStore::new());
    let saga = || slow_saga(150, &overlap, &world);
    // Two survivors, started (and scanning) before the third dies.
    let b = node(memory.clone(), "b", saga());
    let c = node(memory.clone(), "c", saga());
    let _ = b.recover().await.unwrap();
    let _ = c.recover().await.unwrap();
    // The third runs four Operations and dies after a few records: its writes stop, its leases
    // are left to expire.
    let crashing = Arc::new(CrashingStore::new(memory.clone(), 10));
    let dying = node(crashing, "dying", saga());
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(crate::start(&dying, "slow").await);
    }
    for id in &ids {
        let _ = dying.wait(*id).await;
    }
    drop(dying);
    // No recover() call: the survivors' scans take every Operation over.
    for id in &ids {
        let id = *id;
        let (b2, c2) = (b.clone(), c.clone());
        let store = memory.clone();
        eventually(Duration::from_secs(10), "taken over and finished", move || {
            !b2.is_running(id) && !c2.is_running(id) && futures_finished(store.as_ref(), id)
        })
        .await;
        assert_eq!(finishes(memory.as_ref(), id).await, 1, "exactly one outcome");
        let state = OperationState::fold(id, &memory.read(id).await.unwrap()).unwrap();
        assert_eq!(state.outcome(), Some(&Outcome::Succeeded));
    }
    assert_eq!(overlap.most.load(Ordering::SeqCst), 1, "one Operation's step ran twice at once");
}

/// Whether the Operation has an outcome in the store (a blocking read of the memory store).
fn futures_finished(store: &MemoryStore, id: OperationId) -> bool {
    futures::executor::block_on(store.read(id))
        .map(|records| {
            records.iter().any(|r| matches!(r.kind, RecordKind::OperationFinished { .. }))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_right_after_a_halt_resumes_the_operation() {
    // Once `wait` answers that the driver halted, that driver is gone: a recovery by the same
    // name at once claims and resumes the Operation (it used to race the driver's end).
    for round in 0..50 {
        let (world, overlap) = (World::default(), Overlap::default());
        let memory = Arc::new(MemoryStore::new());
        let crashing = Arc::new(CrashingStore::new(memory.clone(), 3));
        let first = node(crashing, "same", slow_saga(1, &overlap, &world));
        let id = crate::start(&first, "slow").await;
        assert!(matches!(first.wait(id).await, Err(Error::Halted { .. })), "round {round}");
        let second = node(memory.clone(), "same", slow_saga(1, &overlap, &world));
        let report = second.recover().await.unwrap();
        assert_eq!(report.resumed, vec![id], "round {round}: {report:?}");
        assert_eq!(second.wait(id).await.unwrap(), Outcome::Succeeded, "round {round}");
    }
}
