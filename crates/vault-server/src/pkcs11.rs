//! A [`Sealer`] whose key lives in a PKCS#11 token (an HSM, or SoftHSM2 in tests).
//!
//! The node key is an AES-256 secret key object generated inside the token on first use,
//! with `CKA_SENSITIVE` set and `CKA_EXTRACTABLE` clear: the token never hands it out,
//! and every seal and open is one `C_Encrypt`/`C_Decrypt` with `CKM_AES_GCM`. The sealed
//! layout is the key-file sealer's (`0x01 ‖ nonce (12) ‖ ciphertext ‖ tag (16)`, the
//! caller's context as associated data), so only where the key lives differs. The nonce
//! comes from the vault's own generator, not the token's.

use crate::seal::{split_sealed, EpochKeys, SealError, Sealer};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use std::collections::BTreeMap;
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
    /// Epoch keys found or made so far, by epoch (labels `KEY_LABEL.epoch.N`).
    epochs: Mutex<BTreeMap<u64, ObjectHandle>>,
    key_label: String,
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
            epochs: Mutex::new(BTreeMap::new()),
            key_label: config.key_label.clone(),
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

fn find_key(session: &Session, label: &str) -> cryptoki::error::Result<Option<ObjectHandle>> {
    let found = session.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(label.as_bytes().to_vec()),
    ])?;
    Ok(found.first().copied())
}

fn find_or_generate_key(session: &Session, label: &str) -> cryptoki::error::Result<ObjectHandle> {
    if let Some(key) = find_key(session, label)? {
        return Ok(key);
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

impl Pkcs11Sealer {
    fn seal_under(
        &self,
        key: ObjectHandle,
        context: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut iv = nonce;
        let params = GcmParams::new(&mut iv, context, TAG_BITS.into())
            .map_err(|e| SealError::Token(e.to_string()))?;
        let body = self
            .lock()
            .encrypt(&Mechanism::AesGcm(params), key, plaintext)
            .map_err(|_| SealError::Seal {
                len: plaintext.len(),
            })?;
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn open_under(
        &self,
        key: ObjectHandle,
        context: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let (nonce, ciphertext) = split_sealed(sealed)?;
        let mut iv = [0u8; NONCE_LEN];
        iv.copy_from_slice(nonce);
        let params = GcmParams::new(&mut iv, context, TAG_BITS.into())
            .map_err(|e| SealError::Token(e.to_string()))?;
        self.lock()
            .decrypt(&Mechanism::AesGcm(params), key, ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| SealError::Unauthentic)
    }

    fn epoch_label(&self, epoch: u64) -> String {
        format!("{}.epoch.{epoch}", self.key_label)
    }

    /// The handle of the key of `epoch`, looked up in the token on first use.
    fn epoch_key(&self, epoch: u64) -> Result<ObjectHandle, SealError> {
        let mut epochs = self.epochs.lock().expect("epoch key lock poisoned");
        if let Some(key) = epochs.get(&epoch) {
            return Ok(*key);
        }
        let found = find_key(&self.lock(), &self.epoch_label(epoch))
            .map_err(|e| SealError::Token(format!("cannot look up an epoch key: {e}")))?;
        let key = found.ok_or(SealError::EpochGone { epoch })?;
        epochs.insert(epoch, key);
        Ok(key)
    }
}

impl Sealer for Pkcs11Sealer {
    fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        self.seal_under(self.key, context, plaintext)
    }

    fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.open_under(self.key, context, sealed)
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn epoch_keys(&self) -> &dyn EpochKeys {
        self
    }
}

/// Epoch keys are AES-256 secret keys in the token like the node key (sensitive, never
/// extractable), labelled `KEY_LABEL.epoch.N`; destroying one is `C_DestroyObject`.
impl EpochKeys for Pkcs11Sealer {
    fn list(&self) -> Result<Vec<u64>, SealError> {
        let session = self.lock();
        let token_error =
            |e: cryptoki::error::Error| SealError::Token(format!("cannot list epoch keys: {e}"));
        let keys = session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
            ])
            .map_err(token_error)?;
        let prefix = format!("{}.epoch.", self.key_label);
        let mut epochs = Vec::new();
        for key in keys {
            for attribute in session
                .get_attributes(key, &[AttributeType::Label])
                .map_err(token_error)?
            {
                if let Attribute::Label(label) = attribute {
                    let epoch = std::str::from_utf8(&label)
                        .ok()
                        .and_then(|l| l.strip_prefix(&prefix))
                        .and_then(|n| n.parse().ok());
                    if let Some(epoch) = epoch {
                        epochs.push(epoch);
                    }
                }
            }
        }
        epochs.sort_unstable();
        epochs.dedup();
        Ok(epochs)
    }

    fn create(&self, epoch: u64) -> Result<(), SealError> {
        let key = find_or_generate_key(&self.lock(), &self.epoch_label(epoch))
            .map_err(|e| SealError::Token(format!("cannot generate epoch key {epoch}: {e}")))?;
        self.epochs
            .lock()
            .expect("epoch key lock poisoned")
            .insert(epoch, key);
        Ok(())
    }

    fn destroy(&self, epoch: u64) -> Result<(), SealError> {
        let mut epochs = self.epochs.lock().expect("epoch key lock poisoned");
        epochs.remove(&epoch);
        let session = self.lock();
        let destroy_error = |e: cryptoki::error::Error| {
            SealError::Token(format!("cannot destroy epoch key {epoch}: {e}"))
        };
        while let Some(key) = find_key(&session, &self.epoch_label(epoch)).map_err(destroy_error)? {
            session.destroy_object(key).map_err(destroy_error)?;
        }
        Ok(())
    }

    fn seal(&self, epoch: u64, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        self.seal_under(self.epoch_key(epoch)?, context, plaintext)
    }

    fn open(
        &self,
        epoch: u64,
        context: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.open_under(self.epoch_key(epoch)?, context, sealed)
    }
}
