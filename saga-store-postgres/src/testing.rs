//! **For tests only** (hidden from the docs; not part of the stable API): where the tests of
//! this crate and of the quickstart find their PostgreSQL server, and how they skip without one.
//!
//! `scripts/services/postgres.sh start` starts a server and writes `SAGA_TEST_POSTGRES_URL` to
//! `target/services/postgres.env`; `scripts/test.sh` does both and exports it. It starts a
//! second server that takes TLS connections only, and writes its URL and certificate
//! authorities beside (`SAGA_TEST_POSTGRES_TLS_URL`, `SAGA_TEST_POSTGRES_TLS_CA`,
//! `SAGA_TEST_POSTGRES_TLS_OTHER_CA`): see [`tls_server`]. And a primary with a synchronous
//! standby (`SAGA_TEST_POSTGRES_FAILOVER_*`): see [`failover_pair`].

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use saga_core::store::StoreError;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config};

use crate::tls;

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

fn unavailable<T>(test: &str, why: &str) -> Option<T> {
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

/// The server of `SAGA_TEST_POSTGRES_TLS_URL`: TLS connections only (`hostssl` lines in its
/// `pg_hba.conf`), with a certificate for `localhost` and `127.0.0.1` issued by the authority
/// in `ca`; `other_ca` is an authority that issued nothing the server shows.
#[derive(Clone, Debug)]
pub struct TlsServer {
    /// `postgres://saga:…@127.0.0.1:<port>/saga`, without TLS parameters.
    pub url: String,
    /// The PEM file of the authority that issued the server's certificate.
    pub ca: String,
    /// The PEM file of an authority that the server's certificate does not chain to.
    pub other_ca: String,
}

impl TlsServer {
    /// The URL with these parameters added (`sslmode=…&sslrootcert=…`).
    pub fn with(&self, parameters: &str) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}{parameters}", self.url)
    }
}

/// The TLS server for test `test`, or `None` (with the reason printed) when its variables are
/// not set or nothing listens there, outside CI; under CI either panics, as [`database_url`].
pub fn tls_server(test: &str) -> Option<TlsServer> {
    let var = |name: &str| match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => Ok(value.trim().to_owned()),
        _ => Err(format!("{name} is not set")),
    };
    let (url, ca, other_ca) = match (
        var("SAGA_TEST_POSTGRES_TLS_URL"),
        var("SAGA_TEST_POSTGRES_TLS_CA"),
        var("SAGA_TEST_POSTGRES_TLS_OTHER_CA"),
    ) {
        (Ok(url), Ok(ca), Ok(other_ca)) => (url, ca, other_ca),
        (Err(why), _, _) | (_, Err(why), _) | (_, _, Err(why)) => return unavailable(test, &why),
    };
    let listening = server_addr(&url).and_then(|addr| {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())
    });
    if let Err(why) = listening {
        return unavailable(
            test,
            &format!("the TLS database at {} does not answer: {why}", redact(&url)),
        );
    }
    for file in [&ca, &other_ca] {
        if let Err(e) = std::fs::metadata(file) {
            return unavailable(
                test,
                &format!("the certificate authority {file} is not there: {e}"),
            );
        }
    }
    Some(TlsServer { url, ca, other_ca })
}

/// The primary and synchronous standby of `SAGA_TEST_POSTGRES_FAILOVER_URL`, which
/// `scripts/services/postgres.sh` starts: a test that fails the primary over uses the pair up.
#[derive(Clone, Debug)]
pub struct FailoverPair {
    /// `postgres://saga:…@127.0.0.1:<primary>,127.0.0.1:<standby>/saga?target_session_attrs=read-write`.
    pub url: String,
    /// The primary's `127.0.0.1:<port>`.
    pub primary: String,
    /// The standby's `127.0.0.1:<port>`.
    pub standby: String,
    script: std::path::PathBuf,
}

impl FailoverPair {
    /// SIGKILLs every process of the primary, then promotes the standby and waits until it takes
    /// writes (`postgres.sh failover`); panics, failing the test, when the script fails.
    pub fn failover(&self) {
        run_script(&self.script, "failover");
    }
}

/// A fresh primary and synchronous standby for test `test` (`postgres.sh start-pair`: the
/// running pair when it is healthy, else a new one, as an earlier failover leaves it), or `None`
/// (with the reason printed) when `SAGA_TEST_POSTGRES_FAILOVER_URL` is not set, outside CI; under
/// CI that panics, as [`database_url`]. The script is the one of this source tree, run with the
/// caller's `SAGA_SERVICES_DIR`; it panics when it fails.
pub fn failover_pair(test: &str) -> Option<FailoverPair> {
    match std::env::var("SAGA_TEST_POSTGRES_FAILOVER_URL") {
        Ok(url) if !url.trim().is_empty() => {}
        _ => return unavailable(test, "SAGA_TEST_POSTGRES_FAILOVER_URL is not set"),
    }
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services/postgres.sh");
    let url = run_script(&script, "start-pair");
    let url = url.lines().last().unwrap_or_default().trim().to_owned();
    let config: Config = match url.parse() {
        Ok(config) => config,
        Err(e) => panic!("postgres.sh start-pair printed a URL that does not parse ({e})"),
    };
    let hosts = tls::hosts(&config);
    let Some((primary, standby)) = hosts.split_once(", ") else {
        panic!("postgres.sh start-pair printed a URL of one host: {hosts}");
    };
    let (primary, standby) = (primary.to_owned(), standby.to_owned());
    Some(FailoverPair { url, primary, standby, script })
}

/// Runs `postgres.sh <command>` to its end: its standard output. Panics when it fails.
fn run_script(script: &std::path::Path, command: &str) -> String {
    let output = std::process::Command::new("bash")
        .arg(script)
        .arg(command)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "postgres.sh {command} failed: {}\n{stderr}", output.status);
    eprint!("{stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A connection to `url` as the store makes them (its `sslmode` and `sslrootcert` included),
/// its driver spawned on the current runtime.
pub async fn client(url: &str) -> Result<Client, StoreError> {
    let context = "connecting a test client";
    let (url, url_tls) = tls::split_url(url).map_err(|e| StoreError::backend(context, e))?;
    let mut config: Config = url
        .parse()
        .map_err(|e| StoreError::backend(context, crate::PostgresError::InvalidUrl(e)))?;
    let settings =
        tls::Settings::resolve(url_tls, None).map_err(|e| StoreError::backend(context, e))?;
    config.ssl_mode(settings.tokio_mode());
    let connector = tls::Connector::new(&settings).map_err(|e| StoreError::backend(context, e))?;
    let (client, connection) = config
        .connect(connector)
        .await
        .map_err(|e| tls::connect_error(context, &config, settings.mode, e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The URL's first TCP host and port (its `hostaddr` when it names one).
pub fn server_addr(url: &str) -> Result<SocketAddr, String> {
    let (url, _) = tls::split_url(url).map_err(|e| e.to_string())?;
    let config: Config = url.parse().map_err(|e| format!("the URL does not parse: {e}"))?;
    let port = config.get_ports().first().copied().unwrap_or(5432);
    if let Some(addr) = config.get_hostaddrs().first() {
        return Ok(SocketAddr::new(*addr, port));
    }
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
