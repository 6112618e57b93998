//! `CreateContainer` and `RemoveContainer`.

use std::fmt;

use bollard::models::{ContainerCreateBody, ContainerInspectResponse};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;
use saga_core::{async_trait, Executed, FencingToken, Step, StepContext, StepError, StepKind};
use serde::{Deserialize, Serialize};

use crate::classify::{docker_error, status_code};
use saga_core::Input;

/// The label that [`CreateContainer`] puts on the containers it creates: the step's idempotency
/// key (Operation id and step name), so that a retry recognises its own container.
pub const CREATED_BY_LABEL: &str = "io.saga.created-by";

/// The label that [`CreateContainer`] puts on the containers it creates: the fencing token of
/// the attempt that created it ([`StepContext::fencing_token`], written `<operation>/<epoch>`),
/// so that an attempt of a stale executor, which lost the Operation to another, recognises a
/// container of a newer one and leaves it alone. See [`CreateContainer`].
pub const FENCING_TOKEN_LABEL: &str = "io.saga.fencing-token";

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
/// # Fencing a stale executor
///
/// The container also carries the label [`FENCING_TOKEN_LABEL`]: the
/// [fencing token](saga_core::FencingToken) of the attempt that created it. An executor paused
/// in the middle of this step (SIGSTOP, a VM migration) may deliver its requests after another
/// executor took the Operation over and ran the step again under a higher token. So before it
/// adopts a container of its own name and label (after a name conflict) and before the
/// compensation removes one, the step reads that label: a token of the same Operation with a
/// **higher** epoch than this attempt's means this attempt comes from a stale executor, and it
/// fails with a permanent error naming the container and both tokens, changing nothing. A
/// container without the label (created by an older release of this crate) or with an equal or
/// lower epoch (a retry, or an earlier executor's attempt this one takes over) is adopted or
/// removed as before. A label that is not a token is a permanent error.
///
/// This narrows the window of a stale executor; it does not close it:
///
/// - Reading the label and removing the container are two requests (Docker has no conditional
///   delete): a stale executor paused between them still sends the removal of the container it
///   read. It removes by the id it read, never by name, so a container created under the name
///   since is safe; one that a newer executor adopted since is not.
/// - Docker cannot change a container's labels: a container that a newer executor adopted
///   (rather than created) keeps the token of the attempt that created it, so a stale request
///   of that creator's epoch passes the check.
///
/// It still matters: a paused process typically resumes long after the takeover, and every
/// check it makes once the newer executor has created its container refuses it. Its late
/// create (atomic by name: it cannot replace the container) fails loudly instead of reporting
/// the newer executor's container as its own, and its compensation does not remove the
/// container the Operation goes on with.
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

/// The value of the container's label `label`, if it has one.
fn label<'a>(container: &'a ContainerInspectResponse, label: &str) -> Option<&'a str> {
    container
        .config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .and_then(|labels| labels.get(label))
        .map(String::as_str)
}

/// Whether the container carries `key` in [`CREATED_BY_LABEL`].
fn created_by(container: &ContainerInspectResponse, key: &str) -> bool {
    label(container, CREATED_BY_LABEL) == Some(key)
}

/// How the container is named in errors: its name (as given) and its id when known.
fn describe_container(container: &ContainerInspectResponse, name: &str) -> String {
    match container.id.as_deref() {
        Some(id) if id != name => format!("{name} ({id})"),
        _ => name.to_owned(),
    }
}

/// Refuses to act (`doing`) on the container when its [`FENCING_TOKEN_LABEL`] holds a token of
/// the same Operation with a higher epoch than `ctx`'s: the attempt comes from a stale
/// executor. A container without the label, or with a token of another Operation or an equal
/// or lower epoch, passes; a label that is not a token is a permanent error.
fn check_fencing(
    container: &ContainerInspectResponse,
    name: &str,
    ctx: &StepContext,
    doing: &str,
) -> Result<(), StepError> {
    let Some(text) = label(container, FENCING_TOKEN_LABEL) else { return Ok(()) };
    let which = describe_container(container, name);
    let theirs: FencingToken = text.parse().map_err(|e| {
        StepError::permanent(format!(
            "{doing} container {which}: its label {FENCING_TOKEN_LABEL} is not a fencing \
             token: {e}"
        ))
    })?;
    let mine = ctx.fencing_token();
    if theirs.operation == mine.operation && theirs.epoch > mine.epoch {
        tracing::warn!(container = %which, %mine, %theirs, "stale executor refused");
        return Err(StepError::permanent(format!(
            "{doing} container {which}: refused, this attempt is from a stale executor: its \
             fencing token {mine} is older than the token {theirs} the container carries (a \
             newer executor took the Operation over and created it); nothing was changed"
        )));
    }
    Ok(())
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
        let labels = config.labels.get_or_insert_with(Default::default);
        labels.insert(CREATED_BY_LABEL.into(), key.clone());
        labels.insert(FENCING_TOKEN_LABEL.into(), ctx.fencing_token().to_string());
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
                    check_fencing(&existing, &name, ctx, "create")?;
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
        // Read the container (by id when the step succeeded), compare its token, then remove
        // it by the id read: a container created under that name since is never touched.
        let found = match executed {
            Executed::Succeeded(created) => {
                inspect(&self.docker, &created.id).await?.map(|c| (c, created.name))
            }
            Executed::Failed(_) | Executed::Unknown => {
                let name = self.spec(ctx)?.name;
                match inspect(&self.docker, &name).await? {
                    Some(c) if created_by(&c, &ctx.idempotency_key()) => Some((c, name)),
                    // Nothing, or someone else's container: not ours to remove.
                    _ => None,
                }
            }
        };
        let Some((container, name)) = found else { return Ok(()) };
        check_fencing(&container, &name, ctx, "remove")?;
        remove_forcibly(&self.docker, container.id.as_deref().unwrap_or(&name)).await
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
