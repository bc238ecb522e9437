//! A repository as the app sees it: created or opened by a [`Device`], then backed
//! up, listed, restored and checked.

use crate::{
    cancel::{CancelToken, Running},
    device::{key_location, Device},
    error::Error,
    vault::{connect, VaultConfig},
};
use backlock_core::key::BackupKey;
use backlock_repo::{BackupOptions, RestoreOptions};
use backlock_store::ObjectStore;
use backlock_vault_client::VaultError;
use backlock_vault_proto::password::Password;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Where a long operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Progress {
    /// Bytes of file content done so far.
    pub bytes_done: u64,
    /// Bytes of file content in all.
    pub bytes_total: u64,
    /// Files done so far.
    pub files_done: u64,
    /// Files in all.
    pub files_total: u64,
}

/// Told of progress, in order, on the operation's threads: return quickly. An error
/// returned stops the operation with `Error::Callback`.
#[uniffi::export(with_foreign)]
pub trait ProgressListener: Send + Sync {
    /// Progress so far.
    fn on_progress(&self, progress: Progress) -> Result<(), Error>;
}

/// What a backup stored.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct BackupSummary {
    /// The new snapshot's id.
    pub snapshot: String,
    /// Its sequence number (1 for the first).
    pub seq: u64,
    /// Files in it.
    pub files: u64,
    /// Files not read again (unchanged since the last snapshot).
    pub files_unchanged: u64,
    /// Bytes of all its files.
    pub bytes_total: u64,
    /// Bytes of content not in the repository before.
    pub bytes_new: u64,
    /// Bytes uploaded (compressed, encrypted, with metadata).
    pub bytes_stored: u64,
    /// Entries that could not be read (permission, vanished): the snapshot holds the
    /// rest.
    pub skipped: Vec<String>,
    /// What the user should know of a backup that was kept: a file that looked like a
    /// database but was stored as plain bytes, a vault that did not take the backup as
    /// the newest.
    pub warnings: Vec<String>,
}

/// One snapshot, as listed.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct SnapshotInfo {
    /// Its id (`restore` takes it, a unique prefix, or `latest`).
    pub id: String,
    /// Its sequence number.
    pub seq: u64,
    /// When it was taken, seconds since the Unix epoch.
    pub time_unix: i64,
    /// The device's name.
    pub host: String,
    /// The paths backed up.
    pub paths: Vec<String>,
    /// Its tags.
    pub tags: Vec<String>,
}

/// What a restore wrote.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct RestoreSummary {
    /// The snapshot restored.
    pub snapshot: String,
    /// Its sequence number.
    pub seq: u64,
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// What could not be put back (ownership as a user, and the like).
    pub not_restored: Vec<String>,
}

/// What a check found.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct CheckReport {
    /// Snapshots read.
    pub snapshots: u64,
    /// Problems that make some snapshot unrestorable.
    pub errors: Vec<String>,
    /// Harmless findings.
    pub notes: Vec<String>,
}

/// A repository of this device. Methods that read or write block the calling thread.
#[derive(uniffi::Object)]
pub struct Repository {
    device: Arc<Device>,
    location: String,
    store: Arc<dyn ObjectStore>,
    key: Mutex<Option<BackupKey>>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Repository {
    pub(crate) fn new(
        device: Arc<Device>,
        location: String,
        store: Arc<dyn ObjectStore>,
        key: Option<BackupKey>,
    ) -> Arc<Self> {
        Arc::new(Repository {
            device,
            location,
            store,
            key: Mutex::new(key),
        })
    }

    fn key(&self) -> Result<BackupKey, Error> {
        self.key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                Error::invalid("this repository has no key yet: call enable_key_only first")
            })
    }

    /// Leaves the snapshot with the vault as the account's newest backup.
    fn leave_anchor(
        &self,
        vault: &VaultConfig,
        repo_id: &str,
        snapshot: &str,
        seq: u64,
    ) -> Result<(), Error> {
        let session = connect(vault, &self.device.home())?;
        Ok(session.leave_anchor(&self.key()?, repo_id, snapshot, seq)?)
    }

    pub(crate) fn open(&self) -> Result<backlock_repo::Repository, Error> {
        let repo =
            backlock_repo::Repository::open(self.store.clone(), &self.key()?, self.device.home())?;
        Ok(repo)
    }
}

/// Reports `p` unless an earlier report failed; a failure cancels the operation.
struct Reporter<'a> {
    listener: &'a dyn ProgressListener,
    failed: Mutex<Option<Error>>,
}

impl Reporter<'_> {
    fn report(&self, p: Progress) {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if failed.is_some() {
            return;
        }
        if let Err(e) = self.listener.on_progress(p) {
            *failed = Some(Error::Callback {
                message: format!("the progress callback failed, so the operation stopped: {e}"),
            });
            backlock_repo::interrupt::flag().store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// The callback's failure in place of the `Cancelled` it caused.
    fn outcome<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        match self.failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(e) => Err(e),
            None => result,
        }
    }
}

/// A password that meets the vault's policy (6 characters, a letter).
fn new_password(text: String) -> Result<Password, Error> {
    let password = Password::new(text);
    password
        .check_policy()
        .map_err(|e| Error::invalid(format!("the new password: {e}")))?;
    Ok(password)
}

/// A vault error, with "another key is registered" worded as what to do.
fn already_registered(e: VaultError, vault: &VaultConfig) -> Error {
    match e {
        VaultError::AlreadyRegistered(_) => Error::invalid(format!(
            "a backup key is already registered for account {}: change its password on the device that holds the key, or delete the record",
            vault.account
        )),
        other => Error::from(other),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "device".into())
}

#[uniffi::export]
impl Repository {
    /// Creates the repository with a new random key and returns that key for the
    /// user to write down: 16 groups of 4 hex digits. Nobody else has it.
    pub fn enable_key_only(&self) -> Result<String, Error> {
        let mut held = self.key.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_some() {
            return Err(Error::invalid(
                "this repository already has its key: it is created",
            ));
        }
        let key = BackupKey::generate();
        backlock_repo::Repository::init(self.store.clone(), &key, self.device.home())?;
        let shown = key.to_display().to_string();
        *held = Some(key);
        Ok(shown)
    }

    /// Creates the repository with a new random key kept on this device and, behind
    /// `password`, in the vault (password mode): a new device recovers it with
    /// `Device.recover_key`. The vault allows 10 wrong guesses, then erases it.
    pub fn enable_password(&self, password: String, vault: VaultConfig) -> Result<(), Error> {
        let password = new_password(password)?;
        let mut held = self.key.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_some() {
            return Err(Error::invalid(
                "this repository already has its key: it is created",
            ));
        }
        let home = self.device.home();
        let key = BackupKey::generate();
        // Kept before the vault has it and before the repository exists: a key store
        // that refuses it (locked) then leaves no record in the vault that no key
        // opens and nobody can delete; a key kept for nothing is replaced next time.
        self.device
            .kept_keys()
            .save(&key_location(&self.location), &key)?;
        let session = connect(&vault, &home)?;
        session
            .block_on(
                session
                    .client
                    .register(&password, &key, &session.pinned, None, &session.ksf),
            )
            .map_err(|e| already_registered(e, &vault))?;
        drop(session);
        backlock_repo::Repository::init(self.store.clone(), &key, home)?;
        *held = Some(key);
        Ok(())
    }

    /// A new password for the key this repository was opened with.
    pub fn change_password(&self, new_password: String, vault: VaultConfig) -> Result<(), Error> {
        let password = self::new_password(new_password)?;
        let key = self.key()?;
        let session = connect(&vault, &self.device.home())?;
        session.change_password(&password, &key)?;
        Ok(())
    }

    /// Erases the account's record in the vault, proving with this repository's key
    /// that it is the owner: the password no longer opens anything (keep the
    /// 64-digit key, or the backup is lost).
    pub fn delete_vault_record(&self, vault: VaultConfig) -> Result<(), Error> {
        let key = self.key()?;
        let session = connect(&vault, &self.device.home())?;
        session.block_on(session.client.delete(&key, &session.pinned))?;
        Ok(())
    }

    /// Leaves password mode: erases the vault record, proving with this repository's
    /// key that it is the owner, and returns that key for the user to write down (16
    /// groups of 4 digits; show it and have it confirmed before calling). The password
    /// no longer opens the backup; this device keeps the key. No record there already
    /// is fine.
    pub fn switch_to_key_only(&self, vault: VaultConfig) -> Result<String, Error> {
        let key = self.key()?;
        let session = connect(&vault, &self.device.home())?;
        session.leave_vault(&key)?;
        Ok(key.to_display().to_string())
    }

    /// Enters password mode: the key this repository was opened with goes behind
    /// `password` in the vault (a record this key already owns is replaced) and is kept
    /// on this device; a new device then recovers it with `Device.recover_key`.
    pub fn switch_to_password(&self, password: String, vault: VaultConfig) -> Result<(), Error> {
        let password = new_password(password)?;
        let key = self.key()?;
        let home = self.device.home();
        let session = connect(&vault, &home)?;
        session
            .register_key(&password, &key)
            .map_err(|e| already_registered(e, &vault))?;
        drop(session);
        self.device
            .kept_keys()
            .save(&key_location(&self.location), &key)?;
        Ok(())
    }

    /// Backs up `paths` (files and directories) as a new snapshot. In password mode,
    /// give the `vault`: the new snapshot is then left with it as the account's newest,
    /// so a new device that recovers the key refuses an older backup a store serves
    /// (`RolledBack`). The backup is kept even if the vault cannot take it then: the
    /// summary's `warnings` say so, and the next backup leaves its own.
    #[uniffi::method(default(progress = None, cancel = None, vault = None))]
    pub fn backup(
        &self,
        paths: Vec<String>,
        progress: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelToken>>,
        vault: Option<VaultConfig>,
    ) -> Result<BackupSummary, Error> {
        if paths.is_empty() {
            return Err(Error::invalid(
                "no path to back up: give files or directories",
            ));
        }
        let _running = Running::start(cancel);
        let reporter = progress.as_deref().map(|listener| Reporter {
            listener,
            failed: Mutex::new(None),
        });
        let on_progress = |p: backlock_repo::Progress| {
            if let Some(r) = &reporter {
                r.report(Progress {
                    bytes_done: p.bytes_done,
                    bytes_total: p.bytes_total,
                    files_done: p.files_done,
                    files_total: p.files_total,
                });
            }
        };
        let opts = BackupOptions {
            paths: paths.iter().map(PathBuf::from).collect(),
            hostname: hostname(),
            progress: Some(&on_progress),
            ..Default::default()
        };
        let result = (|| {
            let repo = self.open()?;
            let repo_id = repo.id().to_owned();
            let s = repo.load_index()?.backup(&opts)?;
            let mut warnings = s.warnings;
            if let Some(vault) = &vault {
                if let Err(e) = self.leave_anchor(vault, &repo_id, &s.snapshot, s.seq) {
                    warnings.push(format!(
                        "the vault did not take this backup as the newest ({e}); until a later backup does, a new device cannot tell an older backup from this one"
                    ));
                }
            }
            Ok(BackupSummary {
                snapshot: s.snapshot,
                seq: s.seq,
                files: s.files,
                files_unchanged: s.files_unchanged,
                bytes_total: s.bytes_total,
                bytes_new: s.bytes_new,
                bytes_stored: s.bytes_stored,
                skipped: s
                    .skipped
                    .iter()
                    .map(|k| format!("{}: {}", k.path, k.reason))
                    .collect(),
                warnings,
            })
        })();
        match &reporter {
            Some(r) => r.outcome(result),
            None => result,
        }
    }

    /// Every snapshot that authenticates, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>, Error> {
        let mut out = Vec::new();
        self.open()?.authentic_snapshots(|s, snap| {
            let info = backlock_repo::select::SnapshotInfo::of(s, &snap);
            out.push(SnapshotInfo {
                id: info.id,
                seq: info.seq,
                time_unix: info.time_unix_ns.div_euclid(1_000_000_000),
                host: info.host,
                paths: info.paths,
                tags: info.tags,
            });
            Ok(())
        })?;
        out.sort_by_key(|s| s.seq);
        Ok(out)
    }

    /// Restores snapshot `snapshot` (an id, a unique prefix, or `latest`) into
    /// `target`, which must not exist or be empty; `path` restores only that path of
    /// it (from its root, as `snapshots` lists the backed-up paths' last names).
    #[uniffi::method(default(path = None, cancel = None))]
    pub fn restore(
        &self,
        snapshot: String,
        target: String,
        path: Option<String>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<RestoreSummary, Error> {
        let _running = Running::start(cancel);
        let r = self.open()?.load_index()?;
        let found = match snapshot.as_str() {
            "latest" => r.latest()?.0,
            id => r.find_snapshot(id)?,
        };
        let opts = RestoreOptions {
            subpath: path,
            ..Default::default()
        };
        let s = r.restore_with(&found, std::path::Path::new(&target), &|_| {}, &opts)?;
        Ok(RestoreSummary {
            snapshot: s.snapshot,
            seq: s.seq,
            files: s.files,
            bytes: s.bytes,
            not_restored: s.not_restored,
        })
    }

    /// Reads every snapshot and index, and with `read_data` every stored chunk.
    #[uniffi::method(default(read_data = false, cancel = None))]
    pub fn check(
        &self,
        read_data: bool,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<CheckReport, Error> {
        let _running = Running::start(cancel);
        let report = self.open()?.check(read_data)?;
        Ok(CheckReport {
            snapshots: report.snapshots as u64,
            errors: report.errors,
            notes: report.notes,
        })
    }

    /// The location it was opened at.
    pub fn location(&self) -> String {
        self.location.clone()
    }
}
