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
    /// Newest index set sequence number seen (docs/FORMAT.md §Index sets).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub newest_index_set: u64,
    /// Older snapshots the user chose to restore after a rollback or damage error
    /// (`restore --accept-older`), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_older: Vec<AcceptedOlder>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One `restore --accept-older`: which snapshot, and what the device had seen then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedOlder {
    /// The snapshot restored.
    pub snapshot: String,
    /// Its sequence number.
    pub seq: u64,
    /// The newest sequence this device had seen.
    pub seen: u64,
    /// When, seconds since the Unix epoch.
    pub at_unix: i64,
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
        let state = SeenState {
            newest_seq: seq,
            ..self.seen(repo_id)?
        };
        self.write_seen(repo_id, &state)
    }

    /// Records index set `seq` as seen if it is newer than what was recorded.
    pub fn record_index_set(&self, repo_id: &str, seq: u64) -> Result<()> {
        let state = self.seen(repo_id)?;
        if state.newest_index_set >= seq {
            return Ok(());
        }
        let state = SeenState {
            newest_index_set: seq,
            ..state
        };
        self.write_seen(repo_id, &state)
    }

    /// Records that the user restored `snapshot` (`seq`) although this device had
    /// seen a newer one.
    pub fn record_accepted_older(&self, repo_id: &str, snapshot: &str, seq: u64) -> Result<()> {
        let mut state = self.seen(repo_id)?;
        state.accepted_older.push(AcceptedOlder {
            snapshot: snapshot.to_string(),
            seq,
            seen: state.newest_seq,
            at_unix: crate::now_unix_ns().div_euclid(1_000_000_000),
        });
        self.write_seen(repo_id, &state)
    }

    fn write_seen(&self, repo_id: &str, state: &SeenState) -> Result<()> {
        let path = self.path(repo_id);
        let json = serde_json::to_vec_pretty(state).expect("plain struct serialises");
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
        self.write_key(location, key, true)
    }

    /// Keeps `key` for `location` only if no key is kept there yet: a second process
    /// that would overwrite the key a first one is about to switch the repository to
    /// gets [`RepoError::KeyAlreadyKept`] instead.
    pub fn save_new_key(&self, location: &str, key: &BackupKey) -> Result<()> {
        self.write_key(location, key, false)
    }

    fn write_key(&self, location: &str, key: &BackupKey, replace: bool) -> Result<()> {
        let path = self.key_path(location);
        let text = Zeroizing::new(format!(
            "# backlock backup key for {location}\n{}\n",
            key.to_display().as_str()
        ));
        // A save killed before its rename left a temporary file holding a key.
        remove_stale_temps(&path).map_err(|source| RepoError::Device {
            path: path.clone(),
            source,
        })?;
        // NamedTempFile creates the file with mode 0600 before anything is written.
        match write_via_temp(&path, text.as_bytes(), replace) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(RepoError::KeyAlreadyKept { path })
            }
            Err(source) => Err(RepoError::Device { path, source }),
        }
    }

    /// Forgets the key kept for `location`, with any copy a killed save left behind.
    pub fn forget_key(&self, location: &str) -> Result<()> {
        let path = self.key_path(location);
        let removed = match std::fs::remove_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        removed
            .and_then(|()| remove_stale_temps(&path))
            .map_err(|source| RepoError::Device { path, source })
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

impl DeviceHome {
    fn bundles_path(&self) -> PathBuf {
        self.root.join("vault-bundles.json")
    }

    /// The newest fleet bundle version this device took for `fleet` (named with its
    /// signer), if any.
    pub fn bundle_version(&self, fleet: &str) -> Result<Option<u64>> {
        let path = self.bundles_path();
        let versions: BTreeMap<String, u64> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RepoError::Device {
                path: path.clone(),
                source: e.into(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(RepoError::Device { path, source }),
        };
        Ok(versions.get(fleet).copied())
    }

    /// Records that this device took version `version` of `fleet`'s bundle.
    pub fn record_bundle_version(&self, fleet: &str, version: u64) -> Result<()> {
        let path = self.bundles_path();
        let mut versions: BTreeMap<String, u64> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
        let newest = versions.entry(fleet.to_owned()).or_insert(version);
        *newest = (*newest).max(version);
        let json = serde_json::to_vec_pretty(&versions).expect("map of numbers serialises");
        write_atomically(&path, &json).map_err(|source| RepoError::Device { path, source })
    }
}

/// Writes a small file via a temporary sibling and rename.
pub fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_via_temp(path, data, true)
}

/// The temporary siblings of `path` are `.<file name>.<random>.tmp`, so the ones a
/// killed writer left behind can be found and removed.
fn temp_prefix(path: &Path) -> String {
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
    format!(".{}.", file.unwrap_or_default())
}

fn write_via_temp(path: &Path, data: &[u8], replace: bool) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    if replace {
        tmp.persist(path).map_err(|e| e.error)?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| e.error)?;
    }
    Ok(())
}

/// Removes the temporary siblings of `path` that killed writers left behind.
fn remove_stale_temps(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let prefix = temp_prefix(path);
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            match std::fs::remove_file(dir.join(&*name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_key_copy_left_by_a_killed_save_is_removed_by_the_next_save_and_by_forget() {
        let dir = tempfile::tempdir().unwrap();
        let home = DeviceHome::new(dir.path());
        let path = home.key_path("s3://bucket/chats");
        let keys = path.parent().unwrap();
        std::fs::create_dir_all(keys).unwrap();
        // What a save killed between its write and its rename leaves.
        let stale = keys.join(format!("{}abc123.tmp", temp_prefix(&path)));
        std::fs::write(&stale, "# old\n0000").unwrap();
        let other = keys.join(".unrelated.tmp");
        std::fs::write(&other, "not ours").unwrap();

        home.save_key("s3://bucket/chats", &BackupKey::generate())
            .unwrap();
        assert!(!stale.exists());
        std::fs::write(&stale, "# old\n0000").unwrap();
        home.forget_key("s3://bucket/chats").unwrap();
        assert_eq!(files(keys), [".unrelated.tmp"]);
    }

    #[test]
    fn a_new_key_never_replaces_a_kept_one() {
        let dir = tempfile::tempdir().unwrap();
        let home = DeviceHome::new(dir.path());
        let first = BackupKey::generate();
        home.save_new_key("repo", &first).unwrap();
        let err = home
            .save_new_key("repo", &BackupKey::generate())
            .unwrap_err();
        assert!(matches!(err, RepoError::KeyAlreadyKept { .. }), "{err}");
        let kept = home.load_key("repo").unwrap().unwrap();
        assert_eq!(kept.expose_secret(), first.expose_secret());
        assert_eq!(files(home.key_path("repo").parent().unwrap()).len(), 1);
    }
}
