//! Operation logs (engine lines, captured step events, follow, bound) and activity reports.

use std::sync::Arc;
use std::time::Duration;

use saga_core::log::{render_log, FollowEvent, LogSource, OperationLogLayer};
use saga_core::report::{neutralise_cell, write_activity_csv, ActivityRow, ACTIVITY_COLUMNS};
use saga_core::Status;
use saga_core::Timestamp;
use saga_core::{
    async_trait, Executor, MemoryStore, OperationId, Outcome, Resource, Saga, Start, Step,
    StepContext, StepError, StepKind,
};
use tracing_subscriber::prelude::*;

use crate::support::{report, TestStep, World};

/// A step that says things through `tracing`.
struct Chatty {
    lines: usize,
    pause: Duration,
}

#[async_trait]
impl Step for Chatty {
    type Output = ();
    async fn execute(&self, _: &StepContext) -> Result<(), StepError> {
        for i in 0..self.lines {
            tracing::info!(volume = "vol-1", i, "attaching");
            if !self.pause.is_zero() {
                tokio::time::sleep(self.pause).await;
            }
        }
        Ok(())
    }
    fn kind(&self) -> StepKind {
        StepKind::ReadOnly
    }
}

fn capture() -> tracing::subscriber::DefaultGuard {
    tracing::subscriber::set_default(tracing_subscriber::registry().with(OperationLogLayer::new()))
}

/// On tokio's paused clock (the store is in memory): the step's pauses and the retry's delay
/// take no real time.
#[tokio::test(start_paused = true)]
async fn a_log_followed_live_equals_the_stored_log_after_a_restart() {
    let _capture = capture();
    let world = World::default();
    let saga = || {
        Saga::builder("s", 1)
            .step("a", TestStep::new("a", &world))
            .step("talk", Chatty { lines: 5, pause: Duration::from_millis(20) })
            .step("b", TestStep::new("b", &world).transient_failures(1))
            .build()
            .unwrap()
    };
    let store = Arc::new(MemoryStore::new());
    let executor = crate::executor(store.clone(), vec![saga()]);
    let id = crate::start(&executor, "s").await;
    let mut follower = executor.follow(id).await.unwrap();
    let mut followed = Vec::new();
    while let Some(event) = follower.next().await {
        match event {
            FollowEvent::Line(line) => followed.push(line),
            FollowEvent::Missed(n) => panic!("missed {n}"),
        }
    }
    assert_eq!(executor.wait(id).await.unwrap(), Outcome::Succeeded);
    drop(executor);
    let restarted = crate::executor(store, vec![saga()]);
    let stored = restarted.log(id).await.unwrap();
    assert_eq!(followed, stored);
    let text = render_log(&stored);
    assert!(text.contains("[talk] attaching volume=vol-1 i=4"), "{text}");
    assert!(text.contains("retrying b in"), "{text}");
    assert!(text.contains("because: b flaked"), "{text}");
    assert!(text.trim_end().ends_with("operation succeeded"), "{text}");
    let captured = stored.iter().filter(|l| l.source == LogSource::Step).count();
    assert_eq!(captured, 5);
    assert!(stored
        .iter()
        .filter(|l| l.source == LogSource::Step)
        .all(|l| l.step.as_deref() == Some("talk")));
}

#[tokio::test]
async fn the_log_is_bounded_with_a_visible_marker_and_keeps_the_outcome() {
    let _capture = capture();
    let saga = Saga::builder("s", 1)
        .step("talk", Chatty { lines: 100, pause: Duration::ZERO })
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let executor =
        saga_core::Executor::builder(store).saga(saga).max_log_lines(20).build().unwrap();
    let id = crate::start(&executor, "s").await;
    executor.wait(id).await.unwrap();
    let lines = executor.log(id).await.unwrap();
    assert_eq!(lines.len(), 21, "{}", render_log(&lines));
    assert!(lines[19].message.starts_with("log truncated"));
    assert_eq!(lines[20].message, "operation succeeded");
}

#[tokio::test]
async fn a_slow_follower_is_told_what_it_missed_and_never_blocks_the_operation() {
    let _capture = capture();
    let saga = Saga::builder("s", 1)
        .step("talk", Chatty { lines: 3000, pause: Duration::ZERO })
        .build()
        .unwrap();
    let executor = crate::executor(Arc::new(MemoryStore::new()), vec![saga]);
    let id = crate::start(&executor, "s").await;
    let mut follower = executor.follow(id).await.unwrap();
    // Do not read until the Operation is over: it must finish anyway.
    assert_eq!(executor.wait(id).await.unwrap(), Outcome::Succeeded);
    let mut missed = 0;
    let mut lines = 0;
    while let Some(event) = follower.next().await {
        match event {
            FollowEvent::Line(_) => lines += 1,
            FollowEvent::Missed(n) => missed += n,
        }
    }
    assert!(missed > 0, "missed nothing out of {lines}");
    assert_eq!(lines as u64 + missed, executor.log(id).await.unwrap().len() as u64);
}

/// Starts an Operation in `environment` and waits for its outcome.
async fn run_in(
    executor: &Executor,
    saga: &str,
    environment: &str,
    resource: Resource,
    actor: &str,
) -> OperationId {
    let request = Start::new(saga, resource).params(&()).environment(environment).actor(actor);
    let id = executor.start(request).await.unwrap();
    executor.wait(id).await.unwrap();
    id
}

/// In real time: the report's period and the purge's cut-off are on the system's clock.
#[tokio::test]
async fn reports_keep_to_their_environment_and_period_and_survive_purges() {
    let world = World::default();
    let saga = Saga::builder("deploy", 1)
        .step("a", TestStep::new("a", &world))
        .step("b", TestStep::new("b", &world).kind(StepKind::Irreversible))
        .build()
        .unwrap();
    let failing = Saga::builder("resize", 1)
        .step("grow", TestStep::new("grow", &world).kind(StepKind::Irreversible))
        .step("restart", TestStep::new("restart", &world).failing())
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let executor = crate::executor(store.clone(), vec![saga, failing]);
    let before = Timestamp::now().unix_ms();
    let mut prod = Vec::new();
    for name in ["web", "=HYPERLINK(\"http://x\",\"y\")"] {
        prod.push(run_in(&executor, "deploy", "prod", Resource::new("app", name), "alice").await);
    }
    prod.push(run_in(&executor, "resize", "prod", Resource::new("database", "db"), "@bob").await);
    let staging =
        run_in(&executor, "deploy", "staging", Resource::new("app", "web"), "carol").await;
    let after = Timestamp::now().unix_ms() + 1;

    let rows = report(store.as_ref(), "prod", before, after).await;
    assert_eq!(rows.iter().map(|r| r.operation).collect::<Vec<_>>(), prod);
    assert!(report(store.as_ref(), "prod", after, after + 10_000).await.is_empty());
    assert!(report(store.as_ref(), "prod", 0, before).await.is_empty());
    let staged = report(store.as_ref(), "staging", before, after).await;
    assert_eq!(staged.iter().map(|r| r.operation).collect::<Vec<_>>(), [staging]);

    let resize = &rows[2];
    assert_eq!(resize.status, Status::RollbackIncomplete);
    assert_eq!(resize.failed_step.as_deref(), Some("restart"));
    assert_eq!(resize.not_undone, ["grow (irreversible)"]);

    // The CSV parses back into the same cells, neutralised.
    let mut bytes = Vec::new();
    write_activity_csv(&rows, &mut bytes).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(text.contains("\r\n"));
    let mut reader = csv::Reader::from_reader(bytes.as_slice());
    assert_eq!(reader.headers().unwrap().iter().collect::<Vec<_>>(), ACTIVITY_COLUMNS);
    let parsed: Vec<Vec<String>> =
        reader.records().map(|r| r.unwrap().iter().map(str::to_owned).collect()).collect();
    let expected: Vec<Vec<String>> = rows
        .iter()
        .map(|r: &ActivityRow| r.cells().iter().map(|c| neutralise_cell(c).into_owned()).collect())
        .collect();
    assert_eq!(parsed, expected);
    assert_eq!(parsed[1][4], "'=HYPERLINK(\"http://x\",\"y\")");
    assert_eq!(parsed[2][5], "'@bob");
    assert_eq!(parsed[0][4], "web");

    // Purging log lines keeps the activity; deleting the environment removes both.
    assert!(!executor.log(prod[0]).await.unwrap().is_empty());
    // Every line must be older than the cut-off, which has millisecond resolution.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let purged = executor.purge_logs_older_than(Duration::ZERO).await.unwrap();
    assert!(purged > 0);
    assert!(executor.log(prod[0]).await.unwrap().is_empty());
    assert_eq!(report(store.as_ref(), "prod", before, after).await, rows);
    assert_eq!(executor.delete_environment("prod").await.unwrap(), 3);
    assert!(report(store.as_ref(), "prod", before, after).await.is_empty());
    assert_eq!(report(store.as_ref(), "staging", before, after).await.len(), 1);
}
