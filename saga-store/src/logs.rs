//! Operation log lines: append, read, purge by age.

use saga_core::log::LogLine;
use saga_core::store::{Lease, StoreError};
use saga_core::OperationId;

use crate::codec::{check_index_value, decode_line, encode_line, index_value, sled_error};
use crate::keys;
use crate::open::Trees;

/// How many time-index entries a purge handles per sled batch.
const PURGE_CHUNK: usize = 1024;

/// What an entry of the `logs_by_time` tree is, for errors.
pub(crate) fn time_entry(id: OperationId, seq: u64) -> String {
    format!("the time index entry of log line {seq} of operation {id}")
}

impl Trees {
    /// Writes the log lines of the lease's Operation and their time-index entries (not synced:
    /// they reach the write-ahead log with the next ticket), fenced like an append: refused with
    /// [`StoreError::Fenced`] when the lease is not current, and with a typed error when a line
    /// belongs to another Operation, writing nothing either way. A line whose number is stored
    /// already is dropped (the stored line stays).
    pub(crate) fn append_log(&self, lease: &Lease, lines: &[LogLine]) -> Result<(), StoreError> {
        let id = lease.operation;
        let mut entries = Vec::with_capacity(lines.len());
        for line in lines {
            if line.operation != id {
                return Err(StoreError::backend(
                    format!("appending log lines to operation {id}"),
                    format!("log line {} belongs to operation {}", line.seq, line.operation),
                ));
            }
            entries.push((
                keys::seq_key(id, line.seq),
                keys::time_key(line.at_ms, id, line.seq),
                encode_line(line)?,
            ));
        }
        // Checked and written under the write lock, so that a claim between the check and the
        // write cannot let a stale owner's line in, and two writers of one number cannot both
        // find it free.
        let _writing = self.lock();
        lease.check_current(self.lease(id)?.as_ref())?;
        // Plain inserts rather than a sled transaction, which would seal and write sled's IO
        // buffer with a disk wait (see `append`). The time-index entry goes first: a crash between
        // the two leaves an entry without a line, which `purge_logs` drops, never a line that no
        // purge would find.
        for (key, time_key, bytes) in &entries {
            let stored =
                self.logs.contains_key(key).map_err(|e| sled_error("reading a log line", e))?;
            if stored {
                continue;
            }
            self.logs_by_time
                .insert(&time_key[..], &index_value(time_key)[..])
                .map_err(|e| sled_error("appending log lines", e))?;
            self.logs
                .insert(&key[..], bytes.as_slice())
                .map_err(|e| sled_error("appending log lines", e))?;
        }
        Ok(())
    }

    /// The Operation's stored lines, in order.
    pub(crate) fn read_log(&self, id: OperationId) -> Result<Vec<LogLine>, StoreError> {
        self.logs
            .scan_prefix(keys::operation_key(id))
            .map(|entry| {
                let (key, bytes) = entry.map_err(|e| sled_error("reading log lines", e))?;
                let (_, seq) = keys::parse_seq_key(keys::LOGS, &key)?;
                decode_line(&bytes, id, seq)
            })
            .collect()
    }

    /// Deletes the lines written before `before_ms`, walking the time index only up to there.
    /// A line stored under the same key since (its Operation's lines restarted after a purge) is
    /// kept. Returns how many lines went.
    pub(crate) fn purge_logs(&self, before_ms: u64) -> Result<u64, StoreError> {
        let mut purged = 0;
        loop {
            let chunk: Vec<(sled::IVec, sled::IVec)> = self
                .logs_by_time
                .range(..before_ms.to_be_bytes())
                .take(PURGE_CHUNK)
                .collect::<Result<_, _>>()
                .map_err(|e| sled_error("reading the log time index", e))?;
            if chunk.is_empty() {
                return Ok(purged);
            }
            let mut lines = crate::overlay::Batch::default();
            let mut times = crate::overlay::Batch::default();
            for (time_key, value) in &chunk {
                times.remove(time_key);
                let Ok((id, seq)) = keys::parse_time_key(time_key) else {
                    let key = keys::hex(time_key);
                    tracing::warn!(%key, "dropping a malformed log time index key");
                    continue;
                };
                // The line it names is judged by its own time, below: a damaged entry is
                // dropped like the others.
                if let Err(e) =
                    check_index_value(keys::LOGS_BY_TIME, time_key, value, &time_entry(id, seq))
                {
                    tracing::warn!(error = %e, "dropping a damaged log time index entry");
                }
                let key = keys::seq_key(id, seq);
                let stored = self.logs.get(key).map_err(|e| sled_error("reading a log line", e))?;
                if let Some(bytes) = stored {
                    let old = decode_line(&bytes, id, seq).map_or(true, |l| l.at_ms < before_ms);
                    if old {
                        lines.remove(&key[..]);
                        purged += 1;
                    }
                }
            }
            self.logs.apply_batch(lines).map_err(|e| sled_error("purging log lines", e))?;
            self.logs_by_time
                .apply_batch(times)
                .map_err(|e| sled_error("purging the log time index", e))?;
        }
    }

    /// Removes every line of an Operation and their time-index entries.
    pub(crate) fn remove_log(&self, id: OperationId) -> Result<(), StoreError> {
        let mut lines = crate::overlay::Batch::default();
        let mut times = crate::overlay::Batch::default();
        for entry in self.logs.scan_prefix(keys::operation_key(id)) {
            let (key, bytes) = entry.map_err(|e| sled_error("reading log lines", e))?;
            if let Ok((_, seq)) = keys::parse_seq_key(keys::LOGS, &key) {
                // An undecodable line leaves its time entry behind; the next purge drops it.
                if let Ok(line) = decode_line(&bytes, id, seq) {
                    times.remove(&keys::time_key(line.at_ms, id, seq)[..]);
                }
            }
            lines.remove(key);
        }
        self.logs.apply_batch(lines).map_err(|e| sled_error("deleting log lines", e))?;
        self.logs_by_time
            .apply_batch(times)
            .map_err(|e| sled_error("deleting the log time index", e))
    }
}
