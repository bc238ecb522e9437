//! The owner key: an Ed25519 key derived from the backup key that authorises changing or
//! deleting the account's vault record (docs/VAULT.md §Owner proofs).
//!
//! Signed message: `"backlock vault owner v2" ‖ 0x00 ‖ fleet (8 bytes) ‖ op ‖
//! u16be(len(account)) ‖ account ‖ u64be(generation) ‖ u64be(not_before) ‖
//! u64be(not_after) ‖ SHA-256(payload)`. The generation makes a proof single use
//! (every change bumps it); the fleet keeps it from being used at another vault; the
//! window (at most [`MAX_WINDOW_SECS`], Unix seconds) keeps a proof that was never sent
//! from being used later.

use crate::token::{FleetId, CLOCK_SKEW_SECS};
use backlock_core::kdf::{derive_subkey, LABEL_OWNER_KEY};
use backlock_core::key::BackupKey;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::fmt;

const DOMAIN: &[u8] = b"backlock vault owner v2";

/// The longest window a proof may name.
pub const MAX_WINDOW_SECS: u64 = 600;

/// When a proof may be used, in Unix seconds: from `not_before` until before
/// `not_after`, give or take [`CLOCK_SKEW_SECS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First second it is valid.
    pub not_before: u64,
    /// First second it is no longer valid.
    pub not_after: u64,
}

impl Window {
    /// The widest window, from `now`.
    pub fn from(now: u64) -> Self {
        Window {
            not_before: now,
            not_after: now + MAX_WINDOW_SECS,
        }
    }

    /// Whether a vault whose clock reads `now` accepts it: no wider than
    /// [`MAX_WINDOW_SECS`], and `now` inside it with the tolerated skew.
    pub fn admits(&self, now: u64) -> bool {
        self.not_after > self.not_before
            && self.not_after - self.not_before <= MAX_WINDOW_SECS
            && self.not_before <= now.saturating_add(CLOCK_SKEW_SECS)
            && now < self.not_after.saturating_add(CLOCK_SKEW_SECS)
    }
}

/// What a proof authorises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OwnerOp {
    /// Replace the record (new password, or switch to a new backup key).
    Replace = 1,
    /// Erase the record.
    Delete = 2,
    /// Set the snapshot anchor ([`crate::anchor`]).
    Anchor = 3,
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

/// What a proof covers besides its payload.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    /// The fleet it is for.
    pub fleet: FleetId,
    /// The account.
    pub account: &'a str,
    /// Generation of the record it changes.
    pub generation: u64,
    /// When it may be used.
    pub window: Window,
}

fn message(op: OwnerOp, scope: &Scope<'_>, payload: &[u8]) -> Vec<u8> {
    let account = scope.account;
    let mut m = Vec::with_capacity(DOMAIN.len() + 1 + 8 + 1 + 2 + account.len() + 24 + 32);
    m.extend_from_slice(DOMAIN);
    m.push(0);
    m.extend_from_slice(&scope.fleet.bytes());
    m.push(op as u8);
    m.extend_from_slice(&(account.len() as u16).to_be_bytes());
    m.extend_from_slice(account.as_bytes());
    m.extend_from_slice(&scope.generation.to_be_bytes());
    m.extend_from_slice(&scope.window.not_before.to_be_bytes());
    m.extend_from_slice(&scope.window.not_after.to_be_bytes());
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

    /// Signs `op` within `scope` over `payload`.
    pub fn sign(&self, op: OwnerOp, scope: &Scope<'_>, payload: &[u8]) -> [u8; 64] {
        self.0.sign(&message(op, scope, payload)).to_bytes()
    }
}

/// Checks a proof's signature against the stored owner public key (its window is
/// checked apart, against the clock: [`Window::admits`]).
pub fn verify(
    public_key: &[u8; 32],
    op: OwnerOp,
    scope: &Scope<'_>,
    payload: &[u8],
    signature: &[u8; 64],
) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    key.verify_strict(
        &message(op, scope, payload),
        &Signature::from_bytes(signature),
    )
    .is_ok()
}

/// The payload an `Anchor` proof covers: the anchor's generation and sealed value.
pub fn anchor_payload(generation: u64, value: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + value.len());
    p.extend_from_slice(&generation.to_be_bytes());
    p.extend_from_slice(value);
    p
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
    fn proofs_bind_op_fleet_account_generation_window_and_payload() {
        let key = BackupKey::from_bytes([3; 32]);
        let owner = OwnerKey::derive(&key);
        let pk = owner.public_key();
        let scope = Scope {
            fleet: FleetId::of(&[1; 32]),
            account: "alice",
            generation: 4,
            window: Window::from(1_000),
        };
        let sig = owner.sign(OwnerOp::Delete, &scope, b"p");
        assert!(verify(&pk, OwnerOp::Delete, &scope, b"p", &sig));
        assert!(!verify(&pk, OwnerOp::Replace, &scope, b"p", &sig));
        let changed = [
            Scope {
                account: "bob",
                ..scope
            },
            Scope {
                generation: 5,
                ..scope
            },
            Scope {
                fleet: FleetId::of(&[2; 32]),
                ..scope
            },
            Scope {
                window: Window::from(1_001),
                ..scope
            },
        ];
        for other in &changed {
            assert!(
                !verify(&pk, OwnerOp::Delete, other, b"p", &sig),
                "{other:?}"
            );
        }
        assert!(!verify(&pk, OwnerOp::Delete, &scope, b"q", &sig));
        let other = OwnerKey::derive(&BackupKey::from_bytes([4; 32]));
        assert!(!verify(
            &other.public_key(),
            OwnerOp::Delete,
            &scope,
            b"p",
            &sig
        ));
        assert!(!format!("{owner:?}").contains(&hex::encode([3u8; 32])));
    }

    #[test]
    fn a_window_admits_its_span_with_the_skew_and_nothing_wider() {
        let w = Window::from(10_000);
        assert!(w.admits(10_000 - CLOCK_SKEW_SECS));
        assert!(!w.admits(9_999 - CLOCK_SKEW_SECS));
        assert!(w.admits(10_000 + MAX_WINDOW_SECS + CLOCK_SKEW_SECS - 1));
        assert!(!w.admits(10_000 + MAX_WINDOW_SECS + CLOCK_SKEW_SECS));
        let wide = Window {
            not_before: 0,
            not_after: MAX_WINDOW_SECS + 1,
        };
        assert!(!wide.admits(10));
        let empty = Window {
            not_before: 5,
            not_after: 5,
        };
        assert!(!empty.admits(5));
    }
}
