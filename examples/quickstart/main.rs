//! The quickstart: provisions a small "site" with real side effects under `DIR/world`, on the
//! embedded sled store in `DIR/store`, needing nothing but cargo.
//!
//! ```text
//! cargo run -p saga-examples --example quickstart -- [--data DIR] [--site NAME]
//!     [--fail-at STEP] [--crash-at STEP] [--cancel-after MS] [--warm-ms MS]
//! cargo run -p saga-examples --example quickstart -- resume | log ID | report [--since T] [--until T]
//! ```
//!
//! Steps: create the site directory, write its config, run a "migration" (irreversible: appends a
//! line to `world/migrations.log`), warm a cache (slow and cancellable), publish (a symlink in
//! `world/public`). It streams the Operation's log as it happens and ends each Operation with
//! `operation <id>: succeeded`, `operation <id>: rolled back` or
//! `operation <id>: rollback incomplete: <what was not undone>`. Every run first recovers what an
//! earlier run left unfinished (after `--crash-at`, or a kill). The exit status is 0 only when
//! every Operation it ran succeeded.

mod cli;
mod steps;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use saga_core::{
    render_log, write_activity_csv, Executor, FollowEvent, OperationId, OperationLogLayer, Outcome,
    Resource,
};
use saga_store::SledStore;
use tracing_subscriber::prelude::*;

use crate::cli::Command;
use crate::steps::{Params, World};

/// The environment every quickstart Operation belongs to.
const ENVIRONMENT: &str = "quickstart";

/// Prints one line; a reader that went away (`quickstart | head`) ends the program quietly.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("quickstart: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let command = match cli::parse(std::env::args().skip(1))? {
        Some(command) => command,
        None => {
            say!("{}", cli::usage());
            return Ok(true);
        }
    };
    tracing_subscriber::registry().with(OperationLogLayer::new()).init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async_main(command))
}

fn open(data: &Path) -> Result<(Executor, World), Box<dyn std::error::Error>> {
    let world = World::new(data.join("world"));
    std::fs::create_dir_all(data.join("world"))?;
    let store = SledStore::open(data.join("store"))?;
    let executor = Executor::builder(Arc::new(store))
        .owner("quickstart")
        .saga(steps::saga(&world)?)
        .build()?;
    Ok((executor, world))
}

async fn async_main(command: Command) -> Result<bool, Box<dyn std::error::Error>> {
    match command {
        Command::Run(run) => {
            let (executor, _world) = open(&run.data)?;
            let mut all_succeeded = resume(&executor).await?;
            let params = Params {
                site: run.site.clone(),
                fail_at: run.fail_at,
                crash_at: run.crash_at,
                warm_ms: run.warm_ms,
            };
            let actor = std::env::var("USER").unwrap_or_else(|_| "quickstart".into());
            let id = executor
                .start(steps::SAGA, &params, ENVIRONMENT, Resource::new("site", &run.site), &actor)
                .await?;
            if let Some(ms) = run.cancel_after {
                let canceller = executor.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    if let Err(e) = canceller.cancel(id, &actor, "--cancel-after").await {
                        eprintln!("quickstart: cancel refused: {e}");
                    }
                });
            }
            all_succeeded &= stream(&executor, id).await?;
            executor.shutdown().await;
            Ok(all_succeeded)
        }
        Command::Resume { data } => {
            let (executor, _world) = open(&data)?;
            let all_succeeded = resume(&executor).await?;
            executor.shutdown().await;
            Ok(all_succeeded)
        }
        Command::Log { data, id } => {
            let (executor, _world) = open(&data)?;
            executor.status(id).await?;
            say!("{}", render_log(&executor.log(id).await?).trim_end());
            Ok(true)
        }
        Command::Report { data, since_ms, until_ms } => {
            let (executor, _world) = open(&data)?;
            let rows = saga_core::activity_report(
                executor.store().as_ref(),
                ENVIRONMENT,
                since_ms,
                until_ms,
            )
            .await?;
            write_activity_csv(&rows, std::io::stdout().lock())?;
            Ok(true)
        }
    }
}

/// Recovers what an earlier run left unfinished and streams each to its end.
async fn resume(executor: &Executor) -> Result<bool, Box<dyn std::error::Error>> {
    let report = executor.recover().await?;
    let mut all_succeeded = true;
    for (id, cause) in &report.unrecoverable {
        say!("operation {id}: unrecoverable: {cause}");
        all_succeeded = false;
    }
    for id in report.resumed {
        say!("resuming operation {id}");
        all_succeeded &= stream(executor, id).await?;
    }
    Ok(all_succeeded)
}

/// Prints the Operation's log as it happens, then its outcome line. True if it succeeded.
async fn stream(executor: &Executor, id: OperationId) -> Result<bool, Box<dyn std::error::Error>> {
    let mut follower = executor.follow(id).await?;
    while let Some(event) = follower.next().await {
        match event {
            FollowEvent::Line(line) => say!("{line}"),
            FollowEvent::Missed(n) => say!("({n} lines skipped; see `quickstart log {id}`)"),
        }
    }
    let outcome = executor.wait(id).await?;
    say!("operation {id}: {outcome}");
    Ok(outcome == Outcome::Succeeded)
}
