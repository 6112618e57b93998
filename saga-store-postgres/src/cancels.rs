//! Cancel requests: recorded durably with a `NOTIFY` in the same statement, listed for owners.

use saga_core::store::{CancelRequest, StoreError};

use crate::connect::PostgresStore;
use crate::error::{pg, pool_error};
use crate::sql::{id_bytes, parse_id, text, to_i64, to_u64};

/// The channel of cancel notifications; the payload is the Operation's id.
pub(crate) const CHANNEL: &str = "saga_cancel";

impl PostgresStore {
    /// Records the request when the Operation is unfinished and has none, and notifies
    /// [`CHANNEL`] in the same (autocommitted, synchronous) statement. Harmless to repeat.
    pub(crate) async fn request_cancel_once(
        &self,
        request: &CancelRequest,
    ) -> Result<(), StoreError> {
        let context = "requesting a cancel";
        let id = request.operation;
        let client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
        let actor = request.actor.as_bytes().to_vec();
        let reason = request.reason.as_bytes().to_vec();
        let written = client
            .execute(
                &format!(
                    "UPDATE operations SET cancel_actor = $2, cancel_reason = $3, cancel_at_ms = $4 \
                     WHERE id = $1 AND NOT finished AND cancel_at_ms IS NULL \
                     RETURNING pg_notify('{CHANNEL}', $5)"
                ),
                &[&id_bytes(id), &actor, &reason, &to_i64(request.at_ms), &id.to_string()],
            )
            .await
            .map_err(|e| pg(context, e))?;
        if written == 0 {
            let exists = client
                .query_opt("SELECT 1 FROM operations WHERE id = $1", &[&id_bytes(id)])
                .await
                .map_err(|e| pg(context, e))?;
            if exists.is_none() {
                return Err(StoreError::NotFound(id));
            }
        }
        Ok(())
    }

    /// Every pending request of an unfinished Operation, in id order. A row that does not
    /// decode is left out with a warning naming it, so that it never hides the others; `check`
    /// reports it.
    pub(crate) async fn cancel_requests_once(&self) -> Result<Vec<CancelRequest>, StoreError> {
        let context = "listing cancel requests";
        let client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
        let rows = client
            .query(
                "SELECT id, cancel_actor, cancel_reason, cancel_at_ms FROM operations \
                 WHERE cancel_at_ms IS NOT NULL AND NOT finished ORDER BY id",
                &[],
            )
            .await
            .map_err(|e| pg(context, e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            match cancel_row(row) {
                Ok(request) => out.push(request),
                Err(e) => tracing::warn!(error = %e, "a damaged cancel request is left out"),
            }
        }
        Ok(out)
    }
}

/// A cancel request from its row (`id, cancel_actor, cancel_reason, cancel_at_ms`).
pub(crate) fn cancel_row(row: &tokio_postgres::Row) -> Result<CancelRequest, StoreError> {
    let context = "reading a cancel request";
    let id: Vec<u8> = row.try_get(0).map_err(|e| pg(context, e))?;
    let operation = parse_id(&id, "operations")?;
    let place = |column: &str| format!("table operations, row {operation}, {column}");
    let actor: Option<Vec<u8>> = row.try_get(1).map_err(|e| pg(context, e))?;
    let reason: Option<Vec<u8>> = row.try_get(2).map_err(|e| pg(context, e))?;
    let at: Option<i64> = row.try_get(3).map_err(|e| pg(context, e))?;
    let missing = |column: &str| crate::error::corrupt(place(column), "NULL in a pending request");
    Ok(CancelRequest {
        operation,
        actor: text(actor.ok_or_else(|| missing("cancel_actor"))?, || place("cancel_actor"))?,
        reason: text(reason.ok_or_else(|| missing("cancel_reason"))?, || place("cancel_reason"))?,
        at_ms: to_u64(at.ok_or_else(|| missing("cancel_at_ms"))?, || place("cancel_at_ms"))?,
    })
}
