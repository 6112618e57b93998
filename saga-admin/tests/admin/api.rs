//! The JSON API, the downloads and the log stream, over a real server.

use std::time::Duration;

use eventsource_stream::Eventsource as _;
use futures::StreamExt as _;
use serde_json::{json, Value};

use crate::support::{http, json, server, Params, ADMIN, STAGING, VIEWER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_operations_with_filters_and_paging() {
    let s = server().await;
    let ok = s.finished("deploy", "staging", "web", Params::default()).await;
    let failed = s.finished("deploy", "staging", "api", Params { fail: true, block: false }).await;
    let running = s.blocked("staging", "worker").await;
    let other = s.finished("deploy", "prod", "web", Params::default()).await;

    let (status, page) =
        json(s.get("/api/v1/environments/staging/operations", Some(ADMIN)).await).await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&str> =
        page["operations"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap()).collect();
    // Newest first, and only this environment's.
    assert_eq!(ids, [running.to_string(), failed.to_string(), ok.to_string()]);
    assert!(!ids.contains(&other.to_string().as_str()));
    let first = &page["operations"][1];
    assert_eq!(first["status"], "rolled_back");
    assert_eq!(first["saga"], "deploy");
    assert_eq!(first["resource"], "api");
    assert_eq!(first["resource_type"], "app");
    assert_eq!(first["actor"], "alice");
    assert_eq!(first["failed_step"], "rollout");
    assert!(first["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(first["finished_at"].is_string());
    assert_eq!(page["operations"][0]["status"], "running");
    assert!(page["operations"][0]["finished_at"].is_null());
    assert!(page["next_cursor"].is_null());

    // Filters.
    let (_, page) =
        json(s.get("/api/v1/environments/staging/operations?status=running", Some(ADMIN)).await)
            .await;
    assert_eq!(page["operations"].as_array().unwrap().len(), 1);
    assert_eq!(page["operations"][0]["id"], running.to_string());
    let (_, page) = json(
        s.get(
            "/api/v1/environments/staging/operations?status=succeeded,rolled%20back",
            Some(ADMIN),
        )
        .await,
    )
    .await;
    assert_eq!(page["operations"].as_array().unwrap().len(), 2);
    let (_, page) =
        json(s.get("/api/v1/environments/staging/operations?resource=web", Some(ADMIN)).await)
            .await;
    assert_eq!(page["operations"].as_array().unwrap().len(), 1);
    assert_eq!(page["operations"][0]["id"], ok.to_string());
    let (_, page) = json(
        s.get("/api/v1/environments/staging/operations?since=2000-01-01T00:00:00Z&until=2001-01-01T00:00:00Z", Some(ADMIN))
            .await,
    )
    .await;
    assert_eq!(page["operations"].as_array().unwrap().len(), 0);
    let (_, page) = json(
        s.get(
            "/api/v1/environments/staging/operations?since=2000-01-01T00:00:00%2B02:00",
            Some(ADMIN),
        )
        .await,
    )
    .await;
    assert_eq!(page["operations"].as_array().unwrap().len(), 3);

    // Paging: two pages of two and one, following the cursor.
    let (_, one) =
        json(s.get("/api/v1/environments/staging/operations?limit=2", Some(ADMIN)).await).await;
    assert_eq!(one["operations"].as_array().unwrap().len(), 2);
    let cursor = one["next_cursor"].as_str().expect("a cursor").to_owned();
    assert_eq!(cursor, failed.to_string());
    let (_, two) = json(
        s.get(
            &format!("/api/v1/environments/staging/operations?limit=2&cursor={cursor}"),
            Some(ADMIN),
        )
        .await,
    )
    .await;
    assert_eq!(two["operations"].as_array().unwrap().len(), 1);
    assert_eq!(two["operations"][0]["id"], ok.to_string());
    assert!(two["next_cursor"].is_null());

    s.executor.cancel(running, "test", "cleanup").await.unwrap();
    s.executor.wait(running).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shows_the_timeline_outcome_and_what_was_not_undone() {
    let s = server().await;
    let id = s.finished("migrate", "staging", "db", Params::default()).await;
    let (status, op) = json(s.get(&format!("/api/v1/operations/{id}"), Some(STAGING)).await).await;
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["id"], id.to_string());
    assert_eq!(op["status"], "rollback_incomplete");
    assert_eq!(op["saga"], "migrate");
    assert_eq!(op["version"], 1);
    assert_eq!(op["failure"], json!({"step": "verify", "error": "schema check failed"}));
    assert_eq!(op["outcome"]["status"], "rollback_incomplete");
    assert!(op["outcome"]["text"].as_str().unwrap().contains("migrate (irreversible)"), "{op}");
    assert_eq!(
        op["not_undone"],
        json!([{"step": "migrate", "irreversible": true, "reason": "irreversible"}])
    );
    let steps = op["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0]["name"], "migrate");
    assert_eq!(steps[0]["status"], "succeeded");
    assert_eq!(steps[0]["not_undone"], "irreversible");
    assert_eq!(steps[0]["compensation"]["status"], "not_started");
    assert_eq!(steps[1]["name"], "verify");
    assert_eq!(steps[1]["status"], "failed");
    let attempt = &steps[1]["attempts"][0];
    assert_eq!(attempt["attempt"], 1);
    assert_eq!(attempt["result"], "failed");
    assert_eq!(attempt["error"], "schema check failed");
    assert!(attempt["started_at"].is_string() && attempt["ended_at"].is_string());
    assert!(attempt["duration_ms"].is_u64());
    assert_eq!(op["running_here"], false);

    // A cancelled one: the compensations, the cancel and its verdict.
    let blocked = s.blocked("staging", "web").await;
    let (status, running) =
        json(s.get(&format!("/api/v1/operations/{blocked}"), Some(STAGING)).await).await;
    assert_eq!(status, 200);
    assert_eq!(running["status"], "running");
    assert_eq!(running["running_here"], true);
    assert_eq!(running["steps"][1]["attempts"][0]["result"], "running");
    s.executor.cancel(blocked, "bob", "wrong build").await.unwrap();
    s.executor.wait(blocked).await.unwrap();
    let (_, done) =
        json(s.get(&format!("/api/v1/operations/{blocked}"), Some(STAGING)).await).await;
    assert_eq!(done["status"], "rolled_back");
    assert_eq!(done["cancel"]["actor"], "bob");
    assert_eq!(done["cancel"]["reason"], "wrong build");
    assert!(done["cancel"]["at"].is_string());
    assert_eq!(done["outcome"]["text"], "rolled back (cancelled by bob: wrong build)");
    for step in done["steps"].as_array().unwrap() {
        assert_eq!(step["compensation"]["status"], "succeeded", "{step}");
        assert_eq!(step["compensation"]["attempts"][0]["result"], "succeeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_downloads_and_streams_live_to_the_outcome() {
    let s = server().await;
    let done = s.finished("deploy", "staging", "web", Params::default()).await;
    let response = s.get(&format!("/api/v1/operations/{done}/log"), Some(ADMIN)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        response.headers()["content-disposition"],
        format!("attachment; filename=\"operation-{done}.log\"").as_str()
    );
    let text = response.text().await.unwrap();
    assert!(text.contains("preparing web"), "{text}");
    assert!(text.trim_end().ends_with("operation succeeded"), "{text}");
    assert_eq!(text, saga_core::log::render_log(&s.executor.log(done).await.unwrap()));

    // Live: history first, then new lines, then the end event with the outcome.
    let id = s.blocked("staging", "api").await;
    let response = http()
        .get(format!("{}/api/v1/operations/{id}/log/stream", s.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut stream = response.bytes_stream().eventsource();
    let mut events: Vec<(String, Value)> = Vec::new();
    let mut cancelled = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while events.last().is_none_or(|(kind, _)| kind != "end") {
        let event = tokio::time::timeout_at(deadline, stream.next()).await.expect("stream in time");
        let Some(event) = event else { break };
        let event = event.expect("an SSE event");
        let data: Value = serde_json::from_str(&event.data).expect("JSON data");
        if !cancelled
            && data["text"].as_str().is_some_and(|t| t.contains("waiting until cancelled"))
        {
            // History is in; everything after this is live.
            cancelled = true;
            s.executor.cancel(id, "bob", "live test").await.unwrap();
        }
        events.push((event.event, data));
    }
    let lines: Vec<&Value> = events.iter().filter(|(e, _)| e == "line").map(|(_, d)| d).collect();
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, no repeats: {seqs:?}");
    assert_eq!(seqs.first(), Some(&0));
    assert!(lines.iter().any(|l| l["text"].as_str().unwrap().contains("rolling the rollout back")));
    let last_line = lines.last().unwrap()["message"].as_str().unwrap().to_owned();
    assert!(last_line.starts_with("rollback succeeded"), "the outcome line is last: {last_line}");
    let (kind, end) = events.last().unwrap();
    assert_eq!(kind, "end");
    assert_eq!(end["status"], "rolled_back");
    assert_eq!(end["outcome"]["status"], "rolled_back");
    assert_eq!(end["outcome"]["text"], "rolled back (cancelled by bob: live test)");

    // A finished Operation's stream: its history, then the end at once.
    let response = http()
        .get(format!("{}/api/v1/operations/{done}/log/stream", s.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let events = sse_events(response).await;
    assert_eq!(events.last().unwrap().1["outcome"]["status"], "succeeded");
    // Resuming after a line: only the lines after it.
    let response = http()
        .get(format!("{}/api/v1/operations/{done}/log/stream", s.url))
        .bearer_auth(ADMIN)
        .header("Last-Event-ID", "1")
        .send()
        .await
        .unwrap();
    let first = sse_events(response).await.into_iter().find(|(e, _)| e == "line").unwrap();
    assert_eq!(first.1["seq"], 2);
}

/// `(event, data)` of each event of a stream, read to its end (which must come within 10 s).
async fn sse_events(response: reqwest::Response) -> Vec<(String, Value)> {
    let events = response.bytes_stream().eventsource().map(|event| {
        let event = event.expect("an SSE event");
        let data = serde_json::from_str(&event.data).expect("JSON data");
        (event.event, data)
    });
    tokio::time::timeout(Duration::from_secs(10), events.collect()).await.expect("the stream ends")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_answers_once_durable_and_refuses_a_finished_operation() {
    let s = server().await;
    let id = s.blocked("staging", "web").await;
    let (status, body) = json(
        s.post(
            &format!("/api/v1/operations/{id}/cancel"),
            STAGING,
            json!({"reason": "bad config"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body,
        json!({
            "operation": id.to_string(),
            "actor": "stager",
            "reason": "bad config",
            "answer": "rolling back",
            "pending": null
        })
    );
    // Durable when answered: the store's records say so.
    let state = s.executor.status(id).await.unwrap();
    assert_eq!(
        state.cancel(),
        Some(saga_core::state::CancelledBy { actor: "stager", reason: "bad config" })
    );
    let outcome = s.executor.wait(id).await.unwrap();
    assert_eq!(outcome.status(), saga_core::Status::RolledBack);

    // Cancelling it again: it finished.
    let (status, body) = json(
        s.post(
            &format!("/api/v1/operations/{id}/cancel"),
            STAGING,
            json!({"reason": "again", "actor": "bob"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "already_finished");
    assert!(body["message"].as_str().unwrap().contains("already finished"));

    // The actor given is recorded.
    let other = s.blocked("prod", "web").await;
    let (status, body) = json(
        s.post(
            &format!("/api/v1/operations/{other}/cancel"),
            ADMIN,
            json!({"reason": "r", "actor": "carol"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(body["actor"], "carol");
    // A read-only token may see but not cancel.
    let id3 = s.blocked("prod", "api").await;
    let (status, body) = json(
        s.post(&format!("/api/v1/operations/{id3}/cancel"), VIEWER, json!({"reason": "r"})).await,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden");
    s.executor.cancel(id3, "test", "cleanup").await.unwrap();
    s.executor.wait(id3).await.unwrap();
    s.executor.wait(other).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_is_the_activity_csv() {
    let s = server().await;
    let ok = s.finished("deploy", "staging", "web", Params::default()).await;
    let bad = s.finished("migrate", "staging", "db", Params::default()).await;
    s.finished("deploy", "prod", "web", Params::default()).await;
    // The current week (no period).
    let response = s.get("/api/v1/environments/staging/report.csv", Some(STAGING)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/csv; charset=utf-8");
    let disposition = response.headers()["content-disposition"].to_str().unwrap().to_owned();
    assert!(disposition.starts_with("attachment; filename=\"activity-staging-"), "{disposition}");
    let body = response.bytes().await.unwrap();
    // Exactly what saga-core writes.
    let rows = saga_core::report::weekly_activity_report(
        s.executor.store().as_ref(),
        "staging",
        saga_core::Timestamp::now(),
    )
    .await
    .unwrap();
    let mut expected = Vec::new();
    saga_core::report::write_activity_csv(&rows, &mut expected).unwrap();
    assert_eq!(body.as_ref(), expected.as_slice());
    let mut reader = csv::Reader::from_reader(body.as_ref());
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(header, saga_core::report::ACTIVITY_COLUMNS);
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 2);
    assert_eq!(&records[0][0], ok.to_string());
    assert_eq!(&records[0][2], "succeeded");
    assert_eq!(&records[1][0], bad.to_string());
    assert_eq!(&records[1][2], "rollback incomplete");
    assert_eq!(&records[1][10], "migrate (irreversible)");

    // A period.
    let response = s
        .get("/api/v1/environments/staging/report.csv?since=2000-01-01T00:00:00Z&until=2100-01-01T00:00:00Z", Some(ADMIN))
        .await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert_eq!(csv::Reader::from_reader(body.as_bytes()).records().count(), 2);
    // Another environment's report: 403.
    let (status, body) =
        json(s.get("/api/v1/environments/prod/report.csv", Some(STAGING)).await).await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_refuses_missing_and_wrong_tokens_and_hides_other_environments() {
    let s = server().await;
    let prod = s.finished("deploy", "prod", "web", Params::default()).await;
    let staging = s.finished("deploy", "staging", "web", Params::default()).await;
    let routes = [
        "/api/v1/me".to_owned(),
        "/api/v1/environments/staging/operations".to_owned(),
        format!("/api/v1/operations/{staging}"),
        format!("/api/v1/operations/{staging}/log"),
        format!("/api/v1/operations/{staging}/log/stream"),
        "/api/v1/environments/staging/report.csv".to_owned(),
    ];
    for route in &routes {
        for token in [None, Some("wrong-token"), Some("")] {
            let response = s.get(route, token).await;
            assert_eq!(response.status(), 401, "{route} with {token:?}");
            let challenge = response.headers()["www-authenticate"].to_str().unwrap().to_owned();
            assert!(challenge.starts_with("Bearer"), "{challenge}");
            let (_, body) = json(response).await;
            assert_eq!(body["error"], "unauthorized");
        }
    }
    let response = s.get("/api/v1/me", Some("wrong-token")).await;
    assert!(response.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    let (_, body) = json(response).await;
    assert_eq!(body["message"], "the token was refused");
    // Another scheme is no bearer token.
    let response =
        http().get(format!("{}/api/v1/me", s.url)).basic_auth("a", Some("b")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = s
        .post(&format!("/api/v1/operations/{staging}/cancel"), "wrong", json!({"reason": "x"}))
        .await;
    assert_eq!(response.status(), 401);

    // What the tokens grant.
    let (_, me) = json(s.get("/api/v1/me", Some(VIEWER)).await).await;
    assert_eq!(
        me,
        json!({"principal": "viewer", "all_environments": false, "environments": ["prod"], "may_cancel": false})
    );

    // Another environment's Operation answers exactly as a missing one.
    let missing = saga_core::OperationId::new();
    for suffix in ["", "/log", "/log/stream"] {
        let hidden = s.get(&format!("/api/v1/operations/{prod}{suffix}"), Some(STAGING)).await;
        let absent = s.get(&format!("/api/v1/operations/{missing}{suffix}"), Some(STAGING)).await;
        assert_eq!(hidden.status(), 404);
        assert_eq!(absent.status(), 404);
        let (hidden, absent) = (json(hidden).await.1, json(absent).await.1);
        assert_eq!(hidden["error"], "not_found");
        assert_eq!(hidden["message"], format!("operation {prod} not found"));
        assert_eq!(
            hidden["message"].as_str().unwrap().replace(&prod.to_string(), "ID"),
            absent["message"].as_str().unwrap().replace(&missing.to_string(), "ID")
        );
        assert_eq!(
            hidden.as_object().unwrap().keys().collect::<Vec<_>>(),
            absent.as_object().unwrap().keys().collect::<Vec<_>>()
        );
    }
    let (status, _) = json(
        s.post(&format!("/api/v1/operations/{prod}/cancel"), STAGING, json!({"reason": "x"})).await,
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) =
        json(s.get("/api/v1/environments/prod/operations", Some(STAGING)).await).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "forbidden");
    // The staging token sees its own.
    let (status, _) =
        json(s.get(&format!("/api/v1/operations/{staging}"), Some(STAGING)).await).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_400_that_names_the_parameter() {
    let s = server().await;
    let id = s.finished("deploy", "staging", "web", Params::default()).await;
    let cases = [
        ("/api/v1/operations/not-an-id", "id"),
        ("/api/v1/operations/not-an-id/log", "id"),
        ("/api/v1/operations/not-an-id/log/stream", "id"),
        ("/api/v1/operations/ZZZZZZZZZZZZZZZZZZZZZZZZZZ", "id"),
        ("/api/v1/environments/staging/operations?status=done", "status"),
        ("/api/v1/environments/staging/operations?since=yesterday", "since"),
        ("/api/v1/environments/staging/operations?until=2025-13-01T00:00:00Z", "until"),
        ("/api/v1/environments/staging/operations?since=2025-02-01T00:00:00Z&until=2025-01-01T00:00:00Z", "until"),
        ("/api/v1/environments/staging/operations?limit=0", "limit"),
        ("/api/v1/environments/staging/operations?limit=many", "limit"),
        ("/api/v1/environments/staging/operations?cursor=nope", "cursor"),
        ("/api/v1/environments/staging/operations?colour=red", "colour"),
        ("/api/v1/environments/staging/operations?limit=1&limit=2", "limit"),
        ("/api/v1/environments/staging/report.csv?since=2025-01-01T00:00:00Z", "until"),
        ("/api/v1/environments/staging/report.csv?since=1969-01-01T00:00:00Z&until=2025-01-01T00:00:00Z", "since"),
        ("/api/v1/environments/staging/report.csv?since=2025-01-01&until=2025-02-01", "since"),
    ];
    for (route, parameter) in cases {
        let (status, body) = json(s.get(route, Some(ADMIN)).await).await;
        assert_eq!(status, 400, "{route}: {body}");
        assert_eq!(body["error"], "bad_request", "{route}");
        assert_eq!(body["parameter"], parameter, "{route}: {body}");
        assert!(!body["message"].as_str().unwrap().is_empty());
    }
    let (_, body) =
        json(s.get("/api/v1/environments/staging/operations?status=done", Some(ADMIN)).await).await;
    assert!(
        body["message"].as_str().unwrap().contains("rolled_back"),
        "lists the statuses: {body}"
    );

    // The cancel's body.
    let path = format!("/api/v1/operations/{id}/cancel");
    for (body, parameter) in
        [(json!({}), "body"), (json!({"reason": "  "}), "reason"), (json!({"reason": 3}), "body")]
    {
        let (status, answer) = json(s.post(&path, ADMIN, body.clone()).await).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["parameter"], parameter);
    }
    let response = http()
        .post(format!("{}{path}", s.url))
        .bearer_auth(ADMIN)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("reason=x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let (_, body) = json(response).await;
    assert_eq!(body["parameter"], "Content-Type");
    let response = http()
        .post(format!("{}{path}", s.url))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // An unknown route is a JSON 404.
    let (status, body) = json(s.get("/api/v1/nothing", Some(ADMIN)).await).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
}
