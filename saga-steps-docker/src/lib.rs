//! Docker steps for the saga engine, on [bollard](https://docs.rs/bollard): each step is given
//! the [`bollard::Docker`] client of the host it acts on.
//!
//! - [`PullImage`] pre-pulls an image before any downtime starts, trying an ordered list of
//!   registries (failing over when one is down, answers 5xx or lacks the image) and recording
//!   which one served ([`PulledImage`]). Its compensation removes the image only if it pulled it.
//! - [`CreateContainer`] (compensation removes it), [`StartContainer`] (compensation stops it),
//!   [`StopContainer`] (graceful; compensation starts it again), [`RemoveContainer`]
//!   (irreversible: the rollback names it as not undone).
//! - [`WaitHealthy`] waits until a container is healthy by Docker's health status or an HTTP
//!   probe ([`HealthProbe`]), with a timeout, ending promptly when the Operation is cancelled.
//!
//! Every step is idempotent, as the engine's at-least-once execution requires: starting a running
//! container, stopping a stopped one and pulling a present image succeed; creating a container
//! that an earlier attempt of the same step created (recognised by its deterministic name and the
//! [`CREATED_BY_LABEL`] label) succeeds. What a step acts on is an [`Input`]: fixed when the saga
//! is defined, or computed from the Operation's params and earlier outputs.
//!
//! An executor paused in the middle of a step (SIGSTOP, a VM migration) may deliver its requests
//! after another executor took the Operation over and ran the step again: the engine cannot stop
//! a request already sent, so the system changed must refuse it. [`CreateContainer`] labels its
//! container with the attempt's fencing token ([`FENCING_TOKEN_LABEL`], see
//! [`saga_core::FencingToken`]), and before it adopts an existing container or its compensation
//! removes one, it compares: a container carrying a newer token of the same Operation refuses
//! the stale attempt with a permanent error, unchanged. Docker has no conditional delete nor
//! label update, so this narrows the window rather than closing it; [`CreateContainer`] says
//! exactly what is left.
//!
//! Docker errors become step errors through [`classify`]: connection refused or reset, 5xx and
//! timeouts are transient (retried); a missing image or container, a conflict, invalid
//! parameters are permanent (rollback). The Docker message is in the error.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use bollard::Docker;
//! use saga_core::{Executor, MemoryStore, Resource, Saga, Start};
//! use saga_steps_docker::{
//!     ContainerSpec, CreateContainer, HealthProbe, PullImage, StartContainer, StopContainer,
//!     WaitHealthy,
//! };
//!
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let docker = Docker::connect_with_local_defaults()?.negotiate_version().await?;
//! let registries = ["registry.internal:5000", "mirror.internal:5000"];
//! let image = "registry.internal:5000/team/db:16";
//! let saga = Saga::builder("redeploy-db", 1)
//!     // Preconditions first: no pull inside the downtime window.
//!     .step("pull", PullImage::new(docker.clone(), registries, "team/db:16"))
//!     .step("create", CreateContainer::new(docker.clone(), ContainerSpec::new("db-v16", image)))
//!     .step("stop-old", StopContainer::new(docker.clone(), "db-v15").grace(Duration::from_secs(30)))
//!     .step("start-new", StartContainer::new(docker.clone(), "db-v16"))
//!     .step("healthy", WaitHealthy::new(docker, "db-v16", HealthProbe::Docker))
//!     .build()?;
//! let executor = Executor::builder(Arc::new(MemoryStore::new())).saga(saga).build()?;
//! let request = Start::new("redeploy-db", Resource::new("db", "main"))
//!     .params(&())
//!     .environment("prod")
//!     .actor("ops");
//! let id = executor.start(request).await?;
//! println!("{}", executor.wait(id).await?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

mod classify;
mod container;
mod health;
mod http;
mod image;
mod lifecycle;

pub use crate::classify::{classify, docker_error};
pub use crate::container::{
    ContainerSpec, CreateContainer, CreatedContainer, RemoveContainer, RemovedContainer,
    CREATED_BY_LABEL, FENCING_TOKEN_LABEL,
};
pub use crate::health::{HealthProbe, Healthy, WaitHealthy};
pub use crate::image::{PullImage, PulledImage, SkippedRegistry, PULL_MARKER_REPOSITORY};
pub use crate::lifecycle::{StartContainer, StartedContainer, StopContainer, StoppedContainer};
pub use saga_core::Input;
