//! A snapshot of many accounts goes from one replica's store to another's under a
//! memory cap far below the state's size: made, sent chunk by chunk as openraft sends
//! it, and installed, with neither end holding the whole state. While it is on its way
//! no file in either data directory holds a record's secrets in clear.
//!
//! The cap is this test binary's global allocator: an allocation past it fails and
//! the test aborts.

use backlock_vault_server::epoch::EpochSealer;
use backlock_vault_server::raft::{Batch, StateMachineStore, TypeConfig};
use backlock_vault_server::seal::{KeyFileSealer, Sealer};
use backlock_vault_server::state::{Command, NewRecord};
use cap::Cap;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use std::io::SeekFrom;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

#[global_allocator]
static ALLOCATOR: Cap<std::alloc::System> = Cap::new(std::alloc::System, usize::MAX);

const ACCOUNTS: usize = 100_000;
const PER_ENTRY: usize = 1_000;
/// Each store's database page cache.
const CACHE: usize = 2 << 20;
/// What the transfer may allocate beyond what is held when it starts. The stream is
/// over 40 MB (more as a state in memory); the transfer needs a chunk at each end, a
/// frame, one lower node's leaves, the node keys and redb's caches.
const BUDGET: usize = 24 << 20;
/// What openraft sends per request (`network::SNAPSHOT_CHUNK`).
const CHUNK: usize = 1 << 20;

fn password_file(i: usize) -> Vec<u8> {
    format!("password-file-{i:08}-").repeat(16).into_bytes()
}

fn entry(index: u64, first: usize) -> Entry<TypeConfig> {
    let commands = (first..first + PER_ENTRY)
        .map(|i| Command::Register {
            account: format!("account-{i:08}"),
            record: NewRecord {
                record_id: [(i % 251) as u8; 16],
                password_file: password_file(i),
                wrapped: format!("wrapped-key-{i:08}").repeat(4).into_bytes(),
                owner_public_key: [7; 32],
                max_attempts: 10,
            },
        })
        .collect();
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch(commands)),
    }
}

fn store(root: &Path, name: &str) -> StateMachineStore {
    let node: Arc<dyn Sealer> =
        Arc::new(KeyFileSealer::open_or_create(root.join(format!("{name}.key"))).unwrap());
    let sealer = Arc::new(EpochSealer::open(node).unwrap());
    StateMachineStore::open_with_cache(&root.join(name), sealer, CACHE).unwrap()
}

/// Whether any file under `dir` holds `needle`.
fn held_in_clear(dir: &Path, needle: &[u8]) -> Option<String> {
    for file in std::fs::read_dir(dir).unwrap() {
        let path = file.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if bytes.windows(needle.len()).any(|w| w == needle) {
            return Some(path.display().to_string());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_streams_between_stores_under_a_memory_cap() {
    let root = tempfile::tempdir().unwrap();
    let (mut leader, mut follower) = (store(root.path(), "leader"), store(root.path(), "follower"));
    for (n, first) in (0..ACCOUNTS).step_by(PER_ENTRY).enumerate() {
        leader.apply([entry(n as u64 + 1, first)]).await.unwrap();
    }
    leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    ALLOCATOR
        .set_limit(ALLOCATOR.allocated() + BUDGET)
        .expect("the cap is above what is allocated");
    let mut sent = leader
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("a snapshot was built");
    let mut received = follower.begin_receiving_snapshot().await.unwrap();
    let end = sent.snapshot.seek(SeekFrom::End(0)).await.unwrap();
    assert!(
        end > (ACCOUNTS * 400) as u64,
        "the snapshot is {end} bytes for {ACCOUNTS} accounts"
    );
    let mut offset = 0;
    let mut checked = false;
    while offset < end {
        sent.snapshot.seek(SeekFrom::Start(offset)).await.unwrap();
        let mut chunk = Vec::with_capacity(CHUNK);
        while chunk.len() < CHUNK {
            if sent.snapshot.read_buf(&mut chunk).await.unwrap() == 0 {
                break;
            }
        }
        received.seek(SeekFrom::Start(offset)).await.unwrap();
        received.write_all(&chunk).await.unwrap();
        offset += chunk.len() as u64;
        if !checked && offset > end / 2 {
            // Both spools exist now, holding every record in the stream's clear.
            checked = true;
            ALLOCATOR.set_limit(usize::MAX).unwrap();
            for side in ["leader", "follower"] {
                for i in [0, ACCOUNTS / 3, ACCOUNTS - 1] {
                    let found = held_in_clear(&root.path().join(side), &password_file(i)[..40]);
                    assert_eq!(found, None, "account {i}'s password file in clear");
                }
            }
            ALLOCATOR
                .set_limit(ALLOCATOR.allocated() + BUDGET)
                .expect("the cap is above what is allocated");
        }
    }
    received.shutdown().await.unwrap();
    follower
        .install_snapshot(&sent.meta, received)
        .await
        .unwrap();
    drop(sent);
    let peak = ALLOCATOR.max_allocated();
    ALLOCATOR.set_limit(usize::MAX).unwrap();
    eprintln!("peak heap {} MiB", peak >> 20);

    let (applied, _) = follower.applied_state().await.unwrap();
    assert_eq!(
        applied,
        Some(LogId::new(
            CommittedLeaderId::new(1, 1),
            (ACCOUNTS / PER_ENTRY) as u64
        ))
    );
    assert_eq!(follower.records(), ACCOUNTS as u64);
    assert_eq!(follower.records(), leader.records());
    assert_eq!(follower.state_digest(), leader.state_digest());
}
