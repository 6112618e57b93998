//! [`Admin`], what the router serves, and [`router`]: the routes and the checks every handler
//! shares (who is calling, may they see this Operation).

use std::fmt;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, Uri};
use axum::routing::{get, post};
use axum::Router;
use saga_core::log::{Record, RecordKind};
use saga_core::{Executor, OperationId};

use crate::auth::{Authorizer, Grant};
use crate::error::ApiError;
use crate::{cancel, dashboard, ops, report, stream};

/// The name of the dashboard's cookie, which holds the token after a sign-in.
pub(crate) const COOKIE: &str = "saga_token";

/// What the router serves: an [`Executor`] (its store is read for listings, timelines, logs and
/// reports; its `cancel` and `follow` are called) and the [`Authorizer`] that decides who sees
/// what. Cloning is cheap.
#[derive(Clone)]
pub struct Admin {
    pub(crate) executor: Executor,
    pub(crate) authorizer: Arc<dyn Authorizer>,
    pub(crate) secure_cookie: bool,
}

impl Admin {
    /// Serves `executor`'s Operations to the callers `authorizer` lets in.
    pub fn new(executor: Executor, authorizer: Arc<dyn Authorizer>) -> Self {
        Admin { executor, authorizer, secure_cookie: false }
    }

    /// Marks the dashboard's cookie `Secure` (sent over HTTPS only). Off by default, so that the
    /// dashboard works over plain HTTP on a loopback address; turn it on behind HTTPS.
    pub fn secure_cookie(mut self, secure: bool) -> Self {
        self.secure_cookie = secure;
        self
    }

    /// The executor served.
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// Who is calling: the token of the `Authorization: Bearer` header, else of the dashboard's
    /// cookie, as the authorizer grants it.
    pub(crate) async fn authorize(&self, headers: &HeaderMap) -> Result<Grant, ApiError> {
        match token(headers)? {
            Some(token) => Ok(self.authorizer.authorize(&token).await?),
            None => Err(ApiError::unauthorized(
                "no credentials: send the header `Authorization: Bearer <token>`",
            )),
        }
    }

    /// The Operation's records, if the caller may see it: a missing Operation and one of an
    /// environment the caller may not see are the same 404.
    pub(crate) async fn visible_records(
        &self,
        id: OperationId,
        grant: &Grant,
    ) -> Result<Vec<Record>, ApiError> {
        let records = self.executor.store().read(id).await.map_err(ApiError::store)?;
        match records.first().map(|r| &r.kind) {
            Some(RecordKind::OperationCreated { environment, .. })
                if grant.may_see(environment) =>
            {
                Ok(records)
            }
            Some(RecordKind::OperationCreated { .. }) => Err(ApiError::operation_not_found(id)),
            _ => Err(ApiError::internal(format!(
                "operation {id}: its log does not begin with OperationCreated"
            ))),
        }
    }
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("executor", &self.executor)
            .field("secure_cookie", &self.secure_cookie)
            .finish_non_exhaustive()
    }
}

/// The token of the request: `Authorization: Bearer <token>`, else the dashboard's cookie.
/// An `Authorization` header of another scheme is an error, not an absence.
pub(crate) fn token(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("the Authorization header is not valid text"))?;
        let (scheme, token) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::unauthorized(
                "the Authorization header is not a Bearer token: send `Authorization: Bearer <token>`",
            ));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(ApiError::unauthorized("the Bearer token is empty"));
        }
        return Ok(Some(token.to_owned()));
    }
    Ok(cookie(headers, COOKIE))
}

/// The value of a cookie.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.to_owned())
}

/// Parses an Operation id of a path.
pub(crate) fn operation_id(
    path: Result<Path<String>, PathRejection>,
) -> Result<OperationId, ApiError> {
    let Path(text) = path.map_err(|e| ApiError::bad_request("id", e.body_text()))?;
    text.parse().map_err(|_| {
        ApiError::bad_request(
            "id",
            format!("{text:?} is not an operation id (26 characters of Crockford base 32)"),
        )
    })
}

/// The query's pairs, in order.
pub(crate) fn query_pairs(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Vec<(String, String)>, ApiError> {
    query.map(|Query(pairs)| pairs).map_err(|e| ApiError::bad_request("query", e.body_text()))
}

/// The path the router is mounted at (`""` at the root, `"/admin"` when nested there), from
/// the request's original URI and the URI the router sees.
pub(crate) fn base_path(original: &Uri, seen: &Uri) -> String {
    let original = original.path();
    let seen = seen.path();
    original.strip_suffix(seen).unwrap_or("").trim_end_matches('/').to_owned()
}

/// The router of the API and the dashboard; see the crate's documentation for the routes.
///
/// Mount it beside an API of your own, at the root or nested (`Router::nest("/admin", ..)`):
/// the dashboard's links follow where it is mounted.
pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/api/v1/me", get(ops::me))
        .route("/api/v1/environments/{env}/operations", get(ops::list))
        .route("/api/v1/environments/{env}/report.csv", get(report::csv))
        .route("/api/v1/operations/{id}", get(ops::show))
        .route("/api/v1/operations/{id}/log", get(stream::download))
        .route("/api/v1/operations/{id}/log/stream", get(stream::sse))
        .route("/api/v1/operations/{id}/cancel", post(cancel::cancel))
        .route("/", get(dashboard::list))
        .route("/ops/{id}", get(dashboard::operation))
        .route("/login", post(dashboard::login))
        .route("/logout", post(dashboard::logout))
        .fallback(fallback)
        .with_state(admin)
}

async fn fallback(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such route: {}", uri.path()))
}
