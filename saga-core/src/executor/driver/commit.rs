//! Records: applied to the state and queued, then made durable (with the log lines before
//! them), transient store errors retried.

use super::*;

impl Driver {
    /// Applies a record to the state and queues it for the next commit.
    pub(super) fn record(&mut self, kind: RecordKind) -> Result<(), Error> {
        let record =
            Record { operation: self.state.id, seq: self.state.next_seq, at_ms: now_ms(), kind };
        self.state.apply(&record)?;
        self.pending.push(record);
        Ok(())
    }

    /// Hands the log lines to the store, then makes the queued records durable; the records'
    /// durable write covers the lines written before it. A transient store error is retried
    /// with backoff (see [`STORE_RETRY`]), with a log line each time; a permanent one, or a
    /// transient one that outlasts the retries, halts the Operation.
    pub(super) async fn commit(&mut self) -> Result<(), Error> {
        let mut attempt = 0;
        loop {
            match self.try_commit().await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && attempt + 1 < STORE_RETRY.max_attempts => {
                    attempt += 1;
                    let delay = STORE_RETRY.delay(attempt);
                    self.log.line(
                        LogLevel::Warn,
                        None,
                        format!(
                            "store write failed, retrying in {:.1} s (attempt {} of {}): {e}",
                            delay.as_secs_f64(),
                            attempt + 1,
                            STORE_RETRY.max_attempts
                        ),
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(super) async fn try_commit(&mut self) -> Result<(), Error> {
        // Once the lease may have passed to another executor, nothing is sent (the store would
        // refuse the lines and the records anyway: both are fenced).
        if tokio::time::Instant::now() >= self.lease_deadline() {
            return Err(Error::LeaseExpiring {
                operation: self.state.id,
                since: self.clock.granted().elapsed(),
            });
        }
        self.log.flush(self.shared.store.as_ref(), &self.lease).await?;
        if !self.pending.is_empty() {
            match self.shared.store.append(&self.lease, &self.pending).await {
                Ok(()) => {}
                // An earlier attempt that reported a transient failure may have been written
                // after all: the store then expects the record after them.
                Err(crate::store::StoreError::OutOfSequence { expected, .. })
                    if already_stored(self.shared.store.as_ref(), &self.pending, expected)
                        .await? => {}
                Err(e) => return Err(e.into()),
            }
            // Not `clear()`: the buffer would stay allocated while the steps run, a few hundred
            // bytes per Operation in flight.
            self.pending = Vec::new();
        }
        Ok(())
    }
}

/// How the driver retries a transient store error: ten attempts, about 30 s in all, then it
/// halts the Operation with that error.
const STORE_RETRY: crate::RetryPolicy = crate::RetryPolicy {
    max_attempts: 10,
    initial_delay: Duration::from_millis(50),
    max_delay: Duration::from_secs(8),
    multiplier: 2.0,
    max_elapsed: None,
};

/// Whether the store holds exactly the `pending` records already (an append that failed
/// transiently but was written), given the sequence number the store expects next.
async fn already_stored(
    store: &dyn crate::store::Store,
    pending: &[Record],
    expected: u64,
) -> Result<bool, Error> {
    let Some(first) = pending.first() else { return Ok(true) };
    if expected != first.seq + pending.len() as u64 {
        return Ok(false);
    }
    let stored = store.read(first.operation).await?;
    let from = usize::try_from(first.seq).unwrap_or(usize::MAX);
    Ok(stored.get(from..).is_some_and(|tail| {
        tail.len() == pending.len()
            && tail.iter().zip(pending).all(|(a, b)| a.kind == b.kind && a.seq == b.seq)
    }))
}
