//! The device's side of OPAQUE, as consuming step types (docs/VAULT.md §Flows).
//!
//! Each step takes `self`, so a login state cannot answer two KE2s.

use crate::owner::OwnerKey;
use crate::password::Password;
use crate::suite::{identifiers, whole, Stretch, Suite, CONTEXT};
use crate::wire::{
    RecoverFinish, RecoverFinishReply, RecoverStartReply, RegisterFinish, RegisterStartReply,
};
use crate::wrap;
use backlock_core::key::BackupKey;
use opaque_ke::errors::ProtocolError;
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, RegistrationResponse,
};
use rand::rngs::OsRng;
use zeroize::Zeroizing;

/// What can go wrong on the device's side of the protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// KE2 did not open with this password.
    #[error("wrong password")]
    WrongPassword,
    /// The vault's OPAQUE public key is not the pinned one.
    #[error("the vault presented public key {presented}, not the pinned {pinned}; refusing to talk to it")]
    WrongServer {
        /// Hex of the pinned key.
        pinned: String,
        /// Hex of the key the vault used.
        presented: String,
    },
    /// A vault reply does not decode or decrypt.
    #[error("the vault's reply is malformed: {0}")]
    BadReply(&'static str),
}

fn check_pin(pinned: &[u8; 32], presented: &[u8]) -> Result<(), ClientError> {
    use subtle::ConstantTimeEq;
    if presented.len() == 32 && bool::from(pinned.ct_eq(presented)) {
        Ok(())
    } else {
        Err(ClientError::WrongServer {
            pinned: hex::encode(pinned),
            presented: hex::encode(presented),
        })
    }
}

/// A registration after step 1.
pub struct RegistrationStarted(ClientRegistration<Suite>);

/// Step 1 of registering `password`: the OPAQUE `RegistrationRequest`.
pub fn start_registration(
    password: &Password,
) -> Result<(RegistrationStarted, Vec<u8>), ClientError> {
    let start = ClientRegistration::<Suite>::start(&mut OsRng, password.expose_secret())
        .map_err(|_| ClientError::BadReply("password cannot be blinded"))?;
    Ok((
        RegistrationStarted(start.state),
        start.message.serialize().to_vec(),
    ))
}

impl RegistrationStarted {
    /// Step 2: the record for the vault, with `key` wrapped under the export key and the
    /// owner public key derived from it.
    /// `replace` is left `None`; set it with [`crate::owner`] to change a record.
    pub fn finish(
        self,
        password: &Password,
        account: &str,
        reply: &RegisterStartReply,
        pinned: &[u8; 32],
        key: &BackupKey,
        ksf: &Stretch,
    ) -> Result<RegisterFinish, ClientError> {
        let parsed = RegistrationResponse::<Suite>::deserialize(&reply.response);
        let response = whole(&reply.response, parsed, |m| m.serialize().len())
            .ok_or(ClientError::BadReply("registration response"))?;
        let finish = self
            .0
            .finish(
                &mut OsRng,
                password.expose_secret(),
                response,
                ClientRegistrationFinishParameters::new(identifiers(account), Some(ksf)),
            )
            .map_err(|_| ClientError::BadReply("registration response"))?;
        check_pin(pinned, &finish.server_s_pk.serialize())?;
        let export_key = Zeroizing::new(finish.export_key.to_vec());
        Ok(RegisterFinish {
            account: account.to_owned(),
            record_id: reply.record_id,
            upload: finish.message.serialize().to_vec(),
            wrapped: wrap::wrap(&export_key, account, key),
            owner_public_key: OwnerKey::derive(key).public_key(),
            replace: None,
        })
    }
}

/// A recovery after KE1.
pub struct RecoveryStarted(ClientLogin<Suite>);

/// KE1 of a recovery with `password`.
pub fn start_recovery(password: &Password) -> Result<(RecoveryStarted, Vec<u8>), ClientError> {
    let start = ClientLogin::<Suite>::start(&mut OsRng, password.expose_secret())
        .map_err(|_| ClientError::BadReply("password cannot be blinded"))?;
    Ok((
        RecoveryStarted(start.state),
        start.message.serialize().to_vec(),
    ))
}

/// A login that succeeded on the device; waiting for the vault to release the key.
pub struct Recovered {
    session: [u8; 16],
    session_key: Zeroizing<Vec<u8>>,
    export_key: Zeroizing<Vec<u8>>,
}

impl RecoveryStarted {
    /// Opens KE2 with the password; a wrong password ends here, before KE3 exists.
    pub fn finish(
        self,
        password: &Password,
        account: &str,
        reply: &RecoverStartReply,
        pinned: &[u8; 32],
        ksf: &Stretch,
    ) -> Result<(RecoverFinish, Recovered), ClientError> {
        let parsed = CredentialResponse::<Suite>::deserialize(&reply.ke2);
        let ke2 = whole(&reply.ke2, parsed, |m| m.serialize().len())
            .ok_or(ClientError::BadReply("KE2"))?;
        let result = self.0.finish(
            &mut OsRng,
            password.expose_secret(),
            ke2,
            ClientLoginFinishParameters::new(Some(CONTEXT), identifiers(account), Some(ksf)),
        );
        let finish = match result {
            Ok(f) => f,
            Err(ProtocolError::InvalidLoginError) => return Err(ClientError::WrongPassword),
            Err(_) => return Err(ClientError::BadReply("KE2")),
        };
        check_pin(pinned, &finish.server_s_pk.serialize())?;
        Ok((
            RecoverFinish {
                account: account.to_owned(),
                session: reply.session,
                ke3: finish.message.serialize().to_vec(),
            },
            Recovered {
                session: reply.session,
                session_key: Zeroizing::new(finish.session_key.to_vec()),
                export_key: Zeroizing::new(finish.export_key.to_vec()),
            },
        ))
    }
}

impl Recovered {
    /// Decrypts the released key: session key first, then the export key.
    pub fn open(self, account: &str, reply: &RecoverFinishReply) -> Result<BackupKey, ClientError> {
        let wrapped =
            wrap::open_release(&self.session_key, &self.session, account, &reply.released)
                .map_err(|_| ClientError::BadReply("released key"))?;
        wrap::unwrap(&self.export_key, account, &wrapped)
            .map_err(|_| ClientError::BadReply("wrapped key"))
    }

    /// The export key, to wrap a key again under the same password (switching keys).
    pub fn export_key(&self) -> &[u8] {
        &self.export_key
    }
}
