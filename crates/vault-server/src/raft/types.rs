//! The openraft type configuration of the vault.

use crate::state::{Applied, Command};
use std::io::Cursor;

openraft::declare_raft_types!(
    /// openraft types for the vault: log entries carry [`Command`]s, applying one yields
    /// [`Applied`], nodes are `u64` ids with an HTTP address.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
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
