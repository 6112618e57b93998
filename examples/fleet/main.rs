//! `fleet`: several executors, in several processes, sharing one store, running a saga whose
//! steps only sleep and write a step journal (see `saga.rs`): what the multi-executor process
//! tests (`tests/fleet.rs`) run, and the start of a fleet simulation tool. Needs a PostgreSQL
//! server for several processes (`--store postgres://...`), or nothing but a directory for the
//! embedded sled store (one process at a time).
//!
//! ```text
//! fleet --store STORE [--schema NAME] [--owner NAME] [--lease-ttl MS] COMMAND
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
//!
//! `worker` adopts unfinished Operations that nobody holds: those `recover()` finds at start,
//! then at every takeover scan (`--takeover-ms`, default 1000) and at once when the store wakes
//! it. Its steps append to the journal FILE. It prints `worker NAME ready` once it runs, then one
//! line per Operation whose driver ended here: `operation ID: OUTCOME` when it finished here, or
//! `operation ID: stopped here: WHY` (its lease was lost or the store failed: another executor
//! goes on with it). At SIGTERM or SIGINT it stops at the next step boundaries, prints `worker
//! NAME stopped` and exits 0.
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

mod saga;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use saga_core::store::{Lease, Store, StoreError};
use saga_core::{async_trait, Error, Executor, OperationId, Resource, Start};
use saga_store::SledStore;
use saga_store_postgres::{PostgresOptions, PostgresStore};
use tokio::sync::mpsc;

use crate::saga::{Journal, Params};

/// Prints a line on standard output; a reader that went away is no reason to stop the worker.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

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
    command: Command,
}

fn usage() -> &'static str {
    "usage: fleet --store (postgres://... [--schema NAME] | DIR) [--owner NAME] [--lease-ttl MS] \
     COMMAND\n  \
     worker --journal FILE [--takeover-ms MS]\n  \
     submit [--count N] [--step-ms MS] [--jitter-ms MS]\n  \
     cancel ID [--actor NAME] [--reason TEXT]"
}

fn number(flag: &str, text: Option<String>) -> Result<u64, String> {
    let text = text.ok_or_else(|| format!("{flag} needs a value"))?;
    text.parse().map_err(|_| format!("{flag} takes a whole number, not {text:?}"))
}

/// Parses the arguments; `None` when help was asked for.
fn parse(args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let (mut store, mut schema, mut owner, mut journal) = (None, None, None, None);
    let (mut lease_ttl_ms, mut takeover_ms, mut count) = (30_000, 1000, 1);
    let mut params = Params { step_ms: 100, jitter_ms: 0 };
    let (mut actor, mut reason) = (None, None);
    let mut words = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut text = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--store" => store = Some(text("--store")?),
            "--schema" => schema = Some(text("--schema")?),
            "--owner" => owner = Some(text("--owner")?),
            "--journal" => journal = Some(PathBuf::from(text("--journal")?)),
            "--actor" => actor = Some(text("--actor")?),
            "--reason" => reason = Some(text("--reason")?),
            "--lease-ttl" => lease_ttl_ms = number(&arg, args.next())?.max(100),
            "--takeover-ms" => takeover_ms = number(&arg, args.next())?.max(10),
            "--count" => count = number(&arg, args.next())?,
            "--step-ms" => params.step_ms = number(&arg, args.next())?,
            "--jitter-ms" => params.jitter_ms = number(&arg, args.next())?,
            flag if flag.starts_with('-') => return Err(format!("unknown flag {flag}")),
            _ => words.push(arg),
        }
    }
    let store = store.ok_or("--store is required: a postgres:// URL or a directory")?;
    if schema.is_some() && !store.starts_with("postgres") {
        return Err("--schema needs --store postgres://...".into());
    }
    let owner = owner.unwrap_or_else(|| format!("fleet-{}", std::process::id()));
    if owner.is_empty() || owner.contains(char::is_whitespace) {
        return Err(format!("--owner {owner:?} is not a name (empty, or has spaces)"));
    }
    let command = match words.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["worker"] => Command::Worker {
            journal: journal.ok_or("worker needs --journal FILE")?,
            takeover: Duration::from_millis(takeover_ms),
        },
        ["submit"] => Command::Submit { count, params },
        ["cancel", id] => Command::Cancel {
            id: id.parse().map_err(|e| format!("cancel: {e}"))?,
            actor: actor.unwrap_or_else(|| owner.clone()),
            reason: reason.unwrap_or_else(|| "fleet cancel".into()),
        },
        _ => return Err(format!("unexpected arguments {words:?}")),
    };
    let lease_ttl = Duration::from_millis(lease_ttl_ms);
    Ok(Some(Args { store, schema, owner, lease_ttl, command }))
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            say!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("fleet: {e}\n{}", usage());
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
            let (claims, claimed) = Claims::new(store);
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
            let batch = format!("{}-{}", std::process::id(), saga_core::store::now_ms());
            for n in 0..*count {
                let resource = Resource::new("fleet-item", format!("{batch}-{n}"));
                let id = executor.submit(Start::new(saga::SAGA, resource).params(params)).await?;
                say!("submitted {id}");
            }
            executor.shutdown(SHUTDOWN_DEADLINE).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { id, actor, reason } => {
            let executor = quiet_executor(store, &args)?;
            let answer = executor.cancel(*id, actor, reason).await;
            executor.shutdown(SHUTDOWN_DEADLINE).await;
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

/// A store that passes every call to `inner` and tells the worker of every Operation it
/// claimed.
struct Claims {
    inner: Arc<dyn Store>,
    claimed: mpsc::UnboundedSender<OperationId>,
}

impl Claims {
    fn new(inner: Arc<dyn Store>) -> (Claims, mpsc::UnboundedReceiver<OperationId>) {
        let (claimed, receiver) = mpsc::unbounded_channel();
        (Claims { inner, claimed }, receiver)
    }
}

#[async_trait]
impl saga_core::store::StoreWrapper for Claims {
    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }

    async fn claim(
        &self,
        operation: OperationId,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let lease = self.inner.claim(operation, owner, ttl).await?;
        // Nobody listening any more is fine: the worker is stopping.
        let _ = self.claimed.send(operation);
        Ok(lease)
    }
}
