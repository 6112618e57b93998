//! The embedder's API: a start request whose parts are named, typed state, typed errors.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use saga_core::log::{Record, RecordKind};
use saga_core::store::{Store, StoreError};
use saga_core::{
    async_trait, Error, Executor, MemoryStore, OperationId, Outcome, Resource, Saga, Start, Step,
    StepContext, StepError,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Params {
    image: String,
    replicas: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Deployed {
    container: String,
}

struct Deploy;

#[async_trait]
impl Step for Deploy {
    type Output = Deployed;
    async fn execute(&self, ctx: &StepContext) -> Result<Deployed, StepError> {
        let params: Params = ctx.params()?;
        Ok(Deployed { container: format!("{}-1", params.image) })
    }
}

fn saga() -> Saga {
    Saga::builder("deploy", 1).step("deploy", Deploy).build().expect("valid saga")
}

#[tokio::test]
async fn a_start_request_names_each_part_and_the_state_reads_them_back_typed() {
    let executor =
        Executor::builder(Arc::new(MemoryStore::new())).saga(saga()).build().expect("executor");
    let params = Params { image: "web:2".into(), replicas: 3 };
    let request = Start::new("deploy", Resource::new("app", "web"))
        .params(&params)
        .environment("prod")
        .actor("alice");
    let id = executor.start(request).await.expect("started");
    assert_eq!(executor.wait(id).await.expect("outcome"), Outcome::Succeeded);

    let state = executor.status(id).await.expect("status");
    assert_eq!(state.id(), id);
    assert_eq!((state.saga(), state.version()), ("deploy", 1));
    assert_eq!(state.environment(), "prod");
    assert_eq!(state.actor(), "alice");
    assert_eq!(state.resource(), &Resource::new("app", "web"));
    assert_eq!(state.params::<Params>().expect("typed params"), params);
    let output: Deployed = state.output("deploy").expect("typed output");
    assert_eq!(output, Deployed { container: "web:2-1".into() });
    assert!(matches!(
        state.output::<Deployed>("undeploy"),
        Err(Error::NoOutput { ref step, .. }) if step == "undeploy"
    ));
    assert!(matches!(
        state.output::<BTreeMap<String, u32>>("deploy"),
        Err(Error::Deserialize { ref what, .. }) if what == "the output of step deploy"
    ));
}

#[tokio::test]
async fn the_executors_store_reads_for_its_callers_and_refuses_their_writes() {
    let store = Arc::new(MemoryStore::new());
    let executor = Executor::builder(store.clone()).saga(saga()).build().expect("executor");
    let params = Params { image: "web:2".into(), replicas: 1 };
    let id = executor
        .start(Start::new("deploy", Resource::new("app", "web")).params(&params))
        .await
        .expect("started");
    assert_eq!(executor.wait(id).await.expect("outcome"), Outcome::Succeeded);

    let view = executor.store();
    let records = view.read(id).await.expect("reads pass through");
    assert_eq!(records, store.read(id).await.expect("the store's records"));
    assert!(view.check(false).await.expect("a check without repair reads").is_healthy());

    let refused = |e: StoreError| matches!(e, StoreError::ReadOnly { .. });
    let other = OperationId::new();
    let created = Record {
        operation: other,
        seq: 0,
        at_ms: other.created_ms(),
        kind: records[0].kind.clone(),
    };
    let written = view.create(&created, "intruder", Duration::from_secs(30)).await;
    assert!(written.is_err_and(refused), "a create past the executor");
    let claimed = view.claim(id, "intruder", Duration::from_secs(30)).await;
    assert!(claimed.is_err_and(refused), "a claim past the executor");
    assert!(view.delete_environment("default").await.is_err_and(refused));
    assert!(view.purge_logs(u64::MAX).await.is_err_and(refused));
    assert!(view.check(true).await.is_err_and(refused));
    // Nothing was written.
    assert!(matches!(store.read(other).await, Err(StoreError::NotFound(_))));
    assert_eq!(store.read(id).await.expect("records"), records);
}

#[tokio::test]
async fn params_that_do_not_serialize_fail_the_start_before_anything_is_written() {
    let store = Arc::new(MemoryStore::new());
    let executor = Executor::builder(store.clone()).saga(saga()).build().expect("executor");
    // A map with non-string keys has no JSON form.
    let params: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into_iter().collect();
    let request = Start::new("deploy", Resource::new("app", "web")).params(&params);
    let err = executor.start(request).await.expect_err("refused");
    assert!(matches!(err, Error::Serialize { ref what, .. } if what == "the params"), "{err}");
    assert!(store.list_unfinished().await.expect("listing").ids.is_empty());
    assert!(store.list_environment("default", 0, u64::MAX).await.expect("listing").ids.is_empty());
}

#[tokio::test]
async fn waiting_for_an_operation_of_an_unknown_saga_is_a_typed_error() {
    // An Operation of saga "deploy" v1, written by an executor that knew it and died at once.
    let store = Arc::new(MemoryStore::new());
    let id = OperationId::new();
    let created = Record {
        operation: id,
        seq: 0,
        at_ms: id.created_ms(),
        kind: RecordKind::OperationCreated {
            saga: "deploy".into(),
            version: 1,
            params: b"null".to_vec(),
            environment: "prod".into(),
            resource: Resource::new("app", "web"),
            actor: "alice".into(),
        },
    };
    store.create(&created, "dead-node", Duration::from_millis(1)).await.expect("created");
    tokio::time::sleep(Duration::from_millis(5)).await;

    let reader = Executor::builder(store).build().expect("an executor without sagas");
    // Another executor may run it: `wait` follows it, here until the caller's bound.
    let bound = Duration::from_millis(300);
    match reader.wait_timeout(id, bound).await {
        Err(Error::WaitTimedOut { operation, waited }) => {
            assert_eq!((operation, waited), (id, bound));
        }
        other => panic!("expected WaitTimedOut, got {other:?}"),
    }
    // Recovery cannot resume it and says why, typed; wait() then gives that cause.
    let report = reader.recover().await.expect("recover");
    assert_eq!(report.unrecoverable.len(), 1);
    assert!(matches!(*report.unrecoverable[0].1, Error::UnknownSaga { .. }));
    match reader.wait(id).await {
        Err(Error::Unrecoverable { cause, .. }) => {
            assert!(matches!(*cause, Error::UnknownSaga { version: Some(1), .. }), "{cause}");
        }
        other => panic!("expected Unrecoverable, got {other:?}"),
    }
    let request = Start::new("deploy", Resource::new("app", "other"));
    assert!(matches!(reader.start(request).await, Err(Error::UnknownSaga { version: None, .. })));
}

/// `submit` records the Operation without running it in the call: an executor whose takeover
/// scan is off leaves it for the workers; a worker that watches the store (it recovered at
/// start) runs it at once, woken by the store, not at its next scan a minute away, and runs its
/// own submits at once too. On tokio's paused clock (the in-memory store needs no real time):
/// the test's sleep returns only once every task is idle, so "the api executor did not run it"
/// holds whatever the machine's load, and "at once" is exact: the 60 s scan never comes within
/// the 5 s waits.
#[tokio::test(start_paused = true)]
async fn a_submitted_operation_runs_on_the_scan_of_an_executor_that_adopts_and_waits_otherwise() {
    let params = Params { image: "web:3".into(), replicas: 1 };
    let request = || Start::new("deploy", Resource::new("app", "web")).params(&params);

    let store = Arc::new(MemoryStore::new());
    let api = Executor::builder(store.clone())
        .saga(saga())
        .takeover_interval(None)
        .build()
        .expect("executor");
    let early = api.submit(request()).await.expect("submitted");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!api.is_running(early));
    assert_eq!(store.list_unfinished().await.expect("lists").ids, vec![early]);

    let worker = Executor::builder(store.clone())
        .saga(saga())
        .takeover_interval(Some(Duration::from_secs(60)))
        .build()
        .expect("executor");
    assert_eq!(worker.recover().await.expect("recovers").resumed, vec![early]);
    let id = api.submit(request()).await.expect("submitted");
    let own = worker.submit(request()).await.expect("submitted");
    for id in [early, id, own] {
        // The api executor follows them too, wherever they run.
        let outcome = api.wait_timeout(id, Duration::from_secs(5)).await.expect("finished");
        assert_eq!(outcome, Outcome::Succeeded);
    }
    for id in [early, id, own] {
        let records = store.read(id).await.expect("reads");
        assert!(
            matches!(
                records.last().map(|r| &r.kind),
                Some(RecordKind::OperationFinished { outcome: Outcome::Succeeded })
            ),
            "{records:?}"
        );
    }
}
