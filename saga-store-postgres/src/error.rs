//! This crate's own errors, and how PostgreSQL's errors become [`StoreError`]s.

use std::error::Error as _;

use deadpool_postgres::PoolError;
use saga_core::store::StoreError;
use tokio_postgres::error::SqlState;

use crate::tls::{SslMode, TlsProblem};

/// What this crate refuses, carried as the [`source`](std::error::Error::source) of a
/// [`StoreError::Backend`] (downcast it to tell the cases apart).
///
/// ```
/// use saga_core::store::StoreError;
/// use saga_store_postgres::PostgresError;
/// let e = StoreError::backend("connecting", PostgresError::NewerSchema { found: 9, supported: 1 });
/// let source = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<PostgresError>());
/// assert!(matches!(source, Some(PostgresError::NewerSchema { found: 9, .. })));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    /// The database's schema was migrated by a newer release of this crate.
    #[error(
        "the database schema is at version {found}, newer than this release of \
         saga-store-postgres knows (up to {supported}): upgrade saga-store-postgres on this \
         executor to the release that migrated it, or connect to another database or schema"
    )]
    NewerSchema {
        /// The version found in `saga_schema_version`.
        found: i32,
        /// The newest version this release knows.
        supported: i32,
    },
    /// The server does not make commits durable (`fsync = off`), and the options did not
    /// accept that.
    #[error(
        "the server runs with fsync = {value}: a commit it acknowledges may be lost in a crash; \
         set fsync = on in postgresql.conf (or, for throw-away test databases only, connect \
         with PostgresOptions::accept_fsync_off)"
    )]
    FsyncOff {
        /// The value the server showed.
        value: String,
    },
    /// The options name a schema that is not a plain lowercase identifier.
    #[error(
        "schema name {0:?} is not a lowercase identifier (a-z, 0-9 and _, not starting with a \
         digit, at most 63 bytes)"
    )]
    InvalidSchema(String),
    /// The connection URL does not parse.
    #[error("the connection URL does not parse: {0}")]
    InvalidUrl(#[source] tokio_postgres::Error),
    /// A TLS connection to a server failed one of its checks, or the server and the mode
    /// disagree on TLS: [`TlsProblem`] says which.
    #[error("{}", crate::tls::describe(host, *sslmode, problem))]
    Tls {
        /// The host as the connection names it (`host:port` when the whole connection was
        /// refused; the host name TLS checked when a handshake failed).
        host: String,
        /// The connection's `sslmode`.
        sslmode: SslMode,
        /// Which check failed.
        problem: TlsProblem,
    },
    /// The URL's `sslmode` and `sslrootcert` (with [`PostgresOptions`](crate::PostgresOptions)'s
    /// root certificates) ask for something libpq would refuse too.
    #[error("the TLS settings are refused: {0}")]
    InvalidTlsSettings(String),
    /// The URL asks for read-only sessions (`target_session_attrs=read-only`), on which the
    /// store cannot write.
    #[error(
        "the URL asks for read-only sessions (target_session_attrs=read-only), and the store \
         writes: leave target_session_attrs out, or set it to read-write (the store asks for \
         read-write sessions itself)"
    )]
    ReadOnlySessions,
    /// The root certificates named by `sslrootcert` or the options cannot be used.
    #[error("cannot use {roots} to check the server's certificate: {problem}")]
    RootCertificates {
        /// Which: `the root certificates in <path>`, or the system's.
        roots: String,
        /// What is wrong with them.
        problem: String,
    },
}

/// Whether a PostgreSQL error may pass: a dropped or refused connection, a serialization failure,
/// a deadlock, a server shutting down or starting up, too many connections.
pub(crate) fn is_transient(error: &tokio_postgres::Error) -> bool {
    // A failed TLS check (this crate's connector says which) stays failed.
    if tls_error(error).is_some() {
        return false;
    }
    if error.is_closed() {
        return true;
    }
    match error.code() {
        Some(code) => {
            let transient = [
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::QUERY_CANCELED,
                SqlState::LOCK_NOT_AVAILABLE,
            ];
            transient.contains(code) || code.code().starts_with("08")
        }
        // No SQLSTATE: an I/O error of the socket (reset, refused, timed out) is transient; a
        // protocol or conversion error is not.
        None => error.source().is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// A PostgreSQL error as a store error: [`StoreError::Transient`] when it may pass, else
/// [`StoreError::Backend`], with the error as the source.
/// The context names the server's message too (the error's own text is just "db error").
pub(crate) fn pg(context: impl Into<String>, error: tokio_postgres::Error) -> StoreError {
    let mut context = context.into();
    // The connector's own error says it all; tokio-postgres's wrapper adds only "error
    // performing TLS handshake".
    if let Some(PostgresError::Tls { host, sslmode, problem }) = tls_error(&error) {
        let tls =
            PostgresError::Tls { host: host.clone(), sslmode: *sslmode, problem: problem.clone() };
        return StoreError::backend(context, tls);
    }
    if let Some(db) = error.as_db_error() {
        context = format!("{context} (server said {}: {})", db.code().code(), db.message());
    }
    if is_transient(&error) {
        StoreError::transient(context, error)
    } else {
        StoreError::backend(context, error)
    }
}

/// The TLS error of this crate's connector that `error` carries, if any.
fn tls_error(error: &tokio_postgres::Error) -> Option<&PostgresError> {
    error.source().and_then(|s| s.downcast_ref::<PostgresError>())
}

/// A pool error as a store error: a timeout waiting for or making a connection, and a
/// connection error that may pass, are transient; a closed pool is unavailable.
pub(crate) fn pool_error(context: impl Into<String>, error: PoolError) -> StoreError {
    match error {
        PoolError::Backend(e) => pg(context, e),
        PoolError::Timeout(_) => StoreError::transient(context, error),
        PoolError::Closed => {
            StoreError::Unavailable(format!("{}: the pool is closed", context.into()))
        }
        other => StoreError::backend(context, other),
    }
}

/// A [`StoreError::Corrupt`] naming a table and key.
pub(crate) fn corrupt(place: impl Into<String>, problem: impl Into<String>) -> StoreError {
    StoreError::Corrupt { place: place.into(), problem: problem.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        let e = PostgresError::NewerSchema { found: 3, supported: 1 };
        let text = e.to_string();
        assert!(text.contains("version 3") && text.contains("upgrade"), "{text}");
        let e = PostgresError::FsyncOff { value: "off".into() };
        assert!(e.to_string().contains("fsync = on"));
    }
}
