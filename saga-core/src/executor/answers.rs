//! What the executor answers about an Operation, wherever it runs: `cancel`, `status` and
//! `wait`. Every answer comes from the store, or from a driver of this executor that holds the
//! Operation's lease; what this executor remembers of an Operation that stopped here (a halt) is
//! answered only while the store has not moved past it.

use std::time::Duration;

use tokio::sync::oneshot;

use super::driver::{Command, Exit};
use super::{ahead_of, lock, plan, Executor, Trouble};
use crate::error::{Error, Result, StoreError};
use crate::fold::{OperationState, Phase};
use crate::id::{now_ms, OperationId};
use crate::log::Record;
use crate::record::Outcome;
use crate::store::{CancelRecorded, CancelRequest};

/// What [`Executor::cancel`] did, when it did not refuse. A refusal is an error:
/// [`Error::AlreadyFinished`], or [`Error::PastPointOfNoReturn`] (then the refusal is recorded in
/// the Operation's log: `CancelRefused`, with who asked and why, shown by `status`, the log and
/// the report).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelAnswer {
    /// The cancel is recorded in the Operation's log (`CancelRequested`, durable): it rolls
    /// back. It ran here; its running steps' tokens fired. [`Executor::wait`] gives the
    /// outcome.
    RollingBack,
    /// It was rolling back already (a step failed for good, or an earlier cancel): nothing was
    /// recorded.
    AlreadyRollingBack,
    /// It runs on another executor, or on none yet: the request is durable in the store (this
    /// one, or `pending`, made earlier by someone else, which stands for both). The executor
    /// that runs it (or claims it next) answers it: it rolls back, or, if the Operation passed
    /// its point of no return first, records the refusal. Never both, never neither: the store
    /// refuses to let the Operation pass its point of no return, or finish as succeeded, while
    /// a request is pending. [`Executor::status`] shows the request while it is pending
    /// ([`OperationState::pending_cancel`]) and then its answer.
    Requested {
        /// The request pending in the store.
        pending: CancelRequest,
    },
}

impl std::fmt::Display for CancelAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CancelAnswer::RollingBack => f.write_str("cancelled: rolling back"),
            CancelAnswer::AlreadyRollingBack => f.write_str("already rolling back"),
            CancelAnswer::Requested { pending } => write!(
                f,
                "cancel requested (by {}): the executor running the operation answers it",
                pending.actor
            ),
        }
    }
}

impl Executor {
    /// Cancels an Operation, and says what it knows ([`CancelAnswer`]), or why it refused.
    ///
    /// - Running here: once `CancelRequested` is durable it returns
    ///   [`CancelAnswer::RollingBack`]; the running step's cancellation token fires and the
    ///   rollback starts. Past the point of no return it records the refusal (`CancelRefused`)
    ///   and returns [`Error::PastPointOfNoReturn`].
    /// - Running on another executor, or on none (its executor died and nobody recovered it
    ///   yet): once a [`CancelRequest`] is durable in the store it returns
    ///   [`CancelAnswer::Requested`]. The owner sees it at once through the store's wake-ups
    ///   (within its cancel poll interval, 250 ms by default, without them), and an executor
    ///   that claims the Operation later sees it at claim; either rolls back exactly as for a
    ///   local cancel, or records its refusal if the point of no return was passed first. The
    ///   store decides which: passing the point of no return is refused while a request is
    ///   pending. When the log already says the point of no return was passed, the request is
    ///   still recorded (for the owner to record the refusal) and this returns
    ///   [`Error::PastPointOfNoReturn`].
    ///
    /// Cancelling an Operation already rolling back records nothing
    /// ([`CancelAnswer::AlreadyRollingBack`]); cancelling a finished one is
    /// [`Error::AlreadyFinished`]; one that halted here on a store failure answers
    /// [`Error::Halted`] until the store moves past the halt.
    pub async fn cancel(&self, id: OperationId, actor: &str, reason: &str) -> Result<CancelAnswer> {
        let mailbox = lock(&self.shared.running).get(&id).map(|h| h.mailbox.clone());
        if let Some(mailbox) = mailbox {
            let (reply, answer) = oneshot::channel();
            let command = Command::Cancel {
                actor: actor.into(),
                reason: reason.into(),
                requested_ms: now_ms(),
                reply,
            };
            if mailbox.send(command).is_ok() {
                if let Ok(answer) = answer.await {
                    return answer;
                }
            }
        }
        // Not running here (or it ended while we asked): through the store.
        let state = self.status(id).await?;
        if let Some(outcome) = state.outcome {
            return Err(Error::AlreadyFinished { operation: id, outcome: Box::new(outcome) });
        }
        if state.phase() == Phase::RollingBack {
            return Ok(CancelAnswer::AlreadyRollingBack);
        }
        let request = CancelRequest {
            operation: id,
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            at_ms: now_ms(),
        };
        let pending = match self.shared.store.request_cancel(&request).await? {
            CancelRecorded::Recorded => request,
            CancelRecorded::AlreadyPending(earlier) => earlier,
            CancelRecorded::Finished => {
                // It finished between the read and the request.
                let state = self.status(id).await?;
                plan::refuse_cancel(None, &state)?;
                return Err(Error::Store(StoreError::backend(
                    format!("cancelling operation {id}"),
                    "the store says it finished, but its log has no outcome",
                )));
            }
        };
        // Past the point of no return by the log read before the request: the owner records
        // the refusal of the request just made.
        let saga = self.saga(&state.saga, state.version).map(|s| s.as_ref());
        plan::refuse_cancel(saga, &state)?;
        Ok(CancelAnswer::Requested { pending })
    }

    /// The Operation's state, folded from its acknowledged records in the store, with what the
    /// store knows beside them: a pending cancel request, the Operation it waits for in its
    /// resource's queue. For an Operation that halted here on a store failure, that failure
    /// ([`Error::Halted`]) while the store has not moved past the halt (nothing appended since,
    /// no outcome): its records in the store may not be all that happened. Once another
    /// executor resumed or finished it, the store answers.
    pub async fn status(&self, id: OperationId) -> Result<OperationState> {
        let records = self.read_records(id).await?;
        if let Some(trouble @ Trouble::Halted { .. }) = self.trouble(id).await {
            return Err(trouble.error(id));
        }
        let mut state = OperationState::fold(id, &records)?;
        if state.outcome.is_none() {
            state.pending_cancel = self.shared.store.pending_cancel(id).await?.map(Box::new);
            if state.steps.is_empty() && state.cancel.is_none() {
                let queue = self.shared.store.resource_queue(&state.resource).await?;
                state.waiting_for = ahead_of(&queue, id);
            }
        }
        Ok(state)
    }

    /// Waits for the Operation's outcome, wherever it runs (here, on another executor over the
    /// same store, or on none yet), which is durable when it is returned; see
    /// [`Executor::wait_timeout`] for a bound. Follows it through the store's wake-ups (an
    /// Operation that settles elsewhere is answered at once) and by polling where a store has
    /// none or a wake-up is lost. Other answers:
    ///
    /// - [`Error::NeedsAttention`] once it stops to wait for an operator;
    /// - [`Error::Halted`] if it halted here on a store failure and the store has not moved past
    ///   that (an Operation that lost its lease here is followed to wherever it goes on);
    /// - [`Error::Unrecoverable`] if `recover()` here could not resume it, likewise;
    /// - [`Error::ShuttingDown`] once this executor shuts down before the Operation ends.
    pub async fn wait(&self, id: OperationId) -> Result<Outcome> {
        // Registered only once it is not running here: a local driver answers by itself.
        let mut waiting = None;
        let poll = self.wait_poll();
        loop {
            if let Some(answer) = self.local_exit(id).await {
                match answer {
                    Some(answer) => return answer,
                    None => continue,
                }
            }
            let waiting = waiting.get_or_insert_with(|| {
                self.ensure_watching();
                self.shared.waiters.register(id)
            });
            let notified = waiting.notify().notified();
            tokio::pin!(notified);
            // Registered before looking, so that a wake-up in between is not lost.
            notified.as_mut().enable();
            if self.is_running(id) {
                continue;
            }
            if let Some(answer) = self.settled(id).await {
                return answer;
            }
            if self.shared.shutdown.is_cancelled() {
                return Err(Error::ShuttingDown);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(poll) => {}
                _ = self.shared.shutdown.cancelled() => {}
            }
        }
    }

    /// Waits for this executor's driver of the Operation to end, and says how it ended **here**:
    /// its outcome (durable); [`Error::NeedsAttention`]; [`Error::Halted`] with the store's
    /// failure, or with the lease lost ([`Error::LeaseExpiring`], or the store's
    /// [`StoreError::Fenced`]: another executor goes on with it); [`Error::ShuttingDown`] when a
    /// shutdown here stopped it (left for `recover()`). [`Error::NotRunning`] when no driver of
    /// it runs here. For the Operation's verdict wherever it runs, use [`Executor::wait`]; this
    /// is for a worker that reports what it did itself.
    pub async fn wait_here(&self, id: OperationId) -> Result<Outcome> {
        let exit = lock(&self.shared.running).get(&id).map(|h| h.exit.clone());
        let Some(exit) = exit else { return Err(Error::NotRunning(id)) };
        match exit.wait().await {
            Some(Exit::Finished(outcome)) => Ok(outcome),
            Some(Exit::NeedsAttention { step, error }) => {
                Err(Error::NeedsAttention { operation: id, step, error })
            }
            Some(Exit::Halted(cause)) => Err(Error::Halted { operation: id, cause }),
            Some(Exit::Stopped) => Err(Error::ShuttingDown),
            // The driver's task panicked: nothing more is known here.
            None => Err(Error::NotRunning(id)),
        }
    }

    /// Waits for the driver of the Operation here, if one runs it: `None` if none does,
    /// `Some(None)` if it ended without an answer of its own (it lost its lease, the executor
    /// shuts down, it panicked: the store tells the rest), else its answer.
    async fn local_exit(&self, id: OperationId) -> Option<Option<Result<Outcome>>> {
        let exit = lock(&self.shared.running).get(&id).map(|h| h.exit.clone())?;
        Some(match exit.wait().await {
            Some(Exit::Finished(outcome)) => Some(Ok(outcome)),
            Some(Exit::NeedsAttention { step, error }) => {
                Some(Err(Error::NeedsAttention { operation: id, step, error }))
            }
            Some(Exit::Halted(cause)) if !super::driver::is_lost_lease(&cause) => {
                Some(Err(Error::Halted { operation: id, cause }))
            }
            Some(Exit::Halted(_) | Exit::Stopped) | None => None,
        })
    }

    /// [`Executor::wait`] for at most `timeout`: [`Error::WaitTimedOut`] when the Operation has
    /// not settled by then (it goes on wherever it runs).
    pub async fn wait_timeout(&self, id: OperationId, timeout: Duration) -> Result<Outcome> {
        match tokio::time::timeout(timeout, self.wait(id)).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::WaitTimedOut { operation: id, waited: timeout }),
        }
    }

    /// How often a `wait` looks at the store on its own: rarely when the store's wake-ups tell
    /// it of a settled Operation, at the cancel poll interval otherwise.
    fn wait_poll(&self) -> Duration {
        if self.shared.wakes {
            (self.shared.cancel_poll * 4).max(Duration::from_millis(500))
        } else {
            self.shared.cancel_poll
        }
    }

    /// What `wait` answers from the store for an Operation not running here: `None` while it
    /// runs (or waits to) somewhere.
    async fn settled(&self, id: OperationId) -> Option<Result<Outcome>> {
        let records = match self.read_records(id).await {
            Ok(records) => records,
            Err(e) if e.is_transient() => return None,
            Err(e) => return Some(Err(self.trouble_or(id, e))),
        };
        if let Some(trouble) = self.trouble(id).await {
            return Some(Err(trouble.error(id)));
        }
        let state = match OperationState::fold(id, &records) {
            Ok(state) => state,
            Err(e) => return Some(Err(e)),
        };
        if let Some(outcome) = state.outcome {
            return Some(Ok(outcome));
        }
        if let Some((step, error)) = state.attention {
            return Some(Err(Error::NeedsAttention { operation: id, step, error }));
        }
        None
    }

    /// The Operation's records, or [`Error::NotFound`].
    async fn read_records(&self, id: OperationId) -> Result<Vec<Record>> {
        self.shared.store.read(id).await.map_err(|e| match e {
            StoreError::NotFound(id) => Error::NotFound(id),
            other => Error::Store(other),
        })
    }

    /// What this executor remembers of the Operation stopping here (a halt, or a recovery that
    /// could not resume it), while the store has not moved past it: no executor claimed it
    /// since (a later lease epoch). Forgets it once one did.
    pub(super) async fn trouble(&self, id: OperationId) -> Option<Trouble> {
        let trouble = lock(&self.shared.troubled).get(&id).cloned()?;
        // An outcome in the store with no claim since is this executor's own write, which the
        // store did not acknowledge: the halt still stands.
        let claimed_since = match self.shared.store.lease(id).await {
            Ok(lease) => lease.is_some_and(|lease| lease.epoch > trouble.epoch()),
            // Unknown: what stopped it here still stands.
            Err(_) => false,
        };
        if claimed_since {
            lock(&self.shared.troubled).remove(&id);
            return None;
        }
        Some(trouble)
    }

    /// The error of reading an Operation that stopped here: what stopped it, if this executor
    /// remembers, else `e`.
    fn trouble_or(&self, id: OperationId, e: Error) -> Error {
        match lock(&self.shared.troubled).get(&id) {
            Some(trouble) => trouble.error(id),
            None => e,
        }
    }
}
