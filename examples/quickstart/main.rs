//! The quickstart: provisions a small "site" with real side effects under `DIR/world`, on the
//! embedded sled store in `DIR/store` (needing nothing but cargo), or on PostgreSQL shared by
//! several processes (`--store postgres://...`).
//!
//! ```text
//! cargo run -p saga-examples --example quickstart -- [--data DIR] [--owner NAME] [--site NAME]
//!     [--count N] [--fail-at STEP] [--panic-at STEP] [--crash-at STEP] [--cancel-after MS]
//!     [--warm-ms MS]
//! cargo run -p saga-examples --example quickstart -- [--data DIR] [--owner NAME]
//!     resume | log ID | report [--since T] [--until T] | check [--dry-run]
//!     | submit [--site NAME] [--count N] [FAULTS] | worker [--until-idle]
//!     | cancel ID [--actor NAME] [--reason TEXT]
//! ```
//!
//! Every form also takes `--store postgres://user:password@host:port/db` (with `--schema NAME`
//! to keep the tables in a schema of their own, created when missing), `--lease-ttl MS` and
//! `--admin ADDR`; `--help` tells every flag.
//!
//! The default build needs saga-core and saga-store alone. PostgreSQL (`--store`, and so
//! `submit` and `worker` across processes) needs `--features postgres`, and the operator surface
//! (`--admin`) `--features admin`:
//!
//! ```text
//! cargo run -p saga-examples --features postgres,admin --example quickstart -- --store ... worker
//! ```
//!
//! Steps: create the site directory, write its config, run a "migration" (irreversible: appends a
//! line to `world/migrations.log`), warm a cache (slow and cancellable), publish (a symlink in
//! `world/public`). It streams the Operation's log as it happens and ends each Operation with
//! `operation <id>: succeeded`, `operation <id>: rolled back` or
//! `operation <id>: rollback incomplete: <what was not undone>`. Every run first recovers what an
//! earlier run left unfinished (after `--crash-at`, or a kill). `--count N` runs N Operations at
//! once, on sites `<site>-1 .. <site>-N` (one runs on `<site>` itself), and streams them one after
//! another.
//!
//! Several processes (PostgreSQL): `submit` records Operations (`submitted <id> on site <site>`)
//! without running them; each `worker` adopts the unfinished Operations that nobody holds (at
//! start, every second, and at once when another process submits or releases one), prints each
//! one's end as it comes, and stops at SIGINT or SIGTERM (at the next step boundaries), or with
//! `--until-idle` once nothing is left unfinished in the store. A worker that dies leaves its
//! Operations to the others once its leases expire (`--lease-ttl`); a worker that stalls past its
//! lease is fenced: its next write is refused, and it drops the Operation. `cancel ID` records a
//! cancel request that the executor running the Operation, wherever it is, sees within a second
//! and rolls back. Operations on one site run one after another, in the order they were created,
//! whichever process runs them. The world (`DIR/world`) is shared by every process given the same
//! `--data`.
//!
//! Faults to try: `--fail-at STEP` makes the step fail (permanently) before its effect,
//! `--panic-at STEP` makes it panic there instead (the engine records a failed attempt with the
//! error `step panicked: ...` and rolls back; the process goes on), and `--crash-at STEP` aborts
//! the process right after the step's effect (the next run resumes it).
//!
//! `--owner NAME` (default `quickstart` on the sled store; on PostgreSQL, where several processes
//! run at once, `HOST:PID`, unique to the process) names the executor, which holds a lease on each
//! Operation it runs (`--lease-ttl`, 30 s by default, renewed while it runs). A quickstart started again under the same
//! name reclaims the leases its crashed predecessor held at once; under another name it leaves
//! those Operations (`owned by another executor`) until their leases expire, and a later run
//! resumes them. Two processes must never share a name: each would take the other's leases for
//! its own. The sled store lets only one process open it at a time anyway.
//!
//! `submit` and `cancel` only record (their executor never runs an Operation); a plain run and
//! `resume` run what they recovered at start and what they started, and adopt nothing later.
//!
//! `check` reconciles the store's indexes with its records and prints one line per problem, then
//! `checked N operations: M problems, K repaired`; it repairs what the records alone can, unless
//! `--dry-run` is given. An Operation it lists again as unfinished is left as it is: run
//! `quickstart resume` (which `check` suggests) to resume it.
//!
//! Exit status:
//!
//! - 0: every Operation it ran (or resumed) succeeded; for `check`, the store is healthy (nothing
//!   wrong, or everything wrong repaired); for `submit` and `cancel`, what they record is durable;
//!   for `worker`, every Operation that ended there succeeded;
//! - 1: an Operation did not succeed (rolled back, rollback incomplete, unrecoverable); for
//!   `check`, a problem remains; for `worker`, one ended there without succeeding, or stopped there
//!   (its lease could not be renewed, or was taken over) for another executor to finish;
//! - 2: an error: a bad flag, a `cancel` refused (the Operation finished already), or the store
//!   failed (for example a failed sync, after which the
//!   Operation has no outcome the log can stand behind: a later `resume` finishes it);
//! - 3: every Operation succeeded, but writing standard output failed (say `quickstart >
//!   /dev/full`), with one line `quickstart: cannot write to standard output: <error>` on stderr.
//!
//! A failed write to standard output never ends the program in the middle of an Operation: the
//! printing stops, the Operations run to their ends, and the status says how they ended. A
//! reader that went away (`quickstart | head`, a broken pipe) is no error: nothing is said, and
//! the status is the Operations' own.

#[path = "../shared/claims.rs"]
mod claims;
mod cli;
mod steps;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use saga_core::executor::RecoveryReport;
use saga_core::log::{render_log, FollowEvent, OperationLogLayer};
use saga_core::report::{activity_report, write_activity_csv};
use saga_core::store::{Problem, Store};
use saga_core::{CancelAnswer, Executor, OperationId, Outcome, Resource, Start, Timestamp};
use saga_store::SledStore;
use tracing_subscriber::prelude::*;

use crate::cli::{Command, RunArgs, StoreArgs, StoreKind};
use crate::steps::{Params, World};

/// The environment every quickstart Operation belongs to.
const ENVIRONMENT: &str = "quickstart";

/// How long a shutdown waits for the steps still running to finish on their own. The steps
/// that are then still running are interrupted and left to the next run's `recover()`.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(60);

/// Prints one line to standard output (see [`output`]): a failed write stops the printing,
/// never the program.
macro_rules! say {
    ($($arg:tt)*) => {
        crate::output::line(format_args!($($arg)*))
    };
}

mod worker;

/// How many connections one quickstart keeps to PostgreSQL at most (besides one that listens for
/// wake-ups): several run at once on one server.
#[cfg(feature = "postgres")]
const POSTGRES_POOL: usize = 8;

/// Standard output, whose failure is remembered rather than fatal: after the first failed write
/// nothing more is printed, the Operations go on to their ends, and `main` reports the failure
/// in the exit status.
mod output {
    use std::io::{self, Write as _};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::OnceLock;

    static FAILED: AtomicBool = AtomicBool::new(false);
    static FIRST_ERROR: OnceLock<io::Error> = OnceLock::new();

    /// Writes `args` and a newline, unless an earlier write failed.
    pub(crate) fn line(args: std::fmt::Arguments<'_>) {
        write_with(|out| {
            out.write_fmt(args)?;
            out.write_all(b"\n")
        });
    }

    /// Writes `bytes` as they are, unless an earlier write failed.
    pub(crate) fn bytes(bytes: &[u8]) {
        write_with(|out| out.write_all(bytes));
    }

    /// Flushes what standard output still buffers.
    pub(crate) fn flush() {
        write_with(|out| out.flush());
    }

    fn write_with(write: impl FnOnce(&mut io::StdoutLock<'static>) -> io::Result<()>) {
        if FAILED.load(Ordering::Acquire) {
            return;
        }
        let mut out = io::stdout().lock();
        if let Err(e) = write(&mut out) {
            let _ = FIRST_ERROR.set(e);
            FAILED.store(true, Ordering::Release);
        }
    }

    /// The first failed write's error, unless it was a broken pipe (a reader that went away,
    /// as in `quickstart | head`, which is no error).
    pub(crate) fn failure() -> Option<&'static io::Error> {
        FIRST_ERROR.get().filter(|e| e.kind() != io::ErrorKind::BrokenPipe)
    }
}

/// Writes one line to standard error; a failure there has nowhere left to be told.
fn complain(message: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "quickstart: {message}");
}

fn main() -> ExitCode {
    let result = run();
    output::flush();
    if let Err(e) = &result {
        complain(format_args!("{e}"));
    }
    let output_failed = output::failure();
    if let Some(e) = output_failed {
        complain(format_args!("cannot write to standard output: {e}"));
    }
    match result {
        Err(_) => ExitCode::from(2),
        Ok(false) => ExitCode::from(1),
        Ok(true) if output_failed.is_some() => ExitCode::from(3),
        Ok(true) => ExitCode::SUCCESS,
    }
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let command = match cli::parse(std::env::args_os().skip(1))? {
        cli::Parsed::Run(command) => *command,
        cli::Parsed::Help(text) => {
            say!("{}", text.trim_end());
            return Ok(true);
        }
    };
    tracing_subscriber::registry().with(OperationLogLayer::new()).init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async_main(command))
}

/// Opens the store that `args` names.
async fn open_store(args: &StoreArgs) -> Result<Arc<dyn Store>, Box<dyn std::error::Error>> {
    Ok(match &args.kind {
        StoreKind::Sled => Arc::new(SledStore::open(args.data.join("store"))?),
        #[cfg(feature = "postgres")]
        StoreKind::Postgres { url, schema } => {
            use saga_store_postgres::{PostgresOptions, PostgresStore};
            let mut options = PostgresOptions::default()
                .pool_size(POSTGRES_POOL)
                .application_name(format!("quickstart {}", args.owner));
            if let Some(schema) = schema {
                options = options.schema(schema);
            }
            Arc::new(PostgresStore::connect(url, options).await?)
        }
        // The parser refuses `--store` without the feature; this is the same answer.
        #[cfg(not(feature = "postgres"))]
        StoreKind::Postgres { .. } => {
            return Err(cli::missing_feature("--store postgres://...", "postgres").into())
        }
    })
}

/// An executor over `store` running the quickstart's saga, with its world; `takeover` is how
/// often it adopts Operations nobody holds (`None`: only at `recover()`).
fn executor(
    args: &StoreArgs,
    store: Arc<dyn Store>,
    takeover: Option<Duration>,
) -> Result<(Executor, World), Box<dyn std::error::Error>> {
    let world = World::new(args.data.join("world"));
    std::fs::create_dir_all(args.data.join("world"))?;
    let executor = Executor::builder(store)
        .owner(args.owner.as_str())
        .lease_ttl(Duration::from_millis(args.lease_ttl_ms))
        .takeover_interval(takeover)
        .saga(steps::saga(&world)?)
        .build()?;
    Ok((executor, world))
}

/// Opens the store and an executor over it that adopts nothing on its own.
async fn open(args: &StoreArgs) -> Result<(Executor, World), Box<dyn std::error::Error>> {
    executor(args, open_store(args).await?, None)
}

/// Shuts `executor` down, saying which Operations it left unfinished (the next `worker` or run
/// over the same store resumes them).
async fn close(executor: &Executor) {
    let report = executor.shutdown(SHUTDOWN_DEADLINE).await;
    for id in &report.left {
        say!("operation {id}: left unfinished at shutdown; the next worker resumes it");
    }
}

async fn async_main(command: Command) -> Result<bool, Box<dyn std::error::Error>> {
    match command {
        Command::Run(run) => {
            let (executor, _world) = open(&run.store).await?;
            serve_admin(&executor, &run.store).await?;
            let result = run_all(&executor, &run).await;
            linger_for_followers(&run.store).await;
            close(&executor).await;
            result
        }
        Command::Submit(run) => {
            let (executor, _world) = open(&run.store).await?;
            let result = submit(&executor, &run).await;
            close(&executor).await;
            result
        }
        Command::Worker { store, until_idle } => {
            let (claims, claimed) = claims::Claims::new(open_store(&store).await?);
            let (executor, _world) =
                executor(&store, Arc::new(claims), Some(worker::TAKEOVER_INTERVAL))?;
            serve_admin(&executor, &store).await?;
            worker::run(&executor, claimed, &store.owner, until_idle).await
        }
        Command::Resume { store } => {
            let (executor, _world) = open(&store).await?;
            serve_admin(&executor, &store).await?;
            let result = resume(&executor).await;
            linger_for_followers(&store).await;
            close(&executor).await;
            result
        }
        Command::Cancel { store, id, actor, reason } => {
            let (executor, _world) = open(&store).await?;
            let actor = actor.unwrap_or_else(user);
            match executor.cancel(id, &actor, &reason).await? {
                CancelAnswer::Requested { pending } if pending.actor == actor => say!(
                    "operation {id}: cancel requested by {actor} ({reason}); the executor \
                     running it rolls it back, or records why it refused"
                ),
                CancelAnswer::Requested { pending } => say!(
                    "operation {id}: a cancel requested by {} ({}) is pending already; the \
                     executor running it answers it",
                    pending.actor,
                    pending.reason
                ),
                answer => say!("operation {id}: {answer}"),
            }
            close(&executor).await;
            Ok(true)
        }
        Command::Log { store, id } => {
            let (executor, _world) = open(&store).await?;
            executor.status(id).await?;
            say!("{}", render_log(&executor.log(id).await?).trim_end());
            Ok(true)
        }
        Command::Report { store, since_ms, until_ms } => {
            let (executor, _world) = open(&store).await?;
            let (since, until) =
                (Timestamp::from_unix_ms(since_ms), Timestamp::from_unix_ms(until_ms));
            let rows =
                activity_report(executor.store().as_ref(), ENVIRONMENT, since, until).await?;
            // Into memory first, so that a failed write of stdout is told like any other.
            let mut csv = Vec::new();
            write_activity_csv(&rows, &mut csv)?;
            output::bytes(&csv);
            Ok(true)
        }
        Command::Check { store, dry_run } => {
            let (executor, _world) = open(&store).await?;
            let result = check(&executor, dry_run).await;
            close(&executor).await;
            result
        }
    }
}

/// With `--admin ADDR`, serves saga-admin's router over `executor` at ADDR, in the background
/// for as long as the process runs, to the bearer token in `$SAGA_TOKEN` (every environment,
/// cancel included): the dashboard at `/`, the API under `/api/v1`, what the `saga` CLI uses.
#[cfg(feature = "admin")]
async fn serve_admin(
    executor: &Executor,
    store: &StoreArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    use saga_admin::{Admin, BearerTokens, Grant};
    let Some(addr) = store.admin else { return Ok(()) };
    let token = std::env::var("SAGA_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .ok_or("--admin needs the token it accepts in $SAGA_TOKEN (any secret string)")?;
    let tokens = BearerTokens::new().token(token.trim(), Grant::all(user()));
    let router = saga_admin::router(Admin::new(executor.clone(), Arc::new(tokens)));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--admin {addr}: cannot listen there: {e}"))?;
    let local = listener.local_addr()?;
    say!("admin: serving the dashboard and API at http://{local} (token from $SAGA_TOKEN)");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            complain(format_args!("admin server stopped: {e}"));
        }
    });
    Ok(())
}

/// Without the `admin` feature there is no operator surface to serve: `--admin` is an error
/// (the parser refuses it already) that names the feature.
#[cfg(not(feature = "admin"))]
async fn serve_admin(
    _executor: &Executor,
    store: &StoreArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    match store.admin {
        Some(_) => Err(cli::missing_feature("--admin", "admin").into()),
        None => Ok(()),
    }
}

/// With `--admin`, serves a moment longer once the Operations ended, so that a follower (`saga
/// logs --follow`, `saga cancel`, the dashboard) receives the outcome before the server goes.
async fn linger_for_followers(store: &StoreArgs) {
    if store.admin.is_some() {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Who starts and cancels Operations: `$USER`.
fn user() -> String {
    std::env::var("USER").unwrap_or_else(|_| "quickstart".into())
}

/// The request for one Operation of `run` on `site`.
fn request(run: &RunArgs, site: &str) -> Start {
    let params = Params {
        site: site.to_owned(),
        fail_at: run.fail_at.clone(),
        panic_at: run.panic_at.clone(),
        crash_at: run.crash_at.clone(),
        warm_ms: run.warm_ms,
    };
    Start::new(steps::SAGA, Resource::new("site", site))
        .params(&params)
        .environment(ENVIRONMENT)
        .actor(user())
}

/// Records the Operations of `run` for workers to run, printing each id.
async fn submit(executor: &Executor, run: &RunArgs) -> Result<bool, Box<dyn std::error::Error>> {
    for site in run.sites() {
        let id = executor.submit(request(run, &site)).await?;
        say!("submitted {id} on site {site}");
    }
    Ok(true)
}

/// Recovers what an earlier run left unfinished, then runs the new Operations to their ends.
async fn run_all(executor: &Executor, run: &RunArgs) -> Result<bool, Box<dyn std::error::Error>> {
    let mut all_succeeded = resume(executor).await?;
    let mut ids = Vec::new();
    for site in run.sites() {
        ids.push(executor.start(request(run, &site)).await?);
    }
    if let Some(ms) = run.cancel_after {
        let canceller = executor.clone();
        let ids = ids.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            for id in ids {
                if let Err(e) = canceller.cancel(id, &user(), "--cancel-after").await {
                    complain(format_args!("cancel refused: {e}"));
                }
            }
        });
    }
    for id in ids {
        all_succeeded &= stream(executor, id).await?;
    }
    Ok(all_succeeded)
}

/// Prints what a recovery found besides the Operations it resumed. False if one cannot be
/// resumed.
pub(crate) fn resume_report(report: &RecoveryReport) -> bool {
    let mut all_succeeded = true;
    for cause in &report.damaged {
        say!("unfinished index: {cause} (`quickstart check` repairs it)");
        all_succeeded = false;
    }
    for (id, cause) in &report.unrecoverable {
        say!("operation {id}: unrecoverable: {cause}");
        all_succeeded = false;
    }
    for id in &report.owned_elsewhere {
        say!("operation {id}: owned by another executor until its lease expires; not resumed");
    }
    for id in &report.needs_attention {
        say!("operation {id}: needs attention past its point of no return; not resumed");
        all_succeeded = false;
    }
    all_succeeded
}

/// Recovers what an earlier run left unfinished and streams each to its end.
async fn resume(executor: &Executor) -> Result<bool, Box<dyn std::error::Error>> {
    let report = executor.recover().await?;
    let mut all_succeeded = resume_report(&report);
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

/// Checks the store (repairing it unless `dry_run`) and prints what it found. True if healthy.
async fn check(executor: &Executor, dry_run: bool) -> Result<bool, Box<dyn std::error::Error>> {
    let report = executor.check(!dry_run).await?;
    for finding in &report.findings {
        say!("{finding}");
    }
    let repaired = report.findings.iter().filter(|f| f.repaired).count();
    say!(
        "checked {} operations: {} problems, {repaired} repaired",
        report.operations,
        report.findings.len()
    );
    let relisted = report
        .findings
        .iter()
        .any(|f| f.repaired && matches!(f.problem, Problem::MissingUnfinishedMark));
    if relisted {
        say!("run `quickstart resume` to resume the operations listed again as unfinished");
    }
    if dry_run && !report.findings.is_empty() {
        say!("nothing was repaired (--dry-run); run `quickstart check` to repair what can be");
    }
    Ok(report.is_healthy())
}
