//! The device's memory of each repository: the newest snapshot it has seen, so a store
//! that serves an older state is caught (docs/FORMAT.md §Rollback); in password mode the
//! backup key itself, so the original device backs up without asking; and the vault
//! public keys it pinned (docs/VAULT.md §Pinning).

use crate::error::{RepoError, Result};
use backlock_core::key::BackupKey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

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

impl DeviceHome {
    /// Where the key for the repository at `location` is kept: named by a hash of the
    /// location, so the directory listing does not reveal where backups go.
    pub fn key_path(&self, location: &str) -> PathBuf {
        let id = blake3::hash(location.as_bytes()).to_hex();
        self.root.join("keys").join(format!("{}.key", &id[..32]))
    }

    /// The backup key this device keeps for `location`, if any.
    pub fn load_key(&self, location: &str) -> Result<Option<BackupKey>> {
        let path = self.key_path(location);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(RepoError::Device { path, source }),
        };
        let line = text.lines().find(|l| !l.starts_with('#')).unwrap_or("");
        BackupKey::parse(line)
            .map(Some)
            .map_err(|e| RepoError::Device {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
            })
    }

    /// Keeps `key` for `location` (file mode 0600, replaced atomically).
    pub fn save_key(&self, location: &str, key: &BackupKey) -> Result<()> {
        let path = self.key_path(location);
        let text = Zeroizing::new(format!(
            "# backlock backup key for {location}\n{}\n",
            key.to_display().as_str()
        ));
        // NamedTempFile creates the file with mode 0600 before anything is written.
        write_atomically(&path, text.as_bytes())
            .map_err(|source| RepoError::Device { path, source })
    }

    /// Forgets the key kept for `location`.
    pub fn forget_key(&self, location: &str) -> Result<()> {
        let path = self.key_path(location);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RepoError::Device { path, source }),
        }
    }

    fn pins_path(&self) -> PathBuf {
        self.root.join("vault-pins.json")
    }

    fn pins(&self) -> Result<BTreeMap<String, String>> {
        let path = self.pins_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RepoError::Device {
                path,
                source: e.into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(RepoError::Device { path, source }),
        }
    }

    /// The vault public key pinned for `vault` (hex), if one was pinned.
    pub fn vault_pin(&self, vault: &str) -> Result<Option<String>> {
        Ok(self.pins()?.remove(vault))
    }

    /// Pins `public_key_hex` for `vault`.
    pub fn pin_vault(&self, vault: &str, public_key_hex: &str) -> Result<()> {
        let mut pins = self.pins()?;
        pins.insert(vault.to_owned(), public_key_hex.to_owned());
        let path = self.pins_path();
        let json = serde_json::to_vec_pretty(&pins).expect("map of strings serialises");
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
