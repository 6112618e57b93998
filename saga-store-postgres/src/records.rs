//! Records: `create`, `append` (through the group-commit writer) and `read`.

use std::time::Duration;

use saga_core::log::{Record, RecordKind};
use saga_core::store::{check_create, check_sequence, decode, encode, Creation, Lease, StoreError};
use saga_core::OperationId;
use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;

use crate::cancels::cancel_row;
use crate::connect::PostgresStore;
use crate::error::{pg, pool_error};
use crate::listener::{claimable, settled, WAKE_CHANNEL};
use crate::retry::{retrying, Backoff};
use crate::sql::{id_bytes, to_i64, to_u64, ttl_ms, NOW_MS};
use crate::writer::{self, Append, Failure, Job};

/// The advisory lock of a resource's queue, from the same key as the `resource_key` column.
const RESOURCE_LOCK: &str = "SELECT pg_advisory_xact_lock(('x' || encode(substr(sha256(\
     int4send(octet_length($1::bytea)) || $1::bytea || $2::bytea), 1, 8), 'hex'))::bit(64)::bigint)";

/// Whether a create whose commit answer was lost is there.
enum Created {
    /// As this caller wrote it, with its lease's expiry.
    Ours(i64),
    /// Not there.
    Absent,
    /// Another create of the same id.
    Other,
}

/// What the outcome of a write whose commit answer was lost turned out to be.
enum Landed {
    /// It is there.
    Yes,
    /// It is not, and no transaction that could still write it is running.
    No,
}

impl PostgresStore {
    pub(crate) async fn create_record(
        &self,
        record: &Record,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let Creation { environment, resource } = check_create(record)?;
        let bytes = encode(record)?;
        let id = record.operation;
        let row = CreateRow {
            id: id_bytes(id),
            id_text: id.to_string(),
            environment: environment.as_bytes().to_vec(),
            created_ms: to_i64(record.at_ms),
            kind: resource.kind.as_bytes().to_vec(),
            name: resource.name.as_bytes().to_vec(),
            owner: owner.as_bytes().to_vec(),
            ttl: ttl_ms(ttl),
            bytes,
        };
        let mut backoff = Backoff::calls(self.inner.options.retries);
        loop {
            let error = match self.create_once(&row).await {
                Ok(Some(expires)) => return self.first_lease(id, owner, expires),
                Ok(None) => return Err(StoreError::AlreadyExists(id)),
                Err(Failure::Refused(e)) => return Err(e),
                Err(Failure::NotWritten(e)) => e,
                Err(Failure::Unknown(e)) => match self.created(&row).await {
                    Ok(Created::Ours(expires)) => return self.first_lease(id, owner, expires),
                    Ok(Created::Absent) => e,
                    Ok(Created::Other) => return Err(StoreError::AlreadyExists(id)),
                    Err(_) => return Err(e),
                },
            };
            if !error.is_transient() || !backoff.retry().await {
                return Err(error);
            }
        }
    }

    fn first_lease(&self, id: OperationId, owner: &str, expires: i64) -> Result<Lease, StoreError> {
        let expires_ms =
            to_u64(expires, || format!("table operations, row {id}, lease_expires_ms"))?;
        Ok(Lease { operation: id, owner: owner.to_owned(), epoch: 1, expires_ms })
    }

    /// One try: `Some(expiry)` when created, `None` when the id exists.
    async fn create_once(&self, row: &CreateRow) -> Result<Option<i64>, Failure> {
        let context = "creating an operation";
        let not_written = |e| Failure::NotWritten(pg(context, e));
        let mut client =
            self.inner.pool.get().await.map_err(|e| Failure::NotWritten(pool_error(context, e)))?;
        let tx = client.transaction().await.map_err(not_written)?;
        let insert = format!(
            "INSERT INTO operations (id, environment, created_ms, resource_kind, resource_name, \
                 queue_position, next_seq, lease_owner, lease_epoch, lease_expires_ms) \
             VALUES ($1, $2, $3, $4, $5, nextval('saga_queue_position'), 1, $6, 1, {NOW_MS} + $7) \
             ON CONFLICT (id) DO NOTHING RETURNING lease_expires_ms"
        );
        // The resource's lock first, so that queue positions are taken in commit order.
        let lock_params: [&(dyn ToSql + Sync); 2] = [&row.kind, &row.name];
        let insert_params: [&(dyn ToSql + Sync); 7] = [
            &row.id,
            &row.environment,
            &row.created_ms,
            &row.kind,
            &row.name,
            &row.owner,
            &row.ttl,
        ];
        let (lock, inserted) = tokio::join!(
            tx.execute(RESOURCE_LOCK, &lock_params),
            tx.query_opt(&insert, &insert_params),
        );
        lock.map_err(not_written)?;
        let Some(inserted) = inserted.map_err(not_written)? else {
            return Ok(None);
        };
        let expires: i64 = inserted.try_get(0).map_err(not_written)?;
        tx.execute(
            "INSERT INTO records (operation, seq, bytes) VALUES ($1, 0, $2)",
            &[&row.id, &row.bytes],
        )
        .await
        .map_err(not_written)?;
        if row.ttl == 0 {
            // Submitted (a lease that expired as it was granted): wake the executors, at commit.
            let payload = claimable(row.id_text.as_str());
            tx.execute("SELECT pg_notify($1, $2)", &[&WAKE_CHANNEL, &payload])
                .await
                .map_err(not_written)?;
        }
        match tx.commit().await {
            Ok(()) => Ok(Some(expires)),
            Err(e) if e.code().is_some() => Err(Failure::NotWritten(pg(context, e))),
            Err(e) => Err(Failure::Unknown(pg(context, e))),
        }
    }

    /// After a create whose commit answer was lost: whether it is there, as this caller wrote
    /// it (then its lease's expiry).
    async fn created(&self, row: &CreateRow) -> Result<Created, StoreError> {
        retrying(self.inner.options.retries, "checking a create", || async {
            let context = "checking whether an operation was created";
            let mut client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
            let tx = client.transaction().await.map_err(|e| pg(context, e))?;
            // FOR SHARE waits for a transaction still writing the row.
            let found = tx
                .query_opt(
                    "SELECT o.lease_owner, o.lease_expires_ms, r.bytes FROM operations o \
                     JOIN records r ON r.operation = o.id AND r.seq = 0 \
                     WHERE o.id = $1 FOR SHARE OF o",
                    &[&row.id],
                )
                .await
                .map_err(|e| pg(context, e))?;
            let Some(found) = found else { return Ok(Created::Absent) };
            let owner: Vec<u8> = found.try_get(0).map_err(|e| pg(context, e))?;
            let expires: i64 = found.try_get(1).map_err(|e| pg(context, e))?;
            let bytes: Vec<u8> = found.try_get(2).map_err(|e| pg(context, e))?;
            if owner == row.owner && bytes == row.bytes {
                Ok(Created::Ours(expires))
            } else {
                Ok(Created::Other)
            }
        })
        .await
    }

    pub(crate) async fn append_records(
        &self,
        lease: &Lease,
        records: &[Record],
    ) -> Result<(), StoreError> {
        let id = lease.operation;
        let Some(first) = records.first() else {
            // Nothing to write: the lease must still be current.
            let state = self.operation_state(id).await?;
            return match state {
                None => Err(StoreError::NotFound(id)),
                Some(state) => lease.check_current(Some(&state.lease)),
            };
        };
        if check_sequence(id, first.seq, records).is_err() {
            // Refused whatever the database holds; say why as it would.
            let Some(state) = self.operation_state(id).await? else {
                return Err(StoreError::NotFound(id));
            };
            lease.check_current(Some(&state.lease))?;
            check_sequence(id, state.next_seq, records)?;
            return Err(StoreError::backend("appending records", "records out of sequence"));
        }
        let encoded = records.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
        let finishing =
            records.iter().any(|r| matches!(r.kind, RecordKind::OperationFinished { .. }));
        let barrier = guarded_barrier(records);
        let answers = records.iter().any(|r| r.kind.answers_cancel_request());
        let settles = records.iter().any(|r| r.kind.settles()).then(|| settled(&id.to_string()));
        let mut backoff = Backoff::calls(self.inner.options.retries);
        loop {
            let append = Append {
                operation: id,
                id: id_bytes(id),
                lease_epoch: lease.epoch,
                epoch: to_i64(lease.epoch),
                owner: lease.owner.as_bytes().to_vec(),
                first_seq: first.seq,
                first: to_i64(first.seq),
                records: encoded.clone(),
                finishing,
                barrier,
                answers,
                settled: settles.clone(),
            };
            let error = match self.submit(append).await {
                Ok(()) => return Ok(()),
                Err(Failure::Refused(e)) => return Err(e),
                Err(Failure::NotWritten(e)) => e,
                Err(Failure::Unknown(e)) => {
                    match self.landed(lease, first.seq, &encoded, barrier).await {
                        Ok(Landed::Yes) => return Ok(()),
                        // Known not written: safe to send again (the append is conditional on
                        // the sequence number anyway).
                        Ok(Landed::No) => e,
                        Err(refusal) if !refusal.is_transient() => return Err(refusal),
                        Err(_) => return Err(e),
                    }
                }
            };
            if !error.is_transient() || !backoff.retry().await {
                return Err(error);
            }
        }
    }

    /// Runs one append through the writer (or alone, without group commit).
    async fn submit(&self, append: Append) -> Result<(), Failure> {
        let Some(queue) = &self.inner.writer else {
            let mut answers = writer::group(&self.inner.pool, &[&append]).await;
            return answers.pop().unwrap_or_else(|| {
                Err(Failure::NotWritten(StoreError::transient("appending records", "no answer")))
            });
        };
        let (reply, answer) = oneshot::channel();
        if queue.send(Job { append, reply }).await.is_err() {
            return Err(Failure::NotWritten(StoreError::Unavailable(
                "the store's writer task stopped".into(),
            )));
        }
        answer.await.unwrap_or_else(|_| {
            // The writer went away with the job: it may have committed it.
            Err(Failure::Unknown(StoreError::transient(
                "appending records",
                "the store's writer task stopped before answering",
            )))
        })
    }

    /// After an append whose commit answer was lost: whether its records are there, byte for
    /// byte. `Err` with a refusal when they are not and the lease, the sequence or (for an
    /// append holding a cancel barrier) a pending cancel request says why: a barrier that did
    /// not land is never sent again past a request recorded meanwhile (a resend would be refused
    /// by its own statement too; this answers without one).
    async fn landed(
        &self,
        lease: &Lease,
        first: u64,
        encoded: &[Vec<u8>],
        barrier: bool,
    ) -> Result<Landed, StoreError> {
        let id = lease.operation;
        retrying(self.inner.options.retries, "checking an append", || async {
            let context = "checking whether records were appended";
            let mut client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
            let tx = client.transaction().await.map_err(|e| pg(context, e))?;
            // FOR SHARE waits for a transaction still writing the row (a commit in flight). The
            // first columns are those `cancel_row` reads.
            let row = tx
                .query_opt(
                    "SELECT id, cancel_actor, cancel_reason, cancel_at_ms, next_seq, lease_epoch, \
                     lease_owner FROM operations WHERE id = $1 FOR SHARE",
                    &[&id_bytes(id)],
                )
                .await
                .map_err(|e| pg(context, e))?;
            let Some(row) = row else { return Err(StoreError::NotFound(id)) };
            let next: i64 = row.try_get(4).map_err(|e| pg(context, e))?;
            let epoch: i64 = row.try_get(5).map_err(|e| pg(context, e))?;
            let owner: Vec<u8> = row.try_get(6).map_err(|e| pg(context, e))?;
            let current = epoch == to_i64(lease.epoch) && owner == lease.owner.as_bytes();
            let end = first.saturating_add(encoded.len() as u64);
            if next == to_i64(first) && current {
                let pending: Option<i64> = row.try_get(3).map_err(|e| pg(context, e))?;
                if barrier && pending.is_some() {
                    let request = Box::new(cancel_row(&row)?);
                    return Err(StoreError::CancelPending { operation: id, request });
                }
                return Ok(Landed::No);
            }
            if next >= to_i64(end) {
                let stored = tx
                    .query(
                        "SELECT bytes FROM records WHERE operation = $1 AND seq >= $2 AND seq < $3 \
                         ORDER BY seq",
                        &[&id_bytes(id), &to_i64(first), &to_i64(end)],
                    )
                    .await
                    .map_err(|e| pg(context, e))?;
                let same = stored.len() == encoded.len()
                    && stored.iter().zip(encoded).all(|(row, ours)| {
                        row.try_get::<_, Vec<u8>>(0).is_ok_and(|bytes| bytes == *ours)
                    });
                if same {
                    return Ok(Landed::Yes);
                }
            }
            // Not ours: someone else's records, or a sequence number moved past ours.
            if !current {
                return Err(StoreError::Fenced {
                    operation: id,
                    epoch: lease.epoch,
                    holder: String::from_utf8_lossy(&owner).into_owned(),
                });
            }
            Err(StoreError::OutOfSequence {
                operation: id,
                expected: to_u64(next, || format!("table operations, row {id}, next_seq"))?,
                got: first,
            })
        })
        .await
    }

    pub(crate) async fn read_records(&self, id: OperationId) -> Result<Vec<Record>, StoreError> {
        let context = "reading records";
        let client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
        let statement = client
            .prepare_cached("SELECT seq, bytes FROM records WHERE operation = $1 ORDER BY seq")
            .await
            .map_err(|e| pg(context, e))?;
        let rows = client.query(&statement, &[&id_bytes(id)]).await.map_err(|e| pg(context, e))?;
        if rows.is_empty() {
            return Err(StoreError::NotFound(id));
        }
        let mut records = Vec::with_capacity(rows.len());
        for (position, row) in rows.iter().enumerate() {
            let seq: i64 = row.try_get(0).map_err(|e| pg(context, e))?;
            let bytes: Vec<u8> = row.try_get(1).map_err(|e| pg(context, e))?;
            records.push(decode_row(id, position as u64, seq, &bytes)?);
        }
        Ok(records)
    }
}

/// The record in row `(id, seq)` of `records`, read at `position`: a typed error naming the
/// table and the row when it does not decode, is not the record of that Operation and sequence
/// number, or leaves a gap.
pub(crate) fn decode_row(
    id: OperationId,
    position: u64,
    seq: i64,
    bytes: &[u8],
) -> Result<Record, StoreError> {
    let corrupt = |problem: String| StoreError::CorruptRecord {
        operation: id,
        position,
        problem: format!("table records, row (operation {id}, seq {seq}): {problem}"),
    };
    if seq != to_i64(position) {
        return Err(corrupt(format!("a gap: record {position} is missing")));
    }
    // `decode` also checks that the bytes are record `position` of `id`.
    decode(bytes, id, position).map_err(|e| match e {
        StoreError::CorruptRecord { problem, .. } => corrupt(problem),
        other => other,
    })
}

/// Whether the append must be refused while a cancel request is pending: it holds a cancel
/// barrier ([`RecordKind::is_cancel_barrier`]), even beside a record that answers the request
/// (the contract's strict rule: the answer goes in an append of its own first).
pub(crate) fn guarded_barrier(records: &[Record]) -> bool {
    records.iter().any(|r| r.kind.is_cancel_barrier())
}

/// The columns of a new Operation.
struct CreateRow {
    id: Vec<u8>,
    /// The id as text, for notifications.
    id_text: String,
    environment: Vec<u8>,
    created_ms: i64,
    kind: Vec<u8>,
    name: Vec<u8>,
    owner: Vec<u8>,
    ttl: i64,
    bytes: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use saga_core::{Outcome, RollbackCause};

    use super::*;

    fn record(kind: RecordKind) -> Record {
        Record { operation: OperationId::from_u128(1), seq: 1, at_ms: 1, kind }
    }

    fn passed() -> Record {
        record(RecordKind::PointOfNoReturnPassed { step: "s".into() })
    }

    fn refused() -> Record {
        record(RecordKind::CancelRefused {
            actor: "a".into(),
            reason: "r".into(),
            requested_ms: 1,
            refusal: "late".into(),
        })
    }

    fn finished(outcome: Outcome) -> Record {
        record(RecordKind::OperationFinished { outcome })
    }

    #[test]
    fn a_barrier_is_guarded_even_beside_an_answer() {
        let started = record(RecordKind::StepStarted { step: "s".into(), attempt: 1 });
        let rolled_back = Outcome::RolledBack {
            cause: RollbackCause::Cancelled { actor: "a".into(), reason: "r".into() },
        };
        assert!(!guarded_barrier(&[]));
        assert!(!guarded_barrier(std::slice::from_ref(&started)));
        assert!(guarded_barrier(&[started.clone(), passed()]));
        assert!(guarded_barrier(&[passed(), refused()]), "answered only after the barrier");
        assert!(guarded_barrier(&[refused(), passed()]), "answered in the same append");
        assert!(guarded_barrier(&[finished(Outcome::Succeeded)]));
        assert!(guarded_barrier(&[refused(), finished(Outcome::Succeeded)]));
        assert!(!guarded_barrier(&[finished(rolled_back)]), "a rollback's finish answers");
    }
}
