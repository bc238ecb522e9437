//! The openraft type configuration of the vault.

use super::spool::SnapshotFile;
use crate::state::{Applied, Command};
use serde::{Deserialize, Serialize};

/// What one log entry carries: commands proposed together, applied in order (see
/// `batcher`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Command>);

openraft::declare_raft_types!(
    /// openraft types for the vault: a log entry carries a [`Batch`] of commands,
    /// applying it yields one [`Applied`] per command, nodes are `u64` ids with an HTTP
    /// address.
    pub TypeConfig:
        D = Batch,
        R = Vec<Applied>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log entry of the vault.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<u64>;
/// A vote.
pub type Vote = openraft::Vote<u64>;
/// Membership as stored with the state machine.
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
/// A storage error as openraft expects it.
pub type StorageError = openraft::StorageError<u64>;
/// The running Raft instance of the vault.
pub type VaultRaft = openraft::Raft<TypeConfig>;
