//! A durable saga engine: every change to a resource runs as an **Operation**, a durable run of a
//! [`Saga`] made of [`Step`]s, each with `execute` and `compensate`.
//!
//! The [`Executor`] writes every step transition to a [`Store`] before and after the side effect,
//! so that a process that crashes at any instant is resumed by [`Executor::recover`]: forward if
//! the Operation was healthy, backward (compensating every step that started, in reverse order of
//! completion) if it had failed or been cancelled. The log is the only source of truth: an
//! Operation's state is [`OperationState::fold`] of its [`Record`]s.
//!
//! Main types: [`Step`] (with [`StepContext`], [`StepKind`], [`RetryPolicy`], [`StepError`] and
//! [`Input`] for what a step acts on), [`Saga`] (built with [`Saga::builder`]), [`Executor`],
//! [`Store`] (with [`MemoryStore`] here and a durable sled store in the `saga-store` crate),
//! [`Record`], [`OperationState`], [`Outcome`].
//!
//! Each Operation has a log: the engine's own lines for every transition and the `tracing` events
//! its steps emit, captured by [`OperationLogLayer`]; read it with [`Executor::log`] or follow it
//! live with [`Executor::follow`]. [`activity_report`] lists the Operations of an environment over
//! a period, and [`write_activity_csv`] writes them as RFC 4180 CSV.
//!
//! ```
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use saga_core::{Executed, Executor, MemoryStore, Outcome, Resource, Saga, Step, StepContext, StepError};
//!
//! struct Reserve;
//! #[async_trait]
//! impl Step for Reserve {
//!     type Output = u32;
//!     async fn execute(&self, _: &StepContext) -> Result<u32, StepError> { Ok(42) }
//!     async fn compensate(&self, _: &StepContext, _: Executed<u32>) -> Result<(), StepError> { Ok(()) }
//! }
//!
//! struct Charge;
//! #[async_trait]
//! impl Step for Charge {
//!     type Output = ();
//!     async fn execute(&self, ctx: &StepContext) -> Result<(), StepError> {
//!         let seat: u32 = ctx.output("reserve")?;
//!         Err(StepError::permanent(format!("card declined for seat {seat}")))
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let saga = Saga::builder("book", 1).step("reserve", Reserve).step("charge", Charge).build()?;
//! let executor = Executor::builder(Arc::new(MemoryStore::new())).saga(saga).build()?;
//! let id = executor.start("book", &(), "dev", Resource::new("trip", "t1"), "bob").await?;
//! let outcome = executor.wait(id).await?;
//! assert_eq!(outcome.status(), "rolled back");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

mod capture;
mod check;
mod error;
mod executor;
mod fold;
mod id;
mod input;
mod memory;
mod oplog;
mod record;
mod report;
mod retry;
mod saga;
mod step;
mod store;

pub use crate::capture::OperationLogLayer;
pub use crate::check::{CheckReport, Finding, Problem};
pub use crate::error::{ContextError, Error, ErrorKind, Result, StepError, StoreError};
pub use crate::executor::{
    Executor, ExecutorBuilder, FollowEvent, LogFollower, RecoveryReport, DEFAULT_LOG_RETENTION,
};
pub use crate::fold::{Compensation, Execution, OperationState, Phase, StepState};
pub use crate::id::{now_ms, OperationId};
pub use crate::input::Input;
pub use crate::memory::MemoryStore;
pub use crate::oplog::{format_rfc3339_ms, render_log, LogLevel, LogLine, LogSource};
pub use crate::record::{
    decode, encode, NotUndone, NotUndoneReason, Outcome, Record, RecordKind, Resource,
    RollbackCause, FORMAT_VERSION,
};
pub use crate::report::{
    activity_report, iso_week_containing, neutralise_cell, weekly_activity_report,
    write_activity_csv, ActivityRow, ActivityStatus, ACTIVITY_COLUMNS,
};
pub use crate::retry::RetryPolicy;
pub use crate::saga::{GroupBuilder, Saga, SagaBuilder, StepInfo};
pub use crate::step::{Executed, Step, StepContext, StepKind, DEFAULT_CANCEL_GRACE};
pub use crate::store::{check_sequence, CancelRequest, Lease, Listing, Store};

/// Re-exported so that steps and stores implement the traits with the same macro version.
pub use async_trait::async_trait;
/// Re-exported for steps that watch cancellation.
pub use tokio_util::sync::CancellationToken;
