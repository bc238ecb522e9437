//! The fleet bundle: which replicas make up a vault fleet and which OPAQUE public key
//! they present, signed by the fleet's offline signing key, whose public half the app
//! ships (docs/VAULT.md §Pinning). A device that holds the signer's public key pins a
//! fleet from a bundle fetched from anywhere, and never takes an older version of it.
//!
//! Signed message, version 1 (no receipt key): `"backlock fleet bundle v1" ‖ 0x00 ‖
//! postcard(fleet, version, replicas, public_key, issued_unix)`; version 2 (with the
//! fleet's receipt key, `receipt.rs`): `"backlock fleet bundle v2" ‖ 0x00 ‖ postcard(the
//! same five fields, receipt_key)`.
//! File: JSON `{"bundle": {...}, "signature": "<128 hex>"}`; `receipt_key` is in the
//! bundle only in version 2.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::Zeroizing;

const DOMAIN: &[u8] = b"backlock fleet bundle v1";
const DOMAIN_V2: &[u8] = b"backlock fleet bundle v2";

/// What a bundle says about a fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetBundle {
    /// The fleet's name; devices keep the newest version they saw per fleet.
    pub fleet: String,
    /// Raised by each new bundle of the fleet; a device refuses a lower one.
    pub version: u64,
    /// Every replica's device API URL.
    pub replicas: Vec<String>,
    /// The OPAQUE public key every replica presents (hex).
    pub public_key: String,
    /// When it was signed, seconds since the Unix epoch.
    pub issued_unix: u64,
    /// The fleet's receipt key (hex, as `vault serve` prints it): devices check the
    /// fleet's receipts for deletions and password changes with it. Version 2 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_key: Option<String>,
}

/// A bundle with its signature, as stored in a bundle file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedBundle {
    /// The bundle.
    pub bundle: FleetBundle,
    /// Ed25519 signature by the fleet's signing key (hex).
    pub signature: String,
}

/// Why a bundle is not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    /// Not a bundle file.
    #[error("not a fleet bundle: {0}")]
    Malformed(String),
    /// The signature does not verify under the signer key the device was given.
    #[error("the fleet bundle is not signed by the fleet's signing key: it was changed, or made by someone else")]
    BadSignature,
    /// The bundle's OPAQUE public key or receipt key is not 32 bytes of hex.
    #[error("the fleet bundle's public key or receipt key is not 64 hex digits")]
    BadKey,
}

fn message(b: &FleetBundle) -> Vec<u8> {
    let v1 = (
        &b.fleet,
        b.version,
        &b.replicas,
        &b.public_key,
        b.issued_unix,
    );
    let (domain, fields) = match &b.receipt_key {
        None => (DOMAIN, postcard::to_allocvec(&v1)),
        Some(receipt_key) => (DOMAIN_V2, postcard::to_allocvec(&(v1, receipt_key))),
    };
    let mut m = domain.to_vec();
    m.push(0);
    m.extend(fields.expect("postcard encodes into a Vec"));
    m
}

fn hex32(text: &str) -> Result<[u8; 32], BundleError> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(text, &mut key).map_err(|_| BundleError::BadKey)?;
    Ok(key)
}

/// The fleet's offline signing key.
pub struct BundleSigner(SigningKey);

impl fmt::Debug for BundleSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BundleSigner")
            .field(&hex::encode(self.public_key()))
            .finish()
    }
}

impl BundleSigner {
    /// A new signing key.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut seed = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut *seed);
        BundleSigner(SigningKey::from_bytes(&seed))
    }

    /// From its 32-byte seed, as [`Self::to_hex`] wrote it.
    pub fn from_hex(text: &str) -> Result<Self, BundleError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), &mut *seed)
            .map_err(|_| BundleError::Malformed("the signing key is not 64 hex digits".into()))?;
        Ok(BundleSigner(SigningKey::from_bytes(&seed)))
    }

    /// Its seed in hex, for the key file only.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.to_bytes()))
    }

    /// The public half devices are given.
    pub fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// Signs `bundle`.
    pub fn sign(&self, bundle: FleetBundle) -> SignedBundle {
        let signature = hex::encode(self.0.sign(&message(&bundle)).to_bytes());
        SignedBundle { bundle, signature }
    }
}

impl SignedBundle {
    /// Parses a bundle file.
    pub fn parse(text: &str) -> Result<Self, BundleError> {
        serde_json::from_str(text).map_err(|e| BundleError::Malformed(e.to_string()))
    }

    /// The fleet's receipt key, once [`Self::verify`] took the bundle (version 2).
    pub fn receipt_key(&self) -> Result<Option<[u8; 32]>, BundleError> {
        let key = self.bundle.receipt_key.as_deref().map(hex32).transpose()?;
        match key {
            Some(k) if !crate::receipt::valid_key(&k) => Err(BundleError::BadKey),
            other => Ok(other),
        }
    }

    /// The bundle, if it is signed by `signer` (a public key) and names a valid
    /// OPAQUE key; returns it with that key.
    pub fn verify(&self, signer: &[u8; 32]) -> Result<(&FleetBundle, [u8; 32]), BundleError> {
        let key = VerifyingKey::from_bytes(signer).map_err(|_| BundleError::BadSignature)?;
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut sig).map_err(|_| BundleError::BadSignature)?;
        key.verify_strict(&message(&self.bundle), &Signature::from_bytes(&sig))
            .map_err(|_| BundleError::BadSignature)?;
        let public = hex32(&self.bundle.public_key)?;
        self.receipt_key()?;
        Ok((&self.bundle, public))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> FleetBundle {
        FleetBundle {
            fleet: "eu".into(),
            version: 3,
            replicas: vec!["https://v1.example".into(), "https://v2.example".into()],
            public_key: "ab".repeat(32),
            issued_unix: 1_795_000_000,
            receipt_key: None,
        }
    }

    /// A bundle signed by the release before receipts (version 1) still verifies: this
    /// signature was made by that release's code.
    #[test]
    fn a_version_1_bundle_still_verifies_and_a_version_2_one_covers_the_receipt_key() {
        let signer = BundleSigner::from_hex(&"11".repeat(32)).unwrap();
        let v1 = SignedBundle {
            bundle: bundle(),
            signature: "115b70f8327d04c4217d5dada063f38373c6ff75695025ba93dc04a8d66e2831\
                        a2ed9ed49fb39767d9fcff85b7b7b961c592285e299d62641b4951ca2aacff04"
                .into(),
        };
        assert!(v1.verify(&signer.public_key()).is_ok());
        assert_eq!(v1.receipt_key(), Ok(None));
        assert_eq!(signer.sign(bundle()).signature, v1.signature);
        let text = serde_json::to_string(&v1).unwrap();
        assert!(!text.contains("receipt_key"), "{text}");

        let v2 = signer.sign(FleetBundle {
            receipt_key: Some("cd".repeat(32)),
            ..bundle()
        });
        let back = SignedBundle::parse(&serde_json::to_string(&v2).unwrap()).unwrap();
        assert!(back.verify(&signer.public_key()).is_ok());
        assert_eq!(back.receipt_key(), Ok(Some([0xcd; 32])));
        // The receipt key is signed: changed, or removed to pass for version 1, refused.
        for receipt_key in [Some("ef".repeat(32)), None] {
            let mut forged = back.clone();
            forged.bundle.receipt_key = receipt_key;
            assert_eq!(
                forged.verify(&signer.public_key()).unwrap_err(),
                BundleError::BadSignature
            );
        }
    }

    #[test]
    fn a_bundle_verifies_only_as_signed_and_under_its_signer() {
        let signer = BundleSigner::generate();
        let signed = signer.sign(bundle());
        let text = serde_json::to_string(&signed).unwrap();
        let back = SignedBundle::parse(&text).unwrap();
        let (b, key) = back.verify(&signer.public_key()).unwrap();
        assert_eq!(b, &bundle());
        assert_eq!(key, [0xab; 32]);
        // Any field changed, or another signer: refused.
        for change in [
            |b: &mut FleetBundle| b.version = 4,
            |b: &mut FleetBundle| b.replicas[1] = "https://evil.example".into(),
            |b: &mut FleetBundle| b.public_key = "cd".repeat(32),
            |b: &mut FleetBundle| b.fleet = "us".into(),
        ] {
            let mut forged = back.clone();
            change(&mut forged.bundle);
            assert_eq!(
                forged.verify(&signer.public_key()).unwrap_err(),
                BundleError::BadSignature
            );
        }
        let other = BundleSigner::generate();
        assert_eq!(
            back.verify(&other.public_key()).unwrap_err(),
            BundleError::BadSignature
        );
        let again = BundleSigner::from_hex(&signer.to_hex()).unwrap();
        assert_eq!(again.public_key(), signer.public_key());
        assert!(!format!("{signer:?}").contains(signer.to_hex().as_str()));
    }
}
