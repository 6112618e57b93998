//! The dashboard: server-rendered pages over the same data as the API, with a little inline
//! JavaScript for the live log, the cancel and the refreshes.
//!
//! The browser signs in once with its token (a form POSTed to `/login`), which the router keeps
//! in an `HttpOnly`, `SameSite=Strict` cookie: the pages, their `fetch`es and the `EventSource`
//! of the log stream (which cannot send headers) are then authenticated by it, and the token
//! never appears in a URL.
//!
//! The HTML is written with [`maud`]'s `html!`, which escapes every value spliced into it; only
//! the static style sheet and scripts beside this file are inserted as they are. One file per
//! page:
//!
//! | file | what |
//! |---|---|
//! | `layout.rs` | the frame of every page (head, header, the signed-in principal, `<main>`, the script), the headers every page answers with, the error page, and the pieces the pages share (status badge, times, URL components) |
//! | `sign_in.rs` | the sign-in form, `POST /login` and `POST /logout` |
//! | `operations.rs` | `GET /`: the filters and the table of an environment's Operations (refreshed by `list.js`) |
//! | `report.rs` | the activity report of that page: this week's CSV, or a chosen period's (`list.js`) |
//! | `operation.rs` | `GET /ops/{id}`: an Operation's summary, verdict, cancel and live log (`operation.js`) |
//! | `steps.rs` | the timeline table of that page: each step's attempts and compensation |
//!
//! The scripts find the page's parts by their ids (`operations`, `summary`, `timeline`,
//! `actions`, `verdict`, `log`, ...), which the browser tests check too: keep them.

mod layout;
mod operation;
mod operations;
mod report;
mod sign_in;
mod steps;

pub(crate) use operation::operation;
pub(crate) use operations::list;
pub(crate) use sign_in::{login, logout};
