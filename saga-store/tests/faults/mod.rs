//! A failing sync, injected with `SledStore::inject_sync_failure`: the write waiting for it
//! fails, reads show acknowledged records only, the store refuses later writes, and a reopened
//! store holds every acknowledged record.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use saga_core::log::{LogLevel, LogLine, LogSource, Record};
use saga_core::store::{CancelRecorded, CancelRequest, Lease, Store, StoreError};
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
    assert!(is_unavailable(&store.request_cancel(&cancel_request(id, "late")).await));
    assert!(is_unavailable(&store.append_log(lease, &[log_line(id, 0)]).await));
}

fn log_line(id: OperationId, seq: u64) -> LogLine {
    LogLine {
        operation: id,
        seq,
        at_ms: 100 + seq,
        level: LogLevel::Info,
        source: LogSource::Engine,
        step: None,
        message: format!("line {seq}"),
    }
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

// ---------------------------------------------------------------- cancel requests

/// Polls `future` once (with a waker that does nothing): what it does before its first wait is
/// done when this returns. Returns its output if it did not wait.
fn poll_once<F: Future + ?Sized>(future: std::pin::Pin<&mut F>) -> Option<F::Output> {
    match future.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// How long a held sync may take to reach the hold: a bound for a store that never syncs, not
/// a wait for timing.
const REACH: std::time::Duration = std::time::Duration::from_secs(60);

/// The pending request and the records of `id` in a store reopened after a failure agree:
/// either the write happened whole or not at all, as `whole` and `none` say, and a barrier
/// append then is refused exactly when a request is pending.
async fn pending_agrees(
    store: &SledStore,
    id: OperationId,
    lease: &Lease,
) -> Option<CancelRequest> {
    let pending = store.pending_cancel(id).await.expect("reads the pending request");
    let listed = store.cancel_requests().await.expect("lists requests");
    assert_eq!(listed, pending.iter().cloned().collect::<Vec<_>>(), "the listing agrees");
    let unfinished = store.list_unfinished().await.expect("lists").ids.contains(&id);
    let records = store.read(id).await.expect("reads");
    if !unfinished {
        assert!(pending.is_none(), "a finished Operation keeps no request: {pending:?}");
        return pending;
    }
    let next = records.len() as u64;
    let barrier = store.append(lease, &[passed(id, next)]).await;
    match (&pending, &barrier) {
        (Some(request), Err(StoreError::CancelPending { request: refused, .. })) => {
            assert_eq!(**refused, *request);
            assert_eq!(store.read(id).await.expect("reads"), records, "nothing written");
        }
        (None, Ok(())) => {}
        other => panic!("the pending request and the barrier disagree: {other:?}"),
    }
    pending
}

#[tokio::test]
async fn a_failed_sync_of_a_cancel_request_is_never_shown_as_pending() {
    let (_dir, path, store) = open_temp();
    let (id, lease) = create(&store, "prod", 10).await;
    let request = cancel_request(id, "amy");
    store.inject_sync_failure(0, eio()).expect("a store with fsync");
    let failed = store.request_cancel(&request).await;
    assert!(is_unavailable(&failed), "{failed:?}");
    // In sled's memory, never acknowledged: not pending for any reader.
    assert_eq!(store.pending_cancel(id).await.expect("reads"), None);
    assert!(store.cancel_requests().await.expect("lists").is_empty());
    assert_eq!(store.read(id).await.expect("reads").len(), 1);
    refuses_writes(&store, id, &lease, 1).await;
    drop(store);

    // Reopened: the request is there or not; whichever, the store acts on it.
    let store = SledStore::open(&path).expect("reopens");
    assert_eq!(store.read(id).await.expect("reads").len(), 1);
    if let Some(pending) = pending_agrees(&store, id, &lease).await {
        assert_eq!(pending, request);
    }
    assert!(store.check(false).await.expect("checks").is_healthy());
}

#[tokio::test]
async fn a_failed_sync_of_an_answer_keeps_the_request_pending() {
    // The answer alone, and the answer with the rollback's finish (the finishing path).
    for finish in [false, true] {
        let (_dir, path, store) = open_temp();
        let (id, lease) = create(&store, "prod", 10).await;
        let (other, _) = create(&store, "prod", 11).await;
        let request = cancel_request(id, "amy");
        let recorded = store.request_cancel(&request).await.expect("requests");
        assert_eq!(recorded, CancelRecorded::Recorded);
        let mut answer = vec![cancelled(id, 1, "amy")];
        if finish {
            answer.push(rolled_back(id, 2));
        }
        store.inject_sync_failure(0, eio()).expect("a store with fsync");
        let failed = store.append(&lease, &answer).await;
        assert!(is_unavailable(&failed), "finish {finish}: {failed:?}");
        // The removal was not acknowledged: the request is still pending, the answer not shown.
        assert_eq!(store.pending_cancel(id).await.expect("reads"), Some(request.clone()));
        assert_eq!(store.cancel_requests().await.expect("lists"), vec![request.clone()]);
        assert_eq!(store.read(id).await.expect("reads").len(), 1);
        assert_eq!(store.list_unfinished().await.expect("lists").ids.len(), 2);
        refuses_writes(&store, id, &lease, 1).await;
        drop(store);

        // Reopened: the answer and the removal both happened, or neither.
        let store = SledStore::open(&path).expect("reopens");
        let records = store.read(id).await.expect("reads");
        let pending = store.pending_cancel(id).await.expect("reads");
        if records.len() == 1 {
            assert_eq!(pending, Some(request.clone()), "finish {finish}: no answer, so pending");
        } else {
            assert_eq!(records[1..], answer[..], "finish {finish}: the answer whole");
            assert_eq!(pending, None, "finish {finish}: answered, so not pending");
        }
        let unfinished = store.list_unfinished().await.expect("lists").ids;
        assert_eq!(unfinished.contains(&id), records.len() < 3, "finish {finish}");
        assert!(unfinished.contains(&other));
        pending_agrees(&store, id, &lease).await;
        assert!(store.check(false).await.expect("checks").is_healthy());
    }
}

#[tokio::test]
async fn a_failed_sync_of_a_barrier_shows_no_barrier() {
    let (_dir, path, store) = open_temp();
    let (id, lease) = create(&store, "prod", 10).await;
    store.inject_sync_failure(0, eio()).expect("a store with fsync");
    let failed = store.append(&lease, &[started(id, 1, "a"), passed(id, 2)]).await;
    assert!(is_unavailable(&failed), "{failed:?}");
    assert_eq!(store.read(id).await.expect("reads").len(), 1);
    assert_eq!(store.pending_cancel(id).await.expect("reads"), None);
    refuses_writes(&store, id, &lease, 1).await;
    drop(store);

    let store = SledStore::open(&path).expect("reopens");
    let records = store.read(id).await.expect("reads");
    assert!(records.len() == 1 || records.len() == 3, "a torn append: {records:?}");
    assert_eq!(store.pending_cancel(id).await.expect("reads"), None);
    // A request now is recorded (the Operation is unfinished), and stops a finish either way.
    let request = cancel_request(id, "lee");
    assert_eq!(store.request_cancel(&request).await.expect("requests"), CancelRecorded::Recorded);
    let next = records.len() as u64;
    let finish = store.append(&lease, &[finished(id, next)]).await;
    assert!(matches!(&finish, Err(StoreError::CancelPending { request: r, .. }) if **r == request));
    assert!(store.check(false).await.expect("checks").is_healthy());
}

/// Answers that rest on a write whose sync runs (a pending request, a finish) wait for it, and
/// readers show none of it before: with the syncs held, a second request, a barrier and a
/// request after an unacknowledged finish all wait, and come out as the acknowledged writes say.
#[tokio::test]
async fn answers_resting_on_an_unacknowledged_write_wait_for_its_sync() {
    let (_dir, _path, store) = open_temp();
    let (id, lease) = create(&store, "prod", 10).await;
    let amy = cancel_request(id, "amy");
    let zed = cancel_request(id, "zed");

    let hold = store.hold_syncs().expect("a store with fsync");
    let mut first = Box::pin(store.request_cancel(&amy));
    assert!(poll_once(first.as_mut()).is_none(), "a request waits for its sync");
    assert!(hold.wait_until_held(REACH), "the request's sync reaches the hold");
    assert_eq!(store.pending_cancel(id).await.expect("reads"), None, "not acknowledged yet");
    assert!(store.cancel_requests().await.expect("lists").is_empty());
    let mut second = Box::pin(store.request_cancel(&zed));
    assert!(poll_once(second.as_mut()).is_none(), "the second waits for the first's sync");
    let barrier = [passed(id, 1)];
    let mut refused = Box::pin(store.append(&lease, &barrier));
    assert!(poll_once(refused.as_mut()).is_none(), "the barrier waits for the request's sync");
    hold.release();
    assert_eq!(first.await.expect("requests"), CancelRecorded::Recorded);
    assert_eq!(second.await.expect("answers"), CancelRecorded::AlreadyPending(amy.clone()));
    match refused.await {
        Err(StoreError::CancelPending { request, .. }) => assert_eq!(*request, amy),
        other => panic!("expected CancelPending, got {other:?}"),
    }
    assert_eq!(store.pending_cancel(id).await.expect("reads"), Some(amy.clone()));

    // The answer's removal is shown only once acknowledged.
    let hold = store.hold_syncs().expect("a store with fsync");
    let answer = [cancelled(id, 1, "amy")];
    let mut answering = Box::pin(store.append(&lease, &answer));
    assert!(poll_once(answering.as_mut()).is_none(), "an append waits for its sync");
    assert!(hold.wait_until_held(REACH), "the answer's sync reaches the hold");
    assert_eq!(store.pending_cancel(id).await.expect("reads"), Some(amy.clone()));
    assert_eq!(store.cancel_requests().await.expect("lists"), vec![amy.clone()]);
    assert_eq!(store.read(id).await.expect("reads").len(), 1);
    hold.release();
    answering.await.expect("answers");
    assert_eq!(store.pending_cancel(id).await.expect("reads"), None);
    assert!(store.cancel_requests().await.expect("lists").is_empty());

    // A request after a finish whose sync runs is answered once the finish is acknowledged.
    let hold = store.hold_syncs().expect("a store with fsync");
    let finish = [rolled_back(id, 2)];
    let mut finishing = Box::pin(store.append(&lease, &finish));
    let _ = poll_once(finishing.as_mut());
    assert!(hold.wait_until_held(REACH), "the finish's sync reaches the hold");
    assert_eq!(store.list_unfinished().await.expect("lists").ids, vec![id], "not finished yet");
    let mut late = Box::pin(store.request_cancel(&zed));
    assert!(poll_once(late.as_mut()).is_none(), "the request waits for the finish's sync");
    hold.release();
    finishing.await.expect("finishes");
    assert_eq!(late.await.expect("answers"), CancelRecorded::Finished);
    assert!(store.cancel_requests().await.expect("lists").is_empty());
    assert!(store.check(false).await.expect("checks").is_healthy());
}

/// The same waits, when the sync they wait for fails: a typed error, never an answer that rests
/// on a write that was not acknowledged; and the reopened store agrees with itself.
#[tokio::test]
async fn answers_resting_on_a_write_whose_sync_fails_fail_with_it() {
    let (_dir, path, store) = open_temp();
    let (id, lease) = create(&store, "prod", 10).await;
    let hold = store.hold_syncs().expect("a store with fsync");
    store.inject_sync_failure(0, eio()).expect("a store with fsync");
    let (amy, zed) = (cancel_request(id, "amy"), cancel_request(id, "zed"));
    let mut first = Box::pin(store.request_cancel(&amy));
    assert!(poll_once(first.as_mut()).is_none(), "a request waits for its sync");
    assert!(hold.wait_until_held(REACH), "the request's sync reaches the hold");
    let mut second = Box::pin(store.request_cancel(&zed));
    assert!(poll_once(second.as_mut()).is_none(), "the second waits for the first's sync");
    let barrier = [passed(id, 1)];
    let mut refused = Box::pin(store.append(&lease, &barrier));
    assert!(poll_once(refused.as_mut()).is_none(), "the barrier waits for the request's sync");
    hold.release();
    assert!(is_unavailable(&first.await));
    let second = second.await;
    assert!(is_unavailable(&second), "not AlreadyPending: {second:?}");
    let refused = refused.await;
    assert!(is_unavailable(&refused), "not CancelPending: {refused:?}");
    assert_eq!(store.pending_cancel(id).await.expect("reads"), None);
    assert_eq!(store.read(id).await.expect("reads").len(), 1);
    drop(store);
    let store = SledStore::open(&path).expect("reopens");
    assert_eq!(store.read(id).await.expect("reads").len(), 1, "the barrier was never written");
    pending_agrees(&store, id, &lease).await;
    drop(store);

    // A finish whose sync fails: a request waiting for it fails too, never `Finished`.
    let (_dir, path, store) = open_temp();
    let (id, lease) = create(&store, "prod", 10).await;
    let hold = store.hold_syncs().expect("a store with fsync");
    store.inject_sync_failure(0, eio()).expect("a store with fsync");
    let finish = [finished(id, 1)];
    let mut finishing = Box::pin(store.append(&lease, &finish));
    let _ = poll_once(finishing.as_mut());
    assert!(hold.wait_until_held(REACH), "the finish's sync reaches the hold");
    let lee = cancel_request(id, "lee");
    let mut late = Box::pin(store.request_cancel(&lee));
    assert!(poll_once(late.as_mut()).is_none(), "the request waits for the finish's sync");
    hold.release();
    assert!(is_unavailable(&finishing.await));
    let late = late.await;
    assert!(is_unavailable(&late), "not Finished: {late:?}");
    assert_eq!(store.list_unfinished().await.expect("lists").ids, vec![id]);
    drop(store);
    let store = SledStore::open(&path).expect("reopens");
    let finished_now = store.read(id).await.expect("reads").len() == 2;
    let answer = store.request_cancel(&cancel_request(id, "lee")).await.expect("answers");
    let expected = if finished_now { CancelRecorded::Finished } else { CancelRecorded::Recorded };
    assert_eq!(answer, expected);
    assert!(store.check(false).await.expect("checks").is_healthy());
}
