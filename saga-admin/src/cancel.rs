//! `POST /api/v1/operations/{id}/cancel`.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;

use crate::admin::{operation_id, Admin};
use crate::api::rfc3339;
use saga_core::CancelAnswer;

use crate::api::{CancelAccepted, CancelBody, CancelInfo};
use crate::error::ApiError;

/// The longest reason (and actor) recorded, in bytes.
const MAX_TEXT: usize = 4096;

/// Records the cancel and answers 202 once it is durable (when `Executor::cancel` returns);
/// the rollback then runs, and the log stream tells its verdict.
///
/// The body must be JSON (`Content-Type: application/json`): a cross-site form cannot send
/// that without a CORS preflight, which this router never grants, so the dashboard's cookie
/// cannot be used to cancel from another site.
pub(crate) async fn cancel(
    State(admin): State<Admin>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<CancelAccepted>), ApiError> {
    let grant = admin.authorize(&headers).await?;
    let id = operation_id(path)?;
    admin.visible_records(id, &grant).await?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::unsupported_media_type(
            "send the cancel as JSON with `Content-Type: application/json`",
        ));
    }
    let request: CancelBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "body",
            format!("the body is not {{\"reason\": ..., \"actor\": ...}}: {e}"),
        )
    })?;
    let reason = request.reason.trim();
    if reason.is_empty() {
        return Err(ApiError::bad_request("reason", "give a reason for the cancel"));
    }
    if reason.len() > MAX_TEXT {
        return Err(ApiError::bad_request(
            "reason",
            format!("the reason is longer than {MAX_TEXT} bytes"),
        ));
    }
    let actor = match request.actor.as_deref().map(str::trim) {
        Some(actor) if !actor.is_empty() => actor.to_owned(),
        _ => grant.principal().to_owned(),
    };
    if actor.len() > MAX_TEXT {
        return Err(ApiError::bad_request(
            "actor",
            format!("the actor is longer than {MAX_TEXT} bytes"),
        ));
    }
    if !grant.may_cancel() {
        return Err(ApiError::forbidden("this token may not cancel operations"));
    }
    let (answer, pending) = match admin.executor.cancel(id, &actor, reason).await? {
        CancelAnswer::RollingBack => ("rolling back".to_owned(), None),
        CancelAnswer::AlreadyRollingBack => ("already rolling back".to_owned(), None),
        CancelAnswer::Requested { pending } => (
            "requested".to_owned(),
            Some(CancelInfo {
                actor: pending.actor,
                reason: pending.reason,
                at: Some(rfc3339(pending.at_ms)),
            }),
        ),
        other => (other.to_string(), None),
    };
    let accepted = CancelAccepted {
        operation: id.to_string(),
        actor,
        reason: reason.to_owned(),
        answer,
        pending,
    };
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}
