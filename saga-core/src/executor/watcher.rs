//! The executor's watcher: hands cancel requests recorded in the store to the Operations running
//! here, and takes over unfinished Operations that nobody holds.

use std::collections::HashSet;
use std::sync::Weak;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Executor, Shared};

/// Runs until the executor shuts down or is gone (it holds it weakly, so it never keeps an
/// executor alive on its own).
pub(super) async fn watch(shared: Weak<Shared>, shutdown: CancellationToken) {
    let Some((poll, takeover)) = shared.upgrade().map(|s| (s.cancel_poll, s.takeover_interval))
    else {
        return;
    };
    let mut next_scan = takeover.map(|t| Instant::now() + t);
    let mut delivered = HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
        let Some(shared) = shared.upgrade() else { return };
        let executor = Executor { shared };
        executor.deliver_cancels(&mut delivered).await;
        if let (Some(at), Some(every)) = (next_scan, takeover) {
            if Instant::now() >= at {
                if let Err(e) = executor.recover_unfinished(true).await {
                    tracing::warn!(error = %e, "takeover scan failed; trying again");
                }
                next_scan = Some(Instant::now() + every);
            }
        }
    }
}
