//! The consistency check: the indexes reconciled with the records, and repaired from them.
//!
//! Each Operation (and each index entry) is checked under the store's write lock, so that no
//! `create`, `append` or `delete_environment` runs halfway through it; the lock is taken per
//! Operation, so appends of the others go on. Records are only read, never changed.

use saga_core::log::{Record, RecordKind};
use saga_core::store::{decode, CheckReport, ExpectedMarks, Finding, Problem, StoreError};
use saga_core::OperationId;

use crate::codec::{
    check_index_value, decode_cancel, decode_lease, decode_line, index_value, sled_error,
};
use crate::keys;
use crate::open::Trees;
use crate::overlay::Logged;

/// The findings of one check, and whether it repairs.
struct Check<'a> {
    trees: &'a Trees,
    repair: bool,
    report: CheckReport,
}

impl Trees {
    /// Checks every Operation's records against the `unfinished` and `by_environment` indexes,
    /// then every entry of `unfinished`, `by_environment`, `leases`, `cancels` and `logs`
    /// against the records, and the checksums of `by_resource` and `logs_by_time`; with
    /// `repair`, fixes what the records alone say how to fix. Not synced.
    pub(crate) fn check(&self, repair: bool) -> Result<CheckReport, StoreError> {
        let mut check = Check { trees: self, repair, report: CheckReport::default() };
        check.records()?;
        check.unfinished()?;
        check.environment_index()?;
        check.leases()?;
        check.cancels()?;
        check.logs()?;
        check.resource_queues()?;
        check.log_times()?;
        Ok(check.report)
    }
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
    fn remove(&self, tree: &Logged, key: &[u8]) -> Result<bool, StoreError> {
        if !self.repair {
            return Ok(false);
        }
        tree.remove(key).map_err(|e| sled_error("repairing an index", e))?;
        Ok(true)
    }

    /// Inserts the index entry `key` (its value the key's checksum) in `tree` when repairing;
    /// whether it did.
    fn insert(&self, tree: &Logged, key: &[u8]) -> Result<bool, StoreError> {
        if !self.repair {
            return Ok(false);
        }
        tree.insert(key, &index_value(key)[..]).map_err(|e| sled_error("repairing an index", e))?;
        Ok(true)
    }

    /// Every Operation of the `records` tree, one at a time.
    fn records(&mut self) -> Result<(), StoreError> {
        let mut from = Vec::new();
        loop {
            let next = self.trees.records.next_key(&from);
            let next = next.map_err(|e| sled_error("checking records", e))?;
            let Some(key) = next else { return Ok(()) };
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
        tree: &Logged,
        key: &[u8],
    ) -> Result<(), StoreError> {
        let repaired = self.remove(tree, key)?;
        self.found(Some(id), Problem::DanglingEntry { index: index.into() }, repaired);
        Ok(())
    }

    /// An index entry of `index` whose value is not its key's checksum (`cause`): when
    /// repairing, written again if the records confirm its key (`confirmed`: `Some(true)`),
    /// removed if they refute it (`Some(false)`), left when they cannot tell (`None`: the
    /// records do not read).
    fn damaged_index_value(
        &mut self,
        id: Option<OperationId>,
        index: &str,
        cause: StoreError,
        tree: &Logged,
        key: &[u8],
        confirmed: Option<bool>,
    ) -> Result<(), StoreError> {
        let repaired = match confirmed {
            Some(true) => self.insert(tree, key)?,
            Some(false) => self.remove(tree, key)?,
            None => false,
        };
        self.found(id, Problem::DamagedEntry { index: index.into(), cause }, repaired);
        Ok(())
    }

    /// A damaged entry of `index`, removed (`key` of `tree`) when repairing.
    fn damaged(
        &mut self,
        id: Option<OperationId>,
        index: &str,
        cause: StoreError,
        tree: &Logged,
        key: &[u8],
    ) -> Result<(), StoreError> {
        let repaired = self.remove(tree, key)?;
        self.found(id, Problem::DamagedEntry { index: index.into(), cause }, repaired);
        Ok(())
    }

    /// Every unfinished mark is its key's checksum and names an Operation with records. A mark
    /// whose value is damaged is written again when its Operation has records (a finished one's
    /// mark is the records pass's), and removed otherwise (its key is what is damaged).
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
            // Read again under the lock: gone since the scan, perhaps.
            let Some(value) =
                trees.unfinished.get(&key).map_err(|e| sled_error("reading a mark", e))?
            else {
                continue;
            };
            let what = crate::records::unfinished_mark(id);
            let has_records = trees.has_records(id)?;
            if let Err(cause) = check_index_value(keys::UNFINISHED, &key, &value, &what) {
                let tree = &trees.unfinished;
                let confirmed = Some(has_records);
                self.damaged_index_value(Some(id), keys::UNFINISHED, cause, tree, &key, confirmed)?;
            } else if !has_records {
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
            // Read again under the lock: gone since the scan, perhaps.
            let Some(value) = trees
                .by_environment
                .get(&key)
                .map_err(|e| sled_error("checking the environment index", e))?
            else {
                continue;
            };
            let first = match trees.records.get(keys::seq_key(id, 0)) {
                Ok(first) => Ok(first),
                Err(e) => match sled_error("checking the environment index", e) {
                    // A bundle that does not read: damaged records, reported as such.
                    StoreError::Corrupt { .. } => Err(()),
                    other => return Err(other),
                },
            };
            // Whether the records confirm the key; `None` when they do not read.
            let confirmed = match first {
                Err(()) => None,
                Ok(first) => match first {
                    // Records without a first one: damaged, reported as such.
                    None if trees.has_records(id)? => None,
                    None => Some(false),
                    Some(bytes) => match decode(&bytes, id, 0) {
                        Ok(Record {
                            at_ms: created_ms,
                            kind: RecordKind::OperationCreated { environment: created_in, .. },
                            ..
                        }) => Some(created_in == environment && created_ms == at_ms),
                        // Damaged records, reported as such: the entry may well be right.
                        _ => None,
                    },
                },
            };
            let what = crate::environment::index_entry(id);
            if let Err(cause) = check_index_value(keys::BY_ENVIRONMENT, &key, &value, &what) {
                let tree = &trees.by_environment;
                self.damaged_index_value(
                    Some(id),
                    keys::BY_ENVIRONMENT,
                    cause,
                    tree,
                    &key,
                    confirmed,
                )?;
            } else if confirmed == Some(false) {
                // No records at all, or another environment or creation time.
                self.dangling(id, keys::BY_ENVIRONMENT, &trees.by_environment, &key)?;
            }
        }
        Ok(())
    }

    /// Every lease decodes and names an Operation with records.
    fn leases(&mut self) -> Result<(), StoreError> {
        let trees = self.trees;
        let decode = |value: &[u8], id| decode_lease(value, id).map(drop);
        self.values_by_operation(&trees.leases, keys::LEASES, ("the leases", "a lease"), decode)
    }

    /// Every pending cancel request decodes and names an Operation with records. A damaged one
    /// is removed when repairing (the finding names it: it can be asked again), since the
    /// records cannot say what it was, and while it stays every cancel barrier of its
    /// Operation is refused with its error.
    fn cancels(&mut self) -> Result<(), StoreError> {
        let trees = self.trees;
        let decode = |value: &[u8], id| decode_cancel(value, id).map(drop);
        let what = ("the cancel requests", "a cancel request");
        self.values_by_operation(&trees.cancels, keys::CANCELS, what, decode)
    }

    /// Every entry of `tree` (named `name`, keyed by an Operation's id) decodes with `decode`
    /// and names an Operation with records; each is read again under the write lock, since a
    /// write may have replaced or removed it since the scan (a claim a lease, an append's
    /// answer a cancel request). `what` names the entries and one
    /// entry in errors.
    fn values_by_operation(
        &mut self,
        tree: &Logged,
        name: &str,
        what: (&str, &str),
        decode: impl Fn(&[u8], OperationId) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let trees = self.trees;
        for key in tree.iter().keys() {
            let key = key.map_err(|e| sled_error(&format!("checking {}", what.0), e))?;
            let id = match keys::parse_operation(name, &key) {
                Ok(id) => id,
                Err(cause) => {
                    let _writing = trees.lock();
                    self.damaged(None, name, cause, tree, &key)?;
                    continue;
                }
            };
            let _writing = trees.lock();
            let read = tree.get(&key);
            let Some(value) = read.map_err(|e| sled_error(&format!("reading {}", what.1), e))?
            else {
                continue;
            };
            if let Err(cause) = decode(&value, id) {
                self.damaged(Some(id), name, cause, tree, &key)?;
            } else if !trees.has_records(id)? {
                self.dangling(id, name, tree, &key)?;
            }
        }
        Ok(())
    }

    /// Every resource queue entry's value is its key's checksum. A damaged one is written again
    /// when the Operation's first record confirms the key, and removed otherwise.
    fn resource_queues(&mut self) -> Result<(), StoreError> {
        let trees = self.trees;
        for key in trees.by_resource.iter().keys() {
            let key = key.map_err(|e| sled_error("checking the resource queues", e))?;
            let _writing = trees.lock();
            let Some(value) =
                trees.by_resource.get(&key).map_err(|e| sled_error("reading a queue entry", e))?
            else {
                continue;
            };
            // The id ends the key; the rest is the resource, which the records confirm.
            let id = key
                .len()
                .checked_sub(16)
                .and_then(|start| keys::parse_operation(keys::BY_RESOURCE, &key[start..]).ok());
            let what = match id {
                Some(id) => crate::resources::queue_entry(id),
                None => "a resource queue entry".to_owned(),
            };
            if let Err(cause) = check_index_value(keys::BY_RESOURCE, &key, &value, &what) {
                let confirmed = match id {
                    Some(id) => trees.queue_key(id)?.as_deref() == Some(&key[..]),
                    None => false,
                };
                let tree = &trees.by_resource;
                self.damaged_index_value(
                    id,
                    keys::BY_RESOURCE,
                    cause,
                    tree,
                    &key,
                    Some(confirmed),
                )?;
            }
        }
        Ok(())
    }

    /// Every log time index entry's value is its key's checksum. A damaged one is written again
    /// when the line it names is stored at that time, and removed otherwise (a malformed key is
    /// left to the next purge, which drops it).
    fn log_times(&mut self) -> Result<(), StoreError> {
        let trees = self.trees;
        for entry in trees.logs_by_time.iter() {
            let (key, value) = entry.map_err(|e| sled_error("checking the log time index", e))?;
            let Ok((id, seq)) = keys::parse_time_key(&key) else { continue };
            let what = crate::logs::time_entry(id, seq);
            if check_index_value(keys::LOGS_BY_TIME, &key, &value, &what).is_ok() {
                continue;
            }
            // Damaged as scanned: judged again under the lock.
            let _writing = trees.lock();
            let Some(value) = trees
                .logs_by_time
                .get(&key)
                .map_err(|e| sled_error("reading a log time index entry", e))?
            else {
                continue;
            };
            if let Err(cause) = check_index_value(keys::LOGS_BY_TIME, &key, &value, &what) {
                let line = trees
                    .logs
                    .get(keys::seq_key(id, seq))
                    .map_err(|e| sled_error("reading a log line", e))?;
                let confirmed = line.is_some_and(|bytes| {
                    decode_line(&bytes, id, seq)
                        .is_ok_and(|line| keys::time_key(line.at_ms, id, seq)[..] == key[..])
                });
                let tree = &trees.logs_by_time;
                self.damaged_index_value(
                    Some(id),
                    keys::LOGS_BY_TIME,
                    cause,
                    tree,
                    &key,
                    Some(confirmed),
                )?;
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
            let next =
                trees.logs.next_key(&from).map_err(|e| sled_error("checking log lines", e))?;
            let Some(key) = next else { return Ok(()) };
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
            let (key, bytes) = match entry.map_err(|e| sled_error("checking log lines", e)) {
                Ok(entry) => entry,
                // A damaged bundle: none of the Operation's lines read, and no repair can
                // tell them apart.
                Err(cause @ StoreError::Corrupt { .. }) => {
                    let problem = Problem::DamagedEntry { index: keys::LOGS.into(), cause };
                    self.found(Some(id), problem, false);
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let decoded = keys::parse_seq_key(keys::LOGS, &key)
                .and_then(|(_, seq)| decode_line(&bytes, id, seq).map(|_| ()));
            if let Err(cause) = decoded {
                self.damaged(Some(id), keys::LOGS, cause, &trees.logs, &key)?;
            }
        }
        Ok(())
    }
}
