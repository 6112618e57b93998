//! `Recorded`: what an example set up once, kept as JSON in its data directory.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::BoxError;

/// A JSON file in the data directory that records what an example created in the emulator (ids
/// of instances, volumes, target groups), so that the next run reuses them instead of creating
/// more.
#[derive(Debug, Clone)]
pub struct Recorded {
    path: PathBuf,
}

impl Recorded {
    /// The record `name`.json in `data`.
    pub fn new(data: &Path, name: &str) -> Self {
        Recorded { path: data.join(format!("{name}.json")) }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What was recorded, or `None` if nothing was (or the file does not parse: then it is set
    /// up again).
    pub fn load<T: DeserializeOwned>(&self) -> Option<T> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Records `value`, atomically (a crash leaves the old record or the new one).
    pub fn save<T: Serialize>(&self, value: &T) -> Result<(), BoxError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temporary = self.path.with_extension("json.tmp");
        std::fs::write(&temporary, serde_json::to_vec_pretty(value)?)?;
        std::fs::rename(&temporary, &self.path)?;
        Ok(())
    }
}
