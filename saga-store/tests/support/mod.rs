//! Helpers shared by the store tests: records to append and stores in temporary directories.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use saga_core::log::{Record, RecordKind};
use saga_core::store::{Lease, Store};
use saga_core::{OperationId, Outcome, Resource};
use saga_store::SledStore;
use tempfile::TempDir;

/// A long lease.
pub(crate) const TTL: Duration = Duration::from_secs(60);

/// A temporary directory and the path of a store inside it (created on open).
pub(crate) fn temp_store_path() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store");
    (dir, path)
}

/// A synced store in a fresh temporary directory.
pub(crate) fn open_temp() -> (TempDir, PathBuf, SledStore) {
    let (dir, path) = temp_store_path();
    let store = SledStore::open(&path).expect("opens");
    (dir, path, store)
}

/// The `OperationCreated` record of `id` in `environment`, created at `at_ms`.
pub(crate) fn created(id: OperationId, saga: &str, environment: &str, at_ms: u64) -> Record {
    Record {
        operation: id,
        seq: 0,
        at_ms,
        kind: RecordKind::OperationCreated {
            saga: saga.into(),
            version: 1,
            params: b"null".to_vec(),
            environment: environment.into(),
            resource: Resource::new("app", "web"),
            actor: "tester".into(),
        },
    }
}

/// A record of `id` at `seq`.
pub(crate) fn record(id: OperationId, seq: u64, kind: RecordKind) -> Record {
    Record { operation: id, seq, at_ms: 1_000 + seq, kind }
}

/// `StepStarted` of `step`, attempt 1.
pub(crate) fn started(id: OperationId, seq: u64, step: &str) -> Record {
    record(id, seq, RecordKind::StepStarted { step: step.into(), attempt: 1 })
}

/// `StepSucceeded` of `step` with a JSON output.
pub(crate) fn succeeded(id: OperationId, seq: u64, step: &str, output: &[u8]) -> Record {
    record(id, seq, RecordKind::StepSucceeded { step: step.into(), output: output.to_vec() })
}

/// `OperationFinished` with success.
pub(crate) fn finished(id: OperationId, seq: u64) -> Record {
    record(id, seq, RecordKind::OperationFinished { outcome: Outcome::Succeeded })
}

/// Creates an Operation of `environment` at `at_ms` and returns its id and lease.
pub(crate) async fn create(
    store: &dyn Store,
    environment: &str,
    at_ms: u64,
) -> (OperationId, Lease) {
    let id = OperationId::new();
    let lease =
        store.create(&created(id, "s", environment, at_ms), "me", TTL).await.expect("creates");
    (id, lease)
}

/// Opens a store's directory with sled alone to edit it, once a `SledStore` on it was dropped,
/// and once the store's write-ahead log holds nothing that the next open would replay over the
/// edit.
///
/// A store closed right after a write may leave that write in its log: the close checkpoints up
/// to the LSN the log's writer has published as durable, and the writer wakes the write's
/// caller a moment before it publishes it, so under load the last acknowledged write can stay
/// after the checkpoint (harmless for the store: the next open replays it, changing nothing
/// sled holds). An edit of a key that write set would then be undone by that replay, and a test
/// of the damaged store would see the undamaged one. So the store is opened and closed once
/// first: opening replays whatever the log holds and checkpoints it before it returns (at the
/// LSN of the last entry replayed, which it knows for certain), and it writes nothing more, so
/// the log then holds nothing after its checkpoint, whatever the timing. (Opening also settles
/// what an unacknowledged write left half made: edit after it, not before.)
///
/// The store's bundles (one sled value per Operation for its records and for its log lines) are
/// rewritten as one key per record and per line, the older layout the store reads as well, so
/// that a test edits a record or a line by its key.
pub(crate) fn open_sled_to_edit(path: &std::path::Path) -> sled::Db {
    drop(SledStore::open(path).expect("opens, replaying the log, before sled alone opens it"));
    let db = open_sled(path);
    saga_store::unbundle(&db).expect("rewrites the bundles as keys");
    db
}

/// Opens a store's directory with sled alone, once a `SledStore` on it was dropped, to read
/// what sled's files hold (to edit them, [`open_sled_to_edit`]). sled may release its file lock
/// a moment after a drop returns, so this waits up to 2 s for it, as `SledStore::open` itself
/// waits up to 1 s.
pub(crate) fn open_sled(path: &std::path::Path) -> sled::Db {
    let start = std::time::Instant::now();
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(_) if start.elapsed() < std::time::Duration::from_secs(2) => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("sled opens {}: {e}", path.display()),
        }
    }
}

/// `PointOfNoReturnPassed` at `step`: a cancel barrier.
pub(crate) fn passed(id: OperationId, seq: u64) -> Record {
    record(id, seq, RecordKind::PointOfNoReturnPassed { step: "migrate".into() })
}

/// `CancelRequested` by `actor`: answers a pending cancel request.
pub(crate) fn cancelled(id: OperationId, seq: u64, actor: &str) -> Record {
    record(id, seq, RecordKind::CancelRequested { actor: actor.into(), reason: "stop".into() })
}

/// `OperationFinished` as rolled back after a cancel: answers a request, and is no barrier.
pub(crate) fn rolled_back(id: OperationId, seq: u64) -> Record {
    let cause = saga_core::RollbackCause::Cancelled { actor: "amy".into(), reason: "stop".into() };
    record(id, seq, RecordKind::OperationFinished { outcome: Outcome::RolledBack { cause } })
}

/// A cancel request of `id` by `actor`.
pub(crate) fn cancel_request(id: OperationId, actor: &str) -> saga_core::store::CancelRequest {
    saga_core::store::CancelRequest {
        operation: id,
        actor: actor.into(),
        reason: format!("{actor} says stop"),
        at_ms: 1_000,
    }
}

/// A value of format 3 or later (`bytes`, bound to `key`: empty for a record or a log line, the
/// Operation's key for a lease or a cancel request) as the next format version would write it:
/// the version byte raised, the CRC32C trailer computed again.
pub(crate) fn newer_version(bytes: &[u8], key: &[u8]) -> Vec<u8> {
    let mut newer = bytes[..bytes.len() - 4].to_vec();
    newer[0] = saga_core::store::FORMAT_VERSION + 1;
    let checksum = crc32c::crc32c_append(crc32c::crc32c(key), &newer);
    newer.extend_from_slice(&checksum.to_le_bytes());
    newer
}

/// The sled key of an Operation in the trees keyed by it (`keys.rs`: its id, big-endian), for
/// tests that edit sled's files.
pub(crate) fn op_key(id: OperationId) -> Vec<u8> {
    id.as_u128().to_be_bytes().to_vec()
}

/// The sled key of an Operation's record or log line `seq` (`keys.rs`).
pub(crate) fn seq_key(id: OperationId, seq: u64) -> Vec<u8> {
    let mut key = op_key(id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The sled key of an Operation's environment index entry (`keys.rs`).
pub(crate) fn env_key(environment: &str, ms: u64, id: OperationId) -> Vec<u8> {
    let mut key = (environment.len() as u64).to_be_bytes().to_vec();
    key.extend_from_slice(environment.as_bytes());
    key.extend_from_slice(&ms.to_be_bytes());
    key.extend_from_slice(&op_key(id));
    key
}
