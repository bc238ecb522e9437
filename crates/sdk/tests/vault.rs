//! Password mode through a signed fleet bundle, as an app ships the fleet's signer key
//! and fetches the bundle: the bundle names the replicas, the vault's key and its
//! receipt key. A bundle changed on the way, signed by someone else, or older than one
//! the device took is refused before anything is sent (`WrongVault`); a receipt that
//! the bundle's receipt key did not sign is refused too. A repository switches between
//! key-only and password mode through the same fleet.

use backlock::{AccountToken, Device, Error, VaultConfig};
use backlock_vault_proto::bundle::{BundleSigner, FleetBundle};
use backlock_vault_proto::receipt::ReceiptSigner;
use backlock_vault_server::run::{RunningVault, ServeConfig};
use std::sync::Arc;

const PASSWORD: &str = "correct horse";

struct Fleet {
    runtime: tokio::runtime::Runtime,
    vault: Option<RunningVault>,
    _data: tempfile::TempDir,
}

impl Fleet {
    fn start() -> Self {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let data = tempfile::tempdir().unwrap();
        let vault = runtime
            .block_on(RunningVault::start(ServeConfig::loopback(
                data.path().to_path_buf(),
            )))
            .expect("start the vault");
        Fleet {
            runtime,
            vault: Some(vault),
            _data: data,
        }
    }

    fn vault(&self) -> &RunningVault {
        self.vault.as_ref().unwrap()
    }

    /// A bundle of fleet `test` signed by `signer`; `receipt_key` the one it names.
    fn bundle(&self, signer: &BundleSigner, version: u64, receipt_key: [u8; 32]) -> String {
        let signed = signer.sign(FleetBundle {
            fleet: "test".into(),
            version,
            replicas: vec![self.vault().url()],
            public_key: hex::encode(self.vault().vault.info().server_public_key),
            issued_unix: 1_700_000_000,
            receipt_key: Some(hex::encode(receipt_key)),
        });
        serde_json::to_string_pretty(&signed).unwrap()
    }

    fn config(&self, bundle: String, signer: &BundleSigner) -> VaultConfig {
        let token = self.vault().vault.issue_token("alice", 3600).unwrap();
        VaultConfig {
            urls: vec![],
            public_key: None,
            account: "alice".into(),
            token: Some(AccountToken::new(token).unwrap()),
            ca_pem: None,
            insecure_http: false,
            embedded_data: None,
            bundle: Some(bundle),
            bundle_signer: Some(hex::encode(signer.public_key())),
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(v) = self.vault.take() {
            self.runtime.block_on(v.shutdown());
        }
    }
}

fn device(dir: &tempfile::TempDir, name: &str) -> Arc<Device> {
    Device::new(dir.path().join(name).display().to_string()).unwrap()
}

fn assert_wrong_vault(result: Result<impl std::fmt::Debug, Error>, says: &str) {
    match result {
        Err(Error::WrongVault { message }) => assert!(message.contains(says), "{message}"),
        other => panic!("expected WrongVault ({says}), got {other:?}"),
    }
}

#[test]
fn a_device_takes_only_the_fleets_newest_signed_bundle() {
    let fleet = Fleet::start();
    let dir = tempfile::tempdir().unwrap();
    let signer = BundleSigner::generate();
    let receipts = fleet.vault().vault.receipt_key();
    let v1 = fleet.bundle(&signer, 1, receipts);
    let v2 = fleet.bundle(&signer, 2, receipts);
    // Pointed elsewhere on the way: the signature no longer holds.
    let forged = v2.replace("127.0.0.1", "127.0.0.2");
    assert_ne!(forged, v2);
    let stranger = fleet.bundle(&BundleSigner::generate(), 9, receipts);

    let phone = device(&dir, "phone");
    let repo = phone
        .clone()
        .create_repository(dir.path().join("repo").display().to_string())
        .unwrap();
    for refused in [&forged, &stranger] {
        assert_wrong_vault(
            repo.enable_password(PASSWORD.into(), fleet.config(refused.clone(), &signer)),
            "not signed by the fleet's signing key",
        );
    }
    assert!(!dir.path().join("repo").join("config").exists());
    repo.enable_password(PASSWORD.into(), fleet.config(v2.clone(), &signer))
        .unwrap();

    // Version 2 was taken: version 1, which may list retired replicas, is not.
    let phone2 = device(&dir, "phone2");
    phone2
        .recover_key(fleet.config(v2.clone(), &signer), PASSWORD.into())
        .unwrap();
    assert_wrong_vault(
        phone2.recover_key(fleet.config(v1.clone(), &signer), PASSWORD.into()),
        "already took version 2",
    );
    // A device that never took version 2 still takes version 1, and opens the backup.
    let phone3 = device(&dir, "phone3");
    let key = phone3
        .recover_key(fleet.config(v1, &signer), PASSWORD.into())
        .unwrap();
    phone3
        .open_repository(dir.path().join("repo").display().to_string(), Some(key))
        .unwrap();
}

/// The bundle names the fleet's receipt key, so an answer "deleted" or "changed" that
/// carries a receipt under another key is refused: here the bundle names a key the
/// vault does not hold, as when a relay answers for a fleet it is not.
#[test]
fn a_receipt_not_signed_by_the_bundles_receipt_key_is_refused() {
    let fleet = Fleet::start();
    let dir = tempfile::tempdir().unwrap();
    let signer = BundleSigner::generate();
    let honest = fleet.bundle(&signer, 1, fleet.vault().vault.receipt_key());
    let other_key = ReceiptSigner::derive(b"a fleet secret this vault does not hold").public_key();
    let elsewhere = fleet.bundle(&signer, 2, other_key);

    let phone = device(&dir, "phone");
    let repo = phone
        .clone()
        .create_repository(dir.path().join("repo").display().to_string())
        .unwrap();
    repo.enable_password(PASSWORD.into(), fleet.config(honest.clone(), &signer))
        .unwrap();
    repo.change_password("battery staple".into(), fleet.config(honest, &signer))
        .unwrap();
    assert_wrong_vault(
        repo.change_password(
            "third password".into(),
            fleet.config(elsewhere.clone(), &signer),
        ),
        "receipt",
    );
    assert_wrong_vault(
        repo.delete_vault_record(fleet.config(elsewhere, &signer)),
        "receipt",
    );
}

/// Key-only to password mode and back, as `backlock switch` does: the key stays the
/// same, a second switch replaces the record this key owns, and leaving the vault
/// erases the record (a new device then finds no key) and hands the key back.
#[test]
fn a_repository_switches_between_key_only_and_password_mode() {
    let fleet = Fleet::start();
    let dir = tempfile::tempdir().unwrap();
    let signer = BundleSigner::generate();
    let bundle = fleet.bundle(&signer, 1, fleet.vault().vault.receipt_key());
    let cfg = || fleet.config(bundle.clone(), &signer);
    let location = dir.path().join("repo").display().to_string();

    let phone = device(&dir, "phone");
    let repo = phone.clone().create_repository(location.clone()).unwrap();
    let key = repo.enable_key_only().unwrap();
    repo.switch_to_password(PASSWORD.into(), cfg()).unwrap();
    repo.switch_to_password("battery staple".into(), cfg())
        .unwrap();
    let phone2 = device(&dir, "phone2");
    match phone2.recover_key(cfg(), PASSWORD.into()) {
        Err(Error::WrongPassword { attempts_left, .. }) => assert_eq!(attempts_left, 9),
        other => panic!("the first password still opens the key: {other:?}"),
    }
    assert_eq!(
        phone2.recover_key(cfg(), "battery staple".into()).unwrap(),
        key
    );

    assert_eq!(repo.switch_to_key_only(cfg()).unwrap(), key);
    let phone3 = device(&dir, "phone3");
    assert!(matches!(
        phone3.recover_key(cfg(), "battery staple".into()),
        Err(Error::NoKey { .. })
    ));
    // Already key-only: nothing to erase, the key again.
    assert_eq!(repo.switch_to_key_only(cfg()).unwrap(), key);
    phone3.open_repository(location, Some(key)).unwrap();
}

/// Rollback on a new device: the store serves the repository as it was before the last
/// backup. The new device never saw that backup, but the backup left its snapshot with
/// the vault as the account's newest, so the key recovered from the vault refuses the
/// older copy (`RolledBack`), naming the newest.
#[test]
fn a_new_device_refuses_a_store_rolled_back_behind_the_vaults_anchor() {
    let fleet = Fleet::start();
    let dir = tempfile::tempdir().unwrap();
    let signer = BundleSigner::generate();
    let bundle = fleet.bundle(&signer, 1, fleet.vault().vault.receipt_key());
    let cfg = || fleet.config(bundle.clone(), &signer);
    let repo_dir = dir.path().join("repo");
    let location = repo_dir.display().to_string();
    let src = dir.path().join("chat");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("msgstore.txt"), b"monday").unwrap();
    let paths = vec![src.display().to_string()];

    let phone = device(&dir, "phone");
    let repo = phone.clone().create_repository(location.clone()).unwrap();
    repo.enable_password(PASSWORD.into(), cfg()).unwrap();
    let first = repo.backup(paths.clone(), None, None, Some(cfg())).unwrap();
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);
    let older = dir.path().join("repo-before-the-last-backup");
    backlock_testkit::tree::copy_dir(&repo_dir, &older);
    std::fs::write(src.join("msgstore.txt"), b"tuesday").unwrap();
    let second = repo.backup(paths, None, None, Some(cfg())).unwrap();
    assert_eq!(second.seq, 2);
    assert!(second.warnings.is_empty(), "{:?}", second.warnings);

    // The store now serves the copy from before the last backup.
    std::fs::remove_dir_all(&repo_dir).unwrap();
    std::fs::rename(&older, &repo_dir).unwrap();
    let phone2 = device(&dir, "phone2");
    let key = phone2.recover_key(cfg(), PASSWORD.into()).unwrap();
    let target = dir.path().join("restored");
    let restored = phone2
        .open_repository(location, Some(key))
        .and_then(|r| r.restore("latest".into(), target.display().to_string(), None, None));
    match restored {
        Err(Error::RolledBack { message }) => assert!(message.contains("#2"), "{message}"),
        other => panic!("the older copy was taken: {other:?}"),
    }
    assert!(!target.exists(), "nothing restored");
}
