//! Operation log lines: append (fenced by the lease), read, purge by age.

use std::collections::BTreeMap;

use saga_core::log::LogLine;
use saga_core::store::{decode_value, encode_value, Lease, StoreError};
use saga_core::OperationId;
use tokio_postgres::types::ToSql;

use crate::connect::PostgresStore;
use crate::error::{corrupt, pg, pool_error};
use crate::retry::Backoff;
use crate::sql::{id_bytes, to_i64};

/// A log line's bytes: the format version byte, postcard, then a CRC32C of the bytes before it
/// ([`encode_value`]; the line names its Operation and number, which reading compares with the
/// row).
pub(crate) fn encode_line(line: &LogLine) -> Result<Vec<u8>, StoreError> {
    encode_value(line, &[], &format!("log line {} of operation {}", line.seq, line.operation))
}

/// The line in row `(id, n)` of `log_lines`; a typed error naming the row when it does not
/// decode or is another line.
pub(crate) fn decode_line(id: OperationId, n: i64, bytes: &[u8]) -> Result<LogLine, StoreError> {
    let place = || format!("table log_lines, row (operation {id}, n {n})");
    let line: LogLine = decode_value(bytes, &[], &place)?;
    if line.operation != id || to_i64(line.seq) != n {
        return Err(corrupt(
            place(),
            format!("the bytes are line {} of operation {}", line.seq, line.operation),
        ));
    }
    Ok(line)
}

/// The insert of log lines, fenced: the lease is checked with a share lock on the Operation's
/// row, which a claim (an update of the row) waits for and which waits for a claim in flight (then
/// re-checks the lease on the row the claim committed). So lines are either committed before a
/// claim by another owner, or refused; never written after it. Returns 1 when the lease is
/// current (and the lines whose numbers were free are written), 0 when it is not.
const APPEND_LOG: &str = "
WITH lease AS (
    SELECT id FROM operations
     WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $3
       FOR SHARE
), written AS (
    INSERT INTO log_lines (operation, n, at_ms, bytes)
    SELECT lease.id, l.n, l.at_ms, l.bytes
      FROM lease, unnest($4::bigint[], $5::bigint[], $6::bytea[]) AS l(n, at_ms, bytes)
    ON CONFLICT (operation, n) DO NOTHING
)
SELECT count(*) FROM lease";

/// Log lines to write, as columns: one row per number (the last line given winning: a
/// statement may not write a row twice).
struct Lines {
    ns: Vec<i64>,
    ats: Vec<i64>,
    bytes: Vec<Vec<u8>>,
}

impl PostgresStore {
    /// Writes the lines under the lease (see [`APPEND_LOG`]): [`StoreError::Fenced`], writing
    /// nothing, when it is not current; a line whose number is already stored is dropped (a
    /// stored line is never replaced). Retried after a transient error; a retry that is fenced
    /// answers `Ok` when the lines are there byte for byte (an earlier try wrote them, before
    /// the claim that fenced the retry, and its answer was lost).
    pub(crate) async fn append_log_lines(
        &self,
        lease: &Lease,
        lines: &[LogLine],
    ) -> Result<(), StoreError> {
        let id = lease.operation;
        let mut rows = BTreeMap::new();
        for line in lines {
            if line.operation != id {
                return Err(StoreError::backend(
                    format!("appending log lines to operation {id}"),
                    format!("log line {} belongs to operation {}", line.seq, line.operation),
                ));
            }
            rows.insert(to_i64(line.seq), (to_i64(line.at_ms), encode_line(line)?));
        }
        let lines = Lines {
            ns: rows.keys().copied().collect(),
            ats: rows.values().map(|(at, _)| *at).collect(),
            bytes: rows.into_values().map(|(_, b)| b).collect(),
        };
        let mut backoff = Backoff::calls(self.inner.options.retries);
        loop {
            let error = match self.append_log_once(lease, &lines).await {
                Ok(()) => return Ok(()),
                Err(e @ StoreError::Fenced { .. }) if backoff.retries() > 0 => {
                    return match self.lines_stored(id, &lines).await {
                        Ok(true) => Ok(()),
                        Ok(false) | Err(_) => Err(e),
                    };
                }
                Err(e) => e,
            };
            if !error.is_transient() || !backoff.retry().await {
                return Err(error);
            }
            tracing::debug!(error = %error, retry = backoff.retries(), "retried appending log lines");
        }
    }

    /// One try of [`append_log_lines`](Self::append_log_lines).
    ///
    /// Committed with `synchronous_commit = off` for this transaction only: the store contract
    /// lets log lines wait for the next durable write, and PostgreSQL's log is sequential, so the
    /// next synchronous commit of any session (the Operation's next append) makes them durable
    /// too. That saves one WAL flush per step; the records' commits stay synchronous. (A crash of
    /// the server before any later commit flushes them may lose the last lines, written within
    /// about three times `wal_writer_delay`; never a record.) Visibility is not delayed: other sessions see the lines at commit.
    async fn append_log_once(&self, lease: &Lease, lines: &Lines) -> Result<(), StoreError> {
        let id = lease.operation;
        let context = "appending log lines";
        let mut client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
        let statement = client.prepare_cached(APPEND_LOG).await.map_err(|e| pg(context, e))?;
        let tx = client.transaction().await.map_err(|e| pg(context, e))?;
        let key = id_bytes(id);
        let epoch = to_i64(lease.epoch);
        let owner = lease.owner.as_bytes().to_vec();
        let params: [&(dyn ToSql + Sync); 6] =
            [&key, &epoch, &owner, &lines.ns, &lines.ats, &lines.bytes];
        let (relaxed, current) = tokio::join!(
            tx.batch_execute("SET LOCAL synchronous_commit = off"),
            tx.query_one(&statement, &params),
        );
        relaxed.map_err(|e| pg(context, e))?;
        let current: i64 = current.and_then(|row| row.try_get(0)).map_err(|e| pg(context, e))?;
        if current == 0 {
            // Fenced: who holds it now, read in the same transaction.
            let holder = tx
                .query_opt("SELECT lease_owner FROM operations WHERE id = $1", &[&key])
                .await
                .map_err(|e| pg(context, e))?;
            let holder = match holder {
                None => "nobody".to_owned(),
                Some(row) => {
                    let holder: Vec<u8> = row.try_get(0).map_err(|e| pg(context, e))?;
                    String::from_utf8_lossy(&holder).into_owned()
                }
            };
            return Err(StoreError::Fenced { operation: id, epoch: lease.epoch, holder });
        }
        tx.commit().await.map_err(|e| pg(context, e))?;
        Ok(())
    }

    /// Whether every one of `lines` is stored, byte for byte.
    async fn lines_stored(&self, id: OperationId, lines: &Lines) -> Result<bool, StoreError> {
        let context = "checking whether log lines were appended";
        let client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
        let rows = client
            .query(
                "SELECT n, bytes FROM log_lines WHERE operation = $1 AND n = ANY($2) ORDER BY n",
                &[&id_bytes(id), &lines.ns],
            )
            .await
            .map_err(|e| pg(context, e))?;
        let stored = rows
            .iter()
            .map(|row| Ok((row.try_get::<_, i64>(0)?, row.try_get::<_, Vec<u8>>(1)?)))
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(|e| pg(context, e))?;
        let ours: Vec<(i64, Vec<u8>)> =
            lines.ns.iter().copied().zip(lines.bytes.iter().cloned()).collect();
        Ok(stored == ours)
    }

    pub(crate) async fn read_log_once(&self, id: OperationId) -> Result<Vec<LogLine>, StoreError> {
        let context = "reading log lines";
        let client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
        let rows = client
            .query(
                "SELECT n, bytes FROM log_lines WHERE operation = $1 ORDER BY n",
                &[&id_bytes(id)],
            )
            .await
            .map_err(|e| pg(context, e))?;
        rows.iter()
            .map(|row| {
                let n: i64 = row.try_get(0).map_err(|e| pg(context, e))?;
                let bytes: Vec<u8> = row.try_get(1).map_err(|e| pg(context, e))?;
                decode_line(id, n, &bytes)
            })
            .collect()
    }

    /// Deletes the lines written before `before_ms`, through the `at_ms` index. Not retried
    /// after its commit answer is lost: a retry would count fewer.
    pub(crate) async fn purge_logs_once(&self, before_ms: u64) -> Result<u64, StoreError> {
        let context = "purging log lines";
        let client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
        // Times are stored saturated at i64::MAX: a bound past it takes them all.
        let purged = if before_ms > i64::MAX as u64 {
            client.execute("DELETE FROM log_lines", &[]).await
        } else {
            client.execute("DELETE FROM log_lines WHERE at_ms < $1", &[&to_i64(before_ms)]).await
        };
        purged.map_err(|e| pg(context, e))
    }
}
