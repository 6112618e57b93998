//! Group commit: one thread flushes and syncs for every writer.
//!
//! A writer makes its change in sled, then takes a ticket ([`Flusher::ticket`]) and waits
//! ([`Flusher::wait`]) until a sync that began after the ticket was taken has finished. The thread
//! sleeps until a ticket is taken, notes the newest ticket, syncs once, and then declares every
//! ticket up to the one it noted durable. Writers that come while it syncs wait for the next sync,
//! which covers them all: N concurrent appends cost one sync per round instead of N, and a lone
//! writer costs exactly one sync per write.
//!
//! A failed sync poisons the flusher: after a failed `fdatasync` the kernel may have dropped the
//! dirty pages, so no later sync can prove them written. Every waiting and later writer gets
//! [`StoreError::Unavailable`].
//!
//! [`Tickets`] is the part writers use from the blocking pool: taking a ticket right after a
//! write, and asking which tickets are durable (for [`crate::acks`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::watch;

use saga_core::store::StoreError;

use crate::disk::{DiskSync, Faults};

/// The group-commit flusher of one store. Stops (after a last sync) when dropped.
#[derive(Debug)]
pub(crate) struct Flusher {
    shared: Arc<Shared>,
    progress: watch::Receiver<Progress>,
    faults: Faults,
    thread: Option<JoinHandle<()>>,
}

/// Takes tickets and tells which are durable; cheap to clone, usable from any thread.
#[derive(Clone, Debug)]
pub(crate) struct Tickets(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    syncs: AtomicU64,
    /// Every ticket up to this one is durable (as [`Progress::durable`], readable without the
    /// channel).
    durable: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// The newest ticket handed out.
    tickets: u64,
    /// Set when the store is dropped.
    stop: bool,
}

#[derive(Clone, Debug, Default)]
struct Progress {
    /// Every ticket up to this one is durable.
    durable: u64,
    /// Why syncing stopped for good, if it did.
    failed: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Flusher {
    /// Starts the flusher thread over `sync`.
    pub(crate) fn start(sync: DiskSync) -> Result<Self, StoreError> {
        let shared = Arc::new(Shared::default());
        let (tx, progress) = watch::channel(Progress::default());
        let faults = sync.faults();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("saga-store-flusher".into())
            .spawn(move || run(sync, &thread_shared, &tx))
            .map_err(|source| StoreError::Io {
                context: "starting the flusher thread".into(),
                source,
            })?;
        Ok(Flusher { shared, progress, faults, thread: Some(thread) })
    }

    /// Fails if an earlier sync failed, so that no write is made that could never be durable.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        match &self.progress.borrow().failed {
            Some(why) => Err(unavailable(why)),
            None => Ok(()),
        }
    }

    /// A ticket for the writes made before this call. Wakes the flusher.
    pub(crate) fn ticket(&self) -> u64 {
        take_ticket(&self.shared)
    }

    /// The ticket handle, for writers on other threads.
    pub(crate) fn tickets(&self) -> Tickets {
        Tickets(self.shared.clone())
    }

    /// The handle that arms a sync failure, for tests.
    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Waits until a sync that began after `ticket` was taken has finished.
    pub(crate) async fn wait(&self, ticket: u64) -> Result<(), StoreError> {
        let mut progress = self.progress.clone();
        let reached = progress
            .wait_for(|p| p.durable >= ticket || p.failed.is_some())
            .await
            .map_err(|_| StoreError::Unavailable("the store's flusher stopped".into()))?;
        match &reached.failed {
            Some(why) if reached.durable < ticket => Err(unavailable(why)),
            _ => Ok(()),
        }
    }

    /// How many syncs the flusher has made.
    pub(crate) fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }
}

impl Tickets {
    /// A ticket for the writes made before this call. Wakes the flusher.
    pub(crate) fn ticket(&self) -> u64 {
        take_ticket(&self.0)
    }

    /// Every ticket up to this one is durable. Never grows again after a failed sync.
    pub(crate) fn durable(&self) -> u64 {
        self.0.durable.load(Ordering::Acquire)
    }
}

fn take_ticket(shared: &Shared) -> u64 {
    let mut state = shared.lock();
    state.tickets += 1;
    let ticket = state.tickets;
    drop(state);
    shared.wake.notify_one();
    ticket
}

fn unavailable(why: &str) -> StoreError {
    StoreError::Unavailable(format!("an earlier sync failed, nothing is durable since: {why}"))
}

fn run(mut sync: DiskSync, shared: &Shared, progress: &watch::Sender<Progress>) {
    let mut durable = 0;
    loop {
        let target = {
            let mut state = shared.lock();
            while state.tickets == durable && !state.stop {
                state = shared.wake.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if state.tickets == durable {
                return;
            }
            state.tickets
        };
        let result = sync.sync();
        shared.syncs.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                durable = target;
                shared.durable.store(target, Ordering::Release);
                progress.send_modify(|p| p.durable = target);
            }
            Err(e) => {
                tracing::error!(error = %e, "saga store sync failed; the store takes no more writes");
                progress.send_modify(|p| p.failed = Some(e.to_string()));
                return;
            }
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // The thread only syncs what is pending and returns; a panic in it is already gone.
            let _ = thread.join();
        }
    }
}
