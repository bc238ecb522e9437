//! A device: its state directory (what it has seen of each repository, the keys it
//! keeps), and the thread budget of its operations.

use crate::{
    error::Error,
    key_store::{KeptKeys, KeyStore},
    repository::Repository,
    vault::{connect, VaultConfig},
};
use backlock_core::key::BackupKey;
use backlock_repo::DeviceHome;
use backlock_store::ObjectStore;
use std::path::PathBuf;
use std::sync::Arc;
use zeroize::Zeroizing;

/// This device: where it keeps its state (`home`: one directory per app install).
#[derive(Debug, uniffi::Object)]
pub struct Device {
    home: PathBuf,
    /// The app's key store, if it gave one: the keys of password-mode repositories go
    /// there instead of into `home`.
    key_store: Option<KeyStoreHandle>,
}

/// The app's key store, shown by `Debug` only as present.
#[derive(Clone)]
struct KeyStoreHandle(Arc<dyn KeyStore>);

impl std::fmt::Debug for KeyStoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyStore")
    }
}

fn home_of(home: String) -> Result<PathBuf, Error> {
    if home.trim().is_empty() {
        return Err(Error::invalid(
            "the device's home is empty: give the app's private directory for backlock's state",
        ));
    }
    Ok(home.into())
}

/// The store at `location`: a local directory or a store URL (`s3://…`), with the
/// credentials in the environment (docs/STORES.md).
pub(crate) fn store_at(location: &str) -> Result<Arc<dyn ObjectStore>, Error> {
    let settings = backlock_store_cloud::Settings::from_env().map_err(|e| Error::Invalid {
        message: e.to_string(),
    })?;
    backlock_store_cloud::open(location, &settings).map_err(|e| Error::Invalid {
        message: e.to_string(),
    })
}

#[uniffi::export]
impl Device {
    /// The device whose state lives in `home` (created on first use).
    #[uniffi::constructor]
    pub fn new(home: String) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(Device {
            home: home_of(home)?,
            key_store: None,
        }))
    }

    /// The device whose state lives in `home`, keeping the backup keys of
    /// password-mode repositories in the app's `key_store` (the Android Keystore, the
    /// iOS Keychain) instead of in a file in `home`.
    #[uniffi::constructor]
    pub fn with_key_store(home: String, key_store: Arc<dyn KeyStore>) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(Device {
            home: home_of(home)?,
            key_store: Some(KeyStoreHandle(key_store)),
        }))
    }

    /// Caps the threads of every long operation (1 or 2 for a phone in the
    /// background); 0 restores the default (the machine's cores). Process-wide.
    pub fn set_threads(&self, threads: u32) {
        backlock_core::threads::set_budget(threads as usize);
    }

    /// A repository to create at `location` (a directory that does not hold one, or a
    /// store URL): nothing is written until `enable_key_only`.
    pub fn create_repository(self: Arc<Self>, location: String) -> Result<Arc<Repository>, Error> {
        let store = store_at(&location)?;
        if !store.list(backlock_store::ObjectKind::Config)?.is_empty() {
            return Err(Error::invalid(format!(
                "{} already holds a repository: open it with open_repository",
                store.location()
            )));
        }
        Ok(Repository::new(self, location, store, None))
    }

    /// The repository at `location`, opened with `key` (the 64 digits, any case,
    /// spaces and dashes allowed), or with the key this device keeps for it.
    #[uniffi::method(default(key = None))]
    pub fn open_repository(
        self: Arc<Self>,
        location: String,
        key: Option<String>,
    ) -> Result<Arc<Repository>, Error> {
        let store = store_at(&location)?;
        let key = match key {
            Some(text) => {
                let text = Zeroizing::new(text);
                BackupKey::parse(&text).map_err(|e| Error::WrongKey {
                    message: format!("{e}; check the key as it was shown"),
                })?
            }
            None => self
                .kept_keys()
                .load(&key_location(&location))?
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "this device keeps no key for {}: give the 64-digit key",
                        store.location()
                    ))
                })?,
        };
        let repo = Repository::new(self, location, store, Some(key));
        // Fail here, not at the first operation, when the key is wrong.
        repo.open()?;
        Ok(repo)
    }

    /// On a new device: the key behind `password` in the vault, as 16 groups of 4
    /// digits for `open_repository`. One guess: a wrong password raises
    /// `WrongPassword` with the guesses left, and after the last the vault erases the
    /// key (`Locked`). The vault's word on the newest snapshot is recorded, so an
    /// older one served later is refused (`RolledBack`).
    pub fn recover_key(&self, vault: VaultConfig, password: String) -> Result<String, Error> {
        let password = backlock_vault_proto::password::Password::new(password);
        let home = self.home();
        let session = connect(&vault, &home)?;
        let recovered = session.recover(&password)?;
        recovered.keep_anchor(&home)?;
        Ok(recovered.key.to_display().to_string())
    }
}

/// The name a repository's key is kept under on a device, as the command names it:
/// the absolute path of a local repository, the URL (without credentials) of a cloud
/// one.
pub(crate) fn key_location(location: &str) -> String {
    match backlock_store_cloud::Location::parse(location) {
        Ok(l) => l.display(),
        Err(_) => std::path::absolute(location)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| location.to_owned()),
    }
}

impl Device {
    /// Where this device keeps the keys of password-mode repositories.
    pub(crate) fn kept_keys(&self) -> KeptKeys {
        match &self.key_store {
            Some(store) => KeptKeys::Store(store.0.clone()),
            None => KeptKeys::Home(self.home()),
        }
    }

    pub(crate) fn home(&self) -> DeviceHome {
        DeviceHome::new(&self.home)
    }
}
