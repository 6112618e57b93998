//! `Runner`: the executor on the sled store, recovery first, and the Operation's log streamed.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use saga_core::{Executor, FollowEvent, OperationId, OperationLogLayer, Outcome, Resource, Saga};
use saga_store::SledStore;
use serde::Serialize;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

use crate::BoxError;

/// Prints one line to stdout; a reader that went away (`example | head`) ends the program quietly.
pub fn say(line: &str) {
    use std::io::Write as _;
    if writeln!(std::io::stdout().lock(), "{line}").is_err() {
        std::process::exit(0);
    }
}

/// Runs an example's Operations: an [`Executor`] over the sled store in `DIR/store`.
#[derive(Debug, Clone)]
pub struct Runner {
    executor: Executor,
    environment: String,
}

impl Runner {
    /// Sends the `tracing` events of steps, at level INFO and above, to their Operation's log
    /// (the clients' DEBUG chatter stays out). Call once, from `main`.
    pub fn capture_step_logs() {
        let layer = OperationLogLayer::new().with_filter(LevelFilter::INFO);
        let _ = tracing_subscriber::registry().with(layer).try_init();
    }

    /// The exit code for an example's result: 0 if every Operation succeeded, 1 if one did not,
    /// 2 (after printing the error) if the example could not run.
    pub fn exit_code(example: &str, result: Result<bool, BoxError>) -> ExitCode {
        match result {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("{example}: {e}");
                ExitCode::from(2)
            }
        }
    }

    /// An executor named `owner` running `saga`, over the store in `data/store`. The Operations
    /// belong to environment `environment`.
    pub fn open(data: &Path, owner: &str, environment: &str, saga: Saga) -> Result<Self, BoxError> {
        std::fs::create_dir_all(data)?;
        let store = SledStore::open(data.join("store"))?;
        let executor = Executor::builder(Arc::new(store)).owner(owner).saga(saga).build()?;
        Ok(Runner { executor, environment: environment.to_owned() })
    }

    /// The executor.
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// Recovers what an earlier run left unfinished (after `--crash-at` or a kill) and streams
    /// each to its end. Returns the outcomes, and whether any Operation was unrecoverable.
    pub async fn resume(&self) -> Result<(Vec<(OperationId, Outcome)>, bool), BoxError> {
        let report = self.executor.recover().await?;
        for (id, cause) in &report.unrecoverable {
            say(&format!("operation {id}: unrecoverable: {cause}"));
        }
        let mut outcomes = Vec::new();
        for id in report.resumed {
            say(&format!("resuming operation {id}"));
            outcomes.push((id, self.stream(id).await?));
        }
        Ok((outcomes, !report.unrecoverable.is_empty()))
    }

    /// Starts an Operation of saga `saga` on `resource` with `params`, cancels it after
    /// `cancel_after` milliseconds if given, and streams its log to its outcome.
    pub async fn run<P: Serialize + ?Sized>(
        &self,
        saga: &str,
        params: &P,
        resource: Resource,
        cancel_after: Option<u64>,
    ) -> Result<(OperationId, Outcome), BoxError> {
        let actor = std::env::var("USER").unwrap_or_else(|_| "example".into());
        let id = self.executor.start(saga, params, &self.environment, resource, &actor).await?;
        if let Some(ms) = cancel_after {
            let executor = self.executor.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                match executor.cancel(id, &actor, "--cancel-after").await {
                    Ok(()) => say(&format!("cancelled operation {id} after {ms} ms")),
                    Err(e) => say(&format!("cancel refused: {e}")),
                }
            });
        }
        Ok((id, self.stream(id).await?))
    }

    /// Prints the Operation's log as it is written, then `operation <id>: <outcome>`.
    pub async fn stream(&self, id: OperationId) -> Result<Outcome, BoxError> {
        let mut follower = self.executor.follow(id).await?;
        while let Some(event) = follower.next().await {
            match event {
                FollowEvent::Line(line) => say(&line.to_string()),
                FollowEvent::Missed(n) => say(&format!("({n} log lines skipped)")),
            }
        }
        let outcome = self.executor.wait(id).await?;
        say(&format!("operation {id}: {outcome}"));
        Ok(outcome)
    }

    /// Stops gracefully: running steps finish and are recorded.
    pub async fn shutdown(&self) {
        self.executor.shutdown().await;
    }
}
