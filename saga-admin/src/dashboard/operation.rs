//! `GET /ops/{id}`: one Operation: its summary, verdict, cancel, timeline and live log.
//! `operation.js` follows the log stream, sends the cancel, and, when the stream ends, fills in
//! the verdict and replaces `#summary`, `#timeline` and `#actions` with a fresh copy of them.

use axum::extract::rejection::PathRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use maud::{html, Markup};

use crate::admin::{base_path, operation_id, Admin};
use crate::api::{OperationDetail, Status};
use crate::auth::Grant;
use crate::ops::detail;

use super::layout::{badge, enc, error_page, short_time, Page};
use super::steps;

const OPERATION_JS: &str = include_str!("operation.js");

/// `GET /ops/{id}`: one Operation, its timeline and its live log.
pub(crate) async fn operation(
    State(admin): State<Admin>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let base = base_path(&original, &uri);
    let grant = match admin.authorize(&headers).await {
        Ok(grant) => grant,
        Err(e) => return error_page(&base, None, e),
    };
    let shown = async {
        let id = operation_id(path)?;
        detail(&admin, id, &grant).await
    };
    match shown.await {
        Ok(op) => operation_page(&base, &grant, &op),
        Err(e) => error_page(&base, Some(&grant), e),
    }
}

fn operation_page(base: &str, grant: &Grant, op: &OperationDetail) -> Response {
    let main = html! {
        p {
            a href={ (base) "/?env=" (enc(&op.environment)) } {
                "← Operations of " (op.environment)
            }
        }
        h1 { "Operation " span.mono { (op.id) } }
        div.card #summary { dl.facts { (facts(base, op)) } }
        (verdict(op))
        (actions(grant, op))
        h2 { "Timeline" }
        (steps::table(op))
        h2 { "Log " span.muted #stream-state { "connecting…" } }
        pre.log #log { "(the log appears here)" }
        p {
            a #log-download href={ (base) "/api/v1/operations/" (enc(&op.id)) "/log" } download {
                "Download the log"
            }
        }
    };
    Page {
        title: &format!("operation {}", op.id),
        base,
        grant: Some(grant),
        env: None,
        op: Some(&op.id),
        main,
        script: Some(OPERATION_JS),
    }
    .render(StatusCode::OK)
}

/// The summary's facts: what always is, then what is known.
fn facts(base: &str, op: &OperationDetail) -> Markup {
    html! {
        dt { "Status" } dd { span #status { (badge(op.status)) } }
        dt { "Saga" } dd { (op.saga) " v" (op.version) }
        dt { "Resource" } dd { (op.resource_type) "/" (op.resource) }
        dt { "Environment" } dd { (op.environment) }
        dt { "Started by" } dd { (op.actor) }
        dt { "Created" } dd { (short_time(&op.created_at)) }
        @if let Some(finished) = &op.finished_at {
            dt { "Finished" } dd { (short_time(finished)) }
        }
        @if let Some(cancel) = &op.cancel {
            dt { "Cancelled" } dd { "by " (cancel.actor) ": " (cancel.reason) }
        }
        @if let Some(failure) = &op.failure {
            dt { "Failed step" } dd { (failure.step) ": " (failure.error) }
        }
        @if let Some(attention) = &op.attention {
            dt { "Needs attention" } dd { (attention.step) ": " (attention.error) }
        }
        @if let Some(waiting) = &op.waiting_for {
            dt { "Waiting for" } dd { a href={ (base) "/ops/" (enc(waiting)) } { (waiting) } }
        }
        @if !op.not_undone.is_empty() {
            dt { "Not undone" }
            dd {
                @for (i, n) in op.not_undone.iter().enumerate() {
                    @if i > 0 { br; }
                    (n.step) " (" (n.reason) ")"
                }
            }
        }
        @if let Some(problem) = &op.problem {
            dt { "Problem" } dd { span.error { (problem) } }
        }
    }
}

/// The verdict: known now if it finished, else filled in by the stream's end.
fn verdict(op: &OperationDetail) -> Markup {
    html! {
        @if let Some(outcome) = &op.outcome {
            div.card.verdict.(outcome.status.as_str()) #verdict
                data-status=(outcome.status.as_str()) {
                "Verdict: " (outcome.text)
            }
        } @else {
            div.card.verdict #verdict hidden {}
        }
    }
}

/// The cancel button and its form, for a token that may cancel an Operation still going
/// forward; and the line where `operation.js` says how the cancel went.
fn actions(grant: &Grant, op: &OperationDetail) -> Markup {
    let cancellable =
        !op.status.is_finished() && op.status != Status::RollingBack && grant.may_cancel();
    html! {
        div #actions {
            @if cancellable {
                button.danger type="button" #cancel-button { "Cancel operation…" }
                form.stack.card #cancel-form hidden {
                    label {
                        "Why cancel it?"
                        textarea #cancel-reason required maxlength="4000" {}
                    }
                    div {
                        button.danger type="submit" #cancel-submit { "Cancel and roll back" }
                        " "
                        button.plain type="button" #cancel-back { "Keep it running" }
                    }
                }
            }
            p.muted #cancel-message {}
        }
    }
}
