//! TLS against the second server of `scripts/services/postgres.sh` (`SAGA_TEST_POSTGRES_TLS_URL`):
//! it takes TLS connections only (`hostssl` lines), with a certificate for `localhost` and
//! `127.0.0.1` issued by the authority in `SAGA_TEST_POSTGRES_TLS_CA`. Each mode connects or is
//! refused as libpq's would be, the refusal naming the host and the check that failed; the
//! server's own `pg_stat_ssl` says whether a connection of the store used TLS.

use std::error::Error as _;

use saga_core::store::{Store, StoreError, WakeUp};
use saga_core::OperationId;
use saga_store_postgres::testing::{tls_server, TlsServer};
use saga_store_postgres::{PostgresError, PostgresStore, SslMode, TlsProblem};
use tokio_postgres::Client;

use crate::support::{admin, created, listening, started, url, Schema, EVENT, LONG};

/// A refused connect's TLS error: the host it names, the mode, the problem, the whole message.
fn refusal(
    what: &str,
    answer: Result<PostgresStore, StoreError>,
) -> (String, SslMode, TlsProblem, String) {
    let e = match answer {
        Ok(store) => panic!("{what}: connected ({store:?})"),
        Err(e) => e,
    };
    assert!(!e.is_transient(), "{what}: a refusal over TLS is not worth retrying: {e:?}");
    match e.source().and_then(|s| s.downcast_ref::<PostgresError>()) {
        Some(PostgresError::Tls { host, sslmode, problem }) => {
            (host.clone(), *sslmode, problem.clone(), e.to_string())
        }
        _ => panic!("{what}: not a TLS refusal: {e:?}"),
    }
}

/// Connects a store in `schema` to `url` (which differs from the schema's when a test changes
/// the host or the mode).
async fn connect(url: &str, schema: &Schema) -> Result<PostgresStore, StoreError> {
    PostgresStore::connect(url, schema.options()).await
}

/// A store works: an Operation is created, appended to and read back whole.
async fn works(store: &PostgresStore) {
    let id = OperationId::new();
    let lease = store.create(&created(id, "prod", 1), "tls", LONG).await.expect("creates");
    store.append(&lease, &[started(id, 1)]).await.expect("appends");
    let records = store.read(id).await.expect("reads");
    assert_eq!(records, vec![created(id, "prod", 1), started(id, 1)]);
}

/// How many of the server's sessions of application `name` run over TLS, and how many do not.
async fn sessions_by_tls(admin: &Client, name: &str) -> (i64, i64) {
    let row = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = $1",
            &[&name],
        )
        .await
        .expect("reading pg_stat_ssl");
    (row.get(0), row.get(1))
}

/// The TLS server's URL with its host name replaced by `host`, still reaching the server at
/// 127.0.0.1 (`hostaddr`, as in libpq: the address connected to, while TLS checks `host`).
fn by_name(server: &TlsServer, host: &str) -> String {
    let replaced = server.url.replacen("@127.0.0.1:", &format!("@{host}:"), 1);
    assert_ne!(replaced, server.url, "the TLS server's URL names 127.0.0.1: {}", server.url);
    format!("{replaced}?hostaddr=127.0.0.1")
}

/// `verify-full` with the server's authority: the store connects, works, and every connection
/// it makes (the pool's, the notification listener's) runs over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connects_every_connection_over_tls_and_the_store_works() {
    let Some(server) =
        tls_server("verify_full_connects_every_connection_over_tls_and_the_store_works")
    else {
        return;
    };
    let url = server.with(&format!("sslmode=verify-full&sslrootcert={}", server.ca));
    let schema = Schema::new(&url);
    let store = schema.store().await;
    assert_eq!(store.ssl_mode(), SslMode::VerifyFull);
    works(&store).await;

    // The listener connects in the background; its first connection is told.
    let Some(mut wake_ups) = store.wake_ups() else { panic!("a PostgreSQL store has wake-ups") };
    match tokio::time::timeout(EVENT, wake_ups.recv()).await {
        Ok(Ok(WakeUp::Missed)) => {}
        other => panic!("the listener's first connection: {other:?}"),
    }
    let admin = admin(&url).await;
    listening(&admin, &schema.name, 1).await;
    let (tls, plain) = sessions_by_tls(&admin, &schema.name).await;
    assert!(
        tls >= 2 && plain == 0,
        "the pool's and the listener's sessions: {tls} TLS, {plain} plain"
    );

    // The root certificates may come from the options instead of the URL.
    let options_url = server.with("sslmode=verify-full");
    let store = PostgresStore::connect(&options_url, schema.options().ssl_root_cert(&server.ca))
        .await
        .expect("verify-full with the options' root certificates");
    works(&store).await;
}

/// A certificate that is not valid for the host name connected to: refused by `verify-full`,
/// saying which names it holds; accepted by `verify-ca`, which checks the authority only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_host_name_is_refused_by_verify_full_and_accepted_by_verify_ca() {
    let Some(server) =
        tls_server("a_wrong_host_name_is_refused_by_verify_full_and_accepted_by_verify_ca")
    else {
        return;
    };
    let base = by_name(&server, "127.0.0.2");
    let schema = Schema::new(&server.url);

    let full = format!("{base}&sslmode=verify-full&sslrootcert={}", server.ca);
    let (host, mode, problem, text) = refusal("verify-full", connect(&full, &schema).await);
    assert_eq!((host.as_str(), mode), ("127.0.0.2", SslMode::VerifyFull));
    match &problem {
        TlsProblem::WrongHostName { presented } => assert!(
            presented.iter().any(|n| n == "localhost")
                && presented.iter().any(|n| n == "127.0.0.1"),
            "the names the certificate holds: {presented:?}"
        ),
        other => panic!("verify-full with a wrong host name: {other:?}"),
    }
    assert!(
        text.contains("not valid for the host name 127.0.0.2") && text.contains("verify-ca"),
        "{text}"
    );

    let ca = format!("{base}&sslmode=verify-ca&sslrootcert={}", server.ca);
    let store = connect(&ca, &schema).await.expect("verify-ca does not check the host name");
    assert_eq!(store.ssl_mode(), SslMode::VerifyCa);
    works(&store).await;
}

/// A certificate issued by an authority the roots do not hold is refused by every mode that
/// checks it: `verify-full`, `verify-ca`, and `require` given root certificates (as libpq).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_certificate_authority_is_refused() {
    let Some(server) = tls_server("an_unknown_certificate_authority_is_refused") else { return };
    let schema = Schema::new(&server.url);
    for mode in [SslMode::VerifyFull, SslMode::VerifyCa, SslMode::Require] {
        let url = server.with(&format!("sslmode={mode}&sslrootcert={}", server.other_ca));
        let (host, refused_mode, problem, text) =
            refusal(&format!("{mode} with another authority"), connect(&url, &schema).await);
        assert_eq!((host.as_str(), refused_mode), ("127.0.0.1", mode));
        match &problem {
            TlsProblem::UnknownCa { roots } => assert!(roots.contains(&server.other_ca), "{roots}"),
            other => panic!("{mode} with another authority: {other:?}"),
        }
        assert!(text.contains("issued by an unknown certificate authority"), "{text}");
    }
    // The URL's root certificates win over the options'.
    let url = server.with(&format!("sslmode=verify-full&sslrootcert={}", server.other_ca));
    let answer = PostgresStore::connect(&url, schema.options().ssl_root_cert(&server.ca)).await;
    let (_, _, problem, _) = refusal("the URL's roots over the options'", answer);
    assert!(matches!(problem, TlsProblem::UnknownCa { .. }), "{problem:?}");
}

/// A plain connection (`sslmode=disable`) to the server that takes TLS only is refused by the
/// server, and the error says that TLS is what it wants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_connection_is_refused_by_a_server_that_requires_tls() {
    let Some(server) = tls_server("a_plain_connection_is_refused_by_a_server_that_requires_tls")
    else {
        return;
    };
    let schema = Schema::new(&server.url);
    let url = server.with("sslmode=disable");
    let (host, mode, problem, text) = refusal("sslmode=disable", connect(&url, &schema).await);
    let port = server.url.rsplit(':').next().and_then(|tail| tail.split('/').next()).unwrap_or("");
    assert_eq!((host, mode), (format!("127.0.0.1:{port}"), SslMode::Disable));
    match &problem {
        TlsProblem::RequiredByServer { server_said } => {
            assert!(server_said.contains("no encryption"), "{server_said}")
        }
        other => panic!("sslmode=disable: {other:?}"),
    }
    assert!(
        text.contains("refused a connection without TLS") && text.contains("sslmode=require"),
        "{text}"
    );
}

/// `require` without root certificates encrypts without checking the certificate (as libpq);
/// `prefer`, the default, takes TLS when the server offers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_and_prefer_connect_over_tls_without_root_certificates() {
    let Some(server) = tls_server("require_and_prefer_connect_over_tls_without_root_certificates")
    else {
        return;
    };
    let admin =
        admin(&server.with(&format!("sslmode=verify-full&sslrootcert={}", server.ca))).await;
    for (parameters, mode) in [("sslmode=require", SslMode::Require), ("", SslMode::Prefer)] {
        let url = if parameters.is_empty() { server.url.clone() } else { server.with(parameters) };
        let schema = Schema::new(&url);
        let store = schema.store().await;
        assert_eq!(store.ssl_mode(), mode);
        works(&store).await;
        let (tls, plain) = sessions_by_tls(&admin, &schema.name).await;
        assert!(tls >= 1 && plain == 0, "{mode}: {tls} TLS sessions, {plain} plain");
    }
}

/// Against the server without TLS: `require` is refused, saying the server does not support
/// TLS; `prefer` falls back to a plain connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tls_refuses_require_and_serves_prefer_in_plain() {
    let test = "a_server_without_tls_refuses_require_and_serves_prefer_in_plain";
    let Some(plain_url) = url(test) else { return };
    let schema = Schema::new(&plain_url);
    let sep = if plain_url.contains('?') { '&' } else { '?' };
    let url = format!("{plain_url}{sep}sslmode=require");
    let (host, mode, problem, text) = refusal("require without TLS", connect(&url, &schema).await);
    assert!(host.starts_with("127.0.0.1:"), "{host}");
    assert_eq!((mode, problem), (SslMode::Require, TlsProblem::NotSupported));
    assert!(text.contains("does not support TLS, which sslmode=require requires"), "{text}");

    let store = connect(&format!("{plain_url}{sep}sslmode=prefer"), &schema)
        .await
        .expect("prefer falls back to a plain connection");
    works(&store).await;
    let (tls, plain) = sessions_by_tls(&admin(&plain_url).await, &schema.name).await;
    assert!(tls == 0 && plain >= 1, "prefer without TLS: {tls} TLS sessions, {plain} plain");
}
