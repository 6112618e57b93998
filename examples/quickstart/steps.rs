//! The quickstart's five steps, with real side effects under `DIR/world`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use saga_core::{async_trait, Executed, Saga, Step, StepContext, StepError, StepKind};
use serde::{Deserialize, Serialize};

/// The saga's name.
pub(crate) const SAGA: &str = "provision-site";

/// The step names, in order.
pub(crate) const STEPS: [&str; 5] =
    ["create-site", "write-config", "migrate", "warm-cache", "publish"];

/// How many cache chunks `warm-cache` writes.
pub(crate) const CACHE_CHUNKS: usize = 6;

/// The Operation's params: the site and the faults to inject.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Params {
    /// The site's name; its files live in `world/sites/<site>`.
    pub(crate) site: String,
    /// The step that fails (permanently) before its effect.
    pub(crate) fail_at: Option<String>,
    /// The step that panics before its effect. Absent from the params of older runs.
    #[serde(default)]
    pub(crate) panic_at: Option<String>,
    /// The step after whose effect the process aborts, on its first attempt only.
    pub(crate) crash_at: Option<String>,
    /// How long warming the cache takes.
    pub(crate) warm_ms: u64,
}

/// Where a site's pieces are.
#[derive(Clone, Debug)]
pub(crate) struct World {
    root: PathBuf,
}

impl World {
    /// The world under `root`.
    pub(crate) fn new(root: impl Into<PathBuf>) -> Self {
        World { root: root.into() }
    }

    /// The site's directory.
    pub(crate) fn site(&self, site: &str) -> PathBuf {
        self.root.join("sites").join(site)
    }

    /// The site's config file.
    pub(crate) fn config(&self, site: &str) -> PathBuf {
        self.site(site).join("config.json")
    }

    /// The site's cache directory.
    pub(crate) fn cache(&self, site: &str) -> PathBuf {
        self.site(site).join("cache")
    }

    /// The published symlink of the site.
    pub(crate) fn public(&self, site: &str) -> PathBuf {
        self.root.join("public").join(site)
    }

    /// The migrations log, which only grows.
    pub(crate) fn migrations(&self) -> PathBuf {
        self.root.join("migrations.log")
    }
}

/// The saga, with its steps acting on `world`.
pub(crate) fn saga(world: &World) -> Result<Saga, saga_core::Error> {
    Saga::builder(SAGA, 1)
        .step("create-site", CreateSite(world.clone()))
        .step("write-config", WriteConfig(world.clone()))
        .step("migrate", Migrate(world.clone()))
        .step("warm-cache", WarmCache(world.clone()))
        .step("publish", Publish(world.clone()))
        .build()
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StepError {
    StepError::transient(format!("{what} {}: {e}", path.display()))
}

/// Fails before the effect if `--fail-at` names this step; panics there if `--panic-at` does.
fn before(ctx: &StepContext) -> Result<Params, StepError> {
    let params: Params = ctx.params()?;
    if params.fail_at.as_deref() == Some(ctx.step_name()) {
        tracing::warn!("injected failure (--fail-at)");
        return Err(StepError::permanent("injected failure (--fail-at)"));
    }
    if params.panic_at.as_deref() == Some(ctx.step_name()) {
        panic!("injected panic (--panic-at)");
    }
    Ok(params)
}

/// Aborts the process after the effect if `--crash-at` names this step, on its first attempt.
fn after(ctx: &StepContext, params: &Params) {
    if params.crash_at.as_deref() == Some(ctx.step_name()) && ctx.attempt() == 1 {
        eprintln!("quickstart: crashing after the effect of {} (--crash-at)", ctx.step_name());
        std::process::abort();
    }
}

fn remove_dir(path: &Path) -> Result<(), StepError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("cannot remove", path, e)),
    }
}

fn remove_file(path: &Path) -> Result<(), StepError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("cannot remove", path, e)),
    }
}

/// Creates the site's directory.
pub(crate) struct CreateSite(World);

#[async_trait]
impl Step for CreateSite {
    type Output = String;

    async fn execute(&self, ctx: &StepContext) -> Result<String, StepError> {
        let params = before(ctx)?;
        let dir = self.0.site(&params.site);
        std::fs::create_dir_all(&dir).map_err(|e| io_error("cannot create", &dir, e))?;
        tracing::info!(path = %dir.display(), "created the site directory");
        after(ctx, &params);
        Ok(dir.display().to_string())
    }

    async fn compensate(&self, ctx: &StepContext, _: Executed<String>) -> Result<(), StepError> {
        let params: Params = ctx.params()?;
        remove_dir(&self.0.site(&params.site))?;
        tracing::info!("removed the site directory");
        Ok(())
    }
}

/// Writes the site's config.
pub(crate) struct WriteConfig(World);

#[async_trait]
impl Step for WriteConfig {
    type Output = ();

    async fn execute(&self, ctx: &StepContext) -> Result<(), StepError> {
        let params = before(ctx)?;
        let path = self.0.config(&params.site);
        let config =
            format!("{{\"site\": {:?}, \"operation\": \"{}\"}}\n", params.site, ctx.operation_id());
        std::fs::write(&path, config).map_err(|e| io_error("cannot write", &path, e))?;
        tracing::info!(path = %path.display(), "wrote the config");
        after(ctx, &params);
        Ok(())
    }

    async fn compensate(&self, ctx: &StepContext, _: Executed<()>) -> Result<(), StepError> {
        let params: Params = ctx.params()?;
        remove_file(&self.0.config(&params.site))
    }
}

/// Runs the site's "migration": appends a line to the migrations log. Irreversible.
pub(crate) struct Migrate(World);

#[async_trait]
impl Step for Migrate {
    type Output = ();

    async fn execute(&self, ctx: &StepContext) -> Result<(), StepError> {
        let params = before(ctx)?;
        let path = self.0.migrations();
        let line = format!("{} {}", params.site, ctx.idempotency_key());
        let existing = std::fs::read_to_string(&path).unwrap_or_default();
        // Idempotent: a migration already applied by an earlier attempt is not applied again.
        if !existing.lines().any(|l| l == line) {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_error("cannot open", &path, e))?;
            // One write(2), so that Operations running at once (in this process or others
            // sharing the world) never interleave their lines: `writeln!` writes the line and
            // its newline in two.
            file.write_all(format!("{line}\n").as_bytes())
                .map_err(|e| io_error("cannot append to", &path, e))?;
            tracing::info!("applied migration 1");
        }
        after(ctx, &params);
        Ok(())
    }

    fn kind(&self) -> StepKind {
        StepKind::Irreversible
    }
}

/// Warms the site's cache: slow, and stops promptly when the Operation is cancelled.
pub(crate) struct WarmCache(World);

#[async_trait]
impl Step for WarmCache {
    type Output = usize;

    async fn execute(&self, ctx: &StepContext) -> Result<usize, StepError> {
        let params = before(ctx)?;
        let dir = self.0.cache(&params.site);
        std::fs::create_dir_all(&dir).map_err(|e| io_error("cannot create", &dir, e))?;
        let pause = Duration::from_millis(params.warm_ms / CACHE_CHUNKS as u64);
        for chunk in 0..CACHE_CHUNKS {
            let path = dir.join(format!("chunk-{chunk}"));
            std::fs::write(&path, [chunk as u8; 1024])
                .map_err(|e| io_error("cannot write", &path, e))?;
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = ctx.cancellation().cancelled() => return Err(StepError::cancelled()),
            }
        }
        tracing::info!(chunks = CACHE_CHUNKS, "warmed the cache");
        after(ctx, &params);
        Ok(CACHE_CHUNKS)
    }

    async fn compensate(&self, ctx: &StepContext, _: Executed<usize>) -> Result<(), StepError> {
        let params: Params = ctx.params()?;
        remove_dir(&self.0.cache(&params.site))
    }

    fn timeout(&self) -> Option<Duration> {
        Some(Duration::from_secs(60))
    }
}

/// Publishes the site: a symlink `world/public/<site>` to its directory.
pub(crate) struct Publish(World);

#[async_trait]
impl Step for Publish {
    type Output = String;

    async fn execute(&self, ctx: &StepContext) -> Result<String, StepError> {
        let params = before(ctx)?;
        let link = self.0.public(&params.site);
        let target = PathBuf::from("../sites").join(&params.site);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_error("cannot create", parent, e))?;
        }
        match std::fs::read_link(&link) {
            Ok(existing) if existing == target => {}
            Ok(_) => remove_file(&link)?,
            Err(_) => {}
        }
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(&target, &link).map_err(|e| io_error("cannot link", &link, e))?;
        }
        tracing::info!(link = %link.display(), "published");
        after(ctx, &params);
        Ok(link.display().to_string())
    }

    async fn compensate(&self, ctx: &StepContext, _: Executed<String>) -> Result<(), StepError> {
        let params: Params = ctx.params()?;
        remove_file(&self.0.public(&params.site))
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::fs::write(link, target.display().to_string())
}
