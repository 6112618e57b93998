//! The HTTP client of the CLI: URLs under the server's base, the token, and errors that say
//! what went wrong and where.

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Method, RequestBuilder, Response, Url};
use saga_admin::api::ErrorBody;

/// What went wrong.
#[derive(Debug)]
pub(crate) enum CliError {
    /// A flag or setting is missing or wrong.
    Usage(String),
    /// The server could not be reached or the connection broke.
    Reach { url: String, cause: String },
    /// The server answered with an error.
    Http { status: u16, message: String, parameter: Option<String>, url: String },
    /// The server's answer could not be read.
    Answer { url: String, cause: String },
    /// Standard output could not be written.
    Output(std::io::Error),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(message) => f.write_str(message),
            CliError::Reach { url, cause } => write!(f, "cannot reach {url}: {cause}"),
            CliError::Http { status, message, parameter, url } => {
                write!(f, "{status}: {message}")?;
                if let Some(parameter) = parameter {
                    write!(f, " (parameter {parameter})")?;
                }
                write!(f, " (from {url})")
            }
            CliError::Answer { url, cause } => {
                write!(f, "cannot read the answer of {url}: {cause}")
            }
            CliError::Output(e) => write!(f, "cannot write to standard output: {e}"),
        }
    }
}

/// The deepest cause of an error, as a person reads it: `connection refused` rather than
/// `error sending request for url (...)`.
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = error;
    while let Some(source) = deepest.source() {
        deepest = source;
    }
    let text = deepest.to_string();
    let text = match text.find(" (os error") {
        Some(at) => text[..at].to_owned(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "unknown error".to_owned(),
    }
}

/// A client of one server.
pub(crate) struct Client {
    http: reqwest::Client,
    base: Url,
    token: String,
}

impl Client {
    pub(crate) fn new(url: Option<String>, token: Option<String>) -> Result<Self, CliError> {
        let url = url.filter(|u| !u.trim().is_empty()).ok_or_else(|| {
            CliError::Usage("no server: give --url URL or set SAGA_URL".to_owned())
        })?;
        let token = token.filter(|t| !t.trim().is_empty()).ok_or_else(|| {
            CliError::Usage("no token: give --token TOKEN or set SAGA_TOKEN".to_owned())
        })?;
        let base = Url::parse(url.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| {
                CliError::Usage(format!("--url {url:?} is not an http:// or https:// URL"))
            })?;
        let http =
            reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build().map_err(
                |e| CliError::Usage(format!("cannot set up the HTTP client: {}", root_cause(&e))),
            )?;
        Ok(Client { http, base, token: token.trim().to_owned() })
    }

    /// The URL of `segments` under the base, with `query`.
    pub(crate) fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            path.extend(segments);
        }
        url.set_query(None);
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        url
    }

    pub(crate) fn request(&self, method: Method, url: &Url) -> RequestBuilder {
        let request = self.http.request(method, url.clone());
        match HeaderValue::from_str(&format!("Bearer {}", self.token)) {
            Ok(value) => request.header(AUTHORIZATION, value),
            Err(_) => request,
        }
    }

    /// Sends a request; an error answer becomes [`CliError::Http`] with the server's message.
    pub(crate) async fn send(
        &self,
        url: &Url,
        request: RequestBuilder,
    ) -> Result<Response, CliError> {
        let response = request
            .send()
            .await
            .map_err(|e| CliError::Reach { url: url.to_string(), cause: root_cause(&e) })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let (message, parameter) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => {
                let message = if status == 401 && body.message.contains("refused") {
                    "the token was refused".to_owned()
                } else {
                    body.message
                };
                (message, body.parameter)
            }
            Err(_) if text.trim().is_empty() => ("no message".to_owned(), None),
            Err(_) => (text.trim().chars().take(300).collect(), None),
        };
        Err(CliError::Http { status, message, parameter, url: url.to_string() })
    }

    /// GETs JSON.
    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &Url,
    ) -> Result<T, CliError> {
        let response = self.send(url, self.request(Method::GET, url)).await?;
        response
            .json()
            .await
            .map_err(|e| CliError::Answer { url: url.to_string(), cause: root_cause(&e) })
    }

    /// GETs bytes.
    pub(crate) async fn get_bytes(&self, url: &Url) -> Result<Vec<u8>, CliError> {
        let response = self.send(url, self.request(Method::GET, url)).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CliError::Reach { url: url.to_string(), cause: root_cause(&e) })?;
        Ok(bytes.to_vec())
    }
}
