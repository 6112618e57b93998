//! Records: create, append, read, and the unfinished list.

use saga_core::log::{Record, RecordKind};
use saga_core::store::{
    check_create, check_sequence, decode, encode, Creation, Lease, Listing, StoreError,
};
use saga_core::OperationId;

use crate::acks::Acks;
use crate::codec::{check_index_value, decode_cancel, index_value, sled_error};
use crate::keys;
use crate::open::Trees;

/// What [`Trees::append`] wrote.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Appended {
    /// The sequence number of the first record written.
    pub(crate) from: u64,
    /// The ticket of the log entry holding the write (with `acks`; not recorded there yet).
    pub(crate) ticket: Option<u64>,
}

/// Refuses the append of `records` with [`StoreError::CancelPending`] if it holds a cancel
/// barrier while the stored request (`stored`) is pending, even beside a record that answers
/// the request: the answer goes in an append of its own first (the contract's strict rule).
fn refuse_barrier(id: OperationId, records: &[Record], stored: &[u8]) -> Result<(), StoreError> {
    if records.iter().any(|r| r.kind.is_cancel_barrier()) {
        // A request that does not decode is still pending: refused all the same, with the
        // decoding error, which names it.
        let request = Box::new(decode_cancel(stored, id)?);
        return Err(StoreError::CancelPending { operation: id, request });
    }
    Ok(())
}

/// What an entry of the `unfinished` tree is, for errors.
pub(crate) fn unfinished_mark(id: OperationId) -> String {
    format!("the unfinished mark of operation {id}")
}

impl Trees {
    /// Writes an Operation's first record, its unfinished mark, its index entry, its queue entry
    /// and its first lease (one log entry). With `acks`, the write is registered there (at
    /// sequence number 0) before it is made, and its ticket is taken (and recorded there) before
    /// the write lock is released: returned with the lease.
    pub(crate) fn create(
        &self,
        record: &Record,
        owner: &str,
        ttl: std::time::Duration,
        acks: Option<&Acks>,
    ) -> Result<(Lease, Option<u64>), StoreError> {
        let id = record.operation;
        let Creation { environment, resource } = check_create(record)?;
        let bytes = encode(record)?;
        let index_key = keys::environment_key(environment, record.at_ms, id);
        let queue_key = keys::resource_key(resource, id);
        let _writing = self.lock();
        if self.next_seq(id)?.is_some() {
            return Err(StoreError::AlreadyExists(id));
        }
        let lease =
            Lease::claim_after(None, id, owner, ttl, saga_core::Timestamp::now().unix_ms())?;
        let lease_bytes = crate::codec::encode_lease(&lease)?;
        let op_key = keys::operation_key(id);
        if let Some(acks) = acks {
            acks.begin(id, 0, false);
        }
        // Plain inserts under the write lock, not a sled transaction: a transaction writes sled's
        // IO buffer and waits for the disk at its commit, with the write lock held, which queued
        // every other writer behind it. Atomicity comes from elsewhere: readers hide the write
        // until it is acknowledged (`acks`), and its changes are one entry of the write-ahead
        // log (its ticket is taken under the write lock), replayed whole. The record goes last:
        // what a crash can leave of an unacknowledged create is index entries naming no
        // records, which `check` removes, never an Operation that nobody was told exists. A
        // failed insert leaves the write registered, never acknowledged.
        let insert = |tree: &crate::overlay::Logged, key: &[u8], value: &[u8]| {
            tree.insert(key, value).map(drop).map_err(|e| sled_error("creating an operation", e))
        };
        insert(&self.unfinished, &op_key, &index_value(&op_key))?;
        insert(&self.by_environment, &index_key, &index_value(&index_key))?;
        insert(&self.leases, &op_key, &lease_bytes)?;
        insert(&self.by_resource, &queue_key, &index_value(&queue_key))?;
        insert(&self.records, &keys::seq_key(id, 0), &bytes)?;
        let ticket = acks.map(|acks| acks.ticket(id, 0)).transpose()?;
        Ok((lease, ticket))
    }

    /// Appends records after checking the lease, the sequence and the pending cancel request:
    /// an `OperationFinished` record removes the unfinished mark and the queue entry, and a
    /// record that answers a cancel request removes the pending request, in the same log entry.
    /// Refused with [`StoreError::CancelPending`], writing nothing, when a cancel barrier comes
    /// while a request is pending (one answered by an earlier record of the same append is no
    /// longer pending). Returns what was written, or `None` if there were no records.
    ///
    /// With `acks`, the write (and the request's removal) is registered there before it is
    /// made, and its ticket is taken before the write lock is released (so that no other
    /// writer's ticket splits its changes between two log entries) and returned; the caller
    /// records it with the write if it must ([`Acks::set_ticket`]).
    pub(crate) fn append(
        &self,
        lease: &Lease,
        records: &[Record],
        acks: Option<&Acks>,
    ) -> Result<Option<Appended>, StoreError> {
        let id = lease.operation;
        let encoded = records
            .iter()
            .map(|r| Ok((keys::seq_key(id, r.seq), encode(r)?)))
            .collect::<Result<Vec<([u8; 24], Vec<u8>)>, StoreError>>()?;
        let finished =
            records.iter().any(|r| matches!(r.kind, RecordKind::OperationFinished { .. }));
        let answers = records.iter().any(|r| r.kind.answers_cancel_request());
        let barrier = records.iter().any(|r| r.kind.is_cancel_barrier());
        let _writing = self.lock();
        lease.check_current(self.lease(id)?.as_ref())?;
        let next = self.next_seq(id)?.ok_or(StoreError::NotFound(id))?;
        check_sequence(id, next, records)?;
        if records.is_empty() {
            return Ok(None);
        }
        let op_key = keys::operation_key(id);
        let request = if answers || barrier {
            self.cancels.get(op_key).map_err(|e| sled_error("reading a cancel request", e))?
        } else {
            None
        };
        if let Some(bytes) = &request {
            refuse_barrier(id, records, bytes)?;
        }
        let queue_key = if finished { self.queue_key(id)? } else { None };
        let removes_request = answers && request.is_some();
        if let Some(acks) = acks {
            acks.begin(id, next, finished);
            if removes_request {
                acks.begin_cancel(id, request.map(|bytes| bytes.to_vec()), None);
            }
        }
        // Plain inserts, in sequence order, under the write lock. A sled transaction (or batch)
        // seals and writes sled's IO buffer with a disk wait at every commit, before and after
        // the batch, which serialises every writer on the disk and defeats group commit. The
        // write is one entry of the write-ahead log, replayed whole; what sled's own files can
        // hold of an unacknowledged one after a crash is a prefix of these changes, so the
        // records come first and then the marks: a prefix is a legal log (no gap), as if the
        // crash had come before the append, or a finished Operation still marked unfinished
        // (opening settles it; `check` removes the mark), or an answer with its request still
        // pending (answered again), never a request gone without its answer.
        // A failed insert may leave a prefix written: it stays registered in `acks`, never
        // acknowledged.
        for (key, bytes) in &encoded {
            self.records
                .insert(&key[..], bytes.as_slice())
                .map_err(|e| sled_error("appending records", e))?;
        }
        let remove = |tree: &crate::overlay::Logged, key: &[u8]| {
            tree.remove(key).map(drop).map_err(|e| sled_error("finishing an operation", e))
        };
        if finished {
            remove(&self.unfinished, &op_key)?;
            if let Some(queue_key) = &queue_key {
                remove(&self.by_resource, queue_key)?;
            }
        }
        if removes_request {
            self.cancels
                .remove(op_key)
                .map_err(|e| sled_error("taking an answered cancel request away", e))?;
        }
        let ticket = match acks {
            Some(acks) => {
                let ticket = acks.fresh_ticket()?;
                if removes_request {
                    acks.ticket_cancel(id, ticket);
                }
                Some(ticket)
            }
            None => None,
        };
        Ok(Some(Appended { from: next, ticket }))
    }

    /// The sequence number after the Operation's last record, or `None` if it has none.
    pub(crate) fn next_seq(&self, id: OperationId) -> Result<Option<u64>, StoreError> {
        let last = self.records.last_with_prefix(keys::operation_key(id)).transpose();
        match last {
            None => Ok(None),
            Some(entry) => {
                let (key, _) = entry.map_err(|e| sled_error("reading records", e))?;
                let (_, seq) = keys::parse_seq_key(keys::RECORDS, &key)?;
                Ok(Some(seq.saturating_add(1)))
            }
        }
    }

    /// Every record of an Operation, in order, checked against its key and for gaps.
    pub(crate) fn read(&self, id: OperationId) -> Result<Vec<Record>, StoreError> {
        let mut out = Vec::new();
        for entry in self.records.scan_prefix(keys::operation_key(id)) {
            let (key, bytes) = entry.map_err(|e| sled_error("reading records", e))?;
            let (_, seq) = keys::parse_seq_key(keys::RECORDS, &key)?;
            let position = out.len() as u64;
            // The tree and the key, after what `decode` says.
            let corrupt = |problem: String| StoreError::CorruptRecord {
                operation: id,
                position,
                problem: format!("{problem} (tree {}, key {})", keys::RECORDS, keys::hex(&key)),
            };
            if seq != position {
                return Err(corrupt(format!("missing; the next stored record is {seq}")));
            }
            // `decode` checks that the bytes are record `position` of `id`: a damaged key
            // never moves a record.
            let record = decode(&bytes, id, position).map_err(|e| match e {
                StoreError::CorruptRecord { problem, .. } => corrupt(problem),
                other => other,
            })?;
            out.push(record);
        }
        if out.is_empty() {
            return Err(StoreError::NotFound(id));
        }
        Ok(out)
    }

    /// The ids of the unfinished tree, in id order, and its entries that are damaged: a key
    /// that is no id, or a value that is not the key's checksum; finished Operations are never
    /// read.
    pub(crate) fn list_unfinished(&self) -> Result<Listing, StoreError> {
        let mut listing = Listing::default();
        for entry in self.unfinished.iter() {
            let (key, value) = entry.map_err(|e| sled_error("listing unfinished operations", e))?;
            match keys::parse_operation(keys::UNFINISHED, &key).and_then(|id| {
                check_index_value(keys::UNFINISHED, &key, &value, &unfinished_mark(id))?;
                Ok(id)
            }) {
                Ok(id) => listing.ids.push(id),
                Err(damaged) => listing.damaged.push(damaged),
            }
        }
        Ok(listing)
    }

    /// Whether the Operation has any record (or any key under its id in `records`).
    pub(crate) fn has_records(&self, id: OperationId) -> Result<bool, StoreError> {
        match self.records.scan_prefix(keys::operation_key(id)).keys().next() {
            None => Ok(false),
            Some(key) => match key.map_err(|e| sled_error("reading records", e)) {
                Ok(_) => Ok(true),
                // Damaged records are records (their reader reports the damage).
                Err(StoreError::Corrupt { .. }) => Ok(true),
                Err(e) => Err(e),
            },
        }
    }

    /// Completes, at open, what an unacknowledged `create` or finishing `append` left half made
    /// in sled's files (sled writes its buffers out on its own, and when it closes; the log
    /// replays only acknowledged writes), so that no index entry of it wedges the store:
    ///
    /// - an Operation marked unfinished whose records end with `OperationFinished` (a finish
    ///   whose records reached sled's files before its marks were removed) loses its unfinished
    ///   mark, its cancel request and its resource queue entry, as the finish would have done;
    ///   left there, the queue entry would keep every later Operation on the resource waiting;
    /// - an Operation marked unfinished without any record (a create cut before its record)
    ///   loses its marks: unfinished, lease, queue entry and environment index entry.
    ///
    /// An unacknowledged write may or may not survive a crash (the store contract); this keeps
    /// either answer whole. The changes are recorded like any other (they reach the write-ahead
    /// log with the next write), and are derived from the records alone, so that redoing them
    /// after a crash is harmless. Returns how many Operations were settled.
    pub(crate) fn settle_unacknowledged(&self) -> Result<usize, StoreError> {
        let listing = self.list_unfinished()?;
        let mut settled = 0;
        for id in listing.ids {
            let op_key = keys::operation_key(id);
            let last = self.records.last_with_prefix(op_key).transpose();
            let error = |e| sled_error("settling an unacknowledged write at open", e);
            match last {
                Some(entry) => {
                    let (key, bytes) = entry.map_err(error)?;
                    let (_, seq) = keys::parse_seq_key(keys::RECORDS, &key)?;
                    // A record that does not decode is for `check` to report, not for this.
                    let Ok(record) = decode(&bytes, id, seq) else { continue };
                    if !matches!(record.kind, RecordKind::OperationFinished { .. }) {
                        continue;
                    }
                    tracing::warn!(operation = %id, "removing the unfinished marks of a finished operation (its finish was not acknowledged)");
                    if let Some(queue_key) = self.queue_key(id)? {
                        self.by_resource.remove(queue_key).map_err(error)?;
                    }
                    self.cancels.remove(op_key).map_err(error)?;
                    self.unfinished.remove(op_key).map_err(error)?;
                }
                None => {
                    tracing::warn!(operation = %id, "removing the marks of an operation whose create was not acknowledged");
                    let mut orphaned = Vec::new();
                    // No record says what precedes the id in these keys: a scan of both trees,
                    // made only for an Operation that a failed create left.
                    for tree in [&self.by_resource, &self.by_environment] {
                        for key in tree.iter().keys() {
                            let key = key.map_err(error)?;
                            if key.ends_with(&op_key) {
                                orphaned.push((tree, key));
                            }
                        }
                    }
                    for (tree, key) in orphaned {
                        tree.remove(key).map_err(error)?;
                    }
                    self.leases.remove(op_key).map_err(error)?;
                    self.cancels.remove(op_key).map_err(error)?;
                    self.unfinished.remove(op_key).map_err(error)?;
                }
            }
            settled += 1;
        }
        Ok(settled)
    }
}
