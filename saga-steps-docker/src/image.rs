//! `PullImage`: pre-pull an image, failing over across an ordered list of registries.

use std::fmt;
use std::time::Duration;

use bollard::query_parameters::{
    CreateImageOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use saga_core::{async_trait, ErrorKind, Executed, RetryPolicy, Step, StepContext, StepError};
use serde::{Deserialize, Serialize};

use crate::classify::{classify, describe, docker_error, status_code};
use saga_core::Input;

/// The repository of the marker tags that record which Operation step pulled an image.
pub const PULL_MARKER_REPOSITORY: &str = "saga-pulled";

/// Pulls an image onto one Docker host, trying an ordered list of registries (a primary, then its
/// mirrors) until one serves it.
///
/// - The image is a repository path and tag inside the registries (`team/app:1.4`); the step pulls
///   `REGISTRY/team/app:1.4` from each registry in turn. A registry that is down, answers 5xx or
///   times out, or does not have the image, is skipped for the next one; the output records which
///   registry served and why the ones before it were skipped.
/// - Idempotent: if the image is already on the host under one of those references, the step
///   succeeds without pulling (`pulled: false`).
/// - Errors: when no registry serves the image, the error lists every registry's answer; it is
///   transient if any registry failed for a transient reason (down, 5xx, timeout) and permanent
///   when every registry answered that the image is missing (or the reference is invalid).
/// - Compensation removes the image only if this step pulled it. To know that also after a failed
///   or interrupted attempt, a pull tags the image `saga-pulled:<operation>-<step>` (see
///   [`PULL_MARKER_REPOSITORY`]); the compensation removes the pulled reference and that tag, so
///   the image leaves the host unless something else tagged or uses it. A crash between the pull
///   and the tag leaves the image on the host: harmless, it is a cache.
///
/// ```no_run
/// use bollard::Docker;
/// use saga_steps_docker::PullImage;
///
/// let docker = Docker::connect_with_local_defaults()?;
/// let pull = PullImage::new(docker, ["registry.internal:5000", "mirror.internal:5000"], "team/app:1.4");
/// # let _ = pull;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct PullImage {
    docker: Docker,
    registries: Vec<String>,
    image: Input<String>,
    registry_timeout: Duration,
    retry: RetryPolicy,
}

/// What [`PullImage`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PulledImage {
    /// The reference now on the host: `REGISTRY/PATH:TAG`.
    pub reference: String,
    /// The registry that served it (or under whose reference it already was on the host).
    pub registry: String,
    /// The image id.
    pub id: String,
    /// Whether this step pulled it (false: it was already on the host).
    pub pulled: bool,
    /// The registries tried before the one that served, each with why it was skipped.
    pub skipped: Vec<SkippedRegistry>,
}

/// A registry that [`PullImage`] skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedRegistry {
    /// The registry.
    pub registry: String,
    /// Its error, with the Docker message.
    pub error: String,
    /// Whether the error was transient (down, 5xx, timeout) rather than a missing image.
    pub transient: bool,
}

impl fmt::Debug for PullImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullImage")
            .field("registries", &self.registries)
            .field("image", &self.image)
            .field("registry_timeout", &self.registry_timeout)
            .finish_non_exhaustive()
    }
}

impl PullImage {
    /// Pulls `image` (a path and tag inside the registries) from the first of `registries`
    /// (`host:port` each, in order of preference) that serves it, through `docker`.
    pub fn new<R: Into<String>>(
        docker: Docker,
        registries: impl IntoIterator<Item = R>,
        image: impl Into<Input<String>>,
    ) -> Self {
        PullImage {
            docker,
            registries: registries.into_iter().map(Into::into).collect(),
            image: image.into(),
            registry_timeout: Duration::from_secs(600),
            retry: RetryPolicy::default(),
        }
    }

    /// How long one registry may take to serve the whole pull before the next is tried (transient).
    /// Default 10 minutes.
    pub fn registry_timeout(mut self, timeout: Duration) -> Self {
        self.registry_timeout = timeout;
        self
    }

    /// How the step is retried when every registry failed for a transient reason. Default
    /// [`RetryPolicy::default`].
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    fn reference(registry: &str, image: &str) -> String {
        format!("{}/{}", registry.trim_end_matches('/'), image.trim_start_matches('/'))
    }

    /// The image id under `reference`, or `None` if the host does not have it.
    async fn local_id(&self, reference: &str) -> Result<Option<String>, StepError> {
        match self.docker.inspect_image(reference).await {
            Ok(inspect) => Ok(Some(inspect.id.unwrap_or_default())),
            Err(e) if status_code(&e) == Some(404) => Ok(None),
            Err(e) => Err(docker_error(&format!("inspect image {reference}"), e)),
        }
    }

    async fn pull_one(
        &self,
        ctx: &StepContext,
        reference: &str,
    ) -> Result<(), bollard::errors::Error> {
        let options = CreateImageOptionsBuilder::default().from_image(reference).build();
        let mut stream = self.docker.create_image(Some(options), None, None);
        let pull = async {
            while let Some(progress) = stream.next().await {
                progress?;
            }
            Ok(())
        };
        tokio::select! {
            result = tokio::time::timeout(self.registry_timeout, pull) => {
                result.unwrap_or(Err(bollard::errors::Error::RequestTimeoutError))
            }
            _ = ctx.cancellation().cancelled() => Err(bollard::errors::Error::DockerStreamError {
                error: "cancelled".into(),
            }),
        }
    }

    async fn remove_reference(&self, reference: &str) -> Result<(), StepError> {
        let options = RemoveImageOptionsBuilder::default().build();
        match self.docker.remove_image(reference, Some(options), None).await {
            Ok(_) => Ok(()),
            Err(e) if status_code(&e) == Some(404) => Ok(()),
            Err(e) => Err(docker_error(&format!("remove image {reference}"), e)),
        }
    }
}

/// The marker tag (`saga-pulled:<tag>`) for this Operation step: a valid Docker tag derived from
/// the idempotency key, stable across attempts and processes.
fn marker_tag(ctx: &StepContext) -> String {
    let key = ctx.idempotency_key();
    let mut tag: String = key
        .chars()
        .map(
            |c| if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' { c } else { '_' },
        )
        .collect();
    if tag.len() > 100 || tag != key {
        // Keep it short and unambiguous: a prefix plus a stable hash of the whole key.
        tag.truncate(100);
        tag = format!("{tag}-{:016x}", fnv1a(key.as_bytes()));
    }
    if !tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
        tag.insert(0, '_');
    }
    tag
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[async_trait]
impl Step for PullImage {
    type Output = PulledImage;

    async fn execute(&self, ctx: &StepContext) -> Result<PulledImage, StepError> {
        let image = self.image.resolve(ctx)?;
        if image.trim().is_empty() {
            return Err(StepError::permanent("pull image: the image name is empty"));
        }
        if self.registries.is_empty() {
            return Err(StepError::permanent(format!("pull image {image}: no registry given")));
        }
        let marker = format!("{PULL_MARKER_REPOSITORY}:{}", marker_tag(ctx));
        let marker_id = self.local_id(&marker).await?;

        // Already on the host under one of the references: nothing to pull.
        for registry in &self.registries {
            let reference = Self::reference(registry, &image);
            if let Some(id) = self.local_id(&reference).await? {
                // An earlier attempt of this step may have pulled it: its marker says so.
                let pulled = marker_id.as_deref() == Some(id.as_str());
                tracing::info!(%reference, pulled, "image already on the host");
                return Ok(PulledImage {
                    reference,
                    registry: registry.clone(),
                    id,
                    pulled,
                    skipped: Vec::new(),
                });
            }
        }

        let mut skipped = Vec::new();
        for registry in &self.registries {
            if ctx.cancellation().is_cancelled() {
                return Err(StepError::cancelled());
            }
            let reference = Self::reference(registry, &image);
            match self.pull_one(ctx, &reference).await {
                Ok(()) => {
                    let Some(id) = self.local_id(&reference).await? else {
                        return Err(StepError::transient(format!(
                            "pull {reference}: the pull finished but the image is not on the host"
                        )));
                    };
                    let (repo, tag) =
                        marker.split_once(':').unwrap_or((PULL_MARKER_REPOSITORY, "latest"));
                    let options = TagImageOptionsBuilder::default().repo(repo).tag(tag).build();
                    self.docker
                        .tag_image(&reference, Some(options))
                        .await
                        .map_err(|e| docker_error(&format!("tag {reference} as {marker}"), e))?;
                    tracing::info!(%reference, %registry, skipped = skipped.len(), "image pulled");
                    return Ok(PulledImage {
                        reference,
                        registry: registry.clone(),
                        id,
                        pulled: true,
                        skipped,
                    });
                }
                Err(e) => {
                    if ctx.cancellation().is_cancelled() {
                        return Err(StepError::cancelled());
                    }
                    let transient = classify(&e) == ErrorKind::Transient;
                    let error = describe(&e);
                    tracing::warn!(%registry, %error, transient, "registry did not serve the image; trying the next");
                    skipped.push(SkippedRegistry { registry: registry.clone(), error, transient });
                }
            }
        }

        let answers: Vec<String> =
            skipped.iter().map(|s| format!("{}: {}", s.registry, s.error)).collect();
        let message = format!("pull {image}: no registry served it ({})", answers.join("; "));
        if skipped.iter().any(|s| s.transient) {
            Err(StepError::transient(message))
        } else {
            Err(StepError::permanent(message))
        }
    }

    async fn compensate(
        &self,
        ctx: &StepContext,
        executed: Executed<PulledImage>,
    ) -> Result<(), StepError> {
        let marker = format!("{PULL_MARKER_REPOSITORY}:{}", marker_tag(ctx));
        match executed {
            Executed::Succeeded(output) if !output.pulled => Ok(()),
            Executed::Succeeded(output) => {
                self.remove_reference(&output.reference).await?;
                self.remove_reference(&marker).await
            }
            Executed::Failed(_) | Executed::Unknown => {
                // Only what the marker proves this step pulled.
                let Some(marker_id) = self.local_id(&marker).await? else {
                    return Ok(());
                };
                let image = self.image.resolve(ctx)?;
                for registry in &self.registries {
                    let reference = Self::reference(registry, &image);
                    if self.local_id(&reference).await?.as_deref() == Some(marker_id.as_str()) {
                        self.remove_reference(&reference).await?;
                    }
                }
                self.remove_reference(&marker).await
            }
        }
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.retry.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_join_registry_and_path() {
        assert_eq!(
            PullImage::reference("127.0.0.1:5000", "team/app:1"),
            "127.0.0.1:5000/team/app:1"
        );
        assert_eq!(PullImage::reference("r.example:5000/", "/app:1"), "r.example:5000/app:1");
    }

    #[test]
    fn fnv_is_stable() {
        // Marker tags must not change between releases: a rollback may run in a newer binary.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
