//! Bytes that sled gives back changed: one byte flipped inside a value (or a key) of each tree,
//! straight in sled's files (the store dropped, the directory opened with `sled::open`). sled
//! 0.34 keeps no checksums of its own on what is stored, so the store's checksums are what find
//! it: reading gives a typed error naming the tree, the Operation and the key, `check` reports
//! it, and nothing is read as something else.

use std::path::{Path, PathBuf};

use saga_core::log::{LogLevel, LogLine, LogSource};
use saga_core::store::{CheckReport, Lease, Problem, Store, StoreError};
use saga_core::{OperationId, Resource};
use saga_store::SledStore;
use tempfile::TempDir;

use crate::support::*;

/// A store with two unfinished Operations: `a`, with records, log lines and a pending cancel
/// request, whose entries the tests damage, and `b`, healthy, which must read on.
struct Damaged {
    _dir: TempDir,
    path: PathBuf,
    a: OperationId,
    b: OperationId,
    lease: Lease,
}

fn line(id: OperationId, seq: u64) -> LogLine {
    LogLine {
        operation: id,
        seq,
        at_ms: 100 + seq,
        level: LogLevel::Info,
        source: LogSource::Engine,
        step: Some("build".into()),
        message: format!("line {seq} of the build"),
    }
}

async fn written() -> Damaged {
    let (dir, path, store) = open_temp();
    let (a, lease) = create(&store, "prod", 10).await;
    store
        .append(&lease, &[started(a, 1, "build"), succeeded(a, 2, "build", b"1")])
        .await
        .expect("appends");
    store.append_log(&lease, &[line(a, 0), line(a, 1)]).await.expect("logs");
    store.request_cancel(&cancel_request(a, "amy")).await.expect("requests a cancel");
    let (b, lease_b) = create(&store, "prod", 20).await;
    store.append_log(&lease_b, &[line(b, 0)]).await.expect("logs");
    drop(store);
    Damaged { _dir: dir, path, a, b, lease }
}

fn queue_key(resource: &Resource, id: OperationId) -> Vec<u8> {
    let mut key = (resource.kind.len() as u64).to_be_bytes().to_vec();
    key.extend_from_slice(resource.kind.as_bytes());
    key.extend_from_slice(&(resource.name.len() as u64).to_be_bytes());
    key.extend_from_slice(resource.name.as_bytes());
    key.extend_from_slice(&op_key(id));
    key
}

fn time_key(at_ms: u64, id: OperationId, seq: u64) -> Vec<u8> {
    let mut key = at_ms.to_be_bytes().to_vec();
    key.extend_from_slice(&seq_key(id, seq));
    key
}

fn hex(key: &[u8]) -> String {
    let digits: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("0x{digits}")
}

/// Flips the bits of `mask` in byte `at` of the value at `key` of `tree` (which must be there),
/// straight in sled.
fn flip_value(path: &Path, tree: &str, key: &[u8], at: usize, mask: u8) {
    let db = open_sled_to_edit(path);
    let tree = db.open_tree(tree).expect("a tree");
    let mut value = tree.get(key).expect("reads").expect("the entry is there").to_vec();
    value[at] ^= mask;
    tree.insert(key, value).expect("writes");
    db.flush().expect("flushes");
}

/// Moves the value at `key` of `tree` to `key` with byte `at` flipped by `mask`: a damaged
/// key.
fn flip_key(path: &Path, tree: &str, key: &[u8], at: usize, mask: u8) -> Vec<u8> {
    let db = open_sled_to_edit(path);
    let tree = db.open_tree(tree).expect("a tree");
    let value = tree.remove(key).expect("removes").expect("the entry is there");
    let mut moved = key.to_vec();
    moved[at] ^= mask;
    tree.insert(&moved, value).expect("writes");
    db.flush().expect("flushes");
    moved
}

/// Where the text `within` starts in the value at `key` of `tree`, plus one: a byte that,
/// flipped by 0x20, reads (unchecked) as the same text in another case.
fn inside(path: &Path, tree: &str, key: &[u8], within: &str) -> usize {
    let db = open_sled_to_edit(path);
    let value = db.open_tree(tree).expect("a tree").get(key).expect("reads").expect("there");
    let at = value.windows(within.len()).position(|w| w == within.as_bytes());
    at.expect("the text is in the value") + 1
}

/// `error` says `tree`, `id` and `key`, as words.
fn names(error: &StoreError, tree: &str, id: OperationId, key: &[u8]) {
    let text = error.to_string();
    for part in [format!("tree {tree}"), id.to_string(), format!("key {}", hex(key))] {
        assert!(text.contains(&part), "{part:?} is not in: {text}");
    }
    assert!(!text.contains("[") && !text.contains("Corrupt"), "no debug formatting: {text}");
}

/// The one finding of `report`: about `id`, its cause naming `tree`, `id` and `key`.
fn one_finding(report: &CheckReport, tree: &str, id: OperationId, key: &[u8]) {
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    let finding = &report.findings[0];
    assert_eq!(finding.operation, Some(id));
    assert!(!finding.repaired);
    let cause = match &finding.problem {
        Problem::DamagedEntry { index, cause } => {
            assert_eq!(index, tree);
            cause
        }
        Problem::DamagedRecords(cause) => {
            assert_eq!(tree, "records");
            cause
        }
        other => panic!("expected a damaged entry of {tree}, got: {other}"),
    };
    names(cause, tree, id, key);
    assert!(finding.to_string().contains("checksum mismatch"), "{finding}");
}

#[tokio::test]
async fn a_flipped_byte_in_a_record_is_a_corrupt_record_naming_where() {
    let d = written().await;
    let key = seq_key(d.a, 1);
    // In the step's name: read unchecked, it would be another step.
    flip_value(&d.path, "records", &key, inside(&d.path, "records", &key, "build"), 0x20);

    let store = SledStore::open(&d.path).expect("reopens");
    match store.read(d.a).await {
        Err(e @ StoreError::CorruptRecord { operation, position: 1, .. }) if operation == d.a => {
            names(&e, "records", d.a, &key);
            assert!(e.to_string().contains("checksum mismatch (stored CRC32C 0x"), "{e}");
        }
        other => panic!("expected a corrupt record, got {other:?}"),
    }
    assert_eq!(store.read(d.b).await.expect("the other reads").len(), 1);
    one_finding(&store.check(false).await.expect("checks"), "records", d.a, &key);
}

#[tokio::test]
async fn a_flipped_byte_in_a_lease_is_an_error_naming_where() {
    let d = written().await;
    let key = op_key(d.a);
    // In the owner's name: read unchecked, the lease would belong to someone else.
    flip_value(&d.path, "leases", &key, inside(&d.path, "leases", &key, "me") - 1, 0x20);

    let store = SledStore::open(&d.path).expect("reopens");
    let read = store.lease(d.a).await;
    match &read {
        Err(e @ StoreError::Corrupt { .. }) => names(e, "leases", d.a, &key),
        other => panic!("expected a corrupt lease, got {other:?}"),
    }
    let append = store.append(&d.lease, &[started(d.a, 3, "deploy")]).await;
    assert!(matches!(append, Err(StoreError::Corrupt { .. })), "{append:?}");
    assert_eq!(store.read(d.a).await.expect("records still read").len(), 3);
    assert!(store.lease(d.b).await.expect("the other reads").is_some());
    one_finding(&store.check(false).await.expect("checks"), "leases", d.a, &key);
}

#[tokio::test]
async fn a_lease_under_a_flipped_key_is_an_error_naming_where() {
    let d = written().await;
    let moved = flip_key(&d.path, "leases", &op_key(d.a), 15, 0x01);
    let ghost = OperationId::from_u128(u128::from_be_bytes(moved.clone().try_into().expect("16")));

    let store = SledStore::open(&d.path).expect("reopens");
    match store.lease(ghost).await {
        Err(e @ StoreError::Corrupt { .. }) => names(&e, "leases", ghost, &moved),
        other => panic!("expected a lease that is not this key's, got {other:?}"),
    }
    one_finding(&store.check(false).await.expect("checks"), "leases", ghost, &moved);
}

#[tokio::test]
async fn a_flipped_byte_in_a_cancel_request_is_an_error_naming_where() {
    let d = written().await;
    let key = op_key(d.a);
    flip_value(&d.path, "cancels", &key, inside(&d.path, "cancels", &key, "amy"), 0x20);

    let store = SledStore::open(&d.path).expect("reopens");
    match store.pending_cancel(d.a).await {
        Err(e @ StoreError::Corrupt { .. }) => names(&e, "cancels", d.a, &key),
        other => panic!("expected a corrupt cancel request, got {other:?}"),
    }
    // A damaged request is still pending: a barrier is refused with its error.
    let barrier = store.append(&d.lease, &[passed(d.a, 3)]).await;
    assert!(matches!(barrier, Err(StoreError::Corrupt { .. })), "{barrier:?}");
    assert!(store.cancel_requests().await.expect("lists the others").is_empty());
    one_finding(&store.check(false).await.expect("checks"), "cancels", d.a, &key);
}

#[tokio::test]
async fn a_flipped_byte_in_a_log_line_is_an_error_naming_where() {
    let d = written().await;
    let key = seq_key(d.a, 1);
    flip_value(&d.path, "logs", &key, inside(&d.path, "logs", &key, "build"), 0x20);

    let store = SledStore::open(&d.path).expect("reopens");
    match store.read_log(d.a).await {
        Err(e @ StoreError::Corrupt { .. }) => names(&e, "logs", d.a, &key),
        other => panic!("expected a corrupt log line, got {other:?}"),
    }
    assert_eq!(store.read_log(d.b).await.expect("the other reads"), vec![line(d.b, 0)]);
    one_finding(&store.check(false).await.expect("checks"), "logs", d.a, &key);
}

#[tokio::test]
async fn a_flipped_byte_in_an_unfinished_mark_is_listed_as_damaged_and_repaired() {
    let d = written().await;
    let key = op_key(d.a);
    flip_value(&d.path, "unfinished", &key, 1, 0x10);

    let store = SledStore::open(&d.path).expect("reopens");
    let listing = store.list_unfinished().await.expect("lists");
    assert_eq!(listing.ids, vec![d.b], "the damaged entry is not listed as an id");
    assert_eq!(listing.damaged.len(), 1, "{:?}", listing.damaged);
    names(&listing.damaged[0], "unfinished", d.a, &key);
    one_finding(&store.check(false).await.expect("checks"), "unfinished", d.a, &key);

    // The Operation has records: the key is right, the value is written again.
    let report = store.check(true).await.expect("repairs");
    assert!(report.findings.iter().all(|f| f.repaired), "{:?}", report.findings);
    let listing = store.list_unfinished().await.expect("lists");
    assert_eq!(listing.ids, vec![d.a, d.b]);
    assert!(listing.damaged.is_empty());
    assert!(store.check(false).await.expect("checks").findings.is_empty());
}

#[tokio::test]
async fn a_flipped_byte_in_an_environment_index_entry_is_listed_as_damaged() {
    let d = written().await;
    let key = env_key("prod", 10, d.a);
    flip_value(&d.path, "by_environment", &key, 3, 0x80);

    let store = SledStore::open(&d.path).expect("reopens");
    let listing = store.list_environment("prod", 0, u64::MAX).await.expect("lists");
    assert_eq!(listing.ids, vec![d.b]);
    assert_eq!(listing.damaged.len(), 1, "{:?}", listing.damaged);
    names(&listing.damaged[0], "by_environment", d.a, &key);
    one_finding(&store.check(false).await.expect("checks"), "by_environment", d.a, &key);
}

#[tokio::test]
async fn an_environment_index_key_with_a_flipped_byte_is_listed_as_damaged_and_removed() {
    let d = written().await;
    // In the creation time: unchecked, the Operation would be listed at another time.
    let key = env_key("prod", 10, d.a);
    let moved = flip_key(&d.path, "by_environment", &key, 8 + 4 + 6, 0x01);

    let store = SledStore::open(&d.path).expect("reopens");
    let listing = store.list_environment("prod", 0, u64::MAX).await.expect("lists");
    assert_eq!(listing.ids, vec![d.b]);
    assert_eq!(listing.damaged.len(), 1, "{:?}", listing.damaged);
    names(&listing.damaged[0], "by_environment", d.a, &moved);

    let report = store.check(false).await.expect("checks");
    let found: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
    assert_eq!(found.len(), 2, "{found:?}");
    let missing = format!("operation {}: missing from the environment index", d.a);
    assert!(found.contains(&missing), "{found:?}");
    let damaged = report.findings.iter().find_map(|f| match &f.problem {
        Problem::DamagedEntry { index, cause } if index == "by_environment" => Some(cause),
        _ => None,
    });
    names(damaged.expect("a damaged entry"), "by_environment", d.a, &moved);
    // Repaired from the records: the moved entry removed, the right one added.
    let report = store.check(true).await.expect("repairs");
    assert!(report.findings.iter().all(|f| f.repaired), "{:?}", report.findings);
    let listing = store.list_environment("prod", 0, u64::MAX).await.expect("lists");
    assert_eq!(listing.ids, vec![d.a, d.b]);
    assert!(listing.damaged.is_empty());
}

#[tokio::test]
async fn a_flipped_byte_in_a_queue_entry_is_found_and_the_queue_holds() {
    let d = written().await;
    let web = Resource::new("app", "web");
    let key = queue_key(&web, d.a);
    flip_value(&d.path, "by_resource", &key, 0, 0x01);

    let store = SledStore::open(&d.path).expect("reopens");
    // The records confirm the key: the Operation keeps its place, ahead of the next one.
    assert_eq!(store.resource_queue(&web).await.expect("the queue"), vec![d.a, d.b]);
    one_finding(&store.check(false).await.expect("checks"), "by_resource", d.a, &key);
    let report = store.check(true).await.expect("repairs");
    assert!(report.findings.iter().all(|f| f.repaired), "{:?}", report.findings);
    assert!(store.check(false).await.expect("checks").findings.is_empty());
}

#[tokio::test]
async fn a_queue_key_with_a_flipped_id_never_holds_the_queue() {
    let d = written().await;
    let web = Resource::new("app", "web");
    let key = queue_key(&web, d.a);
    let moved = flip_key(&d.path, "by_resource", &key, key.len() - 1, 0x01);
    let ghost = OperationId::from_u128(u128::from_be_bytes(
        moved[moved.len() - 16..].try_into().expect("16 bytes"),
    ));

    let store = SledStore::open(&d.path).expect("reopens");
    let queue = store.resource_queue(&web).await.expect("the queue");
    assert!(!queue.contains(&ghost), "an id no record confirms heads no queue: {queue:?}");
    one_finding(&store.check(false).await.expect("checks"), "by_resource", ghost, &moved);
}

#[tokio::test]
async fn a_flipped_byte_in_a_log_time_entry_is_found() {
    let d = written().await;
    let key = time_key(101, d.a, 1);
    flip_value(&d.path, "logs_by_time", &key, 2, 0x40);

    let store = SledStore::open(&d.path).expect("reopens");
    one_finding(&store.check(false).await.expect("checks"), "logs_by_time", d.a, &key);
    // Purging judges each line by its own time, and drops the damaged entry with the others.
    assert_eq!(store.purge_logs(102).await.expect("purges"), 3);
    assert!(store.read_log(d.a).await.expect("reads").is_empty());
    assert!(store.check(false).await.expect("checks").findings.is_empty());
}
