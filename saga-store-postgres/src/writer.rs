//! Group commit: concurrent appends (of different Operations) share one transaction.
//!
//! One writer task takes every append waiting in its queue (up to `max_group`), runs them in one
//! transaction, each behind a `SAVEPOINT` so that one that is refused (fenced, out of sequence)
//! or fails alone rolls back alone, commits once, and answers each waiter. While it commits, the
//! next group gathers. Each append is one statement that checks the lease, the sequence number
//! and (for an append holding a cancel barrier) that no cancel request is pending, and writes
//! the records only when all hold, so a refused append writes nothing even before its savepoint
//! is rolled back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use deadpool_postgres::Pool;
use saga_core::store::StoreError;
use saga_core::OperationId;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

use crate::cancels::cancel_row;
use crate::error::{is_transient, pg, pool_error};
use crate::listener::WAKE_CHANNEL;
use crate::sql::to_u64;

/// One append: its lease and its records, encoded.
#[derive(Debug)]
pub(crate) struct Append {
    pub(crate) operation: OperationId,
    pub(crate) id: Vec<u8>,
    /// The lease's epoch, as presented and as a column value.
    pub(crate) lease_epoch: u64,
    pub(crate) epoch: i64,
    pub(crate) owner: Vec<u8>,
    /// The sequence number of the first record, as given and as a column value.
    pub(crate) first_seq: u64,
    pub(crate) first: i64,
    pub(crate) records: Vec<Vec<u8>>,
    /// Whether a record is `OperationFinished`.
    pub(crate) finishing: bool,
    /// Whether a record is a cancel barrier ([`RecordKind::is_cancel_barrier`]): the append is
    /// refused while a cancel request is pending.
    ///
    /// [`RecordKind::is_cancel_barrier`]: saga_core::log::RecordKind::is_cancel_barrier
    pub(crate) barrier: bool,
    /// Whether a record answers the pending cancel request
    /// ([`RecordKind::answers_cancel_request`]): the append clears it.
    ///
    /// [`RecordKind::answers_cancel_request`]: saga_core::log::RecordKind::answers_cancel_request
    pub(crate) answers: bool,
    /// The wake-up notified at commit when the append writes (an Operation that finished or
    /// needs attention: `settled <id>`, see [`crate::listener`]), if any.
    pub(crate) settled: Option<String>,
}

/// Why an append was not acknowledged.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The database refused it (fenced, out of sequence, not found, or an error of its own
    /// statement): nothing was written, and trying again gives the same answer.
    Refused(StoreError),
    /// Its transaction did not commit: nothing was written.
    NotWritten(StoreError),
    /// The commit was sent but its answer was lost: the records may or may not be there.
    Unknown(StoreError),
}

/// An append waiting for the writer, and where its answer goes.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) append: Append,
    pub(crate) reply: oneshot::Sender<Result<(), Failure>>,
}

/// The append, in one statement: the lease, the sequence number and, for an append holding a
/// cancel barrier (`$7`), that no cancel request is pending, checked; the records written; the
/// finish marked (`$6`: the Operation leaves the unfinished and resource indexes); the pending
/// cancel request cleared by an append that answers it (`$8`); and the Operation's settling
/// notified (`$9`: `pg_notify($10, $11)`, sent at commit, and dropped with the savepoint if the
/// append rolls back). Returns 1 when it wrote, 0 when the checks failed.
///
/// The check of the pending request and `request_cancel`'s recording of one are both
/// conditional updates of the Operation's row: the row lock orders them, and the second
/// re-evaluates its condition on the row the first committed (`READ COMMITTED`). So either the
/// barrier commits first and the request is recorded after it, or the request commits first and
/// the barrier is refused; never both, never neither.
const APPEND: &str = "
WITH op AS (
    UPDATE operations
       SET next_seq = next_seq + cardinality($5::bytea[]),
           finished = finished OR $6,
           cancel_actor = CASE WHEN $8 THEN NULL ELSE cancel_actor END,
           cancel_reason = CASE WHEN $8 THEN NULL ELSE cancel_reason END,
           cancel_at_ms = CASE WHEN $8 THEN NULL ELSE cancel_at_ms END
     WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $3 AND next_seq = $4
       AND (NOT $7 OR cancel_at_ms IS NULL)
 RETURNING id, CASE WHEN $9 THEN pg_notify($10, $11) END
), written AS (
    INSERT INTO records (operation, seq, bytes)
    SELECT op.id, $4 + r.ord - 1, r.bytes
      FROM op, unnest($5::bytea[]) WITH ORDINALITY AS r(bytes, ord)
)
SELECT count(*) FROM op";

/// Why the append's checks failed, read in the same transaction: the columns of
/// [`cancel_row`] first, then the lease and the sequence number.
const WHY: &str =
    "SELECT id, cancel_actor, cancel_reason, cancel_at_ms, lease_epoch, lease_owner, \
                   next_seq FROM operations WHERE id = $1";

/// How the writer shared its transactions so far, as
/// [`PostgresStore::group_commit_stats`](crate::PostgresStore::group_commit_stats) tells.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Transactions the writer ran.
    pub groups: u64,
    /// Appends they held.
    pub appends: u64,
    /// The most appends one transaction held.
    pub largest: u64,
}

/// The writer's counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    groups: AtomicU64,
    appends: AtomicU64,
    largest: AtomicU64,
}

impl Counters {
    pub(crate) fn get(&self) -> GroupCommitStats {
        GroupCommitStats {
            groups: self.groups.load(Ordering::Relaxed),
            appends: self.appends.load(Ordering::Relaxed),
            largest: self.largest.load(Ordering::Relaxed),
        }
    }
}

/// The writer task: runs until every sender is gone.
pub(crate) async fn run(
    pool: Pool,
    mut queue: mpsc::Receiver<Job>,
    max_group: usize,
    counters: Arc<Counters>,
) {
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < max_group {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // A waiter that gave up (its future was dropped) needs no write: its outcome is unknown
        // to it either way.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let appends: Vec<&Append> = jobs.iter().map(|j| &j.append).collect();
        counters.groups.fetch_add(1, Ordering::Relaxed);
        counters.appends.fetch_add(appends.len() as u64, Ordering::Relaxed);
        counters.largest.fetch_max(appends.len() as u64, Ordering::Relaxed);
        let answers = group(&pool, &appends).await;
        for (job, answer) in jobs.into_iter().zip(answers) {
            let _ = job.reply.send(answer);
        }
    }
}

/// Runs `appends` in one transaction, a savepoint each, and commits: one answer per append.
pub(crate) async fn group(pool: &Pool, appends: &[&Append]) -> Vec<Result<(), Failure>> {
    let context = "appending records";
    let all = |e: StoreError| -> Vec<Result<(), Failure>> {
        let mut out = Vec::with_capacity(appends.len());
        for _ in appends {
            out.push(Err(Failure::NotWritten(clone_error(&e))));
        }
        out
    };
    let mut client = match pool.get().await {
        Ok(client) => client,
        Err(e) => return all(pool_error(context, e)),
    };
    let tx = match client.transaction().await {
        Ok(tx) => tx,
        Err(e) => return all(pg(context, e)),
    };
    let (append, why) = match tokio::try_join!(tx.prepare_cached(APPEND), tx.prepare_cached(WHY)) {
        Ok(statements) => statements,
        Err(e) => return all(pg(context, e)),
    };
    let total = appends.len();
    // `None`: written (so far); `Some`: refused.
    let mut answers: Vec<Option<Failure>> = (0..total).map(|_| None).collect();
    let mut unexplained = Vec::new();
    let (tx_ref, append_ref) = (&tx, &append);
    let mut start = 0;
    while start < total {
        // Every remaining append sent at once (savepoint, then statement, each), answered in
        // one round trip. An error aborts the transaction from there: roll back to the failing
        // append's savepoint and send the ones after it again.
        let sent = appends[start..].iter().enumerate().map(|(j, a)| {
            let savepoint = format!("SAVEPOINT a{}", start + j);
            async move {
                let settles = a.settled.is_some();
                let payload = a.settled.as_deref().unwrap_or("");
                let params: [&(dyn ToSql + Sync); 11] = [
                    &a.id,
                    &a.epoch,
                    &a.owner,
                    &a.first,
                    &a.records,
                    &a.finishing,
                    &a.barrier,
                    &a.answers,
                    &settles,
                    &WAKE_CHANNEL,
                    &payload,
                ];
                tokio::join!(
                    tx_ref.batch_execute(&savepoint),
                    tx_ref.query_one(append_ref, &params)
                )
            }
        });
        let results = futures::future::join_all(sent).await;
        let mut next = total;
        for (j, (savepoint, written)) in results.into_iter().enumerate() {
            let i = start + j;
            if let Err(e) = savepoint {
                return fail_group(answers, i, pg(context, e));
            }
            match written.and_then(|row| row.try_get::<_, i64>(0)) {
                Ok(1) => {}
                Ok(_) => unexplained.push(i),
                Err(e) if is_transient(&e) => return fail_group(answers, i, pg(context, e)),
                Err(e) => {
                    // Its statement failed (say, a record already at a sequence number that
                    // `next_seq` says is free: a damaged Operation). Only it rolls back.
                    if let Err(e) = tx.batch_execute(&format!("ROLLBACK TO SAVEPOINT a{i}")).await {
                        return fail_group(answers, i, pg(context, e));
                    }
                    let operation = appends[i].operation;
                    let e = pg(format!("appending records to operation {operation}"), e);
                    answers[i] = Some(Failure::Refused(e));
                    next = i + 1;
                    break;
                }
            }
        }
        start = next;
    }
    // Why the checks of the appends that wrote nothing failed: read now, in a statement of its
    // own (the append's snapshot may predate the claim that fenced it).
    for i in unexplained {
        let a = appends[i];
        match tx.query_opt(&why, &[&a.id]).await {
            Ok(row) => answers[i] = Some(refusal(a, row)),
            Err(e) => return fail_group(answers, i, pg(context, e)),
        }
    }
    let answers: Vec<Result<(), Failure>> =
        answers.into_iter().map(|a| a.map_or(Ok(()), Err)).collect();
    if answers.iter().all(Result::is_err) {
        // Nothing to commit.
        drop(tx);
        return answers;
    }
    match tx.commit().await {
        Ok(()) => answers,
        Err(e) => {
            // An answer from the server (a SQLSTATE) that is not about the connection means it
            // did not commit; a lost or terminated connection leaves the outcome unknown (the
            // caller then reads what landed).
            let known = e.code().is_some() && !is_transient(&e);
            let mut original = Some(pg("committing appended records", e));
            let copy = original.as_ref().map(clone_error);
            answers
                .into_iter()
                .map(|answer| {
                    let Ok(()) = answer else { return answer };
                    let e = original.take().or_else(|| copy.as_ref().map(clone_error));
                    let e =
                        e.unwrap_or_else(|| StoreError::transient("committing", "commit failed"));
                    if known {
                        Err(Failure::NotWritten(e))
                    } else {
                        Err(Failure::Unknown(e))
                    }
                })
                .collect()
        }
    }
}

/// The group's transaction failed before its commit: nothing of it was written. The appends
/// already refused keep their answers; every other one is not written. The append that met the
/// error (`at`) gets it, with PostgreSQL's error as its source; the others a copy.
fn fail_group(answers: Vec<Option<Failure>>, at: usize, e: StoreError) -> Vec<Result<(), Failure>> {
    let copy = clone_error(&e);
    let mut original = Some(e);
    answers
        .into_iter()
        .enumerate()
        .map(|(i, answer)| match answer {
            Some(refused @ Failure::Refused(_)) => Err(refused),
            _ if i == at => {
                Err(Failure::NotWritten(original.take().unwrap_or_else(|| clone_error(&copy))))
            }
            _ => Err(Failure::NotWritten(clone_error(&copy))),
        })
        .collect()
}

/// Why an append's checks failed, from its Operation's row as [`WHY`] reads it (`None`: no
/// such Operation): fenced, out of sequence, or a barrier while a cancel request is pending, in
/// that order. A row that passes every check now (it changed since the append's statement, which
/// only the Operation's own writer or a repair does) is a transient failure: nothing was
/// written, and the append may be sent again.
pub(crate) fn refusal(a: &Append, row: Option<tokio_postgres::Row>) -> Failure {
    let Some(row) = row else { return Failure::Refused(StoreError::NotFound(a.operation)) };
    let place = || format!("table operations, row {}", a.operation);
    let parsed = (|| {
        let at: Option<i64> = row.try_get(3)?;
        let epoch: i64 = row.try_get(4)?;
        let owner: Vec<u8> = row.try_get(5)?;
        let next: i64 = row.try_get(6)?;
        Ok::<_, tokio_postgres::Error>((at, epoch, owner, next))
    })();
    let (pending_at, epoch, owner, next) = match parsed {
        Ok(values) => values,
        Err(e) => return Failure::Refused(StoreError::backend(place(), e)),
    };
    if epoch != a.epoch || owner != a.owner {
        return Failure::Refused(StoreError::Fenced {
            operation: a.operation,
            epoch: a.lease_epoch,
            holder: String::from_utf8_lossy(&owner).into_owned(),
        });
    }
    if next != a.first {
        return Failure::Refused(match to_u64(next, place) {
            Ok(expected) => {
                StoreError::OutOfSequence { operation: a.operation, expected, got: a.first_seq }
            }
            Err(e) => e,
        });
    }
    if a.barrier && pending_at.is_some() {
        return Failure::Refused(match cancel_row(&row) {
            Ok(request) => {
                StoreError::CancelPending { operation: a.operation, request: Box::new(request) }
            }
            Err(e) => e,
        });
    }
    Failure::NotWritten(StoreError::transient(
        format!("appending records to operation {}", a.operation),
        "the append's checks failed, but its Operation's row passes them now",
    ))
}

/// A copy of a group's error for each of its waiters: the same variant and text, with the
/// original's message as the source.
pub(crate) fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Transient { context, source } => {
            StoreError::transient(context.clone(), chain(source.as_ref()))
        }
        StoreError::Backend { context, source } => {
            StoreError::backend(context.clone(), chain(source.as_ref()))
        }
        StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
        other => StoreError::backend("appending records", other.to_string()),
    }
}

/// An error and its sources, as one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}
