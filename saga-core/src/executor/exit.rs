//! Where a driver's task leaves how it ended, for `wait` and `wait_here`.

use std::sync::Arc;

use super::driver::Exit;

/// Where a driver's task leaves how it ended, once, for whoever waits (`wait()`). Smaller than
/// a `watch` channel (whose eight notifiers cost about 300 bytes per Operation in flight).
#[derive(Default)]
pub(super) struct ExitCell {
    /// `None` inside: the task ended without saying (it panicked).
    value: std::sync::OnceLock<Option<Exit>>,
    notify: tokio::sync::Notify,
}

impl ExitCell {
    pub(super) fn set(&self, exit: Option<Exit>) {
        let _ = self.value.set(exit);
        self.notify.notify_waiters();
    }

    /// How the task ended, once it has; `None` if it ended without saying.
    pub(super) async fn wait(&self) -> Option<Exit> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the value is read, so that a `set` in between still wakes it.
            notified.as_mut().enable();
            if let Some(exit) = self.value.get() {
                return exit.clone();
            }
            notified.await;
        }
    }
}

/// Sets the cell when dropped without having sent: a task that panicked still answers its
/// waiters.
pub(super) struct ExitSender(pub(super) Arc<ExitCell>);

impl ExitSender {
    pub(super) fn send(self, exit: Exit) {
        self.0.set(Some(exit));
    }
}

impl Drop for ExitSender {
    fn drop(&mut self) {
        self.0.set(None);
    }
}
