//! The PKCS#11 sealer against a real SoftHSM2 token: the node key is generated inside
//! the token and never leaves it, sealed values are bound to their place, and neither a
//! vault's data directory nor the token directory holds a record's secrets in clear.
//!
//! Needs SoftHSM2 (`scripts/test` installs the Debian package `softhsm2`).

use backlock_testkit::tree::list_files;
use backlock_vault_server::pkcs11::{Pkcs11Sealer, TokenConfig};
use backlock_vault_server::raft::{unseal_file, NodeConfig, VaultNode};
use backlock_vault_server::seal::Sealer;
use backlock_vault_server::state::{Applied, Command, NewRecord};
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::{Arc, OnceLock};
use zeroize::Zeroizing;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "4711-vault-user";
const SO_PIN: &str = "4711-vault-so";

/// Serialises the tests: `SOFTHSM2_CONF` is set once with `set_var`, which must not race
/// another thread reading the environment, and SoftHSM2 is initialised once per process.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One SoftHSM2 configuration for the whole test binary (the module reads
/// `SOFTHSM2_CONF` once, when it is first initialised); each test makes its own token.
fn token_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        assert!(
            Path::new(MODULE).is_file() && which("softhsm2-util"),
            "SoftHSM2 is not installed: run scripts/test, which installs the Debian package softhsm2"
        );
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        // Set before any thread loads the module; tests only read it afterwards.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        dir
    })
    .path()
}

fn which(program: &str) -> bool {
    Process::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Initialises a fresh token and returns the config of a sealer in it.
fn new_token(label: &str) -> TokenConfig {
    token_dir();
    let out = Process::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", label])
        .args(["--so-pin", SO_PIN, "--pin", PIN])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "softhsm2-util --init-token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    TokenConfig {
        module: PathBuf::from(MODULE),
        token_label: label.to_owned(),
        pin: Zeroizing::new(PIN.to_owned()),
        key_label: "backlock-node-key".to_owned(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn sealed_values_open_only_in_their_place_and_the_key_stays_in_the_token() {
    let _serial = serial();
    let config = new_token("seal-roundtrip");
    let sealer = Pkcs11Sealer::open_or_create(&config).unwrap();
    assert!(
        sealer.key_is_locked_in().unwrap(),
        "key must be sensitive and not extractable"
    );
    let sealed = sealer.seal(b"place A", b"a secret value").unwrap();
    assert_eq!(
        &**sealer.open(b"place A", &sealed).unwrap(),
        b"a secret value"
    );
    assert!(
        sealer.open(b"place B", &sealed).is_err(),
        "another place must not open"
    );
    let mut tampered = sealed.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(
        sealer.open(b"place A", &tampered).is_err(),
        "a flipped bit must not open"
    );
    drop(sealer);

    // The same key is found again in the token, not generated anew.
    let again = Pkcs11Sealer::open_or_create(&config).unwrap();
    assert_eq!(
        &**again.open(b"place A", &sealed).unwrap(),
        b"a secret value"
    );
    assert!(again.describe().contains("seal-roundtrip"));
}

#[test]
fn a_wrong_pin_or_token_is_a_clear_error() {
    let _serial = serial();
    let mut config = new_token("seal-wrong-pin");
    config.pin = Zeroizing::new("not-the-pin".to_owned());
    let err = Pkcs11Sealer::open_or_create(&config)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cannot log in"), "{err}");
    assert!(!err.contains("not-the-pin"), "the PIN leaked into: {err}");
    config.token_label = "no-such-token".to_owned();
    let err = Pkcs11Sealer::open_or_create(&config)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no such token"), "{err}");
}

#[test]
fn a_vault_on_the_token_keeps_no_secret_in_clear() {
    let _serial = serial();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(vault_on_the_token());
}

async fn vault_on_the_token() {
    const FILE: &[u8] = b"hsm-password-file-5b1f0c9e77a2d3c4";
    const WRAPPED: &[u8] = b"hsm-wrapped-key-9c3e1a7f20b4d85e";
    let config = new_token("vault-node");
    let sealer: Arc<dyn Sealer> = Arc::new(Pkcs11Sealer::open_or_create(&config).unwrap());
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let node = VaultNode::start(NodeConfig::local(
        data.clone(),
        sealer.clone(),
        1,
        "127.0.0.1:0".into(),
    ))
    .await
    .unwrap();
    let stored = node
        .propose(Command::Register {
            account: "carol".into(),
            record: NewRecord {
                record_id: [3; 16],
                password_file: FILE.to_vec(),
                wrapped: WRAPPED.to_vec(),
                owner_public_key: [4; 32],
                max_attempts: 10,
            },
        })
        .await
        .unwrap();
    assert!(matches!(stored, Applied::Stored { .. }), "{stored:?}");
    node.shutdown().await;

    // Everything in the data directory opens with the token's key (the record is really
    // there, sealed), and no file of the data directory or the token holds it in clear.
    let mut found_sealed = false;
    let no_secret_in_clear = |path: &Path| {
        let raw = std::fs::read(path).unwrap();
        for secret in [FILE, WRAPPED] {
            assert!(
                !contains(&raw, secret),
                "{} holds a secret in clear",
                path.display()
            );
        }
    };
    for path in list_files(&data).into_iter().filter(|p| p.is_file()) {
        no_secret_in_clear(&path);
        let plain = unseal_file(&data, &path, &*sealer)
            .unwrap_or_else(|| panic!("unexpected file {}", path.display()))
            .unwrap_or_else(|e| panic!("{} does not open: {e}", path.display()));
        found_sealed |= contains(&plain, FILE) && contains(&plain, WRAPPED);
    }
    assert!(
        found_sealed,
        "the record is sealed somewhere in the data directory"
    );
    for path in list_files(token_dir()).into_iter().filter(|p| p.is_file()) {
        no_secret_in_clear(&path);
    }
}

/// The attack on erasure: a copy of a replica's data directory (a backup, a VM
/// snapshot, old disk blocks), read with the live token whose files sit outside it.
/// Before the epoch ends the erased records open from the copy (the attack works, so
/// the test can fail); after it, nothing in the copy opens, not even combined with the
/// live key root, while the live replica still holds every other record.
#[test]
fn an_erased_record_opens_from_no_copy_of_the_disk_once_its_epoch_ends() {
    let _serial = serial();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(erasure_against_a_copy());
}

async fn erasure_against_a_copy() {
    use backlock_testkit::tree::copy_dir;
    use backlock_vault_server::raft::open_copy;
    use backlock_vault_server::state::EraseReason;
    const ALICE: &[u8] = b"erasure-alice-password-file-6d2e91c0";
    const DAVE: &[u8] = b"erasure-dave-password-file-0f4b7a13";
    const BOB: &[u8] = b"erasure-bob-password-file-93ce58a2";
    let token: Arc<dyn Sealer> =
        Arc::new(Pkcs11Sealer::open_or_create(&new_token("vault-erasure")).unwrap());
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let node = VaultNode::start(NodeConfig::local(
        data.clone(),
        token.clone(),
        1,
        "127.0.0.1:0".into(),
    ))
    .await
    .unwrap();
    let register = |account: &str, file: &[u8]| Command::Register {
        account: account.into(),
        record: NewRecord {
            record_id: [account.len() as u8; 16],
            password_file: file.to_vec(),
            wrapped: [file, b"-wrapped"].concat(),
            owner_public_key: [4; 32],
            max_attempts: 10,
        },
    };
    let erase = |account: &str| Command::Erase {
        account: account.into(),
        generation: 1,
        reason: EraseReason::Owner,
    };
    let purged_through = |node: &VaultNode, index: u64| {
        let status = node.status();
        status.purged_index >= Some(index)
    };
    // Alice and Bob end up in the snapshot (an erasure forces one), Dave in the log only.
    for (account, file) in [
        ("alice", ALICE),
        ("bob", BOB),
        ("carol", b"carol".as_slice()),
    ] {
        node.propose(register(account, file)).await.unwrap();
    }
    node.propose(erase("carol")).await.unwrap();
    let index = node.status().last_applied_index.unwrap();
    backlock_testkit::timing::eventually("the snapshot after carol's erasure", || {
        purged_through(&node, index)
    })
    .await;
    node.propose(register("dave", DAVE)).await.unwrap();
    let stolen = tempfile::tempdir().unwrap();
    copy_dir(&data, stolen.path());

    for account in ["alice", "dave"] {
        assert_eq!(node.propose(erase(account)).await.unwrap(), Applied::Erased);
    }
    let index = node.status().last_applied_index.unwrap();
    backlock_testkit::timing::eventually("the log purged past the erasures", || {
        purged_through(&node, index)
    })
    .await;

    // Within the epoch, the copy and the live token still give the erased records away.
    let attack = |dir: PathBuf| {
        let token = token.clone();
        async move {
            let scratch = tempfile::tempdir().unwrap();
            copy_dir(&dir, scratch.path());
            open_copy(scratch.path(), token).await
        }
    };
    let early = attack(stolen.path().to_path_buf()).await.unwrap();
    assert_eq!(early.record("alice").unwrap().password_file, ALICE);
    assert_eq!(early.record("dave").unwrap().password_file, DAVE);

    assert_eq!(node.epoch(), 1);
    assert_eq!(node.end_epoch().await.unwrap(), 2);

    // After it: the copy does not open at all...
    let err = attack(stolen.path().to_path_buf()).await.unwrap_err();
    assert!(err.contains("epoch 1"), "{err}");
    // ...nor its snapshot with the live key root put beside it (every key on the erased
    // records' paths was replaced, so the old tree does not open)...
    let hybrid = tempfile::tempdir().unwrap();
    copy_dir(stolen.path(), hybrid.path());
    std::fs::remove_dir_all(hybrid.path().join("wal")).unwrap();
    std::fs::copy(data.join("keyroot"), hybrid.path().join("keyroot")).unwrap();
    let err = attack(hybrid.path().to_path_buf()).await.unwrap_err();
    assert!(err.contains("root key"), "{err}");
    // ...and no file of it opens to the erased records, one by one.
    for path in list_files(stolen.path())
        .into_iter()
        .filter(|p| p.is_file())
    {
        match unseal_file(stolen.path(), &path, &*token) {
            Some(Ok(plain)) => {
                assert!(
                    !contains(&plain, ALICE) && !contains(&plain, DAVE),
                    "{} opens to an erased record",
                    path.display()
                );
            }
            Some(Err(_)) => {}
            None => panic!("unexpected file {}", path.display()),
        }
    }

    // A replacement that keeps the record id (the device picks it) erases the old
    // record all the same: a copy taken before it opens with nothing live once the
    // epoch ends, not even with the live key root.
    const ERIN_OLD: &[u8] = b"erasure-erin-old-password-file-51ab2c";
    node.propose(register("erin", ERIN_OLD)).await.unwrap();
    node.propose(register("frank", b"frank")).await.unwrap();
    node.propose(erase("frank")).await.unwrap();
    let index = node.status().last_applied_index.unwrap();
    backlock_testkit::timing::eventually("the snapshot after frank's erasure", || {
        purged_through(&node, index)
    })
    .await;
    let before_replace = tempfile::tempdir().unwrap();
    copy_dir(&data, before_replace.path());
    let replaced = node
        .propose(Command::Replace {
            account: "erin".into(),
            generation: 1,
            record: NewRecord {
                record_id: [4; 16],
                password_file: b"erin-new".to_vec(),
                wrapped: b"erin-new-wrapped".to_vec(),
                owner_public_key: [4; 32],
                max_attempts: 10,
            },
        })
        .await
        .unwrap();
    assert!(
        matches!(replaced, Applied::Stored { generation: 2, .. }),
        "{replaced:?}"
    );
    let index = node.status().last_applied_index.unwrap();
    backlock_testkit::timing::eventually("the snapshot after the replacement", || {
        purged_through(&node, index)
    })
    .await;
    assert_eq!(node.end_epoch().await.unwrap(), 3);
    std::fs::remove_dir_all(before_replace.path().join("wal")).unwrap();
    std::fs::copy(data.join("keyroot"), before_replace.path().join("keyroot")).unwrap();
    match attack(before_replace.path().to_path_buf()).await {
        Ok(state) => assert_ne!(
            state.record("erin").map(|r| r.password_file.as_slice()),
            Some(ERIN_OLD),
            "the replaced record opens from an old copy"
        ),
        Err(e) => assert!(e.contains("root key"), "{e}"),
    }

    // The live replica lost nothing else: a copy of it now opens, with Bob and without
    // the erased records, and so does a restart.
    let live = attack(data.clone()).await.unwrap();
    assert_eq!(live.record("bob").unwrap().password_file, BOB);
    assert!(live.record("alice").is_none() && live.record("dave").is_none());
    node.shutdown().await;
    let node = VaultNode::start(NodeConfig::local(
        data,
        token.clone(),
        1,
        "127.0.0.1:0".into(),
    ))
    .await
    .unwrap();
    assert_eq!(node.epoch(), 3);
    assert!(node
        .read(|s| s.record("bob").is_some() && s.record("alice").is_none())
        .unwrap());
    node.shutdown().await;
}
