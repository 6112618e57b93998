//! A failing sync, injected with `SledStore::inject_sync_failure`: the write waiting for it
//! fails, reads show acknowledged records only, the store refuses later writes, and a reopened
//! store holds every acknowledged record.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use saga_core::log::Record;
use saga_core::store::{Lease, Store, StoreError};
use saga_core::OperationId;
use saga_store::SledStore;

use crate::support::*;

const EIO: i32 = 5;
const ENOSPC: i32 = 28;

fn eio() -> io::Error {
    io::Error::from_raw_os_error(EIO)
}

fn is_unavailable<T: std::fmt::Debug>(result: &Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::Unavailable(_)))
}

/// Every later write is refused with `Unavailable`, and refused before it reaches sled.
async fn refuses_writes(store: &SledStore, id: OperationId, lease: &Lease, next: u64) {
    let append = store.append(lease, &[started(id, next, "z")]).await;
    assert!(is_unavailable(&append), "{append:?}");
    let other = OperationId::new();
    let create = store.create(&created(other, "s", "prod", 99), "me", TTL).await;
    assert!(is_unavailable(&create), "{create:?}");
    assert!(matches!(store.read(other).await, Err(StoreError::NotFound(_))));
    let claim = store.claim(id, "me", TTL).await;
    assert!(is_unavailable(&claim), "{claim:?}");
    assert!(is_unavailable(&store.renew(lease, TTL).await));
    assert!(is_unavailable(&store.purge_logs(u64::MAX).await));
    assert!(is_unavailable(&store.delete_environment("prod").await));
    assert!(is_unavailable(&store.check(true).await));
}

#[tokio::test]
async fn a_failed_sync_fails_the_append_and_hides_its_records() {
    let (_dir, path, store) = open_temp();
    let (id, lease) = create(&store, "prod", 10).await;
    store.append(&lease, &[started(id, 1, "a")]).await.expect("appends");
    let acknowledged = store.read(id).await.expect("reads");
    assert_eq!(acknowledged.len(), 2);

    store.inject_sync_failure(0, eio()).expect("a store with fsync");
    let failed = store.append(&lease, &[succeeded(id, 2, "a", b"1"), started(id, 3, "b")]).await;
    match &failed {
        Err(e @ StoreError::Unavailable(why)) => {
            assert!(why.contains("os error 5"), "{e}");
            assert!(why.contains("fdatasync"), "{e}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // The records are in sled's memory, never acknowledged: not shown.
    assert_eq!(store.read(id).await.expect("reads"), acknowledged);
    assert_eq!(store.list_unfinished().await.expect("lists").ids, vec![id]);
    assert_eq!(store.list_environment("prod", 0, u64::MAX).await.expect("lists").ids, vec![id]);
    // Poisoned: no later write, not even one that would continue the hidden records.
    refuses_writes(&store, id, &lease, 2).await;
    refuses_writes(&store, id, &lease, 4).await;
    // Reads and a check without repair still answer.
    assert_eq!(store.read(id).await.expect("reads"), acknowledged);
    assert!(store.check(false).await.expect("checks").findings.is_empty());
    drop(store);

    // Every acknowledged record is there; the unacknowledged ones may or may not be, whole.
    let store = SledStore::open(&path).expect("reopens after a failed sync");
    let records = store.read(id).await.expect("reads");
    assert_eq!(records[..2], acknowledged[..]);
    assert!(records.len() == 2 || records.len() == 4, "{records:?}");
    let next = records.len() as u64;
    store.append(&lease, &[started(id, next, "c")]).await.expect("a reopened store writes");
    assert_eq!(store.read(id).await.expect("reads").len() as u64, next + 1);
}

#[tokio::test]
async fn an_unacknowledged_finish_leaves_the_operation_unfinished() {
    let (_dir, path, store) = open_temp();
    let (a, lease_a) = create(&store, "prod", 10).await;
    let (b, _) = create(&store, "prod", 11).await;
    store.append(&lease_a, &[started(a, 1, "a")]).await.expect("appends");

    store.inject_sync_failure(0, io::Error::from_raw_os_error(ENOSPC)).expect("a store with fsync");
    let failed = store.append(&lease_a, &[succeeded(a, 2, "a", b"1"), finished(a, 3)]).await;
    assert!(is_unavailable(&failed), "{failed:?}");
    // The finish was not acknowledged: still unfinished, and its records not shown.
    assert_eq!(store.list_unfinished().await.expect("lists").ids, vec![a, b]);
    assert_eq!(store.read(a).await.expect("reads").len(), 2);
    refuses_writes(&store, a, &lease_a, 2).await;
    drop(store);

    // Reopened, the store agrees with itself whichever way the unacknowledged write went.
    let store = SledStore::open(&path).expect("reopens");
    let records = store.read(a).await.expect("reads");
    let unfinished = store.list_unfinished().await.expect("lists").ids;
    match records.len() {
        2 => assert_eq!(unfinished, vec![a, b]),
        4 => assert_eq!(unfinished, vec![b]),
        n => panic!("a torn append: {n} records"),
    }
    let report = store.check(false).await.expect("checks");
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

#[tokio::test]
async fn an_unacknowledged_create_does_not_exist() {
    let (_dir, path, store) = open_temp();
    let (kept, _) = create(&store, "prod", 10).await;
    store.inject_sync_failure(0, eio()).expect("a store with fsync");
    let id = OperationId::new();
    let failed = store.create(&created(id, "s", "prod", 20), "me", TTL).await;
    assert!(is_unavailable(&failed), "{failed:?}");
    assert!(matches!(store.read(id).await, Err(StoreError::NotFound(x)) if x == id));
    assert_eq!(store.list_unfinished().await.expect("lists").ids, vec![kept]);
    assert_eq!(store.list_environment("prod", 0, u64::MAX).await.expect("lists").ids, vec![kept]);
    drop(store);
    let store = SledStore::open(&path).expect("reopens");
    assert_eq!(store.read(kept).await.expect("reads").len(), 1);
}

#[tokio::test]
async fn the_failure_comes_at_the_sync_it_was_armed_for() {
    let (_dir, _path, store) = open_temp();
    let (id, lease) = create(&store, "prod", 10).await;
    let before = store.sync_count();
    store.inject_sync_failure(2, eio()).expect("a store with fsync");
    store.append(&lease, &[started(id, 1, "a")]).await.expect("first sync succeeds");
    store.append(&lease, &[succeeded(id, 2, "a", b"1")]).await.expect("second sync succeeds");
    let third = store.append(&lease, &[started(id, 3, "b")]).await;
    assert!(is_unavailable(&third), "{third:?}");
    assert_eq!(store.sync_count(), before + 3);
    assert_eq!(store.read(id).await.expect("reads").len(), 3);
    assert!(is_unavailable(&store.append(&lease, &[started(id, 3, "b")]).await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_see_exactly_what_was_acknowledged() {
    let (_dir, path, store) = open_temp();
    let store = Arc::new(store);
    let mut operations = Vec::new();
    for i in 0..16 {
        operations.push(create(store.as_ref(), "prod", i).await);
    }
    store.inject_sync_failure(20, eio()).expect("a store with fsync");
    let mut tasks = Vec::new();
    for (id, lease) in operations {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = 0u64;
            for seq in 1..=50 {
                match store.append(&lease, &[started(id, seq, "a")]).await {
                    Ok(()) => acknowledged += 1,
                    Err(StoreError::Unavailable(_)) => break,
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            (id, acknowledged)
        }));
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.push(task.await.expect("joins"));
    }
    assert!(acknowledged.iter().any(|(_, n)| *n < 50), "the failure never came");
    for (id, n) in &acknowledged {
        let records = store.read(*id).await.expect("reads");
        assert_eq!(records.len() as u64, 1 + n, "operation {id}");
    }
    drop(store);

    let store = SledStore::open(&path).expect("reopens");
    for (id, n) in &acknowledged {
        let records: Vec<Record> = store.read(*id).await.expect("reads");
        assert!(records.len() as u64 > *n, "operation {id} lost acknowledged records");
    }
}

#[tokio::test]
async fn an_append_whose_caller_stopped_waiting_shows_once_synced() {
    let (_dir, _path, store) = open_temp();
    let (id, lease) = create(&store, "prod", 10).await;
    let (other, other_lease) = create(&store, "prod", 11).await;
    // Polled once (sled then holds the record, and the future waits for the sync), then dropped.
    let record = [started(id, 1, "a")];
    let mut append = Box::pin(store.append(&lease, &record));
    let polled = append.as_mut().poll(&mut Context::from_waker(Waker::noop()));
    drop(append);
    if let Poll::Ready(result) = polled {
        result.expect("appends");
    }
    // A later sync covers it: then it is durable, and shown.
    store.append(&other_lease, &[started(other, 1, "a")]).await.expect("appends");
    assert_eq!(store.read(id).await.expect("reads").len(), 2);
    store.append(&lease, &[succeeded(id, 2, "a", b"1")]).await.expect("continues");
    assert_eq!(store.read(id).await.expect("reads").len(), 3);
}

#[tokio::test]
async fn without_fsync_nothing_is_hidden() {
    let (_dir, path) = temp_store_path();
    let store = SledStore::open_without_fsync(&path).expect("opens");
    let (id, lease) = create(&store, "prod", 10).await;
    store.append(&lease, &[started(id, 1, "a"), finished(id, 2)]).await.expect("appends");
    assert_eq!(store.read(id).await.expect("reads").len(), 3);
    assert!(store.list_unfinished().await.expect("lists").ids.is_empty());
    let hook = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store.inject_sync_failure(0, eio()).expect("a store with fsync");
    }));
    assert!(hook.is_err(), "a store that never syncs cannot fail a sync");
}
