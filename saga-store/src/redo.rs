//! Physical redo: every change the store makes to a sled tree, recorded as it is made, so that
//! the write-ahead log ([`crate::wal`]) can hold it and a reopen can make it again.
//!
//! Each tree of [`crate::open::Trees`] is a [`Logged`](crate::overlay::Logged) tree: its
//! `insert`, `remove` and `apply_batch` change the tree's overlay (in memory; sled itself at
//! checkpoints, see [`crate::overlay`]) and append the change to the store's [`Redo`] buffer,
//! in the order they are made. The store's [`Flusher`](crate::flusher::Flusher) drains the
//! buffer into one log entry when a writer takes its ticket, so that the entry (and the sync
//! that covers it) holds every change made before the ticket, the writer's own and any made
//! without a ticket of their own (lease renewals, log lines). The store makes no sled
//! transactions: a write's atomicity comes from its log entry (see `records.rs`).
//!
//! An entry is a list of `(tree, key, value or removal)`: replaying it sets those keys, so
//! replaying an entry whose changes sled already holds changes nothing, and replaying the log
//! after the last checkpoint in order leaves every key as the last acknowledged write left it.
//! Encoded as a version byte, then postcard.

use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use saga_core::store::StoreError;

/// The version byte in front of every encoded entry.
const ENTRY_VERSION: u8 = 1;

/// One change to one tree: `value` `None` removes the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Op {
    /// The tree's number in [`crate::open::Trees::by_number`].
    pub(crate) tree: u8,
    /// The key.
    pub(crate) key: Vec<u8>,
    /// The new value, or `None` for a removal.
    pub(crate) value: Option<Vec<u8>>,
}

/// The changes made and not yet drained into the log, in the order they were made. Disabled
/// (recording nothing) for a store without fsync, which has no log.
#[derive(Debug, Default)]
pub(crate) struct Redo {
    ops: Mutex<Vec<Op>>,
    enabled: bool,
}

impl Redo {
    /// A buffer that records (`enabled`) or ignores every change.
    pub(crate) fn new(enabled: bool) -> Self {
        Redo { ops: Mutex::new(Vec::new()), enabled }
    }

    /// Whether changes are recorded (a store with the write-ahead log).
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Locks the buffer (a panic elsewhere never makes it unusable).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Vec<Op>> {
        self.ops.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Encodes drained changes as one log entry.
pub(crate) fn encode(ops: &[Op]) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(ops, vec![ENTRY_VERSION])
        .map_err(|e| StoreError::backend("encoding a write-ahead log entry", e.to_string()))
}

/// Decodes a log entry written by [`encode`]; `where_` names it in the error.
pub(crate) fn decode(bytes: &[u8], where_: &str) -> Result<Vec<Op>, StoreError> {
    let corrupt = |problem: String| StoreError::Corrupt { place: where_.to_owned(), problem };
    match bytes.split_first() {
        Some((&ENTRY_VERSION, body)) => {
            let (ops, rest): (Vec<Op>, &[u8]) =
                postcard::take_from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
            if rest.is_empty() {
                Ok(ops)
            } else {
                Err(corrupt(format!("{} trailing bytes", rest.len())))
            }
        }
        Some((&version, _)) if version > ENTRY_VERSION => {
            Err(StoreError::NewerFormat { found: version, supported: ENTRY_VERSION })
        }
        Some((version, _)) => Err(corrupt(format!("unknown entry version {version}"))),
        None => Err(corrupt("an empty entry".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bad_bytes_are_typed_errors() {
        let ops = vec![
            Op { tree: 1, key: b"k".to_vec(), value: Some(b"v".to_vec()) },
            Op { tree: 2, key: vec![0; 24], value: None },
        ];
        let bytes = encode(&ops).expect("encodes");
        assert_eq!(decode(&bytes, "entry 1").expect("decodes"), ops);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], "entry 1").is_err(), "cut at {cut}");
        }
        let mut newer = bytes.clone();
        newer[0] = ENTRY_VERSION + 1;
        assert!(matches!(decode(&newer, "entry 1"), Err(StoreError::NewerFormat { .. })));
        let mut longer = bytes;
        longer.push(0);
        assert!(matches!(decode(&longer, "entry 1"), Err(StoreError::Corrupt { .. })));
    }
}
