//! `GET /api/v1/environments/{env}/report.csv`: the activity report, as saga-core writes it.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use saga_core::report::{activity_report, write_activity_csv};
use saga_core::{Timestamp, Week};

use crate::admin::{query_pairs, Admin};
use crate::error::ApiError;
use crate::ops::check_environment;
use crate::query::report_period;

pub(crate) async fn csv(
    State(admin): State<Admin>,
    Path(environment): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let grant = admin.authorize(&headers).await?;
    let period = report_period(&query_pairs(query)?)?;
    check_environment(&grant, &environment)?;
    let store = admin.executor.store().as_ref();
    let Week { since, until } = match period {
        Some((since, until)) => {
            Week { since: Timestamp::from_unix_ms(since), until: Timestamp::from_unix_ms(until) }
        }
        None => Timestamp::now().iso_week(),
    };
    let rows = activity_report(store, &environment, since, until).await?;
    let mut body = Vec::new();
    write_activity_csv(&rows, &mut body)?;
    let filename = format!(
        "activity-{}-{}-{}.csv",
        file_safe(&environment),
        file_safe(&since.to_string()),
        file_safe(&until.to_string())
    );
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// Letters, digits, `-` and `_` as they are; anything else becomes `_`.
fn file_safe(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}
