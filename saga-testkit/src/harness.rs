//! `SagaCheck`: a user's saga factory, world and params, and one run of them under a fault plan.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use saga_core::log::{Record, RecordKind};
use saga_core::saga::StepInfo;
use saga_core::store::Store;
use saga_core::{
    Error as EngineError, Executor, MemoryStore, OperationId, Outcome, Resource, Saga, Start,
    StepKind,
};

use crate::builder::TestSagaBuilder;
use crate::crash_store::CrashingStore;
use crate::error::{Error, Result};
use crate::faults::{Attention, FaultPlan};
use crate::injector::{CancelAnswer, Faults, StepStats};
use crate::world::World;

/// The owner name of every executor the harness makes: the recovering executor after a crash
/// reclaims the crashed one's lease at once.
const OWNER: &str = "saga-testkit";

type WorldFactory<W> = dyn Fn() -> W + Send + Sync;
type SagaFactory<W> = dyn Fn(&W, TestSagaBuilder) -> TestSagaBuilder + Send + Sync;
type StoreFactory = dyn Fn() -> Arc<dyn Store> + Send + Sync;

/// A user's saga under test: how to make a fresh [`World`], how to build the saga over it (a
/// *saga factory* given a [`TestSagaBuilder`], which wraps every step in a
/// [`Faulty`](crate::Faulty)), and the params to start it with.
///
/// Every run gets a fresh world, a fresh store (a [`MemoryStore`] unless [`SagaCheck::store`]
/// says otherwise) and a fresh executor. [`SagaCheck::run`] runs one [`FaultPlan`]; the checks
/// ([`each_step_can_fail`](SagaCheck::each_step_can_fail),
/// [`steps_are_idempotent`](SagaCheck::steps_are_idempotent),
/// [`crash_anywhere`](SagaCheck::crash_anywhere)) run many and compare worlds. See the crate
/// docs for an example.
pub struct SagaCheck<W: World> {
    name: String,
    new_world: Arc<WorldFactory<W>>,
    saga: Arc<SagaFactory<W>>,
    params: std::result::Result<serde_json::Value, String>,
    store: Arc<StoreFactory>,
    timeout: Duration,
}

impl<W: World> fmt::Debug for SagaCheck<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaCheck")
            .field("name", &self.name)
            .field("params", &self.params)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What one run did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Run<S> {
    /// The plan it ran under.
    pub plan: FaultPlan,
    /// The Operation's outcome.
    pub outcome: Outcome,
    /// The world before the Operation started.
    pub before: S,
    /// The world after its outcome.
    pub after: S,
    /// Its whole log, across a crash.
    pub records: Vec<Record>,
    /// What each step did, by name.
    pub stats: BTreeMap<String, StepStats>,
    /// How the planned cancel was answered, if it was asked.
    pub cancel: Option<CancelAnswer>,
    /// Whether the crash happened (the plan's crash point came before the outcome) and a second
    /// executor recovered the Operation.
    pub recovered: bool,
    /// The steps that needed attention, in order, one entry each time (by the log's
    /// `AttentionNeeded` records); the plan's [`Attention`] decided each time.
    pub attention: Vec<String>,
    /// The irreversible steps that started and may have changed the world: all but those whose
    /// every attempt failed without effect (by the log).
    pub irreversible: BTreeSet<String>,
    /// `before` and `after` without the changes of the steps in `irreversible`
    /// ([`World::excluding`]), when some ran and the world can tell their changes apart.
    pub excluding_irreversible: Option<(S, S)>,
}

/// The steps of the saga under test and its point of no return.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) steps: Vec<StepInfo>,
    pub(crate) point_of_no_return: Option<usize>,
}

impl Layout {
    pub(crate) fn past_point_of_no_return(&self, stage: usize) -> bool {
        self.point_of_no_return.is_some_and(|p| stage > p)
    }
}

impl<W: World> SagaCheck<W> {
    /// A saga named `name`, built by `saga` over a world made by `new_world`, started with
    /// params `null`. A factory written once against
    /// [`DefineSaga`](saga_core::saga::DefineSaga) serves here as is:
    /// `|world, saga| define(saga, world)`.
    pub fn new(
        name: impl Into<String>,
        new_world: impl Fn() -> W + Send + Sync + 'static,
        saga: impl Fn(&W, TestSagaBuilder) -> TestSagaBuilder + Send + Sync + 'static,
    ) -> Self {
        SagaCheck {
            name: name.into(),
            new_world: Arc::new(new_world),
            saga: Arc::new(saga),
            params: Ok(serde_json::Value::Null),
            store: Arc::new(|| Arc::new(MemoryStore::new()) as Arc<dyn Store>),
            timeout: Duration::from_secs(30),
        }
    }

    /// The params every Operation starts with.
    pub fn params<P: serde::Serialize + ?Sized>(mut self, params: &P) -> Self {
        self.params = serde_json::to_value(params).map_err(|e| e.to_string());
        self
    }

    /// Makes a fresh store for each run (the default is a [`MemoryStore`]).
    pub fn store(mut self, store: impl Fn() -> Arc<dyn Store> + Send + Sync + 'static) -> Self {
        self.store = Arc::new(store);
        self
    }

    /// How long one Operation may take before the run fails (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn build(&self, world: &W, faults: &Faults) -> Result<Saga> {
        (self.saga)(world, TestSagaBuilder::new(self.name.clone(), 1, faults))
            .build()
            .map_err(Error::InvalidSaga)
    }

    pub(crate) fn layout(&self) -> Result<Layout> {
        let saga = self.build(&(self.new_world)(), &Faults::default())?;
        let point_of_no_return = saga.point_of_no_return().and_then(|s| saga.stage_of(s));
        Ok(Layout { steps: saga.steps(), point_of_no_return })
    }

    fn executor(&self, store: Arc<dyn Store>, saga: Saga) -> Result<Executor> {
        Executor::builder(store).owner(OWNER).saga(saga).build().map_err(Error::InvalidSaga)
    }

    async fn start(&self, executor: &Executor, scenario: &str) -> Result<OperationId> {
        let params = self.params.as_ref().map_err(|e| Error::Params(e.clone()))?;
        let request = Start::new(&self.name, Resource::new("saga-testkit", &self.name))
            .params(params)
            .environment("test")
            .actor("tester");
        executor.start(request).await.map_err(|source| Error::Engine {
            scenario: scenario.to_owned(),
            source: Box::new(source),
        })
    }

    async fn wait(
        &self,
        executor: &Executor,
        id: OperationId,
        scenario: &str,
    ) -> Result<saga_core::Result<Outcome>> {
        tokio::time::timeout(self.timeout, executor.wait(id))
            .await
            .map_err(|_| Error::Timeout { scenario: scenario.to_owned(), timeout: self.timeout })
    }

    /// Runs the saga once under `plan` on a fresh world and store, crashing and recovering if the
    /// plan says so, and deciding as the plan says each time the Operation needs attention.
    /// Must be called within a Tokio runtime.
    pub async fn run(&self, plan: &FaultPlan) -> Result<Run<W::Snapshot>> {
        let scenario = format!("faults: {plan}");
        let engine =
            |source| Error::Engine { scenario: scenario.clone(), source: Box::new(source) };
        if plan.crash() == Some(0) {
            return Err(Error::InvalidPlan(
                "a crash after 0 records: the Operation is never created".into(),
            ));
        }
        let world = (self.new_world)();
        let faults = Faults::new(plan.clone());
        let saga = self.build(&world, &faults)?;
        let kinds: BTreeMap<String, StepKind> =
            saga.steps().into_iter().map(|s| (s.name, s.kind)).collect();
        let before = world.snapshot().await;
        let store = (self.store)();
        let first: Arc<dyn Store> = match plan.crash() {
            Some(budget) => Arc::new(CrashingStore::new(store.clone(), budget)),
            None => store.clone(),
        };
        let mut executor = self.executor(first, saga)?;
        let mut server = faults.serve_cancels(&executor);
        let id = self.start(&executor, &scenario).await?;
        let mut recovered = false;
        let mut retries = 0;
        let outcome = loop {
            let error = match self.wait(&executor, id, &scenario).await? {
                Ok(outcome) => break outcome,
                Err(error) => error,
            };
            let decided = match (&error, plan.attention()) {
                (EngineError::NeedsAttention { .. }, Some(Attention::Abandon)) => {
                    executor.abandon(id, OWNER, "injected abandon").await.map(Some)
                }
                (EngineError::NeedsAttention { .. }, Some(Attention::Retry))
                    if retries < Attention::MAX_RETRIES =>
                {
                    retries += 1;
                    executor.retry(id, OWNER, "injected retry").await.map(|()| None)
                }
                // No decision, or no retry left: the run ends with the engine's error.
                (EngineError::NeedsAttention { .. }, _) => return Err(engine(error)),
                _ => Err(error),
            };
            match decided {
                Ok(Some(outcome)) => break outcome,
                Ok(None) => continue,
                // Halted by the crash (or the decision refused by it): a new process recovers
                // over what was durable.
                Err(_) if plan.crash().is_some() && !recovered => {
                    drop(server);
                    drop(executor);
                    executor = self.executor(store.clone(), self.build(&world, &faults)?)?;
                    server = faults.serve_cancels(&executor);
                    let report = executor.recover().await.map_err(engine)?;
                    if let Some((_, cause)) =
                        report.unrecoverable.into_iter().find(|(op, _)| *op == id)
                    {
                        return Err(engine(EngineError::Unrecoverable { operation: id, cause }));
                    }
                    recovered = true;
                }
                Err(error) => return Err(engine(error)),
            }
        };
        drop(server);
        let after = world.snapshot().await;
        let records = store.read(id).await.map_err(|e| engine(e.into()))?;
        let irreversible = irreversible_with_effect(&records, &kinds);
        let excluding_irreversible = if irreversible.is_empty() {
            None
        } else {
            world.excluding(&before, &irreversible).zip(world.excluding(&after, &irreversible))
        };
        let attention = records
            .iter()
            .filter_map(|r| match &r.kind {
                RecordKind::AttentionNeeded { step, .. } => Some(step.clone()),
                _ => None,
            })
            .collect();
        Ok(Run {
            plan: plan.clone(),
            outcome,
            before,
            after,
            records,
            stats: faults.all_stats(),
            cancel: faults.cancel_answer(),
            recovered,
            attention,
            irreversible,
            excluding_irreversible,
        })
    }
}

/// The irreversible steps that started and may have had an effect: every attempt of a step that
/// failed without effect (`StepFailedWithoutEffect`, as many as its `StepStarted`) changed nothing.
fn irreversible_with_effect(
    records: &[Record],
    kinds: &BTreeMap<String, StepKind>,
) -> BTreeSet<String> {
    let mut attempts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for r in records {
        match &r.kind {
            RecordKind::StepStarted { step, .. } => attempts.entry(step).or_default().0 += 1,
            RecordKind::StepFailedWithoutEffect { step, .. } => {
                attempts.entry(step).or_default().1 += 1
            }
            _ => {}
        }
    }
    attempts
        .into_iter()
        .filter(|(step, (started, without_effect))| {
            kinds.get(*step) == Some(&StepKind::Irreversible) && started != without_effect
        })
        .map(|(step, _)| step.to_owned())
        .collect()
}
