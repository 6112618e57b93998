//! `CreateContainer` and `RemoveContainer`.

use std::fmt;

use bollard::models::{ContainerCreateBody, ContainerInspectResponse};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;
use saga_core::{async_trait, Executed, Step, StepContext, StepError, StepKind};
use serde::{Deserialize, Serialize};

use crate::classify::{docker_error, status_code};
use saga_core::Input;

/// The label that [`CreateContainer`] puts on the containers it creates: the step's idempotency
/// key (Operation id and step name), so that a retry recognises its own container.
pub const CREATED_BY_LABEL: &str = "io.saga.created-by";

/// The container [`CreateContainer`] creates: its name and its configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerSpec {
    /// The container's name. Choose a deterministic one (derived from the app and release, not
    /// random), so that a retry finds the container an earlier attempt created.
    pub name: String,
    /// What `docker create` is given: image, command, ports, health check, labels...
    pub config: ContainerCreateBody,
}

impl ContainerSpec {
    /// A spec of this name running `image` with the image's defaults.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        ContainerSpec {
            name: name.into(),
            config: ContainerCreateBody { image: Some(image.into()), ..Default::default() },
        }
    }
}

/// Creates a container (not started).
///
/// - Idempotent: the container carries the label [`CREATED_BY_LABEL`] with the step's
///   idempotency key; when the name is already taken by a container with this label (an earlier
///   attempt of this step), the step succeeds with that container.
/// - A name taken by any other container is a permanent error (a conflict retrying cannot solve),
///   as are a missing image and invalid parameters.
/// - Compensation removes the container (forcibly, in case it runs), and after a failed or
///   interrupted attempt removes the container of that name only if it carries this step's label.
///
/// ```no_run
/// use bollard::Docker;
/// use saga_steps_docker::{ContainerSpec, CreateContainer};
///
/// let docker = Docker::connect_with_local_defaults()?;
/// let create = CreateContainer::new(docker, ContainerSpec::new("web-v2", "registry:5000/web:2"));
/// # let _ = create;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct CreateContainer {
    docker: Docker,
    spec: Input<ContainerSpec>,
}

/// What [`CreateContainer`] created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedContainer {
    /// The container id.
    pub id: String,
    /// The container name.
    pub name: String,
}

impl fmt::Debug for CreateContainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateContainer").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl CreateContainer {
    /// Creates the container `spec` describes, through `docker`.
    pub fn new(docker: Docker, spec: impl Into<Input<ContainerSpec>>) -> Self {
        CreateContainer { docker, spec: spec.into() }
    }

    fn spec(&self, ctx: &StepContext) -> Result<ContainerSpec, StepError> {
        let spec = self.spec.resolve(ctx)?;
        if spec.name.trim().is_empty() {
            return Err(StepError::permanent("create container: the container name is empty"));
        }
        Ok(spec)
    }
}

/// Whether the container carries `key` in [`CREATED_BY_LABEL`].
fn created_by(container: &ContainerInspectResponse, key: &str) -> bool {
    container
        .config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .and_then(|labels| labels.get(CREATED_BY_LABEL))
        .is_some_and(|v| v == key)
}

/// The container named `name`, or `None` if there is none.
pub(crate) async fn inspect(
    docker: &Docker,
    name: &str,
) -> Result<Option<ContainerInspectResponse>, StepError> {
    match docker.inspect_container(name, None).await {
        Ok(container) => Ok(Some(container)),
        Err(e) if status_code(&e) == Some(404) => Ok(None),
        Err(e) => Err(docker_error(&format!("inspect container {name}"), e)),
    }
}

/// Removes the container forcibly; a container already gone is fine.
async fn remove_forcibly(docker: &Docker, name: &str) -> Result<(), StepError> {
    let options = RemoveContainerOptionsBuilder::default().force(true).build();
    match docker.remove_container(name, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if status_code(&e) == Some(404) => Ok(()),
        Err(e) => Err(docker_error(&format!("remove container {name}"), e)),
    }
}

#[async_trait]
impl Step for CreateContainer {
    type Output = CreatedContainer;

    async fn execute(&self, ctx: &StepContext) -> Result<CreatedContainer, StepError> {
        let ContainerSpec { name, mut config } = self.spec(ctx)?;
        let key = ctx.idempotency_key();
        config
            .labels
            .get_or_insert_with(Default::default)
            .insert(CREATED_BY_LABEL.into(), key.clone());
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        match self.docker.create_container(Some(options), config).await {
            Ok(created) => {
                tracing::info!(container = %name, id = %created.id, "container created");
                Ok(CreatedContainer { id: created.id, name })
            }
            Err(e) if status_code(&e) == Some(409) => {
                let Some(existing) = inspect(&self.docker, &name).await? else {
                    // Removed between the conflict and the look: worth another attempt.
                    let e = docker_error(&format!("create container {name}"), e);
                    return Err(StepError::transient(e.message()));
                };
                if created_by(&existing, &key) {
                    tracing::info!(container = %name, "container already created by an earlier attempt");
                    Ok(CreatedContainer { id: existing.id.unwrap_or_default(), name })
                } else {
                    Err(StepError::permanent(format!(
                        "create container {name}: a container of that name already exists and was \
                         not created by this step ({}): {}",
                        key,
                        crate::classify::describe(&e)
                    )))
                }
            }
            Err(e) => Err(docker_error(&format!("create container {name}"), e)),
        }
    }

    async fn compensate(
        &self,
        ctx: &StepContext,
        executed: Executed<CreatedContainer>,
    ) -> Result<(), StepError> {
        match executed {
            Executed::Succeeded(created) => remove_forcibly(&self.docker, &created.id).await,
            Executed::Failed(_) | Executed::Unknown => {
                let name = self.spec(ctx)?.name;
                match inspect(&self.docker, &name).await? {
                    Some(c) if created_by(&c, &ctx.idempotency_key()) => {
                        remove_forcibly(&self.docker, c.id.as_deref().unwrap_or(&name)).await
                    }
                    // Nothing, or someone else's container: not ours to remove.
                    _ => Ok(()),
                }
            }
        }
    }
}

/// Removes a container. Irreversible ([`StepKind::Irreversible`]): the rollback skips it and the
/// outcome names it as not undone.
///
/// Idempotent: a container already gone is success (`existed: false`). Removing a running
/// container is a permanent error unless [`RemoveContainer::force`] is set; stop it first.
///
/// ```no_run
/// use bollard::Docker;
/// use saga_steps_docker::RemoveContainer;
///
/// let remove = RemoveContainer::new(Docker::connect_with_local_defaults()?, "web-v1");
/// # let _ = remove;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct RemoveContainer {
    docker: Docker,
    container: Input<String>,
    force: bool,
}

/// What [`RemoveContainer`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedContainer {
    /// The container name or id given.
    pub container: String,
    /// Whether it existed (false: already gone).
    pub existed: bool,
}

impl fmt::Debug for RemoveContainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoveContainer")
            .field("container", &self.container)
            .field("force", &self.force)
            .finish_non_exhaustive()
    }
}

impl RemoveContainer {
    /// Removes `container` (a name or id), through `docker`.
    pub fn new(docker: Docker, container: impl Into<Input<String>>) -> Self {
        RemoveContainer { docker, container: container.into(), force: false }
    }

    /// Whether to kill and remove a running container. Default false.
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }
}

#[async_trait]
impl Step for RemoveContainer {
    type Output = RemovedContainer;

    async fn execute(&self, ctx: &StepContext) -> Result<RemovedContainer, StepError> {
        let container = self.container.resolve(ctx)?;
        let options = RemoveContainerOptionsBuilder::default().force(self.force).build();
        match self.docker.remove_container(&container, Some(options)).await {
            Ok(()) => {
                tracing::info!(%container, "container removed");
                Ok(RemovedContainer { container, existed: true })
            }
            Err(e) if status_code(&e) == Some(404) => {
                Ok(RemovedContainer { container, existed: false })
            }
            Err(e) => Err(docker_error(&format!("remove container {container}"), e)),
        }
    }

    fn kind(&self) -> StepKind {
        StepKind::Irreversible
    }
}
