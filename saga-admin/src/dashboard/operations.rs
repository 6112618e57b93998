//! `GET /`: the Operations of an environment (`?env=`), with the filters of the API; `list.js`
//! refreshes the table while one of them is unfinished.

use axum::extract::rejection::QueryRejection;
use axum::extract::{OriginalUri, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use maud::{html, Markup};

use crate::admin::{base_path, query_pairs, Admin};
use crate::api::{OperationPage, OperationSummary, Status};
use crate::auth::{Environments, Grant};
use crate::error::ApiError;
use crate::ops::{check_environment, page};
use crate::query::ListQuery;

use super::layout::{badge, enc, error_page, short_time, Page};
use super::report;

const LIST_JS: &str = include_str!("list.js");

/// `GET /`: the Operations of an environment (`?env=`), with the filters of the API.
pub(crate) async fn list(
    State(admin): State<Admin>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let base = base_path(&original, &uri);
    let grant = match admin.authorize(&headers).await {
        Ok(grant) => grant,
        Err(e) => return error_page(&base, None, e),
    };
    match list_page(&admin, &base, &grant, query).await {
        Ok(response) => response,
        Err(e) => error_page(&base, Some(&grant), e),
    }
}

async fn list_page(
    admin: &Admin,
    base: &str,
    grant: &Grant,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query)?;
    let mut environment = None;
    let mut filters = Vec::new();
    for (key, value) in pairs {
        match key.as_str() {
            "env" => environment = Some(value.trim().to_owned()).filter(|v| !v.is_empty()),
            // An empty filter field of the form means no filter.
            "status" | "resource" if value.trim().is_empty() => {}
            _ => filters.push((key, value)),
        }
    }
    let choices: Vec<String> = match grant.environments() {
        Environments::Only(set) => set.iter().cloned().collect(),
        Environments::All => Vec::new(),
    };
    if environment.is_none() && choices.len() == 1 {
        environment = choices.first().cloned();
    }
    let query = ListQuery::parse(&filters)?;
    let form = filters_form(base, &choices, environment.as_deref(), &query);
    let Some(environment) = environment else {
        let main = html! {
            (form)
            p.muted { "Choose an environment." }
        };
        return Ok(Page {
            title: "operations",
            base,
            grant: Some(grant),
            env: None,
            op: None,
            main,
            script: None,
        }
        .render(StatusCode::OK));
    };
    check_environment(grant, &environment)?;
    let page = page(admin, &environment, &query).await?;
    let main = html! {
        (form)
        h1 { "Operations of " (environment) }
        (operations_table(base, &page))
        @if let Some(cursor) = &page.next_cursor {
            p { a #older href=(older_href(base, &environment, cursor, &query)) { "Older operations →" } }
        }
        (report::card(base, &environment))
    };
    Ok(Page {
        title: &format!("operations of {environment}"),
        base,
        grant: Some(grant),
        env: Some(&environment),
        op: None,
        main,
        script: Some(LIST_JS),
    }
    .render(StatusCode::OK))
}

/// The environment (a choice of the token's, or free text for a token that sees all), the
/// status and the resource.
fn filters_form(
    base: &str,
    choices: &[String],
    environment: Option<&str>,
    query: &ListQuery,
) -> Markup {
    html! {
        form.filters.card method="get" action={ (base) "/" } {
            label {
                "Environment"
                @if choices.is_empty() {
                    input name="env" #env value=(environment.unwrap_or("")) required;
                } @else {
                    select name="env" #env {
                        @for choice in choices {
                            option selected[environment == Some(choice.as_str())] { (choice) }
                        }
                    }
                }
            }
            label {
                "Status"
                select name="status" #filter-status {
                    option value="" { "any" }
                    @for status in Status::ALL {
                        option value=(status.as_str()) selected[query.statuses == [status]] {
                            (status)
                        }
                    }
                }
            }
            label {
                "Resource"
                input name="resource" #filter-resource
                    value=(query.resource.as_deref().unwrap_or("")) placeholder="any";
            }
            button type="submit" { "Show" }
        }
    }
}

/// The next page's link: the same filters, after `cursor`.
fn older_href(base: &str, environment: &str, cursor: &str, query: &ListQuery) -> String {
    let mut href = format!("{base}/?env={}&cursor={}", enc(environment), enc(cursor));
    for status in &query.statuses {
        href.push_str("&status=");
        href.push_str(status.as_str());
    }
    if let Some(resource) = &query.resource {
        href.push_str("&resource=");
        href.push_str(&enc(resource));
    }
    href
}

fn operations_table(base: &str, page: &OperationPage) -> Markup {
    html! {
        div.scroll #operations {
            table {
                thead {
                    tr {
                        th { "Status" }
                        th { "Operation" }
                        th { "Saga" }
                        th { "Resource" }
                        th.wide { "Actor" }
                        th { "Created (UTC)" }
                        th.wide { "Finished" }
                        th.wide { "Detail" }
                    }
                }
                tbody {
                    @for op in &page.operations {
                        (operation_row(base, op))
                    }
                    @if page.operations.is_empty() {
                        tr { td.muted colspan="8" { "No operations match." } }
                    }
                }
            }
        }
    }
}

/// A row; `data-finished` tells `list.js` whether to keep refreshing.
fn operation_row(base: &str, op: &OperationSummary) -> Markup {
    let finished = op.status.is_finished() || op.status == Status::Damaged;
    html! {
        tr data-id=(op.id) data-finished=(finished) {
            td { (badge(op.status)) }
            td.id {
                @if op.id.is_empty() {
                    span.muted { "(unreadable index entry)" }
                } @else {
                    a.op-link href={ (base) "/ops/" (enc(&op.id)) } { (op.id) }
                }
            }
            td { (op.saga) }
            td { (op.resource_type) "/" (op.resource) }
            td.wide { (op.actor) }
            td.time { (short_time(&op.created_at)) }
            td.time.wide { (op.finished_at.as_deref().map(short_time).unwrap_or_default()) }
            td.wide {
                @if let Some(step) = &op.failed_step {
                    "failed at " (step)
                } @else if let Some(problem) = &op.problem {
                    (problem)
                }
            }
        }
    }
}
