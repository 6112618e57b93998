//! **For tests only** (hidden from the docs; not part of the stable API): where the tests of
//! this crate and of the quickstart find their PostgreSQL server, and how they skip without one.
//!
//! `scripts/services/postgres.sh start` starts a server and writes `SAGA_TEST_POSTGRES_URL` to
//! `target/services/postgres.env`; `scripts/test.sh` does both and exports it.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::Config;

/// Whether the tests run under CI, where a missing service is a failure: the workspace's one
/// rule, [`saga_testkit::ci::under_ci`].
pub fn ci() -> bool {
    saga_testkit::ci::under_ci()
}

/// The database URL for test `test`, or `None` (with the reason printed on stderr, past the
/// harness's capture) when it is not set or nothing listens there, outside CI. Under CI
/// ([`ci`]) either panics, failing the test.
pub fn database_url(test: &str) -> Option<String> {
    let url = match std::env::var("SAGA_TEST_POSTGRES_URL") {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => return unavailable(test, "SAGA_TEST_POSTGRES_URL is not set"),
    };
    let listening = server_addr(&url).and_then(|addr| {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())
    });
    if let Err(why) = listening {
        return unavailable(
            test,
            &format!("the database at {} does not answer: {why}", redact(&url)),
        );
    }
    Some(url)
}

fn unavailable(test: &str, why: &str) -> Option<String> {
    saga_testkit::ci::unavailable(
        test,
        &format!(
            "{why}; run `bash scripts/services/postgres.sh start` and export the variables of \
             target/services/postgres.env"
        ),
    )
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            let user = user.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The URL's first TCP host and port.
pub fn server_addr(url: &str) -> Result<SocketAddr, String> {
    let config: Config = url.parse().map_err(|e| format!("the URL does not parse: {e}"))?;
    let port = config.get_ports().first().copied().unwrap_or(5432);
    match config.get_hosts().first() {
        Some(Host::Tcp(host)) => (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| e.to_string())?
            .next()
            .ok_or_else(|| format!("{host} resolves to nothing")),
        _ => Err("the URL names no TCP host".into()),
    }
}

/// How many appends wait in `store`'s group-commit queue, not yet taken by its writer task (0
/// without group commit): a test that holds the writer's transaction sees its appends gather.
pub fn appends_queued(store: &crate::PostgresStore) -> usize {
    store.inner.writer.as_ref().map_or(0, |queue| queue.max_capacity() - queue.capacity())
}
