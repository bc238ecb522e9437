//! Where a device keeps the backup key of a repository in password mode: a file in its
//! home (0600, as the command keeps it), or the app's platform key store through
//! [`KeyStore`] (the Android Keystore, the iOS Keychain).

use crate::error::Error;
use backlock_core::key::BackupKey;
use backlock_repo::DeviceHome;
use std::sync::Arc;
use zeroize::Zeroizing;

/// The app's key store: the Android Keystore, the iOS Keychain, a desktop's secret
/// service. A device made with `Device.with_key_store` keeps the backup key of a
/// password-mode repository here and never in a file. The key is the 64-digit text
/// (16 groups of 4, as `enable_key_only` shows it); keep it where only this app reads
/// it. An error raised stops the operation with it (`Callback` for an exception that
/// is not a `backlock.Error`).
#[uniffi::export(with_foreign)]
pub trait KeyStore: Send + Sync {
    /// Keeps `key` under `name` (the repository's location), replacing any key kept
    /// there.
    fn save_key(&self, name: String, key: String) -> Result<(), Error>;
    /// The key kept under `name`, or none.
    fn load_key(&self, name: String) -> Result<Option<String>, Error>;
}

/// The device's choice: its home, or the app's key store.
#[derive(Clone)]
pub(crate) enum KeptKeys {
    Home(DeviceHome),
    Store(Arc<dyn KeyStore>),
}

impl std::fmt::Debug for KeptKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeptKeys::Home(_) => f.write_str("KeptKeys::Home"),
            KeptKeys::Store(_) => f.write_str("KeptKeys::Store"),
        }
    }
}

impl KeptKeys {
    /// Keeps `key` under `name`.
    pub(crate) fn save(&self, name: &str, key: &BackupKey) -> Result<(), Error> {
        match self {
            KeptKeys::Home(home) => Ok(home.save_key(name, key)?),
            KeptKeys::Store(store) => {
                store.save_key(name.to_owned(), key.to_display().as_str().to_owned())
            }
        }
    }

    /// The key kept under `name`, if any.
    pub(crate) fn load(&self, name: &str) -> Result<Option<BackupKey>, Error> {
        match self {
            KeptKeys::Home(home) => Ok(home.load_key(name)?),
            KeptKeys::Store(store) => {
                let Some(text) = store.load_key(name.to_owned())? else {
                    return Ok(None);
                };
                let text = Zeroizing::new(text);
                BackupKey::parse(&text).map(Some).map_err(|e| Error::Callback {
                    message: format!(
                        "the app's key store returned something that is not a backup key for {name} ({e}): it must return the text it was given"
                    ),
                })
            }
        }
    }
}
