//! The app's key store (Android Keystore, iOS Keychain) in place of a key file: a
//! device made with one keeps the key of a password-mode repository there and nowhere
//! in its home, opens the repository with it, and stops with the store's own error
//! when the store fails or returns something that is not the key.

use backlock::{Device, Error, KeyStore, VaultConfig};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

const PASSWORD: &str = "correct horse";

/// A key store as an app writes one, with a switch to make it fail.
#[derive(Default)]
struct AppKeyStore {
    kept: Mutex<HashMap<String, String>>,
    broken: Mutex<Option<&'static str>>,
}

impl KeyStore for AppKeyStore {
    fn save_key(&self, name: String, key: String) -> Result<(), Error> {
        if let Some(why) = *self.broken.lock().unwrap() {
            return Err(Error::Storage {
                message: why.into(),
            });
        }
        self.kept.lock().unwrap().insert(name, key);
        Ok(())
    }

    fn load_key(&self, name: String) -> Result<Option<String>, Error> {
        if let Some(why) = *self.broken.lock().unwrap() {
            return Err(Error::Storage {
                message: why.into(),
            });
        }
        Ok(self.kept.lock().unwrap().get(&name).cloned())
    }
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    backlock_testkit::tree::list_files(dir)
        .into_iter()
        .filter(|p| {
            let bytes = std::fs::read(dir.join(p)).unwrap_or_default();
            bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn a_device_with_a_key_store_keeps_the_key_there_and_nowhere_else() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = VaultConfig::embedded(dir.path().join("vault").display().to_string(), "alice");
    let home = dir.path().join("home");
    let location = dir.path().join("repo").display().to_string();
    let store = Arc::new(AppKeyStore::default());
    let phone = Device::with_key_store(home.display().to_string(), store.clone()).unwrap();
    let repo = phone.clone().create_repository(location.clone()).unwrap();
    // A locked key store refuses the new key: nothing reaches the vault, so the account
    // is still free once the store opens again.
    *store.broken.lock().unwrap() = Some("the keystore is locked");
    assert!(matches!(
        repo.enable_password(PASSWORD.into(), cfg.clone()),
        Err(Error::Storage { .. })
    ));
    *store.broken.lock().unwrap() = None;
    repo.enable_password(PASSWORD.into(), cfg.clone()).unwrap();

    let kept = store.kept.lock().unwrap().clone();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let key = kept.values().next().unwrap().clone();
    let phone2 = Device::new(dir.path().join("phone2").display().to_string()).unwrap();
    assert_eq!(
        phone2.recover_key(cfg.clone(), PASSWORD.into()).unwrap(),
        key
    );
    let holding = files_holding(&home, &key);
    assert!(holding.is_empty(), "the key is in {holding:?}");
    assert!(
        files_holding(&home, &key.replace(' ', "")).is_empty(),
        "the key's digits are in the home"
    );

    // Opened with the key from the store; a device on the same home without the
    // store has none.
    let opened = phone
        .clone()
        .open_repository(location.clone(), None)
        .unwrap();
    opened.snapshots().unwrap();
    let without = Device::new(home.display().to_string()).unwrap();
    assert!(matches!(
        without.open_repository(location.clone(), None),
        Err(Error::Invalid { .. })
    ));

    // The store's own error, as it raised it.
    *store.broken.lock().unwrap() = Some("the keystore is locked until the user unlocks the phone");
    match phone.clone().open_repository(location.clone(), None) {
        Err(Error::Storage { message }) => assert!(message.contains("locked"), "{message}"),
        other => panic!("{other:?}"),
    }
    // Something that is not the key: named, never repeated.
    *store.broken.lock().unwrap() = None;
    let name = kept.keys().next().unwrap().clone();
    store
        .kept
        .lock()
        .unwrap()
        .insert(name, "SECRET-not-a-key".into());
    match phone.open_repository(location, None) {
        Err(Error::Callback { message }) => {
            assert!(message.contains("not a backup key"), "{message}");
            assert!(!message.contains("SECRET"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}
