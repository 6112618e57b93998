//! Crashes: the executor dies after any record; a new one recovers to the uninterrupted outcome.

use std::sync::Arc;
use std::time::Duration;

use saga_core::log::{Record, RecordKind};
use saga_core::state::{Execution, OperationState};
use saga_core::store::Store;
use saga_core::{Error, MemoryStore, OperationId, Outcome, Resource, Saga, Start};

use crate::support::{CrashingStore, TestStep, World};

fn five(world: &World, fail_at: Option<usize>) -> Saga {
    let mut builder = Saga::builder("five", 1);
    for i in 0..5 {
        let name = format!("s{i}");
        let mut step = TestStep::new(&name, world);
        if Some(i) == fail_at {
            step = step.failing();
            step.partial = true;
        }
        builder = builder.step(name, step);
    }
    builder.build().unwrap()
}

async fn crash_everywhere(fail_at: Option<usize>) {
    // The uninterrupted run: its outcome, its world and how many records it writes.
    let world = World::default();
    let store = Arc::new(MemoryStore::new());
    let executor = crate::executor(store.clone(), vec![five(&world, fail_at)]);
    let id = crate::start(&executor, "five").await;
    let expected = executor.wait(id).await.unwrap();
    let expected_world = world.effects();
    let total = store.read(id).await.unwrap().len() as u64;
    assert!(total >= 11, "a 5-step saga writes at least 11 records, wrote {total}");

    for crash_after in 1..=total {
        let world = World::default();
        let memory = Arc::new(MemoryStore::new());
        let crashing = Arc::new(CrashingStore::new(memory.clone(), crash_after));
        let first = crate::executor(crashing, vec![five(&world, fail_at)]);
        let id = crate::start(&first, "five").await;
        let first_result = first.wait(id).await;
        if crash_after < total {
            assert!(
                matches!(first_result, Err(Error::Halted { .. })),
                "crash after {crash_after}: {first_result:?}"
            );
        }
        drop(first);

        let second = crate::executor(memory.clone(), vec![five(&world, fail_at)]);
        let report = second.recover().await.unwrap();
        assert!(report.unrecoverable.is_empty());
        let outcome = tokio::time::timeout(Duration::from_secs(10), second.wait(id))
            .await
            .unwrap_or_else(|_| panic!("crash after {crash_after}: recovery hangs"))
            .unwrap_or_else(|e| panic!("crash after {crash_after}: {e}"));
        assert_eq!(outcome, expected, "crash after record {crash_after}");
        assert_eq!(world.effects(), expected_world, "crash after record {crash_after}");
        // The whole log, across the crash, is legal.
        let records = memory.read(id).await.unwrap();
        OperationState::fold(id, &records)
            .unwrap_or_else(|e| panic!("crash after {crash_after}: {e}"));
        assert!(memory.list_unfinished().await.unwrap().ids.is_empty());
    }
}

#[tokio::test]
async fn a_crash_after_any_record_of_a_succeeding_saga_recovers_to_success() {
    crash_everywhere(None).await;
}

#[tokio::test]
async fn a_crash_after_any_record_of_a_failing_saga_recovers_to_the_same_rollback() {
    crash_everywhere(Some(3)).await;
}

#[tokio::test]
async fn an_unknown_saga_at_recovery_is_unrecoverable_and_the_others_still_recover() {
    let world = World::default();
    let memory = Arc::new(MemoryStore::new());
    let crashing = Arc::new(CrashingStore::new(memory.clone(), 2));
    let other = Saga::builder("retired", 3).step("x", TestStep::new("x", &world)).build().unwrap();
    let first = crate::executor(crashing, vec![five(&world, None), other]);
    let known = crate::start(&first, "five").await;
    let retired = first
        .start(
            Start::new("retired", Resource::new("app", "old"))
                .params(&())
                .environment("test")
                .actor("t"),
        )
        .await;
    // The budget is spent: the second start may fail to be created, or be created and halt.
    let _ = first.wait(known).await;
    drop(first);
    let retired = match retired {
        Ok(id) => id,
        Err(_) => {
            // Create the unknown-saga Operation directly in the store instead.
            let record = Record {
                operation: OperationId::new(),
                seq: 0,
                at_ms: 1,
                kind: RecordKind::OperationCreated {
                    saga: "retired".into(),
                    version: 3,
                    params: b"null".to_vec(),
                    environment: "test".into(),
                    resource: Resource::new("app", "old"),
                    actor: "t".into(),
                },
            };
            memory.create(&record, "node-0", Duration::ZERO).await.unwrap();
            record.operation
        }
    };

    let second = crate::executor(memory.clone(), vec![five(&world, None)]);
    let report = second.recover().await.unwrap();
    assert_eq!(report.resumed, vec![known]);
    assert_eq!(report.unrecoverable.len(), 1);
    let (id, cause) = &report.unrecoverable[0];
    assert_eq!(*id, retired);
    assert!(
        matches!(cause.as_ref(), Error::UnknownSaga { name, version: Some(3) } if name == "retired"),
        "{cause}"
    );
    assert_eq!(second.wait(known).await.unwrap(), Outcome::Succeeded);
    let err = second.wait(retired).await.unwrap_err();
    assert!(matches!(err, Error::Unrecoverable { .. }), "{err}");
    let log = second.log(retired).await.unwrap();
    assert!(log.last().unwrap().message.contains("unknown saga retired version 3"), "{log:?}");
}

/// On tokio's paused clock (the store is in memory): the 50 ms and the 200 ms step take no real
/// time, and the shutdown comes in the middle of the step, exactly.
#[tokio::test(start_paused = true)]
async fn shutdown_stops_at_a_step_boundary_and_recover_finishes() {
    let world = World::default();
    let memory = Arc::new(MemoryStore::new());
    let saga = |w: &World| {
        Saga::builder("s", 1)
            .step("a", TestStep::new("a", w).slow(Duration::from_millis(200)))
            .step("b", TestStep::new("b", w))
            .build()
            .unwrap()
    };
    let first = crate::executor(memory.clone(), vec![saga(&world)]);
    let id = crate::start(&first, "s").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A deadline far past the step's end: the step finishes on its own.
    let report = first.shutdown(Duration::from_secs(60)).await;
    assert_eq!(report.left, vec![id]);
    assert!(!report.interrupted);
    // a finished and was recorded; b did not start.
    let state = first.status(id).await.unwrap();
    assert!(matches!(state.step("a").unwrap().execution, Execution::Succeeded { .. }));
    assert!(state.step("b").is_none());
    assert!(matches!(first.wait(id).await, Err(Error::ShuttingDown)));
    let late = Start::new("s", Resource::new("a", "b")).params(&()).environment("t").actor("x");
    assert!(matches!(first.start(late).await, Err(Error::ShuttingDown)));

    let second = crate::executor(memory, vec![saga(&world)]);
    assert_eq!(second.recover().await.unwrap().resumed, vec![id]);
    assert_eq!(second.wait(id).await.unwrap(), Outcome::Succeeded);
    assert_eq!(world.effects().len(), 2);
}
