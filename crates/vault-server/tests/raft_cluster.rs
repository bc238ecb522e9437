//! Three replicas in one process, talking Raft over HTTP on 127.0.0.1: writes on the
//! leader reach the followers, a follower forwards to the leader, and an erasure purges
//! every replica's log.

use backlock_testkit::timing::eventually;
use backlock_vault_server::raft::{Bootstrap, NodeConfig, VaultNode};
use backlock_vault_server::seal::{KeyFileSealer, Sealer};
use backlock_vault_server::state::{Applied, Command, EraseReason, NewRecord};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::net::TcpListener;

fn record() -> NewRecord {
    NewRecord {
        record_id: [1; 16],
        password_file: b"cluster-password-file".to_vec(),
        wrapped: b"cluster-wrapped-key".to_vec(),
        owner_public_key: [2; 32],
        max_attempts: 10,
    }
}

fn attempts_left(node: &VaultNode) -> Option<u32> {
    node.read(|s| s.record("alice").map(|r| r.attempts_left))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_the_leader_reach_the_followers() {
    let root = tempfile::tempdir().unwrap();
    let sealer: Arc<dyn Sealer> =
        Arc::new(KeyFileSealer::open_or_create(root.path().join("node.key")).unwrap());
    let mut listeners = BTreeMap::new();
    for id in 1..=3u64 {
        listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let members: BTreeMap<u64, String> = listeners
        .iter()
        .map(|(id, l)| (*id, l.local_addr().unwrap().to_string()))
        .collect();

    // Followers first, serving their peer routes; then node 1 initialises the cluster.
    let mut nodes = BTreeMap::new();
    for (id, listener) in listeners.into_iter().rev() {
        let bootstrap = if id == 1 {
            Bootstrap::Members(members.clone())
        } else {
            Bootstrap::Join
        };
        let node = VaultNode::start_with(
            NodeConfig::local(
                root.path().join(format!("node{id}")),
                sealer.clone(),
                id,
                members[&id].clone(),
            ),
            bootstrap,
        )
        .await
        .unwrap();
        let router = node.peer_router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        nodes.insert(id, node);
    }

    let leader_id = nodes[&1].status().leader_id.expect("node 1 saw a leader");
    let leader = &nodes[&leader_id];
    let stored = leader
        .propose(Command::Register {
            account: "alice".into(),
            record: record(),
        })
        .await
        .unwrap();
    assert_eq!(
        stored,
        Applied::Stored {
            generation: 1,
            attempts_left: 10
        }
    );
    for left in [9, 8] {
        let attempt = Command::Attempt {
            account: "alice".into(),
            generation: 1,
            now_ms: 1,
        };
        assert_eq!(
            leader.propose(attempt).await.unwrap(),
            Applied::Counted {
                attempts_left: left
            }
        );
    }
    for node in nodes.values() {
        eventually("every replica applied both guesses", || {
            attempts_left(node) == Some(8)
        })
        .await;
        assert_eq!(node.status().leader_id, Some(leader_id));
    }

    // A follower forwards its proposal to the leader and hears the result.
    let (_, follower) = nodes.iter().find(|(id, _)| **id != leader_id).unwrap();
    let restored = follower
        .propose(Command::Success {
            account: "alice".into(),
            generation: 1,
        })
        .await
        .unwrap();
    assert!(
        matches!(
            restored,
            Applied::Restored {
                attempts_left: 10,
                ..
            }
        ),
        "{restored:?}"
    );
    for node in nodes.values() {
        eventually("every replica applied the forwarded success", || {
            attempts_left(node) == Some(10)
        })
        .await;
    }

    // An erasure is applied everywhere, and every replica's log drops the record.
    let erase = Command::Erase {
        account: "alice".into(),
        generation: 1,
        reason: EraseReason::Owner,
    };
    assert_eq!(leader.propose(erase).await.unwrap(), Applied::Erased);
    let erase_index = leader.status().last_applied_index.unwrap();
    for (id, node) in &nodes {
        eventually("the erasure reached every replica", || {
            attempts_left(node).is_none()
        })
        .await;
        eventually("every replica purged its log through the erasure", || {
            node.status().purged_index >= Some(erase_index)
        })
        .await;
        // Segments are named after their first entry: none may start at or before it.
        let dir = root.path().join(format!("node{id}")).join("wal");
        for entry in std::fs::read_dir(dir).unwrap() {
            let first: u64 = entry
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                first > erase_index,
                "node {id} keeps log entries from {first}"
            );
        }
    }

    for node in nodes.into_values() {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_was_down_catches_up_from_a_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let sealer: Arc<dyn Sealer> =
        Arc::new(KeyFileSealer::open_or_create(root.path().join("node.key")).unwrap());
    let mut listeners = BTreeMap::new();
    for id in 1..=3u64 {
        listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let members: BTreeMap<u64, String> = listeners
        .iter()
        .map(|(id, l)| (*id, l.local_addr().unwrap().to_string()))
        .collect();
    let config = |id: u64| {
        NodeConfig::local(
            root.path().join(format!("node{id}")),
            sealer.clone(),
            id,
            members[&id].clone(),
        )
    };
    // Node 3 is down: its port accepts nothing yet.
    let late_listener = listeners.remove(&3).unwrap();
    let node2 = VaultNode::start_with(config(2), Bootstrap::Join)
        .await
        .unwrap();
    tokio::spawn({
        let (listener, router) = (listeners.remove(&2).unwrap(), node2.peer_router());
        async move { axum::serve(listener, router).await }
    });
    let node1 = VaultNode::start_with(config(1), Bootstrap::Members(members.clone()))
        .await
        .unwrap();
    tokio::spawn({
        let (listener, router) = (listeners.remove(&1).unwrap(), node1.peer_router());
        async move { axum::serve(listener, router).await }
    });
    let leader = if node1.status().leader_id == Some(1) {
        &node1
    } else {
        &node2
    };

    // Two of three replicas commit; the erasure purges the leader's log.
    let register = |account: &str| Command::Register {
        account: account.into(),
        record: record(),
    };
    leader.propose(register("alice")).await.unwrap();
    leader.propose(register("bob")).await.unwrap();
    let erase = Command::Erase {
        account: "alice".into(),
        generation: 1,
        reason: EraseReason::Owner,
    };
    assert_eq!(leader.propose(erase).await.unwrap(), Applied::Erased);
    let erase_index = leader.status().last_applied_index.unwrap();
    eventually("the leader purged its log through the erasure", || {
        leader.status().purged_index >= Some(erase_index)
    })
    .await;

    // Node 3 comes up with nothing; the leader can only send it the snapshot.
    let node3 = VaultNode::start_with(config(3), Bootstrap::Join)
        .await
        .unwrap();
    tokio::spawn({
        let router = node3.peer_router();
        async move { axum::serve(late_listener, router).await }
    });
    eventually("node 3 installed the snapshot", || {
        node3.status().snapshot_index >= Some(erase_index)
    })
    .await;
    assert!(node3.read(|s| s.record("alice").is_none()).unwrap());
    assert!(node3.read(|s| s.record("bob").is_some()).unwrap());

    for node in [node1, node2, node3] {
        node.shutdown().await;
    }
}
