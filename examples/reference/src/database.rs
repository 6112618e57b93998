//! The examples' database: the test image serving the files of its volume, with "mounts" as
//! directories under the data directory.
//!
//! Each emulator instance is a directory `DIR/hosts/<instance>`, bind-mounted into the database
//! container at `/mnt`. A volume's files live in `DIR/volumes/<volume>` while it is not mounted;
//! mounting it on an instance moves them (one atomic rename) to `DIR/hosts/<instance>/data`, and
//! unmounting moves them back. The database serves `/mnt/data` over HTTP, so it is healthy only
//! while its volume is mounted on its instance.

use std::path::{Path, PathBuf};

use saga_steps_docker::ContainerSpec;

use crate::containers;

/// The file the database serves; its health check reads it.
pub const DATA_FILE: &str = "/index.html";

/// Where the hosts and volumes of one example live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `data` (the example's data directory), as an absolute path (Docker binds
    /// need one).
    pub fn new(data: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(data)?;
        Ok(Layout { root: std::fs::canonicalize(data)? })
    }

    /// The directory of an instance, bound into its database container at `/mnt`.
    pub fn host(&self, instance: &str) -> PathBuf {
        self.root.join("hosts").join(instance)
    }

    /// Where a volume's files are while it is mounted on `instance`.
    pub fn mount_point(&self, instance: &str) -> PathBuf {
        self.host(instance).join("data")
    }

    /// Where a volume's files are while it is not mounted.
    pub fn unmounted(&self, volume: &str) -> PathBuf {
        self.root.join("volumes").join(volume)
    }

    /// Creates the volume's files (a fresh, formatted volume, not mounted) unless they exist,
    /// unmounted or mounted on `instance`.
    pub fn format(&self, volume: &str, instance: &str) -> std::io::Result<()> {
        if self.unmounted(volume).exists() || self.mount_point(instance).exists() {
            return Ok(());
        }
        let dir = self.unmounted(volume);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(DATA_FILE.trim_start_matches('/')), format!("{volume}\n"))
    }

    /// Whether the volume's files are mounted on `instance`.
    pub fn is_mounted(&self, instance: &str) -> bool {
        self.mount_point(instance).is_dir()
    }

    /// Mounts the volume on `instance`; mounted there already is fine.
    pub fn mount(&self, volume: &str, instance: &str) -> std::io::Result<()> {
        let (from, to) = (self.unmounted(volume), self.mount_point(instance));
        if to.is_dir() && !from.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(self.host(instance))?;
        std::fs::rename(&from, &to)
    }

    /// Unmounts the volume from `instance`; not mounted there is fine.
    pub fn unmount(&self, volume: &str, instance: &str) -> std::io::Result<()> {
        let (from, to) = (self.mount_point(instance), self.unmounted(volume));
        if !from.exists() {
            return Ok(());
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(&from, &to)
    }

    /// The database container `name` of app `app` on `instance`, running `image` (a full
    /// reference): the image's HTTP server serving the mounted volume, on a port Docker picks.
    pub fn container(&self, app: &str, name: &str, image: &str, instance: &str) -> ContainerSpec {
        let bind = format!("{}:/mnt", self.host(instance).display());
        let cmd = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/mnt/data"];
        let mut spec = containers::spec(app, name, image, 0, &[bind], &cmd);
        // The image's HEALTHCHECK asks for `/`; the database is healthy when it serves its data.
        spec.config.healthcheck = Some(bollard::models::HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        });
        spec
    }
}
