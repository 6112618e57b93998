//! The consistency check: the indexes reconciled with the records, and repaired from them.
//!
//! Each Operation (and each index entry) is checked under the store's write lock, so that no
//! `create`, `append` or `delete_environment` runs halfway through it; the lock is taken per
//! Operation, so appends of the others go on. Records are only read, never changed.

use saga_core::log::{Record, RecordKind};
use saga_core::store::{decode, CheckReport, ExpectedMarks, Finding, Problem, StoreError};
use saga_core::OperationId;

use crate::codec::{decode_lease, decode_line, sled_error};
use crate::keys;
use crate::open::Trees;

/// The findings of one check, and whether it repairs.
struct Check<'a> {
    trees: &'a Trees,
    repair: bool,
    report: CheckReport,
}

impl Trees {
    /// Checks every Operation's records against the `unfinished` and `by_environment` indexes,
    /// then every entry of `unfinished`, `by_environment`, `leases` and `logs` against the
    /// records; with `repair`, fixes what the records alone say how to fix. Not synced.
    pub(crate) fn check(&self, repair: bool) -> Result<CheckReport, StoreError> {
        let mut check = Check { trees: self, repair, report: CheckReport::default() };
        check.records()?;
        check.unfinished()?;
        check.environment_index()?;
        check.leases()?;
        check.logs()?;
        Ok(check.report)
    }
}

/// Whether `tree` still holds `key` (an entry found by a scan may have gone since).
fn still(tree: &sled::Tree, key: &[u8]) -> Result<bool, StoreError> {
    tree.contains_key(key).map_err(|e| sled_error("checking an index", e))
}

/// The first key after every key starting with `id`, or `None` after the last id.
fn after(id: OperationId) -> Option<Vec<u8>> {
    id.as_u128().checked_add(1).map(|next| next.to_be_bytes().to_vec())
}

/// The first key after `key` (itself followed by a zero byte).
fn just_after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

impl Check<'_> {
    fn found(&mut self, operation: Option<OperationId>, problem: Problem, repaired: bool) {
        self.report.findings.push(Finding { operation, problem, repaired });
    }

    /// Removes `key` from `tree` when repairing; whether it did.
    fn remove(&self, tree: &crate::redo::Logged, key: &[u8]) -> Result<bool, StoreError> {
        if !self.repair {
            return Ok(false);
        }
        tree.remove(key).map_err(|e| sled_error("repairing an index", e))?;
        Ok(true)
    }

    /// Inserts an empty value at `key` in `tree` when repairing; whether it did.
    fn insert(&self, tree: &crate::redo::Logged, key: &[u8]) -> Result<bool, StoreError> {
        if !self.repair {
            return Ok(false);
        }
        tree.insert(key, &[][..]).map_err(|e| sled_error("repairing an index", e))?;
        Ok(true)
    }

    /// Every Operation of the `records` tree, one at a time.
    fn records(&mut self) -> Result<(), StoreError> {
        let mut from = Vec::new();
        loop {
            let next = self.trees.records.range(from.as_slice()..).keys().next();
            let Some(key) = next else { return Ok(()) };
            let key = key.map_err(|e| sled_error("checking records", e))?;
            let Some(id) = key.get(..16).and_then(|k| keys::parse_operation(keys::RECORDS, k).ok())
            else {
                // Too short to name an Operation: no record reads from it.
                let cause = keys::corrupt_key(keys::RECORDS, &key, "24");
                self.found(None, Problem::DamagedRecords(cause), false);
                from = just_after(&key);
                continue;
            };
            self.operation(id)?;
            match after(id) {
                Some(next) => from = next,
                None => return Ok(()),
            }
        }
    }

    /// One Operation: its records read, and its unfinished mark and index entry agree.
    fn operation(&mut self, id: OperationId) -> Result<(), StoreError> {
        let trees = self.trees;
        let _writing = trees.lock();
        let records = match trees.read(id) {
            Ok(records) => records,
            // Deleted since the scan found it.
            Err(StoreError::NotFound(_)) => return Ok(()),
            Err(cause) => {
                self.report.operations += 1;
                self.found(Some(id), Problem::DamagedRecords(cause), false);
                return Ok(());
            }
        };
        self.report.operations += 1;
        let expected = match ExpectedMarks::of(id, &records) {
            Ok(expected) => expected,
            Err(cause) => {
                self.found(Some(id), Problem::DamagedRecords(cause), false);
                return Ok(());
            }
        };
        let op_key = keys::operation_key(id);
        let marked = trees
            .unfinished
            .contains_key(op_key)
            .map_err(|e| sled_error("checking the unfinished index", e))?;
        match expected.unfinished_mark_problem(marked) {
            Some(problem @ Problem::StaleUnfinishedMark) => {
                let repaired = self.remove(&trees.unfinished, &op_key)?;
                self.found(Some(id), problem, repaired);
            }
            Some(problem) => {
                let repaired = self.insert(&trees.unfinished, &op_key)?;
                self.found(Some(id), problem, repaired);
            }
            None => {}
        }
        let index_key = keys::environment_key(expected.environment, expected.created_ms, id);
        let indexed = trees
            .by_environment
            .contains_key(&index_key)
            .map_err(|e| sled_error("checking the environment index", e))?;
        if !indexed {
            let repaired = self.insert(&trees.by_environment, &index_key)?;
            self.found(Some(id), Problem::MissingIndexEntry, repaired);
        }
        Ok(())
    }

    /// A dangling entry of `index` naming `id`, removed (`key` of `tree`) when repairing.
    fn dangling(
        &mut self,
        id: OperationId,
        index: &str,
        tree: &crate::redo::Logged,
        key: &[u8],
    ) -> Result<(), StoreError> {
        let repaired = self.remove(tree, key)?;
        self.found(Some(id), Problem::DanglingEntry { index: index.into() }, repaired);
        Ok(())
    }

    /// A damaged entry of `index`, removed (`key` of `tree`) when repairing.
    fn damaged(
        &mut self,
        id: Option<OperationId>,
        index: &str,
        cause: StoreError,
        tree: &crate::redo::Logged,
        key: &[u8],
    ) -> Result<(), StoreError> {
        let repaired = self.remove(tree, key)?;
        self.found(id, Problem::DamagedEntry { index: index.into(), cause }, repaired);
        Ok(())
    }

    /// Every unfinished mark names an Operation with records.
    fn unfinished(&mut self) -> Result<(), StoreError> {
        let trees = self.trees;
        for key in trees.unfinished.iter().keys() {
            let key = key.map_err(|e| sled_error("checking the unfinished index", e))?;
            let id = match keys::parse_operation(keys::UNFINISHED, &key) {
                Ok(id) => id,
                Err(cause) => {
                    let _writing = trees.lock();
                    self.damaged(None, keys::UNFINISHED, cause, &trees.unfinished, &key)?;
                    continue;
                }
            };
            let _writing = trees.lock();
            if !trees.has_records(id)? && still(&trees.unfinished, &key)? {
                self.dangling(id, keys::UNFINISHED, &trees.unfinished, &key)?;
            }
        }
        Ok(())
    }

    /// Every environment index entry names an Operation created in that environment at that
    /// time.
    fn environment_index(&mut self) -> Result<(), StoreError> {
        let trees = self.trees;
        for key in trees.by_environment.iter().keys() {
            let key = key.map_err(|e| sled_error("checking the environment index", e))?;
            let (environment, at_ms, id) = match keys::parse_environment_entry(&key) {
                Ok(entry) => entry,
                Err(cause) => {
                    // No id to trust in a key that does not follow the layout.
                    let _writing = trees.lock();
                    self.damaged(None, keys::BY_ENVIRONMENT, cause, &trees.by_environment, &key)?;
                    continue;
                }
            };
            let _writing = trees.lock();
            let first = trees
                .records
                .get(keys::seq_key(id, 0))
                .map_err(|e| sled_error("checking the environment index", e))?;
            let matches = match first {
                // Gone since the scan found it, or no records at all.
                None if !still(&trees.by_environment, &key)? => true,
                None => trees.has_records(id)?,
                Some(bytes) => match decode(&bytes, id, 0) {
                    Ok(Record {
                        at_ms: created_ms,
                        kind: RecordKind::OperationCreated { environment: created_in, .. },
                        ..
                    }) => created_in == environment && created_ms == at_ms,
                    // Damaged records, reported as such: the entry may well be right.
                    _ => true,
                },
            };
            if !matches {
                self.dangling(id, keys::BY_ENVIRONMENT, &trees.by_environment, &key)?;
            }
        }
        Ok(())
    }

    /// Every lease decodes and names an Operation with records.
    fn leases(&mut self) -> Result<(), StoreError> {
        let trees = self.trees;
        for key in trees.leases.iter().keys() {
            let key = key.map_err(|e| sled_error("checking the leases", e))?;
            let id = match keys::parse_operation(keys::LEASES, &key) {
                Ok(id) => id,
                Err(cause) => {
                    let _writing = trees.lock();
                    self.damaged(None, keys::LEASES, cause, &trees.leases, &key)?;
                    continue;
                }
            };
            let _writing = trees.lock();
            // Read again under the lock: a claim may have replaced it since the scan.
            let Some(value) =
                trees.leases.get(&key).map_err(|e| sled_error("reading a lease", e))?
            else {
                continue;
            };
            if let Err(cause) = decode_lease(&value, id) {
                self.damaged(Some(id), keys::LEASES, cause, &trees.leases, &key)?;
            } else if !trees.has_records(id)? {
                self.dangling(id, keys::LEASES, &trees.leases, &key)?;
            }
        }
        Ok(())
    }

    /// Every log line decodes and belongs to an Operation with records; one Operation at a
    /// time. A line removed here leaves its time index entry to the next purge.
    fn logs(&mut self) -> Result<(), StoreError> {
        let trees = self.trees;
        let mut from = Vec::new();
        loop {
            let next = trees.logs.range(from.as_slice()..).keys().next();
            let Some(key) = next else { return Ok(()) };
            let key = key.map_err(|e| sled_error("checking log lines", e))?;
            let Some(id) = key.get(..16).and_then(|k| keys::parse_operation(keys::LOGS, k).ok())
            else {
                let cause = keys::corrupt_key(keys::LOGS, &key, "24");
                let _writing = trees.lock();
                self.damaged(None, keys::LOGS, cause, &trees.logs, &key)?;
                from = just_after(&key);
                continue;
            };
            self.log_of(id)?;
            match after(id) {
                Some(next) => from = next,
                None => return Ok(()),
            }
        }
    }

    /// The log lines of one Operation.
    fn log_of(&mut self, id: OperationId) -> Result<(), StoreError> {
        let trees = self.trees;
        let _writing = trees.lock();
        if !trees.has_records(id)? {
            let repaired = if self.repair {
                trees.remove_log(id)?;
                true
            } else {
                false
            };
            self.found(Some(id), Problem::DanglingEntry { index: keys::LOGS.into() }, repaired);
            return Ok(());
        }
        for entry in trees.logs.scan_prefix(keys::operation_key(id)) {
            let (key, bytes) = entry.map_err(|e| sled_error("checking log lines", e))?;
            let decoded = keys::parse_seq_key(keys::LOGS, &key)
                .and_then(|(_, seq)| decode_line(&bytes, id, seq).map(|_| ()));
            if let Err(cause) = decoded {
                self.damaged(Some(id), keys::LOGS, cause, &trees.logs, &key)?;
            }
        }
        Ok(())
    }
}
