//! An operator's decisions on an Operation that needs attention: retry its step, or abandon it.

use super::guard::Driving;
use super::recovery::Claimed;
use super::{lock, Executor};
use crate::error::{Error, Result, StoreError};
use crate::fold::{OperationState, Phase};
use crate::id::{now_ms, OperationId};
use crate::oplog::LogLevel;
use crate::record::{Outcome, Record, RecordKind};

impl Executor {
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

/// How many cancel requests `abandon` refuses before it gives up (each refusal answers one; a
/// new one may come while it writes).
const ABANDON_TRIES: usize = 8;
