//! The executor: starts, cancels, waits for and recovers Operations.
//!
//! Here: [`Executor`] and what it shares with its tasks, and its small accessors. The rest, one
//! concern per file: `builder` (the configuration), `start` (starting Operations and the task
//! that runs each), `recovery` (recovery and the takeover scan), `operator` (retry and abandon),
//! `answers` (cancel, status, wait), `watcher` (wake-ups and polls), `driver` (one Operation's
//! loop), `lease` (its deadline and cutoff), `plan` (decisions from the fold), and the small
//! parts `exit`, `mailbox`, `waiters`, `guard`, `follow`.

mod answers;
mod builder;
mod driver;
mod exit;
mod follow;
mod guard;
mod lease;
mod mailbox;
mod operator;
pub(crate) mod plan;
mod recovery;
mod start;
mod waiters;
mod watcher;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::answers::CancelAnswer;
pub use self::builder::ExecutorBuilder;
use self::exit::ExitCell;
pub use self::follow::{FollowEvent, LogFollower};
use self::mailbox::Mailbox;
pub use self::recovery::RecoveryReport;
pub use self::start::Start;
use crate::error::{Error, Result};
use crate::id::{now_ms, OperationId};
use crate::oplog::{LogLine, LogSink};
use crate::saga::Saga;
use crate::store::Store;

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
    /// What [`Executor::store`] gives callers: `store`, read-only.
    read_only: Arc<dyn Store>,
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

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor")
            .field("owner", &self.shared.owner)
            .field("sagas", &self.shared.sagas.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What [`Executor::shutdown`] left behind.
#[derive(Debug, Default)]
#[must_use = "the report says which Operations were left unfinished and why"]
pub struct ShutdownReport {
    /// Operations that stopped here without an outcome, in the order they stopped: stopped at
    /// a step boundary or interrupted by the deadline, halted on a store failure, or waiting for
    /// an operator. `recover()` on an executor over the same store continues each of them.
    pub left: Vec<OperationId>,
    /// Whether the deadline passed with steps still running, so that their tokens were fired.
    pub interrupted: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Executor {
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

    /// The executor's store, read-only: every read passes through (records, logs, listings,
    /// leases, pending cancels, for reports and dashboards), and every write is refused with
    /// [`StoreError::ReadOnly`](crate::store::StoreError::ReadOnly). Writes go through the
    /// executor (`start`, `cancel`, `retry`, `abandon`, `purge_logs`, `delete_environment`,
    /// `check`), which holds the lease and keeps the log's rules.
    #[allow(clippy::misnamed_getters)] // The view is the point: callers never get the store itself.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.read_only
    }

    /// The registered saga of this name and version.
    pub fn saga(&self, name: &str, version: u32) -> Option<&Arc<Saga>> {
        self.shared.sagas.get(&(name.to_owned(), version))
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
}

/// The Operation directly ahead of `id` in its resource's queue, if any.
pub(crate) fn ahead_of(queue: &[OperationId], id: OperationId) -> Option<OperationId> {
    let position = queue.iter().position(|q| *q == id)?;
    position.checked_sub(1).map(|before| queue[before])
}
