//! The quickstart's command line, parsed with clap.
//!
//! Every flag is global: it may come before or after the command word (`--owner bob resume`
//! and `resume --owner bob` are the same), as the tests and the README write them. A flag that
//! a command does not use is accepted and ignored.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use saga_core::OperationId;

use crate::steps::STEPS;

/// The executor's name when `--owner` is not given, on the sled store.
pub(crate) const DEFAULT_OWNER: &str = "quickstart";

/// What to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// Recover, then run `--count` new Operations.
    Run(RunArgs),
    /// Record `--count` new Operations for workers to run, without running them.
    Submit(RunArgs),
    /// Adopt and run unfinished Operations until interrupted (or idle, with `until_idle`).
    Worker { store: StoreArgs, until_idle: bool },
    /// Only recover and finish what is unfinished.
    Resume { store: StoreArgs },
    /// Ask for an Operation to be cancelled, wherever it runs.
    Cancel { store: StoreArgs, id: OperationId, actor: Option<String>, reason: String },
    /// Print one Operation's stored log.
    Log { store: StoreArgs, id: OperationId },
    /// Print the activity report as CSV.
    Report { store: StoreArgs, since_ms: u64, until_ms: u64 },
    /// Reconcile the store's indexes with its records, repairing unless `dry_run`.
    Check { store: StoreArgs, dry_run: bool },
}

/// Which store the Operations live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreKind {
    /// The embedded sled store in `DIR/store` (the default).
    Sled,
    /// A PostgreSQL database (`--store postgres://...`), in `schema` or the URL's default.
    /// Only built with the `postgres` feature (the parser refuses it otherwise).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Postgres { url: String, schema: Option<String> },
}

/// The flags every command takes: where the store is, and the name of the executor over it.
#[derive(Debug)]
pub(crate) struct StoreArgs {
    /// `--data DIR`: the world (`DIR/world`) and the sled store (`DIR/store`).
    pub(crate) data: PathBuf,
    /// `--store URL` and `--schema NAME`.
    pub(crate) kind: StoreKind,
    /// `--owner NAME`: the executor's name in the leases it holds and in the log.
    pub(crate) owner: String,
    /// `--lease-ttl MS`: how long the executor's leases last unless renewed.
    pub(crate) lease_ttl_ms: u64,
    /// `--admin ADDR`: serve the operator surface (saga-admin) there while running. Only with
    /// the `admin` feature (the parser refuses it otherwise).
    pub(crate) admin: Option<SocketAddr>,
}

/// The flags of a run (or a submit).
#[derive(Debug)]
pub(crate) struct RunArgs {
    pub(crate) store: StoreArgs,
    pub(crate) site: String,
    pub(crate) count: u64,
    pub(crate) fail_at: Option<String>,
    pub(crate) panic_at: Option<String>,
    pub(crate) crash_at: Option<String>,
    pub(crate) cancel_after: Option<u64>,
    pub(crate) warm_ms: u64,
}

impl RunArgs {
    /// The sites of the Operations: `--site` itself for one, `<site>-1 .. <site>-N` for more.
    pub(crate) fn sites(&self) -> Vec<String> {
        if self.count == 1 {
            vec![self.site.clone()]
        } else {
            (1..=self.count).map(|i| format!("{}-{i}", self.site)).collect()
        }
    }
}

/// The forms of the command line, in the usage line of `--help`.
const USAGE: &str = "quickstart [--data DIR] [--owner NAME] [--site NAME] [--count N] \
     [--fail-at STEP] [--panic-at STEP] [--crash-at STEP] [--cancel-after MS] [--warm-ms MS]
       quickstart [--data DIR] [--owner NAME] resume
       quickstart [--data DIR] [--owner NAME] log ID
       quickstart [--data DIR] [--owner NAME] report [--since RFC3339] [--until RFC3339]
       quickstart [--data DIR] [--owner NAME] check [--dry-run]
       quickstart [--data DIR] [--owner NAME] submit [--site NAME] [--count N] [--fail-at STEP] ...
       quickstart [--data DIR] [--owner NAME] worker [--until-idle]
       quickstart [--data DIR] [--owner NAME] cancel ID [--actor NAME] [--reason TEXT]
       Every form also takes [--store postgres://...] [--schema NAME] [--lease-ttl MS] [--admin ADDR].";

/// What `--help` says after the flags: the model, the defaults and the steps.
fn after_help() -> String {
    format!(
        "Without a command, recovers what an earlier run left unfinished, then runs --count new \
         Operations (on sites NAME-1 .. NAME-N; one: on NAME itself).\n\n\
         --store postgres://user:password@host:port/db keeps the Operations in PostgreSQL \
         (--schema NAME: in that schema, created when missing) instead of the sled store in \
         DIR/store; the steps' world stays in DIR/world, shared by every process given the same \
         DIR. With PostgreSQL several processes run at once: `submit` records Operations without \
         running them, each `worker` adopts what is unfinished and unowned (at once when told, \
         and every second) until interrupted (--until-idle: until nothing is left unfinished), \
         and `cancel` asks whichever executor runs an Operation to roll it back. (Built with \
         `--features postgres`.)\n\n\
         --owner names this process's executor, which holds a lease on each Operation it runs \
         (--lease-ttl, renewed while it runs): a quickstart started again under the same name \
         reclaims them at once; under another name it leaves them until they expire and a later \
         run resumes them. Two processes must never share a name (the sled store lets only one \
         process open it at a time anyway). --owner defaults to {DEFAULT_OWNER} on the sled \
         store and to HOST:PID (unique to the process) on PostgreSQL.\n\n\
         --admin ADDR (a plain run, `resume` and `worker`) serves the operator API, dashboard \
         and the `saga` CLI's endpoints at http://ADDR while it runs, for the bearer token in \
         $SAGA_TOKEN (every environment). (Built with `--features admin`.)\n\n\
         Exit status: 0 every Operation succeeded (check: the store is healthy); 1 one did not \
         (check: a problem remains); 2 an error (a bad flag, a refused cancel, a failed store); \
         3 every Operation succeeded but writing standard output failed.\n\n\
         Steps, in order: {}",
        STEPS.join(", ")
    )
}

/// The whole command line, as clap parses it.
#[derive(Debug, Parser)]
#[command(
    name = "quickstart",
    about = "Provisions a small site with real side effects, as a saga on a durable store",
    override_usage = USAGE,
    after_help = after_help(),
)]
struct Cli {
    #[command(flatten)]
    store: StoreFlags,
    #[command(flatten)]
    run: RunFlags,
    #[command(flatten)]
    other: OtherFlags,
    #[command(subcommand)]
    command: Option<Word>,
}

/// The commands besides the plain run.
#[derive(Debug, Subcommand)]
enum Word {
    /// Record Operations (--count, --site, the faults) for workers to run, without running them.
    Submit,
    /// Adopt and run unfinished Operations nobody holds, until SIGINT or SIGTERM.
    Worker,
    /// Only recover and finish what an earlier run left unfinished.
    Resume,
    /// Ask whichever executor runs an Operation to roll it back.
    Cancel {
        /// The Operation's id.
        id: OperationId,
    },
    /// Print one Operation's stored log.
    Log {
        /// The Operation's id.
        id: OperationId,
    },
    /// Print the activity report of the quickstart's environment as CSV.
    Report,
    /// Reconcile the store's indexes with its records, repairing what the records alone can.
    Check,
}

/// Where the store is, and the executor over it.
#[derive(Debug, Args)]
#[command(next_help_heading = "Store and executor (every command)")]
struct StoreFlags {
    /// The world (DIR/world) and the sled store (DIR/store).
    #[arg(long, value_name = "DIR", default_value = "quickstart-data", global = true)]
    data: PathBuf,
    /// The executor's name in its leases and in the log [default: quickstart on the sled
    /// store, HOST:PID on PostgreSQL].
    #[arg(long, value_name = "NAME", value_parser = owner_name, global = true)]
    owner: Option<String>,
    /// Keep the Operations in PostgreSQL (postgres://user:password@host:port/db) instead of
    /// the sled store in DIR/store. Needs the `postgres` feature.
    #[arg(long = "store", value_name = "URL", value_parser = store_url, global = true)]
    url: Option<String>,
    /// With --store: the PostgreSQL schema of the tables, created when missing.
    #[arg(long, value_name = "NAME", value_parser = schema_name, global = true)]
    schema: Option<String>,
    /// How long the executor's leases last unless renewed, in ms (at least 100).
    #[arg(
        long = "lease-ttl",
        value_name = "MS",
        default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(100..),
        global = true
    )]
    lease_ttl_ms: u64,
    /// Serve the operator API and dashboard at ADDR (such as 127.0.0.1:8080) while running, for
    /// the token in $SAGA_TOKEN. Needs the `admin` feature.
    #[arg(long, value_name = "ADDR", value_parser = socket_addr, global = true)]
    admin: Option<SocketAddr>,
}

/// The flags of a plain run and of `submit`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Run and submit")]
struct RunFlags {
    /// The site of the Operation (with --count N: sites NAME-1 .. NAME-N).
    #[arg(long, value_name = "NAME", default_value = "demo", global = true)]
    site: String,
    /// How many Operations to run (or submit) at once.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u64).range(1..),
        global = true
    )]
    count: u64,
    /// Make STEP fail (permanently), before its effect.
    #[arg(long = "fail-at", value_name = "STEP", value_parser = step, global = true)]
    fail_at: Option<String>,
    /// Make STEP panic (the engine records a failed attempt and rolls back).
    #[arg(long = "panic-at", value_name = "STEP", value_parser = step, global = true)]
    panic_at: Option<String>,
    /// Abort the process right after STEP's effect (the next run resumes it).
    #[arg(long = "crash-at", value_name = "STEP", value_parser = step, global = true)]
    crash_at: Option<String>,
    /// A plain run: cancel its Operations MS milliseconds after they start.
    #[arg(long = "cancel-after", value_name = "MS", global = true)]
    cancel_after: Option<u64>,
    /// How long the warm-cache step takes, in ms.
    #[arg(long = "warm-ms", value_name = "MS", default_value_t = 1200, global = true)]
    warm_ms: u64,
}

/// The flags of the other commands.
#[derive(Debug, Args)]
#[command(next_help_heading = "worker, cancel, report, check")]
struct OtherFlags {
    /// worker: stop once nothing is left unfinished in the store.
    #[arg(long = "until-idle", global = true)]
    until_idle: bool,
    /// cancel: who asks [default: $USER].
    #[arg(long, value_name = "NAME", global = true)]
    actor: Option<String>,
    /// cancel: why.
    #[arg(long, value_name = "TEXT", default_value = "quickstart cancel", global = true)]
    reason: String,
    /// report: from this time on (RFC 3339, such as 2026-11-27T00:00:00Z).
    #[arg(long, value_name = "RFC3339", value_parser = unix_ms, global = true)]
    since: Option<u64>,
    /// report: before this time (RFC 3339).
    #[arg(long, value_name = "RFC3339", value_parser = unix_ms, global = true)]
    until: Option<u64>,
    /// check: only report what is wrong; repair nothing.
    #[arg(long = "dry-run", global = true)]
    dry_run: bool,
}

/// What the command line asks for.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// A command to run (boxed: it is much larger than the help).
    Run(Box<Command>),
    /// `--help` (or `-h`): this text, for standard output.
    Help(String),
}

/// Parses the arguments (without the program's name). An error's text says what is wrong.
pub(crate) fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, String> {
    let program = std::iter::once(OsString::from("quickstart"));
    let cli = match Cli::try_parse_from(program.chain(args)) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => return Ok(Parsed::Help(e.to_string())),
        Err(e) => return Err(clap_error(&e)),
    };
    cli.into_command().map(|command| Parsed::Run(Box::new(command)))
}

/// A clap error without its `error: ` prefix (the quickstart prefixes its own name).
fn clap_error(e: &clap::Error) -> String {
    let text = e.to_string();
    text.strip_prefix("error: ").unwrap_or(&text).trim_end().to_owned()
}

/// The error for a flag that needs a cargo feature this build was made without.
pub(crate) fn missing_feature(flag: &str, feature: &str) -> String {
    format!(
        "{flag} needs the quickstart built with the `{feature}` feature: cargo run -p \
         saga-examples --features {feature} --example quickstart -- ..."
    )
}

impl Cli {
    /// The checks clap does not make, then the command.
    fn into_command(self) -> Result<Command, String> {
        let Cli { store, run, other, command } = self;
        let kind = match (store.url, store.schema) {
            (Some(_), _) if !cfg!(feature = "postgres") => {
                return Err(missing_feature("--store postgres://...", "postgres"))
            }
            (Some(url), schema) => StoreKind::Postgres { url, schema },
            (None, Some(schema)) => {
                return Err(format!(
                    "--schema {schema} needs --store postgres://... (the sled store has no schemas)"
                ))
            }
            (None, None) => StoreKind::Sled,
        };
        if store.admin.is_some() && !cfg!(feature = "admin") {
            return Err(missing_feature("--admin", "admin"));
        }
        let owner = match store.owner {
            Some(owner) => owner,
            None if kind == StoreKind::Sled => DEFAULT_OWNER.into(),
            None => unique_owner(),
        };
        let store = StoreArgs {
            data: store.data,
            kind,
            owner,
            lease_ttl_ms: store.lease_ttl_ms,
            admin: store.admin,
        };
        Ok(match command {
            None | Some(Word::Submit) => {
                if run.site.is_empty()
                    || run.site.contains(['/', '\\'])
                    || run.site.starts_with('.')
                {
                    return Err(format!("--site {:?} is not a plain name", run.site));
                }
                let submit = command.is_some();
                if submit && run.cancel_after.is_some() {
                    return Err("submit: --cancel-after needs a run (use `cancel ID`)".into());
                }
                let run = RunArgs {
                    store,
                    site: run.site,
                    count: run.count,
                    fail_at: run.fail_at,
                    panic_at: run.panic_at,
                    crash_at: run.crash_at,
                    cancel_after: run.cancel_after,
                    warm_ms: run.warm_ms,
                };
                if submit {
                    Command::Submit(run)
                } else {
                    Command::Run(run)
                }
            }
            Some(Word::Worker) => Command::Worker { store, until_idle: other.until_idle },
            Some(Word::Resume) => Command::Resume { store },
            Some(Word::Cancel { id }) => {
                Command::Cancel { store, id, actor: other.actor, reason: other.reason }
            }
            Some(Word::Log { id }) => Command::Log { store, id },
            Some(Word::Report) => Command::Report {
                store,
                since_ms: other.since.unwrap_or(0),
                until_ms: other.until.unwrap_or(u64::MAX),
            },
            Some(Word::Check) => Command::Check { store, dry_run: other.dry_run },
        })
    }
}

/// A name unique to this process: the host's name and the process id.
fn unique_owner() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty() && !name.contains(char::is_whitespace))
        .unwrap_or_else(|| "quickstart".to_owned());
    format!("{host}:{}", std::process::id())
}

fn owner_name(owner: &str) -> Result<String, String> {
    if owner.is_empty() || owner.contains(|c: char| c.is_whitespace() || c.is_control()) {
        Err(format!("--owner {owner:?} is not a name (empty, or has spaces)"))
    } else {
        Ok(owner.to_owned())
    }
}

fn store_url(url: &str) -> Result<String, String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(url.to_owned())
    } else {
        Err(format!(
            "--store takes a postgres:// URL, not {url:?} (without --store, the sled store in \
             DIR/store)"
        ))
    }
}

fn schema_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "--schema {name:?} is not a lowercase identifier (a-z, 0-9, _, not starting with a \
             digit, at most 63 bytes)"
        ))
    }
}

fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("--admin takes an address and port such as 127.0.0.1:8080, not {text:?}")
    })
}

fn step(name: &str) -> Result<String, String> {
    if STEPS.contains(&name) {
        Ok(name.to_owned())
    } else {
        Err(format!("unknown step {name:?}; the steps are {}", STEPS.join(", ")))
    }
}

fn unix_ms(text: &str) -> Result<u64, String> {
    match text.parse::<saga_core::Timestamp>() {
        Ok(time) => Ok(time.unix_ms()),
        Err(saga_core::Error::InvalidTimestamp { why, .. }) => {
            Err(format!("an RFC 3339 time such as 2026-11-27T00:00:00Z: {why}"))
        }
        Err(other) => Err(other.to_string()),
    }
}
