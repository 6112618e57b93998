//! The executor: starts, cancels, waits for and recovers Operations.

mod answers;
mod driver;
mod follow;
mod guard;
mod lease;
mod mailbox;
pub(crate) mod plan;
mod waiters;
mod watcher;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt as _;
use serde::Serialize;
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::answers::CancelAnswer;
use self::driver::{Command, Driver, Exit};
pub use self::follow::{FollowEvent, LogFollower};
use self::guard::Driving;
use self::mailbox::Mailbox;
use crate::error::{Error, Result, StoreError};
use crate::fold::{OperationState, Phase};
use crate::id::{now_ms, OperationId};
use crate::oplog::{LogLevel, LogLine, LogSink};
use crate::record::{Outcome, Record, RecordKind, Resource};
use crate::saga::Saga;
use crate::store::{CancelRequest, Store};

/// How long per-Operation log lines are kept by default: 90 days. Activity (the records) is kept
/// for the lifetime of the environment.
pub const DEFAULT_LOG_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// Runs Operations of the sagas registered with it, over one store.
///
/// Cloning is cheap; clones share the executor.
///
/// ```
/// use std::sync::Arc;
/// use async_trait::async_trait;
/// use saga_core::{Executor, MemoryStore, Outcome, Resource, Saga, Start, Step, StepContext, StepError};
///
/// struct Hello;
/// #[async_trait]
/// impl Step for Hello {
///     type Output = String;
///     async fn execute(&self, ctx: &StepContext) -> Result<String, StepError> {
///         Ok(format!("hello {}", ctx.params::<String>()?))
///     }
/// }
///
/// # tokio::runtime::Runtime::new()?.block_on(async {
/// let saga = Saga::builder("greet", 1).step("hello", Hello).build()?;
/// let executor = Executor::builder(Arc::new(MemoryStore::new())).saga(saga).build()?;
/// let id = executor
///     .start(Start::new("greet", Resource::new("app", "web")).params("world").actor("alice"))
///     .await?;
/// assert_eq!(executor.wait(id).await?, Outcome::Succeeded);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Executor {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    sagas: HashMap<(String, u32), Arc<Saga>>,
    latest: HashMap<String, u32>,
    owner: String,
    pub(crate) lease_ttl: Duration,
    max_log_lines: u64,
    permits: Arc<Semaphore>,
    running: Mutex<HashMap<OperationId, Handle>>,
    /// Operations that stopped here without an outcome the log stands behind, and why: their
    /// answers (`wait`, `status`, `cancel`) are that failure until a `recover()` resumes them.
    troubled: Mutex<HashMap<OperationId, Trouble>>,
    /// Operations found here waiting for an operator (they need attention): a wake-up that says
    /// one may be claimed (its lease was released) does not claim it again, which would release
    /// it again, for ever. The periodic scan still looks at them.
    attention: Mutex<std::collections::HashSet<OperationId>>,
    pub(crate) shutdown: CancellationToken,
    /// Fired when a shutdown's deadline passes: running executes see their tokens fire.
    pub(crate) interrupt: CancellationToken,
    /// Operations whose driver ended here without an outcome (stopped by a shutdown, halted, or
    /// needing attention): what [`Executor::shutdown`] reports as left for `recover()`.
    left: Mutex<Vec<OperationId>>,
    tasks: TaskTracker,
    recovering: tokio::sync::Mutex<()>,
    /// How often unfinished Operations are looked for and claimed (`None`: never on its own).
    takeover_interval: Option<Duration>,
    /// How often cancel requests in the store are looked for (and a queued Operation looks at
    /// its resource's queue).
    pub(crate) cancel_poll: Duration,
    /// Whether the watcher task (cancel requests, takeover) was started.
    watching: AtomicBool,
    /// Wakes the watcher for a takeover scan now (an Operation was submitted here).
    pub(crate) scan_now: Arc<tokio::sync::Notify>,
    /// The `wait`s of Operations not running here, which the watcher wakes.
    pub(crate) waiters: Arc<waiters::Waiters>,
    /// Whether the store has wake-ups ([`Store::wake_ups`]).
    pub(crate) wakes: bool,
}

/// Why an Operation is not running here although it has not finished, and the epoch of the
/// lease this executor held then: once the store holds a later one, another executor claimed
/// it after it stopped here, and the store answers instead (see [`Executor::trouble`]).
#[derive(Clone)]
enum Trouble {
    /// Its driver stopped on a store failure or an illegal log (not a lost lease: that
    /// Operation is another executor's, which the store tells).
    Halted { cause: Arc<Error>, epoch: u64 },
    /// `recover()` could not resume it.
    Unrecoverable { cause: Arc<Error>, epoch: u64 },
}

impl Trouble {
    fn error(&self, operation: OperationId) -> Error {
        match self {
            Trouble::Halted { cause, .. } => Error::Halted { operation, cause: cause.clone() },
            Trouble::Unrecoverable { cause, .. } => {
                Error::Unrecoverable { operation, cause: cause.clone() }
            }
        }
    }

    fn epoch(&self) -> u64 {
        match self {
            Trouble::Halted { epoch, .. } | Trouble::Unrecoverable { epoch, .. } => *epoch,
        }
    }
}

struct Handle {
    mailbox: Arc<Mailbox>,
    exit: Arc<ExitCell>,
    log: Arc<LogSink>,
}

/// Where a driver's task leaves how it ended, once, for whoever waits (`wait()`). Smaller than
/// a `watch` channel (whose eight notifiers cost about 300 bytes per Operation in flight).
#[derive(Default)]
struct ExitCell {
    /// `None` inside: the task ended without saying (it panicked).
    value: std::sync::OnceLock<Option<Exit>>,
    notify: tokio::sync::Notify,
}

impl ExitCell {
    fn set(&self, exit: Option<Exit>) {
        let _ = self.value.set(exit);
        self.notify.notify_waiters();
    }

    /// How the task ended, once it has; `None` if it ended without saying.
    async fn wait(&self) -> Option<Exit> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the value is read, so that a `set` in between still wakes it.
            notified.as_mut().enable();
            if let Some(exit) = self.value.get() {
                return exit.clone();
            }
            notified.await;
        }
    }
}

/// Sets the cell when dropped without having sent: a task that panicked still answers its
/// waiters.
struct ExitSender(Arc<ExitCell>);

impl ExitSender {
    fn send(self, exit: Exit) {
        self.0.set(Some(exit));
    }
}

impl Drop for ExitSender {
    fn drop(&mut self) {
        self.0.set(None);
    }
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor")
            .field("owner", &self.shared.owner)
            .field("sagas", &self.shared.sagas.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What [`Executor::recover`] did.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// Operations resumed by this executor.
    pub resumed: Vec<OperationId>,
    /// Operations owned by another executor whose lease has not expired.
    pub owned_elsewhere: Vec<OperationId>,
    /// Operations that cannot be resumed, with why: an unknown saga, an illegal log, a damaged
    /// record or lease, or a store error while reading it (a transient one, see
    /// [`Error::is_transient`], may pass at a later `recover()`). The others still resume.
    pub unrecoverable: Vec<(OperationId, Arc<Error>)>,
    /// Operations that need attention (past the point of no return, a step ran out of its
    /// retry policy): not resumed; [`Executor::retry`] or [`Executor::abandon`] decides.
    pub needs_attention: Vec<OperationId>,
    /// Entries of the unfinished index that name no Operation (a key that does not decode),
    /// each saying where; [`Executor::check`] removes them.
    pub damaged: Vec<StoreError>,
}

/// What [`Executor::shutdown`] left behind.
#[derive(Debug, Default)]
pub struct ShutdownReport {
    /// Operations that stopped here without an outcome, in the order they stopped: stopped at
    /// a step boundary or interrupted by the deadline, halted on a store failure, or waiting for
    /// an operator. `recover()` on an executor over the same store continues each of them.
    pub left: Vec<OperationId>,
    /// Whether the deadline passed with steps still running, so that their tokens were fired.
    pub interrupted: bool,
}

/// Builds an [`Executor`].
#[must_use]
pub struct ExecutorBuilder {
    store: Arc<dyn Store>,
    sagas: Vec<Saga>,
    owner: Option<String>,
    lease_ttl: Duration,
    max_running: usize,
    max_log_lines: u64,
    takeover_interval: Option<Duration>,
    cancel_poll: Duration,
}

impl fmt::Debug for ExecutorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecutorBuilder").field("sagas", &self.sagas).finish_non_exhaustive()
    }
}

impl ExecutorBuilder {
    /// Registers a saga. Operations name it by name (the highest version when started) and by
    /// name and version (when recovered).
    pub fn saga(mut self, saga: Saga) -> Self {
        self.sagas.push(saga);
        self
    }

    /// The executor's name in leases. Every executor that shares a store needs its own name:
    /// two executors with one name would both drive an Operation. The default is unique to this
    /// process (`host:pid:random`), so a restarted process waits for its predecessor's leases to
    /// expire before it resumes their Operations. A process that is the only one to use its
    /// store, and wants its Operations back at once after a restart, names itself with a name
    /// it keeps across restarts (and never runs twice at once).
    ///
    /// Within one process, two executors never drive one Operation at once, whatever their
    /// names: a claim of an Operation that another executor of the process drives is refused.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// How long a lease lasts unless renewed (renewed every third of it). Default 30 s.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_millis(30));
        self
    }

    /// How often the executor looks, on its own, for unfinished Operations that nobody holds (a
    /// lease that expired because its executor died, or that was never taken) and resumes them,
    /// as [`Executor::recover`] does: when one executor dies, the others carry on within its
    /// lease time plus this interval. `None` turns it off (only `recover()` resumes). Operations
    /// that were found unrecoverable for a lasting cause are not tried again by this scan. The
    /// scan starts with the first `start` or `recover`. Default 5 s.
    pub fn takeover_interval(mut self, interval: Option<Duration>) -> Self {
        self.takeover_interval = interval.map(|i| i.max(Duration::from_millis(10)));
        self
    }

    /// How often the executor looks for cancel requests that other executors recorded in the
    /// store for the Operations it runs (see [`Executor::cancel`]). Default 250 ms, so that a
    /// cancel from elsewhere is seen within 1 s.
    pub fn cancel_poll_interval(mut self, interval: Duration) -> Self {
        self.cancel_poll = interval.max(Duration::from_millis(5));
        self
    }

    /// How many Operations run at once; more wait for a place. Default 10,000.
    pub fn max_running(mut self, n: usize) -> Self {
        self.max_running = n.max(1);
        self
    }

    /// How many log lines are kept per Operation; the last one kept is a truncation marker, and
    /// the final outcome line is always kept. Default 10,000.
    pub fn max_log_lines(mut self, n: u64) -> Self {
        self.max_log_lines = n;
        self
    }

    /// Builds the executor; a saga registered twice with one name and version is an error.
    pub fn build(self) -> Result<Executor> {
        let mut sagas = HashMap::new();
        let mut latest: HashMap<String, u32> = HashMap::new();
        for saga in self.sagas {
            let key = (saga.name().to_owned(), saga.version());
            let entry = latest.entry(key.0.clone()).or_insert(key.1);
            *entry = (*entry).max(key.1);
            if sagas.insert(key.clone(), Arc::new(saga)).is_some() {
                return Err(Error::InvalidSaga {
                    saga: key.0,
                    problem: format!("version {} registered twice", key.1),
                });
            }
        }
        let owner = self.owner.unwrap_or_else(default_owner);
        let wakes = self.store.wake_ups().is_some();
        Ok(Executor {
            shared: Arc::new(Shared {
                store: self.store,
                sagas,
                latest,
                owner,
                lease_ttl: self.lease_ttl,
                max_log_lines: self.max_log_lines,
                permits: Arc::new(Semaphore::new(self.max_running)),
                running: Mutex::new(HashMap::new()),
                troubled: Mutex::new(HashMap::new()),
                attention: Mutex::default(),
                shutdown: CancellationToken::new(),
                interrupt: CancellationToken::new(),
                left: Mutex::new(Vec::new()),
                tasks: TaskTracker::new(),
                recovering: tokio::sync::Mutex::new(()),
                takeover_interval: self.takeover_interval,
                cancel_poll: self.cancel_poll,
                watching: AtomicBool::new(false),
                scan_now: Arc::new(tokio::sync::Notify::new()),
                waiters: Arc::default(),
                wakes,
            }),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Executor {
    /// Starts building an executor over `store`.
    pub fn builder(store: Arc<dyn Store>) -> ExecutorBuilder {
        ExecutorBuilder {
            store,
            sagas: Vec::new(),
            owner: None,
            lease_ttl: Duration::from_secs(30),
            max_running: 10_000,
            max_log_lines: crate::oplog::DEFAULT_MAX_LINES,
            takeover_interval: Some(Duration::from_secs(5)),
            cancel_poll: Duration::from_millis(250),
        }
    }

    /// Starts the watcher task (cancel requests, takeover) once, from within the runtime.
    fn ensure_watching(&self) {
        if !self.shared.watching.swap(true, Ordering::SeqCst) {
            let shared = Arc::downgrade(&self.shared);
            let shutdown = self.shared.shutdown.clone();
            // Subscribed now, not when the task first runs: what the caller does next (a
            // submit) may wake it already.
            let wake_ups = self.shared.store.wake_ups();
            self.shared.tasks.spawn(watcher::watch(shared, shutdown, wake_ups));
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// The registered saga of this name and version.
    pub fn saga(&self, name: &str, version: u32) -> Option<&Arc<Saga>> {
        self.shared.sagas.get(&(name.to_owned(), version))
    }

    /// Starts an Operation of the highest registered version of the request's saga. Returns once
    /// its `OperationCreated` record is durable; the steps run in the background. If the
    /// resource has unfinished Operations, this one waits behind them, in start order, across
    /// executors and restarts (its log and
    /// [`OperationState::waiting_for`](crate::state::OperationState::waiting_for) say for
    /// which); [`Executor::start_if_idle`] refuses instead.
    pub async fn start(&self, request: Start) -> Result<OperationId> {
        self.start_inner(request, false).await
    }

    /// [`Executor::start`], but refused with [`Error::ResourceBusy`] when the resource has an
    /// unfinished Operation at the time of the call, instead of waiting behind it. (Two calls
    /// racing on an idle resource may both start; the second then waits behind the first.)
    pub async fn start_if_idle(&self, request: Start) -> Result<OperationId> {
        self.start_inner(request, true).await
    }

    /// Records a new Operation durably **without running it here**: returns once its
    /// `OperationCreated` record is durable, with its lease already expired, so that any
    /// executor over the same store claims it at its next takeover scan, and at once when the
    /// store wakes its executors ([`Store::wake_ups`]; the PostgreSQL store does, through
    /// `NOTIFY`). For an API server that starts Operations and leaves running them to workers:
    /// build its executor with [`ExecutorBuilder::takeover_interval`]`(None)` so that it never
    /// claims one itself.
    ///
    /// On a store that one process opens (the sled store), the workers are the executors of that
    /// process: this executor's own takeover scan runs the Operation (it is woken at once, as
    /// if the store had woken it), so `submit` is `start` with the Operation handed to the scan.
    /// The resource queue applies as for `start`: the Operation waits behind the unfinished
    /// ones of its resource, in submission order, whichever executor claims it.
    pub async fn submit(&self, request: Start) -> Result<OperationId> {
        if self.shared.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        self.ensure_watching();
        let (record, _) = self.created_record(request)?;
        let id = record.operation;
        // A lease that expired as it was granted: claimable at once by anyone. A store with
        // wake-ups tells every executor over it (this one too); without, this one scans now.
        self.shared.store.create(&record, &self.shared.owner, Duration::ZERO).await?;
        if !self.shared.wakes {
            self.shared.scan_now.notify_one();
        }
        Ok(id)
    }

    /// The `OperationCreated` record of a request, for the highest registered version of its
    /// saga, and that saga.
    fn created_record(&self, request: Start) -> Result<(Record, Arc<Saga>)> {
        let Start { saga, resource, params, environment, actor } = request;
        let version = *self
            .shared
            .latest
            .get(&saga)
            .ok_or_else(|| Error::UnknownSaga { name: saga.clone(), version: None })?;
        let definition = self.shared.sagas[&(saga.clone(), version)].clone();
        let params =
            params.map_err(|source| Error::Serialize { what: "the params".into(), source })?;
        let id = OperationId::new();
        let record = Record {
            operation: id,
            seq: 0,
            at_ms: now_ms(),
            kind: RecordKind::OperationCreated {
                saga,
                version,
                params,
                environment,
                resource,
                actor,
            },
        };
        Ok((record, definition))
    }

    async fn start_inner(&self, request: Start, if_idle: bool) -> Result<OperationId> {
        if self.shared.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        self.ensure_watching();
        let (record, definition) = self.created_record(request)?;
        let id = record.operation;
        let state = OperationState::created(&record)?;
        if if_idle {
            if let Some(busy) = self.shared.store.resource_queue(state.resource()).await?.first() {
                return Err(Error::ResourceBusy {
                    resource: state.resource().clone(),
                    operation: *busy,
                });
            }
        }
        let Some(driving) = Driving::reserve(id) else {
            return Err(Error::Store(StoreError::AlreadyExists(id)));
        };
        let sent = tokio::time::Instant::now();
        let lease =
            self.shared.store.create(&record, &self.shared.owner, self.shared.lease_ttl).await?;
        let log = Arc::new(LogSink::new(id, 0, self.shared.max_log_lines));
        log.line(
            LogLevel::Info,
            None,
            format!(
                "operation {id} created: {} v{} on {} by {}",
                state.saga(),
                state.version(),
                state.resource(),
                state.actor()
            ),
        );
        self.spawn(definition, state, (lease, sent), log, driving, None);
        Ok(id)
    }

    /// Runs the Operation here under `lease`, granted by a request sent at the instant beside
    /// it (the driver counts its lease from there, never from later: see `lease.rs`).
    fn spawn(
        &self,
        saga: Arc<Saga>,
        state: OperationState,
        (lease, sent): (crate::store::Lease, tokio::time::Instant),
        log: Arc<LogSink>,
        driving: Driving,
        cancel: Option<CancelRequest>,
    ) {
        let id = state.id;
        lock(&self.shared.troubled).remove(&id);
        lock(&self.shared.attention).remove(&id);
        let mailbox = Arc::new(Mailbox::default());
        let exit_cell = Arc::new(ExitCell::default());
        let exit_tx = ExitSender(exit_cell.clone());
        lock(&self.shared.running)
            .insert(id, Handle { mailbox: mailbox.clone(), exit: exit_cell, log: log.clone() });
        let shared = self.shared.clone();
        let mut driver =
            Driver::new(shared.clone(), saga, state, (lease, sent), mailbox.clone(), log);
        driver.cancel_at_start = cancel;
        // A `wait` here that follows it through the store now waits for this driver instead.
        self.shared.waiters.wake(id);
        // The driver lives in the task and is borrowed by `queue` and `run`: moving it into `run`
        // would keep two copies of it in the task's future, per Operation in flight.
        self.shared.tasks.spawn(async move {
            let permit = driver.queue(shared.permits.clone()).await;
            let exit = match permit {
                Some(_permit) => driver.run().await,
                None => {
                    let _ = shared.store.release(&driver.lease).await;
                    Exit::Stopped
                }
            };
            mailbox.close();
            let epoch = driver.lease.epoch;
            // The driver (with any step future it still held) and its reservation go first, while
            // the handle still makes `wait()` wait for the exit below: whoever acts on the end
            // may drive the Operation next, and must find it free.
            drop(driver);
            drop(driving);
            {
                let mut running = lock(&shared.running);
                // A recovery may have resumed it already (it was free): that driver's handle
                // stays, and this one's troubles are over.
                if running.get(&id).is_some_and(|h| Arc::ptr_eq(&h.mailbox, &mailbox)) {
                    running.remove(&id);
                    match &exit {
                        Exit::Halted(cause) if !driver::is_lost_lease(cause) => {
                            let trouble = Trouble::Halted { cause: cause.clone(), epoch };
                            lock(&shared.troubled).insert(id, trouble);
                        }
                        Exit::NeedsAttention { .. } => {
                            lock(&shared.attention).insert(id);
                        }
                        _ => {}
                    }
                    let mut left = lock(&shared.left);
                    left.retain(|l| *l != id);
                    if !matches!(exit, Exit::Finished(_)) {
                        left.push(id);
                    }
                }
            }
            exit_tx.send(exit);
        });
    }

    /// Resumes every unfinished Operation of the store that no other live executor owns: forward
    /// if it was healthy, backward if it had failed or been cancelled. An Operation that cannot be
    /// resumed (its saga is not registered, its log is illegal, a record or its lease is damaged,
    /// the store fails to read it) is reported as unrecoverable by name; the others still resume.
    /// Fails as a whole only when the unfinished list itself cannot be read.
    pub async fn recover(&self) -> Result<RecoveryReport> {
        self.ensure_watching();
        self.recover_unfinished(false, None).await
    }

    /// [`Executor::recover`], or with `scan` the takeover scan, which leaves out what is running
    /// here and what was found unrecoverable for a lasting cause; of the Operations `only`, when
    /// given (the store said they may be claimed), instead of every unfinished one.
    pub(crate) async fn recover_unfinished(
        &self,
        scan: bool,
        only: Option<Vec<OperationId>>,
    ) -> Result<RecoveryReport> {
        // One recovery at a time per executor, so that two never claim the same Operation.
        let _recovering = self.shared.recovering.lock().await;
        let targeted = only.is_some();
        let listing = match only {
            Some(ids) => crate::store::Listing::of(ids),
            None => self.shared.store.list_unfinished().await?,
        };
        let mut ids = listing.ids;
        if scan {
            let running = lock(&self.shared.running);
            let troubled = lock(&self.shared.troubled);
            let attention = lock(&self.shared.attention);
            // What stopped here on a failure is tried again by the periodic scan only: a
            // halted driver releases its lease, and a wake-up for that would try again at once,
            // for as long as the failure lasts.
            ids.retain(|id| {
                let waits_for_an_operator = targeted && attention.contains(id);
                !running.contains_key(id)
                    && !waits_for_an_operator
                    && match troubled.get(id) {
                        None => true,
                        Some(Trouble::Unrecoverable { cause, .. }) => {
                            !targeted && cause.is_transient()
                        }
                        Some(Trouble::Halted { .. }) => !targeted,
                    }
            });
        }
        if ids.is_empty() {
            return Ok(RecoveryReport { damaged: listing.damaged, ..RecoveryReport::default() });
        }
        let cancels: HashMap<OperationId, CancelRequest> = self
            .shared
            .store
            .cancel_requests()
            .await?
            .into_iter()
            .map(|r| (r.operation, r))
            .collect();
        // Claim and read every Operation first, several at once, and only then resume them: the
        // resumed Operations' writes would otherwise queue the remaining claims behind them.
        let mut prepared = futures::stream::iter(ids)
            .map(|id| self.recover_one(id))
            .buffered(RECOVERY_CONCURRENCY);
        let mut report = RecoveryReport { damaged: listing.damaged, ..RecoveryReport::default() };
        let mut resume = Vec::new();
        while let Some(found) = prepared.next().await {
            if self.shared.shutdown.is_cancelled() {
                return Err(Error::ShuttingDown);
            }
            match found {
                Recovered::Skipped => {}
                Recovered::OwnedElsewhere(id) => report.owned_elsewhere.push(id),
                Recovered::Unrecoverable(id, cause, epoch) => {
                    let trouble = Trouble::Unrecoverable { cause: cause.clone(), epoch };
                    lock(&self.shared.troubled).insert(id, trouble);
                    report.unrecoverable.push((id, cause));
                }
                Recovered::NeedsAttention(id) => {
                    lock(&self.shared.attention).insert(id);
                    report.needs_attention.push(id);
                }
                Recovered::Ready(ready) => {
                    report.resumed.push(ready.state.id);
                    resume.push(*ready);
                }
            }
        }
        for Ready { saga, state, lease, sent, log, driving } in resume {
            log.line(
                LogLevel::Info,
                None,
                format!("recovered by {}: {}", self.shared.owner, describe(&state)),
            );
            let cancel = cancels.get(&state.id).cloned();
            self.spawn(saga, state, (lease, sent), log, driving, cancel);
        }
        Ok(report)
    }

    /// Claims and reads one unfinished Operation for [`Executor::recover`]. Every failure is
    /// this Operation's alone.
    async fn recover_one(&self, id: OperationId) -> Recovered {
        // Never two drivers of one Operation in this process, whatever the executors' names.
        let Some(driving) = Driving::reserve(id) else {
            return if lock(&self.shared.running).contains_key(&id) {
                Recovered::Skipped
            } else {
                Recovered::OwnedElsewhere(id)
            };
        };
        let sent = tokio::time::Instant::now();
        let lease =
            match self.shared.store.claim(id, &self.shared.owner, self.shared.lease_ttl).await {
                Ok(lease) => lease,
                Err(StoreError::Owned { .. }) => return Recovered::OwnedElsewhere(id),
                Err(e) => {
                    // The epoch it stopped at here: the store's, if it tells (an unreadable
                    // lease is forgotten only when a claim here succeeds).
                    let epoch = match self.shared.store.lease(id).await {
                        Ok(lease) => lease.map_or(0, |l| l.epoch),
                        Err(_) => u64::MAX,
                    };
                    return Recovered::Unrecoverable(id, Arc::new(e.into()), epoch);
                }
            };
        match self.prepare(id).await {
            Ok(Some((_, state, _))) if state.phase() == Phase::NeedsAttention => {
                let _ = self.shared.store.release(&lease).await;
                Recovered::NeedsAttention(id)
            }
            Ok(Some((saga, state, log))) => {
                Recovered::Ready(Box::new(Ready { saga, state, lease, sent, log, driving }))
            }
            Ok(None) => {
                // Finished, though still listed as unfinished: `check` unlists it.
                let _ = self.shared.store.release(&lease).await;
                Recovered::Skipped
            }
            Err(cause) => {
                // A line in its log says why, unless its log cannot be read either: a line
                // numbered from a guess could overwrite stored lines.
                if let Ok(seq) = self.next_log_seq(id).await {
                    let sink = LogSink::new(id, seq, self.shared.max_log_lines);
                    sink.line(LogLevel::Error, None, format!("unrecoverable: {cause}"));
                    let _ = sink.flush(self.shared.store.as_ref(), &lease).await;
                }
                let _ = self.shared.store.release(&lease).await;
                Recovered::Unrecoverable(id, Arc::new(cause), lease.epoch)
            }
        }
    }

    /// The number of the Operation's next log line, from its stored lines.
    async fn next_log_seq(&self, id: OperationId) -> Result<u64> {
        let lines = self.shared.store.read_log(id).await?;
        Ok(lines.last().map_or(0, |l| l.seq + 1))
    }

    /// Reads and folds an Operation for recovery; `None` if it already finished.
    async fn prepare(
        &self,
        id: OperationId,
    ) -> Result<Option<(Arc<Saga>, OperationState, Arc<LogSink>)>> {
        let records = self.shared.store.read(id).await?;
        let state = OperationState::fold(id, &records)?;
        if state.outcome.is_some() {
            return Ok(None);
        }
        let saga = self
            .shared
            .sagas
            .get(&(state.saga.clone(), state.version))
            .ok_or_else(|| Error::UnknownSaga {
                name: state.saga.clone(),
                version: Some(state.version),
            })?
            .clone();
        for record in &records {
            if let Some(step) = record.kind.step() {
                if saga.stage_of(step).is_none() {
                    return Err(Error::UnknownStep {
                        operation: id,
                        seq: record.seq,
                        step: step.to_owned(),
                        saga: saga.name().to_owned(),
                        version: saga.version(),
                    });
                }
            }
        }
        let log =
            Arc::new(LogSink::new(id, self.next_log_seq(id).await?, self.shared.max_log_lines));
        Ok(Some((saga, state, log)))
    }

    /// The Operation's stored log lines.
    pub async fn log(&self, id: OperationId) -> Result<Vec<LogLine>> {
        Ok(self.shared.store.read_log(id).await?)
    }

    /// Follows the Operation's log: the lines so far, then new lines as they are written, ending
    /// when the Operation stops running here. A follower that falls behind by more than 1,024 lines
    /// is told how many it missed; it never slows the Operation down.
    pub async fn follow(&self, id: OperationId) -> Result<LogFollower> {
        let sink = lock(&self.shared.running).get(&id).map(|h| h.log.clone());
        follow::follow(self.shared.store.as_ref(), id, sink).await
    }

    /// Deletes the log lines older than `age` (see [`DEFAULT_LOG_RETENTION`]); records, and so
    /// activity reports, stay. Returns how many lines went.
    pub async fn purge_logs_older_than(&self, age: Duration) -> Result<u64> {
        let cutoff = now_ms().saturating_sub(age.as_millis() as u64);
        Ok(self.shared.store.purge_logs(cutoff).await?)
    }

    /// Deletes every Operation of an environment, with its activity and its log lines. Returns how
    /// many Operations went.
    pub async fn delete_environment(&self, environment: &str) -> Result<u64> {
        Ok(self.shared.store.delete_environment(environment).await?)
    }

    /// Reconciles the store's indexes with its records (see [`Store::check`]) and, when `repair`
    /// is set, repairs what the records alone can: an Operation missing from the unfinished
    /// index is listed again, so that the next `recover()` resumes it.
    pub async fn check(&self, repair: bool) -> Result<crate::store::CheckReport> {
        Ok(self.shared.store.check(repair).await?)
    }

    /// Hands the store's cancel requests of Operations running here to their drivers, once each
    /// request (a driver answers it by recording the cancel or its refusal, which takes it out
    /// of the store; a later request of the same Operation is handed over too): every pending
    /// request, or those of the Operations `only`.
    pub(crate) async fn deliver_cancels(
        &self,
        delivered: &mut std::collections::HashSet<(OperationId, u64)>,
        only: Option<&[OperationId]>,
    ) {
        if lock(&self.shared.running).is_empty() {
            delivered.clear();
            return;
        }
        let requests = match only {
            None => self.shared.store.cancel_requests().await,
            Some(ids) => {
                let mut requests = Vec::new();
                for id in ids {
                    match self.shared.store.pending_cancel(*id).await {
                        Ok(request) => requests.extend(request),
                        Err(e) => {
                            tracing::warn!(operation = %id, error = %e, "cannot read a cancel request; the next poll tries again");
                        }
                    }
                }
                Ok(requests)
            }
        };
        let requests = match requests {
            Ok(requests) => requests,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read cancel requests; trying again");
                return;
            }
        };
        let running = lock(&self.shared.running);
        delivered.retain(|(id, _)| running.contains_key(id));
        for request in requests {
            let Some(handle) = running.get(&request.operation) else { continue };
            if delivered.insert((request.operation, request.at_ms)) {
                let (reply, _answer) = oneshot::channel();
                let command = Command::Cancel {
                    actor: request.actor,
                    reason: request.reason,
                    requested_ms: request.at_ms,
                    reply,
                };
                let _ = handle.mailbox.send(command);
            }
        }
    }

    /// Whether the Operation is running on this executor now.
    pub fn is_running(&self, id: OperationId) -> bool {
        lock(&self.shared.running).contains_key(&id)
    }

    /// Stops gracefully, within `deadline`: no new step starts, and running steps and
    /// compensations finish and are recorded; each Operation stops at its next step boundary and
    /// is left to `recover()`. Nothing is rolled back. When the deadline passes with steps still
    /// running, their tokens fire ([`StepContext::cancellation`](crate::StepContext::cancellation))
    /// and each has its [`Step::cancel_grace`](crate::Step::cancel_grace) to return: a success
    /// is recorded, anything else is not (the step may only be saying it was interrupted), and a
    /// step (or compensation) still running after the grace period is dropped. Either way its
    /// attempt's outcome is unknown to the log and `recover()` runs it again, as after a crash.
    /// Returns the Operations left for `recover()`.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        let interrupted = tokio::time::timeout(deadline, self.shared.tasks.wait()).await.is_err();
        if interrupted {
            self.shared.interrupt.cancel();
            self.shared.tasks.wait().await;
        }
        ShutdownReport { left: std::mem::take(&mut *lock(&self.shared.left)), interrupted }
    }

    /// Retries the step of an Operation that needs attention (see [`Phase::NeedsAttention`]):
    /// records who asked and why ([`RecordKind::AttentionRetried`]), starts the step's retry
    /// policy over and resumes the Operation on this executor. [`Error::NoAttentionNeeded`] if
    /// it does not need attention; a store error if another executor holds it.
    pub async fn retry(&self, id: OperationId, actor: &str, reason: &str) -> Result<()> {
        self.ensure_watching();
        let claimed = self.claim_for_operator(id).await?;
        let Claimed { saga, mut state, lease, sent, log, driving } = claimed;
        let record =
            RecordKind::AttentionRetried { actor: actor.to_owned(), reason: reason.to_owned() };
        let step = state.attention.as_ref().map(|(s, _)| s.clone()).unwrap_or_default();
        if let Err(e) = self.operator_write(&lease, &mut state, record).await {
            let _ = self.shared.store.release(&lease).await;
            return Err(e);
        }
        log.line(
            LogLevel::Warn,
            Some(&step),
            format!("{actor} retries step {step}, which needed attention: {reason}"),
        );
        // A cancel requested while it waited came after the point of no return: the driver
        // records its refusal first.
        let cancel = self.shared.store.pending_cancel(id).await.ok().flatten();
        self.spawn(saga, state, (lease, sent), log, driving, cancel);
        Ok(())
    }

    /// Abandons an Operation that needs attention (see [`Phase::NeedsAttention`]): it finishes
    /// with [`Outcome::Abandoned`], naming the step, its last error, who abandoned it and why.
    /// Nothing is rolled back and the steps after it never run. Returns the outcome, durable.
    pub async fn abandon(&self, id: OperationId, actor: &str, reason: &str) -> Result<Outcome> {
        // The reservation is held until the outcome is written.
        let Claimed { mut state, lease, log, driving: _driving, .. } =
            self.claim_for_operator(id).await?;
        let (step, error) = state.attention.clone().unwrap_or_default();
        let outcome =
            Outcome::Abandoned { step, error, actor: actor.to_owned(), reason: reason.to_owned() };
        let finish = RecordKind::OperationFinished { outcome: outcome.clone() };
        let mut written = self.operator_write(&lease, &mut state, finish.clone()).await;
        // A cancel request pending in the store came after the point of no return (the
        // Operation needs attention only past it): its refusal is recorded before the outcome,
        // which the store refuses while a request is pending.
        for _ in 0..ABANDON_TRIES {
            let Err(Error::Store(StoreError::CancelPending { request, .. })) = &written else {
                break;
            };
            let refusal = format!(
                "past the point of no return (step {}), the operation needs attention",
                state.attention.as_ref().map_or("", |(s, _)| s.as_str())
            );
            log.line(
                LogLevel::Warn,
                None,
                format!(
                    "cancel requested by {} ({}) refused: {refusal}",
                    request.actor, request.reason
                ),
            );
            let refused = RecordKind::CancelRefused {
                actor: request.actor.clone(),
                reason: request.reason.clone(),
                requested_ms: request.at_ms,
                refusal,
            };
            written = match self.operator_write(&lease, &mut state, refused).await {
                Ok(()) => self.operator_write(&lease, &mut state, finish.clone()).await,
                Err(e) => Err(e),
            };
        }
        if written.is_ok() {
            log.final_line(LogLevel::Error, format!("operation {outcome}"));
        }
        let _ = log.flush(self.shared.store.as_ref(), &lease).await;
        let _ = self.shared.store.release(&lease).await;
        written.map(|()| outcome)
    }

    /// Claims an Operation that needs attention, for an operator's decision.
    async fn claim_for_operator(&self, id: OperationId) -> Result<Claimed> {
        if self.shared.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let Some(driving) = Driving::reserve(id) else {
            return Err(Error::NoAttentionNeeded { operation: id });
        };
        let sent = tokio::time::Instant::now();
        let lease = self.shared.store.claim(id, &self.shared.owner, self.shared.lease_ttl).await?;
        match self.prepare(id).await {
            Ok(Some((saga, state, log))) if state.phase() == Phase::NeedsAttention => {
                lock(&self.shared.troubled).remove(&id);
                lock(&self.shared.attention).remove(&id);
                Ok(Claimed { saga, state, lease, sent, log, driving })
            }
            Ok(Some(_)) => {
                let _ = self.shared.store.release(&lease).await;
                Err(Error::NoAttentionNeeded { operation: id })
            }
            Ok(None) => {
                let _ = self.shared.store.release(&lease).await;
                let state = self.status(id).await?;
                match state.outcome {
                    Some(outcome) => {
                        Err(Error::AlreadyFinished { operation: id, outcome: Box::new(outcome) })
                    }
                    None => Err(Error::NoAttentionNeeded { operation: id }),
                }
            }
            Err(e) => {
                let _ = self.shared.store.release(&lease).await;
                Err(e)
            }
        }
    }

    /// Applies an operator's record to the state and makes it durable.
    /// Makes an operator's record durable and applies it to the state (checked against the
    /// fold first; applied only once durable).
    async fn operator_write(
        &self,
        lease: &crate::store::Lease,
        state: &mut OperationState,
        kind: RecordKind,
    ) -> Result<()> {
        let record = Record { operation: state.id, seq: state.next_seq, at_ms: now_ms(), kind };
        let mut after = state.clone();
        after.apply(&record)?;
        self.shared.store.append(lease, std::slice::from_ref(&record)).await?;
        *state = after;
        Ok(())
    }
}

/// An Operation claimed for an operator's decision.
struct Claimed {
    saga: Arc<Saga>,
    state: OperationState,
    lease: crate::store::Lease,
    /// When the claim was sent.
    sent: tokio::time::Instant,
    log: Arc<LogSink>,
    driving: Driving,
}

/// What to start: the request [`Executor::start`] takes, with each part named, so that no two
/// strings can be given in each other's place.
///
/// The saga and the resource are required; the rest have defaults: no params (JSON `null`), the
/// environment `"default"` and the actor `"anonymous"`. A control plane should name both: the
/// environment bounds the activity report, and the actor is who the log and the report say
/// started the change.
///
/// ```
/// use saga_core::{Resource, Start};
/// let request = Start::new("deploy", Resource::new("app", "web"))
///     .params(&serde_json::json!({ "image": "web:2" }))
///     .environment("prod")
///     .actor("alice");
/// assert_eq!(request.saga_name(), "deploy");
/// ```
#[derive(Debug)]
#[must_use]
pub struct Start {
    saga: String,
    resource: Resource,
    params: std::result::Result<Vec<u8>, serde_json::Error>,
    environment: String,
    actor: String,
}

impl Start {
    /// A request to start an Operation of saga `saga` (its highest registered version) on
    /// `resource`.
    pub fn new(saga: impl Into<String>, resource: Resource) -> Self {
        Start {
            saga: saga.into(),
            resource,
            params: Ok(b"null".to_vec()),
            environment: "default".to_owned(),
            actor: "anonymous".to_owned(),
        }
    }

    /// The parameters the steps read with [`StepContext::params`](crate::StepContext::params),
    /// serialized as JSON. A value that does not serialize makes [`Executor::start`] fail with
    /// [`Error::Serialize`] before anything is written.
    pub fn params<P: Serialize + ?Sized>(mut self, params: &P) -> Self {
        self.params = serde_json::to_vec(params);
        self
    }

    /// The environment the Operation belongs to (its activity report's scope).
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = environment.into();
        self
    }

    /// Who starts it: the log and the activity report name them.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = actor.into();
        self
    }

    /// The saga's name.
    pub fn saga_name(&self) -> &str {
        &self.saga
    }
}

/// A name unique to this executor: the host's name (`HOSTNAME`, or `/etc/hostname`), the
/// process id and a random part, so that two processes on one host, or two executors in one
/// process, never share a name.
fn default_owner() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "executor".to_owned());
    format!("{host}:{}:{:08x}", std::process::id(), fastrand::u32(..))
}

/// How many cancel requests `abandon` refuses before it gives up (each refusal answers one; a
/// new one may come while it writes).
const ABANDON_TRIES: usize = 8;

/// How many Operations `recover()` claims and reads at once.
const RECOVERY_CONCURRENCY: usize = 32;

/// What recovery found for one Operation.
enum Recovered {
    /// It already runs here, or it already finished.
    Skipped,
    /// Another executor's lease holds it, or another executor of this process drives it.
    OwnedElsewhere(OperationId),
    /// It cannot be resumed, for this reason (with the epoch of the lease claimed to try, if
    /// any: 0 when the claim failed).
    Unrecoverable(OperationId, Arc<Error>, u64),
    /// It waits for an operator's decision.
    NeedsAttention(OperationId),
    /// Claimed and folded, ready to resume.
    Ready(Box<Ready>),
}

/// An Operation claimed and folded by recovery.
struct Ready {
    saga: Arc<Saga>,
    state: OperationState,
    lease: crate::store::Lease,
    /// When the claim was sent.
    sent: tokio::time::Instant,
    log: Arc<LogSink>,
    driving: Driving,
}

/// The Operation directly ahead of `id` in its resource's queue, if any.
pub(crate) fn ahead_of(queue: &[OperationId], id: OperationId) -> Option<OperationId> {
    let position = queue.iter().position(|q| *q == id)?;
    position.checked_sub(1).map(|before| queue[before])
}

fn describe(state: &OperationState) -> String {
    match state.phase() {
        Phase::Running => "resuming forward".into(),
        Phase::RollingBack => match state.rollback_cause() {
            Some(cause) => format!("resuming the rollback ({cause})"),
            None => "resuming the rollback".into(),
        },
        Phase::NeedsAttention => "waiting for an operator".into(),
        Phase::Finished => "already finished".into(),
    }
}
