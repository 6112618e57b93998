//! Who waits here for an Operation that runs elsewhere: `wait` registers, and the watcher wakes
//! it when the store says the Operation settled (or may have), so that it looks again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::id::OperationId;

/// The waiters of this executor, by Operation: one [`Notify`] per Operation, shared by every
/// `wait` of it, and how many hold it.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    by_operation: Mutex<HashMap<OperationId, (Arc<Notify>, usize)>>,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, HashMap<OperationId, (Arc<Notify>, usize)>> {
        self.by_operation.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a waiter of `id` until the returned guard is dropped.
    pub(crate) fn register(self: &Arc<Self>, id: OperationId) -> Waiting {
        let notify = {
            let mut map = self.lock();
            let entry = map.entry(id).or_insert_with(|| (Arc::new(Notify::new()), 0));
            entry.1 += 1;
            entry.0.clone()
        };
        Waiting { waiters: self.clone(), id, notify }
    }

    /// Wakes the waiters of `id`, if any.
    pub(crate) fn wake(&self, id: OperationId) {
        if let Some((notify, _)) = self.lock().get(&id) {
            notify.notify_waiters();
        }
    }

    /// Wakes every waiter (wake-ups may have been missed).
    pub(crate) fn wake_all(&self) {
        for (notify, _) in self.lock().values() {
            notify.notify_waiters();
        }
    }
}

/// One waiter's registration; unregisters when dropped.
#[derive(Debug)]
pub(crate) struct Waiting {
    waiters: Arc<Waiters>,
    id: OperationId,
    notify: Arc<Notify>,
}

impl Waiting {
    /// What wakes this waiter.
    pub(crate) fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut map = self.waiters.lock();
        if let Some(entry) = map.get_mut(&self.id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&self.id);
            }
        }
    }
}
