//! The executor's watcher: hands cancel requests recorded in the store to the Operations running
//! here, and takes over unfinished Operations that nobody holds.

use std::collections::HashSet;
use std::sync::Weak;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Executor, Shared};

/// Runs until the executor shuts down or is gone (it holds it weakly, so it never keeps an
/// executor alive on its own). Looks every cancel poll interval, and at once when woken by a
/// submit here or by the store's wake-ups ([`crate::store::Store::wake_ups`]).
pub(super) async fn watch(shared: Weak<Shared>, shutdown: CancellationToken) {
    let Some((poll, takeover, scan_now, mut wake_ups)) = shared
        .upgrade()
        .map(|s| (s.cancel_poll, s.takeover_interval, s.scan_now.clone(), s.store.wake_ups()))
    else {
        return;
    };
    let mut next_scan = takeover.map(|t| Instant::now() + t);
    let mut delivered = HashSet::new();
    loop {
        let woken = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(poll) => false,
            _ = scan_now.notified() => true,
            _ = changed(&mut wake_ups) => true,
        };
        let Some(shared) = shared.upgrade() else { return };
        let executor = Executor { shared };
        executor.deliver_cancels(&mut delivered).await;
        if let (Some(at), Some(every)) = (next_scan, takeover) {
            if woken || Instant::now() >= at {
                if let Err(e) = executor.recover_unfinished(true).await {
                    tracing::warn!(error = %e, "takeover scan failed; trying again");
                }
                next_scan = Some(Instant::now() + every);
            }
        }
    }
}

/// Waits for the next change of the store's wake-up signal; for ever if there is none (or its
/// sender is gone: the polls go on).
async fn changed(wake_ups: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    match wake_ups {
        Some(rx) => {
            if rx.changed().await.is_err() {
                *wake_ups = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
