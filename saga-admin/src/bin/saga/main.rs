//! `saga`: the command-line client of the saga-admin HTTP API.
//!
//! ```text
//! saga [--url URL] [--token TOKEN] ops --env E [--status S]... [--resource R] [--since T] [--until T] [--limit N] [--cursor C] [--json]
//! saga show ID [--json]
//! saga logs ID [--follow]
//! saga cancel ID --reason R [--actor A] [--no-follow]
//! saga report --env E [--since T --until T] > activity.csv
//! ```
//!
//! The URL and token come from `--url` and `--token`, or `SAGA_URL` and `SAGA_TOKEN`. Times are
//! RFC 3339 (`2025-01-31T00:00:00Z`).
//!
//! Exit status: 0 on success; 1 when `cancel` followed the rollback to a verdict other than
//! rolled back (rollback incomplete, say); 2 on an error (a bad flag, an unreachable server,
//! an error answer such as a refused token or an Operation that already finished), with one
//! line on standard error saying what and where.

mod client;
mod follow;

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reqwest::Method;
use saga_admin::api::{
    CancelAccepted, CancelBody, OperationDetail, OperationPage, Status, StepStatus,
};

use crate::client::{CliError, Client};

/// The command-line client of a saga-admin server.
#[derive(Debug, Parser)]
#[command(name = "saga", version, about)]
struct Cli {
    /// The server's base URL (where the saga-admin router is mounted).
    #[arg(long, env = "SAGA_URL", global = true)]
    url: Option<String>,
    /// The bearer token.
    #[arg(long, env = "SAGA_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lists the Operations of an environment, newest first.
    Ops {
        /// The environment.
        #[arg(long)]
        env: String,
        /// Only Operations of this status (running, rolling_back, needs_attention, succeeded,
        /// rolled_back, rollback_incomplete, abandoned, damaged); repeatable.
        #[arg(long)]
        status: Vec<String>,
        /// Only Operations on a resource of this name.
        #[arg(long)]
        resource: Option<String>,
        /// Only Operations created at or after this time.
        #[arg(long)]
        since: Option<String>,
        /// Only Operations created before this time.
        #[arg(long)]
        until: Option<String>,
        /// At most this many (1 to 500; the server's default is 50).
        #[arg(long)]
        limit: Option<u32>,
        /// The page after this cursor (printed at the end of a full page).
        #[arg(long)]
        cursor: Option<String>,
        /// Prints the server's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shows one Operation: its status, step timeline and outcome.
    Show {
        /// The Operation's id.
        id: String,
        /// Prints the server's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prints an Operation's log.
    Logs {
        /// The Operation's id.
        id: String,
        /// Follows the log live until the Operation's outcome.
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancels an Operation, then follows its rollback to the verdict.
    Cancel {
        /// The Operation's id.
        id: String,
        /// Why (recorded with the cancel).
        #[arg(long)]
        reason: String,
        /// Who cancels (the token's principal when not given).
        #[arg(long)]
        actor: Option<String>,
        /// Returns once the cancel is recorded, without following the rollback.
        #[arg(long)]
        no_follow: bool,
    },
    /// Writes the activity report of an environment as CSV to standard output.
    Report {
        /// The environment.
        #[arg(long)]
        env: String,
        /// The period's start (with --until; neither: the current week).
        #[arg(long, requires = "until")]
        since: Option<String>,
        /// The period's end, excluded.
        #[arg(long, requires = "since")]
        until: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("saga: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("saga: {e}");
            ExitCode::from(2)
        }
    }
}

fn out(text: impl AsRef<[u8]>) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_ref()).and_then(|()| stdout.flush()).map_err(CliError::Output)
}

async fn run(cli: Cli) -> Result<bool, CliError> {
    let client = Client::new(cli.url, cli.token)?;
    match cli.command {
        Command::Ops { env, status, resource, since, until, limit, cursor, json } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            for s in status {
                query.push(("status", s));
            }
            let optional =
                [("resource", resource), ("since", since), ("until", until), ("cursor", cursor)];
            for (key, value) in optional {
                if let Some(value) = value {
                    query.push((key, value));
                }
            }
            if let Some(limit) = limit {
                query.push(("limit", limit.to_string()));
            }
            let url = client.url(&["api", "v1", "environments", &env, "operations"], &query);
            if json {
                let body = client.get_bytes(&url).await?;
                out(body)?;
                out("\n")?;
                return Ok(true);
            }
            let page: OperationPage = client.get_json(&url).await?;
            out(ops_table(&page))?;
            if let Some(cursor) = page.next_cursor {
                eprintln!("saga: more operations: saga ops --env {env} --cursor {cursor}");
            }
            Ok(true)
        }
        Command::Show { id, json } => {
            let url = client.url(&["api", "v1", "operations", &id], &[]);
            if json {
                out(client.get_bytes(&url).await?)?;
                out("\n")?;
                return Ok(true);
            }
            let detail: OperationDetail = client.get_json(&url).await?;
            out(show(&detail))?;
            Ok(true)
        }
        Command::Logs { id, follow } => {
            if follow {
                let end = follow::follow(&client, &id).await?;
                out(format!("operation {id}: {}\n", verdict(&end)))?;
            } else {
                let url = client.url(&["api", "v1", "operations", &id, "log"], &[]);
                out(client.get_bytes(&url).await?)?;
            }
            Ok(true)
        }
        Command::Cancel { id, reason, actor, no_follow } => {
            let url = client.url(&["api", "v1", "operations", &id, "cancel"], &[]);
            let body = CancelBody { actor, reason };
            let request = client.request(Method::POST, &url).json(&body);
            let response = client.send(&url, request).await?;
            let accepted: CancelAccepted = response.json().await.map_err(|e| CliError::Answer {
                url: url.to_string(),
                cause: client::root_cause(&e),
            })?;
            match (accepted.answer.as_str(), &accepted.pending) {
                ("requested", Some(pending)) if pending.actor != accepted.actor => eprintln!(
                    "saga: operation {}: a cancel by {} ({}) is pending already; the executor \
                     running it answers it",
                    accepted.operation, pending.actor, pending.reason
                ),
                ("requested", _) => eprintln!(
                    "saga: cancel of operation {} requested (by {}: {}); the executor running \
                     it rolls it back, or records why it refused",
                    accepted.operation, accepted.actor, accepted.reason
                ),
                (answer, _) => eprintln!(
                    "saga: cancel of operation {} recorded (by {}: {}): {answer}",
                    accepted.operation, accepted.actor, accepted.reason
                ),
            }
            if no_follow {
                return Ok(true);
            }
            let end = follow::follow(&client, &id).await?;
            out(format!("operation {id}: {}\n", verdict(&end)))?;
            let rolled_back = end.outcome.as_ref().is_some_and(|o| o.status == Status::RolledBack);
            if !rolled_back {
                eprintln!("saga: operation {id} did not roll back: {}", verdict(&end));
            }
            Ok(rolled_back)
        }
        Command::Report { env, since, until } => {
            let mut query = Vec::new();
            if let (Some(since), Some(until)) = (since, until) {
                query.push(("since", since));
                query.push(("until", until));
            }
            let url = client.url(&["api", "v1", "environments", &env, "report.csv"], &query);
            out(client.get_bytes(&url).await?)?;
            Ok(true)
        }
    }
}

fn verdict(end: &saga_admin::api::EndEvent) -> String {
    match (&end.outcome, &end.problem) {
        (Some(outcome), _) => outcome.text.clone(),
        (None, Some(problem)) => format!("{} ({problem})", end.status),
        (None, None) => end.status.to_string(),
    }
}

/// `2025-01-31T12:00:00.123Z` as `2025-01-31 12:00:00`.
fn short(time: &str) -> String {
    time.get(..19).map(|t| t.replace('T', " ")).unwrap_or_else(|| time.to_owned())
}

fn ops_table(page: &OperationPage) -> String {
    let header =
        ["ID", "STATUS", "SAGA", "RESOURCE", "ACTOR", "CREATED", "FINISHED", "FAILED STEP"];
    let rows: Vec<[String; 8]> = page
        .operations
        .iter()
        .map(|op| {
            [
                if op.id.is_empty() { "-".to_owned() } else { op.id.clone() },
                op.status.to_string(),
                op.saga.clone(),
                format!("{}/{}", op.resource_type, op.resource),
                op.actor.clone(),
                short(&op.created_at),
                op.finished_at.as_deref().map(short).unwrap_or_else(|| "-".to_owned()),
                op.failed_step.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: &[String]| {
        let mut parts = Vec::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                parts.push(cell.clone());
            } else {
                parts.push(format!("{cell:<width$}", width = widths[i]));
            }
        }
        text.push_str(parts.join("  ").trim_end());
        text.push('\n');
    };
    line(&header.map(str::to_owned));
    for row in &rows {
        line(row);
    }
    if rows.is_empty() {
        text.push_str("(no operations)\n");
    }
    text
}

fn show(op: &OperationDetail) -> String {
    let mut text = format!("operation {}: {}\n", op.id, op.status);
    let mut fact = |name: &str, value: &str| text.push_str(&format!("  {name:<12} {value}\n"));
    fact("saga", &format!("{} v{}", op.saga, op.version));
    fact("resource", &format!("{}/{}", op.resource_type, op.resource));
    fact("environment", &op.environment);
    fact("actor", &op.actor);
    fact("created", &short(&op.created_at));
    if let Some(finished) = &op.finished_at {
        fact("finished", &short(finished));
    }
    if let Some(cancel) = &op.cancel {
        fact("cancelled", &format!("by {}: {}", cancel.actor, cancel.reason));
    }
    if let Some(pending) = &op.cancel_pending {
        fact("cancel pending", &format!("by {}: {}", pending.actor, pending.reason));
    }
    for refused in &op.cancels_refused {
        fact(
            "cancel refused",
            &format!("by {}: {} ({})", refused.actor, refused.reason, refused.refusal),
        );
    }
    if let Some(failure) = &op.failure {
        fact("failed step", &format!("{}: {}", failure.step, failure.error));
    }
    if let Some(attention) = &op.attention {
        fact("attention", &format!("{}: {}", attention.step, attention.error));
    }
    if let Some(outcome) = &op.outcome {
        fact("outcome", &outcome.text);
    }
    for item in &op.not_undone {
        fact("not undone", &format!("{} ({})", item.step, item.reason));
    }
    if let Some(waiting) = &op.waiting_for {
        fact("waiting for", waiting);
    }
    if let Some(problem) = &op.problem {
        fact("problem", problem);
    }
    text.push_str("steps:\n");
    if op.steps.is_empty() {
        text.push_str("  (none started)\n");
    }
    for step in &op.steps {
        let status = match step.status {
            StepStatus::Running => "running",
            StepStatus::Retrying => "retrying",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
        };
        let compensation = serde_json::to_value(step.compensation.status)
            .ok()
            .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
            .unwrap_or_default();
        text.push_str(&format!("  {}: {status}; compensation {compensation}\n", step.name));
        for a in &step.attempts {
            text.push_str(&format!("    attempt {} at {}", a.attempt, short(&a.started_at)));
            if let Some(ms) = a.duration_ms {
                text.push_str(&format!(", {ms} ms"));
            }
            if let Some(error) = &a.error {
                text.push_str(&format!(": {error}"));
            }
            text.push('\n');
        }
        for a in &step.compensation.attempts {
            text.push_str(&format!("    compensation {} at {}", a.attempt, short(&a.started_at)));
            if let Some(error) = &a.error {
                text.push_str(&format!(": {error}"));
            }
            text.push('\n');
        }
        if let Some(reason) = &step.not_undone {
            text.push_str(&format!("    not undone: {reason}\n"));
        }
    }
    text
}
