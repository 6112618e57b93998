//! The driver of one Operation: folds its records, asks the planner what to do, writes the
//! records ahead of every side effect, runs the steps and reacts to their results and to commands.
//!
//! Here: the driver's state and its loop (`drive`), with the barriers that the store decides
//! against a pending cancel. Beside it: `commit` (records queued and made durable), `launch`
//! (a step's attempt and retry timers), `events` (what a result records and says), `commands`
//! (a cancel), `stopping` (the lease, its deadline, a shutdown), `turn` (the resource's queue).

mod commands;
mod commit;
mod events;
mod launch;
mod stopping;
mod turn;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt as _;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::lease::{LeaseClock, WithinLease};
use super::mailbox::Mailbox;
use super::plan::{self, Action, InFlight};
use super::{CancelAnswer, Shared};
use crate::error::{Error, StepError};
use crate::fold::{Execution, OperationState, Phase};
use crate::id::now_ms;
use crate::oplog::{LogLevel, LogSink};
use crate::record::{Outcome, Record, RecordKind};
use crate::saga::Saga;
use crate::step::{ExecutedBytes, OperationInfo, Outputs, StepContext};
use crate::store::{CancelRequest, Lease, StoreError};

use self::events::outcome_line;
pub(crate) use self::stopping::is_lost_lease;
use self::stopping::lost_lease;

/// A request to a running Operation's driver.
#[derive(Debug)]
pub(crate) enum Command {
    /// Cancel the Operation: asked here (`requested_ms` now), or a request found in the store.
    Cancel {
        actor: String,
        reason: String,
        requested_ms: u64,
        reply: oneshot::Sender<Result<CancelAnswer, Error>>,
    },
}

/// How a driver ended.
#[derive(Clone, Debug)]
pub(crate) enum Exit {
    Finished(Outcome),
    /// Stopped at a step boundary by a shutdown; `recover()` continues it.
    Stopped,
    /// Stopped because the store failed or the log became illegal; `recover()` may continue it.
    Halted(Arc<Error>),
    /// Past the point of no return, a step ran out of its retry policy: (step, last error).
    NeedsAttention {
        step: String,
        error: String,
    },
}

enum Event {
    Executed { step: String, result: Result<Vec<u8>, StepError> },
    Compensated { step: String, result: Result<(), StepError> },
    RetryDue { step: String },
}

type EventFuture = Pin<Box<dyn Future<Output = Event> + Send>>;

pub(crate) struct Driver {
    pub(crate) shared: Arc<Shared>,
    pub(crate) saga: Arc<Saga>,
    pub(crate) state: OperationState,
    pub(crate) lease: Lease,
    pub(crate) commands: Arc<Mailbox>,
    pub(crate) log: Arc<LogSink>,
    pending: Vec<Record>,
    flight: InFlight,
    running: FuturesUnordered<EventFuture>,
    timers: FuturesUnordered<EventFuture>,
    cancel: CancellationToken,
    info: Arc<OperationInfo>,
    /// The outputs of the steps that succeeded, kept up to date as steps succeed (a step reading
    /// one of another stage is checked against the saga by `StepContext::output`).
    outputs: Arc<Outputs>,
    stopping: bool,
    /// The shutdown's deadline passed: running executes saw their tokens fire, and what they
    /// return other than success is not recorded (`recover()` runs them again).
    interrupted: bool,
    /// The outcome's log line, written once the outcome is durable.
    outcome_line: Option<(LogLevel, String)>,
    /// A cancel request found in the store at claim, answered before anything else runs.
    pub(crate) cancel_at_start: Option<CancelRequest>,
    /// When the lease was last granted or renewed (the instant the request was sent, so never
    /// later than the store's grant), shared with the step futures: see [`super::lease`].
    clock: Arc<LeaseClock>,
    _capture: crate::capture::Registration,
}

impl Driver {
    pub(crate) fn new(
        shared: Arc<Shared>,
        saga: Arc<Saga>,
        mut state: OperationState,
        (lease, sent): (Lease, tokio::time::Instant),
        commands: Arc<Mailbox>,
        log: Arc<LogSink>,
    ) -> Self {
        state.reserve_steps(saga.step_count());
        let state_id = state.id;
        let log_for_capture = log.clone();
        let info = Arc::new(OperationInfo {
            id: state.id,
            epoch: lease.epoch,
            environment: state.environment.clone(),
            resource: state.resource.clone(),
            actor: state.actor.clone(),
            params: state.params.clone(),
        });
        let outputs: Outputs = state
            .steps
            .iter()
            .filter_map(|s| match &s.execution {
                Execution::Succeeded { output } => Some((s.name.clone(), output.clone())),
                _ => None,
            })
            .collect();
        // Counted from the instant the claim or create was sent: the lease may have run for a
        // while since (recovery claims and reads many Operations before it spawns them).
        let clock = LeaseClock::new(shared.lease_ttl, sent);
        Driver {
            shared,
            saga,
            state,
            lease,
            commands,
            log,
            pending: Vec::new(),
            flight: InFlight::default(),
            running: FuturesUnordered::new(),
            timers: FuturesUnordered::new(),
            cancel: CancellationToken::new(),
            info,
            outputs: Arc::new(outputs),
            stopping: false,
            interrupted: false,
            outcome_line: None,
            cancel_at_start: None,
            // The claim or create was sent just before; the deadline's margin covers its latency.
            clock,
            _capture: crate::capture::register(state_id, &log_for_capture),
        }
    }

    /// Waits for a place among the Operations allowed to run at once, answering commands (a cancel
    /// is recorded at once) and renewing the lease meanwhile. `None` when the executor shuts
    /// down, the store fails, or the lease is lost first.
    pub(crate) async fn queue(
        &mut self,
        permits: Arc<tokio::sync::Semaphore>,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let acquire = permits.acquire_owned();
        tokio::pin!(acquire);
        let commands = self.commands.clone();
        let period = self.shared.lease_ttl / 3;
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                permit = &mut acquire => return permit.ok(),
                _ = self.shared.shutdown.cancelled() => return None,
                command = commands.recv() => {
                    if Box::pin(self.on_command(command)).await.is_err() {
                        return None;
                    }
                }
                _ = renew.tick() => {
                    if Box::pin(self.renew(&mut renew)).await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// Runs the Operation until it finishes, the executor shuts down, or the store fails.
    pub(crate) async fn run(&mut self) -> Exit {
        let exit = match self.drive().await {
            Ok(exit) => exit,
            Err(e) => {
                self.log.line(LogLevel::Error, None, format!("operation halted: {e}"));
                Exit::Halted(Arc::new(e))
            }
        };
        // Best effort: log lines and the lease matter less than the records, which are durable.
        // Bounded, so that a store that does not answer (the reason a lease could not be
        // renewed) never keeps the Operation from ending here.
        let bound = self.shared.lease_ttl / 3;
        if lost_lease(&exit) {
            // Another executor may own the Operation and its log now: the lines not stored yet
            // go to `tracing` instead of the store.
            for line in self.log.discard() {
                tracing::warn!(operation = %line.operation, "{line} (not stored: the lease was lost)");
            }
            // Nor is the lease released: past its deadline nothing more is sent for the
            // Operation (a lease the store still holds expires on its own).
            return exit;
        }
        let flush = Box::pin(self.log.flush(self.shared.store.as_ref(), &self.lease));
        let _ = tokio::time::timeout(bound, flush).await;
        let _ = tokio::time::timeout(bound, self.shared.store.release(&self.lease)).await;
        exit
    }

    async fn drive(&mut self) -> Result<Exit, Error> {
        // The first renewal is a third of the lease away. (An interval's immediate first tick
        // would cost up to a timer tick, about 1 ms, of waiting per Operation.)
        let period = self.shared.lease_ttl / 3;
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        // One wait for the shutdown, made once rather than at every turn of the loop.
        let shutdown = self.shared.shutdown.clone();
        let shutting_down = shutdown.cancelled();
        tokio::pin!(shutting_down);
        let interrupt = self.shared.interrupt.clone();
        let interrupted = interrupt.cancelled();
        tokio::pin!(interrupted);
        // Once interrupted, how long the running futures have before they are dropped.
        // Boxed when needed (once interrupted), not kept in every Operation's task.
        let mut dropping: Option<Pin<Box<tokio::time::Sleep>>> = None;
        // An Operation that waited for a place among those running (`queue`) holds a lease that
        // was not renewed meanwhile: renew it before anything runs. Once another executor has
        // claimed it, this is fenced and the Operation is theirs.
        if self.clock.granted().elapsed() >= period {
            if tokio::time::Instant::now() >= self.lease_deadline() {
                return Err(Box::pin(self.lease_expiring()).await);
            }
            let sent = tokio::time::Instant::now();
            let ttl = self.shared.lease_ttl;
            let renewed = Box::pin(tokio::time::timeout_at(
                self.lease_deadline(),
                self.shared.store.renew(&self.lease, ttl),
            ));
            match renewed.await {
                Ok(renewed) => {
                    self.lease = renewed?;
                    self.clock.granted_at(sent);
                }
                Err(_) => return Err(Box::pin(self.lease_expiring()).await),
            }
        }
        // The instant past which the lease may have expired without a renewal: the driver stops
        // before it (see `lease_deadline`).
        let expiring = tokio::time::sleep_until(self.lease_deadline());
        tokio::pin!(expiring);
        let commands = self.commands.clone();
        if let Some(request) = self.cancel_at_start.take() {
            match Box::pin(self.cancel(request.actor, request.reason, request.at_ms)).await {
                Ok(_) | Err(Error::PastPointOfNoReturn { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if self.is_fresh() {
            Box::pin(self.wait_turn(&mut renew, expiring.as_mut())).await?;
        }
        loop {
            let actions = if self.stopping {
                Vec::new()
            } else {
                plan::next_actions(&self.saga, &self.state, &self.flight)
            };
            // Passing the point of no return, and finishing as succeeded, are decided by the
            // store against a pending cancel request (see `commit_barrier`): done here, before
            // anything of the next stage is recorded or logged, and then planned again.
            if let Some(barrier) = self.barrier(&actions) {
                if tokio::time::Instant::now() >= self.lease_deadline() {
                    return Err(Box::pin(self.lease_expiring()).await);
                }
                match Box::pin(self.commit_barrier(barrier)).await? {
                    None if self.state.outcome.is_some() => {
                        if let Some((level, line)) = self.outcome_line.take() {
                            self.log.final_line(level, line);
                        }
                        let outcome = self.state.outcome.clone().unwrap_or(Outcome::Succeeded);
                        return Ok(Exit::Finished(outcome));
                    }
                    None => {}
                    Some(request) => {
                        match Box::pin(self.cancel(request.actor, request.reason, request.at_ms))
                            .await
                        {
                            Ok(_) | Err(Error::PastPointOfNoReturn { .. }) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                continue;
            }
            let mut launch = Vec::new();
            for action in actions {
                match action {
                    Action::Execute(step) => launch.push(self.begin_execute(step)?),
                    Action::Compensate(step) => launch.push(self.begin_compensate(step)?),
                    Action::ScheduleRetry { step, compensation } => {
                        self.schedule_retry(&step, compensation)
                    }
                    Action::Finish(outcome) => self.finish(outcome)?,
                }
            }
            // Write-ahead: every StepStarted/CompensationStarted is durable before its future runs.
            // A store that does not answer before the lease may expire stops the Operation here.
            // Past the deadline nothing is sent at all: another executor may hold the lease.
            // The deadline's timer is the one already armed (`expiring`), not a new one per
            // commit: registering a timer at every step costs more than the commit's CPU here.
            let committed = if tokio::time::Instant::now() < self.lease_deadline() {
                tokio::select! {
                    biased;
                    committed = Box::pin(self.commit()) => Some(committed),
                    _ = &mut expiring => None,
                }
            } else {
                None
            };
            match committed {
                Some(committed) => committed?,
                None => return Err(Box::pin(self.lease_expiring()).await),
            }
            for future in launch {
                self.running.push(future);
            }
            if let Some(outcome) = &self.state.outcome {
                // Durable now: only now may the log say so.
                if let Some((level, line)) = self.outcome_line.take() {
                    self.log.final_line(level, line);
                }
                return Ok(Exit::Finished(outcome.clone()));
            }
            if self.stopping && self.running.is_empty() {
                return Ok(Exit::Stopped);
            }
            if let Some((step, error)) = self.state.attention.clone() {
                if self.running.is_empty() {
                    return Ok(Exit::NeedsAttention { step, error });
                }
            }
            if self.running.is_empty() && self.timers.is_empty() && !self.stopping {
                return Err(Error::IllegalRecord {
                    operation: self.state.id,
                    seq: self.state.next_seq,
                    problem: "nothing is running and nothing is left to do".into(),
                });
            }
            // Fast path: a step that finished on its first poll is handled without parking, while
            // commands and a shutdown are still seen at every step boundary.
            if !self.running.is_empty() {
                if let Some(Some(event)) = self.running.next().now_or_never() {
                    self.on_event(event)?;
                    if let Some(command) = self.commands.try_recv() {
                        Box::pin(self.on_command(command)).await?;
                    }
                    if !self.stopping && shutdown.is_cancelled() {
                        self.begin_stopping();
                    }
                    continue;
                }
            }
            tokio::select! {
                // The lease first: after a pause of the process, nothing else may act before
                // the driver sees that its deadline passed.
                biased;
                _ = &mut expiring => return Err(Box::pin(self.lease_expiring()).await),
                Some(event) = self.running.next(), if !self.running.is_empty() => {
                    self.on_event(event)?;
                }
                Some(event) = self.timers.next(), if !self.timers.is_empty() => {
                    self.on_event(event)?;
                }
                command = commands.recv() => Box::pin(self.on_command(command)).await?,
                _ = &mut shutting_down, if !self.stopping => self.begin_stopping(),
                _ = &mut interrupted, if !self.interrupted => {
                    if !self.stopping {
                        self.begin_stopping();
                    }
                    self.interrupt_steps();
                    let grace = self.saga.longest_cancel_grace();
                    dropping = Some(Box::pin(tokio::time::sleep(grace)));
                }
                _ = async { match dropping.as_mut() { Some(d) => d.await, None => std::future::pending().await } }, if self.interrupted => {
                    for step in &self.flight.running {
                        self.log.line(
                            LogLevel::Warn,
                            Some(step),
                            format!(
                                "{step} did not return within its grace period after the \
                                 shutdown's deadline and was dropped; its outcome is unknown and \
                                 recover() runs it again"
                            ),
                        );
                    }
                    return Ok(Exit::Stopped);
                }
                _ = renew.tick() => {
                    Box::pin(self.renew(&mut renew)).await?;
                    expiring.as_mut().reset(self.lease_deadline());
                }
            }
        }
    }

    /// The record that the next actions must have the store decide against a pending cancel
    /// request before anything else: passing the point of no return (before the first step
    /// after it starts), or the outcome `succeeded`. `None` for any other actions.
    fn barrier(&self, actions: &[Action]) -> Option<RecordKind> {
        let passes = actions
            .iter()
            .any(|a| matches!(a, Action::Execute(step) if self.runs_past_point_of_no_return(step)))
            && !plan::past_point_of_no_return(&self.saga, &self.state);
        if passes {
            let step = self.saga.point_of_no_return().unwrap_or_default().to_owned();
            return Some(RecordKind::PointOfNoReturnPassed { step });
        }
        match actions {
            [Action::Finish(outcome)] => {
                let kind = RecordKind::OperationFinished { outcome: outcome.clone() };
                kind.is_cancel_barrier().then_some(kind)
            }
            _ => None,
        }
    }

    /// Makes the queued records durable with `kind` after them, in one append, unless the
    /// store has a cancel request pending ([`StoreError::CancelPending`]): then the queued
    /// records alone, and returns the request for the caller to answer (roll back, or record
    /// the refusal) before it tries again. A finish sets the outcome's log line, written once
    /// the caller sees the outcome durable.
    async fn commit_barrier(&mut self, kind: RecordKind) -> Result<Option<CancelRequest>, Error> {
        let outcome = match &kind {
            RecordKind::OperationFinished { outcome } => Some(outcome.clone()),
            _ => None,
        };
        let record =
            Record { operation: self.state.id, seq: self.state.next_seq, at_ms: now_ms(), kind };
        // Checked against the fold before it is sent, applied only once it is durable.
        let mut after = self.state.clone();
        after.apply(&record)?;
        self.pending.push(record);
        let deadline = self.lease_deadline();
        match tokio::time::timeout_at(deadline, self.commit()).await {
            Ok(Ok(())) => {
                self.state = after;
                if let Some(outcome) = outcome {
                    self.outcome_line = Some(outcome_line(&outcome));
                    self.log_irreversible(&outcome);
                }
                Ok(None)
            }
            Ok(Err(Error::Store(StoreError::CancelPending { request, .. }))) => {
                self.pending.pop();
                match tokio::time::timeout_at(deadline, self.commit()).await {
                    Ok(committed) => committed?,
                    Err(_) => return Err(Box::pin(self.lease_expiring()).await),
                }
                Ok(Some(*request))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Box::pin(self.lease_expiring()).await),
        }
    }
}
