//! The tables, and their migrations: versioned, applied in one transaction under an advisory
//! lock, so that several executors connecting at once migrate once.

use saga_core::store::StoreError;
use tokio_postgres::Client;

use crate::error::{pg, PostgresError};

/// The migrations, in order: migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[V1];

/// The newest schema version this release knows.
pub(crate) const LATEST: i32 = MIGRATIONS.len() as i32;

/// Version 1.
///
/// Text a caller gives (environment, resource, owner, cancel actor and reason) is kept as
/// `bytea`: a Rust string may hold NUL, which PostgreSQL `text` cannot. Indexes key long values
/// by their SHA-256 (generated columns), since a B-tree entry holds at most about 2.7 KB; the
/// queries compare the value itself too.
const V1: &str = r#"
CREATE TABLE operations (
    id               bytea   PRIMARY KEY,  -- 16 bytes, big-endian: sorts like the ids
    environment      bytea   NOT NULL,
    environment_key  bytea   NOT NULL GENERATED ALWAYS AS (sha256(environment)) STORED,
    created_ms       bigint  NOT NULL,     -- at_ms of the OperationCreated record
    resource_kind    bytea   NOT NULL,
    resource_name    bytea   NOT NULL,
    resource_key     bytea   NOT NULL GENERATED ALWAYS AS
                         (sha256(int4send(octet_length(resource_kind)) || resource_kind || resource_name)) STORED,
    queue_position   bigint  NOT NULL,     -- creation order within the resource's queue
    finished         boolean NOT NULL DEFAULT false,
    next_seq         bigint  NOT NULL,
    lease_owner      bytea   NOT NULL,
    lease_epoch      bigint  NOT NULL,
    lease_expires_ms bigint  NOT NULL,     -- on the database's clock
    cancel_actor     bytea,
    cancel_reason    bytea,
    cancel_at_ms     bigint                -- NULL: no pending cancel request
);
CREATE INDEX operations_unfinished ON operations (id) WHERE NOT finished;
CREATE INDEX operations_environment ON operations (environment_key, created_ms, id);
CREATE INDEX operations_resource_queue ON operations (resource_key, queue_position) WHERE NOT finished;
CREATE INDEX operations_cancels ON operations (id) WHERE cancel_at_ms IS NOT NULL;
CREATE SEQUENCE saga_queue_position;

CREATE TABLE records (
    operation bytea  NOT NULL REFERENCES operations (id) ON DELETE CASCADE,
    seq       bigint NOT NULL,
    bytes     bytea  NOT NULL,             -- saga_core::store::encode(record)
    PRIMARY KEY (operation, seq)
);

CREATE TABLE log_lines (
    operation bytea  NOT NULL,
    n         bigint NOT NULL,             -- the line's seq
    at_ms     bigint NOT NULL,
    bytes     bytea  NOT NULL,             -- version byte, then the postcard LogLine
    PRIMARY KEY (operation, n)
);
CREATE INDEX log_lines_at ON log_lines (at_ms);
"#;

/// Creates the schema when `schema` is given and missing, then applies the migrations this
/// database lacks, all in one transaction under an advisory lock named after the schema. A
/// database at a newer version than [`LATEST`] is refused with
/// [`PostgresError::NewerSchema`]. Returns the version found before migrating.
pub(crate) async fn migrate(client: &mut Client, schema: Option<&str>) -> Result<i32, StoreError> {
    let context = "migrating the schema";
    let tx = client.transaction().await.map_err(|e| pg(context, e))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('saga-store-postgres migration ' \
         || coalesce($1::text, current_schema(), '')))",
        &[&schema],
    )
    .await
    .map_err(|e| pg(context, e))?;
    if let Some(schema) = schema {
        // `schema` is a checked lowercase identifier (see `connect`).
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\"; SET LOCAL search_path TO \"{schema}\""
        ))
        .await
        .map_err(|e| pg(context, e))?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS saga_schema_version (
             version    integer PRIMARY KEY,
             applied_ms bigint  NOT NULL
         )",
    )
    .await
    .map_err(|e| pg(context, e))?;
    let row = tx
        .query_one("SELECT coalesce(max(version), 0) FROM saga_schema_version", &[])
        .await
        .map_err(|e| pg(context, e))?;
    let found: i32 = row.try_get(0).map_err(|e| pg(context, e))?;
    if found > LATEST {
        return Err(StoreError::backend(
            context,
            PostgresError::NewerSchema { found, supported: LATEST },
        ));
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(migration)
            .await
            .map_err(|e| pg(format!("applying schema migration {version}"), e))?;
        tx.execute(
            "INSERT INTO saga_schema_version (version, applied_ms) \
             VALUES ($1, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)",
            &[&version],
        )
        .await
        .map_err(|e| pg(context, e))?;
    }
    tx.commit().await.map_err(|e| pg(context, e))?;
    Ok(found)
}
