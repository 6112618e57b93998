//! The workload on Microsoft's duroxide 0.1: an orchestration that awaits N no-op activities one
//! after the other, over its bundled SQLite provider on a file.
//!
//! Two settings differ from duroxide's defaults, both to measure the engine rather than idle
//! waits: the dispatchers' minimum poll interval is 1 ms (the default, 100 ms, is slept whenever
//! a poll finds no work, which a sequential workload hits at every step), and completion is
//! polled every millisecond instead of `wait_for_orchestration`'s 5..100 ms backoff.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duroxide::providers::sqlite::SqliteProvider;
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::runtime::Runtime;
use duroxide::{
    ActivityContext, Client, OrchestrationContext, OrchestrationRegistry, OrchestrationStatus,
    RuntimeOptions,
};

/// The orchestration's name; its input is the number of steps.
const ORCHESTRATION: &str = "Noop";

static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(0);

/// A running duroxide runtime and its client.
#[derive(Clone)]
pub struct Duroxide {
    runtime: Arc<Runtime>,
    client: Arc<Client>,
    steps: usize,
}

impl std::fmt::Debug for Duroxide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Duroxide").field("steps", &self.steps).finish_non_exhaustive()
    }
}

/// duroxide's SQLite provider on the file `dir/duroxide.db` (WAL mode, as the provider sets it).
pub async fn sqlite_file(dir: &Path) -> Arc<SqliteProvider> {
    let path = dir.join("duroxide.db");
    std::fs::File::create(&path).expect("creating the duroxide database file");
    let url = format!("sqlite:{}", path.display());
    Arc::new(SqliteProvider::new(&url, None).await.expect("opening duroxide's SQLite provider"))
}

impl Duroxide {
    /// Starts a runtime over `provider` whose orchestration runs `steps` no-op activities.
    pub async fn start(provider: Arc<SqliteProvider>, steps: usize) -> Self {
        let activities = ActivityRegistry::builder()
            .register(
                "Noop",
                |_ctx: ActivityContext, _input: String| async move { Ok(String::new()) },
            )
            .build();
        let orchestrations = OrchestrationRegistry::builder()
            .register(ORCHESTRATION, |ctx: OrchestrationContext, input: String| async move {
                let steps: usize = input.parse().map_err(|e| format!("bad input: {e}"))?;
                for _ in 0..steps {
                    ctx.schedule_activity("Noop", "").await?;
                }
                Ok(String::new())
            })
            .build();
        let options = RuntimeOptions {
            dispatcher_min_poll_interval: Duration::from_millis(1),
            ..RuntimeOptions::default()
        };
        let runtime =
            Runtime::start_with_options(provider.clone(), activities, orchestrations, options)
                .await;
        Duroxide { runtime, client: Arc::new(Client::new(provider)), steps }
    }

    /// Starts one orchestration and returns its instance id.
    pub async fn begin(&self) -> String {
        let instance = format!("noop-{}", NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed));
        self.client
            .start_orchestration(instance.as_str(), ORCHESTRATION, self.steps.to_string())
            .await
            .expect("starting a duroxide orchestration");
        instance
    }

    /// Waits until the orchestration ended, polling every millisecond; its failure message if it
    /// failed.
    pub async fn finish(&self, instance: &str) -> Result<(), String> {
        loop {
            match self
                .client
                .get_orchestration_status(instance)
                .await
                .expect("reading a duroxide orchestration's status")
            {
                OrchestrationStatus::Completed { .. } => return Ok(()),
                OrchestrationStatus::Failed { details, .. } => {
                    return Err(details.display_message());
                }
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }

    /// Runs one orchestration to completion, which it must reach.
    pub async fn run_one(&self) {
        let instance = self.begin().await;
        if let Err(failure) = self.finish(&instance).await {
            panic!("a duroxide orchestration failed: {failure}");
        }
    }

    /// Starts `n` orchestrations at once, then waits for each in turn (one status poll per
    /// millisecond in all, so that waiting does not load the database more than one run does).
    /// Returns the failures (duroxide fails an orchestration whose SQLite transaction found the
    /// database locked, which happens under this load).
    pub async fn run_many(&self, n: usize) -> Vec<String> {
        let mut starts = tokio::task::JoinSet::new();
        for _ in 0..n {
            let this = self.clone();
            starts.spawn(async move { this.begin().await });
        }
        let mut instances = Vec::with_capacity(n);
        while let Some(started) = starts.join_next().await {
            instances.push(started.expect("a duroxide start task panicked"));
        }
        let mut failures = Vec::new();
        for instance in &instances {
            if let Err(failure) = self.finish(instance).await {
                failures.push(failure);
            }
        }
        failures
    }

    /// Stops the runtime.
    pub async fn shutdown(self) {
        self.runtime.clone().shutdown(None).await;
    }
}
