//! Cancel requests, log lines and wake-ups on `SledStore` beyond the conformance suite: what
//! survives a reopen, and what is told only once it is durable.

use std::time::Duration;

use saga_core::store::{CancelRecorded, Store, StoreError, WakeUp};
use saga_store::SledStore;
use tokio::sync::broadcast::error::TryRecvError;

use crate::support::*;

#[tokio::test]
async fn a_pending_request_survives_a_clean_close() {
    for fsync in [true, false] {
        let (_dir, path) = temp_store_path();
        let store = if fsync {
            SledStore::open(&path).expect("opens")
        } else {
            SledStore::open_without_fsync(&path).expect("opens")
        };
        let (id, lease) = create(&store, "prod", 10).await;
        let request = cancel_request(id, "amy");
        assert_eq!(
            store.request_cancel(&request).await.expect("requests"),
            CancelRecorded::Recorded
        );
        drop(store);

        let store = SledStore::open(&path).expect("reopens");
        assert_eq!(store.pending_cancel(id).await.expect("reads"), Some(request.clone()));
        assert_eq!(store.cancel_requests().await.expect("lists"), vec![request.clone()]);
        let again = store.request_cancel(&cancel_request(id, "zed")).await.expect("answers");
        assert_eq!(again, CancelRecorded::AlreadyPending(request.clone()), "fsync {fsync}");
        let barrier = store.append(&lease, &[passed(id, 1)]).await;
        assert!(
            matches!(&barrier, Err(StoreError::CancelPending { request: r, .. }) if **r == request),
            "fsync {fsync}: {barrier:?}"
        );
        store.append(&lease, &[cancelled(id, 1, "amy")]).await.expect("answers");
        drop(store);
        let store = SledStore::open(&path).expect("reopens");
        assert_eq!(store.pending_cancel(id).await.expect("reads"), None, "fsync {fsync}");
        assert_eq!(store.read(id).await.expect("reads").len(), 2);
    }
}

/// A wake-up tells of a write only once it is acknowledged: none while its sync is held, none
/// for a write whose sync failed.
#[tokio::test]
async fn wake_ups_come_only_once_the_write_is_acknowledged() {
    let (_dir, _path, store) = open_temp();
    let mut rx = store.wake_ups().expect("the sled store has wake-ups");
    let within = Duration::from_secs(60);

    let hold = store.hold_syncs().expect("a store with fsync");
    let id = saga_core::OperationId::new();
    let record = created(id, "s", "prod", 10);
    let mut submit = Box::pin(store.create(&record, "me", Duration::ZERO));
    let _ = futures_poll_once(submit.as_mut());
    assert!(hold.wait_until_held(within), "the create's sync reaches the hold");
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "told before it was durable");
    hold.release();
    let lease = submit.await.expect("submits");
    assert_eq!(rx.recv().await.expect("a wake-up"), WakeUp::Claimable(id));

    // A release while unfinished: Claimable; a request: CancelRequested; an answer that
    // finishes: Settled.
    store.release(&lease).await.expect("releases");
    assert_eq!(rx.recv().await.expect("a wake-up"), WakeUp::Claimable(id));
    let lease = store.claim(id, "me", TTL).await.expect("claims");
    store.request_cancel(&cancel_request(id, "amy")).await.expect("requests");
    assert_eq!(rx.recv().await.expect("a wake-up"), WakeUp::CancelRequested(id));
    store.append(&lease, &[cancelled(id, 1, "amy"), rolled_back(id, 2)]).await.expect("ends");
    assert_eq!(rx.recv().await.expect("a wake-up"), WakeUp::Settled(id));
    store.release(&lease).await.expect("releases a finished one");
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "a finished Operation is not claimable");

    // Failed syncs tell nothing.
    let (other, other_lease) = create(&store, "prod", 11).await;
    store.inject_sync_failure(0, std::io::Error::from_raw_os_error(5)).expect("fsync");
    let failed = store.request_cancel(&cancel_request(other, "bob")).await;
    assert!(matches!(failed, Err(StoreError::Unavailable(_))), "{failed:?}");
    let failed = store.append(&other_lease, &[finished(other, 1)]).await;
    assert!(matches!(failed, Err(StoreError::Unavailable(_))), "{failed:?}");
    let failed = store
        .create(&created(saga_core::OperationId::new(), "s", "p", 1), "me", Duration::ZERO)
        .await;
    assert!(matches!(failed, Err(StoreError::Unavailable(_))), "{failed:?}");
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "told of writes that failed");
}

fn futures_poll_once<F: std::future::Future + ?Sized>(
    future: std::pin::Pin<&mut F>,
) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    match future.poll(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}
