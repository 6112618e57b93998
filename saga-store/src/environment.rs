//! The environment index: listing and deleting an environment's Operations.

use saga_core::log::{Record, RecordKind};
use saga_core::store::{decode, Listing, StoreError};
use saga_core::OperationId;

use crate::codec::{check_index_value, sled_error};
use crate::keys;
use crate::open::Trees;

/// What an entry of the `by_environment` tree is, for errors.
pub(crate) fn index_entry(id: OperationId) -> String {
    format!("the environment index entry of operation {id}")
}

impl Trees {
    /// Ids of `environment` created in `[since_ms, until_ms)`, in creation order, and the
    /// damaged entries of that range: keys that are no index key, values that are not the
    /// key's checksum.
    pub(crate) fn list_environment(
        &self,
        environment: &str,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Listing, StoreError> {
        let mut listing = Listing::default();
        if since_ms >= until_ms {
            return Ok(listing);
        }
        let from = keys::environment_bound(environment, since_ms);
        let to = keys::environment_bound(environment, until_ms);
        for entry in self.by_environment.range(from..to) {
            let (key, value) = entry.map_err(|e| sled_error("reading the environment index", e))?;
            match keys::parse_environment_entry(&key).and_then(|(_, _, id)| {
                check_index_value(keys::BY_ENVIRONMENT, &key, &value, &index_entry(id))?;
                Ok(id)
            }) {
                Ok(id) => listing.ids.push(id),
                Err(damaged) => listing.damaged.push(damaged),
            }
        }
        Ok(listing)
    }

    /// Deletes every Operation of `environment`: records, unfinished mark, lease, log lines and
    /// index entry, one Operation at a time (the index entry last, so that an interrupted delete
    /// is finished by the next). Returns how many Operations went.
    pub(crate) fn delete_environment(&self, environment: &str) -> Result<u64, StoreError> {
        let _writing = self.lock();
        let entries: Vec<(sled::IVec, sled::IVec)> = self
            .by_environment
            .scan_prefix(keys::environment_prefix(environment))
            .collect::<Result<_, _>>()
            .map_err(|e| sled_error("reading the environment index", e))?;
        let mut deleted = 0;
        for (index_key, value) in entries {
            let id = match keys::parse_environment_key(&index_key) {
                Ok(id) => id,
                Err(e) => {
                    // Isolation: the others go on; `check` reports and removes this one.
                    tracing::warn!(error = %e, "skipping a damaged environment index entry");
                    continue;
                }
            };
            let what = index_entry(id);
            if let Err(e) = check_index_value(keys::BY_ENVIRONMENT, &index_key, &value, &what) {
                // A damaged value under a key that the records confirm: the key is right.
                let confirmed = match keys::parse_environment_entry(&index_key) {
                    Ok((_, created_ms, _)) => self.created_as(id, environment, created_ms)?,
                    Err(_) => false,
                };
                if !confirmed {
                    tracing::warn!(error = %e, "skipping a damaged environment index entry");
                    continue;
                }
                tracing::warn!(error = %e, "deleting an operation whose index entry is damaged");
            }
            self.remove_operation(id)?;
            self.by_environment
                .remove(&index_key)
                .map_err(|e| sled_error("deleting an index entry", e))?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Whether Operation `id`'s first record says it was created in `environment` at
    /// `created_ms` (what its index key says).
    pub(crate) fn created_as(
        &self,
        id: OperationId,
        environment: &str,
        created_ms: u64,
    ) -> Result<bool, StoreError> {
        let first = match self.records.get(keys::seq_key(id, 0)) {
            Ok(first) => first,
            Err(e) => match sled_error("reading a record", e) {
                // Records in a bundle that does not read: the entry is not contradicted (the
                // records' reader reports the damage).
                StoreError::Corrupt { .. } => return Ok(true),
                other => return Err(other),
            },
        };
        Ok(match first.map(|bytes| decode(&bytes, id, 0)) {
            Some(Ok(Record {
                at_ms,
                kind: RecordKind::OperationCreated { environment: created_in, .. },
                ..
            })) => created_in == environment && at_ms == created_ms,
            _ => false,
        })
    }

    fn remove_operation(&self, id: OperationId) -> Result<(), StoreError> {
        let op_key = keys::operation_key(id);
        // The unfinished mark first, so that recovery never meets an Operation half deleted.
        self.unfinished.remove(op_key).map_err(|e| sled_error("deleting a mark", e))?;
        // Its queue entry is found from its first record, so before the records go.
        if let Some(queue_key) = self.queue_key(id)? {
            self.by_resource
                .remove(queue_key)
                .map_err(|e| sled_error("deleting a queue entry", e))?;
        }
        let mut records = crate::overlay::Batch::default();
        for key in self.records.scan_prefix(op_key).keys() {
            records.remove(key.map_err(|e| sled_error("reading records", e))?);
        }
        self.records.apply_batch(records).map_err(|e| sled_error("deleting records", e))?;
        self.leases.remove(op_key).map_err(|e| sled_error("deleting a lease", e))?;
        self.cancels.remove(op_key).map_err(|e| sled_error("deleting a cancel request", e))?;
        self.remove_log(id)
    }
}
