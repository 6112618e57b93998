//! Test steps that record what they do in a shared world, a store that "crashes", and a poll
//! that fails saying what it waited for.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::state::OperationState;
use saga_core::{
    async_trait, Executed, Executor, OperationId, RetryPolicy, Step, StepContext, StepError,
    StepKind,
};
/// The store that "crashes" after a number of records, from the testkit users get.
pub use saga_testkit::CrashingStore;

/// What the steps did: an ordered journal and the set of effects in place now.
#[derive(Clone, Debug, Default)]
pub struct World {
    inner: Arc<Mutex<WorldInner>>,
}

#[derive(Debug, Default)]
struct WorldInner {
    journal: Vec<String>,
    effects: BTreeSet<String>,
}

impl World {
    pub fn journal(&self) -> Vec<String> {
        self.inner.lock().unwrap().journal.clone()
    }

    pub fn effects(&self) -> BTreeSet<String> {
        self.inner.lock().unwrap().effects.clone()
    }

    fn note(&self, entry: String) {
        self.inner.lock().unwrap().journal.push(entry);
    }

    /// Adds an entry to the journal, for steps written in a test file.
    pub fn record_note(&self, entry: &str) {
        self.note(entry.to_owned());
    }

    fn apply(&self, effect: &str, present: bool) {
        let mut inner = self.inner.lock().unwrap();
        if present {
            inner.effects.insert(effect.to_owned());
        } else {
            inner.effects.remove(effect);
        }
    }

    /// The steps compensated, in order.
    pub fn compensated(&self) -> Vec<String> {
        self.journal()
            .iter()
            .filter_map(|e| e.strip_prefix("compensate ").map(str::to_owned))
            .collect()
    }
}

/// A step with a configurable misbehaviour. Its effect is the string `name` in the world.
#[derive(Clone)]
pub struct TestStep {
    pub name: String,
    pub world: World,
    pub kind: StepKind,
    /// Fail permanently (after applying the effect when `partial`).
    pub fail: bool,
    pub partial: bool,
    /// Transient failures before success.
    pub transient: Arc<AtomicU32>,
    /// Permanent failures before success (after the transient ones), shared by the clones.
    pub permanent: Arc<AtomicU32>,
    /// How many times `compensate` was called, shared by the clones.
    pub compensation_calls: Arc<AtomicU32>,
    /// Compensation fails permanently, every time.
    pub compensation_fails: bool,
    /// Time execute takes (it does not watch cancellation; the engine must stop it).
    pub delay: Duration,
    /// Time compensate takes.
    pub compensation_delay: Duration,
    pub retry: RetryPolicy,
}

impl TestStep {
    pub fn new(name: &str, world: &World) -> Self {
        TestStep {
            name: name.into(),
            world: world.clone(),
            kind: StepKind::Compensable,
            fail: false,
            partial: false,
            transient: Arc::new(AtomicU32::new(0)),
            permanent: Arc::new(AtomicU32::new(0)),
            compensation_calls: Arc::new(AtomicU32::new(0)),
            compensation_fails: false,
            delay: Duration::ZERO,
            compensation_delay: Duration::ZERO,
            retry: RetryPolicy::exponential(3, Duration::from_millis(5)),
        }
    }

    pub fn failing(mut self) -> Self {
        self.fail = true;
        self
    }

    pub fn transient_failures(self, n: u32) -> Self {
        self.transient.store(n, Ordering::SeqCst);
        self
    }

    /// Fails permanently `n` times (after any transient failures), then succeeds: a step that
    /// only a retry past the point of no return sees through.
    pub fn permanent_failures(self, n: u32) -> Self {
        self.permanent.store(n, Ordering::SeqCst);
        self
    }

    pub fn kind(mut self, kind: StepKind) -> Self {
        self.kind = kind;
        self
    }

    pub fn slow(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn slow_compensation(mut self, delay: Duration) -> Self {
        self.compensation_delay = delay;
        self
    }

    pub fn broken_compensation(mut self) -> Self {
        self.compensation_fails = true;
        self
    }
}

#[async_trait]
impl Step for TestStep {
    type Output = String;

    async fn execute(&self, ctx: &StepContext) -> Result<String, StepError> {
        self.world.note(format!("execute {} #{}", self.name, ctx.attempt()));
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.transient.load(Ordering::SeqCst) > 0 {
            self.transient.fetch_sub(1, Ordering::SeqCst);
            return Err(StepError::transient(format!("{} flaked", self.name)));
        }
        if self.permanent.load(Ordering::SeqCst) > 0 {
            self.permanent.fetch_sub(1, Ordering::SeqCst);
            return Err(StepError::permanent(format!("{} broke for now", self.name)));
        }
        if self.fail {
            if self.partial {
                self.world.apply(&self.name, true);
            }
            return Err(StepError::permanent(format!("{} broke", self.name)));
        }
        if self.kind != StepKind::ReadOnly {
            self.world.apply(&self.name, true);
        }
        Ok(format!("{}-output", self.name))
    }

    async fn compensate(
        &self,
        ctx: &StepContext,
        executed: Executed<String>,
    ) -> Result<(), StepError> {
        self.compensation_calls.fetch_add(1, Ordering::SeqCst);
        if let Executed::Succeeded(output) = &executed {
            assert_eq!(output, &format!("{}-output", self.name));
        }
        if !self.compensation_delay.is_zero() {
            tokio::time::sleep(self.compensation_delay).await;
        }
        if self.compensation_fails {
            self.world.note(format!("compensation failed {} #{}", self.name, ctx.attempt()));
            return Err(StepError::permanent(format!("cannot undo {}", self.name)));
        }
        self.world.apply(&self.name, false);
        self.world.note(format!("compensate {}", self.name));
        Ok(())
    }

    fn kind(&self) -> StepKind {
        self.kind
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.retry.clone()
    }

    /// It does not watch its cancellation token, so it gets no grace period.
    fn cancel_grace(&self) -> Duration {
        Duration::ZERO
    }
}

/// Polls the Operation's status every 5 ms until `done` holds of it and returns that status;
/// fails, saying `what` it waited for, after 5 s (of the test's clock: paused time advances
/// while it sleeps).
pub async fn poll_status(
    executor: &Executor,
    id: OperationId,
    what: &str,
    done: impl Fn(&OperationState) -> bool,
) -> OperationState {
    let limit = Duration::from_secs(5);
    let start = tokio::time::Instant::now();
    loop {
        let state = executor.status(id).await.expect("status");
        if done(&state) {
            return state;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}; last state: {state:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The activity report of `environment` for Operations created in `[since_ms, until_ms)`,
/// which must succeed.
pub async fn report(
    store: &dyn saga_core::store::Store,
    environment: &str,
    since_ms: u64,
    until_ms: u64,
) -> Vec<saga_core::report::ActivityRow> {
    let (since, until) = (
        saga_core::Timestamp::from_unix_ms(since_ms),
        saga_core::Timestamp::from_unix_ms(until_ms),
    );
    saga_core::report::activity_report(store, environment, since, until)
        .await
        .expect("the activity report")
}
