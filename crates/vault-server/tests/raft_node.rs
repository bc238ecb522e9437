//! A one-replica vault node on disk: durability across restarts, erasure that really
//! removes a record's bytes, and nothing stored in plaintext.

use backlock_testkit::timing::eventually;
use backlock_testkit::tree::copy_dir;
use backlock_vault_server::raft::{open_copy, unseal_file, NodeConfig, VaultNode};
use backlock_vault_server::seal::{KeyFileSealer, Sealer};
use backlock_vault_server::state::{Applied, Command, EraseReason, NewRecord};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Distinctive bytes, so a search of the data directory cannot match by accident.
const ALICE_FILE: &[u8] = b"alice-password-file-7f3a9c0e55d1b2a4";
const ALICE_WRAPPED: &[u8] = b"alice-wrapped-key-e1c4b7a902f3d68c";
const BOB_FILE: &[u8] = b"bob-password-file-0a9e8d7c6b5a4f3e";

struct Fixture {
    root: tempfile::TempDir,
    sealer: Arc<dyn Sealer>,
}

impl Fixture {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let sealer = Arc::new(KeyFileSealer::open_or_create(root.path().join("node.key")).unwrap());
        Self { root, sealer }
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The state a copy of the data directory holds, secrets opened with the live keys.
    async fn copy_state(&self) -> backlock_vault_server::state::VaultState {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(&self.data(), copy.path());
        open_copy(copy.path(), self.sealer.clone()).await.unwrap()
    }

    /// Starts the node and waits until it applied what its log holds (a read right after
    /// a restart could otherwise run before the replay, as the vault's reads never do).
    async fn start(&self) -> VaultNode {
        let node = VaultNode::start(NodeConfig::local(
            self.data(),
            self.sealer.clone(),
            1,
            "127.0.0.1:0".into(),
        ))
        .await
        .unwrap();
        node.catch_up().await.unwrap();
        node
    }

    /// Every file under the data directory, raw and unsealed. Panics if one does not
    /// open: everything at rest must be sealed.
    fn contents(&self) -> Vec<(PathBuf, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for path in walk(&self.data()) {
            let raw = std::fs::read(&path).unwrap();
            let plain = unseal_file(&self.data(), &path, &*self.sealer)
                .unwrap_or_else(|| {
                    panic!("unexpected file in the data directory: {}", path.display())
                })
                .unwrap_or_else(|e| panic!("{} is not sealed for its place: {e}", path.display()));
            out.push((path, raw, plain));
        }
        out
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The first entry of each log segment (segments are named after it).
fn segment_firsts(data: &Path) -> Vec<u64> {
    let mut indexes: Vec<u64> = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    indexes.sort_unstable();
    indexes
}

fn record(password_file: &[u8], wrapped: &[u8]) -> NewRecord {
    NewRecord {
        record_id: [7; 16],
        password_file: password_file.to_vec(),
        wrapped: wrapped.to_vec(),
        owner_public_key: [9; 32],
        max_attempts: 10,
    }
}

fn register(account: &str, record: NewRecord) -> Command {
    Command::Register {
        account: account.into(),
        record,
    }
}

fn attempt(account: &str) -> Command {
    Command::Attempt {
        account: account.into(),
        generation: 1,
        now_ms: 1_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_counted_before_a_restart_stay_counted() {
    let fx = Fixture::new();
    let node = fx.start().await;
    assert_eq!(node.status().leader_id, Some(1));
    let stored = node
        .propose(register("alice", record(ALICE_FILE, ALICE_WRAPPED)))
        .await
        .unwrap();
    assert_eq!(
        stored,
        Applied::Stored {
            generation: 1,
            attempts_left: 10
        }
    );
    for left in [9, 8, 7] {
        let counted = node.propose(attempt("alice")).await.unwrap();
        assert_eq!(
            counted,
            Applied::Counted {
                attempts_left: left
            }
        );
    }
    let before = node.status();
    assert_eq!(before.commit_index, before.last_applied_index);
    node.shutdown().await;

    let node = fx.start().await;
    assert_eq!(
        node.read(|s| s.record("alice").map(|r| r.attempts_left))
            .unwrap(),
        Some(7)
    );
    assert_eq!(
        node.read(|s| s.record("alice").map(|r| r.wrapped.clone()))
            .unwrap(),
        Some(ALICE_WRAPPED.to_vec())
    );
    let counted = node.propose(attempt("alice")).await.unwrap();
    assert_eq!(counted, Applied::Counted { attempts_left: 6 });
    let after = node.status();
    assert!(after.term >= before.term);
    assert!(after.last_log_index > before.last_log_index);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_record_leaves_the_data_directory() {
    let fx = Fixture::new();
    let node = fx.start().await;
    node.propose(register("alice", record(ALICE_FILE, ALICE_WRAPPED)))
        .await
        .unwrap();
    node.propose(register("bob", record(BOB_FILE, b"bob-wrapped")))
        .await
        .unwrap();
    node.propose(attempt("alice")).await.unwrap();

    // Before: sealed at rest, yet the records are there once unsealed (the search works).
    let files = fx.contents();
    assert!(files
        .iter()
        .all(|(_, raw, _)| !contains(raw, ALICE_FILE) && !contains(raw, ALICE_WRAPPED)));
    assert!(files
        .iter()
        .any(|(_, _, plain)| contains(plain, ALICE_FILE)));
    assert!(files
        .iter()
        .any(|(_, _, plain)| contains(plain, ALICE_WRAPPED)));
    let logged_before_erase = segment_firsts(&fx.data());

    let erased = node
        .propose(Command::Erase {
            account: "alice".into(),
            generation: 1,
            reason: EraseReason::Owner,
        })
        .await
        .unwrap();
    assert_eq!(erased, Applied::Erased);
    let erase_index = node.status().last_applied_index.unwrap();
    eventually("the log is purged through the erase", || {
        node.status().purged_index >= Some(erase_index)
    })
    .await;

    let logged_now = segment_firsts(&fx.data());
    assert!(
        logged_now
            .iter()
            .all(|i| !logged_before_erase.contains(i) && *i > erase_index),
        "log segments from before the erase remain: {logged_now:?}"
    );
    for (path, raw, plain) in fx.contents() {
        for secret in [ALICE_FILE, ALICE_WRAPPED] {
            assert!(
                !contains(&raw, secret),
                "{} holds the record in plaintext",
                path.display()
            );
            assert!(
                !contains(&plain, secret),
                "{} still holds the erased record",
                path.display()
            );
        }
    }
    // Bob's record is untouched, in the database (under its leaf key).
    assert!(fx.data().join("state.redb").exists());
    let copied = fx.copy_state().await;
    assert_eq!(copied.record("bob").unwrap().password_file, BOB_FILE);
    assert!(copied.record("alice").is_none());
    node.shutdown().await;

    // The state rebuilt from snapshot and log agrees.
    let node = fx.start().await;
    assert!(node.read(|s| s.record("alice").is_none()).unwrap());
    assert_eq!(node.records(), 1);
    assert!(node.read(|s| s.record("bob").is_some()).unwrap());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_under_another_key_does_not_start() {
    let fx = Fixture::new();
    let node = fx.start().await;
    node.propose(register("alice", record(ALICE_FILE, ALICE_WRAPPED)))
        .await
        .unwrap();
    node.shutdown().await;

    let other_key = tempfile::tempdir().unwrap();
    let err = VaultNode::start(NodeConfig::local(
        fx.data(),
        Arc::new(KeyFileSealer::open_or_create(other_key.path().join("node.key")).unwrap()),
        1,
        "127.0.0.1:0".into(),
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("does not open"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_record_leaves_no_old_copy() {
    let fx = Fixture::new();
    let node = fx.start().await;
    node.propose(register("alice", record(ALICE_FILE, ALICE_WRAPPED)))
        .await
        .unwrap();
    let replaced = node
        .propose(Command::Replace {
            account: "alice".into(),
            generation: 1,
            record: record(BOB_FILE, b"new-wrapped"),
        })
        .await
        .unwrap();
    assert_eq!(
        replaced,
        Applied::Stored {
            generation: 2,
            attempts_left: 10
        }
    );
    let replace_index = node.status().last_applied_index.unwrap();
    eventually("the log is purged through the replacement", || {
        node.status().purged_index >= Some(replace_index)
    })
    .await;
    let files = fx.contents();
    for (path, _, plain) in &files {
        assert!(
            !contains(plain, ALICE_FILE),
            "{} keeps the old record",
            path.display()
        );
        assert!(
            !contains(plain, ALICE_WRAPPED),
            "{} keeps the old record",
            path.display()
        );
    }
    let copied = fx.copy_state().await;
    assert_eq!(copied.record("alice").unwrap().password_file, BOB_FILE);
    node.shutdown().await;
}

/// Concurrent proposals share log entries (batching), each caller still gets its own
/// command's result, and every guess is counted exactly once across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_share_entries_and_each_gets_its_result() {
    let fx = Fixture::new();
    let node = std::sync::Arc::new(fx.start().await);
    node.propose(register("alice", record(ALICE_FILE, ALICE_WRAPPED)))
        .await
        .unwrap();
    let before = node.status().last_log_index.unwrap();
    let guesses: Vec<_> = (0..10)
        .map(|_| {
            let node = node.clone();
            tokio::spawn(async move { node.propose(attempt("alice")).await.unwrap() })
        })
        .collect();
    let registrations: Vec<_> = (0..40)
        .map(|i| {
            let node = node.clone();
            tokio::spawn(async move {
                let account = format!("user{i}");
                (
                    node.propose(register(&account, record(BOB_FILE, ALICE_WRAPPED)))
                        .await
                        .unwrap(),
                    account,
                )
            })
        })
        .collect();
    let mut left = Vec::new();
    for guess in guesses {
        match guess.await.unwrap() {
            Applied::Counted { attempts_left } => left.push(attempts_left),
            other => panic!("a guess got {other:?}"),
        }
    }
    left.sort_unstable();
    assert_eq!(
        left,
        (0..10).collect::<Vec<u32>>(),
        "each guess counted once"
    );
    for registration in registrations {
        let (applied, account) = registration.await.unwrap();
        assert!(
            matches!(applied, Applied::Stored { generation: 1, .. }),
            "{account}: {applied:?}"
        );
    }
    let entries = node.status().last_log_index.unwrap() - before;
    assert!(entries < 50, "50 proposals took {entries} entries");

    let node = std::sync::Arc::into_inner(node).unwrap();
    node.shutdown().await;
    let node = fx.start().await;
    assert_eq!(
        node.read(|s| s.record("alice").map(|r| r.attempts_left))
            .unwrap(),
        Some(0)
    );
    assert!(node.read(|s| s.record("user39").is_some()).unwrap());
    node.shutdown().await;
}
