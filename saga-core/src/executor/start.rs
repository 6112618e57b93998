//! Starting Operations: [`Start`], `start`, `start_if_idle`, `submit`, and the task that runs
//! each Operation here.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::driver::{Driver, Exit};
use super::exit::{ExitCell, ExitSender};
use super::guard::Driving;
use super::mailbox::Mailbox;
use super::{driver, lock, Executor, Handle, Trouble};
use crate::error::{Error, Result, StoreError};
use crate::fold::OperationState;
use crate::id::{now_ms, OperationId};
use crate::oplog::{LogLevel, LogSink};
use crate::record::{Record, RecordKind, Resource};
use crate::saga::Saga;
use crate::store::CancelRequest;

impl Executor {
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
    /// store wakes its executors ([`Store::wake_ups`](crate::store::Store::wake_ups); the PostgreSQL store does, through
    /// `NOTIFY`). For an API server that starts Operations and leaves running them to workers:
    /// build its executor with [`ExecutorBuilder::takeover_interval`](crate::executor::ExecutorBuilder::takeover_interval)`(None)` so that it never
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
    pub(super) fn spawn(
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
