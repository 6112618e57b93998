//! `GET /api/v1/me`, the listing of an environment's Operations, and one Operation.

use crate::api::rfc3339;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use saga_core::report::ActivityRow;
use saga_core::state::OperationState;
use saga_core::store::StoreError;
use saga_core::{Error, OperationId};

use crate::admin::{operation_id, query_pairs, Admin};
use crate::api::{CancelInfo, Me, OperationDetail, OperationPage, OperationSummary, Status};
use crate::auth::{Environments, Grant};
use crate::error::ApiError;
use crate::query::ListQuery;
use crate::timeline;

pub(crate) async fn me(
    State(admin): State<Admin>,
    headers: HeaderMap,
) -> Result<Json<Me>, ApiError> {
    let grant = admin.authorize(&headers).await?;
    Ok(Json(me_of(&grant)))
}

pub(crate) fn me_of(grant: &Grant) -> Me {
    let (all_environments, environments) = match grant.environments() {
        Environments::All => (true, Vec::new()),
        Environments::Only(set) => (false, set.iter().cloned().collect()),
    };
    Me {
        principal: grant.principal().to_owned(),
        all_environments,
        environments,
        may_cancel: grant.may_cancel(),
    }
}

pub(crate) async fn list(
    State(admin): State<Admin>,
    Path(environment): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<OperationPage>, ApiError> {
    let grant = admin.authorize(&headers).await?;
    let query = ListQuery::parse(&query_pairs(query)?)?;
    check_environment(&grant, &environment)?;
    Ok(Json(page(&admin, &environment, &query).await?))
}

/// 403 for an environment the caller may not see (which says nothing of whether it exists).
pub(crate) fn check_environment(grant: &Grant, environment: &str) -> Result<(), ApiError> {
    if grant.may_see(environment) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!("this token may not see environment {environment:?}")))
    }
}

/// One page of the environment's Operations, newest first. Only the Operations up to the page's
/// end are read: the environment index gives the ids, and each is read and folded until the
/// page is full. An Operation that cannot be read or folded is a `damaged` row, as in the
/// activity report; an unavailable store fails the page (503).
pub(crate) async fn page(
    admin: &Admin,
    environment: &str,
    query: &ListQuery,
) -> Result<OperationPage, ApiError> {
    let store = admin.executor.store();
    let since = query.since_ms.unwrap_or(0);
    let mut until = query.until_ms.unwrap_or(u64::MAX);
    if let Some(cursor) = query.cursor {
        until = until.min(cursor.created_ms().saturating_add(1));
    }
    let listing =
        store.list_environment(environment, since, until).await.map_err(ApiError::store)?;
    let mut rows = Vec::new();
    let mut more = false;
    for id in listing.ids.iter().rev().copied() {
        if query.cursor.is_some_and(|cursor| id >= cursor) {
            continue;
        }
        let row = match store.read(id).await {
            Ok(records) => match OperationState::fold(id, &records) {
                Ok(state) if state.environment() == environment => ActivityRow::from_state(&state),
                Ok(_) => continue,
                Err(e) => ActivityRow::damaged(id, e),
            },
            Err(e @ (StoreError::Unavailable(_) | StoreError::Transient { .. })) => {
                return Err(ApiError::store(e))
            }
            Err(e) => ActivityRow::damaged(id, e),
        };
        let status = row.status;
        if !query.accepts(status, &row.resource_type, &row.resource) {
            continue;
        }
        if rows.len() == query.limit {
            more = true;
            break;
        }
        rows.push(row);
    }
    // Index entries that name no Operation: on the first page, after the Operations.
    if query.cursor.is_none() && !more {
        for problem in &listing.damaged {
            let row = ActivityRow::damaged_entry(problem);
            if query.accepts(Status::Damaged, "", "") && rows.len() < query.limit {
                rows.push(row);
            }
        }
    }
    let next_cursor = if more { rows.last().map(|r| r.operation.to_string()) } else { None };
    let operations = rows.iter().map(|row| summary(environment, row)).collect();
    Ok(OperationPage { environment: environment.to_owned(), operations, next_cursor })
}

fn summary(environment: &str, row: &ActivityRow) -> OperationSummary {
    let named = row.names_operation();
    OperationSummary {
        id: if named { row.operation.to_string() } else { String::new() },
        environment: environment.to_owned(),
        saga: row.operation_type.clone(),
        status: row.status,
        resource_type: row.resource_type.clone(),
        resource: row.resource.clone(),
        actor: row.actor.clone(),
        created_at: if named { row.created.to_string() } else { String::new() },
        finished_at: row.finished.map(|t| t.to_string()),
        duration_seconds: row.duration_secs(),
        failed_step: row.failed_step.clone(),
        failure: row.failure.clone(),
        not_undone: row.not_undone.clone(),
        cancelled_by: row.cancelled_by.clone(),
        problem: row.problem.clone(),
    }
}

pub(crate) async fn show(
    State(admin): State<Admin>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<OperationDetail>, ApiError> {
    let grant = admin.authorize(&headers).await?;
    let id = operation_id(path)?;
    Ok(Json(detail(&admin, id, &grant).await?))
}

/// The detail of an Operation the caller may see, from one read of its records.
pub(crate) async fn detail(
    admin: &Admin,
    id: OperationId,
    grant: &Grant,
) -> Result<OperationDetail, ApiError> {
    let records = admin.visible_records(id, grant).await?;
    let state = OperationState::fold(id, &records).map_err(ApiError::from)?;
    let mut detail = timeline::detail(&records, &state);
    detail.running_here = admin.executor.is_running(id);
    match admin.executor.status(id).await {
        Ok(now) => {
            detail.waiting_for = now.waiting_for().map(|w| w.to_string());
            detail.cancel_pending = now.pending_cancel().map(|r| CancelInfo {
                actor: r.actor.clone(),
                reason: r.reason.clone(),
                at: Some(rfc3339(r.at_ms)),
            });
        }
        Err(e @ (Error::Halted { .. } | Error::Unrecoverable { .. })) => {
            detail.problem = Some(e.to_string())
        }
        Err(e) => return Err(e.into()),
    }
    Ok(detail)
}
