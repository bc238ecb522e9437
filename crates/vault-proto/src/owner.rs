//! The owner key: an Ed25519 key derived from the backup key that authorises changing or
//! deleting the account's vault record (docs/VAULT.md §Owner proofs).
//!
//! Signed message: `"backlock vault owner v1" ‖ 0x00 ‖ op ‖ u16be(len(account)) ‖
//! account ‖ u64be(generation) ‖ SHA-256(payload)`. The generation makes a proof single
//! use: every change bumps it.

use backlock_core::kdf::{derive_subkey, LABEL_OWNER_KEY};
use backlock_core::key::BackupKey;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::fmt;

const DOMAIN: &[u8] = b"backlock vault owner v1";

/// What a proof authorises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OwnerOp {
    /// Replace the record (new password, or switch to a new backup key).
    Replace = 1,
    /// Erase the record.
    Delete = 2,
}

/// The signing half; lives only on a device that holds the backup key.
pub struct OwnerKey(SigningKey);

impl fmt::Debug for OwnerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OwnerKey")
            .field(&hex::encode(self.public_key()))
            .finish()
    }
}

fn message(op: OwnerOp, account: &str, generation: u64, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 1 + 1 + 2 + account.len() + 8 + 32);
    m.extend_from_slice(DOMAIN);
    m.push(0);
    m.push(op as u8);
    m.extend_from_slice(&(account.len() as u16).to_be_bytes());
    m.extend_from_slice(account.as_bytes());
    m.extend_from_slice(&generation.to_be_bytes());
    m.extend_from_slice(&Sha256::digest(payload));
    m
}

impl OwnerKey {
    /// Derives the owner key of `key` (HKDF label `backlock/v1/owner-key`).
    pub fn derive(key: &BackupKey) -> Self {
        let seed = derive_subkey(key, LABEL_OWNER_KEY);
        // SigningKey zeroizes itself on drop (ed25519-dalek feature `zeroize`).
        OwnerKey(SigningKey::from_bytes(&seed))
    }

    /// The public key the vault stores with the record.
    pub fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// Signs `op` on `account`'s record at `generation` over `payload`.
    pub fn sign(&self, op: OwnerOp, account: &str, generation: u64, payload: &[u8]) -> [u8; 64] {
        self.0
            .sign(&message(op, account, generation, payload))
            .to_bytes()
    }
}

/// Checks a proof against the stored owner public key.
pub fn verify(
    public_key: &[u8; 32],
    op: OwnerOp,
    account: &str,
    generation: u64,
    payload: &[u8],
    signature: &[u8; 64],
) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    key.verify_strict(
        &message(op, account, generation, payload),
        &Signature::from_bytes(signature),
    )
    .is_ok()
}

/// The payload a `Replace` proof covers: everything the new record is made of.
pub fn replace_payload(
    record_id: &[u8; 16],
    upload: &[u8],
    wrapped: &[u8],
    owner_public_key: &[u8; 32],
) -> Vec<u8> {
    let mut p = Vec::with_capacity(16 + 8 + upload.len() + wrapped.len() + 32);
    p.extend_from_slice(record_id);
    for part in [upload, wrapped] {
        p.extend_from_slice(&(part.len() as u32).to_be_bytes());
        p.extend_from_slice(part);
    }
    p.extend_from_slice(owner_public_key);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_op_account_generation_and_payload() {
        let key = BackupKey::from_bytes([3; 32]);
        let owner = OwnerKey::derive(&key);
        let pk = owner.public_key();
        let sig = owner.sign(OwnerOp::Delete, "alice", 4, b"p");
        assert!(verify(&pk, OwnerOp::Delete, "alice", 4, b"p", &sig));
        assert!(!verify(&pk, OwnerOp::Replace, "alice", 4, b"p", &sig));
        assert!(!verify(&pk, OwnerOp::Delete, "bob", 4, b"p", &sig));
        assert!(!verify(&pk, OwnerOp::Delete, "alice", 5, b"p", &sig));
        assert!(!verify(&pk, OwnerOp::Delete, "alice", 4, b"q", &sig));
        let other = OwnerKey::derive(&BackupKey::from_bytes([4; 32]));
        assert!(!verify(
            &other.public_key(),
            OwnerOp::Delete,
            "alice",
            4,
            b"p",
            &sig
        ));
        assert!(!format!("{owner:?}").contains(&hex::encode([3u8; 32])));
    }
}
