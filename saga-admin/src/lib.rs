//! The operator surface of the saga engine: an [`axum`] router that a control plane mounts
//! beside its own API, serving a JSON API, live log streams (Server-Sent Events), CSV activity
//! reports and a dashboard over an [`Executor`](saga_core::Executor); and the `saga` CLI over
//! that API (the `cli` feature, on by default).
//!
//! [`router`] takes an [`Admin`]: the executor and an [`Authorizer`], which the embedder
//! implements (or uses [`BearerTokens`]) to say, from a request's bearer token, which
//! environments the caller sees ([`Grant`]) and whether it may cancel. The wire types are in
//! [`api`].
//!
//! # Routes
//!
//! Every API route answers JSON (but the downloads) and needs `Authorization: Bearer <token>`
//! (or the dashboard's cookie). Times are RFC 3339 (`2025-01-31T00:00:00Z`; a `+` of an offset
//! must be sent as `%2B`, though a `+` decoded to a space is taken back).
//!
//! | route | answers |
//! |---|---|
//! | `GET /api/v1/me` | [`api::Me`]: what the token grants |
//! | `GET /api/v1/environments/{env}/operations` | [`api::OperationPage`]: newest first; `status` (repeatable or comma-separated: `running`, `rolling_back`, `needs_attention`, `succeeded`, `rolled_back`, `rollback_incomplete`, `abandoned`, `damaged`), `resource` (name), `resource_type`, `since` and `until` (creation time, `[since, until)`), `limit` (1 to 500, default 50), `cursor` (the `next_cursor` of the page before: the next page has the Operations created before that one) |
//! | `GET /api/v1/environments/{env}/report.csv` | the activity report as saga-core writes it (RFC 4180, formula cells neutralised), `Content-Disposition: attachment`; `since` and `until`, or neither for the current ISO week |
//! | `GET /api/v1/operations/{id}` | [`api::OperationDetail`]: status, step timeline (every attempt of `execute` and `compensate` with its times and error), outcome, what was not undone |
//! | `GET /api/v1/operations/{id}/log` | the log as text, `Content-Disposition: attachment` |
//! | `GET /api/v1/operations/{id}/log/stream` | `text/event-stream`: `line` events ([`api::LogEvent`], `id` = the line's `seq`; a `Last-Event-ID` resumes after it), `missed` events (`{"missed": n}` for a follower that fell behind), and one last `end` event ([`api::EndEvent`]: the outcome), after which the server closes the stream |
//! | `POST /api/v1/operations/{id}/cancel` | body [`api::CancelBody`] as `application/json`; 202 [`api::CancelAccepted`] once the cancel is durable; 409 if it already finished or is past its point of no return |
//! | `GET /` | the dashboard: sign-in form, then the Operations of `?env=` |
//! | `GET /ops/{id}` | the dashboard page of an Operation: timeline, live log, cancel |
//! | `POST /login`, `POST /logout` | the dashboard's sign-in (form field `token`) and sign-out |
//!
//! # Errors and authorization
//!
//! Errors answer [`api::ErrorBody`]: no token or a refused one is 401 with
//! `WWW-Authenticate: Bearer`; an Operation of an environment the token does not see is the
//! same 404 as an Operation that does not exist; an environment it does not see is 403 (which
//! says nothing about whether it exists); a bad id, time, period, filter, page size, cursor,
//! body or unknown parameter is 400 naming the `parameter`; an unavailable store is 503, a
//! damaged one 500, each with the store's message.
//!
//! The dashboard cannot send headers from an `EventSource`, so it signs in once: the token is
//! POSTed from a form to `/login` and kept in an `HttpOnly`, `SameSite=Strict` cookie
//! ([`Admin::secure_cookie`] adds `Secure`), never in a URL. A cancel must be sent as
//! `application/json`, which a cross-site form cannot do, so the cookie cannot be used to
//! cancel from another site.
//!
//! ```
//! use std::sync::Arc;
//! use saga_admin::{router, Admin, BearerTokens, Grant};
//! use saga_core::{Executor, MemoryStore};
//!
//! let executor = Executor::builder(Arc::new(MemoryStore::new())).build()?;
//! let tokens = BearerTokens::new()
//!     .token("admin-token", Grant::all("admin"))
//!     .token("viewer-token", Grant::only("viewer", ["staging"]).read_only());
//! let admin = Admin::new(executor, Arc::new(tokens));
//! // Beside the control plane's own routes; the dashboard is then at /admin/.
//! let app: axum::Router = axum::Router::new().nest("/admin", router(admin));
//! # let _ = app;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

mod admin;
pub mod api;
mod auth;
mod cancel;
mod dashboard;
mod error;
mod ops;
mod query;
mod report;
mod stream;
mod timeline;

pub use crate::admin::{router, Admin};
pub use crate::auth::{AuthError, Authorizer, BearerTokens, Environments, Grant};

/// Re-exported so that an [`Authorizer`] is implemented with the same macro version.
pub use async_trait::async_trait;
