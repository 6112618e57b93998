//! Cancel requests: recorded by an executor that does not run the Operation, seen by its owner.

use saga_core::store::{CancelRequest, StoreError};

use crate::codec::{decode_cancel, encode_cancel, sled_error};
use crate::keys;
use crate::open::Trees;

impl Trees {
    /// Records the first cancel request of an unfinished Operation (a finished one keeps none).
    /// Returns whether anything was written.
    pub(crate) fn request_cancel(&self, request: &CancelRequest) -> Result<bool, StoreError> {
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
            return Ok(false);
        }
        let written = self
            .cancels
            .compare_and_swap(key, None as Option<&[u8]>, Some(bytes))
            .map_err(|e| sled_error("writing a cancel request", e))?;
        Ok(written.is_ok())
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
