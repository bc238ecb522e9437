//! Identifiers: chunk IDs (keyed MACs of plaintext) and object names (random).

use serde::{Deserialize, Serialize};
use std::fmt;
use subtle::ConstantTimeEq;

/// A chunk's ID: keyed BLAKE3 of its plaintext (docs/FORMAT.md §Chunk IDs).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Computes the ID of `data` under the repository's chunk-ID key.
    pub fn compute(keys: &crate::kdf::RepoKeys, data: &[u8]) -> Self {
        ChunkId(*blake3::keyed_hash(keys.chunk_id_key(), data).as_bytes())
    }

    /// True when `data` has this ID; compares in constant time as it checks a MAC.
    pub fn verify(&self, keys: &crate::kdf::RepoKeys, data: &[u8]) -> bool {
        Self::compute(keys, data).0.ct_eq(&self.0).into()
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", hex::encode(&self.0[..8]))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Length of an object name in bytes (shown as 32 hex digits).
pub const OBJECT_NAME_LEN: usize = 16;

/// A random object name: packs, index and snapshot objects are never overwritten.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectName(pub [u8; OBJECT_NAME_LEN]);

impl ObjectName {
    /// A fresh random name.
    pub fn random() -> Self {
        use rand::RngCore;
        let mut b = [0u8; OBJECT_NAME_LEN];
        rand::rngs::OsRng.fill_bytes(&mut b);
        ObjectName(b)
    }

    /// Parses 32 hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        let mut b = [0u8; OBJECT_NAME_LEN];
        hex::decode_to_slice(s, &mut b).ok()?;
        Some(ObjectName(b))
    }

    /// The 32-hex-digit form used as the object's name in the store.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A snapshot's name: 8 random bytes then its sequence number (big-endian), so a
    /// listing alone shows the newest snapshot; the name is authenticated with the
    /// object, so a store cannot relabel one (docs/FORMAT.md §Names).
    pub fn for_snapshot(seq: u64) -> Self {
        let mut n = Self::random();
        n.0[8..].copy_from_slice(&seq.to_be_bytes());
        n
    }

    /// The sequence number carried by a snapshot's name.
    pub fn snapshot_seq(&self) -> u64 {
        u64::from_be_bytes(self.0[8..].try_into().expect("8 bytes"))
    }

    /// The 8-digit short form shown to people.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Debug for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectName({})", self.to_hex())
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
