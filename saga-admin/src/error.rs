//! The API's error answers: a status code, a JSON [`ErrorBody`], and for 401 the
//! `WWW-Authenticate` challenge.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use saga_core::store::StoreError;
use saga_core::{Error, OperationId};

use crate::api::ErrorBody;
use crate::auth::AuthError;

/// An error answer of the API.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) parameter: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), parameter: None }
    }

    /// 401: no token, or a token the authorizer refused.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 for an Operation: the same answer whether it does not exist or is in an environment
    /// the caller may not see.
    pub(crate) fn operation_not_found(id: OperationId) -> Self {
        ApiError::not_found(format!("operation {id} not found"))
    }

    /// 404.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 400 naming the parameter at fault.
    pub(crate) fn bad_request(parameter: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            parameter: Some(parameter.into()),
            ..ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
        }
    }

    /// 415.
    pub(crate) fn unsupported_media_type(message: impl Into<String>) -> Self {
        ApiError {
            parameter: Some("Content-Type".to_owned()),
            ..ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message)
        }
    }

    /// 503.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// A store error: 404 for a missing Operation, 503 for an unavailable or transient store,
    /// 500 for the rest (damage).
    pub(crate) fn store(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(id) => ApiError::operation_not_found(id),
            e @ StoreError::Unavailable(_) => ApiError::unavailable(e.to_string()),
            e if e.is_transient() => ApiError::unavailable(e.to_string()),
            e => ApiError::internal(e.to_string()),
        }
    }

    pub(crate) fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.code.to_owned(),
            message: self.message.clone(),
            parameter: self.parameter.clone(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::NotFound(id) => ApiError::operation_not_found(id),
            Error::InvalidOperationId(text) => {
                ApiError::bad_request("id", format!("{text:?} is not an operation id"))
            }
            e @ Error::AlreadyFinished { .. } => {
                ApiError::new(StatusCode::CONFLICT, "already_finished", e.to_string())
            }
            e @ Error::PastPointOfNoReturn { .. } => {
                ApiError::new(StatusCode::CONFLICT, "past_point_of_no_return", e.to_string())
            }
            Error::Store(e) => ApiError::store(e),
            e @ Error::Halted { .. } => ApiError::unavailable(e.to_string()),
            e if e.is_transient() => ApiError::unavailable(e.to_string()),
            e => ApiError::internal(e.to_string()),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Refused => ApiError::unauthorized("the token was refused"),
            e => ApiError::unavailable(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, message = %self.message, "saga-admin request failed");
        }
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = if self.message.contains("refused") {
                "Bearer realm=\"saga\", error=\"invalid_token\""
            } else {
                "Bearer realm=\"saga\""
            };
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}
