//! **Fault injection, for tests only**: compiled with the `fault-injection` feature, which
//! saga-store's own tests turn on and a production build leaves off. A sync failure armed with
//! [`crate::SledStore::inject_sync_failure`], and a gate that holds syncs back
//! ([`crate::SledStore::hold_syncs`]), both applied to the syncs of the write-ahead log's
//! segments by [`crate::sync_io::SegmentIo`].

use std::io;
use std::sync::{Arc, Condvar, Mutex};

/// A sync failure armed for tests ([`crate::SledStore::inject_sync_failure`]), and a gate that
/// holds syncs back ([`crate::SledStore::hold_syncs`]): shared by the store and the files of its
/// write-ahead log, whose segment syncs they make fail or wait.
#[derive(Clone, Debug, Default)]
pub(crate) struct Faults {
    fault: Arc<Mutex<Option<Fault>>>,
    gate: Arc<Gate>,
}

#[derive(Debug)]
struct Fault {
    /// How many syncs still succeed before the failing one.
    after: u64,
    error: io::Error,
}

/// Holds syncs back while `held`.
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    held: bool,
    /// How many syncs wait at the gate.
    waiting: usize,
}

impl Faults {
    /// Arms a failure: the next `after` syncs succeed, the one after them fails with `error`.
    pub(crate) fn arm(&self, after: u64, error: io::Error) {
        *self.lock() = Some(Fault { after, error });
    }

    /// The error the sync about to run must fail with, if one is armed for it.
    pub(crate) fn take(&self) -> Option<io::Error> {
        let mut slot = self.lock();
        match slot.as_mut() {
            Some(fault) if fault.after > 0 => {
                fault.after -= 1;
                None
            }
            Some(_) => slot.take().map(|f| f.error),
            None => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Fault>> {
        self.fault.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.gate.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Called by a sync before it runs: waits while the gate is held.
    pub(crate) fn pass(&self) {
        let mut state = self.gate();
        if !state.held {
            return;
        }
        state.waiting += 1;
        self.gate.changed.notify_all();
        while state.held {
            state = self.gate.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.waiting -= 1;
    }

    fn set_held(&self, held: bool) {
        self.gate().held = held;
        self.gate.changed.notify_all();
    }
}

/// **For tests only** (hidden from the docs; not part of the stable API): holds every sync of
/// the store's write-ahead log back until it is released or dropped, so that a test sees the
/// store between a write and its acknowledgement. Made by [`crate::SledStore::hold_syncs`].
#[doc(hidden)]
#[derive(Debug)]
pub struct SyncHold {
    faults: Faults,
}

impl SyncHold {
    pub(crate) fn new(faults: Faults) -> Self {
        faults.set_held(true);
        SyncHold { faults }
    }

    /// Waits until a sync waits at the hold (its writes are in the log's file, not yet synced),
    /// for at most `within`. Returns whether one does.
    pub fn wait_until_held(&self, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        let mut state = self.faults.gate();
        while state.waiting == 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            state = match self.faults.gate.changed.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    /// Lets the held syncs, and every later one, run.
    pub fn release(self) {
        drop(self);
    }
}

impl Drop for SyncHold {
    fn drop(&mut self) {
        self.faults.set_held(false);
    }
}
