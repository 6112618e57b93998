//! `fleet`: several executors, in several processes, sharing one store, running a saga whose
//! steps only sleep and write a step journal (see `saga.rs`): what the multi-executor process
//! tests (`tests/fleet.rs`) run, and the start of a fleet simulation tool. Needs a PostgreSQL
//! server for several processes (`--store postgres://...`), or nothing but a directory for the
//! embedded sled store (one process at a time).
//!
//! ```text
//! fleet --store STORE [--schema NAME] [--owner NAME] [--lease-ttl MS] [--store-retries N] COMMAND
//!   worker --journal FILE [--takeover-ms MS]
//!   submit [--count N] [--step-ms MS] [--jitter-ms MS]
//!   cancel ID [--actor NAME] [--reason TEXT]
//! ```
//!
//! - `--store postgres://user:password@host:port/db` (with `--schema NAME`: the tables in that
//!   schema, created when missing), or `--store DIR`: the sled store in DIR.
//! - `--owner NAME`: the executor's name in leases and in the journal (default `fleet-PID`).
//!   Two processes must never share one.
//! - `--lease-ttl MS`: how long a lease lasts unless renewed (default 30000).
//! - `--store-retries N`: how many times the PostgreSQL store retries a call that failed
//!   transiently before the executor sees the error (default 4; 0: the executor sees it at once).
//!
//! `worker` adopts unfinished Operations that nobody holds: those `recover()` finds at start,
//! then at every takeover scan (`--takeover-ms`, default 1000) and at once when the store wakes
//! it. Its steps append to the journal FILE. It prints `worker NAME ready` once it runs, then one
//! line per Operation whose driver ended here: `operation ID: OUTCOME` when it finished here, or
//! `operation ID: stopped here: WHY` (its lease was lost or the store failed: another executor
//! goes on with it). When its store calls fail (a failover of the database, a restart) it prints
//! `store failing since MS: ERROR` (Unix ms) at the first failure and `store answering again
//! after N ms` at the first call that succeeds after it: the outage it saw. At SIGTERM or
//! SIGINT it stops at the next step boundaries, prints `worker NAME stopped` and exits 0.
//!
//! `submit` records N Operations (each on a resource of its own) for the workers, without
//! running any, and prints `submitted ID` for each. Their steps sleep `--step-ms` (default 100)
//! plus a random extra of up to `--jitter-ms` (default 0).
//!
//! `cancel` cancels an Operation wherever it runs and prints the answer: `operation ID: ANSWER`
//! (exit 0), or `operation ID: refused: WHY` (exit 1: it finished, or passed its point of no
//! return, which its log then records).
//!
//! Exit status 2: a bad flag, or the store failed.

#[path = "../shared/claims.rs"]
mod claims;
mod saga;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory as _, Parser, Subcommand};
use saga_core::store::Store;
use saga_core::{Error, Executor, OperationId, Resource, Start};
use saga_store::SledStore;
use saga_store_postgres::{PostgresOptions, PostgresStore};
use tokio::sync::mpsc;

use crate::claims::Claims;
use crate::outage::Watched;
use crate::saga::{Journal, Params};

/// Prints a line on standard output; a reader that went away is no reason to stop the worker.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod outage;

/// How long a stopping worker waits for its running steps before it interrupts them.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// How long a worker waits for an Operation it claimed to run here: a claim may also end in
/// nothing to run (it finished meanwhile, or waits for an operator).
const CLAIM_TO_RUN: Duration = Duration::from_secs(2);

/// What to do.
#[derive(Debug)]
enum Command {
    Worker { journal: PathBuf, takeover: Duration },
    Submit { count: u64, params: Params },
    Cancel { id: OperationId, actor: String, reason: String },
}

/// The flags every command takes.
#[derive(Debug)]
struct Args {
    store: String,
    schema: Option<String>,
    owner: String,
    lease_ttl: Duration,
    store_retries: u32,
    command: Command,
}

/// The command line, as clap parses it. Every flag is global: it may come before or after the
/// command word (the tests put a worker's flags before `worker`).
#[derive(Debug, Parser)]
#[command(
    name = "fleet",
    about = "Several executors in several processes over one store, running a saga that sleeps",
    after_help = "Exit status: 0 done (a worker: stopped by SIGTERM or SIGINT); 1 a cancel \
                  refused (the Operation finished, or passed its point of no return); 2 a bad \
                  flag, or the store failed."
)]
struct Cli {
    /// postgres://user:password@host:port/db, or DIR: the sled store in DIR (one process at a
    /// time).
    #[arg(long, value_name = "STORE", global = true)]
    store: Option<String>,
    /// With a postgres:// store: the schema of the tables, created when missing.
    #[arg(long, value_name = "NAME", global = true)]
    schema: Option<String>,
    /// The executor's name in leases and in the journal [default: fleet-PID]. Two processes
    /// must never share one.
    #[arg(long, value_name = "NAME", value_parser = owner_name, global = true)]
    owner: Option<String>,
    /// How long a lease lasts unless renewed, in ms (at least 100: less counts as 100).
    #[arg(long = "lease-ttl", value_name = "MS", default_value_t = 30_000, global = true)]
    lease_ttl_ms: u64,
    /// With a postgres:// store: how many times a store call that failed transiently is
    /// retried inside the store before the executor sees the error (0: the executor sees the
    /// first one and retries on its own).
    #[arg(long = "store-retries", value_name = "N", default_value_t = 4, global = true)]
    store_retries: u32,
    /// worker: the step journal its steps append to.
    #[arg(long, value_name = "FILE", global = true)]
    journal: Option<PathBuf>,
    /// worker: how often it looks for Operations nobody holds, in ms (at least 10).
    #[arg(long = "takeover-ms", value_name = "MS", default_value_t = 1000, global = true)]
    takeover_ms: u64,
    /// submit: how many Operations.
    #[arg(long, value_name = "N", default_value_t = 1, global = true)]
    count: u64,
    /// submit: how long each step (and compensation) sleeps, in ms.
    #[arg(long = "step-ms", value_name = "MS", default_value_t = 100, global = true)]
    step_ms: u64,
    /// submit: a random extra sleep of up to this, in ms, drawn at every attempt.
    #[arg(long = "jitter-ms", value_name = "MS", default_value_t = 0, global = true)]
    jitter_ms: u64,
    /// cancel: who asks [default: the owner].
    #[arg(long, value_name = "NAME", global = true)]
    actor: Option<String>,
    /// cancel: why.
    #[arg(long, value_name = "TEXT", default_value = "fleet cancel", global = true)]
    reason: String,
    #[command(subcommand)]
    command: Word,
}

/// The commands.
#[derive(Debug, Subcommand)]
enum Word {
    /// Adopt unfinished Operations nobody holds, until SIGTERM or SIGINT (needs --journal).
    Worker,
    /// Record --count Operations for the workers, without running any.
    Submit,
    /// Cancel an Operation wherever it runs.
    Cancel {
        /// The Operation's id.
        id: OperationId,
    },
}

fn owner_name(owner: &str) -> Result<String, String> {
    if owner.is_empty() || owner.contains(char::is_whitespace) {
        Err(format!("--owner {owner:?} is not a name (empty, or has spaces)"))
    } else {
        Ok(owner.to_owned())
    }
}

/// Parses the arguments: the flags, or `Err(clap's error)`, which also carries `--help`.
fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, clap::Error> {
    let program = std::iter::once(OsString::from("fleet"));
    let cli = Cli::try_parse_from(program.chain(args))?;
    let invalid = |message: &str| Cli::command().error(ErrorKind::ValueValidation, message);
    let store = cli
        .store
        .ok_or_else(|| invalid("--store is required: a postgres:// URL or a directory"))?;
    if cli.schema.is_some() && !store.starts_with("postgres") {
        return Err(invalid("--schema needs --store postgres://..."));
    }
    let owner = cli.owner.unwrap_or_else(|| format!("fleet-{}", std::process::id()));
    let command = match cli.command {
        Word::Worker => Command::Worker {
            journal: cli.journal.ok_or_else(|| invalid("worker needs --journal FILE"))?,
            takeover: Duration::from_millis(cli.takeover_ms.max(10)),
        },
        Word::Submit => Command::Submit {
            count: cli.count,
            params: Params { step_ms: cli.step_ms, jitter_ms: cli.jitter_ms },
        },
        Word::Cancel { id } => Command::Cancel {
            id,
            actor: cli.actor.unwrap_or_else(|| owner.clone()),
            reason: cli.reason,
        },
    };
    let lease_ttl = Duration::from_millis(cli.lease_ttl_ms.max(100));
    let store_retries = cli.store_retries;
    Ok(Args { store, schema: cli.schema, owner, lease_ttl, store_retries, command })
}

fn main() -> ExitCode {
    let args = match parse(std::env::args_os().skip(1)) {
        Ok(args) => args,
        // --help: clap's text on stdout.
        Err(e) if !e.use_stderr() => {
            say!("{}", e.to_string().trim_end());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprint!("fleet: {}", e.to_string().trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fleet: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fleet: {e}");
            ExitCode::from(2)
        }
    }
}

/// The store the flags name.
async fn open_store(args: &Args) -> Result<Arc<dyn Store>, Box<dyn std::error::Error>> {
    if args.store.starts_with("postgres://") || args.store.starts_with("postgresql://") {
        let mut options = PostgresOptions::default()
            .pool_size(4)
            .retries(args.store_retries)
            .application_name(format!("fleet {}", args.owner));
        if let Some(schema) = &args.schema {
            options = options.schema(schema);
        }
        Ok(Arc::new(PostgresStore::connect(&args.store, options).await?))
    } else {
        Ok(Arc::new(SledStore::open(&args.store)?))
    }
}

async fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let store = open_store(&args).await?;
    match &args.command {
        Command::Worker { journal, takeover } => {
            let (claims, claimed) = Claims::new(Arc::new(Watched::new(store)));
            let executor = Executor::builder(Arc::new(claims))
                .owner(args.owner.as_str())
                .lease_ttl(args.lease_ttl)
                .takeover_interval(Some(*takeover))
                .saga(saga::saga(&Journal::open(journal, &args.owner)?)?)
                .build()?;
            worker(&executor, claimed, &args.owner).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit { count, params } => {
            let executor = quiet_executor(store, &args)?;
            // Resources of their own, so that no Operation waits behind another.
            let batch = format!("{}-{}", std::process::id(), saga_core::Timestamp::now().unix_ms());
            for n in 0..*count {
                let resource = Resource::new("fleet-item", format!("{batch}-{n}"));
                let id = executor.submit(Start::new(saga::SAGA, resource).params(params)).await?;
                say!("submitted {id}");
            }
            let _ = executor.shutdown(SHUTDOWN_DEADLINE).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { id, actor, reason } => {
            let executor = quiet_executor(store, &args)?;
            let answer = executor.cancel(*id, actor, reason).await;
            let _ = executor.shutdown(SHUTDOWN_DEADLINE).await;
            match answer {
                Ok(answer) => {
                    say!("operation {id}: {answer}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e @ (Error::PastPointOfNoReturn { .. } | Error::AlreadyFinished { .. })) => {
                    say!("operation {id}: refused: {e}");
                    Ok(ExitCode::from(1))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// An executor that never runs an Operation: it only submits or cancels.
fn quiet_executor(store: Arc<dyn Store>, args: &Args) -> Result<Executor, Error> {
    Executor::builder(store)
        .owner(args.owner.as_str())
        .lease_ttl(args.lease_ttl)
        .takeover_interval(None)
        .saga(saga::saga(&Journal::none())?)
        .build()
}

/// Runs the worker until SIGTERM or SIGINT, printing the end of every Operation it ran.
async fn worker(
    executor: &Executor,
    mut claimed: mpsc::UnboundedReceiver<OperationId>,
    owner: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let report = executor.recover().await?;
    for (id, cause) in &report.unrecoverable {
        say!("operation {id}: unrecoverable: {cause}");
    }
    say!("worker {owner} ready");
    use tokio::signal::unix::{signal, SignalKind};
    let (mut terminate, mut interrupt) =
        (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    let mut ends = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            Some(id) = claimed.recv() => {
                let executor = executor.clone();
                ends.spawn(async move { report_end(&executor, id).await });
            }
            Some(_) = ends.join_next(), if !ends.is_empty() => {}
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    let report = executor.shutdown(SHUTDOWN_DEADLINE).await;
    // The drivers have ended: every watcher answers at once.
    while ends.join_next().await.is_some() {}
    say!("worker {owner} stopped ({} operations left for another worker)", report.left.len());
    Ok(())
}

/// Prints how the driver of an Operation this worker just claimed ended here, if it ran here.
async fn report_end(executor: &Executor, id: OperationId) {
    let claimed_at = tokio::time::Instant::now();
    // A claim comes just before the driver starts (the log is read and folded first).
    while !executor.is_running(id) {
        if claimed_at.elapsed() > CLAIM_TO_RUN {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    match executor.wait_here(id).await {
        Ok(outcome) => say!("operation {id}: {outcome}"),
        // Stopped by the shutdown, or ended before it was asked: nothing to say.
        Err(Error::ShuttingDown | Error::NotRunning(_)) => {}
        Err(e) => say!("operation {id}: stopped here: {e}"),
    }
}
