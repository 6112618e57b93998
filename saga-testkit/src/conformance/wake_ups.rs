//! Wake-ups: what a store tells the executors over it, as it commits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_core::log::RecordKind;
use saga_core::store::{CancelRequest, Store, WakeUp};
use saga_core::OperationId;
use tokio::sync::broadcast::{self, error::RecvError};

use super::{created, finished, record, started, Ctx, LONG};

/// How long a wake-up may take to arrive (a shared store sends it through the network).
const ARRIVAL: Duration = Duration::from_secs(5);

/// A store with wake-ups ([`Store::wake_ups`] is `Some`) tells every receiver
/// [`WakeUp::Claimable`] for an Operation created without a live lease (a zero ttl, as
/// `Executor::submit` creates) and for one whose lease is released while unfinished (not for
/// one released after it finished), [`WakeUp::CancelRequested`] when a request is recorded, and
/// [`WakeUp::Settled`] when an append finishes an Operation or asks for attention; each within
/// 5 s. A store without wake-ups passes. A store that connects its listener lazily may miss what
/// happens before it listens: the check first waits until a submitted Operation is told.
pub async fn wake_ups<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("wake_ups", store)
        .run(|cx| async move {
            let Some(mut rx) = cx.store.wake_ups() else { return };
            // Until the store listens: submit until one is told.
            let started_at = Instant::now();
            loop {
                let id = OperationId::new();
                let record = created(id, "prod", saga_core::Timestamp::now().unix_ms());
                cx.ok("submitting", cx.store.create(&record, "x", Duration::ZERO).await);
                if told(&mut rx, WakeUp::Claimable(id), Duration::from_millis(300)).await {
                    break;
                }
                if started_at.elapsed() > Duration::from_secs(20) {
                    cx.fail("no Claimable wake-up for a submitted Operation within 20 s");
                }
            }
            let (a, la, _) = cx.create("prod", saga_core::Timestamp::now().unix_ms(), "x").await;
            let request =
                CancelRequest { operation: a, actor: "amy".into(), reason: "r".into(), at_ms: 1 };
            cx.ok("requesting a cancel", cx.store.request_cancel(&request).await);
            if !told(&mut rx, WakeUp::CancelRequested(a), ARRIVAL).await {
                cx.fail("no CancelRequested wake-up for a recorded request");
            }
            cx.ok("releasing a", cx.store.release(&la).await);
            if !told(&mut rx, WakeUp::Claimable(a), ARRIVAL).await {
                cx.fail("no Claimable wake-up for an Operation released unfinished");
            }
            let la = cx.ok("claiming a", cx.store.claim(a, "y", LONG).await);
            let attention =
                RecordKind::AttentionNeeded { step: "step-1".into(), error: "e".into() };
            let batch = [started(a, 1), record(a, 2, attention)];
            cx.ok("asking for attention", cx.store.append(&la, &batch).await);
            if !told(&mut rx, WakeUp::Settled(a), ARRIVAL).await {
                cx.fail("no Settled wake-up for an Operation that needs attention");
            }
            let (b, lb, _) = cx.create("prod", saga_core::Timestamp::now().unix_ms(), "x").await;
            cx.ok("finishing b", cx.store.append(&lb, &[finished(b, 1)]).await);
            if !told(&mut rx, WakeUp::Settled(b), ARRIVAL).await {
                cx.fail("no Settled wake-up for a finished Operation");
            }
            cx.ok("releasing finished b", cx.store.release(&lb).await);
            // Told of something later, to be sure that nothing of b came in between.
            let (c, _, _) = cx.create("prod", saga_core::Timestamp::now().unix_ms(), "x").await;
            let request =
                CancelRequest { operation: c, actor: "cal".into(), reason: "r".into(), at_ms: 1 };
            cx.ok("requesting a cancel of c", cx.store.request_cancel(&request).await);
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + ARRIVAL;
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Ok(WakeUp::CancelRequested(id))) if id == c => break,
                    Ok(Ok(other)) => seen.push(other),
                    Ok(Err(RecvError::Lagged(_))) => seen.push(WakeUp::Missed),
                    Ok(Err(RecvError::Closed)) | Err(_) => {
                        cx.fail("no CancelRequested wake-up for c")
                    }
                }
            }
            if seen.contains(&WakeUp::Claimable(b)) {
                cx.fail("a release of a finished Operation was told as Claimable");
            }
        })
        .await;
}

/// Whether `expected` arrives within `within` (other wake-ups are passed over).
async fn told(rx: &mut broadcast::Receiver<WakeUp>, expected: WakeUp, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(wake_up)) if wake_up == expected => return true,
            Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => {}
            Ok(Err(RecvError::Closed)) | Err(_) => return false,
        }
    }
}
