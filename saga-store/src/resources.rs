//! Resource queues: the unfinished Operations of each resource, in creation order.

use saga_core::log::RecordKind;
use saga_core::store::{decode, StoreError};
use saga_core::{OperationId, Resource};

use crate::codec::{check_index_value, sled_error};
use crate::keys;
use crate::open::Trees;

/// What an entry of the `by_resource` tree is, for errors.
pub(crate) fn queue_entry(id: OperationId) -> String {
    format!("the resource queue entry of operation {id}")
}

impl Trees {
    /// The unfinished Operations of `resource`, in id (creation) order. A key that does not
    /// decode is left out with a warning, so that it never blocks the others' turn; so is an
    /// entry whose value is not its key's checksum, unless the Operation's records confirm the
    /// key (a damaged key could name an Operation that never leaves the queue).
    pub(crate) fn resource_queue(
        &self,
        resource: &Resource,
    ) -> Result<Vec<OperationId>, StoreError> {
        let prefix = keys::resource_prefix(resource);
        let mut out = Vec::new();
        for entry in self.by_resource.scan_prefix(&prefix) {
            let (key, value) = entry.map_err(|e| sled_error("reading a resource queue", e))?;
            let id = match keys::parse_operation(keys::BY_RESOURCE, &key[prefix.len()..]) {
                Ok(id) => id,
                Err(e) => {
                    tracing::warn!(error = %e, "a damaged queue entry is left out");
                    continue;
                }
            };
            if let Err(e) = check_index_value(keys::BY_RESOURCE, &key, &value, &queue_entry(id)) {
                if self.queue_key(id)?.as_deref() != Some(&key[..]) {
                    tracing::warn!(error = %e, "a damaged queue entry is left out");
                    continue;
                }
                tracing::warn!(error = %e, "a queue entry whose key its records confirm is kept");
            }
            out.push(id);
        }
        Ok(out)
    }

    /// The queue key of Operation `id`, from its `OperationCreated` record (`None` if it has none
    /// that decodes).
    pub(crate) fn queue_key(&self, id: OperationId) -> Result<Option<Vec<u8>>, StoreError> {
        let first = self
            .records
            .get(keys::seq_key(id, 0))
            .map_err(|e| sled_error("reading a record", e))?;
        let Some(bytes) = first else { return Ok(None) };
        Ok(match decode(&bytes, id, 0).map(|r| r.kind) {
            Ok(RecordKind::OperationCreated { resource, .. }) => {
                Some(keys::resource_key(&resource, id))
            }
            _ => None,
        })
    }
}
