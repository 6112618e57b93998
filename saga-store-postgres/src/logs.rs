//! Operation log lines: append, read, purge by age.

use std::collections::BTreeMap;

use saga_core::log::LogLine;
use saga_core::store::{StoreError, FORMAT_VERSION};
use saga_core::OperationId;

use crate::connect::PostgresStore;
use crate::error::{corrupt, pg, pool_error};
use crate::sql::{id_bytes, to_i64};

/// A log line's bytes: the format version byte, then postcard.
pub(crate) fn encode_line(line: &LogLine) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(line, vec![FORMAT_VERSION])
        .map_err(|e| StoreError::backend(format!("encoding log line {}", line.seq), e))
}

/// The line in row `(id, n)` of `log_lines`; a typed error naming the row when it does not
/// decode or is another line.
pub(crate) fn decode_line(id: OperationId, n: i64, bytes: &[u8]) -> Result<LogLine, StoreError> {
    let place = || format!("table log_lines, row (operation {id}, n {n})");
    let (&version, body) = bytes.split_first().ok_or_else(|| corrupt(place(), "empty value"))?;
    if version > FORMAT_VERSION {
        return Err(StoreError::NewerFormat { found: version, supported: FORMAT_VERSION });
    }
    if version == 0 {
        return Err(corrupt(place(), "format version 0 does not exist"));
    }
    let (line, rest): (LogLine, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| corrupt(place(), e.to_string()))?;
    if !rest.is_empty() {
        return Err(corrupt(place(), format!("{} trailing bytes", rest.len())));
    }
    if line.operation != id || to_i64(line.seq) != n {
        return Err(corrupt(
            place(),
            format!("the bytes are line {} of operation {}", line.seq, line.operation),
        ));
    }
    Ok(line)
}

impl PostgresStore {
    /// Writes the lines (a line of a number already stored is dropped: a stored line is never
    /// replaced); harmless to repeat.
    ///
    /// Committed with `synchronous_commit = off` for this transaction only: the store contract
    /// lets log lines wait for the next durable write, and PostgreSQL's log is sequential, so the
    /// next synchronous commit of any session (the Operation's next append) makes them durable
    /// too. That saves one WAL flush per step; the records' commits stay synchronous.
    pub(crate) async fn append_log_once(
        &self,
        id: OperationId,
        lines: &[LogLine],
    ) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        // One row per number, the last line given winning (a statement may not write a row
        // twice).
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
        let ns: Vec<i64> = rows.keys().copied().collect();
        let ats: Vec<i64> = rows.values().map(|(at, _)| *at).collect();
        let bytes: Vec<Vec<u8>> = rows.into_values().map(|(_, b)| b).collect();
        let context = "appending log lines";
        let mut client = self.inner.pool.get().await.map_err(|e| pool_error(context, e))?;
        let statement = client
            .prepare_cached(
                "INSERT INTO log_lines (operation, n, at_ms, bytes) \
                 SELECT $1, l.n, l.at_ms, l.bytes \
                   FROM unnest($2::bigint[], $3::bigint[], $4::bytea[]) AS l(n, at_ms, bytes) \
                 ON CONFLICT (operation, n) DO NOTHING",
            )
            .await
            .map_err(|e| pg(context, e))?;
        let tx = client.transaction().await.map_err(|e| pg(context, e))?;
        let id = id_bytes(id);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&id, &ns, &ats, &bytes];
        let (relaxed, inserted) = tokio::join!(
            tx.batch_execute("SET LOCAL synchronous_commit = off"),
            tx.execute(&statement, &params),
        );
        relaxed.map_err(|e| pg(context, e))?;
        inserted.map_err(|e| pg(context, e))?;
        tx.commit().await.map_err(|e| pg(context, e))?;
        Ok(())
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
