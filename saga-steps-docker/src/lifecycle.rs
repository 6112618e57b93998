//! `StartContainer` and `StopContainer`.

use std::fmt;
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::StopContainerOptionsBuilder;
use bollard::Docker;
use saga_core::{async_trait, Executed, Step, StepContext, StepError};
use serde::{Deserialize, Serialize};

use crate::classify::{docker_error, status_code};
use crate::container::inspect;
use saga_core::Input;

const DEFAULT_GRACE: Duration = Duration::from_secs(10);

fn is_running(container: &ContainerInspectResponse) -> bool {
    container.state.as_ref().and_then(|s| s.running).unwrap_or(false)
}

fn id_of(container: &ContainerInspectResponse, fallback: &str) -> String {
    container.id.clone().unwrap_or_else(|| fallback.to_owned())
}

/// Starts the container; one already running is fine (Docker answers 304).
async fn start(docker: &Docker, container: &str) -> Result<(), StepError> {
    docker
        .start_container(container, None)
        .await
        .map_err(|e| docker_error(&format!("start container {container}"), e))
}

/// Stops the container: SIGTERM, then SIGKILL after `grace`; one already stopped is fine.
/// With `missing_ok`, a container that does not exist is fine too.
async fn stop(
    docker: &Docker,
    container: &str,
    grace: Duration,
    missing_ok: bool,
) -> Result<(), StepError> {
    let seconds = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
    let options = StopContainerOptionsBuilder::default().t(seconds).build();
    match docker.stop_container(container, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if missing_ok && status_code(&e) == Some(404) => Ok(()),
        Err(e) => Err(docker_error(&format!("stop container {container}"), e)),
    }
}

/// Starts a container.
///
/// - Idempotent: a container already running is success (`already_running: true`).
/// - A missing container is a permanent error.
/// - Compensation stops the container (with [`StartContainer::stop_grace`]) unless it was already
///   running before the step; after a failed or interrupted attempt it stops it (the step's aim
///   was a running container, so the undo is a stopped one). A container gone by then is fine.
///
/// ```no_run
/// use bollard::Docker;
/// use saga_steps_docker::StartContainer;
///
/// let start = StartContainer::new(Docker::connect_with_local_defaults()?, "web-v2");
/// # let _ = start;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct StartContainer {
    docker: Docker,
    container: Input<String>,
    stop_grace: Duration,
}

/// What [`StartContainer`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedContainer {
    /// The container id.
    pub id: String,
    /// Whether it was running already (then the compensation leaves it running).
    pub already_running: bool,
}

impl fmt::Debug for StartContainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartContainer")
            .field("container", &self.container)
            .field("stop_grace", &self.stop_grace)
            .finish_non_exhaustive()
    }
}

impl StartContainer {
    /// Starts `container` (a name or id), through `docker`.
    pub fn new(docker: Docker, container: impl Into<Input<String>>) -> Self {
        StartContainer { docker, container: container.into(), stop_grace: DEFAULT_GRACE }
    }

    /// How long the compensation's stop waits after SIGTERM before SIGKILL. Default 10 s.
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }
}

#[async_trait]
impl Step for StartContainer {
    type Output = StartedContainer;

    async fn execute(&self, ctx: &StepContext) -> Result<StartedContainer, StepError> {
        let container = self.container.resolve(ctx)?;
        let Some(found) = inspect(&self.docker, &container).await? else {
            return Err(StepError::permanent(format!(
                "start container {container}: no such container"
            )));
        };
        let id = id_of(&found, &container);
        if is_running(&found) {
            tracing::info!(%container, "container already running");
            return Ok(StartedContainer { id, already_running: true });
        }
        start(&self.docker, &id).await?;
        tracing::info!(%container, "container started");
        Ok(StartedContainer { id, already_running: false })
    }

    async fn compensate(
        &self,
        ctx: &StepContext,
        executed: Executed<StartedContainer>,
    ) -> Result<(), StepError> {
        let container = match executed {
            Executed::Succeeded(StartedContainer { already_running: true, .. }) => return Ok(()),
            Executed::Succeeded(started) => started.id,
            Executed::Failed(_) | Executed::Unknown => self.container.resolve(ctx)?,
        };
        stop(&self.docker, &container, self.stop_grace, true).await
    }
}

/// Stops a container gracefully: SIGTERM, then SIGKILL after [`StopContainer::grace`].
///
/// The stop request lasts up to the grace period, so the `Docker` client's request timeout
/// (bollard's default is 120 s) must be longer than the grace; a client timeout is a transient
/// error and the retry stops the container again, idempotently.
///
/// - Idempotent: a container already stopped is success (`was_running: false`).
/// - A missing container is a permanent error.
/// - Compensation starts the container again unless it was already stopped before the step;
///   after a failed or interrupted attempt it starts it (a missing container then is fine). A
///   container that the step did stop but that is gone by the rollback is a compensation error:
///   that change cannot be undone.
///
/// ```no_run
/// use std::time::Duration;
/// use bollard::Docker;
/// use saga_steps_docker::StopContainer;
///
/// let stop = StopContainer::new(Docker::connect_with_local_defaults()?, "db-old")
///     .grace(Duration::from_secs(30));
/// # let _ = stop;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct StopContainer {
    docker: Docker,
    container: Input<String>,
    grace: Duration,
}

/// What [`StopContainer`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoppedContainer {
    /// The container id.
    pub id: String,
    /// Whether it was running (false: already stopped; the compensation then leaves it stopped).
    pub was_running: bool,
}

impl fmt::Debug for StopContainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopContainer")
            .field("container", &self.container)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

impl StopContainer {
    /// Stops `container` (a name or id), through `docker`.
    pub fn new(docker: Docker, container: impl Into<Input<String>>) -> Self {
        StopContainer { docker, container: container.into(), grace: DEFAULT_GRACE }
    }

    /// How long to wait after SIGTERM before SIGKILL. Default 10 s.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
}

#[async_trait]
impl Step for StopContainer {
    type Output = StoppedContainer;

    async fn execute(&self, ctx: &StepContext) -> Result<StoppedContainer, StepError> {
        let container = self.container.resolve(ctx)?;
        let Some(found) = inspect(&self.docker, &container).await? else {
            return Err(StepError::permanent(format!(
                "stop container {container}: no such container"
            )));
        };
        let id = id_of(&found, &container);
        if !is_running(&found) {
            tracing::info!(%container, "container already stopped");
            return Ok(StoppedContainer { id, was_running: false });
        }
        stop(&self.docker, &id, self.grace, false).await?;
        tracing::info!(%container, "container stopped");
        Ok(StoppedContainer { id, was_running: true })
    }

    async fn compensate(
        &self,
        ctx: &StepContext,
        executed: Executed<StoppedContainer>,
    ) -> Result<(), StepError> {
        match executed {
            Executed::Succeeded(StoppedContainer { was_running: false, .. }) => Ok(()),
            Executed::Succeeded(stopped) => start(&self.docker, &stopped.id).await,
            Executed::Failed(_) | Executed::Unknown => {
                let container = self.container.resolve(ctx)?;
                match self.docker.start_container(&container, None).await {
                    Ok(()) => Ok(()),
                    Err(e) if status_code(&e) == Some(404) => Ok(()),
                    Err(e) => Err(docker_error(&format!("start container {container}"), e)),
                }
            }
        }
    }
}
