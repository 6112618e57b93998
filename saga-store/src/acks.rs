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
//!
//! Cancel requests are tracked the same way, as values rather than sequence numbers: every
//! change of an Operation's request (recorded by `request_cancel`, taken away by an append that
//! answers it) is registered under the write lock before it reaches sled, with the request as it
//! was before ([`Acks::begin_cancel`]), and gets its ticket after ([`Acks::ticket_cancel`]).
//! Until that ticket is durable, readers show the request as it was before the first change
//! not acknowledged ([`Acks::acknowledged_cancel`]): a request whose sync failed is never shown
//! as pending, and one whose removal was not acknowledged is still shown.

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
    cancels: Mutex<HashMap<OperationId, CancelChanges>>,
}

/// The encoded cancel request of an Operation as stored (`None`: none pending).
pub(crate) type StoredCancel = Option<Vec<u8>>;

/// The changes of one Operation's cancel request not acknowledged yet, in the order made.
#[derive(Debug)]
struct CancelChanges {
    /// The request before the first of `changes`: the acknowledged one.
    acknowledged: StoredCancel,
    /// Each change: the ticket of the sync that covers it (or [`UNTICKETED`]), and the request
    /// after it.
    changes: Vec<(u64, StoredCancel)>,
}

impl CancelChanges {
    /// Folds the changes acknowledged by now (a prefix: tickets are taken in order) into
    /// `acknowledged`; whether any change is left.
    fn prune(&mut self, durable: u64) -> bool {
        let done = self.changes.iter().take_while(|(ticket, _)| *ticket <= durable).count();
        if let Some((_, after)) = self.changes.drain(..done).next_back() {
            self.acknowledged = after;
        }
        !self.changes.is_empty()
    }
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
        Acks { tickets, writes: Mutex::new(HashMap::new()), cancels: Mutex::new(HashMap::new()) }
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

impl Acks {
    fn lock_cancels(&self) -> MutexGuard<'_, HashMap<OperationId, CancelChanges>> {
        self.cancels.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a change of `id`'s cancel request from `before` (as sled holds it now) to
    /// `after`, before it reaches sled. Call under the store's write lock, then
    /// [`Acks::ticket_cancel`] once the change is made (under the same lock).
    pub(crate) fn begin_cancel(&self, id: OperationId, before: StoredCancel, after: StoredCancel) {
        let durable = self.tickets.durable();
        let mut cancels = self.lock_cancels();
        let entry = cancels
            .entry(id)
            .or_insert_with(|| CancelChanges { acknowledged: before, changes: Vec::new() });
        entry.prune(durable);
        entry.changes.push((UNTICKETED, after));
    }

    /// Records the ticket of the change of `id`'s request registered last.
    pub(crate) fn ticket_cancel(&self, id: OperationId, ticket: u64) {
        if let Some(last) = self.lock_cancels().get_mut(&id).and_then(|c| c.changes.last_mut()) {
            if last.0 == UNTICKETED {
                last.0 = ticket;
            }
        }
    }

    /// The acknowledged request of `id` when a change of it is not acknowledged yet (what a
    /// reader shows instead of what sled holds), or `None` when sled holds the acknowledged one.
    pub(crate) fn acknowledged_cancel(&self, id: OperationId) -> Option<StoredCancel> {
        let durable = self.tickets.durable();
        let mut cancels = self.lock_cancels();
        let entry = cancels.get_mut(&id)?;
        if entry.prune(durable) {
            Some(entry.acknowledged.clone())
        } else {
            cancels.remove(&id);
            None
        }
    }

    /// [`Acks::acknowledged_cancel`] of every Operation with a change not acknowledged, in no
    /// order.
    pub(crate) fn all_acknowledged_cancels(&self) -> Vec<(OperationId, StoredCancel)> {
        let durable = self.tickets.durable();
        let mut cancels = self.lock_cancels();
        let mut out = Vec::new();
        cancels.retain(|id, entry| {
            let pending = entry.prune(durable);
            if pending {
                out.push((*id, entry.acknowledged.clone()));
            }
            pending
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
