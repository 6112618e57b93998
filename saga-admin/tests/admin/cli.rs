//! The `saga` binary as a user runs it, in a second process, against a real server.

use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

use crate::support::{server, Params, ADMIN, STAGING};

/// Runs `saga ARGS` against `url` with `token` (from the environment, as a user sets them).
async fn saga(url: &str, token: &str, args: &[&str]) -> Output {
    let run = Command::new(env!("CARGO_BIN_EXE_saga"))
        .args(args)
        .env("SAGA_URL", url)
        .env("SAGA_TOKEN", token)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("saga in time")
        .expect("saga runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_ops_and_show() {
    let s = server().await;
    let ok = s.finished("deploy", "staging", "web", Params::default()).await;
    let bad = s.finished("migrate", "staging", "db", Params::default()).await;
    let out = saga(&s.url, STAGING, &["ops", "--env", "staging"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("STATUS"), "{text}");
    assert!(
        lines[1].starts_with(&bad.to_string()) && lines[1].contains("rollback incomplete"),
        "{text}"
    );
    assert!(lines[1].contains("app/db") && lines[1].contains("verify"), "{text}");
    assert!(lines[2].starts_with(&ok.to_string()) && lines[2].contains("succeeded"), "{text}");
    let out = saga(&s.url, STAGING, &["ops", "--env", "staging", "--status", "succeeded"]).await;
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));
    let out = saga(&s.url, STAGING, &["ops", "--env", "staging", "--limit", "1"]).await;
    assert!(stderr(&out).contains(&format!("--cursor {bad}")), "{}", stderr(&out));
    // A bad filter: the server's reason, and where.
    let out = saga(&s.url, STAGING, &["ops", "--env", "staging", "--status", "done"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.starts_with("saga: 400: unknown status \"done\""), "{err}");
    assert!(err.contains("(parameter status)") && err.contains(&s.url), "{err}");

    let out = saga(&s.url, STAGING, &["show", &bad.to_string()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with(&format!("operation {bad}: rollback incomplete")), "{text}");
    assert!(text.contains("not undone   migrate (irreversible)"), "{text}");
    assert!(text.contains("verify: failed") && text.contains("schema check failed"), "{text}");
    let out = saga(&s.url, STAGING, &["show", &bad.to_string(), "--json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["status"], "rollback_incomplete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_logs_follow_ends_at_the_outcome() {
    let s = server().await;
    let id = s.blocked("staging", "web").await;
    let mut follower = Command::new(env!("CARGO_BIN_EXE_saga"))
        .args(["logs", &id.to_string(), "--follow"])
        .env("SAGA_URL", &s.url)
        .env("SAGA_TOKEN", ADMIN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("saga runs");
    let mut lines = BufReader::new(follower.stdout.take().expect("stdout")).lines();
    let mut text = String::new();
    // The history comes first, up to the line of the step that waits for the cancel...
    let waiting = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("saga's output") {
            text.push_str(&line);
            text.push('\n');
            if line.contains("waiting until cancelled") {
                return true;
            }
        }
        false
    })
    .await
    .expect("the history in time");
    assert!(waiting, "the history ends with the waiting step: {text}");
    // ...and --follow waits: the end it stops at comes only after the cancel below, and the
    // lines checked after it are written by the rollback the cancel starts.
    assert!(follower.try_wait().expect("saga's status").is_none(), "--follow exited: {text}");
    s.executor.cancel(id, "bob", "follow test").await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("saga's output") {
            text.push_str(&line);
            text.push('\n');
        }
    })
    .await
    .expect("saga ends in time");
    let out = tokio::time::timeout(Duration::from_secs(10), follower.wait_with_output())
        .await
        .expect("saga exits in time")
        .expect("saga's status");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("waiting until cancelled"), "{text}");
    assert!(text.contains("rolling the rollout back"), "{text}");
    assert_eq!(
        text.lines().last(),
        Some(format!("operation {id}: rolled back (cancelled by bob: follow test)").as_str()),
        "{text}"
    );
    // Without --follow: the stored log, as the download has it.
    let out = saga(&s.url, ADMIN, &["logs", &id.to_string()]).await;
    assert_eq!(stdout(&out), saga_core::log::render_log(&s.executor.log(id).await.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_cancel_exits_zero_once_rolled_back_and_non_zero_when_finished() {
    let s = server().await;
    let id = s.blocked("staging", "web").await;
    let out = saga(
        &s.url,
        ADMIN,
        &["cancel", &id.to_string(), "--reason", "bad build", "--actor", "dana"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("cancel of operation {id} recorded (by dana: bad build)"))
    );
    let text = stdout(&out);
    assert!(text.contains("rolling the rollout back"), "it follows the rollback: {text}");
    assert_eq!(
        text.lines().last(),
        Some(format!("operation {id}: rolled back (cancelled by dana: bad build)").as_str())
    );
    assert_eq!(
        s.executor.status(id).await.unwrap().cancel(),
        Some(saga_core::state::CancelledBy { actor: "dana", reason: "bad build" })
    );

    // Already finished: refused, non-zero, and says why.
    let done = s.finished("deploy", "staging", "api", Params::default()).await;
    let out = saga(&s.url, ADMIN, &["cancel", &done.to_string(), "--reason", "late"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.starts_with("saga: 409: operation") && err.contains("already finished: succeeded"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_report_parses_as_csv() {
    let s = server().await;
    let ok = s.finished("deploy", "staging", "web", Params::default()).await;
    let bad = s.finished("deploy", "staging", "api", Params { fail: true, block: false }).await;
    let out = saga(
        &s.url,
        STAGING,
        &[
            "report",
            "--env",
            "staging",
            "--since",
            "2000-01-01T00:00:00Z",
            "--until",
            "2100-01-01T00:00:00Z",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let mut reader = csv::Reader::from_reader(out.stdout.as_slice());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        saga_core::report::ACTIVITY_COLUMNS
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!((&rows[0][0], &rows[0][2]), (ok.to_string().as_str(), "succeeded"));
    assert_eq!(
        (&rows[1][0], &rows[1][2], &rows[1][9]),
        (bad.to_string().as_str(), "rolled back", "rollout")
    );
    // The current week, without a period.
    let out = saga(&s.url, STAGING, &["report", "--env", "staging"]).await;
    assert_eq!(csv::Reader::from_reader(out.stdout.as_slice()).records().count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_errors_say_what_and_where() {
    let s = server().await;
    let out = saga(&s.url, "wrong-token", &["ops", "--env", "staging"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.starts_with("saga: 401: the token was refused (from http://127.0.0.1:"), "{err}");

    // A port nobody listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let url = format!("http://{closed}");
    let out = saga(&url, ADMIN, &["show", &saga_core::OperationId::new().to_string()]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.starts_with(&format!("saga: cannot reach {url}/api/v1/operations/")), "{err}");
    assert!(err.trim_end().ends_with("connection refused"), "{err}");

    let out = saga("", ADMIN, &["ops", "--env", "x"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no server: give --url URL or set SAGA_URL"), "{}", stderr(&out));
    let out = saga(&s.url, ADMIN, &["show", "not-an-id"]).await;
    assert!(stderr(&out).contains("400: \"not-an-id\" is not an operation id"), "{}", stderr(&out));
    let missing = saga_core::OperationId::new();
    let out = saga(&s.url, ADMIN, &["show", &missing.to_string()]).await;
    assert!(
        stderr(&out).contains(&format!("404: operation {missing} not found")),
        "{}",
        stderr(&out)
    );
}
