//! The snapshot anchor: which backup is the newest, kept by the vault for a new phone
//! (docs/VAULT.md §Snapshot anchor).
//!
//! A phone that restores from a store it has never seen cannot tell the newest backup
//! from an older one the store serves instead. After each backup in password mode the
//! device leaves an anchor with the vault; a new phone that recovers the key reads it
//! and refuses a store whose newest backup is older.
//!
//! - `anchor_key = HKDF-SHA256(K, "backlock/v1/vault-anchor")` (docs/FORMAT.md §Key
//!   derivation);
//! - `value = 0x01 ‖ nonce (12, random) ‖ AES-256-GCM(anchor_key, nonce,
//!   repository id (16) ‖ u64be(sequence) ‖ snapshot name (16),
//!   AAD = "backlock/v1/vault/anchor" ‖ u16be(len(account)) ‖ account ‖ u64be(generation))`.
//!
//! The vault sees the value (69 bytes) and its generation, which it requires to grow;
//! the generation is the snapshot's sequence number.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use backlock_core::kdf::{derive_subkey, LABEL_VAULT_ANCHOR};
use backlock_core::key::BackupKey;
use rand::RngCore;

const VERSION: u8 = 1;
const AAD_LABEL: &[u8] = b"backlock/v1/vault/anchor";
const PLAIN_LEN: usize = 16 + 8 + 16;
/// Length of a sealed anchor value.
pub const VALUE_LEN: usize = 1 + NONCE_LEN + PLAIN_LEN + 16;

/// The newest backup of a repository, as the device that made it saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotAnchor {
    /// The repository's id.
    pub repo: [u8; 16],
    /// The snapshot's sequence number.
    pub seq: u64,
    /// The snapshot's object name.
    pub snapshot: [u8; 16],
}

/// The anchor value does not open under this key, for this account and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the vault's snapshot anchor does not open with this backup key: it was not made for this account and key, or it was altered")]
pub struct AnchorError;

fn key(backup_key: &BackupKey) -> LessSafeKey {
    let key = derive_subkey(backup_key, LABEL_VAULT_ANCHOR);
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &*key).expect("32-byte AES key"))
}

fn aad(account: &str, generation: u64) -> Vec<u8> {
    let mut a = AAD_LABEL.to_vec();
    a.extend_from_slice(&(account.len() as u16).to_be_bytes());
    a.extend_from_slice(account.as_bytes());
    a.extend_from_slice(&generation.to_be_bytes());
    a
}

/// Seals `anchor` for `account`; its generation is its sequence number.
pub fn seal(backup_key: &BackupKey, account: &str, anchor: &SnapshotAnchor) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    seal_with_nonce(backup_key, account, anchor, nonce)
}

fn seal_with_nonce(
    backup_key: &BackupKey,
    account: &str,
    anchor: &SnapshotAnchor,
    nonce: [u8; NONCE_LEN],
) -> Vec<u8> {
    let mut body = Vec::with_capacity(PLAIN_LEN + 16);
    body.extend_from_slice(&anchor.repo);
    body.extend_from_slice(&anchor.seq.to_be_bytes());
    body.extend_from_slice(&anchor.snapshot);
    key(backup_key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(account, anchor.seq)),
            &mut body,
        )
        .expect("AES-GCM seals any short message");
    let mut out = Vec::with_capacity(VALUE_LEN);
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    out
}

/// Opens the value the vault holds under `generation` for `account`.
pub fn open(
    backup_key: &BackupKey,
    account: &str,
    generation: u64,
    value: &[u8],
) -> Result<SnapshotAnchor, AnchorError> {
    if value.len() != VALUE_LEN || value[0] != VERSION {
        return Err(AnchorError);
    }
    let nonce: [u8; NONCE_LEN] = value[1..1 + NONCE_LEN].try_into().expect("length checked");
    let mut body = value[1 + NONCE_LEN..].to_vec();
    let plain = key(backup_key)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(account, generation)),
            &mut body,
        )
        .map_err(|_| AnchorError)?;
    let anchor = SnapshotAnchor {
        repo: plain[..16].try_into().expect("length checked"),
        seq: u64::from_be_bytes(plain[16..24].try_into().expect("length checked")),
        snapshot: plain[24..40].try_into().expect("length checked"),
    };
    // The generation the vault keeps is the sequence inside.
    if anchor.seq != generation {
        return Err(AnchorError);
    }
    Ok(anchor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answer: K = 0x01 × 32, account "alice", repository 0x02 × 16, sequence 7,
    /// snapshot 0x03 × 16, nonce 0x04 × 12. Computed apart from this code, from the
    /// layout in the module docs, with Python's `cryptography` 48 (HKDF-SHA256, AESGCM).
    #[test]
    fn known_answer() {
        let key = BackupKey::from_bytes([1; 32]);
        let anchor = SnapshotAnchor {
            repo: [2; 16],
            seq: 7,
            snapshot: [3; 16],
        };
        let value = seal_with_nonce(&key, "alice", &anchor, [4; NONCE_LEN]);
        assert_eq!(hex::encode(&value), KNOWN_ANSWER);
        assert_eq!(open(&key, "alice", 7, &value), Ok(anchor));
    }

    const KNOWN_ANSWER: &str = "01040404040404040404040404ee8529b9dc32e2f9473ad754168429c2acd570\
                                941496bdd4ee54314bfc426a365b774284608890a3f1995cdad82f4abaa945e6\
                                43e26b9828";

    #[test]
    fn an_anchor_opens_only_with_its_key_account_and_generation() {
        let key = BackupKey::from_bytes([3; 32]);
        let anchor = SnapshotAnchor {
            repo: [1; 16],
            seq: 7,
            snapshot: [9; 16],
        };
        let value = seal(&key, "alice", &anchor);
        assert_eq!(value.len(), VALUE_LEN);
        assert_eq!(open(&key, "alice", 7, &value), Ok(anchor));
        assert_eq!(
            open(&BackupKey::from_bytes([4; 32]), "alice", 7, &value),
            Err(AnchorError)
        );
        assert_eq!(open(&key, "bob", 7, &value), Err(AnchorError));
        // A vault that relabels an old anchor with a higher generation is caught.
        assert_eq!(open(&key, "alice", 8, &value), Err(AnchorError));
        for i in 0..value.len() {
            let mut bad = value.clone();
            bad[i] ^= 1;
            assert_eq!(open(&key, "alice", 7, &bad), Err(AnchorError), "byte {i}");
        }
        assert_eq!(
            open(&key, "alice", 7, &value[..VALUE_LEN - 1]),
            Err(AnchorError)
        );
    }
}
