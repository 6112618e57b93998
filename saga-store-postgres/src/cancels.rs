//! Cancel requests: recorded durably with a `NOTIFY` in the same transaction, listed for
//! owners, decided against the point of no return by the row lock (see the writer's `APPEND`).

use saga_core::store::{CancelRecorded, CancelRequest, StoreError};
use saga_core::OperationId;

use crate::connect::PostgresStore;
use crate::error::{pg, pool_error};
use crate::sql::{id_bytes, parse_id, text, to_i64, to_u64};

/// The channel of cancel notifications; the payload is the Operation's id (its text form).
pub(crate) const CHANNEL: &str = "saga_cancel";

impl PostgresStore {
    /// One try: locks the Operation's row, then records the request when the Operation is
    /// unfinished and has none, notifying [`CHANNEL`] in the same transaction; otherwise says
    /// why not. A pending request equal to this one, column for column, is answered
    /// [`CancelRecorded::Recorded`]: it is this one, recorded by a try whose commit answer was
    /// lost (or one that nobody could tell from it). So repeating a try is harmless and truthful.
    ///
    /// The row lock orders this against an append that passes the point of no return (which
    /// checks, in its own conditional update of the row, that no request is pending).
    pub(crate) async fn request_cancel_once(
        &self,
        request: &CancelRequest,
    ) -> Result<CancelRecorded, StoreError> {
        let context = "requesting a cancel";
        let id = request.operation;
        let key = id_bytes(id);
        let actor = request.actor.as_bytes().to_vec();
        let reason = request.reason.as_bytes().to_vec();
        let at = to_i64(request.at_ms);
        let mut client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
        let tx = client.transaction().await.map_err(|e| pg(context, e))?;
        let row = tx
            .query_opt(
                "SELECT id, cancel_actor, cancel_reason, cancel_at_ms, finished FROM operations \
                 WHERE id = $1 FOR UPDATE",
                &[&key],
            )
            .await
            .map_err(|e| pg(context, e))?;
        let Some(row) = row else { return Err(StoreError::NotFound(id)) };
        let finished: bool = row.try_get(4).map_err(|e| pg(context, e))?;
        if finished {
            return Ok(CancelRecorded::Finished);
        }
        let pending_at: Option<i64> = row.try_get(3).map_err(|e| pg(context, e))?;
        if pending_at.is_some() {
            let pending_actor: Option<Vec<u8>> = row.try_get(1).map_err(|e| pg(context, e))?;
            let pending_reason: Option<Vec<u8>> = row.try_get(2).map_err(|e| pg(context, e))?;
            if pending_at == Some(at)
                && pending_actor.as_ref() == Some(&actor)
                && pending_reason.as_ref() == Some(&reason)
            {
                return Ok(CancelRecorded::Recorded);
            }
            return Ok(CancelRecorded::AlreadyPending(cancel_row(&row)?));
        }
        tx.execute(
            &format!(
                "UPDATE operations SET cancel_actor = $2, cancel_reason = $3, cancel_at_ms = $4 \
                 WHERE id = $1 RETURNING pg_notify('{CHANNEL}', $5)"
            ),
            &[&key, &actor, &reason, &at, &id.to_string()],
        )
        .await
        .map_err(|e| pg(context, e))?;
        // A commit whose answer is lost is a transient error: the retry finds this request
        // pending (or answered, or the Operation finished) and says so.
        tx.commit().await.map_err(|e| pg(context, e))?;
        Ok(CancelRecorded::Recorded)
    }

    /// The Operation's pending request, in one query (`None`: none, or no such Operation).
    pub(crate) async fn pending_cancel_once(
        &self,
        id: OperationId,
    ) -> Result<Option<CancelRequest>, StoreError> {
        let context = "reading a cancel request";
        let client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
        let row = client
            .query_opt(
                "SELECT id, cancel_actor, cancel_reason, cancel_at_ms FROM operations \
                 WHERE id = $1 AND cancel_at_ms IS NOT NULL AND NOT finished",
                &[&id_bytes(id)],
            )
            .await
            .map_err(|e| pg(context, e))?;
        row.as_ref().map(cancel_row).transpose()
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

/// A cancel request from a row whose first columns are `id, cancel_actor, cancel_reason,
/// cancel_at_ms`.
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
