//! Receipts: the fleet's signature on a change an owner asked for (deleting the record,
//! changing the password), so that a device can tell the user "the vault did it" and a
//! relay or a man in the middle cannot answer "done" for a request it dropped
//! (docs/VAULT.md §Receipts).
//!
//! The receipt key is an Ed25519 key derived from the fleet secret, so every replica
//! signs with the same key and no new secret is stored; devices take its public half
//! from the signed fleet bundle (`bundle.rs`, version 2).
//! Signed message: `"backlock vault receipt v1" ‖ 0x00 ‖ postcard(ReceiptBody)`.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;
use zeroize::Zeroizing;

const DOMAIN: &[u8] = b"backlock vault receipt v1";
const KEY_INFO: &[u8] = b"backlock vault receipt key v1";

/// What was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptOp {
    /// The record was erased at the owner's request.
    Deleted,
    /// The record was replaced: a new password protects the key.
    PasswordChanged,
}

/// What a receipt says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptBody {
    /// The account.
    pub account: String,
    /// What was done.
    pub op: ReceiptOp,
    /// The generation erased, or the generation of the new record.
    pub generation: u64,
    /// When the vault committed it, seconds since the Unix epoch.
    pub at_unix: u64,
}

/// A signed receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// What it says.
    pub body: ReceiptBody,
    /// Ed25519 signature by the fleet's receipt key.
    #[serde(with = "crate::wire::serde_sig")]
    pub signature: [u8; 64],
}

/// Why a receipt is not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiptError {
    /// The signature does not verify under the fleet's receipt key.
    #[error("its signature is not the fleet's: the answer did not come from the vault")]
    BadSignature,
    /// It verifies, but for another account or change.
    #[error("it is for {what}, not for this request")]
    OtherRequest {
        /// What it names.
        what: String,
    },
}

fn message(body: &ReceiptBody) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.push(0);
    m.extend(postcard::to_allocvec(body).expect("postcard encodes into a Vec"));
    m
}

/// The fleet's receipt key (every replica derives the same one).
pub struct ReceiptSigner(SigningKey);

impl fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ReceiptSigner")
            .field(&hex::encode(self.public_key()))
            .finish()
    }
}

impl ReceiptSigner {
    /// Derives the key from the fleet secret's bytes (HKDF-SHA256).
    pub fn derive(fleet_secret: &[u8]) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(None, fleet_secret)
            .expand(KEY_INFO, &mut *seed)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        ReceiptSigner(SigningKey::from_bytes(&seed))
    }

    /// The public half devices check receipts with.
    pub fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// Signs `body`.
    pub fn sign(&self, body: ReceiptBody) -> Receipt {
        let signature = self.0.sign(&message(&body)).to_bytes();
        Receipt { body, signature }
    }
}

impl Receipt {
    /// Checks that the fleet whose receipt key is `key` signed this receipt, for `op` on
    /// `account`.
    pub fn verify(&self, key: &[u8; 32], account: &str, op: ReceiptOp) -> Result<(), ReceiptError> {
        let key = VerifyingKey::from_bytes(key).map_err(|_| ReceiptError::BadSignature)?;
        key.verify_strict(
            &message(&self.body),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| ReceiptError::BadSignature)?;
        if self.body.account != account || self.body.op != op {
            return Err(ReceiptError::OtherRequest {
                what: format!("{:?} of account {:?}", self.body.op, self.body.account),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(op: ReceiptOp) -> ReceiptBody {
        ReceiptBody {
            account: "+15550100".into(),
            op,
            generation: 3,
            at_unix: 1_800_000_000,
        }
    }

    #[test]
    fn a_receipt_verifies_only_under_the_fleets_key_for_its_own_request() {
        let fleet = ReceiptSigner::derive(b"fleet secret");
        let key = fleet.public_key();
        let receipt = fleet.sign(body(ReceiptOp::Deleted));
        assert_eq!(
            receipt.verify(&key, "+15550100", ReceiptOp::Deleted),
            Ok(())
        );
        // Another fleet's key (a man in the middle signing with its own).
        let other = ReceiptSigner::derive(b"another secret").sign(body(ReceiptOp::Deleted));
        assert_eq!(
            other.verify(&key, "+15550100", ReceiptOp::Deleted),
            Err(ReceiptError::BadSignature)
        );
        // A receipt of the fleet for another request, replayed.
        assert!(matches!(
            receipt.verify(&key, "+15550199", ReceiptOp::Deleted),
            Err(ReceiptError::OtherRequest { .. })
        ));
        assert!(matches!(
            receipt.verify(&key, "+15550100", ReceiptOp::PasswordChanged),
            Err(ReceiptError::OtherRequest { .. })
        ));
        // Any changed field breaks the signature.
        let mut changed = receipt.clone();
        changed.body.generation = 4;
        assert_eq!(
            changed.verify(&key, "+15550100", ReceiptOp::Deleted),
            Err(ReceiptError::BadSignature)
        );
    }

    #[test]
    fn the_key_is_the_fleet_secrets_and_its_known_answer_holds() {
        // Every replica derives the same key from the same secret; the known answer
        // pins the derivation (label and HKDF) against accidental change.
        let a = ReceiptSigner::derive(&[7u8; 64]);
        let b = ReceiptSigner::derive(&[7u8; 64]);
        assert_eq!(a.public_key(), b.public_key());
        assert_ne!(
            a.public_key(),
            ReceiptSigner::derive(&[8u8; 64]).public_key()
        );
        assert_eq!(hex::encode(a.public_key()), KNOWN_PUBLIC);
        assert!(!format!("{a:?}").contains(&hex::encode([7u8; 8])));
    }

    const KNOWN_PUBLIC: &str = "b5436828e6ba3175803ccee7206fba77d317a38b3049df79fceb3b890dbecbde";
}
