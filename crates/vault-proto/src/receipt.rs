//! Receipts: the fleet's signature on a change an owner asked for (deleting the record,
//! changing the password), so that a device can tell the user "the vault did it" and a
//! relay or a man in the middle cannot answer "done" for a request it dropped
//! (docs/VAULT.md §Receipts).
//!
//! The receipt key is an Ed25519 key derived from the fleet's OPAQUE server setup (the
//! fleet secret `vault init` creates), so every replica signs with the same key and no
//! new secret is stored; devices take its public half from the signed fleet bundle
//! (`bundle.rs`, version 2). A receipt names the request it answers (a hash of the
//! owner's signature on it), so it answers no other request, of this account or any.
//! Signed message: `"backlock vault receipt v1" ‖ 0x00 ‖ postcard(ReceiptBody)`.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;
use zeroize::Zeroizing;

const DOMAIN: &[u8] = b"backlock vault receipt v1";
const KEY_INFO: &[u8] = b"backlock vault receipt key v1";
const REQUEST_DOMAIN: &[u8] = b"backlock vault receipt request v1";

/// The id of the request a receipt answers: SHA-256 over a domain and the owner proof's
/// signature (which signs the account, the change, the generation, the vault and a time
/// window).
pub fn request_id(owner_signature: &[u8; 64]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = Sha256::new();
    h.update(REQUEST_DOMAIN);
    h.update(owner_signature);
    h.finalize().into()
}

/// What was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptOp {
    /// The record was erased at the owner's request.
    Deleted,
    /// The record was replaced: a new password protects the key.
    PasswordChanged,
    /// Asked to delete, the vault found no record (deleted or erased before).
    Absent,
}

/// What a receipt says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptBody {
    /// The account.
    pub account: String,
    /// What was done.
    pub op: ReceiptOp,
    /// The generation erased, or the generation of the new record; for `Absent`, the
    /// last generation the account had (0: never registered).
    pub generation: u64,
    /// When the vault committed it, seconds since the Unix epoch.
    pub at_unix: u64,
    /// The request it answers ([`request_id`]).
    pub request: [u8; 32],
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
    /// It verifies, but answers another request (of this account or another).
    #[error("it answers another request ({what})")]
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
    /// Checks that the fleet whose receipt key is `key` signed this receipt in answer to
    /// `request` ([`request_id`]) of `account`; returns what it says was done.
    pub fn verify(
        &self,
        key: &[u8; 32],
        account: &str,
        request: &[u8; 32],
    ) -> Result<ReceiptOp, ReceiptError> {
        let key = VerifyingKey::from_bytes(key).map_err(|_| ReceiptError::BadSignature)?;
        key.verify_strict(
            &message(&self.body),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| ReceiptError::BadSignature)?;
        if self.body.account != account || self.body.request != *request {
            return Err(ReceiptError::OtherRequest {
                what: format!(
                    "{:?} of account {:?}, generation {}",
                    self.body.op, self.body.account, self.body.generation
                ),
            });
        }
        Ok(self.body.op)
    }
}

/// Whether `key` is an Ed25519 public key (a receipt key from a bundle).
pub fn valid_key(key: &[u8; 32]) -> bool {
    VerifyingKey::from_bytes(key).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: [u8; 32] = [5; 32];

    fn body(op: ReceiptOp) -> ReceiptBody {
        ReceiptBody {
            account: "+15550100".into(),
            op,
            generation: 3,
            at_unix: 1_800_000_000,
            request: REQUEST,
        }
    }

    #[test]
    fn a_receipt_verifies_only_under_the_fleets_key_for_its_own_request() {
        let fleet = ReceiptSigner::derive(b"fleet secret");
        let key = fleet.public_key();
        let receipt = fleet.sign(body(ReceiptOp::Deleted));
        assert_eq!(
            receipt.verify(&key, "+15550100", &REQUEST),
            Ok(ReceiptOp::Deleted)
        );
        // Another fleet's key (a man in the middle signing with its own).
        let other = ReceiptSigner::derive(b"another secret").sign(body(ReceiptOp::Deleted));
        assert_eq!(
            other.verify(&key, "+15550100", &REQUEST),
            Err(ReceiptError::BadSignature)
        );
        // The fleet's receipt replayed for another account, or for a later request of
        // the same account.
        assert!(matches!(
            receipt.verify(&key, "+15550199", &REQUEST),
            Err(ReceiptError::OtherRequest { .. })
        ));
        assert!(matches!(
            receipt.verify(&key, "+15550100", &request_id(&[9; 64])),
            Err(ReceiptError::OtherRequest { .. })
        ));
        // Any changed field breaks the signature.
        for change in [
            |b: &mut ReceiptBody| b.generation = 4,
            |b: &mut ReceiptBody| b.op = ReceiptOp::Absent,
            |b: &mut ReceiptBody| b.at_unix += 1,
        ] {
            let mut changed = receipt.clone();
            change(&mut changed.body);
            assert_eq!(
                changed.verify(&key, "+15550100", &REQUEST),
                Err(ReceiptError::BadSignature)
            );
        }
        assert_ne!(request_id(&[1; 64]), request_id(&[2; 64]));
        assert!(valid_key(&key));
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

    /// The receipt key of a fixed fleet secret: the derivation reads opaque-ke's
    /// serialization of the server setup, so a change there (which would change every
    /// fleet's receipt key under its devices' bundles) fails here first.
    #[test]
    fn a_fixed_fleet_secret_keeps_its_receipt_key() {
        let keys =
            crate::server::ServerKeys::from_bytes(&hex::decode(FLEET_SECRET).unwrap()).unwrap();
        assert_eq!(&*keys.to_bytes(), &hex::decode(FLEET_SECRET).unwrap()[..]);
        let key = ReceiptSigner::derive(&keys.to_bytes()).public_key();
        assert_eq!(hex::encode(key), FLEET_RECEIPT_KEY);
    }

    const FLEET_SECRET: &str = "795ffa393a98115c3adaaadf34e5ed35ef86d218aa35cea6a5d4a1e2ec48d0c1\
        505c46fe1018fe369d52ff40b056b751924d272a158d46aa5b4e07029e6cfa85\
        50ba1ff2a4a6a0663e2b142515b8015821eb5820f9d8a171f2f023a65327f403\
        70438e82e080970684d255f576964849facaf2a2ad3234ea07a217e26126d04f";
    const FLEET_RECEIPT_KEY: &str =
        "7861c35844ac1f060f2d95bb8dc63a80fe3f5e39883642eb25c3e94c6aaa48c2";

    const KNOWN_PUBLIC: &str = "b5436828e6ba3175803ccee7206fba77d317a38b3049df79fceb3b890dbecbde";
}
