//! Whether a test runs under CI, and what a test does when a service it needs is missing.
//!
//! This is the one place the workspace decides it. CI sets `CI` (GitHub Actions, GitLab and most
//! runners set `CI=true`; some set `CI=1`): any value but empty, `0` or `false` (in any case)
//! means "under CI". Under CI a missing service (Docker, the image registries, the AWS API
//! emulator, PostgreSQL, Chromium, `strace`) fails the test; outside CI the test prints why it
//! skips, on stderr past the harness's capture, and returns.
//!
//! ```
//! fn registry_url() -> Option<String> {
//!     match std::env::var("SAGA_TEST_REGISTRY") {
//!         Ok(url) => Some(url),
//!         Err(_) => saga_testkit::ci::unavailable(
//!             "pulls_from_registry",
//!             "SAGA_TEST_REGISTRY is not set; run `bash scripts/services/registry.sh start`",
//!         ),
//!     }
//! }
//! # let _ = registry_url;
//! ```

use std::io::Write as _;

/// Whether `CI` is set to anything but empty, `0` or `false` (in any case).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| means_ci(&value))
}

/// Whether a value of `CI` means "under CI".
pub fn means_ci(value: &str) -> bool {
    let value = value.trim();
    !(value.is_empty() || value == "0" || value.eq_ignore_ascii_case("false"))
}

/// A service test `test` needs is missing, for reason `why`: panics under CI (failing the
/// test), and otherwise prints `SKIPPED <test>: <why>` on stderr and returns `None`, so a test
/// can write `let Some(x) = find_service() else { return };`.
///
/// # Panics
///
/// Under CI, always: a missing service is a failure there.
#[track_caller]
pub fn unavailable<T>(test: &str, why: &str) -> Option<T> {
    assert!(!under_ci(), "{test}: {why}; under CI every service the tests need is required");
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    None
}

#[cfg(test)]
mod tests {
    use super::means_ci;

    #[test]
    fn ci_values() {
        for yes in ["true", "TRUE", "1", "yes", "github"] {
            assert!(means_ci(yes), "{yes}");
        }
        for no in ["", " ", "0", "false", "False"] {
            assert!(!means_ci(no), "{no:?}");
        }
    }
}
