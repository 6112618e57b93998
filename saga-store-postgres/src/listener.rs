//! Notifications: a dedicated connection that `LISTEN`s to cancel requests ([`CHANNEL`]) and
//! wake-ups ([`WAKE_CHANNEL`]: an Operation submitted or released) and reconnects, feeding a
//! broadcast channel of cancelled ids and the executor's wake-up signal.

use std::time::Duration;

use futures::StreamExt;
use saga_core::OperationId;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Config, NoTls};

use crate::cancels::CHANNEL;
use crate::retry::backoff;

/// The channel notified when an Operation becomes claimable at once: created without a live
/// lease (`Executor::submit`) or released.
pub(crate) const WAKE_CHANNEL: &str = "saga_wake";

/// How many notifications a slow receiver may fall behind before it sees `Lagged`.
const CAPACITY: usize = 1024;

/// The listening task and its channel.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) sender: broadcast::Sender<OperationId>,
    /// Changes at every notification of either channel (and at every reconnection, since
    /// notifications may have been missed meanwhile).
    pub(crate) wake: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Listener {
    /// Starts listening with `config` (the store's sessions' settings).
    pub(crate) fn start(config: Config, runtime: &tokio::runtime::Handle) -> Listener {
        let (sender, _) = broadcast::channel(CAPACITY);
        let (wake, _) = watch::channel(0);
        let task = runtime.spawn(listen(config, sender.clone(), wake.clone()));
        Listener { sender, wake, task }
    }

    pub(crate) fn stop(self) {
        self.task.abort();
    }
}

/// Connects, `LISTEN`s and forwards every notification whose payload is an id, for ever;
/// after a lost connection, connects again with backoff.
async fn listen(config: Config, sender: broadcast::Sender<OperationId>, wake: watch::Sender<u64>) {
    let mut failures = 0;
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (messages, mut forwarded) = futures::channel::mpsc::unbounded();
                let messages = messages;
                let driver = tokio::spawn(async move {
                    let mut stream =
                        futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = stream.next().await {
                        match message {
                            Ok(m) => {
                                if messages.unbounded_send(m).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "the cancel notification connection ended");
                                return;
                            }
                        }
                    }
                });
                match client
                    .batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {WAKE_CHANNEL}"))
                    .await
                {
                    Ok(()) => {
                        failures = 0;
                        // What was notified while not listening is unknown: look now.
                        wake.send_modify(|n| *n = n.wrapping_add(1));
                        while let Some(message) = forwarded.next().await {
                            if let AsyncMessage::Notification(n) = message {
                                if n.channel() == CHANNEL {
                                    if let Ok(id) = n.payload().parse::<OperationId>() {
                                        // No receiver now is fine: nobody is waiting.
                                        let _ = sender.send(id);
                                    }
                                }
                                wake.send_modify(|n| *n = n.wrapping_add(1));
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "LISTEN {CHANNEL} failed"),
                }
                driver.abort();
            }
            Err(e) => tracing::debug!(error = %e, "cannot connect for cancel notifications"),
        }
        tokio::time::sleep(backoff(failures).max(Duration::from_millis(100))).await;
        failures = (failures + 1).min(6);
    }
}

impl crate::PostgresStore {
    /// Notifications of cancel requests: the id of each Operation whose
    /// [`request_cancel`](saga_core::store::Store::request_cancel) was recorded by any executor
    /// on this database, as it commits (PostgreSQL `LISTEN saga_cancel`), so that its owner can
    /// act at once rather than at its next poll of
    /// [`cancel_requests`](saga_core::store::Store::cancel_requests).
    ///
    /// A hint, not the record: the request itself is what `cancel_requests` lists. The first
    /// call starts a task (in the runtime `connect` ran in) with a connection of its own that
    /// listens, and connects again after it is lost; notifications sent while it is not
    /// connected, or before the first call, are not seen, and a receiver that falls more than
    /// 1024 behind gets [`RecvError::Lagged`](tokio::sync::broadcast::error::RecvError::Lagged).
    /// Either way, polling `cancel_requests` (as the executor does every 250 ms) finds the
    /// request. Stores in other schemas of the same database share the channel: an id may be
    /// of an Operation this store does not have.
    pub fn cancel_notifications(&self) -> broadcast::Receiver<OperationId> {
        self.with_listener(|l| l.sender.subscribe())
    }

    /// The wake-up signal of [`Store::wake_ups`](saga_core::store::Store::wake_ups): changes at
    /// every cancel request, submitted Operation and released lease notified on this database,
    /// and when the listening connection (re)connects. Starts the listener as
    /// [`PostgresStore::cancel_notifications`] does.
    pub(crate) fn wake_signal(&self) -> watch::Receiver<u64> {
        self.with_listener(|l| l.wake.subscribe())
    }

    fn with_listener<T>(&self, f: impl FnOnce(&Listener) -> T) -> T {
        let mut listener = self.inner.listener.lock().unwrap_or_else(|p| p.into_inner());
        f(listener
            .get_or_insert_with(|| Listener::start(self.inner.config.clone(), &self.inner.runtime)))
    }
}
