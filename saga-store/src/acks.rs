//! Writes not acknowledged yet, so that reads show acknowledged records only.
//!
//! `create` and `append` change sled (memory) first and are acknowledged after the group-commit
//! sync that follows. In between, and for good when that sync fails, sled holds records that
//! are not durable. [`Acks`] tracks, per Operation, every such write: the first sequence number
//! it added (0 for a create), whether it finished the Operation, and the ticket of the sync that
//! covers it. Readers hide, from the first unacknowledged sequence number on, what they read.
//!
//! A write is registered under the store's write lock *before* it reaches sled, and gets its
//! ticket after (a ticket taken before the write could be declared durable by a sync that began
//! before the write). It goes when the sync of its ticket succeeded: removed by the writer then,
//! or, when the writer stopped waiting (its future was dropped), by the next reader that finds
//! its ticket durable. After a failed sync no ticket becomes durable again, so every write not
//! acknowledged stays hidden for the life of the store object.
//!
//! Readers read sled first and ask here after: a record a reader saw was registered before it
//! was written, so it is still listed here unless its sync succeeded.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use saga_core::OperationId;

use crate::flusher::Tickets;

/// The ticket of a write whose ticket is not taken yet (in flight, or failed before it).
const UNTICKETED: u64 = u64::MAX;

/// The unacknowledged writes of one store (only a store that syncs has any).
#[derive(Debug)]
pub(crate) struct Acks {
    tickets: Tickets,
    writes: Mutex<HashMap<OperationId, Vec<Write>>>,
}

#[derive(Clone, Copy, Debug)]
struct Write {
    /// The first sequence number the write added.
    from: u64,
    /// Whether it holds `OperationFinished` (and so removed the unfinished mark).
    finishing: bool,
    /// The ticket of the sync that covers it, or [`UNTICKETED`].
    ticket: u64,
}

/// What a reader must hide of one Operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hidden {
    /// Records from this sequence number on are not acknowledged (0: not even its creation).
    pub(crate) from: u64,
    /// An unacknowledged write finished the Operation: it is still unfinished.
    pub(crate) finishing: bool,
}

impl Hidden {
    /// Whether the Operation's `OperationCreated` is unacknowledged, so that it does not exist.
    pub(crate) fn created(&self) -> bool {
        self.from == 0
    }
}

impl Acks {
    pub(crate) fn new(tickets: Tickets) -> Self {
        Acks { tickets, writes: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<OperationId, Vec<Write>>> {
        self.writes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a write of `id` from sequence number `from`, before it reaches sled. Call under
    /// the store's write lock.
    pub(crate) fn begin(&self, id: OperationId, from: u64, finishing: bool) {
        let durable = self.tickets.durable();
        let mut writes = self.lock();
        let pending = writes.entry(id).or_default();
        pending.retain(|w| w.ticket > durable);
        pending.push(Write { from, finishing, ticket: UNTICKETED });
    }

    /// Takes the ticket of the write registered at `from`, once it is in sled, and records it
    /// with the write, so that the write is acknowledged when that ticket is durable even if
    /// its writer stops waiting.
    pub(crate) fn ticket(
        &self,
        id: OperationId,
        from: u64,
    ) -> Result<u64, saga_core::store::StoreError> {
        let ticket = self.tickets.ticket()?;
        self.set_ticket(id, from, ticket);
        Ok(ticket)
    }

    /// Records the ticket taken for the write registered at `from`.
    pub(crate) fn set_ticket(&self, id: OperationId, from: u64, ticket: u64) {
        if let Some(w) =
            self.lock().get_mut(&id).and_then(|p| p.iter_mut().find(|w| w.from == from))
        {
            w.ticket = ticket;
        }
    }

    /// A fresh ticket, not recorded with any write (the caller records it if it must).
    pub(crate) fn fresh_ticket(&self) -> Result<u64, saga_core::store::StoreError> {
        self.tickets.ticket()
    }

    /// Forgets the write registered at `from`: it was acknowledged, or it wrote nothing.
    pub(crate) fn forget(&self, id: OperationId, from: u64) {
        let mut writes = self.lock();
        if let Some(pending) = writes.get_mut(&id) {
            pending.retain(|w| w.from != from);
            if pending.is_empty() {
                writes.remove(&id);
            }
        }
    }

    /// What a reader must hide of `id`, if anything.
    pub(crate) fn hidden(&self, id: OperationId) -> Option<Hidden> {
        let durable = self.tickets.durable();
        let mut writes = self.lock();
        let pending = writes.get_mut(&id)?;
        let hidden = prune(pending, durable);
        if hidden.is_none() {
            writes.remove(&id);
        }
        hidden
    }

    /// What listings must hide, for every Operation with an unacknowledged write, in no order.
    pub(crate) fn all_hidden(&self) -> Vec<(OperationId, Hidden)> {
        let durable = self.tickets.durable();
        let mut writes = self.lock();
        if writes.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        writes.retain(|id, pending| match prune(pending, durable) {
            Some(hidden) => {
                out.push((*id, hidden));
                true
            }
            None => false,
        });
        out
    }
}

/// Drops the writes acknowledged by now; what the others hide.
fn prune(pending: &mut Vec<Write>, durable: u64) -> Option<Hidden> {
    pending.retain(|w| w.ticket > durable);
    let from = pending.iter().map(|w| w.from).min()?;
    Some(Hidden { from, finishing: pending.iter().any(|w| w.finishing) })
}
