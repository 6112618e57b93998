//! Shared by the tests: the database from `SAGA_TEST_POSTGRES_URL`, a fresh schema per store,
//! an admin connection, and records to write.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use saga_core::log::{Record, RecordKind};
use saga_core::{OperationId, Outcome, Resource};
use saga_store_postgres::{PostgresOptions, PostgresStore};
use tokio_postgres::Client;

/// A lease that does not expire while a test runs.
pub const LONG: Duration = Duration::from_secs(600);

pub use saga_store_postgres::testing::{database_url as url, redact};

/// A schema of its own for one store, dropped (with everything in it) when this is.
#[derive(Debug)]
pub struct Schema {
    pub url: String,
    pub name: String,
}

static SCHEMAS: AtomicU64 = AtomicU64::new(0);

impl Schema {
    pub fn new(url: &str) -> Schema {
        let n = SCHEMAS.fetch_add(1, Ordering::Relaxed);
        let name = format!("saga_test_{}_{n}_{:08x}", std::process::id(), fastrand::u32(..));
        Schema { url: url.to_owned(), name }
    }

    /// Options naming this schema, and an application name to find the store's connections by.
    pub fn options(&self) -> PostgresOptions {
        PostgresOptions::default().schema(&self.name).application_name(&self.name)
    }

    /// A store in this schema.
    pub async fn store(&self) -> Arc<PostgresStore> {
        self.store_with(self.options()).await
    }

    pub async fn store_with(&self, options: PostgresOptions) -> Arc<PostgresStore> {
        match PostgresStore::connect(&self.url, options).await {
            Ok(store) => Arc::new(store),
            Err(e) => panic!("connecting to {} in schema {}: {e:?}", redact(&self.url), self.name),
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // A runtime of its own, on a thread of its own: drop may run inside the test's runtime.
        let dropped = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let admin = admin(&url).await;
                admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            let _ = writeln!(std::io::stderr(), "could not drop test schema {}", self.name);
        }
    }
}

/// A fresh schema and a store in it, for the conformance suite: `None` when the test skips.
pub fn conformance_store(test: &str) -> Option<impl Future<Output = (Schema, Arc<PostgresStore>)>> {
    let url = url(test)?;
    Some(async move {
        let schema = Schema::new(&url);
        let store = schema.store().await;
        (schema, store)
    })
}

/// A connection to the database, with the URL's TLS settings as the store reads them (its
/// driver spawned on the current runtime).
pub async fn admin(url: &str) -> Client {
    match saga_store_postgres::testing::client(url).await {
        Ok(client) => client,
        Err(e) => panic!("connecting to {} as admin: {e}", redact(url)),
    }
}

/// The database's clock, in Unix ms.
pub async fn db_now_ms(admin: &Client) -> u64 {
    let row = admin
        .query_one("SELECT (floor(extract(epoch FROM clock_timestamp()) * 1000))::bigint", &[])
        .await
        .expect("reading the database's clock");
    row.get::<_, i64>(0) as u64
}

/// Terminates every connection whose application name is `name`; returns how many.
pub async fn terminate(admin: &Client, name: &str) -> i64 {
    let row = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1 AND pid <> pg_backend_pid()",
            &[&name],
        )
        .await
        .expect("terminating backends");
    row.get(0)
}

pub fn created(id: OperationId, environment: &str, at_ms: u64) -> Record {
    Record {
        operation: id,
        seq: 0,
        at_ms,
        kind: RecordKind::OperationCreated {
            saga: "postgres-tests".into(),
            version: 1,
            params: b"{}".to_vec(),
            environment: environment.into(),
            resource: Resource::new("app", format!("web-{id}")),
            actor: "tester".into(),
        },
    }
}

pub fn started(id: OperationId, seq: u64) -> Record {
    Record {
        operation: id,
        seq,
        at_ms: 1_000 + seq,
        kind: RecordKind::StepStarted { step: format!("step-{seq}"), attempt: 1 },
    }
}

pub fn finished(id: OperationId, seq: u64) -> Record {
    Record {
        operation: id,
        seq,
        at_ms: 1_000 + seq,
        kind: RecordKind::OperationFinished { outcome: Outcome::Succeeded },
    }
}

pub fn record(id: OperationId, seq: u64, kind: RecordKind) -> Record {
    Record { operation: id, seq, at_ms: 1_000 + seq, kind }
}

/// `PointOfNoReturnPassed`: a cancel barrier.
pub fn passed(id: OperationId, seq: u64) -> Record {
    record(id, seq, RecordKind::PointOfNoReturnPassed { step: "migrate".into() })
}

/// `CancelRequested`: answers a pending request.
pub fn cancelled(id: OperationId, seq: u64, actor: &str) -> Record {
    record(id, seq, RecordKind::CancelRequested { actor: actor.into(), reason: "stop".into() })
}

/// `CancelRefused`: answers a pending request.
pub fn refused(id: OperationId, seq: u64, actor: &str) -> Record {
    let kind = RecordKind::CancelRefused {
        actor: actor.into(),
        reason: "stop".into(),
        requested_ms: 1,
        refusal: "past the point of no return (step migrate)".into(),
    };
    record(id, seq, kind)
}

/// A cancel request of `id` by `actor`.
pub fn request(id: OperationId, actor: &str) -> saga_core::store::CancelRequest {
    saga_core::store::CancelRequest {
        operation: id,
        actor: actor.into(),
        reason: format!("{actor} says stop"),
        at_ms: saga_core::Timestamp::now().unix_ms(),
    }
}

/// The id as its column value.
pub fn key(id: OperationId) -> Vec<u8> {
    id.as_u128().to_be_bytes().to_vec()
}

/// How long a test waits for something to happen on the server before it fails.
pub const EVENT: Duration = Duration::from_secs(60);

/// Waits until a backend of application `name` waits on a lock: `advisory` (held at a
/// [`Gate`]) or any other (a row); returns its pid.
pub async fn blocked_backend(admin: &Client, name: &str, advisory: bool) -> i32 {
    let deadline = tokio::time::Instant::now() + EVENT;
    loop {
        let row = admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
                 AND wait_event_type = 'Lock' AND (wait_event = 'advisory') = $2 LIMIT 1",
                &[&name, &advisory],
            )
            .await
            .expect("reading pg_stat_activity");
        if let Some(row) = row {
            return row.get(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no backend of {name} waited on a lock (advisory: {advisory}) within {EVENT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `n` backends of application `name` have run `LISTEN` (a store's notification
/// listener has connected): notifications sent from then on reach it.
pub async fn listening(admin: &Client, name: &str, n: i64) {
    let deadline = tokio::time::Instant::now() + EVENT;
    loop {
        let row = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                 AND query LIKE 'LISTEN %'",
                &[&name],
            )
            .await
            .expect("reading pg_stat_activity");
        if row.get::<_, i64>(0) >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} backends of {name} did not LISTEN within {EVENT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the database's clock is past `ms`.
pub async fn db_clock_past(admin: &Client, ms: u64) {
    let deadline = tokio::time::Instant::now() + EVENT;
    while db_now_ms(admin).await <= ms {
        assert!(tokio::time::Instant::now() < deadline, "the database's clock stands still");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Terminates one backend.
pub async fn terminate_pid(admin: &Client, pid: i32) {
    let row = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminating a backend");
    assert!(row.get::<_, bool>(0), "backend {pid} was not terminated");
}

/// Holds chosen commits of one schema: a deferred constraint trigger (fired at commit) that
/// waits for a shared advisory lock which the gate holds exclusively until [`Gate::open`]. A
/// transaction held there has done all its work and holds its row locks; killing its backend
/// or cutting its connection then is a failure at commit, whose answer the client never gets.
pub struct Gate {
    admin: Client,
    schema: String,
    key: i64,
}

impl Gate {
    /// A closed gate in `schema` (which must exist: connect a store first).
    pub async fn close(url: &str, schema: &str) -> Gate {
        let admin = admin(url).await;
        let key = i64::from(fastrand::u32(..)) + 1_000_000;
        admin
            .batch_execute(&format!(
                "CREATE OR REPLACE FUNCTION {schema}.test_gate() RETURNS trigger LANGUAGE plpgsql \
                 AS $$ BEGIN PERFORM pg_advisory_xact_lock_shared({key}); RETURN NULL; END $$; \
                 SELECT pg_advisory_lock({key});"
            ))
            .await
            .expect("closing a gate");
        Gate { admin, schema: schema.to_owned(), key }
    }

    /// Holds the commit of every append of records to `id` (not its create).
    pub async fn on_records(&self, id: OperationId) {
        let s = &self.schema;
        self.admin
            .batch_execute(&format!(
                "CREATE CONSTRAINT TRIGGER gate_records_{n} AFTER INSERT ON {s}.records \
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
                 WHEN (NEW.operation = '\\x{hex}'::bytea AND NEW.seq > 0) \
                 EXECUTE FUNCTION {s}.test_gate()",
                n = id.as_u128(),
                hex = hex(id),
            ))
            .await
            .expect("gating records");
    }

    /// Holds the commit of every insert of `id`'s log lines but line 0.
    pub async fn on_log_lines(&self, id: OperationId) {
        let s = &self.schema;
        self.admin
            .batch_execute(&format!(
                "CREATE CONSTRAINT TRIGGER gate_lines_{n} AFTER INSERT ON {s}.log_lines \
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
                 WHEN (NEW.operation = '\\x{hex}'::bytea AND NEW.n > 0) \
                 EXECUTE FUNCTION {s}.test_gate()",
                n = id.as_u128(),
                hex = hex(id),
            ))
            .await
            .expect("gating log lines");
    }

    /// Holds the commit of every update of `id`'s row that leaves a cancel request pending.
    pub async fn on_cancel(&self, id: OperationId) {
        let s = &self.schema;
        self.admin
            .batch_execute(&format!(
                "CREATE CONSTRAINT TRIGGER gate_cancel_{n} AFTER UPDATE ON {s}.operations \
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
                 WHEN (NEW.id = '\\x{hex}'::bytea AND NEW.cancel_at_ms IS NOT NULL) \
                 EXECUTE FUNCTION {s}.test_gate()",
                n = id.as_u128(),
                hex = hex(id),
            ))
            .await
            .expect("gating cancel requests");
    }

    /// Holds commits again (once the ones let go have finished).
    pub async fn reclose(&self) {
        self.admin
            .execute("SELECT pg_advisory_lock($1)", &[&self.key])
            .await
            .expect("closing a gate again");
    }

    /// Lets every held commit go on (and every later one).
    pub async fn open(&self) {
        self.admin
            .execute("SELECT pg_advisory_unlock($1)", &[&self.key])
            .await
            .expect("opening a gate");
    }
}

fn hex(id: OperationId) -> String {
    key(id).iter().map(|b| format!("{b:02x}")).collect()
}

/// A TCP proxy in front of the server whose connections can be cut at once, both ways, without
/// a word to either side: what a client sees when the network fails after it sent a commit
/// (the server goes on and commits, the answer is lost).
pub struct Proxy {
    pub port: u16,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to the server of `url`, on a free port of 127.0.0.1.
    pub async fn start(url: &str) -> Proxy {
        let upstream =
            saga_store_postgres::testing::server_addr(url).expect("the server's address");
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        let connections = Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                held.lock().unwrap_or_else(|e| e.into_inner()).push(task.abort_handle());
            }
        });
        Proxy { port, connections, accept }
    }

    /// `url` through the proxy.
    pub fn url(&self, url: &str) -> String {
        let start = url.rfind('@').map_or_else(|| url.find("://").map_or(0, |i| i + 3), |i| i + 1);
        let end = url[start..].find(['/', '?']).map_or(url.len(), |i| start + i);
        format!("{}127.0.0.1:{}{}", &url[..start], self.port, &url[end..])
    }

    /// Cuts every connection made so far; new ones go through.
    pub fn cut(&self) -> usize {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let n = connections.len();
        for c in connections.drain(..) {
            c.abort();
        }
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
