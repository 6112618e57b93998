//! The PostgreSQL store of the saga engine: [`PostgresStore`], a
//! [`Store`](saga_core::store::Store) that executors on several machines share.
//!
//! Main types: [`PostgresStore`] (made with [`PostgresStore::connect`] and
//! [`PostgresOptions`]), [`Durability`] and [`PostgresError`], what it refuses. Errors are
//! [`saga_core::store::StoreError`]s; this crate's own refusals travel as their source.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use saga_core::log::{Record, RecordKind};
//! use saga_core::store::Store;
//! use saga_core::{OperationId, Resource};
//! use saga_store_postgres::{PostgresOptions, PostgresStore};
//!
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let url = "postgres://saga:secret@127.0.0.1:5432/saga";
//! let store = Arc::new(PostgresStore::connect(url, PostgresOptions::default()).await?);
//! let id = OperationId::new();
//! let created = Record {
//!     operation: id,
//!     seq: 0,
//!     at_ms: id.created_ms(),
//!     kind: RecordKind::OperationCreated {
//!         saga: "deploy".into(),
//!         version: 1,
//!         params: b"{}".to_vec(),
//!         environment: "prod".into(),
//!         resource: Resource::new("app", "web"),
//!         actor: "alice".into(),
//!     },
//! };
//! // Committed (and flushed by the server) when it returns.
//! let lease = store.create(&created, "executor-1", Duration::from_secs(30)).await?;
//! assert_eq!(lease.epoch, 1);
//! assert_eq!(store.read(id).await?, vec![created]);
//! # Ok::<(), saga_core::store::StoreError>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! With an executor: `Executor::builder(Arc::new(PostgresStore::connect(url, options).await?))`.
//!
//! # TLS
//!
//! Every connection of the store (the pool's, the first one of `connect`, the notification
//! listener's) uses TLS as the URL's `sslmode` and `sslrootcert` say, read as libpq reads them,
//! through rustls (with the `ring` provider) and `tokio-postgres-rustls`:
//!
//! ```text
//! postgres://saga:secret@db.example.com:5432/saga?sslmode=verify-full&sslrootcert=/etc/saga/db-ca.pem
//! host=db.example.com dbname=saga user=saga sslmode=verify-full sslrootcert=system
//! ```
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | not seen |
//! | `prefer` (the default) | when the server offers it; plain when it answers that it does not | not checked; with root certificates, its chain is (as `verify-ca`) |
//! | `require` | always: a server without TLS is refused | not checked; with root certificates, its chain is (as `verify-ca`, as libpq does) |
//! | `verify-ca` | always | must chain to the root certificates; the host name is not checked |
//! | `verify-full` | always | must chain to the root certificates and be valid for the host name connected to (`host`; `hostaddr`, when given, is only where to connect) |
//!
//! Root certificates: `sslrootcert=<path>` (a PEM file of one or more certificates), or
//! `sslrootcert=system` for the system's trusted roots (read with `rustls-native-certs`: on
//! Linux the files that `SSL_CERT_FILE` or `SSL_CERT_DIR` name, else OpenSSL's usual ones, such
//! as Debian's `ca-certificates`); or [`PostgresOptions::ssl_root_cert`] and
//! [`PostgresOptions::system_root_certs`], which the URL's `sslrootcert` overrides. As in
//! libpq, the system's roots make `verify-full` the default and refuse any weaker mode, and
//! `verify-ca`/`verify-full` without root certificates are refused. Unlike libpq, nothing is read
//! from `~/.postgresql/root.crt` or the `PG*` environment variables, a `sslrootcert` file that
//! cannot be read is refused in every mode (libpq ignores it below `verify-ca`), `prefer` whose
//! handshake fails a check does not retry in plain text, `sslmode=allow` is refused, and
//! `require` or stronger over a Unix socket is refused (the server never offers TLS there;
//! libpq connects in plain text). Client certificates (`sslcert`, `sslkey`) are not supported
//! yet.
//!
//! A connection refused over TLS is [`PostgresError::Tls`], naming the host and the
//! [`TlsProblem`]: the server does not support TLS (`NotSupported`), the server refused a
//! plain connection (`RequiredByServer`), an unknown certificate authority (`UnknownCa`), a
//! certificate for other names (`WrongHostName`, with the names it holds), one not valid now,
//! another handshake failure. None is transient: the store does not retry them.
//! [`PostgresStore::ssl_mode`] tells the mode in force.
//!
//! # Several hosts, and failover to a standby
//!
//! A URL may name several hosts, as libpq reads them; the store connects to the first that takes
//! writes:
//!
//! ```text
//! postgres://saga:secret@db1.example.com:5432,db2.example.com:5432/saga?target_session_attrs=read-write
//! host=db1.example.com,db2.example.com port=5432,5432 dbname=saga user=saga
//! ```
//!
//! Every session of the store writes, so the store asks for `target_session_attrs=read-write`
//! itself whether the URL says so or not (libpq's default, `any`, would let a connection land on
//! a standby, where every write fails); a URL asking for `read-only` is refused
//! ([`PostgresError::ReadOnlySessions`]). Each new connection (the pool's, `connect`'s first, the
//! notification listener's) tries the hosts in order: one that is down is passed over, and so is
//! a standby (it answers `transaction_read_only = on`). TLS checks each host by its own name.
//!
//! When the primary dies, the calls in flight fail with
//! [`StoreError::Transient`](saga_core::store::StoreError::Transient) (a closed connection, a
//! server shutting down) and the pool drops their connections; new connections find no host
//! taking writes (the old primary refuses, the standby is read-only: transient too) until the
//! standby is promoted, and then reach it. The store retries where the outcome is known, an
//! append or create whose commit answer was lost is checked on the new primary before anything
//! is sent again, and the executor retries transient errors or halts the Operation for another
//! executor to resume: never an outcome that the store does not hold. The listener reconnects
//! to the new primary and sends [`WakeUp::Missed`](saga_core::store::WakeUp::Missed). A server
//! whose machine went away without closing its connections fails calls within 20 s
//! (`tcp_user_timeout`, unless the URL sets it).
//!
//! What the failover keeps depends on the standby:
//!
//! - **A synchronous standby** (the primary's `synchronous_standby_names` names it, and
//!   `synchronous_commit` is `on` or `remote_apply`: the store's sessions raise `off` to `on`,
//!   but keep the server's `local` or `remote_write`, with which the standby's flush is not
//!   waited for, as [`PostgresStore::durability`] tells): a commit is
//!   acknowledged only once the standby has flushed it too, so every write the store
//!   acknowledged is on the promoted standby: no record, lease, finish or cancel request is
//!   lost. (`remote_apply` also makes it visible on the standby at once; `on` waits for the
//!   flush, and promotion replays the rest before it takes writes.) The price is a round trip to
//!   the standby per commit, and commits wait while no synchronous standby answers.
//! - **An asynchronous standby** (the default of streaming replication) loses the commits the
//!   primary acknowledged but had not yet sent to it, a window of milliseconds to seconds under
//!   load. After the failover those writes are gone although the store acknowledged them: a
//!   recorded `StepSucceeded` (or `StepStarted`) may vanish, so the step runs again when the
//!   Operation is resumed; an `OperationFinished` may vanish, so a finished Operation is
//!   running again (and its `wait` may have answered an outcome the store no longer holds); a
//!   lease renewal or claim may revert, and a cancel request may disappear.
//!
//! Either way, log lines (committed with `synchronous_commit = off`) written after the last
//! acknowledged write may be lost, as in a crash of a lone server.
//!
//! After a failover, the promoted standby runs alone (its own `synchronous_standby_names` is
//! empty unless set): add a new standby to be covered again.
//!
//! # Schema
//!
//! `connect` creates and migrates its tables itself (in [`PostgresOptions::schema`], or the
//! first schema of the `search_path`): `saga_schema_version` holds the versions applied; each
//! migration runs in one transaction under `pg_advisory_xact_lock`, so executors starting at
//! once migrate once. A database at a newer version than this release knows is refused with
//! [`PostgresError::NewerSchema`].
//!
//! | table | key | holds |
//! |---|---|---|
//! | `operations` | `id` (16 bytes, big-endian) | environment, creation time, resource, `finished`, `next_seq`, the lease (owner, epoch, expiry on the database's clock), the pending cancel request |
//! | `records` | `(operation, seq)` | [`saga_core::store::encode`]d record |
//! | `log_lines` | `(operation, n)` | the line's time, the version byte and the postcard line |
//!
//! Indexes: unfinished Operations (`id WHERE NOT finished`, which `list_unfinished` reads, never
//! a finished Operation), environment and creation time (by the environment's SHA-256, since a
//! name may be longer than a B-tree entry), each resource's queue (`WHERE NOT finished`, in
//! creation order), pending cancel requests, log line times. Caller text is kept as `bytea`
//! (a Rust string may hold NUL).
//!
//! # Every rule in SQL, on the database's clock
//!
//! - A **claim** is one conditional `UPDATE` that grants `epoch + 1` when the lease is released,
//!   expired (`lease_expires_ms <= ` the database's `clock_timestamp()`), or the caller's; of
//!   concurrent claims the row lock lets exactly one win. Lease expiries returned are on the
//!   database's clock.
//! - An **append** is one statement that updates the Operation's row only when the lease's
//!   epoch and owner and the first record's sequence number match it, and inserts the records
//!   only then, so a stale executor's append writes nothing; a follow-up read in the same
//!   transaction tells [`Fenced`](saga_core::store::StoreError::Fenced) from
//!   [`OutOfSequence`](saga_core::store::StoreError::OutOfSequence) from
//!   [`NotFound`](saga_core::store::StoreError::NotFound) from
//!   [`CancelPending`](saga_core::store::StoreError::CancelPending). An append holding
//!   `OperationFinished` marks the row finished (so it leaves the unfinished index and its
//!   resource's queue); one holding a record that answers a cancel request (`CancelRequested`,
//!   `CancelRefused`, `OperationFinished`) clears the pending request in the same statement.
//! - An append holding a **cancel barrier** (`PointOfNoReturnPassed`, or a finish as succeeded
//!   or abandoned) has one more condition in that statement: no cancel request is pending.
//!   `request_cancel` records a request by updating the same row, so the row lock orders the
//!   two and the second re-checks its condition on the row the first committed: either the
//!   barrier is written first and the request is recorded after it (for the owner to refuse),
//!   or the request is recorded first and the barrier is refused, writing nothing.
//! - **Log lines** are fenced too: their insert checks the lease under a share lock of the
//!   Operation's row, which a claim waits for (and which waits for a claim in flight, then sees
//!   the new lease), so a stale executor's lines are committed before the claim or refused.
//! - A **create** takes its resource's advisory lock before it takes its queue position, so
//!   that queue order is commit order across executors.
//!
//! # Durability
//!
//! Every write is a PostgreSQL commit, acknowledged once the server has flushed it:
//! `connect` refuses a server with `fsync = off` ([`PostgresError::FsyncOff`], unless
//! [`PostgresOptions::accept_fsync_off`]), and when the server's `synchronous_commit` is `off`
//! the store's sessions set it `on` (stronger settings stay). [`PostgresStore::durability`]
//! tells what was found.
//!
//! One exception, as the store contract allows: log lines commit with `synchronous_commit =
//! off` for their own transaction only. They are visible at once and become durable with the
//! next synchronous commit of any session (PostgreSQL's log is sequential) or the WAL writer's
//! next flush; a crash of the server in between may lose the last lines, never a record.
//!
//! # Group commit
//!
//! Concurrent appends share transactions: a writer task takes every append waiting (up to 64),
//! runs each behind a `SAVEPOINT` in one transaction (one that is refused or fails rolls back
//! alone), commits once and answers each caller. Creates, claims and the rest commit on their
//! own.
//!
//! # Transient errors
//!
//! A dropped connection, a serialization failure (`40001`), a deadlock (`40P01`), a server
//! shutting down or starting (`57P01`, `57P02`, `57P03`), a connection exception (`08…`), too
//! many connections and a pool timeout are
//! [`StoreError::Transient`](saga_core::store::StoreError::Transient), with PostgreSQL's error
//! as the source; everything else is `Backend`. The store retries them itself (a bounded number
//! of times, with backoff) where that is safe; see the `Store` implementation. An append or
//! create whose commit answer was lost is never blindly sent again: the store first reads
//! (waiting on the row's lock for a commit still in flight) whether its records are there, byte
//! for byte, and answers `Ok` if so.
//!
//! # Cancel requests
//!
//! `request_cancel` locks the Operation's row, records the request when it is unfinished and
//! has none (durable at return, `Recorded`), and notifies channel `saga_cancel` with the id in
//! the same transaction; otherwise it answers `AlreadyPending` with the pending request, or
//! `Finished`. A pending request equal to the caller's (a retry after a lost commit answer) is
//! answered `Recorded`. [`PostgresStore::cancel_notifications`] delivers the notifications, with
//! polling of `cancel_requests` behind it; `pending_cancel` reads one row.
//!
//! # Wake-ups
//!
//! [`Store::wake_ups`](saga_core::store::Store::wake_ups) is fed by `LISTEN` on a connection of
//! the store's own, started by the first subscription: `saga_cancel` (`<id>`: a cancel
//! request recorded) and `saga_wake` (`claimable <id>`: created with a zero ttl, or released
//! unfinished; `settled <id>`: an append that finished the Operation or recorded
//! `AttentionNeeded` committed), each notified in the transaction that makes the change.
//! Unknown payloads are ignored; every (re)connection of the listener is told as
//! [`WakeUp::Missed`](saga_core::store::WakeUp::Missed).
//!
//! # Check
//!
//! [`check`](saga_core::store::Store::check) reads every Operation's records and reconciles its
//! row with them: the finished flag (`MissingUnfinishedMark`, `StaleUnfinishedMark`), the
//! environment and creation time (`MissingIndexEntry`), the resource
//! (`DanglingEntry { index: "resource_queue" }`), `next_seq`
//! (`DamagedEntry { index: "operations.next_seq" }`), an owner or cancel request that does not
//! read, a cancel request of a finished Operation, a row without records; and log lines of no
//! Operation or that do not decode. With repair it fixes those columns from the records (or
//! removes the row, line or request); it never changes a record. Records that do not decode, and
//! an id that is not 16 bytes, are reported and left alone.
//!
//! Bad rows are typed errors naming the table and key, never panics.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

mod cancels;
mod check;
mod connect;
mod error;
mod indexes;
mod leases;
mod listener;
mod logs;
mod options;
mod records;
mod retry;
mod schema;
mod sql;
mod store;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;
mod tls;
mod writer;

pub use crate::connect::{Durability, PostgresStore};
pub use crate::error::PostgresError;
pub use crate::options::PostgresOptions;
pub use crate::tls::{SslMode, TlsProblem};
pub use crate::writer::GroupCommitStats;
