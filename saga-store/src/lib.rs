//! The sled store of the saga engine: [`SledStore`], a durable [`saga_core::store::Store`] in
//! one directory, the embedded default for a single process.
//!
//! Main types: [`SledStore`] (opened with [`SledStore::open`], or, for tests only,
//! [`SledStore::open_without_fsync`]) and [`Durability`]. Errors are
//! [`saga_core::store::StoreError`]s. With the `fault-injection` feature (for tests only),
//! `SledStore::inject_sync_failure` (hidden from these docs) makes a coming sync fail as a
//! failing `fdatasync` would.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use saga_core::log::{Record, RecordKind};
//! use saga_core::store::Store;
//! use saga_core::{OperationId, Resource};
//! use saga_store::SledStore;
//!
//! # let dir = tempfile::tempdir()?;
//! let store = Arc::new(SledStore::open(dir.path().join("store"))?);
//! # tokio::runtime::Runtime::new()?.block_on(async {
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
//! // Durable (synced to the disk) when it returns.
//! let lease = store.create(&created, "executor-1", Duration::from_secs(30)).await?;
//! assert_eq!(lease.epoch, 1);
//! assert_eq!(store.read(id).await?, vec![created]);
//! assert_eq!(store.list_unfinished().await?.ids, vec![id]);
//! # Ok::<(), saga_core::store::StoreError>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! With an executor: `Executor::builder(Arc::new(SledStore::open(path)?))`, and
//! `executor.recover()` after a restart.
//!
//! The layout of its trees, its write-ahead log and checkpoints, what it does about sled's own
//! failure modes and the faults it was tested under are in the repository's `ARCHITECTURE.md`
//! ("The sled store as built").
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

mod acks;
mod bundle;
mod cancels;
mod check;
mod codec;
mod contain;
mod disk;
mod environment;
#[cfg(feature = "fault-injection")]
mod faults;
mod flusher;
mod keys;
mod leases;
mod logs;
mod open;
mod overlay;
mod records;
mod redo;
mod resources;
mod store;
mod sync_io;
mod wal;

#[doc(hidden)]
pub use crate::bundle::unbundle;
#[doc(hidden)]
#[cfg(feature = "fault-injection")]
pub use crate::faults::SyncHold;
pub use crate::store::{Durability, SledStore};
