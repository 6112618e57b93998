//! Leases: `claim`, `renew`, `release`, each one conditional `UPDATE` on the database's clock.

use std::time::Duration;

use saga_core::store::{Lease, StoreError};
use saga_core::OperationId;

use crate::connect::PostgresStore;
use crate::error::{pg, pool_error};
use crate::sql::{id_bytes, text, to_i64, to_u64, ttl_ms, NOW_MS};

/// An Operation's lease and next sequence number, as its row holds them.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) lease: Lease,
    pub(crate) next_seq: u64,
}

impl PostgresStore {
    /// The Operation's lease and next sequence number; `None` when it does not exist.
    pub(crate) async fn operation_state(
        &self,
        id: OperationId,
    ) -> Result<Option<State>, StoreError> {
        let context = "reading a lease";
        crate::retry::retrying(self.inner.options.retries, context, || async {
            let client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
            let row = client
                .query_opt(
                    "SELECT lease_owner, lease_epoch, lease_expires_ms, next_seq FROM operations \
                     WHERE id = $1",
                    &[&id_bytes(id)],
                )
                .await
                .map_err(|e| pg(context, e))?;
            let Some(row) = row else { return Ok(None) };
            let place = |column: &str| format!("table operations, row {id}, {column}");
            let owner: Vec<u8> = row.try_get(0).map_err(|e| pg(context, e))?;
            let epoch: i64 = row.try_get(1).map_err(|e| pg(context, e))?;
            let expires: i64 = row.try_get(2).map_err(|e| pg(context, e))?;
            let next: i64 = row.try_get(3).map_err(|e| pg(context, e))?;
            Ok(Some(State {
                lease: Lease {
                    operation: id,
                    owner: String::from_utf8_lossy(&owner).into_owned(),
                    epoch: to_u64(epoch, || place("lease_epoch"))?,
                    expires_ms: to_u64(expires, || place("lease_expires_ms"))?,
                },
                next_seq: to_u64(next, || place("next_seq"))?,
            }))
        })
        .await
    }

    /// One try of a claim: one conditional `UPDATE` that grants the next epoch when the lease
    /// is free (released), expired by the database's clock, or the caller's; a caller whose
    /// lease was granted by a try whose answer was lost just gets the next epoch, so retrying is
    /// harmless.
    pub(crate) async fn claim_once(
        &self,
        id: OperationId,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let context = "claiming an operation";
        let client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
        let claim = client
            .prepare_cached(&format!(
                // No SKIP LOCKED here, although it would spare a claimer the wait for a row that
                // another claim holds: the contract says the losers of a claim race name the
                // winner, which only its commit tells (the claim race tests caught the skipping
                // version answering with the previous holder under load). The wait is
                // one claim's commit; a lock left by a stalled transaction is bounded by
                // `lock_timeout` and `idle_in_transaction_session_timeout` (see the options).
                "UPDATE operations SET lease_owner = $2, lease_epoch = lease_epoch + 1, \
                     lease_expires_ms = {NOW_MS} + $3 \
                 WHERE id = $1 AND (lease_owner = $2 OR lease_expires_ms <= {NOW_MS}) \
                 RETURNING lease_epoch, lease_expires_ms"
            ))
            .await
            .map_err(|e| pg(context, e))?;
        let owner_bytes = owner.as_bytes().to_vec();
        let row = client
            .query_opt(&claim, &[&id_bytes(id), &owner_bytes, &ttl_ms(ttl)])
            .await
            .map_err(|e| pg(context, e))?;
        let place = |column: &str| format!("table operations, row {id}, {column}");
        if let Some(row) = row {
            let epoch: i64 = row.try_get(0).map_err(|e| pg(context, e))?;
            let expires: i64 = row.try_get(1).map_err(|e| pg(context, e))?;
            return Ok(Lease {
                operation: id,
                owner: owner.to_owned(),
                epoch: to_u64(epoch, || place("lease_epoch"))?,
                expires_ms: to_u64(expires, || place("lease_expires_ms"))?,
            });
        }
        let holder = client
            .query_opt("SELECT lease_owner FROM operations WHERE id = $1", &[&id_bytes(id)])
            .await
            .map_err(|e| pg(context, e))?;
        match holder {
            None => Err(StoreError::NotFound(id)),
            Some(row) => {
                let holder: Vec<u8> = row.try_get(0).map_err(|e| pg(context, e))?;
                Err(StoreError::Owned {
                    operation: id,
                    holder: text(holder, || place("lease_owner"))?,
                })
            }
        }
    }

    /// One try of a renewal: extends the lease from the database's clock when it is current.
    pub(crate) async fn renew_once(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let context = "renewing a lease";
        let id = lease.operation;
        let client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
        let renew = client
            .prepare_cached(&format!(
                "UPDATE operations SET lease_expires_ms = {NOW_MS} + $4 \
                 WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $3 \
                 RETURNING lease_expires_ms"
            ))
            .await
            .map_err(|e| pg(context, e))?;
        let owner = lease.owner.as_bytes().to_vec();
        let row = client
            .query_opt(&renew, &[&id_bytes(id), &to_i64(lease.epoch), &owner, &ttl_ms(ttl)])
            .await
            .map_err(|e| pg(context, e))?;
        if let Some(row) = row {
            let expires: i64 = row.try_get(0).map_err(|e| pg(context, e))?;
            let expires_ms =
                to_u64(expires, || format!("table operations, row {id}, lease_expires_ms"))?;
            return Ok(Lease { expires_ms, ..lease.clone() });
        }
        let holder = client
            .query_opt("SELECT lease_owner FROM operations WHERE id = $1", &[&id_bytes(id)])
            .await
            .map_err(|e| pg(context, e))?;
        let holder = match holder {
            None => "nobody".to_owned(),
            Some(row) => {
                let holder: Vec<u8> = row.try_get(0).map_err(|e| pg(context, e))?;
                String::from_utf8_lossy(&holder).into_owned()
            }
        };
        Err(StoreError::Fenced { operation: id, epoch: lease.epoch, holder })
    }

    /// One try of a release: the lease expires now, when it is current; otherwise nothing.
    pub(crate) async fn release_once(&self, lease: &Lease) -> Result<(), StoreError> {
        let context = "releasing a lease";
        let client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
        let owner = lease.owner.as_bytes().to_vec();
        client
            .execute(
                // Wakes the other executors when an unfinished Operation becomes claimable.
                "WITH released AS (UPDATE operations SET lease_expires_ms = 0 \
                     WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $3 RETURNING finished) \
                 SELECT pg_notify($4, $5) FROM released WHERE NOT finished",
                &[
                    &id_bytes(lease.operation),
                    &to_i64(lease.epoch),
                    &owner,
                    &crate::listener::WAKE_CHANNEL,
                    &crate::listener::claimable(&lease.operation.to_string()),
                ],
            )
            .await
            .map_err(|e| pg(context, e))?;
        Ok(())
    }
}
