//! Several executors over one store, as a control plane runs them: a cancel from another
//! executor is decided against the point of no return by the store and never dropped; a paused
//! executor never runs a step beside the one that took it over; answers come from the store;
//! `wait` follows an Operation wherever it runs; steps see a fencing token that grows with every
//! claim.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::log::{Record, RecordKind};
use saga_core::store::{Lease, Store, StoreError, StoreWrapper, WakeUp};
use saga_core::{
    async_trait, CancelAnswer, Error, Executor, FencingToken, MemoryStore, OperationId, Outcome,
    Resource, RollbackCause, Saga, Start, Step, StepContext, StepError,
};
use tokio::sync::Notify;

use crate::support::{poll_status, report, TestStep, World};

/// The store without its wake-ups: an executor over it learns of a cancel request only at its
/// poll, or when the store refuses to let the Operation pass its point of no return.
struct Deaf(Arc<MemoryStore>);

#[async_trait]
impl StoreWrapper for Deaf {
    fn inner(&self) -> &dyn Store {
        self.0.as_ref()
    }

    fn wake_ups(&self) -> Option<tokio::sync::broadcast::Receiver<WakeUp>> {
        None
    }
}

/// A step that waits until the test opens its gate.
struct Gated {
    name: &'static str,
    world: World,
    gate: Arc<Notify>,
    opened: Arc<AtomicBool>,
}

impl Gated {
    fn new(name: &'static str, world: &World) -> (Self, Arc<Notify>, Arc<AtomicBool>) {
        let (gate, opened) = (Arc::new(Notify::new()), Arc::new(AtomicBool::new(false)));
        let step = Gated { name, world: world.clone(), gate: gate.clone(), opened: opened.clone() };
        (step, gate, opened)
    }
}

fn open(gate: &Notify, opened: &AtomicBool) {
    opened.store(true, Ordering::SeqCst);
    gate.notify_waiters();
}

#[async_trait]
impl Step for Gated {
    type Output = ();

    async fn execute(&self, _: &StepContext) -> Result<(), StepError> {
        self.world.record_note(&format!("execute {}", self.name));
        loop {
            let notified = self.gate.notified();
            if self.opened.load(Ordering::SeqCst) {
                return Ok(());
            }
            notified.await;
        }
    }

    async fn compensate(
        &self,
        _: &StepContext,
        _: saga_core::Executed<()>,
    ) -> Result<(), StepError> {
        self.world.record_note(&format!("compensate {}", self.name));
        Ok(())
    }
}

/// An executor named `owner` over `store` that hears of cancel requests only once an hour (or
/// when the store refuses its crossing), with no takeover scan.
fn deaf_owner(store: Arc<MemoryStore>, saga: Saga, owner: &str) -> Executor {
    Executor::builder(Arc::new(Deaf(store)))
        .owner(owner)
        .saga(saga)
        .cancel_poll_interval(Duration::from_secs(3600))
        .takeover_interval(None)
        .build()
        .unwrap()
}

/// A second executor over the same store, which runs nothing of its own.
fn canceller(store: Arc<MemoryStore>, saga: Saga) -> Executor {
    Executor::builder(store).owner("api").saga(saga).takeover_interval(None).build().unwrap()
}

fn start(saga: &str) -> Start {
    Start::new(saga, Resource::new("app", "web")).environment("test").actor("tester")
}

async fn records(store: &MemoryStore, id: OperationId) -> Vec<Record> {
    store.read(id).await.unwrap()
}

fn refused_by(records: &[Record], actor: &str) -> bool {
    records
        .iter()
        .any(|r| matches!(&r.kind, RecordKind::CancelRefused { actor: a, .. } if a == actor))
}

/// A request recorded before the point of no return wins even when the owner never polls for
/// it: the store refuses the crossing while it is pending, and the owner then rolls back.
#[tokio::test]
async fn a_remote_cancel_before_the_point_of_no_return_wins_though_the_owner_never_polls() {
    let world = World::default();
    let (a, gate, opened) = Gated::new("a", &world);
    let saga = || {
        Saga::builder("pnr", 1)
            .step(
                "a",
                Gated {
                    name: a.name,
                    world: a.world.clone(),
                    gate: gate.clone(),
                    opened: opened.clone(),
                },
            )
            .point_of_no_return()
            .step("b", TestStep::new("b", &world))
            .build()
            .unwrap()
    };
    let store = Arc::new(MemoryStore::new());
    let owner = deaf_owner(store.clone(), saga(), "owner");
    let api = canceller(store.clone(), saga());
    let id = owner.start(start("pnr")).await.unwrap();
    poll_status(&owner, id, "step a starts", |s| s.step("a").is_some()).await;

    let answer = api.cancel(id, "ops", "wrong build").await.unwrap();
    match &answer {
        CancelAnswer::Requested { pending } => assert_eq!(pending.actor, "ops"),
        other => panic!("expected a request, got {other:?}"),
    }
    let state = api.status(id).await.unwrap();
    assert_eq!(state.pending_cancel().map(|r| r.actor.as_str()), Some("ops"));
    open(&gate, &opened);

    let outcome = api.wait_timeout(id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        outcome,
        Outcome::RolledBack {
            cause: RollbackCause::Cancelled { actor: "ops".into(), reason: "wrong build".into() }
        }
    );
    assert!(!world.journal().iter().any(|e| e.contains("execute b")), "{:?}", world.journal());
    assert_eq!(world.compensated(), ["a"]);
    let records = records(&store, id).await;
    assert!(!records.iter().any(|r| matches!(r.kind, RecordKind::PointOfNoReturnPassed { .. })));
    assert!(api.status(id).await.unwrap().pending_cancel().is_none());
    let lines = owner.log(id).await.unwrap();
    assert!(lines.iter().any(|l| l.message.contains("cancel requested by ops")), "{lines:#?}");
}

/// A request recorded after the crossing is refused, and the refusal recorded before the
/// Operation finishes (the store refuses the finish while it is pending): shown by `status`, the
/// log and the activity report, never silence.
#[tokio::test]
async fn a_remote_cancel_after_the_crossing_is_refused_and_the_refusal_is_recorded() {
    let world = World::default();
    let (b, gate, opened) = Gated::new("b", &world);
    let saga = || {
        Saga::builder("pnr", 1)
            .step("a", TestStep::new("a", &world))
            .point_of_no_return()
            .step(
                "b",
                Gated {
                    name: b.name,
                    world: b.world.clone(),
                    gate: gate.clone(),
                    opened: opened.clone(),
                },
            )
            .build()
            .unwrap()
    };
    let store = Arc::new(MemoryStore::new());
    let owner = deaf_owner(store.clone(), saga(), "owner");
    let api = canceller(store.clone(), saga());
    let id = owner.start(start("pnr")).await.unwrap();
    poll_status(&owner, id, "step b starts", |s| s.step("b").is_some()).await;
    assert_eq!(owner.status(id).await.unwrap().passed_point_of_no_return(), Some("a"));

    match api.cancel(id, "ops", "too late").await {
        Err(Error::PastPointOfNoReturn { step, .. }) => assert_eq!(step, "a"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Recorded for the owner, which records the refusal before it may finish.
    assert_eq!(
        api.status(id).await.unwrap().pending_cancel().map(|r| r.actor.as_str()),
        Some("ops")
    );
    open(&gate, &opened);
    assert_eq!(api.wait_timeout(id, Duration::from_secs(10)).await.unwrap(), Outcome::Succeeded);

    let state = api.status(id).await.unwrap();
    assert!(state.pending_cancel().is_none());
    let refusals = state.cancel_refusals();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!((refusals[0].actor.as_str(), refusals[0].reason.as_str()), ("ops", "too late"));
    assert!(refusals[0].refusal.contains("past the point of no return (step a)"), "{refusals:?}");
    let lines = owner.log(id).await.unwrap();
    assert!(
        lines.iter().any(|l| l.message.contains("cancel requested by ops (too late) refused")),
        "{lines:#?}"
    );
    let rows = report(store.as_ref(), "test", 0, u64::MAX).await;
    assert_eq!(rows[0].cancels_refused.len(), 1, "{:?}", rows[0]);
    assert!(rows[0].cancels_refused[0].starts_with("ops: too late (refused: past the point"));
    // Asked locally past the point of no return: refused, and recorded too.
    let world2 = World::default();
    let (c, gate2, opened2) = Gated::new("c", &world2);
    let local = Executor::builder(store.clone())
        .owner("local")
        .saga(
            Saga::builder("late", 1)
                .step("a", TestStep::new("a", &world2))
                .point_of_no_return()
                .step("c", c)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let id = local.start(start("late")).await.unwrap();
    poll_status(&local, id, "step c starts", |s| s.step("c").is_some()).await;
    assert!(matches!(
        local.cancel(id, "bob", "oops").await,
        Err(Error::PastPointOfNoReturn { .. })
    ));
    assert!(refused_by(&records(&store, id).await, "bob"));
    open(&gate2, &opened2);
    assert_eq!(local.wait(id).await.unwrap(), Outcome::Succeeded);
}

/// A cancel from a second executor at random instants around the point of no return, many
/// rounds at once: every `Ok` is followed by a rollback caused by that cancel or by a recorded
/// refusal of it; every refusal past the point of no return is recorded; nothing is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_cancels_at_random_instants_are_never_dropped() {
    const ROUNDS: usize = 300;
    let world = World::default();
    let saga = || {
        Saga::builder("race", 1)
            .step("a", TestStep::new("a", &world).slow(Duration::from_millis(3)))
            .point_of_no_return()
            .step("b", TestStep::new("b", &world).slow(Duration::from_millis(3)))
            .build()
            .unwrap()
    };
    let store = Arc::new(MemoryStore::new());
    let owner = Executor::builder(store.clone()).owner("owner").saga(saga()).build().unwrap();
    let api = canceller(store.clone(), saga());
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        let (owner, api) = (owner.clone(), api.clone());
        let request = Start::new("race", Resource::new("app", format!("app-{round}")))
            .environment("test")
            .actor("tester");
        rounds.push(tokio::spawn(async move {
            let id = owner.start(request).await.unwrap();
            tokio::time::sleep(Duration::from_micros(fastrand::u64(0..9_000))).await;
            let actor = format!("ops-{round}");
            let answer = api.cancel(id, &actor, "race").await;
            let outcome = api.wait_timeout(id, Duration::from_secs(30)).await.unwrap();
            (id, actor, answer, outcome)
        }));
    }
    let (mut rolled_back, mut refused, mut finished) = (0, 0, 0);
    for round in rounds {
        let (id, actor, answer, outcome) = round.await.unwrap();
        let records = records(&store, id).await;
        let cancelled = matches!(&outcome,
            Outcome::RolledBack { cause: RollbackCause::Cancelled { actor: a, .. } } if *a == actor);
        let refusal = refused_by(&records, &actor);
        match &answer {
            Ok(CancelAnswer::Requested { .. }) | Ok(CancelAnswer::RollingBack) => {
                assert!(
                    cancelled ^ refusal,
                    "{id}: {answer:?} then {outcome:?}, refusal {refusal}"
                );
                if cancelled {
                    rolled_back += 1;
                } else {
                    refused += 1;
                    assert_eq!(outcome, Outcome::Succeeded);
                }
            }
            Err(Error::PastPointOfNoReturn { .. }) => {
                assert!(refusal && !cancelled, "{id}: refused, but not recorded: {outcome:?}");
                refused += 1;
            }
            Err(Error::AlreadyFinished { .. }) => {
                assert!(!refusal && !cancelled, "{id}: finished, yet {outcome:?}");
                finished += 1;
            }
            other => panic!("{id}: unexpected answer {other:?}"),
        }
    }
    println!(
        "{ROUNDS} rounds: {rolled_back} rolled back, {refused} refused, {finished} finished first"
    );
    assert_eq!(rolled_back + refused + finished, ROUNDS);
}

/// The step of the pause test: the first attempt (epoch 1) blocks its executor's whole runtime
/// past the lease, as SIGSTOP or a stalled VM would, then goes on at its next poll; the journal
/// says what ran, with the epoch.
struct Pausing {
    journal: Arc<Mutex<Vec<(u64, &'static str)>>>,
    pause: Duration,
}

#[async_trait]
impl Step for Pausing {
    type Output = ();

    async fn execute(&self, ctx: &StepContext) -> Result<(), StepError> {
        let epoch = ctx.fencing_token().epoch;
        self.journal.lock().unwrap().push((epoch, "start"));
        if epoch == 1 {
            // The process stops here (the thread is the whole runtime of its executor)...
            std::thread::sleep(self.pause);
            // ...and the step's next poll must never come: its lease passed meanwhile.
            tokio::task::yield_now().await;
            self.journal.lock().unwrap().push((epoch, "after the pause"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.journal.lock().unwrap().push((epoch, "end"));
        Ok(())
    }
}

/// An executor paused past its lease (its whole runtime blocked) never polls its step again
/// once it runs again: the one that took the Operation over runs the step alone, and the
/// journal shows no line of the old epoch after the new one's first.
#[test]
fn a_paused_executor_never_runs_a_step_beside_the_one_that_took_it_over() {
    let ttl = Duration::from_millis(300);
    let journal = Arc::new(Mutex::new(Vec::new()));
    let saga = move |journal: &Arc<Mutex<Vec<(u64, &'static str)>>>| {
        Saga::builder("paused", 1)
            .step("long", Pausing { journal: journal.clone(), pause: ttl * 3 })
            .build()
            .unwrap()
    };
    let store = Arc::new(MemoryStore::new());
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let paused = {
        let (store, journal) = (store.clone(), journal.clone());
        std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let executor = Executor::builder(store)
                    .owner("paused")
                    .lease_ttl(ttl)
                    .takeover_interval(None)
                    .saga(saga(&journal))
                    .build()
                    .unwrap();
                let id = executor.start(start("paused")).await.unwrap();
                started_tx.send(id).unwrap();
                // How its driver ended here: it lost the lease.
                executor.wait_here(id).await
            })
        })
    };
    let id = started_rx.recv().unwrap();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let outcome = runtime.block_on(async {
        let taker = Executor::builder(store.clone())
            .owner("taker")
            .lease_ttl(ttl)
            .takeover_interval(Some(Duration::from_millis(20)))
            .saga(saga(&journal))
            .build()
            .unwrap();
        let _ = taker.recover().await.unwrap();
        taker.wait_timeout(id, Duration::from_secs(20)).await
    });
    assert_eq!(outcome.unwrap(), Outcome::Succeeded);
    match paused.join().unwrap() {
        Err(Error::Halted { cause, .. }) => {
            assert!(
                matches!(
                    *cause,
                    Error::LeaseExpiring { .. } | Error::Store(StoreError::Fenced { .. })
                ),
                "{cause}"
            )
        }
        other => panic!("the paused executor's driver ended with {other:?}"),
    }
    let journal = journal.lock().unwrap().clone();
    let newest_start = journal.iter().position(|(epoch, _)| *epoch > 1).expect("taken over");
    assert!(
        journal[newest_start..].iter().all(|(epoch, _)| *epoch > 1),
        "the paused executor ran its step after the takeover: {journal:?}"
    );
    assert!(!journal.contains(&(1, "after the pause")), "{journal:?}");
    assert_eq!(journal.iter().filter(|(_, what)| *what == "end").count(), 1, "{journal:?}");
}

/// The store of one executor that fails every append from a moment on (a disk gone bad under
/// it), while the other executors' stores work.
struct Broken {
    inner: Arc<MemoryStore>,
    broken: AtomicBool,
}

#[async_trait]
impl StoreWrapper for Broken {
    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }

    async fn append(&self, lease: &Lease, records: &[Record]) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("fdatasync failed: Input/output error".into()));
        }
        self.inner.append(lease, records).await
    }
}

/// An executor whose Operation halted on its store's failure answers that halt only until
/// another executor moves the Operation on: then `status` and `wait` answer from the store.
#[tokio::test]
async fn answers_come_from_the_store_once_another_executor_moved_past_a_halt() {
    let world = World::default();
    let saga = || {
        Saga::builder("two", 1)
            .step("a", TestStep::new("a", &world).slow(Duration::from_millis(50)))
            .step("b", TestStep::new("b", &world))
            .build()
            .unwrap()
    };
    let memory = Arc::new(MemoryStore::new());
    let broken = Arc::new(Broken { inner: memory.clone(), broken: AtomicBool::new(false) });
    let first = Executor::builder(broken.clone())
        .owner("first")
        .saga(saga())
        .takeover_interval(None)
        .build()
        .unwrap();
    let id = first.start(start("two")).await.unwrap();
    poll_status(&first, id, "step a starts", |s| s.step("a").is_some()).await;
    broken.broken.store(true, Ordering::SeqCst);
    assert!(matches!(first.wait(id).await, Err(Error::Halted { .. })));
    assert!(matches!(first.status(id).await, Err(Error::Halted { .. })));

    let second = Executor::builder(memory.clone()).owner("second").saga(saga()).build().unwrap();
    assert_eq!(second.recover().await.unwrap().resumed, vec![id]);
    assert_eq!(second.wait(id).await.unwrap(), Outcome::Succeeded);
    assert_eq!(first.status(id).await.unwrap().outcome(), Some(&Outcome::Succeeded));
    assert_eq!(first.wait(id).await.unwrap(), Outcome::Succeeded);
}

/// `wait` on an executor that does not run the Operation follows it: submitted there, run by a
/// worker that starts later, answered with its outcome as soon as it settles. On tokio's paused
/// clock (the in-memory store needs no real time): the test's sleep returns only once every task
/// is idle, so "it runs nowhere yet" is seen whatever the machine's load.
#[tokio::test(start_paused = true)]
async fn wait_follows_an_operation_that_another_executor_runs() {
    let world = World::default();
    let saga = || {
        Saga::builder("s", 1)
            .step("a", TestStep::new("a", &world).slow(Duration::from_millis(30)))
            .build()
            .unwrap()
    };
    let store = Arc::new(MemoryStore::new());
    let api = canceller(store.clone(), saga());
    let id = api.submit(start("s")).await.unwrap();
    let waiting = tokio::spawn({
        let api = api.clone();
        async move { api.wait_timeout(id, Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "it runs nowhere yet");
    let worker = Executor::builder(store.clone()).owner("worker").saga(saga()).build().unwrap();
    let _ = worker.recover().await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), Outcome::Succeeded);
}

/// The step of the fencing test: notes the token it ran with.
struct Tokens(Arc<Mutex<Vec<FencingToken>>>, Arc<AtomicU64>);

#[async_trait]
impl Step for Tokens {
    type Output = ();

    async fn execute(&self, ctx: &StepContext) -> Result<(), StepError> {
        self.0.lock().unwrap().push(ctx.fencing_token());
        if self.1.fetch_add(1, Ordering::SeqCst) == 0 {
            // The first attempt never ends: its executor goes away with it.
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// Steps see the fencing token of their executor's claim: the Operation and the lease epoch,
/// which grows when another executor takes the Operation over.
#[tokio::test]
async fn steps_see_a_fencing_token_that_grows_with_every_claim() {
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicU64::new(0));
    let saga =
        || Saga::builder("t", 1).step("s", Tokens(tokens.clone(), calls.clone())).build().unwrap();
    let store = Arc::new(MemoryStore::new());
    let ttl = Duration::from_millis(200);
    let first = Executor::builder(store.clone())
        .owner("first")
        .lease_ttl(ttl)
        .saga(saga())
        .takeover_interval(None)
        .build()
        .unwrap();
    let id = first.start(start("t")).await.unwrap();
    poll_status(&first, id, "step s starts", |s| s.step("s").is_some()).await;
    // The first executor shuts down: its step is dropped, its lease released.
    let _ = first.shutdown(Duration::from_millis(10)).await;
    let second = Executor::builder(store.clone())
        .owner("second")
        .lease_ttl(ttl)
        .saga(saga())
        .build()
        .unwrap();
    let _ = second.recover().await.unwrap();
    assert_eq!(second.wait(id).await.unwrap(), Outcome::Succeeded);
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert!(tokens.iter().all(|t| t.operation == id));
    assert!(tokens[1] > tokens[0], "{tokens:?}");
    let lease = store.lease(id).await.unwrap().unwrap();
    assert_eq!(tokens[1], lease.fencing_token());
}

/// The store of a recovering executor that reads slowly: recovery claims an Operation, then
/// takes longer than the lease to read it, as recovery of many Operations on a loaded machine
/// can.
struct SlowRead {
    inner: Arc<MemoryStore>,
    delay: Duration,
    reads: AtomicU64,
}

#[async_trait]
impl StoreWrapper for SlowRead {
    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }

    async fn read(&self, id: OperationId) -> Result<Vec<Record>, StoreError> {
        // Only recovery's first read is slow.
        if self.reads.fetch_add(1, Ordering::SeqCst) == 0 {
            tokio::time::sleep(self.delay).await;
        }
        self.inner.read(id).await
    }
}

/// A driver counts its lease from the instant its claim was sent, not from when it starts: an
/// Operation claimed and read for longer than its lease never runs a step under that claim
/// (another executor may hold it by then); a later claim runs it.
#[tokio::test]
async fn a_claim_older_than_its_lease_runs_nothing() {
    let ttl = Duration::from_millis(300);
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let saga = || {
        Saga::builder("t", 1)
            .step("s", Tokens(tokens.clone(), Arc::new(AtomicU64::new(1))))
            .build()
            .unwrap()
    };
    let memory = Arc::new(MemoryStore::new());
    // Created by an executor that died at once: its lease (epoch 1) expires in a millisecond.
    let dead = Executor::builder(memory.clone())
        .owner("dead")
        .lease_ttl(ttl)
        .saga(saga())
        .takeover_interval(None)
        .build()
        .unwrap();
    let id = dead.submit(start("t")).await.unwrap();
    let slow =
        Arc::new(SlowRead { inner: memory.clone(), delay: ttl * 2, reads: AtomicU64::new(0) });
    let recovering = Executor::builder(slow)
        .owner("recovering")
        .lease_ttl(ttl)
        .saga(saga())
        .takeover_interval(Some(Duration::from_millis(50)))
        .build()
        .unwrap();
    let report = recovering.recover().await.unwrap();
    assert_eq!(report.resumed, vec![id]);
    let outcome = recovering.wait_timeout(id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(outcome, Outcome::Succeeded);
    let tokens = tokens.lock().unwrap().clone();
    // Epoch 2, the slow claim, never ran the step: a later claim did.
    assert!(!tokens.iter().any(|t| t.epoch <= 2), "{tokens:?}");
    assert_eq!(tokens.len(), 1, "{tokens:?}");
}
