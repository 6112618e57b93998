//! Store faults, damaged Operations, panicking steps and two executors of one name: the engine
//! never reports what the store did not acknowledge, and one bad Operation never stops the others.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::log::{LogLine, Record, RecordKind};
use saga_core::state::OperationState;
use saga_core::store::{Lease, Listing, Store, StoreError};
use saga_core::{
    async_trait, Error, Executor, MemoryStore, OperationId, Outcome, Saga, Step, StepContext,
    StepError,
};

use crate::support::{TestStep, World};

/// What a [`FaultStore`] does to one `append` call: fail it with this error, after writing the
/// records (`written`: what a failed sync leaves behind) or before.
struct AppendFault {
    written: bool,
    error: fn() -> StoreError,
}

type AppendRule = Box<dyn Fn(&[Record]) -> Option<AppendFault> + Send + Sync>;

/// An error a [`FaultStore`] answers a claim of this Operation with.
type ClaimFault = (OperationId, fn() -> StoreError);

/// A store over a [`MemoryStore`] that fails the calls it is told to.
#[derive(Default)]
struct FaultStore {
    inner: MemoryStore,
    append_rule: Mutex<Option<AppendRule>>,
    claim_faults: Mutex<Vec<ClaimFault>>,
    damaged_unfinished: Mutex<Vec<StoreError>>,
    read_log_fails: AtomicBool,
    /// Renewals, appends and releases never answer (a store cut off from the executor; log
    /// lines still reach it, so that a test can see that the executor sends none).
    unreachable: AtomicBool,
    /// The expiry (Unix ms) of the last lease granted by a create, claim or renewal.
    granted_until: std::sync::atomic::AtomicU64,
}

impl FaultStore {
    fn failing_appends(
        rule: impl Fn(&[Record]) -> Option<AppendFault> + Send + Sync + 'static,
    ) -> Arc<Self> {
        let store = FaultStore::default();
        *store.append_rule.lock().unwrap() = Some(Box::new(rule));
        Arc::new(store)
    }

    fn heal(&self) {
        *self.append_rule.lock().unwrap() = None;
    }
}

fn sync_failed() -> StoreError {
    StoreError::Unavailable("fdatasync failed: Input/output error (os error 5)".into())
}

fn flaky() -> StoreError {
    StoreError::transient("a test double", "connection reset")
}

fn finishes(records: &[Record]) -> bool {
    records.iter().any(|r| matches!(r.kind, RecordKind::OperationFinished { .. }))
}

#[async_trait]
impl saga_core::store::StoreWrapper for FaultStore {
    fn inner(&self) -> &dyn Store {
        &self.inner
    }

    async fn create(
        &self,
        record: &Record,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let lease = self.inner.create(record, owner, ttl).await?;
        self.granted_until.store(lease.expires_ms, Ordering::SeqCst);
        Ok(lease)
    }

    async fn append(&self, lease: &Lease, records: &[Record]) -> Result<(), StoreError> {
        if self.unreachable.load(Ordering::SeqCst) {
            return std::future::pending().await;
        }
        let fault = self.append_rule.lock().unwrap().as_ref().and_then(|rule| rule(records));
        match fault {
            None => self.inner.append(lease, records).await,
            Some(fault) => {
                if fault.written {
                    self.inner.append(lease, records).await?;
                }
                Err((fault.error)())
            }
        }
    }

    async fn list_unfinished(&self) -> Result<Listing, StoreError> {
        let mut listing = self.inner.list_unfinished().await?;
        listing.damaged.extend(self.damaged_unfinished.lock().unwrap().drain(..));
        Ok(listing)
    }

    async fn claim(
        &self,
        operation: OperationId,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let fault =
            self.claim_faults.lock().unwrap().iter().find(|(id, _)| *id == operation).map(|f| f.1);
        match fault {
            Some(error) => Err(error()),
            None => self.inner.claim(operation, owner, ttl).await,
        }
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        if self.unreachable.load(Ordering::SeqCst) {
            return std::future::pending().await;
        }
        let renewed = self.inner.renew(lease, ttl).await?;
        self.granted_until.store(renewed.expires_ms, Ordering::SeqCst);
        Ok(renewed)
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        if self.unreachable.load(Ordering::SeqCst) {
            return std::future::pending().await;
        }
        self.inner.release(lease).await
    }

    async fn read_log(&self, operation: OperationId) -> Result<Vec<LogLine>, StoreError> {
        if self.read_log_fails.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("log tree unreadable".into()));
        }
        self.inner.read_log(operation).await
    }
}

fn three(world: &World) -> Saga {
    Saga::builder("three", 1)
        .step("a", TestStep::new("a", world))
        .step("b", TestStep::new("b", world))
        .step("c", TestStep::new("c", world))
        .build()
        .unwrap()
}

async fn wait(executor: &Executor, id: OperationId) -> saga_core::Result<Outcome> {
    tokio::time::timeout(Duration::from_secs(20), executor.wait(id)).await.expect("answers in time")
}

fn messages(lines: &[LogLine]) -> Vec<String> {
    lines.iter().map(|l| l.message.clone()).collect()
}

/// The store's cause inside a halt, or a panic saying what came instead.
fn store_cause(err: &Error) -> &StoreError {
    match err {
        Error::Halted { cause, .. } => match cause.as_ref() {
            Error::Store(e) => e,
            other => panic!("halted, but not by the store: {other}"),
        },
        other => panic!("expected a halt on a store failure, got: {other}"),
    }
}

#[tokio::test]
async fn a_failed_final_sync_is_never_reported_as_an_outcome() {
    let world = World::default();
    // The final commit is written (in memory) but its sync fails, as sled does.
    let store = FaultStore::failing_appends(|records| {
        finishes(records).then_some(AppendFault { written: true, error: sync_failed })
    });
    let executor = crate::executor(store.clone(), vec![three(&world)]);
    let id = crate::start(&executor, "three").await;
    let err = wait(&executor, id).await.expect_err("no outcome the log stands behind");
    assert!(
        matches!(store_cause(&err), StoreError::Unavailable(why) if why.contains("fdatasync")),
        "{err}"
    );
    // Asked again once the driver is gone, every answer is the same failure.
    let err = executor.wait(id).await.expect_err("still no outcome");
    store_cause(&err);
    let err = executor.status(id).await.expect_err("status answers the failure");
    store_cause(&err);
    let err = executor.cancel(id, "ops", "why").await.expect_err("cancel answers the failure");
    store_cause(&err);
    assert!(err.to_string().contains("fdatasync failed"), "{err}");
    // The outcome line was never written; the halt is.
    let log = messages(&executor.log(id).await.unwrap());
    assert!(!log.iter().any(|l| l.contains("operation succeeded")), "{log:?}");
    assert!(log.last().unwrap().contains("operation halted"), "{log:?}");
}

#[tokio::test]
async fn a_failure_before_the_end_says_that_the_store_failed_and_why() {
    let world = World::default();
    let calls = AtomicUsize::new(0);
    let store = FaultStore::failing_appends(move |_| {
        (calls.fetch_add(1, Ordering::SeqCst) == 2)
            .then_some(AppendFault { written: false, error: sync_failed })
    });
    let executor = crate::executor(store.clone(), vec![three(&world)]);
    let id = crate::start(&executor, "three").await;
    let err = wait(&executor, id).await.expect_err("halted");
    store_cause(&err);
    let text = executor.wait(id).await.expect_err("halted").to_string();
    assert!(
        text.contains("halted") && text.contains("store unavailable: fdatasync failed"),
        "{text}"
    );
    assert!(!text.contains("not running on this executor"), "{text}");
    // Once the store is healthy again, a recovery finishes it and the answers are the outcome's.
    store.heal();
    let second =
        Executor::builder(store.clone()).owner("node-1").saga(three(&world)).build().unwrap();
    assert_eq!(second.recover().await.unwrap().resumed, vec![id]);
    assert_eq!(wait(&second, id).await.unwrap(), Outcome::Succeeded);
}

#[tokio::test]
async fn transient_store_errors_are_retried_with_a_log_line() {
    let world = World::default();
    let failures = AtomicUsize::new(0);
    // Three transient failures in a row, the second of them after the write went through (an
    // acknowledgement lost on the way back).
    let store = FaultStore::failing_appends(move |_| {
        let n = failures.fetch_add(1, Ordering::SeqCst);
        (1..=3).contains(&n).then_some(AppendFault { written: n == 2, error: flaky })
    });
    let executor = crate::executor(store.clone(), vec![three(&world)]);
    let id = crate::start(&executor, "three").await;
    assert_eq!(wait(&executor, id).await.unwrap(), Outcome::Succeeded);
    let log = messages(&executor.log(id).await.unwrap());
    let retries = log.iter().filter(|l| l.starts_with("store write failed, retrying")).count();
    assert_eq!(retries, 3, "{log:?}");
    // Every step ran once: retrying the store never re-runs a step.
    assert_eq!(world.journal(), vec!["execute a #1", "execute b #1", "execute c #1"]);
    OperationState::fold(id, &store.read(id).await.unwrap()).expect("a legal log");
}

#[tokio::test]
async fn a_permanent_store_error_halts_at_once() {
    let world = World::default();
    let store =
        FaultStore::failing_appends(|_| Some(AppendFault { written: false, error: sync_failed }));
    let executor = crate::executor(store.clone(), vec![three(&world)]);
    let id = crate::start(&executor, "three").await;
    store_cause(&wait(&executor, id).await.expect_err("halted"));
    let log = messages(&executor.log(id).await.unwrap());
    assert!(!log.iter().any(|l| l.contains("retrying")), "{log:?}");
}

/// Two unfinished Operations in a store, claimed by nobody (their executor is gone).
async fn two_unfinished(store: Arc<FaultStore>, world: &World) -> (OperationId, OperationId) {
    let first = Executor::builder(store.clone())
        .owner("gone")
        .lease_ttl(Duration::from_millis(30))
        .saga(three(world))
        .build()
        .unwrap();
    *store.append_rule.lock().unwrap() =
        Some(Box::new(|_| Some(AppendFault { written: false, error: sync_failed })));
    let a = crate::start_on(&first, "three", "a").await;
    let b = crate::start_on(&first, "three", "b").await;
    let _ = wait(&first, a).await;
    let _ = wait(&first, b).await;
    store.heal();
    // Their 30 ms leases expire on the store's clock, the system's: this waits in real time.
    tokio::time::sleep(Duration::from_millis(40)).await;
    (a, b)
}

#[tokio::test]
async fn a_damaged_lease_or_index_entry_is_reported_and_the_others_resume() {
    let world = World::default();
    let store = Arc::new(FaultStore::default());
    let (damaged, healthy) = two_unfinished(store.clone(), &world).await;
    store
        .claim_faults
        .lock()
        .unwrap()
        .push((damaged, || StoreError::NewerFormat { found: 9, supported: 1 }));
    store.damaged_unfinished.lock().unwrap().push(StoreError::Corrupt {
        place: "unfinished index key 0a0b0c".into(),
        problem: "3 bytes, not 16".into(),
    });
    let executor = crate::executor(store.clone(), vec![three(&world)]);
    let report = executor.recover().await.expect("one bad Operation does not fail recovery");
    assert_eq!(report.resumed, vec![healthy]);
    assert_eq!(report.unrecoverable.len(), 1, "{report:?}");
    assert_eq!(report.unrecoverable[0].0, damaged);
    assert!(matches!(
        report.unrecoverable[0].1.as_ref(),
        Error::Store(StoreError::NewerFormat { found: 9, .. })
    ));
    assert_eq!(report.damaged.len(), 1);
    assert!(report.damaged[0].to_string().contains("unfinished index key 0a0b0c"));
    assert_eq!(wait(&executor, healthy).await.unwrap(), Outcome::Succeeded);
    let err = executor.wait(damaged).await.expect_err("unrecoverable");
    assert!(matches!(err, Error::Unrecoverable { operation, .. } if operation == damaged), "{err}");
}

#[tokio::test]
async fn a_log_that_cannot_be_read_is_never_overwritten() {
    let world = World::default();
    let store = Arc::new(FaultStore::default());
    let (a, b) = two_unfinished(store.clone(), &world).await;
    let before = store.inner.read_log(a).await.unwrap();
    assert!(!before.is_empty());
    store.read_log_fails.store(true, Ordering::SeqCst);
    let executor = crate::executor(store.clone(), vec![three(&world)]);
    let report = executor.recover().await.unwrap();
    assert!(report.resumed.is_empty(), "{report:?}");
    assert_eq!(report.unrecoverable.len(), 2);
    // The stored lines are as they were: nothing was written over them from line 0.
    assert_eq!(store.inner.read_log(a).await.unwrap(), before);
    // Readable again, the next recovery resumes both and numbers new lines after the old.
    store.read_log_fails.store(false, Ordering::SeqCst);
    let report = executor.recover().await.unwrap();
    assert_eq!(report.resumed.len(), 2);
    assert_eq!(wait(&executor, a).await.unwrap(), Outcome::Succeeded);
    assert_eq!(wait(&executor, b).await.unwrap(), Outcome::Succeeded);
    let after = store.inner.read_log(a).await.unwrap();
    assert_eq!(&after[..before.len()], &before[..]);
    let seqs: Vec<u64> = after.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, (0..after.len() as u64).collect::<Vec<_>>());
}

/// A step that panics in `execute` or `compensate`.
struct Panics {
    in_compensate: bool,
}

#[async_trait]
impl Step for Panics {
    type Output = ();
    async fn execute(&self, _: &StepContext) -> Result<(), StepError> {
        if !self.in_compensate {
            panic!("index out of bounds: the len is 0");
        }
        Ok(())
    }
    async fn compensate(
        &self,
        _: &StepContext,
        _: saga_core::Executed<()>,
    ) -> Result<(), StepError> {
        if self.in_compensate {
            panic!("compensation blew up");
        }
        Ok(())
    }
    fn retry_policy(&self) -> saga_core::RetryPolicy {
        saga_core::RetryPolicy::exponential(2, Duration::from_millis(1))
    }
}

#[tokio::test]
async fn a_panicking_step_fails_its_attempt_and_the_operation_rolls_back() {
    let world = World::default();
    let saga = Saga::builder("panics", 1)
        .step("a", TestStep::new("a", &world))
        .step("boom", Panics { in_compensate: false })
        .build()
        .unwrap();
    let (outcome, executor, id) = crate::run(saga).await;
    let Outcome::RolledBack { cause } = outcome else { panic!("{outcome:?}") };
    assert!(cause.to_string().contains("step panicked: index out of bounds"), "{cause}");
    let log = messages(&executor.log(id).await.unwrap());
    assert!(
        log.iter().any(|l| l.contains("step boom failed: step panicked: index out of bounds")),
        "{log:?}"
    );
    // The executor goes on: another Operation runs on it.
    let next = crate::start(&executor, "panics").await;
    assert!(matches!(wait(&executor, next).await.unwrap(), Outcome::RolledBack { .. }));
}

#[tokio::test]
async fn a_panicking_compensation_is_a_failed_compensation() {
    let world = World::default();
    let saga = Saga::builder("panics", 1)
        .step("undo-panics", Panics { in_compensate: true })
        .step("b", TestStep::new("b", &world).failing())
        .build()
        .unwrap();
    let (outcome, _, _) = crate::run(saga).await;
    let Outcome::RollbackIncomplete { not_undone, .. } = outcome else { panic!("{outcome:?}") };
    assert_eq!(not_undone.len(), 1);
    assert!(
        not_undone[0].to_string().contains("step panicked: compensation blew up"),
        "{}",
        not_undone[0]
    );
}

/// A step that counts how many of its executes run at once.
struct Counted {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

#[async_trait]
impl Step for Counted {
    type Output = ();
    async fn execute(&self, _: &StepContext) -> Result<(), StepError> {
        let running = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(running, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// On tokio's paused clock: the in-memory store needs no real time, and the second executor's
/// recovery comes in the middle of the 300 ms step, exactly.
#[tokio::test(start_paused = true)]
async fn two_executors_of_one_name_never_drive_one_operation_at_once() {
    let store = Arc::new(MemoryStore::new());
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let saga = || {
        Saga::builder("counted", 1)
            .step("slow", Counted { now: now.clone(), most: most.clone() })
            .build()
            .unwrap()
    };
    let first = Executor::builder(store.clone()).owner("same-host").saga(saga()).build().unwrap();
    let second = Executor::builder(store.clone()).owner("same-host").saga(saga()).build().unwrap();
    let id = crate::start(&first, "counted").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = second.recover().await.unwrap();
    assert!(report.resumed.is_empty(), "{report:?}");
    assert_eq!(report.owned_elsewhere, vec![id]);
    assert_eq!(wait(&first, id).await.unwrap(), Outcome::Succeeded);
    assert_eq!(most.load(Ordering::SeqCst), 1, "execute ran twice at once");
}

#[test]
fn default_owners_are_unique_per_executor() {
    let names: HashSet<String> = (0..4)
        .map(|_| {
            let executor = Executor::builder(Arc::new(MemoryStore::new())).build().unwrap();
            format!("{executor:?}")
        })
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    let one = names.iter().next().unwrap();
    assert!(one.contains(&format!(":{}:", std::process::id())), "{one}");
}

/// A step that runs until its token fires, and notes when it returned (Unix ms).
struct UntilCancelled(Arc<std::sync::atomic::AtomicU64>);

#[async_trait]
impl Step for UntilCancelled {
    type Output = ();

    async fn execute(&self, ctx: &StepContext) -> Result<(), StepError> {
        ctx.cancellation().cancelled().await;
        self.0.store(saga_core::Timestamp::now().unix_ms(), Ordering::SeqCst);
        Err(StepError::transient("cancelled"))
    }

    async fn compensate(
        &self,
        _: &StepContext,
        _: saga_core::Executed<()>,
    ) -> Result<(), StepError> {
        Ok(())
    }
}

/// A store that stops answering (renewals hang, like a cut connection): the executor stops
/// driving the Operation, firing its running step's token, before the lease it holds expires,
/// so that another executor taking it over never runs beside it; and says so in the log.
#[tokio::test]
async fn an_executor_that_cannot_renew_its_lease_stops_before_the_lease_expires() {
    let store = Arc::new(FaultStore::default());
    let stopped_at = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let saga = || {
        Saga::builder("long", 1).step("run", UntilCancelled(stopped_at.clone())).build().unwrap()
    };
    let ttl = Duration::from_millis(600);
    let executor = Executor::builder(store.clone())
        .saga(saga())
        .owner("cut-off")
        .lease_ttl(ttl)
        .takeover_interval(None)
        .build()
        .unwrap();
    let id = executor
        .start(saga_core::Start::new("long", saga_core::Resource::new("app", "web")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cut = std::time::Instant::now();
    store.unreachable.store(true, Ordering::SeqCst);

    // It stops running here.
    let stopped = tokio::time::timeout(ttl * 2, async {
        while executor.is_running(id) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cut.elapsed()
    })
    .await
    .expect("it stops running here");
    // `wait` follows it wherever it goes on (nowhere, while the store is cut off).
    let waited = executor.wait_timeout(id, ttl / 2).await;
    assert!(matches!(waited, Err(Error::WaitTimedOut { .. })), "{waited:?}");
    // The step saw its token and returned while the lease the store granted last still held:
    // nobody else could have claimed the Operation yet.
    let step_stopped = stopped_at.load(Ordering::SeqCst);
    let lease_end = store.granted_until.load(Ordering::SeqCst);
    assert!(step_stopped > 0, "the running step's token fired");
    assert!(
        step_stopped < lease_end,
        "the step stopped at {step_stopped}, after the lease's end {lease_end}"
    );
    assert!(stopped < ttl * 2, "it stopped {stopped:?} after the cut");

    // Once it expired, another executor takes over and finishes it from the log.
    store.unreachable.store(false, Ordering::SeqCst);
    // The event, on the store's clock (the system's): the last lease granted has expired.
    while saga_core::Timestamp::now().unix_ms() <= store.granted_until.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Its last lines never reach the store (this double would take them): the Operation's log
    // may belong to another executor by now. They go to `tracing` instead.
    let lines = messages(&store.inner.read_log(id).await.unwrap());
    assert!(!lines.iter().any(|l| l.contains("could not be renewed")), "{lines:?}");
    let other = Executor::builder(store.clone())
        .saga(saga())
        .owner("other")
        .lease_ttl(ttl)
        .takeover_interval(None)
        .build()
        .unwrap();
    let report = other.recover().await.unwrap();
    assert_eq!(report.resumed, vec![id]);
    other.cancel(id, "tester", "end the test").await.unwrap();
    let outcome = wait(&other, id).await.unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
}
