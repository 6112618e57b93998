//! The frame of every page, the headers every page answers with, the error page, and the
//! pieces the pages share.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, PreEscaped};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::api::Status;
use crate::auth::Grant;
use crate::error::ApiError;

use super::sign_in;

const STYLE: &str = include_str!("style.css");

/// What a URL component keeps as it is: letters, digits and `-_.~` (RFC 3986's unreserved).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Percent-encodes a query or path component.
pub(super) fn enc(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

/// A page: its `<main>` inside the frame every page shares.
pub(super) struct Page<'a> {
    /// The title, before ` · saga`.
    pub(super) title: &'a str,
    /// Where the router is mounted (`""` at the root); the scripts read it from the body's
    /// `data-base`.
    pub(super) base: &'a str,
    /// Who is signed in, shown with a sign-out button.
    pub(super) grant: Option<&'a Grant>,
    /// The environment of a list page (the body's `data-env`).
    pub(super) env: Option<&'a str>,
    /// The Operation of an Operation's page (the body's `data-op`, read by `operation.js`).
    pub(super) op: Option<&'a str>,
    /// The content.
    pub(super) main: Markup,
    /// A static script, run at the end of the body.
    pub(super) script: Option<&'static str>,
}

impl Page<'_> {
    /// The page as an HTML response that is neither cached, framed nor referred elsewhere.
    pub(super) fn render(self, status: StatusCode) -> Response {
        let markup = html! {
            (PreEscaped("<!doctype html>\n"))
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (self.title) " · saga" }
                    style { (PreEscaped(STYLE)) }
                }
                body data-base=(self.base) data-env=[self.env] data-op=[self.op] {
                    header {
                        a.home href={ (self.base) "/" } { "saga operations" }
                        @if let Some(grant) = self.grant {
                            span.who { "signed in as " b { (grant.principal()) } }
                            form method="post" action={ (self.base) "/logout" } {
                                button.plain type="submit" { "Sign out" }
                            }
                        }
                    }
                    main { (self.main) }
                    @if let Some(script) = self.script {
                        script { (PreEscaped(script)) }
                    }
                }
            }
        };
        let mut response = (status, markup).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
        response
    }
}

/// An error page, or the sign-in form for a request without a (good) token.
pub(super) fn error_page(base: &str, grant: Option<&Grant>, error: ApiError) -> Response {
    if error.status == StatusCode::UNAUTHORIZED {
        return sign_in::page(
            base,
            error.message.contains("refused").then_some("The token was refused."),
        );
    }
    let main = html! {
        h1 { (error.status.as_u16()) }
        p.error #error { (error.message) }
        p { a href={ (base) "/" } { "Back to the list" } }
    };
    Page { title: "error", base, grant, env: None, op: None, main, script: None }
        .render(error.status)
}

/// An Operation's status as a coloured badge (`data-status` is its API name).
pub(super) fn badge(status: Status) -> Markup {
    html! {
        span.badge.(status.as_str()) data-status=(status.as_str()) { (status) }
    }
}

/// `2025-01-31T12:00:00.123Z` as `2025-01-31 12:00:00`.
pub(super) fn short_time(rfc3339: &str) -> String {
    rfc3339.get(..19).map(|t| t.replace('T', " ")).unwrap_or_else(|| rfc3339.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_percent_encoded() {
        assert_eq!(enc("a-Z_0.~"), "a-Z_0.~");
        assert_eq!(enc("e<&>\"' /?é"), "e%3C%26%3E%22%27%20%2F%3F%C3%A9");
    }

    #[test]
    fn values_are_escaped() {
        let page = html! { p title=("\"><script>") { ("<b>&") } };
        assert_eq!(page.into_string(), "<p title=\"&quot;&gt;&lt;script&gt;\">&lt;b&gt;&amp;</p>");
    }
}
