//! AWS steps for the saga engine: move an EBS volume between instances, grow a volume, and swap
//! load balancer targets with no downtime.
//!
//! Every step works on an SDK client the caller builds (with `aws_config`, so an endpoint override
//! points it at an emulator in tests) and reads what it acts on through an [`Input`]: a fixed
//! value, the Operation's params, or an earlier step's output.
//!
//! - EBS: [`DetachVolume`] (output: where the volume was; undo: re-attach there),
//!   [`AttachVolume`] (undo: detach), [`ModifyVolumeSize`] (irreversible).
//! - EC2: [`WaitInstanceRunning`] (read-only precondition).
//! - ELBv2: [`RegisterTargets`] and [`DeregisterTargets`] (each the other's undo), and
//!   [`TargetSwap`], which chains them so that a target group never lacks a healthy target.
//!
//! Steps are idempotent through state checks (attaching a volume already attached there
//! succeeds; attached elsewhere is a permanent error). Waits poll under a [`WaitPolicy`] and end
//! promptly when the Operation is cancelled. SDK errors become [`saga_core::StepError`]s through
//! [`classify_sdk_error`]: throttling, 5xx, timeouts and connection failures are transient,
//! validation, not-found and invalid-state errors permanent.
//!
//! ```no_run
//! use std::sync::Arc;
//! use aws_config::BehaviorVersion;
//! use saga_core::{Executor, MemoryStore, Resource, Saga, Start};
//! use saga_steps_aws::{AttachVolume, DetachVolume, Input, VolumeAttachment, VolumeOnInstance, WaitInstanceRunning};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Move { volume: String, from: String, to: String }
//!
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let config = aws_config::defaults(BehaviorVersion::latest()).load().await;
//! let ec2 = aws_sdk_ec2::Client::new(&config);
//! let saga = Saga::builder("move-volume", 1)
//!     .step("new-running", WaitInstanceRunning::new(ec2.clone(), Input::<Move>::params().map(|m| m.to)))
//!     .step("detach", DetachVolume::new(ec2.clone(), Input::<Move>::params().map(|m| VolumeOnInstance::new(m.volume, m.from))))
//!     .step("attach", AttachVolume::new(ec2, Input::from_fn(|ctx| {
//!         let m: Move = ctx.params()?;
//!         let was: VolumeAttachment = ctx.output("detach")?;
//!         Ok(VolumeAttachment::new(m.volume, m.to, was.device))
//!     })))
//!     .build()?;
//! let executor = Executor::builder(Arc::new(MemoryStore::new())).saga(saga).build()?;
//! let params = Move { volume: "vol-1".into(), from: "i-old".into(), to: "i-new".into() };
//! let request = Start::new("move-volume", Resource::new("database", "db1"))
//!     .params(&params)
//!     .environment("prod")
//!     .actor("alice");
//! let id = executor.start(request).await?;
//! println!("{}", executor.wait(id).await?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

mod attach;
mod error;
mod instance;
mod modify;
mod register;
mod swap;
mod targets;
mod volume;
mod wait;

pub use crate::attach::{AttachVolume, DetachVolume};
pub use crate::error::classify_sdk_error;
pub use crate::instance::{RunningInstance, WaitInstanceRunning};
pub use crate::modify::{ModifyVolumeSize, VolumeResized, VolumeSize};
pub use crate::register::{DeregisterTargets, RegisterTargets};
pub use crate::swap::{SwapTargets, TargetSwap};
pub use crate::targets::{Target, TargetSet};
pub use crate::volume::{VolumeAttachment, VolumeOnInstance};
pub use crate::wait::WaitPolicy;
/// Re-exported from `saga_core`: what a step acts on, resolved from the Operation each time the
/// step runs (a fixed value, the params, an earlier output).
pub use saga_core::Input;
