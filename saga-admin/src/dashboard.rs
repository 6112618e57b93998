//! The dashboard: server-rendered pages over the same data as the API, with a little inline
//! JavaScript for the live log, the cancel and the refreshes.
//!
//! The browser signs in once with its token (a form POSTed to `/login`), which the router keeps
//! in an `HttpOnly`, `SameSite=Strict` cookie: the pages, their `fetch`es and the `EventSource`
//! of the log stream (which cannot send headers) are then authenticated by it, and the token
//! never appears in a URL.

use std::fmt::Write as _;

use axum::extract::rejection::{FormRejection, PathRejection, QueryRejection};
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use serde::Deserialize;

use crate::admin::{base_path, cookie, operation_id, query_pairs, Admin, COOKIE};
use crate::api::{
    AttemptResult, CompensationStatus, OperationDetail, OperationPage, Status, StepStatus,
};
use crate::auth::{Environments, Grant};
use crate::error::ApiError;
use crate::ops::{check_environment, detail, page};
use crate::query::ListQuery;

const STYLE: &str = include_str!("dashboard/style.css");
const LIST_JS: &str = include_str!("dashboard/list.js");
const OPERATION_JS: &str = include_str!("dashboard/operation.js");

/// Escapes text for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query or path component.
fn enc(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

struct Page<'a> {
    title: &'a str,
    base: &'a str,
    grant: Option<&'a Grant>,
    body_attrs: String,
    main: String,
    script: &'static str,
}

impl Page<'_> {
    fn render(self, status: StatusCode) -> Response {
        let who = match self.grant {
            Some(grant) => format!(
                "<span class=\"who\">signed in as <b>{}</b></span>\
                 <form method=\"post\" action=\"{}/logout\"><button class=\"plain\" type=\"submit\">Sign out</button></form>",
                esc(grant.principal()),
                esc(self.base)
            ),
            None => String::new(),
        };
        let script = if self.script.is_empty() {
            String::new()
        } else {
            format!("<script>{}</script>", self.script)
        };
        let html = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title} · saga</title><style>{STYLE}</style></head>\
             <body data-base=\"{base}\"{attrs}><header><a class=\"home\" href=\"{base}/\">saga operations</a>{who}</header>\
             <main>{main}</main>{script}</body></html>",
            title = esc(self.title),
            base = esc(self.base),
            attrs = self.body_attrs,
            main = self.main,
        );
        let mut response = (status, Html(html)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
        response
    }
}

/// An error page, or the sign-in form for a request without a (good) token.
fn error_page(base: &str, grant: Option<&Grant>, error: ApiError) -> Response {
    if error.status == StatusCode::UNAUTHORIZED {
        return login_page(
            base,
            error.message.contains("refused").then_some("The token was refused."),
        );
    }
    let main = format!(
        "<h1>{}</h1><p class=\"error\" id=\"error\">{}</p><p><a href=\"{}/\">Back to the list</a></p>",
        error.status.as_u16(),
        esc(&error.message),
        esc(base)
    );
    Page { title: "error", base, grant, body_attrs: String::new(), main, script: "" }
        .render(error.status)
}

fn login_page(base: &str, problem: Option<&str>) -> Response {
    let problem = problem
        .map(|p| format!("<p class=\"error\" id=\"login-error\">{}</p>", esc(p)))
        .unwrap_or_default();
    let main = format!(
        "<h1>Sign in</h1><div class=\"card\"><form class=\"stack\" id=\"login-form\" method=\"post\" action=\"{}/login\">\
         <label>Token<input type=\"password\" name=\"token\" id=\"login-token\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\" id=\"login-submit\">Sign in</button>{problem}\
         <p class=\"muted\">The token is kept in a cookie of this site only (HttpOnly, SameSite=Strict) until you sign out.</p>\
         </form></div>",
        esc(base)
    );
    let status = if problem.is_empty() { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
    Page { title: "sign in", base, grant: None, body_attrs: String::new(), main, script: "" }
        .render(status)
}

fn badge(status: Status) -> String {
    format!("<span class=\"badge {0}\" data-status=\"{0}\">{1}</span>", status.as_str(), status)
}

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
    let mut main = String::new();
    let picker = match &choices[..] {
        [] => format!(
            "<label>Environment<input name=\"env\" id=\"env\" value=\"{}\" required></label>",
            esc(environment.as_deref().unwrap_or(""))
        ),
        choices => {
            let mut options = String::new();
            for choice in choices {
                let selected =
                    if environment.as_deref() == Some(choice) { " selected" } else { "" };
                let _ = write!(options, "<option{selected}>{}</option>", esc(choice));
            }
            format!("<label>Environment<select name=\"env\" id=\"env\">{options}</select></label>")
        }
    };
    let mut status_options = String::from("<option value=\"\">any</option>");
    for status in Status::ALL {
        let selected = if query.statuses == [status] { " selected" } else { "" };
        let _ = write!(
            status_options,
            "<option value=\"{}\"{selected}>{status}</option>",
            status.as_str()
        );
    }
    let _ = write!(
        main,
        "<form class=\"filters card\" method=\"get\" action=\"{base}/\">{picker}\
         <label>Status<select name=\"status\" id=\"filter-status\">{status_options}</select></label>\
         <label>Resource<input name=\"resource\" id=\"filter-resource\" value=\"{resource}\" placeholder=\"any\"></label>\
         <button type=\"submit\">Show</button></form>",
        base = esc(base),
        resource = esc(query.resource.as_deref().unwrap_or("")),
    );
    let Some(environment) = environment else {
        main.push_str("<p class=\"muted\">Choose an environment.</p>");
        return Ok(Page {
            title: "operations",
            base,
            grant: Some(grant),
            body_attrs: String::new(),
            main,
            script: "",
        }
        .render(StatusCode::OK));
    };
    check_environment(grant, &environment)?;
    let page = page(admin, &environment, &query).await?;
    let _ = write!(main, "<h1>Operations of {}</h1>", esc(&environment));
    main.push_str(&operations_table(base, &page));
    if let Some(cursor) = &page.next_cursor {
        let mut href = format!("{}/?env={}&cursor={}", esc(base), enc(&environment), enc(cursor));
        for status in &query.statuses {
            let _ = write!(href, "&status={}", status.as_str());
        }
        if let Some(resource) = &query.resource {
            let _ = write!(href, "&resource={}", enc(resource));
        }
        let _ = write!(main, "<p><a id=\"older\" href=\"{href}\">Older operations →</a></p>");
    }
    let report = format!("{}/api/v1/environments/{}/report.csv", esc(base), enc(&environment));
    let _ = write!(
        main,
        "<h2>Activity report</h2><div class=\"card\"><p><a id=\"report-link\" href=\"{report}\" download>Download this week's activity (CSV)</a></p>\
         <form class=\"filters\" id=\"report-form\" action=\"{report}\">\
         <label>From (UTC day)<input type=\"date\" id=\"report-since\" required></label>\
         <label>To (UTC day, included)<input type=\"date\" id=\"report-until\" required></label>\
         <button type=\"submit\">Download CSV</button><span id=\"report-message\" class=\"error\"></span></form></div>"
    );
    Ok(Page {
        title: &format!("operations of {environment}"),
        base,
        grant: Some(grant),
        body_attrs: format!(" data-env=\"{}\"", esc(&environment)),
        main,
        script: LIST_JS,
    }
    .render(StatusCode::OK))
}

fn operations_table(base: &str, page: &OperationPage) -> String {
    let mut rows = String::new();
    for op in &page.operations {
        let link = if op.id.is_empty() {
            "<span class=\"muted\">(unreadable index entry)</span>".to_owned()
        } else {
            format!(
                "<a class=\"op-link\" href=\"{}/ops/{}\">{}</a>",
                esc(base),
                enc(&op.id),
                esc(&op.id)
            )
        };
        let detail = op
            .failed_step
            .as_deref()
            .map(|s| format!("failed at {}", esc(s)))
            .or_else(|| op.problem.as_deref().map(esc))
            .unwrap_or_default();
        let _ = write!(
            rows,
            "<tr data-id=\"{id}\" data-finished=\"{finished}\"><td>{status}</td><td class=\"id\">{link}</td>\
             <td>{saga}</td><td>{rtype}/{resource}</td><td class=\"wide\">{actor}</td>\
             <td class=\"time\">{created}</td><td class=\"time wide\">{finished_at}</td><td class=\"wide\">{detail}</td></tr>",
            id = esc(&op.id),
            finished = op.status.is_finished() || op.status == Status::Damaged,
            status = badge(op.status),
            saga = esc(&op.saga),
            rtype = esc(&op.resource_type),
            resource = esc(&op.resource),
            actor = esc(&op.actor),
            created = esc(&short_time(&op.created_at)),
            finished_at = esc(&op.finished_at.as_deref().map(short_time).unwrap_or_default()),
        );
    }
    if page.operations.is_empty() {
        rows.push_str("<tr><td colspan=\"8\" class=\"muted\">No operations match.</td></tr>");
    }
    format!(
        "<div class=\"scroll\" id=\"operations\"><table><thead><tr><th>Status</th><th>Operation</th><th>Saga</th>\
         <th>Resource</th><th class=\"wide\">Actor</th><th>Created (UTC)</th><th class=\"wide\">Finished</th>\
         <th class=\"wide\">Detail</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )
}

/// `2025-01-31T12:00:00.123Z` as `2025-01-31 12:00:00`.
fn short_time(rfc3339: &str) -> String {
    rfc3339.get(..19).map(|t| t.replace('T', " ")).unwrap_or_else(|| rfc3339.to_owned())
}

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
    let mut main = String::new();
    let _ = write!(
        main,
        "<p><a href=\"{base}/?env={env}\">← Operations of {env_text}</a></p><h1>Operation <span class=\"mono\">{id}</span></h1>",
        base = esc(base),
        env = enc(&op.environment),
        env_text = esc(&op.environment),
        id = esc(&op.id),
    );
    // The summary: refreshed in place when the stream ends.
    let mut facts = String::new();
    let mut fact = |name: &str, value: String| {
        let _ = write!(facts, "<dt>{name}</dt><dd>{value}</dd>");
    };
    fact("Status", format!("<span id=\"status\">{}</span>", badge(op.status)));
    fact("Saga", format!("{} v{}", esc(&op.saga), op.version));
    fact("Resource", format!("{}/{}", esc(&op.resource_type), esc(&op.resource)));
    fact("Environment", esc(&op.environment));
    fact("Started by", esc(&op.actor));
    fact("Created", esc(&short_time(&op.created_at)));
    if let Some(finished) = &op.finished_at {
        fact("Finished", esc(&short_time(finished)));
    }
    if let Some(cancel) = &op.cancel {
        fact("Cancelled", format!("by {}: {}", esc(&cancel.actor), esc(&cancel.reason)));
    }
    if let Some(failure) = &op.failure {
        fact("Failed step", format!("{}: {}", esc(&failure.step), esc(&failure.error)));
    }
    if let Some(attention) = &op.attention {
        fact("Needs attention", format!("{}: {}", esc(&attention.step), esc(&attention.error)));
    }
    if let Some(waiting) = &op.waiting_for {
        fact(
            "Waiting for",
            format!("<a href=\"{}/ops/{}\">{}</a>", esc(base), enc(waiting), esc(waiting)),
        );
    }
    if !op.not_undone.is_empty() {
        let items: Vec<String> = op
            .not_undone
            .iter()
            .map(|n| format!("{} ({})", esc(&n.step), esc(&n.reason)))
            .collect();
        fact("Not undone", items.join("<br>"));
    }
    if let Some(problem) = &op.problem {
        fact("Problem", format!("<span class=\"error\">{}</span>", esc(problem)));
    }
    let _ =
        write!(main, "<div class=\"card\" id=\"summary\"><dl class=\"facts\">{facts}</dl></div>");
    // The verdict: known now if it finished, else filled in by the stream's end.
    match &op.outcome {
        Some(outcome) => {
            let _ = write!(
                main,
                "<div class=\"card verdict {0}\" id=\"verdict\" data-status=\"{0}\">Verdict: {1}</div>",
                outcome.status.as_str(),
                esc(&outcome.text)
            );
        }
        None => main.push_str("<div class=\"card verdict\" id=\"verdict\" hidden></div>"),
    }
    // The actions.
    let mut actions = String::from("<div id=\"actions\">");
    if !op.status.is_finished() && op.status != Status::RollingBack && grant.may_cancel() {
        actions.push_str(
            "<button class=\"danger\" type=\"button\" id=\"cancel-button\">Cancel operation…</button>\
             <form class=\"stack card\" id=\"cancel-form\" hidden><label>Why cancel it?\
             <textarea id=\"cancel-reason\" required maxlength=\"4000\"></textarea></label>\
             <div><button class=\"danger\" type=\"submit\" id=\"cancel-submit\">Cancel and roll back</button> \
             <button class=\"plain\" type=\"button\" id=\"cancel-back\">Keep it running</button></div></form>",
        );
    }
    actions.push_str("<p id=\"cancel-message\" class=\"muted\"></p></div>");
    main.push_str(&actions);
    main.push_str("<h2>Timeline</h2>");
    main.push_str(&timeline_table(op));
    let _ = write!(
        main,
        "<h2>Log <span class=\"muted\" id=\"stream-state\">connecting…</span></h2>\
         <pre class=\"log\" id=\"log\">(the log appears here)</pre>\
         <p><a id=\"log-download\" href=\"{}/api/v1/operations/{}/log\" download>Download the log</a></p>",
        esc(base),
        enc(&op.id)
    );
    Page {
        title: &format!("operation {}", op.id),
        base,
        grant: Some(grant),
        body_attrs: format!(" data-op=\"{}\"", esc(&op.id)),
        main,
        script: OPERATION_JS,
    }
    .render(StatusCode::OK)
}

fn timeline_table(op: &OperationDetail) -> String {
    let mut rows = String::new();
    for step in &op.steps {
        let status = match step.status {
            StepStatus::Running => "running",
            StepStatus::Retrying => "retrying",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
        };
        let mut attempts = String::new();
        for a in &step.attempts {
            let _ = write!(
                attempts,
                "<div>#{} {} {}",
                a.attempt,
                esc(&short_time(&a.started_at)),
                result(a.result)
            );
            if let Some(ms) = a.duration_ms {
                let _ = write!(attempts, " ({ms} ms)");
            }
            if let Some(error) = &a.error {
                let _ = write!(attempts, ": <span class=\"error\">{}</span>", esc(error));
            }
            attempts.push_str("</div>");
        }
        let compensation = match step.compensation.status {
            CompensationStatus::NotStarted => "—".to_owned(),
            CompensationStatus::Running => "compensating".to_owned(),
            CompensationStatus::Retrying => "retrying compensation".to_owned(),
            CompensationStatus::Succeeded => "compensated".to_owned(),
            CompensationStatus::Failed => {
                "<span class=\"error\">compensation failed</span>".to_owned()
            }
        };
        let mut compensation = compensation;
        for a in &step.compensation.attempts {
            if let Some(error) = &a.error {
                let _ = write!(
                    compensation,
                    "<div class=\"error\">#{}: {}</div>",
                    a.attempt,
                    esc(error)
                );
            }
        }
        if let Some(reason) = &step.not_undone {
            let _ = write!(compensation, "<div class=\"error\">not undone: {}</div>", esc(reason));
        }
        let _ = write!(
            rows,
            "<tr data-step=\"{name}\"><td>{name}</td><td><span class=\"badge {status}\">{status}</span></td>\
             <td class=\"attempts\">{attempts}</td><td>{compensation}</td></tr>",
            name = esc(&step.name),
        );
    }
    if op.steps.is_empty() {
        rows.push_str("<tr><td colspan=\"4\" class=\"muted\">No step started yet.</td></tr>");
    }
    format!(
        "<div class=\"scroll steps\" id=\"timeline\"><table><thead><tr><th>Step</th><th>Status</th>\
         <th>Attempts (UTC)</th><th>Compensation</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )
}

fn result(result: AttemptResult) -> &'static str {
    match result {
        AttemptResult::Running => "running",
        AttemptResult::Succeeded => "succeeded",
        AttemptResult::FailedWillRetry => "failed, retried",
        AttemptResult::Failed => "failed",
        AttemptResult::FailedWithoutEffect => "failed without effect",
        AttemptResult::Unknown => "cut short",
    }
}

/// The sign-in form's body.
#[derive(Deserialize)]
pub(crate) struct Login {
    token: String,
}

/// `POST /login`: checks the token and keeps it in the cookie.
pub(crate) async fn login(
    State(admin): State<Admin>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    form: Result<Form<Login>, FormRejection>,
) -> Response {
    let base = base_path(&original, &uri);
    let Ok(Form(Login { token })) = form else {
        return login_page(&base, Some("Send the sign-in form."));
    };
    let token = token.trim();
    // A cookie value cannot hold every character; such a token works with the CLI and the API.
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic() && !b";,\"\\".contains(&b)) {
        return login_page(&base, Some("The token was refused."));
    }
    if let Err(e) = admin.authorizer.authorize(token).await {
        return error_page(&base, None, e.into());
    }
    let path = if base.is_empty() { "/" } else { base.as_str() };
    let secure = if admin.secure_cookie { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={token}; Path={path}; HttpOnly; SameSite=Strict{secure}");
    redirect(&format!("{base}/"), Some(cookie))
}

/// `POST /logout`: forgets the cookie.
pub(crate) async fn logout(
    State(admin): State<Admin>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let base = base_path(&original, &uri);
    let path = if base.is_empty() { "/" } else { base.as_str() };
    let secure = if admin.secure_cookie { "; Secure" } else { "" };
    let had = cookie(&headers, COOKIE).is_some();
    let cookie = had
        .then(|| format!("{COOKIE}=; Path={path}; HttpOnly; SameSite=Strict; Max-Age=0{secure}"));
    redirect(&format!("{base}/"), cookie)
}

fn redirect(location: &str, cookie: Option<String>) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, value);
    }
    if let Some(value) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::SET_COOKIE, value);
    }
    response
}
