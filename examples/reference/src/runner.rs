//! `Runner`: the executor on the sled store, recovery first, and the Operation's log streamed.

use std::io::{self, Write as _};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use saga_core::log::{FollowEvent, OperationLogLayer};
use saga_core::{Executor, OperationId, Outcome, Resource, Saga, Start};
use saga_store::SledStore;
use serde::Serialize;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

use crate::BoxError;

/// Set once a write to stdout failed: nothing more is printed.
static OUTPUT_FAILED: AtomicBool = AtomicBool::new(false);
/// The first failed write's error.
static OUTPUT_ERROR: OnceLock<io::Error> = OnceLock::new();

/// Prints one line to stdout. A failed write never ends the program (an Operation may be
/// running): printing stops, the error is remembered, and [`Runner::exit_code`] reports it,
/// unless it was a broken pipe (a reader that went away, `example | head`), which is no error.
pub fn say(line: &str) {
    if OUTPUT_FAILED.load(Ordering::Acquire) {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        let _ = OUTPUT_ERROR.set(e);
        OUTPUT_FAILED.store(true, Ordering::Release);
    }
}

/// The first failed write to stdout by [`say`], unless it was a broken pipe.
fn output_failure() -> Option<&'static io::Error> {
    OUTPUT_ERROR.get().filter(|e| e.kind() != io::ErrorKind::BrokenPipe)
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
    /// 2 (after printing the error) if the example could not run, and 3 if every Operation
    /// succeeded but writing stdout failed (other than a broken pipe). A failed write of stdout
    /// is also told on stderr, as `<example>: cannot write to standard output: <error>`.
    pub fn exit_code(example: &str, result: Result<bool, BoxError>) -> ExitCode {
        let _ = io::stdout().lock().flush();
        let mut stderr = io::stderr().lock();
        if let Err(e) = &result {
            let _ = writeln!(stderr, "{example}: {e}");
        }
        let output_failed = output_failure();
        if let Some(e) = output_failed {
            let _ = writeln!(stderr, "{example}: cannot write to standard output: {e}");
        }
        match result {
            Err(_) => ExitCode::from(2),
            Ok(false) => ExitCode::from(1),
            Ok(true) if output_failed.is_some() => ExitCode::from(3),
            Ok(true) => ExitCode::SUCCESS,
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
    /// each to its end. Returns the outcomes, and whether any Operation was unrecoverable or
    /// needs attention (past its point of no return, a step ran out of its retry policy: an
    /// operator must retry or abandon it), or an entry of the unfinished index was damaged, so
    /// that it may hide one.
    pub async fn resume(&self) -> Result<(Vec<(OperationId, Outcome)>, bool), BoxError> {
        let report = self.executor.recover().await?;
        for cause in &report.damaged {
            say(&format!("unfinished index: {cause}"));
        }
        for (id, cause) in &report.unrecoverable {
            say(&format!("operation {id}: unrecoverable: {cause}"));
        }
        for id in &report.needs_attention {
            let state = self.executor.status(*id).await?;
            let (step, error) = state.attention().map_or(("?", "?"), |f| (f.step, f.error));
            say(&format!(
                "operation {id}: needs attention: step {step} keeps failing past the point of no \
                 return ({error}); retry or abandon it"
            ));
        }
        let mut outcomes = Vec::new();
        for id in report.resumed {
            say(&format!("resuming operation {id}"));
            outcomes.push((id, self.stream(id).await?));
        }
        let stuck = !report.unrecoverable.is_empty()
            || !report.needs_attention.is_empty()
            || !report.damaged.is_empty();
        Ok((outcomes, stuck))
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
        let request =
            Start::new(saga, resource).params(params).environment(&self.environment).actor(&actor);
        let id = self.executor.start(request).await?;
        if let Some(ms) = cancel_after {
            let executor = self.executor.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                match executor.cancel(id, &actor, "--cancel-after").await {
                    Ok(answer) => say(&format!("cancelled operation {id} after {ms} ms: {answer}")),
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

    /// How long [`Runner::shutdown`] lets running steps finish on their own.
    pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(60);

    /// Stops gracefully: running steps finish (within [`Runner::SHUTDOWN_DEADLINE`]) and are
    /// recorded; an Operation left without an outcome is said, for the next run to resume.
    pub async fn shutdown(&self) {
        let report = self.executor.shutdown(Self::SHUTDOWN_DEADLINE).await;
        for id in &report.left {
            say(&format!("operation {id} left unfinished; the next run resumes it"));
        }
    }
}
