//! A durable saga engine: every change to a resource runs as an **Operation**, a durable run of a
//! [`Saga`] made of [`Step`]s, each with `execute` and `compensate`.
//!
//! The [`Executor`] writes every step transition to a [`Store`](store::Store) before and after the
//! side effect, so that a process that crashes at any instant is resumed by
//! [`Executor::recover`]: forward if the Operation was healthy, backward (compensating every step
//! that started, in reverse order of completion) if it had failed or been cancelled. The log is
//! the only source of truth: an Operation's state is the fold of its records
//! ([`state::OperationState::fold`]).
//!
//! At the root is what a step author and an embedder use: [`Step`] (with [`StepContext`],
//! [`StepKind`], [`RetryPolicy`], [`StepError`] and [`Input`] for what a step acts on), [`Saga`]
//! (built with [`Saga::builder`]), [`Executor`] (started with a [`Start`] request), [`Outcome`]
//! and what it names, [`MemoryStore`]. The modules hold the rest:
//!
//! - [`store`]: the [`Store`](store::Store) trait and what store authors need (a durable sled
//!   store is in the `saga-store` crate, and `saga-testkit` has a conformance suite);
//! - [`log`]: the records and the Operation's log lines, captured from `tracing` by
//!   [`OperationLogLayer`](log::OperationLogLayer), read with [`Executor::log`] and followed live
//!   with [`Executor::follow`];
//! - [`state`]: an Operation's folded state, as [`Executor::status`] returns it;
//! - [`report`]: activity reports of an environment over a period, and their CSV;
//! - [`saga`], [`step`], [`executor`]: the builders, the step's constants and context errors,
//!   and the executor's builder and reports.
//!
//! ```
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use saga_core::{Executed, Executor, MemoryStore, Resource, Saga, Start, Step, StepContext, StepError};
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
//! let trip = Resource::new("trip", "t1");
//! let id = executor.start(Start::new("book", trip).environment("dev").actor("bob")).await?;
//! let outcome = executor.wait(id).await?;
//! assert_eq!(outcome.status(), saga_core::Status::RolledBack);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

mod capture;
mod check;
mod error;
pub mod executor;
mod fold;
mod id;
mod input;
mod memory;
mod oplog;
mod record;
pub mod report;
mod retry;
pub mod saga;
mod status;
pub mod step;
pub mod store;
mod timestamp;
mod wrapper;

pub use crate::error::{Error, ErrorKind, Result, StepError};
pub use crate::executor::{CancelAnswer, Executor, Start};
pub use crate::id::OperationId;
pub use crate::input::Input;
pub use crate::memory::MemoryStore;
pub use crate::record::{NotUndone, NotUndoneReason, Outcome, Resource, RollbackCause};
pub use crate::retry::RetryPolicy;
pub use crate::saga::Saga;
pub use crate::status::{Status, UnknownStatus};
pub use crate::step::{Executed, FencingToken, Step, StepContext, StepKind};
pub use crate::timestamp::{Timestamp, Week};

/// Re-exported so that steps and stores implement the traits with the same macro version.
pub use async_trait::async_trait;
/// Re-exported for steps that watch cancellation.
pub use tokio_util::sync::CancellationToken;

/// An Operation's log: the durable [`Record`](log::Record)s the engine folds, and the
/// [`LogLine`](log::LogLine)s the engine and the steps write for operators (captured from
/// `tracing` by [`OperationLogLayer`](log::OperationLogLayer), read with [`Executor::log`],
/// followed live with [`Executor::follow`]).
pub mod log {
    pub use crate::capture::OperationLogLayer;
    pub use crate::executor::{FollowEvent, LogFollower, DEFAULT_LOG_RETENTION};
    pub use crate::oplog::{render_log, LogLevel, LogLine, LogSource};
    pub use crate::record::{Record, RecordKind};
}

/// An Operation's state, folded from its records: what [`Executor::status`] returns.
pub mod state {
    pub use crate::fold::{
        CancelRefusal, CancelledBy, Compensation, Execution, FailedStep, OperationState, Phase,
        PolicyStart, StepState,
    };
}
