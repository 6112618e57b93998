//! [`ExecutorBuilder`]: how an [`Executor`] is configured.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Executor, Shared};
use crate::error::{Error, Result};
use crate::saga::Saga;
use crate::store::Store;

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
                read_only: Arc::new(crate::wrapper::ReadOnly(self.store.clone())),
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
