//! The executor's watcher: hands cancel requests recorded in the store to the Operations running
//! here, takes over unfinished Operations that nobody holds, and tells `wait`ers here that the
//! Operation they wait for settled elsewhere.

use std::collections::HashSet;
use std::sync::Weak;

use tokio::sync::broadcast::{self, error::TryRecvError};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::driver::Command;
use super::{lock, Executor, Shared};
use crate::id::OperationId;
use crate::store::WakeUp;

/// What a batch of wake-ups asks the watcher to do.
#[derive(Debug, Default)]
struct Work {
    /// Look for every cancel request and claimable Operation, and wake every waiter.
    everything: bool,
    /// Look for claimable Operations now (a submit here).
    scan: bool,
    /// Operations that may be claimed at once.
    claimable: Vec<OperationId>,
    /// Operations with a new cancel request.
    cancels: Vec<OperationId>,
}

impl Work {
    fn add(&mut self, wake_up: WakeUp, shared: &Shared) {
        match wake_up {
            WakeUp::Claimable(id) => self.claimable.push(id),
            WakeUp::CancelRequested(id) => self.cancels.push(id),
            WakeUp::Settled(id) => shared.waiters.wake(id),
            WakeUp::Missed => self.everything = true,
        }
    }
}

/// Runs until the executor shuts down or is gone (it holds it weakly, so it never keeps an
/// executor alive on its own). Looks every cancel poll interval, and at once when woken by a
/// submit here or by the store's wake-ups ([`crate::store::Store::wake_ups`]): a claimable
/// Operation is claimed (with takeover on), a cancel request is handed to its Operation's
/// driver, a settled Operation's waiters look at the store again. The wake-ups that arrived
/// together are handled together.
pub(super) async fn watch(
    shared: Weak<Shared>,
    shutdown: CancellationToken,
    mut wake_ups: Option<broadcast::Receiver<WakeUp>>,
) {
    let Some((poll, takeover, scan_now)) =
        shared.upgrade().map(|s| (s.cancel_poll, s.takeover_interval, s.scan_now.clone()))
    else {
        return;
    };
    let mut next_scan = takeover.map(|t| Instant::now() + t);
    let mut delivered = HashSet::new();
    loop {
        let mut work = Work::default();
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(poll) => None,
            _ = scan_now.notified() => {
                work.scan = true;
                None
            }
            wake_up = next(&mut wake_ups) => Some(wake_up),
        };
        let Some(shared) = shared.upgrade() else { return };
        if let Some(wake_up) = first {
            work.add(wake_up, &shared);
            for wake_up in ready(&mut wake_ups) {
                work.add(wake_up, &shared);
            }
        }
        if work.everything {
            shared.waiters.wake_all();
        }
        let executor = Executor { shared };
        // The cancel requests: all of them at every poll and after a miss; only the new ones
        // when the store said which.
        let polled = first.is_none() && !work.scan;
        if polled || work.everything {
            executor.deliver_cancels(&mut delivered, None).await;
        } else if !work.cancels.is_empty() {
            executor.deliver_cancels(&mut delivered, Some(&work.cancels)).await;
        }
        let Some(every) = takeover else { continue };
        let due = next_scan.is_some_and(|at| Instant::now() >= at);
        if due || work.everything || work.scan {
            if let Err(e) = executor.recover_unfinished(true, None).await {
                tracing::warn!(error = %e, "takeover scan failed; trying again");
            }
            next_scan = Some(Instant::now() + every);
        } else if !work.claimable.is_empty() {
            work.claimable.sort_unstable();
            work.claimable.dedup();
            if let Err(e) = executor.recover_unfinished(true, Some(work.claimable)).await {
                tracing::warn!(error = %e, "claiming a released or submitted operation failed");
            }
        }
    }
}

/// The next wake-up of the store; a receiver that fell behind is told it missed some. Waits for
/// ever if the store has none (or its sender is gone: the polls go on).
async fn next(wake_ups: &mut Option<broadcast::Receiver<WakeUp>>) -> WakeUp {
    let Some(rx) = wake_ups else { return std::future::pending().await };
    match rx.recv().await {
        Ok(wake_up) => wake_up,
        Err(broadcast::error::RecvError::Lagged(_)) => WakeUp::Missed,
        Err(broadcast::error::RecvError::Closed) => {
            *wake_ups = None;
            std::future::pending().await
        }
    }
}

/// The wake-ups already waiting, without waiting for more.
fn ready(wake_ups: &mut Option<broadcast::Receiver<WakeUp>>) -> Vec<WakeUp> {
    let mut out = Vec::new();
    let Some(rx) = wake_ups else { return out };
    loop {
        match rx.try_recv() {
            Ok(wake_up) => out.push(wake_up),
            Err(TryRecvError::Lagged(_)) => out.push(WakeUp::Missed),
            Err(TryRecvError::Empty | TryRecvError::Closed) => return out,
        }
    }
}

impl Executor {
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
}
