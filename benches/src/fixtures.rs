//! Stores filled directly through the `Store` API, for the benches that read (the activity
//! report) or resume (recovery) many Operations.

use std::sync::Arc;
use std::time::Duration;

use saga_core::log::{Record, RecordKind};
use saga_core::store::{Lease, Store};
use saga_core::{OperationId, Outcome, Resource};

/// One day in milliseconds.
pub const DAY_MS: u64 = 86_400_000;

/// The start of the reported period: Monday 2024-03-04 00:00 UTC.
pub const PERIOD_START_MS: u64 = 1_709_510_400_000;

/// The end of the reported period (exclusive): one week later.
pub const PERIOD_END_MS: u64 = PERIOD_START_MS + 7 * DAY_MS;

/// The environment the activity report asks for.
pub const REPORTED_ENVIRONMENT: &str = "prod";

fn created(id: OperationId, at_ms: u64, environment: &str, i: usize) -> Record {
    Record {
        operation: id,
        seq: 0,
        at_ms,
        kind: RecordKind::OperationCreated {
            saga: crate::engine::SAGA.into(),
            version: 1,
            params: b"null".to_vec(),
            environment: environment.into(),
            resource: Resource::new("app", format!("web-{}", i % 500)),
            actor: format!("user-{}", i % 50),
        },
    }
}

fn record(id: OperationId, seq: u64, at_ms: u64, kind: RecordKind) -> Record {
    Record { operation: id, seq, at_ms, kind }
}

/// Writes one finished Operation of one step, created at `at_ms`: `OperationCreated`,
/// `StepStarted`, `StepSucceeded`, `OperationFinished`.
async fn write_finished(store: &dyn Store, at_ms: u64, environment: &str, i: usize) {
    // Ids carry their creation time in the top 48 bits, as `OperationId::new` makes them.
    let id = OperationId::from_u128((u128::from(at_ms) << 80) | i as u128);
    let lease = store
        .create(&created(id, at_ms, environment, i), "fixture", Duration::from_secs(60))
        .await
        .expect("creating a fixture operation");
    let step = crate::engine::step_name(0);
    let records = [
        record(id, 1, at_ms + 1, RecordKind::StepStarted { step: step.clone(), attempt: 1 }),
        record(id, 2, at_ms + 20, RecordKind::StepSucceeded { step, output: b"null".to_vec() }),
        record(id, 3, at_ms + 21, RecordKind::OperationFinished { outcome: Outcome::Succeeded }),
    ];
    store.append(&lease, &records).await.expect("appending fixture records");
}

/// Fills `store` with 100,000 finished Operations of which exactly 10,000 are in
/// [`REPORTED_ENVIRONMENT`] and created in [`PERIOD_START_MS`]..[`PERIOD_END_MS`]; of the others,
/// 30,000 are in that environment in the week before, and 60,000 in two other environments in
/// the period. Runs 64 writers at once.
pub async fn fill_activity(store: Arc<dyn Store>) {
    const TOTAL: usize = 100_000;
    let plan = |i: usize| -> (u64, &'static str) {
        let spread = (i as u64 * 6_047) % (7 * DAY_MS - 100);
        match i % 10 {
            0 => (PERIOD_START_MS + spread, REPORTED_ENVIRONMENT),
            1..=3 => (PERIOD_START_MS - 7 * DAY_MS + spread, REPORTED_ENVIRONMENT),
            4..=6 => (PERIOD_START_MS + spread, "staging"),
            _ => (PERIOD_START_MS + spread, "dev"),
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..64 {
        let store = store.clone();
        tasks.spawn(async move {
            for i in (writer..TOTAL).step_by(64) {
                let (at_ms, environment) = plan(i);
                write_finished(store.as_ref(), at_ms, environment, i).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a fixture writer panicked");
    }
}

/// Writes `n` unfinished Operations of the no-op saga, each stopped after its first step
/// succeeded (`OperationCreated`, `StepStarted`, `StepSucceeded`), with their leases released so
/// that `recover()` takes them at once. Runs 64 writers at once.
pub async fn fill_unfinished(store: Arc<dyn Store>, n: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..64 {
        let store = store.clone();
        tasks.spawn(async move {
            for i in (writer..n).step_by(64) {
                let id = OperationId::new();
                let at_ms = id.created_ms();
                let lease: Lease = store
                    .create(&created(id, at_ms, "bench", i), "crashed", Duration::from_secs(60))
                    .await
                    .expect("creating an unfinished operation");
                let step = crate::engine::step_name(0);
                let records = [
                    record(
                        id,
                        1,
                        at_ms,
                        RecordKind::StepStarted { step: step.clone(), attempt: 1 },
                    ),
                    record(
                        id,
                        2,
                        at_ms,
                        RecordKind::StepSucceeded { step, output: b"null".to_vec() },
                    ),
                ];
                store.append(&lease, &records).await.expect("appending records");
                store.release(&lease).await.expect("releasing a lease");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a fixture writer panicked");
    }
}
