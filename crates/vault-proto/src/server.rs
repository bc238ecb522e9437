//! The vault's side of OPAQUE (docs/VAULT.md §Flows). Pure functions over bytes: the
//! server crate decides when to count, commit and answer.

use crate::suite::{credential_identifier, identifiers, whole, Suite, CONTEXT};
use opaque_ke::errors::ProtocolError;
use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
    ServerLogin, ServerLoginParameters, ServerRegistration, ServerSetup,
};
use rand::rngs::OsRng;
use std::fmt;
use zeroize::Zeroizing;

/// The fleet secret: OPRF seed and the server's static key pair.
pub struct ServerKeys(ServerSetup<Suite>);

impl fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerKeys")
            .field("public_key", &hex::encode(self.public_key()))
            .finish_non_exhaustive()
    }
}

/// A request that is not a valid OPAQUE message, or a stored record that is damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The client's message does not decode.
    #[error("malformed OPAQUE message")]
    Malformed,
    /// KE3 does not verify: the client did not know the password.
    #[error("KE3 does not verify")]
    WrongPassword,
    /// The stored secret or record does not decode.
    #[error("stored vault state is damaged")]
    Damaged,
}

impl ServerKeys {
    /// A fresh fleet secret.
    pub fn generate() -> Self {
        ServerKeys(ServerSetup::new(&mut OsRng))
    }

    /// From its stored bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StepError> {
        ServerSetup::deserialize(bytes)
            .map(ServerKeys)
            .map_err(|_| StepError::Damaged)
    }

    /// Its bytes, for sealed storage only.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.serialize().to_vec())
    }

    /// The public key devices pin.
    pub fn public_key(&self) -> [u8; 32] {
        self.0
            .keypair()
            .public()
            .serialize()
            .as_slice()
            .try_into()
            .expect("ristretto255 public keys are 32 bytes")
    }

    /// Registration step 1: evaluate the OPRF under the key of a new record.
    pub fn evaluate_registration(
        &self,
        account: &str,
        record_id: &[u8; 16],
        request: &[u8],
    ) -> Result<Vec<u8>, StepError> {
        let parsed = RegistrationRequest::<Suite>::deserialize(request);
        let request =
            whole(request, parsed, |m| m.serialize().len()).ok_or(StepError::Malformed)?;
        let start = ServerRegistration::<Suite>::start(
            &self.0,
            request,
            &credential_identifier(account, record_id),
        )
        .map_err(|_| StepError::Malformed)?;
        Ok(start.message.serialize().to_vec())
    }

    /// Checks that `ke1` is a well-formed KE1 (before a guess is counted for it).
    pub fn check_ke1(ke1: &[u8]) -> Result<(), StepError> {
        let parsed = CredentialRequest::<Suite>::deserialize(ke1);
        whole(ke1, parsed, |m| m.serialize().len())
            .map(drop)
            .ok_or(StepError::Malformed)
    }

    /// The seed of the vault's randomness in the KE2 of the attempt opened at `place`
    /// (a unique position in the replicated log) with id `attempt`: every replica
    /// holding the fleet secret computes the same KE2 for it, so a retry at another
    /// replica gets the same answer and any replica can verify the KE3, and no other
    /// attempt ever gets the same randomness.
    pub fn login_seed(
        &self,
        account: &str,
        generation: u64,
        place: (u64, u32),
        attempt: &[u8; 16],
    ) -> Zeroizing<[u8; 32]> {
        use hmac::{Hmac, Mac};
        let secret = self.to_bytes();
        let mut key = Hmac::<sha2::Sha256>::new_from_slice(&secret).expect("any key length");
        key.update(b"backlock vault v1 login randomness");
        let key = Zeroizing::new(key.finalize().into_bytes());
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
        mac.update(&(account.len() as u64).to_be_bytes());
        mac.update(account.as_bytes());
        mac.update(&generation.to_be_bytes());
        mac.update(&place.0.to_be_bytes());
        mac.update(&place.1.to_be_bytes());
        mac.update(attempt);
        Zeroizing::new(mac.finalize().into_bytes().into())
    }

    /// [`Self::start_login`] with the vault's randomness drawn from `seed`
    /// ([`Self::login_seed`]): the same inputs give the same KE2 and login state.
    pub fn start_login_seeded(
        &self,
        password_file: &[u8],
        account: &str,
        record_id: &[u8; 16],
        ke1: &[u8],
        seed: &[u8; 32],
    ) -> Result<(PendingLogin, Vec<u8>), StepError> {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha20Rng::from_seed(*seed);
        self.start_login_with(&mut rng, password_file, account, record_id, ke1)
    }

    /// KE1 → KE2 against a stored password file. The caller must count the attempt
    /// durably before sending KE2.
    pub fn start_login(
        &self,
        password_file: &[u8],
        account: &str,
        record_id: &[u8; 16],
        ke1: &[u8],
    ) -> Result<(PendingLogin, Vec<u8>), StepError> {
        self.start_login_with(&mut OsRng, password_file, account, record_id, ke1)
    }

    fn start_login_with<R: rand::RngCore + rand::CryptoRng>(
        &self,
        rng: &mut R,
        password_file: &[u8],
        account: &str,
        record_id: &[u8; 16],
        ke1: &[u8],
    ) -> Result<(PendingLogin, Vec<u8>), StepError> {
        let parsed = CredentialRequest::<Suite>::deserialize(ke1);
        let ke1 = whole(ke1, parsed, |m| m.serialize().len()).ok_or(StepError::Malformed)?;
        let parsed = ServerRegistration::<Suite>::deserialize(password_file);
        let file =
            whole(password_file, parsed, |m| m.serialize().len()).ok_or(StepError::Damaged)?;
        let start = ServerLogin::start(
            rng,
            &self.0,
            Some(file),
            ke1,
            &credential_identifier(account, record_id),
            ServerLoginParameters {
                context: Some(CONTEXT),
                identifiers: identifiers(account),
            },
        )
        .map_err(|_| StepError::Malformed)?;
        Ok((
            PendingLogin(start.state),
            start.message.serialize().to_vec(),
        ))
    }
}

/// Length of a password file (`ServerRegistration` of this suite: the device's public
/// key, masking key and envelope).
pub const PASSWORD_FILE_LEN: usize = 32 + 64 + 32 + 64;

/// Checks a `RegistrationUpload` and returns the password file to store.
pub fn password_file(upload: &[u8]) -> Result<Vec<u8>, StepError> {
    let parsed = RegistrationUpload::<Suite>::deserialize(upload);
    let upload = whole(upload, parsed, |m| m.serialize().len()).ok_or(StepError::Malformed)?;
    Ok(ServerRegistration::finish(upload).serialize().to_vec())
}

/// The vault's half of a login between KE2 and KE3.
#[derive(Clone)]
pub struct PendingLogin(ServerLogin<Suite>);

impl fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PendingLogin(REDACTED)")
    }
}

impl PendingLogin {
    /// Verifies KE3; on success returns the session key.
    pub fn finish(self, account: &str, ke3: &[u8]) -> Result<Zeroizing<Vec<u8>>, StepError> {
        let parsed = CredentialFinalization::<Suite>::deserialize(ke3);
        let ke3 = whole(ke3, parsed, |m| m.serialize().len()).ok_or(StepError::Malformed)?;
        match self.0.finish(
            ke3,
            ServerLoginParameters {
                context: Some(CONTEXT),
                identifiers: identifiers(account),
            },
        ) {
            Ok(done) => Ok(Zeroizing::new(done.session_key.to_vec())),
            Err(ProtocolError::InvalidLoginError) => Err(StepError::WrongPassword),
            Err(_) => Err(StepError::Malformed),
        }
    }
}
