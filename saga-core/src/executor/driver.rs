//! The driver of one Operation: folds its records, asks the planner what to do, writes the
//! records ahead of every side effect, runs the steps and reacts to their results and to commands.

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

    /// The instant past which this executor no longer acts on its lease: five sixths of the lease
    /// time after it was last granted or renewed. The store's lease runs from the store's own
    /// grant, which comes after the request was sent, so it expires later still: the sixth left
    /// over is the margin for the step tokens to fire and for clocks that run at slightly
    /// different rates, and renewals (every third of the lease) get two tries before it.
    fn lease_deadline(&self) -> tokio::time::Instant {
        self.clock.deadline()
    }

    /// The lease's deadline passed without a renewal: nothing more is sent for the Operation.
    /// While the lease is still surely held (before its [cutoff](LeaseClock::cutoff): the
    /// store did not answer the renewals in time), the running steps' tokens fire and their
    /// futures may run until the cutoff, so that a step watching its token can stop; past it
    /// (the process was paused, and another executor may run the steps already), they are
    /// dropped at once, without another poll. Nothing new starts and nothing more is recorded
    /// (what the steps return is not: the next owner runs them again). Says so in the log
    /// (the lines go to `tracing`, since the store's log may be another executor's now). The
    /// error halts the Operation here; whoever claims it next resumes it from its log.
    async fn lease_expiring(&mut self) -> Error {
        let running: Vec<String> = self.flight.running.iter().cloned().collect();
        let mut futures = std::mem::take(&mut self.running);
        let cutoff = self.clock.cutoff();
        let graced = tokio::time::Instant::now() < cutoff;
        if graced {
            self.cancel.cancel();
            // The futures are fenced themselves (`WithinLease`): none is polled past the cutoff.
            let _ =
                tokio::time::timeout_at(cutoff, async { while futures.next().await.is_some() {} })
                    .await;
        }
        drop(futures);
        self.timers = FuturesUnordered::new();
        self.pending.clear();
        let since = self.clock.granted().elapsed();
        let dropped = match (running.is_empty(), graced) {
            (true, _) => String::new(),
            (false, true) => format!(
                " and dropping {} (their tokens fired; the lease was still held)",
                running.join(", ")
            ),
            (false, false) => format!(
                " and dropping {} at once, without a grace period: the lease may have passed to \
                 another executor",
                running.join(", ")
            ),
        };
        self.log.line(
            LogLevel::Warn,
            None,
            format!(
                "the lease could not be renewed before it expires (last renewed {:.1} s ago); \
                 stopping here{dropped}: another executor may take the Operation over and \
                 resumes it from its log",
                since.as_secs_f64(),
            ),
        );
        Error::LeaseExpiring { operation: self.state.id, since }
    }

    /// The shutdown's deadline passed: fires the running executes' tokens (each has its grace
    /// period to return) and stops recording their failures, which may only say that they were
    /// interrupted. Compensations are not fired: they run on until the grace period ends.
    fn interrupt_steps(&mut self) {
        self.interrupted = true;
        self.cancel.cancel();
        self.log.line(
            LogLevel::Warn,
            None,
            "the shutdown's deadline passed; interrupting the running steps".into(),
        );
    }

    /// Whether nothing of the Operation ran yet, so that it still waits for its resource.
    fn is_fresh(&self) -> bool {
        self.state.steps.is_empty() && self.state.cancel.is_none() && self.state.outcome.is_none()
    }

    /// Waits until the Operation heads its resource's queue (every Operation created earlier on
    /// the same resource finished), saying in the log what it waits for. A cancel ends the wait
    /// (the Operation then rolls back with nothing to undo), and so does a shutdown; the lease
    /// is renewed meanwhile.
    async fn wait_turn(
        &mut self,
        renew: &mut tokio::time::Interval,
        mut expiring: Pin<&mut tokio::time::Sleep>,
    ) -> Result<(), Error> {
        let mut waiting_for = None;
        let commands = self.commands.clone();
        loop {
            let queue = match tokio::time::timeout_at(
                self.lease_deadline(),
                self.shared.store.resource_queue(&self.state.resource),
            )
            .await
            {
                Ok(queue) => queue?,
                Err(_) => return Err(Box::pin(self.lease_expiring()).await),
            };
            let ahead = super::ahead_of(&queue, self.state.id);
            let Some(ahead) = ahead else {
                if waiting_for.is_some() {
                    self.log.line(
                        LogLevel::Info,
                        None,
                        format!("{} is free; starting", self.state.resource),
                    );
                }
                return Ok(());
            };
            if waiting_for != Some(ahead) {
                self.log.line(
                    LogLevel::Info,
                    None,
                    format!("waiting for operation {ahead} on {} to finish", self.state.resource),
                );
                self.log.flush(self.shared.store.as_ref(), &self.lease).await?;
                waiting_for = Some(ahead);
            }
            tokio::select! {
                biased;
                _ = &mut expiring => return Err(Box::pin(self.lease_expiring()).await),
                _ = tokio::time::sleep(self.shared.cancel_poll) => {}
                command = commands.recv() => {
                    Box::pin(self.on_command(command)).await?;
                    if self.state.cancel.is_some() {
                        return Ok(());
                    }
                }
                _ = self.shared.shutdown.cancelled() => {
                    self.begin_stopping();
                    return Ok(());
                }
                _ = renew.tick() => {
                    Box::pin(self.renew(renew)).await?;
                    expiring.as_mut().reset(self.lease_deadline());
                }
            }
        }
    }

    /// Stops starting anything new: running steps and compensations finish and are recorded.
    fn begin_stopping(&mut self) {
        self.stopping = true;
        self.timers.clear();
        self.flight.waiting.clear();
        self.log.line(
            LogLevel::Info,
            None,
            "executor shutting down; stopping at the next step boundary".into(),
        );
    }

    /// Applies a record to the state and queues it for the next commit.
    fn record(&mut self, kind: RecordKind) -> Result<(), Error> {
        let record =
            Record { operation: self.state.id, seq: self.state.next_seq, at_ms: now_ms(), kind };
        self.state.apply(&record)?;
        self.pending.push(record);
        Ok(())
    }

    /// Renews the lease; a transient store error is logged and tried again soon (a twelfth of
    /// the lease later), a lost lease (fenced) or a permanent error halts the Operation. A store
    /// that does not answer before the lease deadline stops the Operation
    /// ([`Driver::lease_expiring`]).
    async fn renew(&mut self, renew: &mut tokio::time::Interval) -> Result<(), Error> {
        let sent = tokio::time::Instant::now();
        if sent >= self.lease_deadline() {
            return Err(Box::pin(self.lease_expiring()).await);
        }
        let renewed = tokio::time::timeout_at(
            self.lease_deadline(),
            self.shared.store.renew(&self.lease, self.shared.lease_ttl),
        )
        .await;
        match renewed {
            Ok(Ok(lease)) => {
                self.lease = lease;
                self.clock.granted_at(sent);
            }
            Ok(Err(e)) if e.is_transient() => {
                self.log.line(
                    LogLevel::Warn,
                    None,
                    format!("lease renewal failed, trying again shortly: {e}"),
                );
                renew.reset_after(self.shared.lease_ttl / 12);
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(Box::pin(self.lease_expiring()).await),
        }
        Ok(())
    }

    /// Hands the log lines to the store, then makes the queued records durable; the records'
    /// durable write covers the lines written before it. A transient store error is retried
    /// with backoff (see [`STORE_RETRY`]), with a log line each time; a permanent one, or a
    /// transient one that outlasts the retries, halts the Operation.
    async fn commit(&mut self) -> Result<(), Error> {
        let mut attempt = 0;
        loop {
            match self.try_commit().await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && attempt + 1 < STORE_RETRY.max_attempts => {
                    attempt += 1;
                    let delay = STORE_RETRY.delay(attempt);
                    self.log.line(
                        LogLevel::Warn,
                        None,
                        format!(
                            "store write failed, retrying in {:.1} s (attempt {} of {}): {e}",
                            delay.as_secs_f64(),
                            attempt + 1,
                            STORE_RETRY.max_attempts
                        ),
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_commit(&mut self) -> Result<(), Error> {
        // Once the lease may have passed to another executor, nothing is sent (the store would
        // refuse the lines and the records anyway: both are fenced).
        if tokio::time::Instant::now() >= self.lease_deadline() {
            return Err(Error::LeaseExpiring {
                operation: self.state.id,
                since: self.clock.granted().elapsed(),
            });
        }
        self.log.flush(self.shared.store.as_ref(), &self.lease).await?;
        if !self.pending.is_empty() {
            match self.shared.store.append(&self.lease, &self.pending).await {
                Ok(()) => {}
                // An earlier attempt that reported a transient failure may have been written
                // after all: the store then expects the record after them.
                Err(crate::store::StoreError::OutOfSequence { expected, .. })
                    if already_stored(self.shared.store.as_ref(), &self.pending, expected)
                        .await? => {}
                Err(e) => return Err(e.into()),
            }
            // Not `clear()`: the buffer would stay allocated while the steps run, a few hundred
            // bytes per Operation in flight.
            self.pending = Vec::new();
        }
        Ok(())
    }

    /// Adds a step's recorded output to the outputs that later contexts see. Copies the map only
    /// when a running step still holds the previous one (a sibling in a parallel stage).
    fn add_output(&mut self, step: &str) {
        if let Some(Execution::Succeeded { output }) = self.state.step(step).map(|s| &s.execution) {
            let output = output.clone();
            Arc::make_mut(&mut self.outputs).insert(step.to_owned(), output);
        }
    }

    fn context(&mut self, step: &str, attempt: u32, cancel: CancellationToken) -> StepContext {
        let stage = self.saga.stage_of(step).unwrap_or(0);
        StepContext {
            operation: self.info.clone(),
            step: Arc::from(step),
            stage,
            attempt,
            outputs: self.outputs.clone(),
            saga: self.saga.clone(),
            cancel,
        }
    }

    fn begin_execute(&mut self, step: String) -> Result<EventFuture, Error> {
        let attempt = self.state.step(&step).map_or(0, |s| s.attempts) + 1;
        let unknown = self.state.step(&step).is_some_and(|s| s.execution == Execution::Running);
        self.record(RecordKind::StepStarted { step: step.clone(), attempt })?;
        self.flight.due.remove(&step);
        self.flight.running.insert(step.clone());
        let note = if unknown { " (its last attempt's outcome was lost in a crash)" } else { "" };
        self.log.line(
            LogLevel::Info,
            Some(&step),
            format!("step {step} started (attempt {attempt}){note}"),
        );
        let ctx = self.context(&step, attempt, self.cancel.child_token());
        let entry = self.saga.entry(&step).ok_or_else(|| self.unknown_step(&step))?;
        let runner = entry.step.clone();
        let timeout = runner.timeout();
        let grace = runner.cancel_grace();
        let span = tracing::info_span!("saga_step", operation = %self.state.id, step = %step, phase = "execute");
        let clock = self.clock.clone();
        Ok(Box::pin(
            async move {
                let run = with_timeout(timeout, unwind(runner.execute(&ctx)));
                tokio::pin!(run);
                let mut run = WithinLease::new(clock, run);
                let result = tokio::select! {
                    biased;
                    result = &mut run => result,
                    // Cancelled: the step sees its token and has its grace period to return.
                    _ = ctx.cancel.cancelled() => match tokio::time::timeout(grace, &mut run).await {
                        Ok(result) => result,
                        Err(_) => Err(StepError::cancelled()),
                    },
                };
                Event::Executed { step, result }
            }
            .instrument(span),
        ))
    }

    fn begin_compensate(&mut self, step: String) -> Result<EventFuture, Error> {
        let s = self.state.step(&step).ok_or_else(|| self.unknown_step(&step))?;
        let attempt = s.compensation_attempts + 1;
        let executed = match &s.execution {
            Execution::Succeeded { output } => ExecutedBytes::Succeeded(output.clone()),
            Execution::Failed { error } | Execution::Retrying { error } => {
                ExecutedBytes::Failed(error.clone())
            }
            Execution::Running => ExecutedBytes::Unknown,
        };
        self.record(RecordKind::CompensationStarted { step: step.clone(), attempt })?;
        self.flight.due.remove(&step);
        self.flight.running.insert(step.clone());
        self.log.line(
            LogLevel::Info,
            Some(&step),
            format!("compensating {step} (attempt {attempt})"),
        );
        // Nothing cancels a compensation: its token is never cancelled.
        let ctx = self.context(&step, attempt, CancellationToken::new());
        let entry = self.saga.entry(&step).ok_or_else(|| self.unknown_step(&step))?;
        let runner = entry.step.clone();
        let timeout = runner.compensation_timeout();
        let clock = self.clock.clone();
        let span = tracing::info_span!("saga_step", operation = %self.state.id, step = %step, phase = "compensate");
        Ok(Box::pin(
            async move {
                let run = with_timeout(timeout, unwind(runner.compensate(&ctx, executed)));
                tokio::pin!(run);
                let result = WithinLease::new(clock, run).await;
                Event::Compensated { step, result }
            }
            .instrument(span),
        ))
    }

    fn unknown_step(&self, step: &str) -> Error {
        Error::UnknownStep {
            operation: self.state.id,
            seq: self.state.next_seq,
            step: step.to_owned(),
            saga: self.saga.name().to_owned(),
            version: self.saga.version(),
        }
    }

    /// Sets a timer for the next attempt of a step (or of its compensation).
    fn schedule_retry(&mut self, step: &str, compensation: bool) {
        let Some(s) = self.state.step(step) else { return };
        let attempts = if compensation { s.compensation_attempts } else { s.attempts };
        let reason = match (&s.execution, &s.compensation) {
            (_, crate::fold::Compensation::Retrying { error }) if compensation => error.clone(),
            (Execution::Retrying { error }, _) => error.clone(),
            _ => "an earlier attempt failed".to_owned(),
        };
        // An execute's policy counts from its start (an operator's retry starts it over).
        let counted =
            if compensation { attempts } else { attempts.saturating_sub(s.policy_start.0) };
        let policy = self.policy(step, compensation);
        let delay = policy.delay(counted);
        self.flight.waiting.insert(step.to_owned());
        let what = if compensation { "compensation of " } else { "" };
        let bound = format!("attempt {} of {}", counted + 1, policy.max_attempts);
        self.log.line(
            LogLevel::Warn,
            Some(step),
            format!(
                "retrying {what}{step} in {:.1} s ({bound}) because: {reason}",
                delay.as_secs_f64()
            ),
        );
        let step = step.to_owned();
        self.timers.push(Box::pin(async move {
            tokio::time::sleep(delay).await;
            Event::RetryDue { step }
        }));
    }

    /// Whether the step runs after the point of no return, so that its failures retry forward.
    fn runs_past_point_of_no_return(&self, step: &str) -> bool {
        self.saga
            .point_of_no_return_stage()
            .is_some_and(|p| self.saga.stage_of(step).is_some_and(|stage| stage > p))
    }

    /// The retry policy of the step's `execute`, or of its `compensate`.
    fn policy(&self, step: &str, compensation: bool) -> crate::RetryPolicy {
        let Some(entry) = self.saga.entry(step) else { return crate::RetryPolicy::default() };
        if compensation {
            entry.step.compensation_retry_policy()
        } else {
            entry.step.retry_policy()
        }
    }

    /// Queues the outcome (one that is no cancel barrier: a rollback's) for the next commit.
    fn finish(&mut self, outcome: Outcome) -> Result<(), Error> {
        self.log_irreversible(&outcome);
        self.outcome_line = Some(outcome_line(&outcome));
        self.record(RecordKind::OperationFinished { outcome })
    }

    /// Says in the log which steps of an incomplete rollback were irreversible.
    fn log_irreversible(&self, outcome: &Outcome) {
        if let Outcome::RollbackIncomplete { not_undone, .. } = outcome {
            for item in not_undone {
                if item.reason == crate::record::NotUndoneReason::Irreversible {
                    self.log.line(
                        LogLevel::Warn,
                        Some(&item.step),
                        format!("{} is irreversible and was not undone", item.step),
                    );
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) -> Result<(), Error> {
        match event {
            Event::RetryDue { step } => {
                self.flight.waiting.remove(&step);
                self.flight.due.insert(step);
            }
            Event::Executed { step, result } => {
                self.flight.running.remove(&step);
                match result {
                    Ok(output) => {
                        self.record(RecordKind::StepSucceeded { step: step.clone(), output })?;
                        self.add_output(&step);
                        self.log.line(
                            LogLevel::Info,
                            Some(&step),
                            format!("step {step} succeeded"),
                        );
                    }
                    Err(error) if self.interrupted => self.log.line(
                        LogLevel::Warn,
                        Some(&step),
                        format!(
                            "step {step} was interrupted by the shutdown ({error}); nothing is \
                             recorded of this attempt and recover() runs it again"
                        ),
                    ),
                    Err(error) => self.on_execute_error(step, error)?,
                }
            }
            Event::Compensated { step, result } => {
                self.flight.running.remove(&step);
                match result {
                    Ok(()) => {
                        self.record(RecordKind::CompensationSucceeded { step: step.clone() })?;
                        self.log.line(LogLevel::Info, Some(&step), format!("compensated {step}"));
                    }
                    Err(error) => {
                        let retry = self.may_retry(&step, &error, true, false);
                        let message = error.to_string();
                        self.record(RecordKind::CompensationFailed {
                            step: step.clone(),
                            error: message.clone(),
                            retryable: retry,
                        })?;
                        if retry {
                            self.log.line(
                                LogLevel::Warn,
                                Some(&step),
                                format!("compensation of {step} failed: {message}"),
                            );
                            self.schedule_retry(&step, true);
                        } else {
                            self.log.line(LogLevel::Error, Some(&step), format!("compensation of {step} failed for good: {message}; its change stays"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn on_execute_error(&mut self, step: String, error: StepError) -> Result<(), Error> {
        let message = error.to_string();
        let forward_only = self.runs_past_point_of_no_return(&step);
        // Past the point of no return every error is retried forward within the step's retry
        // policy; when the policy runs out, the Operation needs attention. A sibling that fails
        // while another step needs attention waits with the Operation.
        let (retry, attention) = match self.state.phase() {
            Phase::Running if forward_only => {
                let allowed = self.may_retry(&step, &error, false, true);
                (true, !allowed)
            }
            Phase::Running => (self.may_retry(&step, &error, false, false), false),
            Phase::NeedsAttention => (true, false),
            Phase::RollingBack | Phase::Finished => (false, false),
        };
        let no_effect = error.has_no_effect();
        self.record(if no_effect {
            RecordKind::StepFailedWithoutEffect {
                step: step.clone(),
                error: message.clone(),
                retryable: retry,
            }
        } else {
            RecordKind::StepFailed { step: step.clone(), error: message.clone(), retryable: retry }
        })?;
        let effect = if no_effect { " (without effect)" } else { "" };
        if attention {
            self.record(RecordKind::AttentionNeeded {
                step: step.clone(),
                error: message.clone(),
            })?;
            self.timers.clear();
            self.flight.waiting.clear();
            self.flight.due.clear();
            self.log.line(
                LogLevel::Error,
                Some(&step),
                format!(
                    "step {step} failed{effect}: {message}; past the point of no return it ran \
                     out of its retry policy, so the operation needs attention: retry the step \
                     or abandon the operation"
                ),
            );
        } else if retry && self.state.phase() == Phase::NeedsAttention {
            self.log.line(
                LogLevel::Warn,
                Some(&step),
                format!("step {step} failed{effect}: {message}; it runs again if the operation is retried"),
            );
        } else if retry {
            let why = if forward_only && !error.is_transient() {
                " (past the point of no return, so forward)"
            } else {
                ""
            };
            self.log.line(
                LogLevel::Warn,
                Some(&step),
                format!("step {step} failed{effect}: {message}{why}"),
            );
            self.schedule_retry(&step, false);
        } else if self.state.cancel.is_some() {
            self.log.line(
                LogLevel::Warn,
                Some(&step),
                format!("step {step} ended{effect}: {message}"),
            );
        } else if self.state.failure.as_ref().is_some_and(|(s, _)| *s == step) {
            let undo =
                if no_effect { " (it changed nothing, so nothing of it is undone)" } else { "" };
            self.log.line(
                LogLevel::Error,
                Some(&step),
                format!("step {step} failed{effect}: {message}; rolling back{undo}"),
            );
            // Running siblings are cancelled the same way as by a cancel (their tokens fire, they
            // have their grace period); siblings waiting for a retry will not run again and are
            // compensated at once. Either way they are compensated in reverse order of when
            // their execute ended, as every started step is.
            self.cancel.cancel();
            self.timers.clear();
            self.flight.waiting.clear();
            self.flight.due.clear();
        } else {
            self.log.line(
                LogLevel::Warn,
                Some(&step),
                format!("step {step} failed{effect}: {message}"),
            );
        }
        Ok(())
    }

    /// Whether the step's policy allows another attempt of its execute (or compensation) after
    /// `error`. Transient errors are retried; so are a compensation's permanent errors (giving
    /// up leaves a change in place, which is worse than one more try) and, with `forward_only`,
    /// an execute's past the point of no return. An execute's policy counts from
    /// [`StepState::policy_start`](crate::state::StepState::policy_start).
    fn may_retry(
        &self,
        step: &str,
        error: &StepError,
        compensation: bool,
        forward_only: bool,
    ) -> bool {
        let Some(s) = self.state.step(step) else { return false };
        let (attempts, first) = if compensation {
            (s.compensation_attempts, s.compensation_first_started_ms)
        } else {
            (s.attempts.saturating_sub(s.policy_start.0), s.policy_start.1)
        };
        let elapsed = Duration::from_millis(now_ms().saturating_sub(first));
        (error.is_transient() || compensation || forward_only)
            && self.policy(step, compensation).allows_another(attempts, elapsed)
    }

    async fn on_command(&mut self, command: Command) -> Result<(), Error> {
        match command {
            Command::Cancel { actor, reason, requested_ms, reply } => {
                match self.cancel(actor, reason, requested_ms).await {
                    // The cancel could not be recorded: the canceller is told why, and the
                    // Operation halts with the same cause.
                    Err(Error::Store(e)) => {
                        let cause = Arc::new(Error::Store(e));
                        let _ = reply.send(Err(Error::Halted {
                            operation: self.state.id,
                            cause: cause.clone(),
                        }));
                        return Err(Error::Halted { operation: self.state.id, cause });
                    }
                    answer => {
                        let _ = reply.send(answer);
                    }
                }
            }
        }
        Ok(())
    }

    /// Answers a cancel, asked here or found in the store: past the point of no return, its
    /// refusal is recorded (`CancelRefused`, which also answers the store's pending request)
    /// and it is refused; while rolling back already, nothing more is recorded (the store's
    /// request, if any, is answered by the rollback's finish); otherwise `CancelRequested` is
    /// recorded (answering the store's request), and once it is durable the running steps'
    /// tokens fire and the rollback starts.
    async fn cancel(
        &mut self,
        actor: String,
        reason: String,
        requested_ms: u64,
    ) -> Result<CancelAnswer, Error> {
        if let Err(refused) = plan::refuse_cancel(Some(&self.saga), &self.state) {
            if let Error::PastPointOfNoReturn { step, .. } = &refused {
                let refusal = format!("past the point of no return (step {step})");
                self.log.line(
                    LogLevel::Warn,
                    None,
                    format!("cancel requested by {actor} ({reason}) refused: {refusal}"),
                );
                self.record(RecordKind::CancelRefused { actor, reason, requested_ms, refusal })?;
                self.commit().await?;
            }
            return Err(refused);
        }
        if self.state.phase() == Phase::RollingBack {
            self.log.line(
                LogLevel::Info,
                None,
                format!("cancel requested by {actor} ({reason}): already rolling back"),
            );
            return Ok(CancelAnswer::AlreadyRollingBack);
        }
        self.record(RecordKind::CancelRequested { actor: actor.clone(), reason: reason.clone() })?;
        self.log.line(
            LogLevel::Warn,
            None,
            format!("cancel requested by {actor}: {reason}; rolling back"),
        );
        self.commit().await?;
        self.cancel.cancel();
        self.timers.clear();
        self.flight.waiting.clear();
        self.flight.due.clear();
        Ok(CancelAnswer::RollingBack)
    }
}

/// The log line that says how the Operation ended, written once the outcome is durable.
fn outcome_line(outcome: &Outcome) -> (LogLevel, String) {
    match outcome {
        Outcome::Succeeded => (LogLevel::Info, "operation succeeded".to_owned()),
        Outcome::RolledBack { cause } => (LogLevel::Warn, format!("rollback succeeded ({cause})")),
        Outcome::RollbackIncomplete { cause, not_undone } => {
            let items: Vec<String> = not_undone.iter().map(|n| n.to_string()).collect();
            (
                LogLevel::Error,
                format!("rollback incomplete ({cause}): could not undo {}", items.join(", ")),
            )
        }
        abandoned @ Outcome::Abandoned { .. } => {
            (LogLevel::Error, format!("operation {abandoned}"))
        }
    }
}

/// How the driver retries a transient store error: ten attempts, about 30 s in all, then it
/// halts the Operation with that error.
const STORE_RETRY: crate::RetryPolicy = crate::RetryPolicy {
    max_attempts: 10,
    initial_delay: Duration::from_millis(50),
    max_delay: Duration::from_secs(8),
    multiplier: 2.0,
    max_elapsed: None,
};

/// Whether the store holds exactly the `pending` records already (an append that failed
/// transiently but was written), given the sequence number the store expects next.
async fn already_stored(
    store: &dyn crate::store::Store,
    pending: &[Record],
    expected: u64,
) -> Result<bool, Error> {
    let Some(first) = pending.first() else { return Ok(true) };
    if expected != first.seq + pending.len() as u64 {
        return Ok(false);
    }
    let stored = store.read(first.operation).await?;
    let from = usize::try_from(first.seq).unwrap_or(usize::MAX);
    Ok(stored.get(from..).is_some_and(|tail| {
        tail.len() == pending.len()
            && tail.iter().zip(pending).all(|(a, b)| a.kind == b.kind && a.seq == b.seq)
    }))
}

/// Runs a step's future, turning a panic into a failed attempt with a permanent error, so that
/// the Operation and the executor go on.
async fn unwind<T>(future: impl Future<Output = Result<T, StepError>>) -> Result<T, StepError> {
    match std::panic::AssertUnwindSafe(future).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            Err(StepError::permanent(format!("step panicked: {message}")))
        }
    }
}

async fn with_timeout<T>(
    timeout: Option<Duration>,
    future: impl Future<Output = Result<T, StepError>>,
) -> Result<T, StepError> {
    match timeout {
        None => future.await,
        Some(limit) => tokio::time::timeout(limit, future).await.unwrap_or_else(|_| {
            Err(StepError::transient(format!("timed out after {:.1} s", limit.as_secs_f64())))
        }),
    }
}

/// Whether the Operation halted because its lease was lost: fenced by the store, or not renewed
/// in time.
fn lost_lease(exit: &Exit) -> bool {
    matches!(exit, Exit::Halted(cause) if is_lost_lease(cause))
}

/// Whether a driver's error says its lease was lost (fenced by the store, or not renewed in
/// time): the Operation is another executor's, or will be, and was not stopped by a failure.
pub(crate) fn is_lost_lease(cause: &Error) -> bool {
    matches!(cause, Error::LeaseExpiring { .. } | Error::Store(StoreError::Fenced { .. }))
}
