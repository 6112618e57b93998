//! Cancel requests: recorded by an executor that does not run the Operation, seen by its owner,
//! and taken away by the append that answers them (see `records.rs`).

use saga_core::store::{CancelRequest, StoreError};
use saga_core::OperationId;

use crate::acks::{Acks, StoredCancel};
use crate::codec::{decode_cancel, encode_cancel, sled_error};
use crate::keys;
use crate::open::Trees;

/// What [`Trees::request_cancel`] did.
#[derive(Debug)]
pub(crate) enum Requested {
    /// The request was written; with `acks`, the ticket of the log entry holding it.
    Recorded(Option<u64>),
    /// Another request was there already (as sled holds it: perhaps not acknowledged yet).
    AlreadyPending(CancelRequest),
    /// The Operation is not marked unfinished (perhaps by a finish not acknowledged yet).
    Finished,
}

impl Trees {
    /// Records the first cancel request of an unfinished Operation (a finished one keeps none;
    /// a later one is not recorded while one is pending). With `acks`, the change is registered
    /// there before it is made and its ticket is taken before the write lock is released.
    pub(crate) fn request_cancel(
        &self,
        request: &CancelRequest,
        acks: Option<&Acks>,
    ) -> Result<Requested, StoreError> {
        let id = request.operation;
        let key = keys::operation_key(id);
        let bytes = encode_cancel(request)?;
        let _writing = self.lock();
        if self.next_seq(id)?.is_none() {
            return Err(StoreError::NotFound(id));
        }
        let unfinished =
            self.unfinished.contains_key(key).map_err(|e| sled_error("reading a mark", e))?;
        if !unfinished {
            return Ok(Requested::Finished);
        }
        let pending =
            self.cancels.get(key).map_err(|e| sled_error("reading a cancel request", e))?;
        if let Some(pending) = pending {
            // One that does not decode is pending all the same: its error names it.
            return Ok(Requested::AlreadyPending(decode_cancel(&pending, id)?));
        }
        if let Some(acks) = acks {
            acks.begin_cancel(id, None, Some(bytes.clone()));
        }
        self.cancels.insert(key, bytes).map_err(|e| sled_error("writing a cancel request", e))?;
        let ticket = match acks {
            Some(acks) => {
                let ticket = acks.fresh_ticket()?;
                acks.ticket_cancel(id, ticket);
                Some(ticket)
            }
            None => None,
        };
        Ok(Requested::Recorded(ticket))
    }

    /// The stored cancel request of one Operation, as sled holds it (acknowledged or not).
    pub(crate) fn stored_cancel(&self, id: OperationId) -> Result<StoredCancel, StoreError> {
        let stored = self
            .cancels
            .get(keys::operation_key(id))
            .map_err(|e| sled_error("reading a cancel request", e))?;
        Ok(stored.map(|bytes| bytes.to_vec()))
    }

    /// Every pending cancel request, in id order. A request that does not decode is left out
    /// with a warning (it names its Operation), so that it never hides the others; `check`
    /// reports it.
    pub(crate) fn cancel_requests(&self) -> Result<Vec<CancelRequest>, StoreError> {
        let mut out = Vec::new();
        for entry in self.cancels.iter() {
            let (key, bytes) = entry.map_err(|e| sled_error("listing cancel requests", e))?;
            match keys::parse_operation(keys::CANCELS, &key)
                .and_then(|id| decode_cancel(&bytes, id))
            {
                Ok(request) => out.push(request),
                Err(e) => tracing::warn!(error = %e, "a damaged cancel request is left out"),
            }
        }
        Ok(out)
    }
}
