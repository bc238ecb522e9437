//! The wrapped backup key and its release under the session key (docs/VAULT.md §Keys).
//!
//! - `wrap_key = HKDF-SHA256(salt = "backlock/v1/vault", IKM = export_key,
//!   info = "backlock/v1/vault/wrap-key")`;
//!   `wrapped = 0x01 ‖ nonce(12, random) ‖ AES-256-GCM(wrap_key, nonce, K,
//!   AAD = "backlock/v1/vault/wrapped" ‖ account)`.
//! - `release_key = HKDF-SHA256(salt = "backlock/v1/vault", IKM = session_key,
//!   info = "backlock/v1/vault/release")`; `released = AES-256-GCM(release_key,
//!   nonce = 0¹², wrapped, AAD = "backlock/v1/vault/released" ‖ session ‖ account)`.
//!   Each session key encrypts exactly one message, so the fixed nonce is never reused.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use backlock_core::key::{BackupKey, KEY_LEN};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

const SALT: &[u8] = b"backlock/v1/vault";
const WRAP_INFO: &[u8] = b"backlock/v1/vault/wrap-key";
const WRAP_AAD: &[u8] = b"backlock/v1/vault/wrapped";
const RELEASE_INFO: &[u8] = b"backlock/v1/vault/release";
const RELEASE_AAD: &[u8] = b"backlock/v1/vault/released";
const WRAP_VERSION: u8 = 1;
/// Length of a wrapped key: version, nonce, key, tag.
pub const WRAPPED_LEN: usize = 1 + NONCE_LEN + KEY_LEN + 16;

/// The wrapped key did not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the vault's answer does not decrypt")]
pub struct UnwrapError;

fn derive(ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(SALT), ikm)
        .expand(info, &mut *key)
        .expect("32 bytes is a valid HKDF length");
    key
}

fn aead_key(ikm: &[u8], info: &[u8]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &*derive(ikm, info)).expect("32-byte AES key"))
}

/// The wrap key an export key yields (exposed so tests can show it never travels).
pub fn wrap_key(export_key: &[u8]) -> Zeroizing<[u8; 32]> {
    derive(export_key, WRAP_INFO)
}

fn aad(label: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut a = label.to_vec();
    for p in parts {
        a.extend_from_slice(p);
    }
    a
}

/// Wraps `key` under the OPAQUE export key.
pub fn wrap(export_key: &[u8], account: &str, key: &BackupKey) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(WRAPPED_LEN);
    out.push(WRAP_VERSION);
    out.extend_from_slice(&nonce);
    let mut body = key.expose_secret().to_vec();
    aead_key(export_key, WRAP_INFO)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(WRAP_AAD, &[account.as_bytes()])),
            &mut body,
        )
        .expect("AES-GCM seals any short message");
    out.extend_from_slice(&body);
    body.fill(0);
    out
}

/// Opens a wrapped key with the export key of a successful login.
pub fn unwrap(export_key: &[u8], account: &str, wrapped: &[u8]) -> Result<BackupKey, UnwrapError> {
    if wrapped.len() != WRAPPED_LEN || wrapped[0] != WRAP_VERSION {
        return Err(UnwrapError);
    }
    let nonce: [u8; NONCE_LEN] = wrapped[1..1 + NONCE_LEN]
        .try_into()
        .expect("length checked");
    let mut body = Zeroizing::new(wrapped[1 + NONCE_LEN..].to_vec());
    let plain = aead_key(export_key, WRAP_INFO)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(WRAP_AAD, &[account.as_bytes()])),
            &mut body,
        )
        .map_err(|_| UnwrapError)?;
    let bytes: [u8; KEY_LEN] = (&*plain).try_into().map_err(|_| UnwrapError)?;
    Ok(BackupKey::from_bytes(bytes))
}

/// Encrypts `wrapped` under a session key for its release to the device.
pub fn release(session_key: &[u8], session: &[u8; 16], account: &str, wrapped: &[u8]) -> Vec<u8> {
    let mut body = wrapped.to_vec();
    aead_key(session_key, RELEASE_INFO)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key([0; NONCE_LEN]),
            Aad::from(aad(RELEASE_AAD, &[session, account.as_bytes()])),
            &mut body,
        )
        .expect("AES-GCM seals any short message");
    body
}

/// Inverse of [`release`].
pub fn open_release(
    session_key: &[u8],
    session: &[u8; 16],
    account: &str,
    released: &[u8],
) -> Result<Vec<u8>, UnwrapError> {
    let mut body = released.to_vec();
    let plain = aead_key(session_key, RELEASE_INFO)
        .open_in_place(
            Nonce::assume_unique_for_key([0; NONCE_LEN]),
            Aad::from(aad(RELEASE_AAD, &[session, account.as_bytes()])),
            &mut body,
        )
        .map_err(|_| UnwrapError)?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_binds_export_key_and_account() {
        let key = BackupKey::from_bytes([5; 32]);
        let wrapped = wrap(&[1; 64], "alice", &key);
        assert_eq!(wrapped.len(), WRAPPED_LEN);
        assert_eq!(
            unwrap(&[1; 64], "alice", &wrapped).unwrap().expose_secret(),
            &[5; 32]
        );
        assert_eq!(unwrap(&[2; 64], "alice", &wrapped).err(), Some(UnwrapError));
        assert_eq!(unwrap(&[1; 64], "bob", &wrapped).err(), Some(UnwrapError));
        let released = release(&[7; 64], &[1; 16], "alice", &wrapped);
        assert_eq!(
            open_release(&[7; 64], &[1; 16], "alice", &released).unwrap(),
            wrapped
        );
        assert!(open_release(&[7; 64], &[2; 16], "alice", &released).is_err());
        assert!(open_release(&[8; 64], &[1; 16], "alice", &released).is_err());
    }
}
