//! Notifications: a task that `LISTEN`s on a connection of its own to the channels of cancel
//! requests ([`CHANNEL`]) and wake-ups ([`WAKE_CHANNEL`]), connects again after it is lost, and
//! feeds the receivers of [`PostgresStore::cancel_notifications`](crate::PostgresStore::cancel_notifications)
//! and of [`Store::wake_ups`](saga_core::store::Store::wake_ups).
//!
//! # Payloads
//!
//! | channel | payload | sent | wake-up |
//! |---|---|---|---|
//! | `saga_cancel` | `<id>` | by `request_cancel`, when it records a request | `CancelRequested(id)` |
//! | `saga_wake` | `claimable <id>` | by `create` with a zero ttl (`Executor::submit`), by `release` of an unfinished Operation | `Claimable(id)` |
//! | `saga_wake` | `settled <id>` | by an append that finishes an Operation or records `AttentionNeeded`, only when it writes | `Settled(id)` |
//!
//! `<id>` is the Operation id's text form. Each is sent with `pg_notify` in the transaction that
//! makes the change, so it is delivered at commit, and never for a change that rolled back. A
//! bare `<id>` on `saga_wake` (what releases before `claimable`/`settled` sent) is read as
//! `claimable`. Any other payload is ignored (logged at debug level): a newer release may send
//! more. Stores in other schemas of the same database share the channels, so an id may be of an
//! Operation this store does not have; its receivers look and find nothing.
//!
//! Every (re)connection of the listening connection sends [`WakeUp::Missed`]: notifications
//! sent while it was not listening are lost.

use futures::StreamExt;
use saga_core::store::{WakeUp, WAKE_UP_CAPACITY};
use saga_core::OperationId;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Config};

use crate::cancels::CHANNEL;
use crate::retry::Backoff;
use crate::tls::{self, Connector};

/// The channel of wake-ups other than cancel requests: an Operation that became claimable at
/// once, or that settled (see the module docs for the payloads).
pub(crate) const WAKE_CHANNEL: &str = "saga_wake";

/// How many cancel notifications a slow receiver may fall behind before it sees `Lagged`.
const CAPACITY: usize = 1024;

/// The `saga_wake` payload of an Operation that may be claimed at once.
pub(crate) fn claimable(id: &str) -> String {
    format!("claimable {id}")
}

/// The `saga_wake` payload of an Operation that finished or needs attention.
pub(crate) fn settled(id: &str) -> String {
    format!("settled {id}")
}

/// The wake-up a notification tells, if it is one this release knows.
pub(crate) fn parse(channel: &str, payload: &str) -> Option<WakeUp> {
    let id = |text: &str| text.trim().parse::<OperationId>().ok();
    if channel == CHANNEL {
        return id(payload).map(WakeUp::CancelRequested);
    }
    if channel != WAKE_CHANNEL {
        return None;
    }
    match payload.split_once(' ') {
        Some(("claimable", rest)) => id(rest).map(WakeUp::Claimable),
        Some(("settled", rest)) => id(rest).map(WakeUp::Settled),
        Some(_) => None,
        // Releases before these payloads sent the bare id, for a claimable Operation.
        None => id(payload).map(WakeUp::Claimable),
    }
}

/// The listening task and its channels.
#[derive(Debug)]
pub(crate) struct Listener {
    /// The ids of cancel requests ([`crate::PostgresStore::cancel_notifications`]).
    pub(crate) cancels: broadcast::Sender<OperationId>,
    /// Every wake-up, and [`WakeUp::Missed`] at every (re)connection.
    pub(crate) wake: broadcast::Sender<WakeUp>,
    task: JoinHandle<()>,
}

impl Listener {
    /// Starts listening with `config` (the store's sessions' settings) and the store's TLS.
    pub(crate) fn start(
        config: Config,
        tls: Connector,
        runtime: &tokio::runtime::Handle,
    ) -> Listener {
        let (cancels, _) = broadcast::channel(CAPACITY);
        let (wake, _) = broadcast::channel(WAKE_UP_CAPACITY);
        let task = runtime.spawn(listen(config, tls, cancels.clone(), wake.clone()));
        Listener { cancels, wake, task }
    }

    pub(crate) fn stop(self) {
        self.task.abort();
    }
}

/// Connects, `LISTEN`s and forwards every notification it can read, for ever; after a lost
/// connection, connects again with backoff. No receiver at a send is fine: nobody is waiting.
async fn listen(
    config: Config,
    tls: Connector,
    cancels: broadcast::Sender<OperationId>,
    wake: broadcast::Sender<WakeUp>,
) {
    let mut backoff = Backoff::reconnects();
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                let (messages, mut forwarded) = futures::channel::mpsc::unbounded();
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
                                tracing::debug!(error = %e, "the notification connection ended");
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
                        backoff.reset();
                        // What was notified while not listening is unknown: look now.
                        let _ = wake.send(WakeUp::Missed);
                        while let Some(message) = forwarded.next().await {
                            let AsyncMessage::Notification(n) = message else { continue };
                            match parse(n.channel(), n.payload()) {
                                Some(wake_up) => {
                                    if let WakeUp::CancelRequested(id) = wake_up {
                                        let _ = cancels.send(id);
                                    }
                                    let _ = wake.send(wake_up);
                                }
                                None => tracing::debug!(
                                    channel = n.channel(),
                                    payload = n.payload(),
                                    "an unknown notification is ignored"
                                ),
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "LISTEN failed"),
                }
                driver.abort();
            }
            Err(e) => {
                // A TLS check that fails stays failed: say so where operators look.
                let e = tls::connect_error(
                    "connecting to listen for notifications",
                    &config,
                    tls.mode(),
                    e,
                );
                if e.is_transient() {
                    tracing::debug!(error = %e, "cannot connect to listen for notifications");
                } else {
                    tracing::warn!(error = %e, "cannot connect to listen for notifications");
                }
            }
        }
        backoff.pause().await;
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
        self.with_listener(|l| l.cancels.subscribe())
    }

    /// A receiver of [`Store::wake_ups`](saga_core::store::Store::wake_ups): every wake-up
    /// notified on this database (see the [module docs](self) for the payloads), and
    /// [`WakeUp::Missed`] when the listening connection (re)connects. Starts the listener as
    /// [`PostgresStore::cancel_notifications`] does.
    pub(crate) fn wake_up_receiver(&self) -> broadcast::Receiver<WakeUp> {
        self.with_listener(|l| l.wake.subscribe())
    }

    fn with_listener<T>(&self, f: impl FnOnce(&Listener) -> T) -> T {
        let mut listener = self.inner.listener.lock().unwrap_or_else(|p| p.into_inner());
        f(listener.get_or_insert_with(|| {
            Listener::start(self.inner.config.clone(), self.inner.tls.clone(), &self.inner.runtime)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_defensively() {
        let id = OperationId::new();
        let text = id.to_string();
        assert_eq!(parse(CHANNEL, &text), Some(WakeUp::CancelRequested(id)));
        assert_eq!(parse(WAKE_CHANNEL, &claimable(&text)), Some(WakeUp::Claimable(id)));
        assert_eq!(parse(WAKE_CHANNEL, &settled(&text)), Some(WakeUp::Settled(id)));
        assert_eq!(parse(WAKE_CHANNEL, &text), Some(WakeUp::Claimable(id)), "an older release");
        for bad in ["", " ", "settled", "settled ", "settled x", "finished 1", "claimable  "] {
            assert_eq!(parse(WAKE_CHANNEL, bad), None, "{bad:?}");
        }
        assert_eq!(parse(CHANNEL, &settled(&text)), None);
        assert_eq!(parse("elsewhere", &text), None);
    }
}
