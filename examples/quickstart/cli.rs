//! The quickstart's command line, parsed by hand to need no dependency.

use std::path::PathBuf;

use saga_core::OperationId;

use crate::steps::STEPS;

/// The executor's name when `--owner` is not given.
pub(crate) const DEFAULT_OWNER: &str = "quickstart";

/// What to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// Recover, then run one new Operation.
    Run(RunArgs),
    /// Only recover and finish what is unfinished.
    Resume { store: StoreArgs },
    /// Print one Operation's stored log.
    Log { store: StoreArgs, id: OperationId },
    /// Print the activity report as CSV.
    Report { store: StoreArgs, since_ms: u64, until_ms: u64 },
    /// Reconcile the store's indexes with its records, repairing unless `dry_run`.
    Check { store: StoreArgs, dry_run: bool },
}

/// The flags every command takes: where the store is, and the name of the executor over it.
#[derive(Debug)]
pub(crate) struct StoreArgs {
    /// `--data DIR`.
    pub(crate) data: PathBuf,
    /// `--owner NAME`: the executor's name in the leases it holds and in the log.
    pub(crate) owner: String,
}

/// The flags of a run.
#[derive(Debug)]
pub(crate) struct RunArgs {
    pub(crate) store: StoreArgs,
    pub(crate) site: String,
    pub(crate) fail_at: Option<String>,
    pub(crate) panic_at: Option<String>,
    pub(crate) crash_at: Option<String>,
    pub(crate) cancel_after: Option<u64>,
    pub(crate) warm_ms: u64,
}

/// The help text.
pub(crate) fn usage() -> String {
    format!(
        "usage: quickstart [--data DIR] [--owner NAME] [--site NAME] [--fail-at STEP] \
         [--panic-at STEP] [--crash-at STEP] [--cancel-after MS] [--warm-ms MS]\n       \
         quickstart [--data DIR] [--owner NAME] resume\n       \
         quickstart [--data DIR] [--owner NAME] log ID\n       \
         quickstart [--data DIR] [--owner NAME] report [--since RFC3339] [--until RFC3339]\n       \
         quickstart [--data DIR] [--owner NAME] check [--dry-run]\n\n\
         --fail-at makes STEP fail, --panic-at makes it panic, --crash-at aborts the process after \
         its effect.\ncheck repairs the store's indexes (--dry-run: only reports); `resume` then \
         resumes what it listed again.\n--owner names this process's executor, which holds a \
         lease on each Operation it runs: a quickstart started again under the same name \
         reclaims them at once; under another name it leaves them until they expire (30 s) and a \
         later run resumes them. Two processes must never share a name (the sled store lets only \
         one process open it at a time anyway).\nDIR defaults to ./quickstart-data; --site NAME \
         to demo; --owner NAME to {DEFAULT_OWNER}; MS of --warm-ms to 1200.\n\
         Steps, in order: {}",
        STEPS.join(", ")
    )
}

/// Parses the arguments; `None` means help was asked for.
pub(crate) fn parse(args: impl Iterator<Item = String>) -> Result<Option<Command>, String> {
    let mut store =
        StoreArgs { data: PathBuf::from("quickstart-data"), owner: DEFAULT_OWNER.into() };
    let mut run = RunArgs {
        store: StoreArgs { data: PathBuf::new(), owner: String::new() },
        site: "demo".into(),
        fail_at: None,
        panic_at: None,
        crash_at: None,
        cancel_after: None,
        warm_ms: 1200,
    };
    let mut since = None;
    let mut until = None;
    let mut dry_run = false;
    let mut positional = Vec::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--data" => store.data = PathBuf::from(value("--data")?),
            "--owner" => store.owner = value("--owner")?,
            "--site" => run.site = value("--site")?,
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
            flag if flag.starts_with('-') => {
                return Err(format!("unknown flag {flag}\n{}", usage()))
            }
            _ => positional.push(arg),
        }
    }
    if store.owner.is_empty() || store.owner.contains(|c: char| c.is_whitespace() || c.is_control())
    {
        return Err(format!("--owner {:?} is not a name (empty, or has spaces)", store.owner));
    }
    let words: Vec<&str> = positional.iter().map(String::as_str).collect();
    Ok(Some(match words.as_slice() {
        [] => {
            if run.site.is_empty() || run.site.contains(['/', '\\']) || run.site.starts_with('.') {
                return Err(format!("--site {:?} is not a plain name", run.site));
            }
            run.store = store;
            Command::Run(run)
        }
        ["resume"] => Command::Resume { store },
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
