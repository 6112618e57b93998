//! Leases: claim, renew, release.
//!
//! Lease changes made by `claim`, `renew` and `release` are not synced on their own: they become
//! durable with the next synced write (or sled's own background flush). Only one process opens a
//! store, so a lease lost to a crash belonged to an executor that died with it.

use std::time::Duration;

use saga_core::store::{Lease, StoreError};
use saga_core::OperationId;

use crate::codec::{decode_lease, encode_lease, sled_error};
use crate::keys;
use crate::open::Trees;

impl Trees {
    /// The Operation's current lease, if any.
    pub(crate) fn lease(&self, id: OperationId) -> Result<Option<Lease>, StoreError> {
        let bytes = self
            .leases
            .get(keys::operation_key(id))
            .map_err(|e| sled_error("reading a lease", e))?;
        bytes.map(|b| decode_lease(&b, id)).transpose()
    }

    fn put_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        self.leases
            .insert(keys::operation_key(lease.operation), encode_lease(lease)?)
            .map_err(|e| sled_error("writing a lease", e))?;
        Ok(())
    }

    /// Takes ownership of an existing Operation under the shared claim rule.
    pub(crate) fn claim(
        &self,
        id: OperationId,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let _writing = self.lock();
        if self.next_seq(id)?.is_none() {
            return Err(StoreError::NotFound(id));
        }
        let lease = Lease::claim_after(
            self.lease(id)?.as_ref(),
            id,
            owner,
            ttl,
            saga_core::Timestamp::now().unix_ms(),
        )?;
        self.put_lease(&lease)?;
        Ok(lease)
    }

    /// Extends a current lease.
    pub(crate) fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        let _writing = self.lock();
        lease.check_current(self.lease(lease.operation)?.as_ref())?;
        let renewed = Lease {
            expires_ms: saga_core::Timestamp::now()
                .unix_ms()
                .saturating_add(ttl.as_millis() as u64),
            ..lease.clone()
        };
        self.put_lease(&renewed)?;
        Ok(renewed)
    }

    /// Expires a current lease at once; does nothing for a lease that is not current. Returns
    /// whether it released an Operation that is still marked unfinished (one that may be
    /// claimed at once).
    pub(crate) fn release(&self, lease: &Lease) -> Result<bool, StoreError> {
        let _writing = self.lock();
        if lease.check_current(self.lease(lease.operation)?.as_ref()).is_err() {
            return Ok(false);
        }
        self.put_lease(&Lease { expires_ms: 0, ..lease.clone() })?;
        self.unfinished
            .contains_key(keys::operation_key(lease.operation))
            .map_err(|e| sled_error("reading a mark", e))
    }
}
