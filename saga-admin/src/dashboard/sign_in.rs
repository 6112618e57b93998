//! Signing in and out: the form, `POST /login` (which keeps the token in the cookie) and
//! `POST /logout` (which forgets it).

use axum::extract::rejection::FormRejection;
use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;

use crate::admin::{base_path, cookie, Admin, COOKIE};

use super::layout::{error_page, Page};

/// The sign-in form; with `problem`, why the last try was refused (and a 401).
pub(super) fn page(base: &str, problem: Option<&str>) -> Response {
    let main = html! {
        h1 { "Sign in" }
        div.card {
            form.stack #login-form method="post" action={ (base) "/login" } {
                label {
                    "Token"
                    input type="password" name="token" #login-token
                        autocomplete="current-password" required;
                }
                button type="submit" #login-submit { "Sign in" }
                @if let Some(problem) = problem {
                    p.error #login-error { (problem) }
                }
                p.muted {
                    "The token is kept in a cookie of this site only (HttpOnly, SameSite=Strict) \
                     until you sign out."
                }
            }
        }
    };
    let status = if problem.is_none() { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
    Page { title: "sign in", base, grant: None, env: None, op: None, main, script: None }
        .render(status)
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
        return page(&base, Some("Send the sign-in form."));
    };
    let token = token.trim();
    // A cookie value cannot hold every character; such a token works with the CLI and the API.
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic() && !b";,\"\\".contains(&b)) {
        return page(&base, Some("The token was refused."));
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
