//! The listings (unfinished, by environment, resource queues) and `delete_environment`.

use saga_core::store::{Listing, StoreError};
use saga_core::{OperationId, Resource};

use crate::connect::PostgresStore;
use crate::error::{pg, pool_error};
use crate::sql::{parse_id, to_i64};

/// The ids of `rows` (column 0): the ones that decode, and the others as damaged entries.
fn listing(rows: &[tokio_postgres::Row], context: &str) -> Result<Listing, StoreError> {
    let mut out = Listing::default();
    for row in rows {
        let bytes: Vec<u8> = row.try_get(0).map_err(|e| pg(context, e))?;
        match parse_id(&bytes, "operations") {
            Ok(id) => out.ids.push(id),
            Err(e) => out.damaged.push(e),
        }
    }
    Ok(out)
}

impl PostgresStore {
    /// Through the partial index of unfinished Operations: finished ones are not read.
    pub(crate) async fn unfinished_once(&self) -> Result<Listing, StoreError> {
        let context = "listing unfinished operations";
        let client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
        let rows = client
            .query("SELECT id FROM operations WHERE NOT finished ORDER BY id", &[])
            .await
            .map_err(|e| pg(context, e))?;
        listing(&rows, context)
    }

    pub(crate) async fn environment_once(
        &self,
        environment: &str,
        since_ms: u64,
        until_ms: u64,
    ) -> Result<Listing, StoreError> {
        if since_ms >= until_ms || since_ms > i64::MAX as u64 {
            return Ok(Listing::default());
        }
        let context = "listing an environment";
        let client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
        let env = environment.as_bytes().to_vec();
        // A bound past i64::MAX is no bound: times are stored saturated at i64::MAX.
        let until: Option<i64> = (until_ms <= i64::MAX as u64).then(|| to_i64(until_ms));
        let rows = client
            .query(
                "SELECT id FROM operations \
                 WHERE environment_key = sha256($1::bytea) AND environment = $1 \
                   AND created_ms >= $2 AND ($3::bigint IS NULL OR created_ms < $3) \
                 ORDER BY created_ms, id",
                &[&env, &to_i64(since_ms), &until],
            )
            .await
            .map_err(|e| pg(context, e))?;
        listing(&rows, context)
    }

    pub(crate) async fn queue_once(
        &self,
        resource: &Resource,
    ) -> Result<Vec<OperationId>, StoreError> {
        let context = "reading a resource queue";
        let client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
        let kind = resource.kind.as_bytes().to_vec();
        let name = resource.name.as_bytes().to_vec();
        let rows = client
            .query(
                "SELECT id FROM operations \
                 WHERE resource_key = sha256(int4send(octet_length($1::bytea)) || $1::bytea || $2::bytea) \
                   AND resource_kind = $1 AND resource_name = $2 AND NOT finished \
                 ORDER BY queue_position",
                &[&kind, &name],
            )
            .await
            .map_err(|e| pg(context, e))?;
        let found = listing(&rows, context)?;
        for e in &found.damaged {
            // Left out rather than failing the queue; `check` reports the row.
            tracing::warn!(error = %e, "a damaged operation id is left out of a resource queue");
        }
        Ok(found.ids)
    }

    /// Deletes the environment's Operations (their records go by `ON DELETE CASCADE`) and their
    /// log lines, in one transaction. Not retried after its commit answer is lost: a retry
    /// would count nothing.
    pub(crate) async fn delete_environment_once(
        &self,
        environment: &str,
    ) -> Result<u64, StoreError> {
        let context = "deleting an environment";
        let mut client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
        let tx = client.transaction().await.map_err(|e| pg(context, e))?;
        let env = environment.as_bytes().to_vec();
        let rows = tx
            .query(
                "DELETE FROM operations \
                 WHERE environment_key = sha256($1::bytea) AND environment = $1 RETURNING id",
                &[&env],
            )
            .await
            .map_err(|e| pg(context, e))?;
        let ids: Vec<Vec<u8>> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(|e| pg(context, e))?;
        tx.execute("DELETE FROM log_lines WHERE operation = ANY($1)", &[&ids])
            .await
            .map_err(|e| pg(context, e))?;
        tx.commit().await.map_err(|e| pg(context, e))?;
        Ok(ids.len() as u64)
    }
}
