//! The one OPAQUE configuration backlock speaks (docs/VAULT.md §Cipher suite).
//!
//! ristretto255 for the OPRF and the key exchange, 3DH with SHA-512, and Argon2id as the
//! key-stretching function. The suite is fixed: the wire carries no negotiation, and a
//! change is a new protocol version.

use argon2::{Algorithm, Argon2, Params, Version};
use opaque_ke::errors::InternalError;
use opaque_ke::generic_array::{ArrayLength, GenericArray};
use opaque_ke::ksf::Ksf;
use opaque_ke::{CipherSuite, Identifiers, Ristretto255, TripleDh};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// backlock's OPAQUE cipher suite.
pub struct Suite;

impl CipherSuite for Suite {
    type OprfCs = Ristretto255;
    type KeyExchange = TripleDh<Ristretto255, sha2::Sha512>;
    type Ksf = Stretch;
}

/// Argon2id memory cost in KiB (docs/VAULT.md §Key stretching: 64 MiB).
pub const ARGON2_M_KIB: u32 = 64 * 1024;
/// Argon2id passes.
pub const ARGON2_T: u32 = 3;
/// Argon2id lanes: one, because a phone gives an app one core it can count on.
pub const ARGON2_P: u32 = 1;

/// The server's identity inside OPAQUE; binds every envelope to backlock's vault.
pub const SERVER_IDENTITY: &[u8] = b"backlock-vault";
/// OPAQUE context string: a transcript from another protocol or version never verifies.
pub const CONTEXT: &[u8] = b"backlock vault v1";

/// The OPAQUE identifiers for `account`: the client identity is the account itself.
pub fn identifiers(account: &str) -> Identifiers<'_> {
    Identifiers {
        client: Some(account.as_bytes()),
        server: Some(SERVER_IDENTITY),
    }
}

/// The credential identifier the OPRF key is derived from: account and record id.
///
/// A new record id at every registration gives every password its own OPRF key, so
/// evaluating the OPRF for a new registration never helps to test guesses against the
/// current one (docs/VAULT.md §Registration).
pub fn credential_identifier(account: &str, record_id: &[u8; 16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 2 + account.len() + 16);
    out.extend_from_slice(b"backlock/v1/cred");
    out.extend_from_slice(&(account.len() as u16).to_be_bytes());
    out.extend_from_slice(account.as_bytes());
    out.extend_from_slice(record_id);
    out
}

type Memo = Arc<Mutex<HashMap<Vec<u8>, Zeroizing<Vec<u8>>>>>;

/// Argon2id with backlock's parameters, as OPAQUE's key-stretching function.
///
/// `Stretch::default()` is what the device runs. [`Stretch::memoized`] remembers results
/// by input so that a load generator measures the vault rather than Argon2; the input
/// is the OPRF output, so a memo is as sensitive as the password and never leaves the
/// process.
#[derive(Clone)]
pub struct Stretch {
    argon2: Argon2<'static>,
    memo: Option<Memo>,
}

impl Default for Stretch {
    fn default() -> Self {
        let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None)
            .expect("constant Argon2 parameters are valid");
        Stretch {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            memo: None,
        }
    }
}

impl Stretch {
    /// The default parameters with a result cache shared by clones (benchmarks only).
    pub fn memoized() -> Self {
        Stretch {
            memo: Some(Arc::default()),
            ..Stretch::default()
        }
    }
}

impl Ksf for Stretch {
    fn hash<L: ArrayLength<u8>>(
        &self,
        input: GenericArray<u8, L>,
    ) -> Result<GenericArray<u8, L>, InternalError> {
        if let Some(memo) = &self.memo {
            let cached = memo
                .lock()
                .map_err(|_| InternalError::KsfError)?
                .get(input.as_slice())
                .cloned();
            if let Some(hit) = cached {
                return Ok(GenericArray::clone_from_slice(&hit));
            }
        }
        let out = self.argon2.hash(input.clone())?;
        if let Some(memo) = &self.memo {
            memo.lock()
                .map_err(|_| InternalError::KsfError)?
                .insert(input.to_vec(), Zeroizing::new(out.to_vec()));
        }
        Ok(out)
    }
}

/// `parsed` if its encoding is all of `input`. opaque-ke reads the fields a message
/// needs and ignores any bytes after them, so without this a longer input (another
/// message, or bytes appended) would be accepted as its prefix.
pub(crate) fn whole<T, E>(
    input: &[u8],
    parsed: Result<T, E>,
    encoded_len: impl FnOnce(&T) -> usize,
) -> Option<T> {
    parsed.ok().filter(|m| encoded_len(m) == input.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_identifiers_differ_by_account_and_record() {
        let a = credential_identifier("alice", &[1; 16]);
        assert_ne!(a, credential_identifier("alice", &[2; 16]));
        assert_ne!(a, credential_identifier("alicf", &[1; 16]));
        // Length prefix: ("ab", id) and ("a", "b"‖id…) cannot collide.
        assert_ne!(
            credential_identifier("ab", &[0; 16]),
            credential_identifier("a", &[b'b'; 16])
        );
    }
}
