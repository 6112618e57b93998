//! Fault injection, crash and cancel simulation, checks and proptest strategies for sagas of
//! [`saga_core`], for users to show that their rollbacks are right.
//!
//! - A [`FaultPlan`] says what to inject into one run: a permanent failure at a step (before or
//!   after its effect, or saying it had no effect), transient failures, a failing compensation, a
//!   doubled `execute` or `compensate`, a cancel while a step runs, a crash after the `r`-th
//!   durable record (the executor is dropped and a new one recovers over the same store), and
//!   what the operator decides when the Operation needs attention past its point of no return
//!   ([`Attention`]: retry or abandon).
//! - [`Faulty`] wraps a step and consults the shared [`Faults`] of the run; a
//!   [`TestSagaBuilder`] mirrors `SagaBuilder` and wraps every step. Both implement
//!   [`DefineSaga`](saga_core::saga::DefineSaga), so that one saga factory, generic over the
//!   builder, defines the production saga and the saga under test. [`CrashingStore`] is the
//!   store that "crashes".
//! - [`SagaCheck`] holds a user's *saga factory* (a closure that builds the saga with a
//!   [`TestSagaBuilder`] over a fresh [`World`]), the world and the params, and runs the checks:
//!   [`each_step_can_fail`](SagaCheck::each_step_can_fail) (every step fails in turn; the
//!   rollback restores the world, less what irreversible steps changed when the world can tell
//!   it apart ([`World::excluding`]), and the outcome names the step),
//!   [`steps_are_idempotent`](SagaCheck::steps_are_idempotent) (every `execute` and `compensate`
//!   run twice leaves the same world) and [`crash_anywhere`](SagaCheck::crash_anywhere) (a crash
//!   after every record position recovers to the outcome and world of an uninterrupted run).
//!   Each returns a [`Report`] or an [`Error::Check`] naming every failed scenario; the
//!   `assert_*` variants panic with that message. [`SagaCheck::run`] runs any plan.
//! - Proptest strategies: [`saga_shapes`] (random [`SagaShape`]s: stages, parallel groups, step
//!   kinds, a point of no return), [`fault_plans`] and [`fault_plans_for`] (random plans for a
//!   shape or a user's saga).
//! - A store conformance suite, [`conformance`]: the [`Store`](saga_core::store::Store) contract
//!   as checks that any store runs with one call ([`conformance::run_all`]) or one test per check.
//! - [`fencing`]: a [`FencedResource`](fencing::FencedResource) that refuses a stale executor's
//!   write by its fencing token, and the check
//!   [`stale_write_is_refused`](fencing::stale_write_is_refused).
//!
//! A user's saga, checked:
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::{Arc, Mutex};
//! use saga_core::{async_trait, Executed, Step, StepContext, StepError};
//! use saga_testkit::{SagaCheck, World};
//!
//! /// A fake cloud: resources by idempotency key.
//! #[derive(Clone, Default)]
//! struct Cloud(Arc<Mutex<BTreeMap<String, String>>>);
//!
//! #[async_trait]
//! impl World for Cloud {
//!     type Snapshot = Vec<String>;
//!     async fn snapshot(&self) -> Vec<String> {
//!         // What a user sees: the resources, not the keys (which differ between runs).
//!         self.0.lock().unwrap().values().cloned().collect()
//!     }
//! }
//!
//! /// Creates a resource; idempotent thanks to the step's idempotency key.
//! struct Create { cloud: Cloud, what: &'static str }
//!
//! #[async_trait]
//! impl Step for Create {
//!     type Output = String;
//!     async fn execute(&self, ctx: &StepContext) -> Result<String, StepError> {
//!         let name = format!("{}-{}", self.what, ctx.params::<String>()?);
//!         self.cloud.0.lock().unwrap().insert(ctx.idempotency_key(), name.clone());
//!         Ok(name)
//!     }
//!     async fn compensate(&self, ctx: &StepContext, _: Executed<String>) -> Result<(), StepError> {
//!         // Whatever is known of execute, delete by key: cleans up a partial effect too.
//!         self.cloud.0.lock().unwrap().remove(&ctx.idempotency_key());
//!         Ok(())
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let check = SagaCheck::new("provision", Cloud::default, |cloud: &Cloud, saga| {
//!     saga.step("vm", Create { cloud: cloud.clone(), what: "vm" })
//!         .parallel(|g| {
//!             g.step("disk", Create { cloud: cloud.clone(), what: "disk" })
//!                 .step("ip", Create { cloud: cloud.clone(), what: "ip" })
//!         })
//!         .step("dns", Create { cloud: cloud.clone(), what: "dns" })
//! })
//! .params("web-1");
//!
//! let report = check.each_step_can_fail().await?;
//! assert_eq!(report.scenarios.len(), 1 + 4 * 2); // no faults, then each step before/after
//! check.steps_are_idempotent().await?;
//! check.assert_crash_anywhere().await;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

mod builder;
mod checks;
pub mod ci;
pub mod conformance;
mod crash_store;
mod error;
mod faults;
mod faulty;
pub mod fencing;
mod harness;
mod injector;
mod shape;
mod strategies;
mod world;

pub use crate::builder::{TestGroupBuilder, TestSagaBuilder};
pub use crate::crash_store::CrashingStore;
pub use crate::error::{Error, Failure, Failures, Report, Result};
pub use crate::faults::{Attention, ExecuteFault, FaultPlan, StepFaults, When};
pub use crate::faulty::Faulty;
pub use crate::harness::{Run, SagaCheck};
pub use crate::injector::{CancelAnswer, CancelServer, Faults, StepStats};
pub use crate::shape::{SagaShape, ShapeStep, ShapeWorld, StepSpec};
pub use crate::strategies::{
    fault_plans, fault_plans_for, saga_shapes, saga_shapes_up_to, shapes_and_plans,
};
pub use crate::world::World;
