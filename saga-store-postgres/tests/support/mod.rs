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
use tokio_postgres::{Client, NoTls};

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

/// A plain connection to the database (its driver spawned on the current runtime).
pub async fn admin(url: &str) -> Client {
    let (client, connection) = match tokio_postgres::connect(url, NoTls).await {
        Ok(pair) => pair,
        Err(e) => panic!("connecting to {} as admin: {e}", redact(url)),
    };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
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
