//! A running Operation's mailbox: how `cancel()` reaches its driver.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use super::driver::Command;

/// Commands for one driver. Far smaller than a channel when empty (an Operation is rarely sent
/// anything), which matters with 100,000 Operations in flight.
#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    inner: Mutex<Inner>,
    arrived: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Command>,
    closed: bool,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Delivers a command, or gives it back when the driver has ended.
    pub(crate) fn send(&self, command: Command) -> Result<(), Command> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(command);
        }
        inner.queue.push_back(command);
        drop(inner);
        // Stores a permit when the driver is not waiting, so no command is missed.
        self.arrived.notify_one();
        Ok(())
    }

    /// The next command, if one is waiting.
    pub(crate) fn try_recv(&self) -> Option<Command> {
        self.lock().queue.pop_front()
    }

    /// Waits for the next command.
    pub(crate) async fn recv(&self) -> Command {
        loop {
            if let Some(command) = self.try_recv() {
                return command;
            }
            self.arrived.notified().await;
        }
    }

    /// The driver has ended: later commands are refused, and waiting ones are dropped, which
    /// tells their senders (their reply channels close).
    pub(crate) fn close(&self) {
        let waiting = {
            let mut inner = self.lock();
            inner.closed = true;
            std::mem::take(&mut inner.queue)
        };
        drop(waiting);
    }
}
