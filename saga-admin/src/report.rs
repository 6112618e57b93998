//! `GET /api/v1/environments/{env}/report.csv`: the activity report, as saga-core writes it.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use saga_core::log::format_rfc3339_ms;
use saga_core::report::{
    activity_report, iso_week_containing, weekly_activity_report, write_activity_csv,
};
use saga_core::store::now_ms;

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
    let (rows, (since, until)) = match period {
        Some((since, until)) => {
            (activity_report(store, &environment, since, until).await?, (since, until))
        }
        None => {
            let now = now_ms();
            (weekly_activity_report(store, &environment, now).await?, iso_week_containing(now))
        }
    };
    let mut body = Vec::new();
    write_activity_csv(&rows, &mut body)?;
    let filename = format!(
        "activity-{}-{}-{}.csv",
        file_safe(&environment),
        file_safe(&format_rfc3339_ms(since)),
        file_safe(&format_rfc3339_ms(until))
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
