//! A [`Sealer`] whose key lives in a PKCS#11 token (an HSM, or SoftHSM2 in tests).
//!
//! The node key is an AES-256 secret key object generated inside the token on first use,
//! with `CKA_SENSITIVE` set and `CKA_EXTRACTABLE` clear: the token never hands it out,
//! and every seal and open is one `C_Encrypt`/`C_Decrypt` with `CKM_AES_GCM`. The sealed
//! layout is the key-file sealer's (`0x01 ‖ nonce (12) ‖ ciphertext ‖ tag (16)`, the
//! caller's context as associated data), so only where the key lives differs. The nonce
//! comes from the vault's own generator, not the token's.

use crate::seal::{split_sealed, SealError, Sealer};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use zeroize::Zeroizing;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_BITS: u64 = 128;
const OVERHEAD: usize = 1 + NONCE_LEN + 16;

/// Where the node key lives in a PKCS#11 token.
#[derive(Clone)]
pub struct TokenConfig {
    /// The PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// The user PIN (from the environment or a file, never the command line).
    pub pin: Zeroizing<String>,
    /// The label of the node key object in the token.
    pub key_label: String,
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

/// Seals with a non-extractable AES-256 key inside a PKCS#11 token.
pub struct Pkcs11Sealer {
    /// One logged-in session; PKCS#11 sessions must not be used from two threads at once.
    session: Mutex<Session>,
    key: ObjectHandle,
    describe: String,
    // Dropped last: the session needs the loaded module.
    _module: Pkcs11,
}

impl fmt::Debug for Pkcs11Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe)
    }
}

impl Pkcs11Sealer {
    /// Loads the module, logs in to the token and finds the node key, generating it in
    /// the token if the token has none under `key_label`.
    pub fn open_or_create(config: &TokenConfig) -> Result<Self, SealError> {
        let fail = |what: &str, e: &dyn fmt::Display| {
            SealError::Token(format!(
                "{what} (module {}, token \"{}\"): {e}",
                config.module.display(),
                config.token_label
            ))
        };
        let module = Pkcs11::new(&config.module).map_err(|e| fail("cannot load the module", &e))?;
        match module.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            // Another sealer in this process initialised the same module: share it.
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(fail("cannot initialise the module", &e)),
        }
        let slot = module
            .get_slots_with_token()
            .map_err(|e| fail("cannot list the slots", &e))?
            .into_iter()
            .find(|slot| {
                module
                    .get_token_info(*slot)
                    .is_ok_and(|info| info.label().trim_end() == config.token_label)
            })
            .ok_or_else(|| fail("no such token", &"check the label and the module's config"))?;
        let session = module
            .open_rw_session(slot)
            .map_err(|e| fail("cannot open a session", &e))?;
        let pin = AuthPin::from(config.pin.as_str().to_owned());
        session
            .login(UserType::User, Some(&pin))
            .map_err(|e| fail("cannot log in (is the PIN right?)", &e))?;
        let key = find_or_generate_key(&session, &config.key_label)
            .map_err(|e| fail("cannot find or generate the node key", &e))?;
        Ok(Self {
            session: Mutex::new(session),
            key,
            describe: format!(
                "PKCS#11 key \"{}\" in token \"{}\" ({})",
                config.key_label,
                config.token_label,
                config.module.display()
            ),
            _module: module,
        })
    }

    /// Whether the token reports the key as sensitive and never extractable.
    pub fn key_is_locked_in(&self) -> Result<bool, SealError> {
        let session = self.lock();
        let attributes = session
            .get_attributes(
                self.key,
                &[AttributeType::Sensitive, AttributeType::Extractable],
            )
            .map_err(|e| SealError::Token(e.to_string()))?;
        Ok(attributes.iter().all(|a| match a {
            Attribute::Sensitive(sensitive) => *sensitive,
            Attribute::Extractable(extractable) => !*extractable,
            _ => false,
        }) && attributes.len() == 2)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session
            .lock()
            .expect("PKCS#11 session lock poisoned by a panic")
    }
}

fn find_or_generate_key(session: &Session, label: &str) -> cryptoki::error::Result<ObjectHandle> {
    let found = session.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(label.as_bytes().to_vec()),
    ])?;
    if let Some(key) = found.first() {
        return Ok(*key);
    }
    session.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::ValueLen(32.into()),
            Attribute::Label(label.as_bytes().to_vec()),
        ],
    )
}

impl Sealer for Pkcs11Sealer {
    fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut iv = nonce;
        let params = GcmParams::new(&mut iv, context, TAG_BITS.into())
            .map_err(|e| SealError::Token(e.to_string()))?;
        let body = self
            .lock()
            .encrypt(&Mechanism::AesGcm(params), self.key, plaintext)
            .map_err(|_| SealError::Seal {
                len: plaintext.len(),
            })?;
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let (nonce, ciphertext) = split_sealed(sealed)?;
        let mut iv = [0u8; NONCE_LEN];
        iv.copy_from_slice(nonce);
        let params = GcmParams::new(&mut iv, context, TAG_BITS.into())
            .map_err(|e| SealError::Token(e.to_string()))?;
        self.lock()
            .decrypt(&Mechanism::AesGcm(params), self.key, ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| SealError::Unauthentic)
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}
