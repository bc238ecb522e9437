//! Secrets an app passes in (a password, the 64-digit key) are wiped on the Rust side
//! after use: every block the SDK frees while a flow runs is searched for the secret
//! (`backlock-secret-scan`), as an attacker reading the process's freed memory (a core
//! dump, a swapped page, the next allocation) would search it. One test, so the flows
//! run one after another under the process-wide watch.

use backlock::{Device, Error, VaultConfig};
use backlock_core::key::BackupKey;
use backlock_secret_scan::{stop, watch, FreedMemoryScan};
use std::sync::Arc;
use zeroize::Zeroizing;

#[global_allocator]
static SCAN: FreedMemoryScan = FreedMemoryScan;

const FIRST: &str = "correct horse SECRET-3f9a";
const SECOND: &str = "battery staple SECRET-b71c";

/// Runs `flow` while `secret` is watched; fails naming `what` if a freed block held it.
fn wiped<T>(what: &str, secret: &[u8], flow: impl FnOnce() -> T) -> T {
    watch(secret);
    let out = flow();
    let found = stop();
    assert_eq!(
        found.blocks, 0,
        "{what}: {} freed blocks still held the secret (the largest {} bytes)",
        found.blocks, found.largest
    );
    out
}

#[test]
fn passwords_and_keys_are_wiped_after_use() {
    // The watch itself: a copy dropped as it is is found, a wiped one is not.
    watch(FIRST.as_bytes());
    drop(String::from(FIRST));
    assert_eq!(stop().blocks, 1, "the scan finds a dropped copy");
    watch(FIRST.as_bytes());
    drop(Zeroizing::new(String::from(FIRST)));
    assert_eq!(stop().blocks, 0, "the scan passes a wiped copy");

    let dir = tempfile::tempdir().unwrap();
    let cfg = VaultConfig::embedded(dir.path().join("vault").display().to_string(), "alice");
    let location = dir.path().join("repo").display().to_string();
    let src = dir.path().join("chat");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("msgstore.txt"), b"hello").unwrap();
    let phone: Arc<Device> = Device::new(dir.path().join("phone").display().to_string()).unwrap();
    let repo = phone.clone().create_repository(location.clone()).unwrap();

    wiped("enable_password", FIRST.as_bytes(), || {
        repo.enable_password(FIRST.into(), cfg.clone()).unwrap()
    });
    repo.backup(
        vec![src.display().to_string()],
        None,
        None,
        Some(cfg.clone()),
    )
    .unwrap();
    let phone2 = Device::new(dir.path().join("phone2").display().to_string()).unwrap();
    wiped("a wrong guess", SECOND.as_bytes(), || {
        match phone2.recover_key(cfg.clone(), SECOND.into()) {
            Err(Error::WrongPassword { attempts_left, .. }) => assert_eq!(attempts_left, 9),
            other => panic!("{other:?}"),
        }
    });
    let key = wiped("recover_key", FIRST.as_bytes(), || {
        Zeroizing::new(phone2.recover_key(cfg.clone(), FIRST.into()).unwrap())
    });
    wiped("change_password", SECOND.as_bytes(), || {
        repo.change_password(SECOND.into(), cfg.clone()).unwrap()
    });

    // The key as the app holds it (its digits), and the key itself, through a restore.
    let raw = Zeroizing::new(*BackupKey::parse(&key).unwrap().expose_secret());
    let target = dir.path().join("restored").display().to_string();
    wiped("the key's digits", key.as_bytes(), || {
        let opened = phone2
            .clone()
            .open_repository(location.clone(), Some(String::from(key.as_str())))
            .unwrap();
        drop(opened);
    });
    wiped("the key", &raw[..], || {
        let opened = phone2
            .open_repository(location, Some(String::from(key.as_str())))
            .unwrap();
        opened.restore("latest".into(), target, None, None).unwrap();
    });
}
