//! Wake-ups from `LISTEN` on a real server: `Missed` at every (re)connection of the listener,
//! payloads this release does not know passed over, and `Settled` only for an append that
//! wrote. Other tests share the database's channels: their wake-ups are passed over too.

use std::time::Duration;

use saga_core::store::{Store, StoreError, WakeUp};
use saga_core::OperationId;
use tokio::sync::broadcast::{error::RecvError, Receiver};

use crate::support::{admin, created, finished, request, terminate, url, Schema, EVENT, LONG};

/// Waits for `expected`, passing over every other wake-up; returns those passed over.
async fn told(rx: &mut Receiver<WakeUp>, expected: WakeUp) -> Vec<WakeUp> {
    let mut passed = Vec::new();
    let deadline = tokio::time::Instant::now() + EVENT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(wake_up)) if wake_up == expected => return passed,
            Ok(Ok(other)) => passed.push(other),
            Ok(Err(RecvError::Lagged(_))) => passed.push(WakeUp::Missed),
            Ok(Err(RecvError::Closed)) => panic!("the wake-ups closed waiting for {expected:?}"),
            Err(_) => panic!("no {expected:?} within {EVENT:?}; passed over {passed:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_ups_tell_a_reconnection_and_pass_over_what_they_do_not_know() {
    let Some(url) = url("wake_ups_tell_a_reconnection_and_pass_over_what_they_do_not_know") else {
        return;
    };
    let schema = Schema::new(&url);
    let store = schema.store().await;
    let admin = admin(&url).await;
    let Some(mut rx) = store.wake_ups() else { panic!("a PostgreSQL store has wake-ups") };
    // The listener connects in the background: its first connection is told.
    told(&mut rx, WakeUp::Missed).await;

    // Unknown payloads are passed over; an id of another schema's Operation is told.
    let elsewhere = OperationId::new();
    admin
        .execute(
            "SELECT pg_notify('saga_wake', 'garbage'), pg_notify('saga_wake', 'settled x'), \
             pg_notify('saga_wake', 'rolled ' || $1), pg_notify('saga_cancel', 'nobody'), \
             pg_notify('saga_wake', 'settled ' || $1)",
            &[&elsewhere.to_string()],
        )
        .await
        .expect("notifies");
    told(&mut rx, WakeUp::Settled(elsewhere)).await;

    // A finishing append that is refused (a request is pending) is not told; the finish after
    // the answer is.
    let id = OperationId::new();
    let lease = store.create(&created(id, "prod", 1), "me", LONG).await.expect("creates");
    store.request_cancel(&request(id, "amy")).await.expect("requests");
    match store.append(&lease, &[finished(id, 1)]).await {
        Err(StoreError::CancelPending { .. }) => {}
        other => panic!("finishing with a request pending: {other:?}"),
    }
    let answer = crate::support::refused(id, 1, "amy");
    store.append(&lease, &[answer]).await.expect("refuses");
    store.append(&lease, &[finished(id, 2)]).await.expect("finishes");
    let passed = told(&mut rx, WakeUp::Settled(id)).await;
    assert!(passed.contains(&WakeUp::CancelRequested(id)), "{passed:?}");
    // Notifications come in commit order: a Settled of the refused finish would be here.
    assert!(!passed.contains(&WakeUp::Settled(id)), "{passed:?}");

    // The listening connection is lost: the next connection is told, and wake-ups go on.
    let terminated = terminate(&admin, &schema.name).await;
    assert!(terminated >= 1, "no connection was terminated");
    told(&mut rx, WakeUp::Missed).await;
    let submitted = OperationId::new();
    store.create(&created(submitted, "prod", 2), "me", Duration::ZERO).await.expect("submits");
    told(&mut rx, WakeUp::Claimable(submitted)).await;
}
