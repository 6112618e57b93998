//! `quickstart worker`: an executor that adopts unfinished Operations nobody holds (at start, at
//! every takeover scan, and at once when the store wakes it) and prints each one's end, until
//! interrupted or, with `--until-idle`, until nothing is left unfinished.
//!
//! The executor claims Operations on its own; the worker learns which through
//! [`Claims`](crate::claims::Claims), a store that passes every call through and tells of each
//! lease granted to this executor.

use std::time::Duration;

use saga_core::log::{FollowEvent, LogLevel};
use saga_core::{Error, Executor, OperationId, Outcome};
use tokio::sync::mpsc;

use crate::{complain, resume_report, SHUTDOWN_DEADLINE};

/// How often the worker looks for claimable Operations on its own (the store's wake-ups come on
/// top), and, with `--until-idle`, whether anything is left unfinished.
pub(crate) const TAKEOVER_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the worker until a signal (or, with `until_idle`, until the store has nothing
/// unfinished). True if every Operation that ended here succeeded.
pub(crate) async fn run(
    executor: &Executor,
    mut claimed: mpsc::UnboundedReceiver<OperationId>,
    owner: &str,
    until_idle: bool,
) -> Result<bool, Box<dyn std::error::Error>> {
    let mut all_succeeded = resume_report(&executor.recover().await?);
    say!("worker {owner} adopting operations (Ctrl-C to stop)");
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<bool>();
    let mut running = 0usize;
    let mut tick = tokio::time::interval(TAKEOVER_INTERVAL);
    let signal = interrupted();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            Some(id) = claimed.recv() => {
                running += 1;
                let (executor, ended_tx) = (executor.clone(), ended_tx.clone());
                tokio::spawn(async move {
                    let _ = ended_tx.send(watch_one(&executor, id).await);
                });
            }
            Some(succeeded) = ended.recv() => {
                running -= 1;
                all_succeeded &= succeeded;
                if until_idle && running == 0 && idle(executor).await {
                    break;
                }
            }
            _ = tick.tick() => {
                if until_idle && running == 0 && idle(executor).await {
                    break;
                }
            }
            name = &mut signal => {
                say!("worker {owner}: {name}; stopping at the next step boundaries");
                break;
            }
        }
    }
    if until_idle && running == 0 {
        say!("worker {owner}: nothing left unfinished; stopping");
    }
    let report = executor.shutdown(SHUTDOWN_DEADLINE).await;
    // The Operations that ended just before the signal still print their ends: their watchers
    // answer at once now that nothing runs here.
    while running > 0 {
        match tokio::time::timeout(Duration::from_secs(5), ended.recv()).await {
            Ok(Some(succeeded)) => {
                running -= 1;
                all_succeeded &= succeeded;
            }
            _ => break,
        }
    }
    for id in &report.left {
        say!("operation {id}: left unfinished here; another worker or a later run resumes it");
    }
    Ok(all_succeeded)
}

/// Waits for the end of an Operation that this executor just claimed, printing the warnings
/// and errors of its log written since (a cancel, a retry, a lease that could not be renewed)
/// as they come, then its end. True unless it ended here without succeeding.
async fn watch_one(executor: &Executor, id: OperationId) -> bool {
    let since_ms = saga_core::Timestamp::now().unix_ms();
    // A claim comes before the Operation runs here (it is read and folded first), and a claim
    // may also end in nothing to run (it finished meanwhile).
    let claimed_at = tokio::time::Instant::now();
    let ended = loop {
        if executor.is_running(id) {
            let follow = async {
                if let Ok(mut follower) = executor.follow(id).await {
                    while let Some(event) = follower.next().await {
                        match event {
                            FollowEvent::Line(line)
                                if line.at_ms >= since_ms
                                    && matches!(line.level, LogLevel::Warn | LogLevel::Error) =>
                            {
                                say!("operation {id}: {line}")
                            }
                            FollowEvent::Line(_) => {}
                            FollowEvent::Missed(n) => say!(
                                "operation {id}: ({n} lines skipped; see `quickstart log {id}`)"
                            ),
                        }
                    }
                }
            };
            // How it ended here (another executor may go on with it: its verdict is theirs),
            // asked while it still runs: once its driver is gone, nothing here knows.
            let (_, ended) = tokio::join!(follow, executor.wait_here(id));
            match ended {
                // It ended between the look and the ask: the store tells how.
                Err(Error::NotRunning(_)) => {
                    break executor.wait_timeout(id, Duration::from_secs(1)).await;
                }
                other => break other,
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        if claimed_at.elapsed() > Duration::from_secs(2) {
            // Never ran here (it finished or needs attention): the store's answer, now.
            match executor.wait_timeout(id, Duration::from_secs(1)).await {
                Err(Error::WaitTimedOut { .. })
                    if claimed_at.elapsed() < Duration::from_secs(60) => {}
                other => break other,
            }
        }
    };
    match ended {
        Ok(outcome) => {
            say!("operation {id}: {outcome}");
            outcome == Outcome::Succeeded
        }
        // Stopped by the shutdown: the shutdown report says so.
        Err(Error::NotRunning(_)) | Err(Error::ShuttingDown) | Err(Error::WaitTimedOut { .. }) => {
            true
        }
        Err(e) => {
            say!("{e}");
            false
        }
    }
}

/// Whether the store has no unfinished Operation left.
async fn idle(executor: &Executor) -> bool {
    match executor.store().list_unfinished().await {
        Ok(listing) => listing.ids.is_empty() && listing.damaged.is_empty(),
        Err(e) => {
            complain(format_args!("cannot list the unfinished operations: {e}"));
            false
        }
    }
}

/// Resolves at SIGINT or SIGTERM, with the signal's name.
async fn interrupted() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupted",
                _ = term.recv() => "terminated",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "interrupted"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "interrupted"
    }
}
