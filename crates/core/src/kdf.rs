//! Subkeys derived from the backup key (docs/FORMAT.md §Key derivation).
//!
//! `PRK = HKDF-Extract(salt = "backlock/v1", IKM = K)`, then one HKDF-Expand per label.
//! A label is never reused for two purposes.

use crate::key::BackupKey;
use hkdf::Hkdf;
use sha2::Sha256;
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// HKDF-Extract salt for every subkey of K.
pub const EXTRACT_SALT: &[u8] = b"backlock/v1";
/// Master key from which each object's encryption key is derived.
pub const LABEL_OBJECT: &[u8] = b"backlock/v1/object";
/// Key of the keyed BLAKE3 MAC that names chunks.
pub const LABEL_CHUNK_ID: &[u8] = b"backlock/v1/chunk-id";
/// 2048 bytes that become the chunker's secret 256-entry gear table.
pub const LABEL_CHUNKER_GEAR: &[u8] = b"backlock/v1/chunker-gear";
/// Public 16-byte key identifier stored in the config, to tell a wrong key from damage.
pub const LABEL_KEY_ID: &[u8] = b"backlock/v1/key-id";
/// Seed of the owner signing key that authorises vault changes (vault protocol).
pub const LABEL_OWNER_KEY: &[u8] = b"backlock/v1/owner-key";
/// Key that seals the snapshot anchor the vault keeps for a new phone (vault protocol).
pub const LABEL_VAULT_ANCHOR: &[u8] = b"backlock/v1/vault-anchor";
/// Per-object key: `HKDF(salt = object salt, IKM = object master, info = this)`.
pub const LABEL_OBJECT_KEY: &[u8] = b"backlock/v1/object-key";

/// Length of the public key identifier.
pub const KEY_ID_LEN: usize = 16;

/// Every key the repository format needs, derived once when a repository is opened.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RepoKeys {
    object_master: [u8; 32],
    chunk_id: [u8; 32],
    gear: Box<[u64; 256]>,
    #[zeroize(skip)]
    key_id: [u8; KEY_ID_LEN],
}

impl fmt::Debug for RepoKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepoKeys")
            .field("key_id", &hex::encode(self.key_id))
            .finish_non_exhaustive()
    }
}

/// HKDF-Expand of `prk` under `label` into `out`. Lengths are constants far below the
/// HKDF limit of 255 × 32 bytes, so expansion cannot fail.
fn expand(hk: &Hkdf<Sha256>, label: &[u8], out: &mut [u8]) {
    hk.expand(label, out)
        .expect("HKDF output length is a small constant");
}

impl RepoKeys {
    /// Derives all subkeys of `key`.
    pub fn derive(key: &BackupKey) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(EXTRACT_SALT), key.expose_secret());
        let mut keys = RepoKeys {
            object_master: [0; 32],
            chunk_id: [0; 32],
            gear: Box::new([0; 256]),
            key_id: [0; KEY_ID_LEN],
        };
        expand(&hk, LABEL_OBJECT, &mut keys.object_master);
        expand(&hk, LABEL_CHUNK_ID, &mut keys.chunk_id);
        expand(&hk, LABEL_KEY_ID, &mut keys.key_id);
        let mut gear_bytes = zeroize::Zeroizing::new([0u8; 2048]);
        expand(&hk, LABEL_CHUNKER_GEAR, &mut *gear_bytes);
        for (slot, bytes) in keys.gear.iter_mut().zip(gear_bytes.chunks_exact(8)) {
            *slot = u64::from_le_bytes(bytes.try_into().expect("chunks_exact(8)"));
        }
        keys
    }

    /// The public identifier of the key (safe to store in clear).
    pub fn key_id(&self) -> &[u8; KEY_ID_LEN] {
        &self.key_id
    }

    /// Derives the AES-256-GCM key of one object from its random salt.
    pub(crate) fn object_key(&self, salt: &[u8]) -> zeroize::Zeroizing<[u8; 32]> {
        let hk = Hkdf::<Sha256>::new(Some(salt), &self.object_master);
        let mut out = zeroize::Zeroizing::new([0u8; 32]);
        expand(&hk, LABEL_OBJECT_KEY, &mut *out);
        out
    }

    /// The chunk-ID MAC key.
    pub(crate) fn chunk_id_key(&self) -> &[u8; 32] {
        &self.chunk_id
    }

    /// The secret gear table of the content-defined chunker.
    pub(crate) fn gear(&self) -> &[u64; 256] {
        &self.gear
    }
}

/// Derives a 32-byte subkey of `key` for a purpose outside the repository format
/// (for example [`LABEL_OWNER_KEY`]).
pub fn derive_subkey(key: &BackupKey, label: &[u8]) -> zeroize::Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(EXTRACT_SALT), key.expose_secret());
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    expand(&hk, label, &mut *out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_only_the_public_key_id() {
        let keys = RepoKeys::derive(&BackupKey::from_bytes([0x11; 32]));
        let dbg = format!("{keys:?}");
        assert!(dbg.contains(&hex::encode(keys.key_id())));
        for secret in [&keys.object_master[..], &keys.chunk_id[..]] {
            assert!(
                !dbg.contains(&hex::encode(&secret[..4])),
                "a subkey leaked into Debug"
            );
        }
    }
}
