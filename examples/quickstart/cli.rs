//! The quickstart's command line, parsed by hand to need no dependency.

use std::path::PathBuf;

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
    /// `--admin ADDR`: serve the operator surface (saga-admin) there while running.
    pub(crate) admin: Option<std::net::SocketAddr>,
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

/// The help text.
pub(crate) fn usage() -> String {
    format!(
        "usage: quickstart [--data DIR] [--owner NAME] [--site NAME] [--count N] [--fail-at STEP] \
         [--panic-at STEP] [--crash-at STEP] [--cancel-after MS] [--warm-ms MS]\n       \
         quickstart [--data DIR] [--owner NAME] resume\n       \
         quickstart [--data DIR] [--owner NAME] log ID\n       \
         quickstart [--data DIR] [--owner NAME] report [--since RFC3339] [--until RFC3339]\n       \
         quickstart [--data DIR] [--owner NAME] check [--dry-run]\n       \
         quickstart [--data DIR] [--owner NAME] submit [--site NAME] [--count N] [--fail-at STEP] \
         ...\n       \
         quickstart [--data DIR] [--owner NAME] worker [--until-idle]\n       \
         quickstart [--data DIR] [--owner NAME] cancel ID [--actor NAME] [--reason TEXT]\n\
         Every form also takes [--store postgres://...] [--schema NAME] [--lease-ttl MS].\n\n\
         --fail-at makes STEP fail, --panic-at makes it panic, --crash-at aborts the process after \
         its effect.\n--count N runs (or submits) N Operations at once, on sites NAME-1 .. NAME-N \
         (one: on NAME itself).\ncheck repairs the store's indexes (--dry-run: only reports); \
         `resume` then resumes what it listed again.\n\
         --store postgres://user:password@host:port/db keeps the Operations in PostgreSQL \
         (--schema NAME: in that schema, created when missing) instead of the sled store in \
         DIR/store; the steps' world stays in DIR/world, shared by every process given the same \
         DIR. With PostgreSQL several processes run at once: `submit` records Operations without \
         running them, each `worker` adopts what is unfinished and unowned (at once when told, \
         and every second) until interrupted (--until-idle: until nothing is left unfinished), \
         and `cancel` asks whichever executor runs an Operation to roll it back.\n\
         --owner names this process's executor, which holds a lease on each Operation it runs \
         (--lease-ttl, default 30000 ms, renewed while it runs): a quickstart started again \
         under the same name reclaims them at once; under another name it leaves them until \
         they expire and a later run resumes them. Two processes must never share a name (the \
         sled store lets only one process open it at a time anyway).\n\
         --admin ADDR (a plain run, `resume` and `worker`) serves the operator API, dashboard          and the `saga` CLI's endpoints at http://ADDR while it runs, for the bearer token in          $SAGA_TOKEN (every environment).\n\
         DIR defaults to ./quickstart-data; --site NAME to demo; --count to 1; --owner NAME to \
         {DEFAULT_OWNER} on the sled store and to HOST:PID (unique to the process) on \
         PostgreSQL; MS of --warm-ms to 1200; --actor to $USER.\n\
         Steps, in order: {}",
        STEPS.join(", ")
    )
}

/// Parses the arguments; `None` means help was asked for.
pub(crate) fn parse(args: impl Iterator<Item = String>) -> Result<Option<Command>, String> {
    let mut data = PathBuf::from("quickstart-data");
    let mut owner = None;
    let mut url = None;
    let mut schema = None;
    let mut lease_ttl_ms = 30_000;
    let mut admin = None;
    let mut run = RunArgs {
        store: StoreArgs {
            data: PathBuf::new(),
            kind: StoreKind::Sled,
            owner: String::new(),
            lease_ttl_ms: 0,
            admin: None,
        },
        site: "demo".into(),
        count: 1,
        fail_at: None,
        panic_at: None,
        crash_at: None,
        cancel_after: None,
        warm_ms: 1200,
    };
    let mut since = None;
    let mut until = None;
    let mut dry_run = false;
    let mut until_idle = false;
    let mut actor = None;
    let mut reason = None;
    let mut positional = Vec::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--data" => data = PathBuf::from(value("--data")?),
            "--owner" => owner = Some(value("--owner")?),
            "--store" => url = Some(store_url(value("--store")?)?),
            "--schema" => schema = Some(schema_name(value("--schema")?)?),
            "--lease-ttl" => {
                lease_ttl_ms = number("--lease-ttl", &value("--lease-ttl")?)?;
                if lease_ttl_ms < 100 {
                    return Err(format!(
                        "--lease-ttl {lease_ttl_ms} is too short (at least 100 ms)"
                    ));
                }
            }
            "--admin" => {
                let text = value("--admin")?;
                admin = Some(text.parse().map_err(|_| {
                    format!(
                        "--admin takes an address and port such as 127.0.0.1:8080, not {text:?}"
                    )
                })?);
            }
            "--site" => run.site = value("--site")?,
            "--count" => {
                let text = value("--count")?;
                run.count = match text.parse() {
                    Ok(n) if n >= 1 => n,
                    _ => return Err(format!("--count takes a whole number from 1, not {text:?}")),
                }
            }
            "--fail-at" => run.fail_at = Some(step(value("--fail-at")?)?),
            "--panic-at" => run.panic_at = Some(step(value("--panic-at")?)?),
            "--crash-at" => run.crash_at = Some(step(value("--crash-at")?)?),
            "--cancel-after" => {
                run.cancel_after = Some(number("--cancel-after", &value("--cancel-after")?)?)
            }
            "--warm-ms" => run.warm_ms = number("--warm-ms", &value("--warm-ms")?)?,
            "--since" => since = Some(time("--since", &value("--since")?)?),
            "--until" => until = Some(time("--until", &value("--until")?)?),
            "--dry-run" => dry_run = true,
            "--until-idle" => until_idle = true,
            "--actor" => actor = Some(value("--actor")?),
            "--reason" => reason = Some(value("--reason")?),
            flag if flag.starts_with('-') => {
                return Err(format!("unknown flag {flag}\n{}", usage()))
            }
            _ => positional.push(arg),
        }
    }
    let kind = match (url, schema) {
        (Some(url), schema) => StoreKind::Postgres { url, schema },
        (None, Some(schema)) => {
            return Err(format!(
                "--schema {schema} needs --store postgres://... (the sled store has no schemas)"
            ))
        }
        (None, None) => StoreKind::Sled,
    };
    let owner = match owner {
        Some(owner) => owner,
        None if kind == StoreKind::Sled => DEFAULT_OWNER.into(),
        None => unique_owner(),
    };
    if owner.is_empty() || owner.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!("--owner {owner:?} is not a name (empty, or has spaces)"));
    }
    let store = StoreArgs { data, kind, owner, lease_ttl_ms, admin };
    let words: Vec<&str> = positional.iter().map(String::as_str).collect();
    Ok(Some(match words.as_slice() {
        [] | ["submit"] => {
            if run.site.is_empty() || run.site.contains(['/', '\\']) || run.site.starts_with('.') {
                return Err(format!("--site {:?} is not a plain name", run.site));
            }
            run.store = store;
            if words.is_empty() {
                Command::Run(run)
            } else {
                if run.cancel_after.is_some() {
                    return Err("submit: --cancel-after needs a run (use `cancel ID`)".into());
                }
                Command::Submit(run)
            }
        }
        ["worker"] => Command::Worker { store, until_idle },
        ["resume"] => Command::Resume { store },
        ["cancel", id] => Command::Cancel {
            store,
            id: id.parse().map_err(|e| format!("cancel: {e}"))?,
            actor,
            reason: reason.unwrap_or_else(|| "quickstart cancel".into()),
        },
        ["log", id] => Command::Log { store, id: id.parse().map_err(|e| format!("log: {e}"))? },
        ["report"] => Command::Report {
            store,
            since_ms: since.unwrap_or(0),
            until_ms: until.unwrap_or(u64::MAX),
        },
        ["check"] => Command::Check { store, dry_run },
        _ => return Err(format!("unexpected arguments {positional:?}\n{}", usage())),
    }))
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

fn store_url(url: String) -> Result<String, String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(url)
    } else {
        Err(format!(
            "--store takes a postgres:// URL, not {url:?} (without --store, the sled store in \
             DIR/store)"
        ))
    }
}

fn schema_name(name: String) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(name)
    } else {
        Err(format!(
            "--schema {name:?} is not a lowercase identifier (a-z, 0-9, _, not starting with a \
             digit, at most 63 bytes)"
        ))
    }
}

fn step(name: String) -> Result<String, String> {
    if STEPS.contains(&name.as_str()) {
        Ok(name)
    } else {
        Err(format!("unknown step {name:?}; the steps are {}", STEPS.join(", ")))
    }
}

fn number(flag: &str, text: &str) -> Result<u64, String> {
    text.parse().map_err(|_| format!("{flag} takes a whole number of milliseconds, not {text:?}"))
}

fn time(flag: &str, text: &str) -> Result<u64, String> {
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{flag} takes an RFC 3339 time such as 2026-11-27T00:00:00Z: {e}"))?;
    u64::try_from(parsed.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| format!("{flag}: {text} is before 1970"))
}
