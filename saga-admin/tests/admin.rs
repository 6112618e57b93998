//! Black-box tests of saga-admin: the HTTP API against a real executor on the sled store, the
//! `saga` CLI in a second process, and the dashboard in headless Chromium over WebDriver.

#[path = "admin/support.rs"]
mod support;

#[path = "admin/api.rs"]
mod api;
#[path = "admin/browser.rs"]
mod browser;
#[path = "admin/cli.rs"]
mod cli;
