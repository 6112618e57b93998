//! Records: appended in sequence only, and read back exactly as acknowledged.

use saga_core::log::{Record, RecordKind};
use saga_core::store::StoreError;
use saga_core::{NotUndone, NotUndoneReason, OperationId, Outcome, RollbackCause};

use super::LONG;
use std::sync::Arc;

use saga_core::store::Store;

use super::support::*;

/// Records are appended in sequence only: any other sequence number is
/// [`StoreError::OutOfSequence`] naming the expected and the given number, and nothing of a
/// refused batch is written; records of another Operation are refused; `read` returns records
/// in order (past 255 too) and [`StoreError::NotFound`] for an unknown id; a second `create` is
/// [`StoreError::AlreadyExists`]; a `create` of anything but `OperationCreated` at sequence 0 is
/// refused and leaves no trace.
pub async fn ordering_and_gaps<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("ordering_and_gaps", store)
        .run(|cx| async move {
            let (id, lease, first) = cx.create("prod", 10, "me").await;
            cx.assert_records(id, std::slice::from_ref(&first), "after create").await;

            let gap = cx.store.append(&lease, &[started(id, 2)]).await;
            cx.out_of_sequence(&gap, id, 1, 2, "appending record 2 right after create");
            let again = cx.store.append(&lease, &[started(id, 0)]).await;
            cx.out_of_sequence(&again, id, 1, 0, "appending record 0 again");
            let holed = cx.store.append(&lease, &[started(id, 1), started(id, 3)]).await;
            cx.out_of_sequence(&holed, id, 2, 3, "appending the batch [1, 3]");
            cx.assert_records(id, std::slice::from_ref(&first), "after refused appends").await;

            let other = OperationId::new();
            let foreign = cx.store.append(&lease, &[started(other, 1)]).await;
            cx.refused(&foreign, "appending another Operation's record 1 with this lease");
            let mixed = cx.store.append(&lease, &[started(id, 1), started(other, 2)]).await;
            cx.refused(&mixed, "appending [this Operation's 1, another Operation's 2]");
            cx.assert_records(id, std::slice::from_ref(&first), "after foreign records").await;

            // In order, in batches and alone, and past 255 (keys that sort as bytes or text).
            let mut expected = vec![first.clone()];
            let batch: Vec<Record> = (1..=3).map(|seq| started(id, seq)).collect();
            cx.ok("appending the batch [1, 2, 3]", cx.store.append(&lease, &batch).await);
            expected.extend(batch);
            let one = started(id, 4);
            cx.ok("appending record 4", cx.store.append(&lease, std::slice::from_ref(&one)).await);
            expected.push(one);
            let dup = cx.store.append(&lease, &[started(id, 4)]).await;
            cx.out_of_sequence(&dup, id, 5, 4, "appending record 4 twice");
            for from in [5, 105, 205] {
                let batch: Vec<Record> = (from..from + 100).map(|seq| started(id, seq)).collect();
                cx.ok("appending a batch of 100", cx.store.append(&lease, &batch).await);
                expected.extend(batch);
            }
            cx.assert_records(id, &expected, "after 305 records").await;

            let unknown = OperationId::new();
            match cx.store.read(unknown).await {
                Err(StoreError::NotFound(x)) if x == unknown => {}
                other => cx.fail(format!(
                    "reading an unknown id: expected NotFound({unknown}), got {}",
                    brief(&other)
                )),
            }

            let twice = cx.store.create(&created(id, "prod", 10), "me", LONG).await;
            match &twice {
                Err(StoreError::AlreadyExists(x)) if *x == id => {}
                other => cx.fail(format!(
                    "creating {id} twice: expected AlreadyExists({id}), got {}",
                    brief(other)
                )),
            }
            let elsewhere = cx.store.create(&created(id, "staging", 10), "other", LONG).await;
            if !matches!(&elsewhere, Err(StoreError::AlreadyExists(x)) if *x == id) {
                cx.fail(format!(
                    "creating {id} again in another environment: expected AlreadyExists({id}), \
                     got {}",
                    brief(&elsewhere)
                ));
            }
            cx.assert_records(id, &expected, "after creating it twice").await;
            cx.assert_env("staging", 0, u64::MAX, &[], "after a refused create there").await;
            let owned = cx.store.claim(id, "other", LONG).await;
            cx.owned(&owned, "me", "claiming after a refused second create by `other`");

            let not_created = OperationId::new();
            let wrong = cx.store.create(&started(not_created, 0), "me", LONG).await;
            cx.refused(&wrong, "creating with a StepStarted record");
            cx.assert_absent(not_created, "after a create with a StepStarted record").await;
            let late = OperationId::new();
            let mut at_one = created(late, "prod", 11);
            at_one.seq = 1;
            let wrong = cx.store.create(&at_one, "me", LONG).await;
            cx.refused(&wrong, "creating with an OperationCreated record at sequence 1");
            cx.assert_absent(late, "after a create at sequence 1").await;
            cx.assert_unfinished(&[id], "after the refused creates").await;
            cx.assert_env("prod", 0, u64::MAX, &[id], "after the refused creates").await;

            let unknown = OperationId::new();
            match cx.store.claim(unknown, "me", LONG).await {
                Err(StoreError::NotFound(x)) if x == unknown => {}
                other => cx.fail(format!(
                    "claiming an unknown id: expected NotFound({unknown}), got {}",
                    brief(&other)
                )),
            }
        })
        .await;
}

/// What an `Ok` acknowledged is what reads show, at once: `read` after every `create` and
/// `append` returns exactly the records written (every record kind, a 256 KiB record), the
/// listings show a new Operation, a finishing append removes it from the unfinished list at
/// once, and an empty append changes nothing.
pub async fn acknowledged_writes<S: Store + ?Sized>(store: Arc<S>) {
    Ctx::new("acknowledged_writes", store)
        .run(|cx| async move {
            let now = saga_core::Timestamp::now().unix_ms();
            let (id, lease, first) = cx.create("prod", now, "me").await;
            cx.assert_unfinished(&[id], "right after create").await;
            cx.assert_env("prod", now, now + 1, &[id], "right after create").await;
            cx.ok("an empty append right after create", cx.store.append(&lease, &[]).await);
            let mut expected = vec![first];
            cx.assert_records(id, &expected, "after an empty append").await;

            let large = vec![b'7'; 256 * 1024];
            let kinds = vec![
                RecordKind::StepStarted { step: "vm".into(), attempt: 1 },
                RecordKind::StepFailed {
                    step: "vm".into(),
                    error: "quota exceeded, retrying".into(),
                    retryable: true,
                },
                RecordKind::StepStarted { step: "vm".into(), attempt: 2 },
                RecordKind::StepSucceeded {
                    step: "vm".into(),
                    output: br#"{"id":"i-1"}"#.to_vec(),
                },
                RecordKind::StepStarted { step: "big".into(), attempt: 1 },
                RecordKind::StepSucceeded { step: "big".into(), output: large },
                RecordKind::CancelRequested { actor: "alice".into(), reason: "wrong size".into() },
                RecordKind::CompensationStarted { step: "big".into(), attempt: 1 },
                RecordKind::CompensationFailed {
                    step: "big".into(),
                    error: "still attached".into(),
                    retryable: false,
                },
                RecordKind::CompensationStarted { step: "vm".into(), attempt: 1 },
                RecordKind::CompensationSucceeded { step: "vm".into() },
            ];
            for kind in kinds {
                let name = kind.name();
                let r = record(id, expected.len() as u64, kind);
                let what = format!("appending {name} at {}", r.seq);
                cx.ok(&what, cx.store.append(&lease, std::slice::from_ref(&r)).await);
                expected.push(r);
                cx.assert_records(id, &expected, &format!("right after {what}")).await;
            }
            cx.ok("an empty append", cx.store.append(&lease, &[]).await);
            cx.assert_records(id, &expected, "after an empty append").await;
            cx.assert_unfinished(&[id], "before OperationFinished").await;

            let outcome = Outcome::RollbackIncomplete {
                cause: RollbackCause::Cancelled {
                    actor: "alice".into(),
                    reason: "wrong size".into(),
                },
                not_undone: vec![NotUndone {
                    step: "big".into(),
                    reason: NotUndoneReason::CompensationFailed("still attached".into()),
                }],
            };
            let done = record(id, expected.len() as u64, RecordKind::OperationFinished { outcome });
            cx.ok(
                "appending OperationFinished",
                cx.store.append(&lease, std::slice::from_ref(&done)).await,
            );
            expected.push(done);
            cx.assert_records(id, &expected, "right after OperationFinished").await;
            cx.assert_unfinished(&[], "right after OperationFinished").await;
            cx.assert_env("prod", 0, u64::MAX, &[id], "after OperationFinished").await;

            // The kinds of the point of no return: a failure without effect, attention needed,
            // retried, needed again, and the Operation abandoned.
            let (other, lease, first) = cx.create("prod", now + 1, "me").await;
            let mut expected = vec![first];
            let kinds = vec![
                RecordKind::StepStarted { step: "swap".into(), attempt: 1 },
                RecordKind::StepFailedWithoutEffect {
                    step: "swap".into(),
                    error: "refused".into(),
                    retryable: true,
                },
                RecordKind::StepStarted { step: "swap".into(), attempt: 2 },
                RecordKind::StepFailed {
                    step: "swap".into(),
                    error: "timed out".into(),
                    retryable: true,
                },
                RecordKind::AttentionNeeded { step: "swap".into(), error: "timed out".into() },
                RecordKind::AttentionRetried { actor: "bob".into(), reason: "fixed it".into() },
                RecordKind::StepStarted { step: "swap".into(), attempt: 3 },
                RecordKind::StepFailed {
                    step: "swap".into(),
                    error: "timed out again".into(),
                    retryable: true,
                },
                RecordKind::AttentionNeeded {
                    step: "swap".into(),
                    error: "timed out again".into(),
                },
            ];
            for kind in kinds {
                let name = kind.name();
                let r = record(other, expected.len() as u64, kind);
                let what = format!("appending {name} at {}", r.seq);
                cx.ok(&what, cx.store.append(&lease, std::slice::from_ref(&r)).await);
                expected.push(r);
                cx.assert_records(other, &expected, &format!("right after {what}")).await;
            }
            cx.assert_unfinished(&[other], "while an Operation needs attention").await;
            let outcome = Outcome::Abandoned {
                step: "swap".into(),
                error: "timed out again".into(),
                actor: "bob".into(),
                reason: "done by hand".into(),
            };
            let done =
                record(other, expected.len() as u64, RecordKind::OperationFinished { outcome });
            cx.ok(
                "appending OperationFinished (abandoned)",
                cx.store.append(&lease, std::slice::from_ref(&done)).await,
            );
            expected.push(done);
            cx.assert_records(other, &expected, "right after OperationFinished (abandoned)").await;
            cx.assert_unfinished(&[], "right after OperationFinished (abandoned)").await;
            cx.assert_env("prod", 0, u64::MAX, &[id, other], "after both finished").await;
        })
        .await;
}
