//! An Operation's log: as a text download, and live as Server-Sent Events.

use std::convert::Infallible;
use std::time::Duration;

use crate::api::rfc3339;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{FutureExt as _, Stream};
use saga_core::log::{render_log, FollowEvent, LogLine, LogSource};
use saga_core::state::Phase;
use saga_core::{Executor, OperationId};
use tokio::sync::mpsc;

use crate::admin::{operation_id, Admin};
use crate::api::{EndEvent, LogEvent, OutcomeInfo, Status};
use crate::error::ApiError;

/// How often the stream of an Operation that runs on another executor reads its stored log.
const POLL: Duration = Duration::from_secs(1);

pub(crate) async fn download(
    State(admin): State<Admin>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let grant = admin.authorize(&headers).await?;
    let id = operation_id(path)?;
    admin.visible_records(id, &grant).await?;
    let lines = snapshot(&admin.executor, id).await?;
    let disposition = format!("attachment; filename=\"operation-{id}.log\"");
    let mut response = render_log(&lines).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// Every line of the log so far, including those of an Operation running here that are not
/// stored yet: the follower's history, up to the first line it would have to wait for.
async fn snapshot(executor: &Executor, id: OperationId) -> Result<Vec<LogLine>, ApiError> {
    let mut follower = executor.follow(id).await?;
    let mut lines = Vec::new();
    while let Some(Some(event)) = follower.next().now_or_never() {
        if let FollowEvent::Line(line) = event {
            lines.push(line);
        }
    }
    Ok(lines)
}

pub(crate) async fn sse(
    State(admin): State<Admin>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let grant = admin.authorize(&headers).await?;
    let id = operation_id(path)?;
    admin.visible_records(id, &grant).await?;
    // A reconnecting EventSource says which line it saw last.
    let last_seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(follow(admin.executor.clone(), id, last_seen, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Sends the log's lines (history first, then live) and, last, an `end` event: the outcome, or
/// why the Operation stopped without one. An Operation not running here (on another executor
/// sharing the store) is followed by reading its stored log every second. Returns when the
/// client goes away.
async fn follow(
    executor: Executor,
    id: OperationId,
    mut last: Option<u64>,
    tx: mpsc::Sender<Event>,
) {
    loop {
        let mut follower = match executor.follow(id).await {
            Ok(follower) => follower,
            Err(e) => {
                let _ = tx.send(end(Status::Unknown, None, Some(e.to_string()))).await;
                return;
            }
        };
        loop {
            // A client that went away ends the task even while the log is quiet.
            let event = tokio::select! {
                _ = tx.closed() => return,
                event = follower.next() => event,
            };
            let Some(event) = event else { break };
            let event = match event {
                FollowEvent::Line(line) => {
                    if last.is_some_and(|seen| line.seq <= seen) {
                        continue;
                    }
                    last = Some(line.seq);
                    line_event(&line)
                }
                FollowEvent::Missed(n) => {
                    Event::default().event("missed").data(format!("{{\"missed\":{n}}}"))
                }
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
        // The follower ended: the Operation stopped running here, or never ran here.
        let state = match executor.status(id).await {
            Ok(state) => state,
            Err(e) => {
                let _ = tx.send(end(Status::Unknown, None, Some(e.to_string()))).await;
                return;
            }
        };
        let finished = state.outcome().is_some() || state.phase() == Phase::NeedsAttention;
        if finished {
            // Lines stored after the follower's last (written as it ended).
            if let Ok(lines) = executor.log(id).await {
                let seen = last;
                for line in lines.iter().filter(|l| seen.is_none_or(|seen| l.seq > seen)) {
                    if tx.send(line_event(line)).await.is_err() {
                        return;
                    }
                }
            }
            let status = saga_core::Status::of(&state);
            let problem =
                state.attention().map(|f| format!("step {} needs attention: {}", f.step, f.error));
            let _ = tx.send(end(status, state.outcome().map(OutcomeInfo::of), problem)).await;
            return;
        }
        if !executor.is_running(id) {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

fn line_event(line: &LogLine) -> Event {
    let data = LogEvent {
        seq: line.seq,
        at: rfc3339(line.at_ms),
        level: line.level.to_string(),
        source: match line.source {
            LogSource::Engine => "engine".to_owned(),
            LogSource::Step => "step".to_owned(),
        },
        step: line.step.clone(),
        message: line.message.clone(),
        text: line.to_string(),
    };
    let event = Event::default().event("line").id(line.seq.to_string());
    match serde_json::to_string(&data) {
        Ok(json) => event.data(json),
        Err(_) => event.data("{}"),
    }
}

fn end(status: Status, outcome: Option<OutcomeInfo>, problem: Option<String>) -> Event {
    let data = EndEvent { status, outcome, problem };
    let event = Event::default().event("end");
    match serde_json::to_string(&data) {
        Ok(json) => event.data(json),
        Err(_) => event.data("{}"),
    }
}
