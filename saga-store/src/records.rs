//! Records: create, append, read, and the unfinished list.

use sled::Transactional;

use saga_core::log::{Record, RecordKind};
use saga_core::store::{check_sequence, decode, encode, now_ms, Lease, Listing, StoreError};
use saga_core::OperationId;

use crate::acks::Acks;
use crate::codec::{sled_error, transaction_error};
use crate::keys;
use crate::open::Trees;

impl Trees {
    /// Writes an Operation's first record, its unfinished mark, its index entry and its first
    /// lease in one atomic write. With `acks`, the write is registered there (at sequence number
    /// 0) before it is made; the caller takes its ticket.
    pub(crate) fn create(
        &self,
        record: &Record,
        owner: &str,
        ttl: std::time::Duration,
        acks: Option<&Acks>,
    ) -> Result<Lease, StoreError> {
        let id = record.operation;
        let RecordKind::OperationCreated { environment, resource, .. } = &record.kind else {
            return Err(StoreError::OutOfSequence { operation: id, expected: 0, got: record.seq });
        };
        check_sequence(id, 0, std::slice::from_ref(record))?;
        let bytes = encode(record)?;
        let index_key = keys::environment_key(environment, record.at_ms, id);
        let queue_key = keys::resource_key(resource, id);
        let _writing = self.lock();
        if self.next_seq(id)?.is_some() {
            return Err(StoreError::AlreadyExists(id));
        }
        let lease = Lease::claim_after(None, id, owner, ttl, now_ms())?;
        let lease_bytes = crate::codec::encode_lease(&lease)?;
        let op_key = keys::operation_key(id);
        if let Some(acks) = acks {
            acks.begin(id, 0, false);
        }
        let written = (
            self.records.sled(),
            self.unfinished.sled(),
            self.by_environment.sled(),
            self.leases.sled(),
            self.by_resource.sled(),
        )
            .transaction(|(records, unfinished, index, leases, queues)| {
                records.insert(&keys::seq_key(id, 0)[..], bytes.as_slice())?;
                unfinished.insert(&op_key[..], &[][..])?;
                index.insert(index_key.as_slice(), &[][..])?;
                leases.insert(&op_key[..], lease_bytes.as_slice())?;
                queues.insert(queue_key.as_slice(), &[][..])?;
                Ok(())
            })
            .map_err(|e| transaction_error("creating an operation", e));
        if let (Err(_), Some(acks)) = (&written, acks) {
            // A failed transaction wrote nothing.
            acks.forget(id, 0);
        }
        written?;
        self.redo.push([
            self.records.op(&keys::seq_key(id, 0), Some(&bytes)),
            self.unfinished.op(&op_key, Some(&[])),
            self.by_environment.op(&index_key, Some(&[])),
            self.leases.op(&op_key, Some(&lease_bytes)),
            self.by_resource.op(&queue_key, Some(&[])),
        ]);
        Ok(lease)
    }

    /// Appends records after checking the lease and the sequence; an `OperationFinished` record
    /// removes the unfinished mark in the same atomic write. Returns the sequence number of the
    /// first record written, or `None` if there were none. With `acks`, the write is registered
    /// there before it is made; the caller takes its ticket.
    pub(crate) fn append(
        &self,
        lease: &Lease,
        records: &[Record],
        acks: Option<&Acks>,
    ) -> Result<Option<u64>, StoreError> {
        let id = lease.operation;
        let encoded = records
            .iter()
            .map(|r| Ok((keys::seq_key(id, r.seq), encode(r)?)))
            .collect::<Result<Vec<([u8; 24], Vec<u8>)>, StoreError>>()?;
        let finished =
            records.iter().any(|r| matches!(r.kind, RecordKind::OperationFinished { .. }));
        let _writing = self.lock();
        lease.check_current(self.lease(id)?.as_ref())?;
        let next = self.next_seq(id)?.ok_or(StoreError::NotFound(id))?;
        check_sequence(id, next, records)?;
        if records.is_empty() {
            return Ok(None);
        }
        if let Some(acks) = acks {
            acks.begin(id, next, finished);
        }
        if !finished {
            // Plain inserts, in sequence order, under the write lock. A sled transaction (or
            // batch) seals and writes sled's IO buffer with a disk wait at every commit, before
            // and after the batch, which serialises every writer on the disk and defeats group
            // commit. Without one, a crash keeps a prefix of sled's log, so a prefix of these
            // records: a legal log (no gap), as if the crash had come before the append.
            // A failed insert may leave a prefix written: it stays registered in `acks`, never
            // acknowledged.
            for (key, bytes) in &encoded {
                self.records
                    .insert(&key[..], bytes.as_slice())
                    .map_err(|e| sled_error("appending records", e))?;
            }
            return Ok(Some(next));
        }
        let op_key = keys::operation_key(id);
        let queue_key = self.queue_key(id)?;
        let written = (
            self.records.sled(),
            self.unfinished.sled(),
            self.cancels.sled(),
            self.by_resource.sled(),
        )
            .transaction(|(tree, unfinished, cancels, queues)| {
                for (key, bytes) in &encoded {
                    tree.insert(&key[..], bytes.as_slice())?;
                }
                unfinished.remove(&op_key[..])?;
                cancels.remove(&op_key[..])?;
                if let Some(queue_key) = &queue_key {
                    queues.remove(queue_key.as_slice())?;
                }
                Ok(())
            })
            .map_err(|e| transaction_error("appending records", e));
        if let (Err(_), Some(acks)) = (&written, acks) {
            // A failed transaction wrote nothing.
            acks.forget(id, next);
        }
        written?;
        let mut ops: Vec<_> =
            encoded.iter().map(|(key, bytes)| self.records.op(key, Some(bytes))).collect();
        ops.push(self.unfinished.op(&op_key, None));
        ops.push(self.cancels.op(&op_key, None));
        if let Some(queue_key) = &queue_key {
            ops.push(self.by_resource.op(queue_key, None));
        }
        self.redo.push(ops);
        Ok(Some(next))
    }

    /// The sequence number after the Operation's last record, or `None` if it has none.
    pub(crate) fn next_seq(&self, id: OperationId) -> Result<Option<u64>, StoreError> {
        let last = self.records.scan_prefix(keys::operation_key(id)).next_back();
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
            let corrupt =
                |problem: String| StoreError::CorruptRecord { operation: id, position, problem };
            if seq != position {
                return Err(corrupt(format!("missing; the next stored record is {seq}")));
            }
            let record = decode(&bytes, id, position)?;
            if record.seq != position {
                return Err(corrupt(format!("stored at {position} but numbered {}", record.seq)));
            }
            out.push(record);
        }
        if out.is_empty() {
            return Err(StoreError::NotFound(id));
        }
        Ok(out)
    }

    /// The ids of the unfinished tree, in id order, and its keys that are no id; finished
    /// Operations are never read.
    pub(crate) fn list_unfinished(&self) -> Result<Listing, StoreError> {
        let mut listing = Listing::default();
        for key in self.unfinished.iter().keys() {
            let key = key.map_err(|e| sled_error("listing unfinished operations", e))?;
            match keys::parse_operation(keys::UNFINISHED, &key) {
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
            Some(key) => key.map(|_| true).map_err(|e| sled_error("reading records", e)),
        }
    }
}
