//! Recovery and the takeover scan: claiming unfinished Operations nobody holds, reading them,
//! and resuming them here.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt as _;

use super::guard::Driving;
use super::{lock, Executor, Trouble};
use crate::error::{Error, Result, StoreError};
use crate::fold::{OperationState, Phase};
use crate::id::OperationId;
use crate::oplog::{LogLevel, LogSink};
use crate::saga::Saga;
use crate::store::CancelRequest;

/// What [`Executor::recover`] did.
#[derive(Debug, Default)]
#[must_use = "the report says which Operations could not be recovered and why"]
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

impl Executor {
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
        for Claimed { saga, state, lease, sent, log, driving } in resume {
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
                Recovered::Ready(Box::new(Claimed { saga, state, lease, sent, log, driving }))
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
    pub(super) async fn next_log_seq(&self, id: OperationId) -> Result<u64> {
        let lines = self.shared.store.read_log(id).await?;
        Ok(lines.last().map_or(0, |l| l.seq + 1))
    }

    /// Reads and folds an Operation for recovery; `None` if it already finished.
    pub(super) async fn prepare(
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
}

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
    Ready(Box<Claimed>),
}

/// An Operation claimed and folded here, by recovery (to resume it) or for an operator's
/// decision (`retry`, `abandon`).
pub(super) struct Claimed {
    pub(super) saga: Arc<Saga>,
    pub(super) state: OperationState,
    pub(super) lease: crate::store::Lease,
    /// When the claim was sent.
    pub(super) sent: tokio::time::Instant,
    pub(super) log: Arc<LogSink>,
    pub(super) driving: Driving,
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
