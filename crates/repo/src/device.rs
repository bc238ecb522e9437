//! The device's memory of each repository: the newest snapshot it has seen, so a store
//! that serves an older state is caught (docs/FORMAT.md §Rollback).

use crate::error::{RepoError, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where a device keeps its state (`BACKLOCK_HOME`).
#[derive(Clone, Debug)]
pub struct DeviceHome {
    root: PathBuf,
}

/// What the device remembers of one repository.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenState {
    /// Newest snapshot sequence number seen.
    pub newest_seq: u64,
}

impl DeviceHome {
    /// State rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DeviceHome { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, repo_id: &str) -> PathBuf {
        self.root.join("repos").join(format!("{repo_id}.json"))
    }

    /// What this device saw of `repo_id` (default: nothing yet, a new phone).
    pub fn seen(&self, repo_id: &str) -> Result<SeenState> {
        let path = self.path(repo_id);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RepoError::Device {
                path,
                source: e.into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SeenState::default()),
            Err(source) => Err(RepoError::Device { path, source }),
        }
    }

    /// Records `seq` as seen if it is newer than what was recorded.
    pub fn record(&self, repo_id: &str, seq: u64) -> Result<()> {
        if self.seen(repo_id)?.newest_seq >= seq {
            return Ok(());
        }
        let path = self.path(repo_id);
        let state = SeenState { newest_seq: seq };
        let json = serde_json::to_vec_pretty(&state).expect("plain struct serialises");
        write_atomically(&path, &json).map_err(|source| RepoError::Device { path, source })
    }
}

/// Writes a small file via a temporary sibling and rename.
pub fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
