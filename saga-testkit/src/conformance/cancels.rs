//! Cancel requests: recorded once, listed, answered by an append, and decided against passing
//! the point of no return (and finishing) by the store.

use std::sync::Arc;

use saga_core::log::{Record, RecordKind};
use saga_core::store::{CancelRecorded, CancelRequest, Store, StoreError};
use saga_core::{OperationId, Outcome, RollbackCause};

use super::{brief, finished, record, started, Ctx};

fn request(id: OperationId, actor: &str) -> CancelRequest {
    CancelRequest {
        operation: id,
        actor: actor.into(),
        reason: format!("{actor} says stop"),
        at_ms: saga_core::Timestamp::now().unix_ms(),
    }
}

fn passed(id: OperationId, seq: u64) -> Record {
    record(id, seq, RecordKind::PointOfNoReturnPassed { step: "migrate".into() })
}

fn cancelled(id: OperationId, seq: u64, actor: &str) -> Record {
    record(id, seq, RecordKind::CancelRequested { actor: actor.into(), reason: "stop".into() })
}

fn refused(id: OperationId, seq: u64, actor: &str) -> Record {
    let kind = RecordKind::CancelRefused {
        actor: actor.into(),
        reason: "stop".into(),
        requested_ms: 1,
        refusal: "past the point of no return (step migrate)".into(),
    };
    record(id, seq, kind)
}

fn rolled_back(id: OperationId, seq: u64) -> Record {
    let cause = RollbackCause::Cancelled { actor: "amy".into(), reason: "stop".into() };
    record(id, seq, RecordKind::OperationFinished { outcome: Outcome::RolledBack { cause } })
}

/// `request_cancel` records the first request of an unfinished Operation
/// ([`CancelRecorded::Recorded`]); a second one is answered
/// [`CancelRecorded::AlreadyPending`] with the first, which stays; `cancel_requests` lists every
/// pending one in id order and `pending_cancel` one Operation's; an append of `CancelRequested`,
/// `CancelRefused` or `OperationFinished` answers (removes) it, after which a new request is
/// recorded again; a finished Operation takes none ([`CancelRecorded::Finished`]); an unknown one
/// is [`StoreError::NotFound`]; and `delete_environment` removes its Operations' requests.
pub async fn cancel_requests<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("cancel_requests", store)
        .run(|cx| async move {
            let listed = |requests: Vec<CancelRequest>| {
                requests.into_iter().map(|r| (r.operation, r.actor)).collect::<Vec<_>>()
            };
            let none = cx.ok("listing on an empty store", cx.store.cancel_requests().await);
            if !none.is_empty() {
                cx.fail(format!("an empty store lists cancel requests: {none:?}"));
            }
            let (a, la, _) = cx.create("prod", saga_core::Timestamp::now().unix_ms(), "x").await;
            let (b, lb, _) = cx.create("prod", saga_core::Timestamp::now().unix_ms(), "x").await;
            let (gone, _, _) = cx.create("gone", saga_core::Timestamp::now().unix_ms(), "x").await;
            let pending = cx.ok("reading a's pending request", cx.store.pending_cancel(a).await);
            cx.equal(pending, None, "a's pending request before any");
            let amy = request(a, "amy");
            let answer = cx.ok("requesting a cancel of a", cx.store.request_cancel(&amy).await);
            cx.equal(answer, CancelRecorded::Recorded, "the first request of a");
            let answer =
                cx.ok("requesting again", cx.store.request_cancel(&request(a, "zed")).await);
            cx.equal(answer, CancelRecorded::AlreadyPending(amy.clone()), "a second request of a");
            let bob = request(b, "bob");
            cx.ok("requesting a cancel of b", cx.store.request_cancel(&bob).await);
            cx.ok(
                "requesting a cancel of gone",
                cx.store.request_cancel(&request(gone, "gil")).await,
            );
            let mut expected =
                vec![(a, "amy".to_owned()), (b, "bob".to_owned()), (gone, "gil".to_owned())];
            expected.sort();
            let got = listed(cx.ok("listing requests", cx.store.cancel_requests().await));
            if got != expected {
                cx.fail(format!(
                    "expected the first request of each, in id order: {expected:?}, got {got:?}"
                ));
            }
            let pending = cx.ok("reading a's pending request", cx.store.pending_cancel(a).await);
            cx.equal(pending, Some(amy.clone()), "a's pending request (with its reason and time)");

            // Answered by the cancel recorded in the log; a later request is recorded again.
            cx.ok("recording a's cancel", cx.store.append(&la, &[cancelled(a, 1, "amy")]).await);
            let pending = cx.ok("reading a's pending request", cx.store.pending_cancel(a).await);
            cx.equal(pending, None, "a's pending request after CancelRequested");
            let answer =
                cx.ok("requesting again", cx.store.request_cancel(&request(a, "ann")).await);
            cx.equal(answer, CancelRecorded::Recorded, "a request after the answer");
            // Answered by the rollback's finish.
            cx.ok("finishing a", cx.store.append(&la, &[rolled_back(a, 2)]).await);
            cx.ok("deleting gone's environment", cx.store.delete_environment("gone").await);
            let got = listed(cx.ok("listing requests", cx.store.cancel_requests().await));
            if got != vec![(b, "bob".to_owned())] {
                cx.fail(format!("finishing a and deleting gone left {got:?}"));
            }
            // Answered by a refusal.
            cx.ok("refusing b's request", cx.store.append(&lb, &[refused(b, 1, "bob")]).await);
            let got = listed(cx.ok("listing requests", cx.store.cancel_requests().await));
            if !got.is_empty() {
                cx.fail(format!("a refused request is still pending: {got:?}"));
            }
            let answer = cx.ok(
                "requesting a cancel of finished a",
                cx.store.request_cancel(&request(a, "amy")).await,
            );
            cx.equal(answer, CancelRecorded::Finished, "a request of a finished Operation");
            let got = listed(cx.ok("listing requests", cx.store.cancel_requests().await));
            if !got.is_empty() {
                cx.fail(format!("a finished Operation took a request: {got:?}"));
            }
            match cx.store.request_cancel(&request(OperationId::new(), "nobody")).await {
                Err(StoreError::NotFound(_)) => {}
                other => cx.fail(format!("a request of an unknown Operation: {}", brief(&other))),
            }
        })
        .await;
}

/// While a cancel request is pending, an append holding a cancel barrier
/// (`PointOfNoReturnPassed`, or `OperationFinished` as succeeded or abandoned) is
/// [`StoreError::CancelPending`] with that request and writes nothing, not even the records
/// before the barrier in the same append, nor an answer to the request beside it; any other
/// append goes in (and leaves the request pending); once the request is answered the barrier
/// goes in, and a request made after it is recorded (for the owner to refuse); a rollback's
/// finish goes in while a request is pending and answers it.
pub async fn cancel_barriers<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("cancel_barriers", store)
        .run(|cx| async move {
            let (a, la, first) =
                cx.create("prod", saga_core::Timestamp::now().unix_ms(), "x").await;
            let amy = request(a, "amy");
            cx.ok("requesting a cancel", cx.store.request_cancel(&amy).await);
            let pending_for =
                |result: &Result<(), StoreError>, pending: &CancelRequest, what| match result {
                    Err(StoreError::CancelPending { operation, request })
                        if *operation == a && **request == *pending => {}
                    other => cx.fail(format!(
                        "{what} with {}'s request pending: expected CancelPending naming it, \
                         got {}",
                        pending.actor,
                        brief(other)
                    )),
                };
            let pending = |result: &Result<(), StoreError>, what| pending_for(result, &amy, what);
            let batch = [started(a, 1), passed(a, 2)];
            pending(&cx.store.append(&la, &batch).await, "passing the point of no return");
            cx.assert_records(a, std::slice::from_ref(&first), "after the refused barrier").await;
            let done = [started(a, 1), record(a, 2, step_succeeded()), finished(a, 3)];
            pending(&cx.store.append(&la, &done).await, "finishing as succeeded");
            let abandoned = Outcome::Abandoned {
                step: "s".into(),
                error: "e".into(),
                actor: "op".into(),
                reason: "r".into(),
            };
            let abandon = [record(a, 1, RecordKind::OperationFinished { outcome: abandoned })];
            pending(&cx.store.append(&la, &abandon).await, "finishing as abandoned");
            cx.assert_records(a, std::slice::from_ref(&first), "after three refusals").await;
            let unfinished = cx.ok("listing unfinished", cx.store.list_unfinished().await).ids;
            if !unfinished.contains(&a) {
                cx.fail("a refused finish took the Operation out of the unfinished list");
            }
            // Anything else goes in, and the request stays.
            cx.ok("appending a step's start", cx.store.append(&la, &[started(a, 1)]).await);
            let still = cx.ok("reading the pending request", cx.store.pending_cancel(a).await);
            cx.equal(still, Some(amy.clone()), "the request after a plain append");
            // A barrier is refused even beside the answer in one append: the answer goes first.
            let answer = [record(a, 2, step_succeeded()), refused(a, 3, "amy"), passed(a, 4)];
            pending(&cx.store.append(&la, &answer).await, "refusing and passing in one append");
            let answer = [record(a, 2, step_succeeded()), refused(a, 3, "amy")];
            cx.ok("refusing the request", cx.store.append(&la, &answer).await);
            cx.ok("passing once it is answered", cx.store.append(&la, &[passed(a, 4)]).await);
            let late = request(a, "lee");
            let recorded =
                cx.ok("requesting after the barrier", cx.store.request_cancel(&late).await);
            cx.equal(recorded, CancelRecorded::Recorded, "a request after passing");
            pending_for(&cx.store.append(&la, &[finished(a, 5)]).await, &late, "finishing");
            cx.ok("refusing lee's request", cx.store.append(&la, &[refused(a, 5, "lee")]).await);
            cx.ok("finishing once it is answered", cx.store.append(&la, &[finished(a, 6)]).await);
            cx.assert_unfinished(&[], "after the finish").await;

            // A rollback's finish goes in with a request pending, and answers it.
            let (b, lb, _) = cx.create("prod", saga_core::Timestamp::now().unix_ms(), "x").await;
            cx.ok("cancelling b", cx.store.append(&lb, &[cancelled(b, 1, "bob")]).await);
            cx.ok("requesting b again", cx.store.request_cancel(&request(b, "bea")).await);
            cx.ok("finishing b rolled back", cx.store.append(&lb, &[rolled_back(b, 2)]).await);
            let left = cx.ok("listing requests", cx.store.cancel_requests().await);
            if !left.is_empty() {
                cx.fail(format!("requests left after every Operation finished: {left:?}"));
            }
        })
        .await;
}

fn step_succeeded() -> RecordKind {
    RecordKind::StepSucceeded { step: "step-1".into(), output: b"null".to_vec() }
}
