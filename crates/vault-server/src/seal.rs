//! Sealing values at rest under a node key (docs/VAULT.md §Sealed storage).
//!
//! Every byte the vault writes to its data directory (log entries, vote, snapshots) is
//! sealed through a [`Sealer`], an HSM-style interface: the caller never sees the key.
//! [`KeyFileSealer`] keeps the key in a local file (the default);
//! [`crate::pkcs11::Pkcs11Sealer`] keeps it inside a PKCS#11 token.
//!
//! Sealed layout (version 1): `0x01 ‖ nonce (12) ‖ ciphertext ‖ tag (16)`, AES-256-GCM
//! with a random 96-bit nonce per value and the caller's `context` as associated data, so
//! a value copied to another place (another log index, the vote file) does not open.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Seals and opens values at rest. Implementations hold the key; callers never do.
pub trait Sealer: Send + Sync + 'static {
    /// Encrypts `plaintext`, binding it to `context` (where the value lives).
    fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError>;
    /// Decrypts a value sealed with the same key and `context`.
    fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError>;
    /// A human-readable description of the key's location, without key material.
    fn describe(&self) -> String;
    /// The destroyable epoch keys kept where the node key is (`epoch.rs`).
    fn epoch_keys(&self) -> &dyn EpochKeys;
}

/// AES-256-GCM keys numbered by epoch, generated and kept where the node key is, that
/// the vault destroys when their epoch ends (docs/VAULT.md §Crypto-erasure). Values use
/// the sealed layout of version 1, under the numbered key instead of the node key.
pub trait EpochKeys: Send + Sync {
    /// The epochs whose key exists, in ascending order.
    fn list(&self) -> Result<Vec<u64>, SealError>;
    /// Generates the key of `epoch` (a no-op if it exists).
    fn create(&self, epoch: u64) -> Result<(), SealError>;
    /// Destroys the key of `epoch` (a no-op if it is gone): nothing sealed under it
    /// opens again.
    fn destroy(&self, epoch: u64) -> Result<(), SealError>;
    /// Seals under the key of `epoch`.
    fn seal(&self, epoch: u64, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError>;
    /// Opens a value sealed under the key of `epoch`.
    fn open(
        &self,
        epoch: u64,
        context: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError>;
}

/// Why a value could not be sealed or opened, or the key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The key file could not be read, created or synced.
    #[error("cannot read or create the vault key file {path}: {source}")]
    KeyFileIo {
        /// The key file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The key file exists but is not 32 bytes long.
    #[error(
        "the vault key file {path} holds {len} bytes, expected {KEY_LEN}: it is not a backlock \
         key file or it was damaged; restore it from your backup of the key file"
    )]
    KeyFileLength {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The key file can be read by other users.
    #[error("the vault key file {path} is accessible to other users (mode {mode:o}); run `chmod 600 {path}`")]
    KeyFilePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The operating system's random generator failed.
    #[error("the operating system random number generator failed; the value was not sealed")]
    Random,
    /// The AEAD refused to seal (the value is too large).
    #[error("sealing a {len}-byte value failed")]
    Seal {
        /// Plaintext length.
        len: usize,
    },
    /// The sealed value is shorter than the fixed overhead.
    #[error("sealed value is {len} bytes, shorter than the {OVERHEAD}-byte minimum: the file was truncated")]
    Truncated {
        /// Its length.
        len: usize,
    },
    /// The sealed value was written by a newer (or unknown) format.
    #[error("sealed value has format version {version}; this vault reads only version {VERSION}: upgrade backlock")]
    UnknownVersion {
        /// The version byte found.
        version: u8,
    },
    /// Authentication failed.
    #[error(
        "sealed value does not open: it was sealed under another key, belongs to another place, \
         or was altered"
    )]
    Unauthentic,
    /// The PKCS#11 token refused or could not be reached.
    #[error("the vault's PKCS#11 token failed: {0}")]
    Token(String),
    /// The value was sealed under an epoch key that was destroyed (or never made here).
    #[error(
        "sealed value belongs to epoch {epoch}, whose key is gone: it was erased when its \
         epoch ended, or the data directory belongs to another replica"
    )]
    EpochGone {
        /// The value's epoch.
        epoch: u64,
    },
}

/// Splits a sealed value (version 1 layout) into its nonce and its ciphertext with tag.
pub(crate) fn split_sealed(sealed: &[u8]) -> Result<(&[u8], &[u8]), SealError> {
    let Some((&version, rest)) = sealed.split_first() else {
        return Err(SealError::Truncated { len: 0 });
    };
    if version != VERSION {
        return Err(SealError::UnknownVersion { version });
    }
    if sealed.len() < OVERHEAD {
        return Err(SealError::Truncated { len: sealed.len() });
    }
    Ok(rest.split_at(NONCE_LEN))
}

/// Sealed format version written by this code.
const VERSION: u8 = 1;
/// AES-256 key length.
const KEY_LEN: usize = 32;
/// GCM tag length.
const TAG_LEN: usize = 16;
/// Version byte, nonce and tag.
pub(crate) const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// A [`Sealer`] whose AES-256-GCM key lives in a local file (mode 0600).
pub struct KeyFileSealer {
    path: PathBuf,
    // aws-lc cleanses the expanded key when this is dropped; the raw bytes are zeroized
    // as soon as the key is built.
    key: LessSafeKey,
    epochs: EpochKeyFiles,
}

/// Epoch keys in files beside the node key file (`NODE_KEY.epoch-N`, mode 0600).
/// Destroying one overwrites and unlinks the file, which the file system may not honour
/// on disk (journals, copy-on-write, old blocks): docs/OPERATIONS.md says what that
/// leaves.
struct EpochKeyFiles {
    node_key: PathBuf,
    keys: std::sync::RwLock<std::collections::BTreeMap<u64, LessSafeKey>>,
}

impl fmt::Debug for KeyFileSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFileSealer")
            .field("path", &self.path)
            .field("key", &"REDACTED")
            .finish()
    }
}

impl KeyFileSealer {
    /// Opens the key file at `path`, or creates it with a fresh random key if absent.
    ///
    /// A new file is written under a temporary name and linked into place, so a crash
    /// never leaves a short key file and two racing starts agree on one key.
    pub fn open_or_create(path: impl AsRef<Path>) -> Result<Self, SealError> {
        let path = path.as_ref().to_path_buf();
        let io_err = |source| SealError::KeyFileIo {
            path: path.clone(),
            source,
        };
        match fs::symlink_metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                create_key_file(&path).map_err(io_err)?
            }
            Err(e) => return Err(io_err(e)),
        }
        let key = read_key_file(&path)?;
        Ok(Self {
            key: aes_key(&key),
            epochs: EpochKeyFiles {
                node_key: path.clone(),
                keys: Default::default(),
            },
            path,
        })
    }

    /// The key file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn aes_key(bytes: &[u8]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte key suits AES-256-GCM"))
}

fn create_key_file(path: &Path) -> io::Result<()> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    aws_lc_rs::rand::fill(key.as_mut_slice())
        .map_err(|_| io::Error::other("OS random generator failed"))?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(key.as_slice())?;
        file.sync_all()?;
        // hard_link fails if the target exists: whoever links first wins, with a full file.
        match fs::hard_link(&tmp, path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    })();
    let removed = fs::remove_file(&tmp);
    written?;
    removed?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let io_err = |source| SealError::KeyFileIo {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SealError::KeyFilePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() != KEY_LEN as u64 {
        return Err(SealError::KeyFileLength {
            path: path.to_path_buf(),
            len: meta.len(),
        });
    }
    let mut key = Zeroizing::new(Vec::with_capacity(KEY_LEN));
    file.read_to_end(&mut key).map_err(io_err)?;
    if key.len() != KEY_LEN {
        return Err(SealError::KeyFileLength {
            path: path.to_path_buf(),
            len: key.len() as u64,
        });
    }
    Ok(key)
}

impl Sealer for KeyFileSealer {
    fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        seal_with(&self.key, context, plaintext)
    }

    fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        open_with(&self.key, context, sealed)
    }

    fn describe(&self) -> String {
        format!("AES-256-GCM key file {}", self.path.display())
    }

    fn epoch_keys(&self) -> &dyn EpochKeys {
        &self.epochs
    }
}

/// Seals in the version 1 layout under `key`.
pub(crate) fn seal_with(
    key: &LessSafeKey,
    context: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError::Random)?;
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    let mut body = plaintext.to_vec();
    let sealed = key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(context),
        &mut body,
    );
    if sealed.is_err() {
        // `body` still holds plaintext: wipe it before returning.
        zeroize::Zeroize::zeroize(&mut body);
        return Err(SealError::Seal {
            len: plaintext.len(),
        });
    }
    out.extend_from_slice(&body);
    Ok(out)
}

/// Opens a value of the version 1 layout under `key`.
pub(crate) fn open_with(
    key: &LessSafeKey,
    context: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let (nonce, ciphertext) = split_sealed(sealed)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce)
        .map_err(|_| SealError::Truncated { len: sealed.len() })?;
    let mut body = Zeroizing::new(ciphertext.to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(context), body.as_mut_slice())
        .map_err(|_| SealError::Unauthentic)?
        .len();
    body.truncate(len);
    Ok(body)
}

impl EpochKeyFiles {
    fn path(&self, epoch: u64) -> PathBuf {
        let mut name = self.node_key.as_os_str().to_owned();
        name.push(format!(".epoch-{epoch}"));
        PathBuf::from(name)
    }

    fn io(&self, path: PathBuf) -> impl FnOnce(io::Error) -> SealError {
        move |source| SealError::KeyFileIo { path, source }
    }

    /// Runs `f` with the key of `epoch`, loading it from its file on first use.
    fn with_key<T>(
        &self,
        epoch: u64,
        f: impl FnOnce(&LessSafeKey) -> Result<T, SealError>,
    ) -> Result<T, SealError> {
        if let Some(key) = self
            .keys
            .read()
            .expect("epoch key lock poisoned")
            .get(&epoch)
        {
            return f(key);
        }
        let path = self.path(epoch);
        let bytes = match read_key_file(&path) {
            Err(SealError::KeyFileIo { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                return Err(SealError::EpochGone { epoch })
            }
            other => other?,
        };
        let mut keys = self.keys.write().expect("epoch key lock poisoned");
        f(keys.entry(epoch).or_insert_with(|| aes_key(&bytes)))
    }
}

impl EpochKeys for EpochKeyFiles {
    fn list(&self) -> Result<Vec<u64>, SealError> {
        let dir = match self.node_key.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut prefix = self
            .node_key
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        prefix.push_str(".epoch-");
        let mut epochs = Vec::new();
        for item in fs::read_dir(&dir).map_err(self.io(dir.clone()))? {
            let item = item.map_err(self.io(dir.clone()))?;
            let name = item.file_name();
            if let Some(n) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) {
                if let Ok(epoch) = n.parse() {
                    epochs.push(epoch);
                }
            }
        }
        epochs.sort_unstable();
        Ok(epochs)
    }

    fn create(&self, epoch: u64) -> Result<(), SealError> {
        let path = self.path(epoch);
        create_key_file(&path).map_err(self.io(path))
    }

    fn destroy(&self, epoch: u64) -> Result<(), SealError> {
        self.keys
            .write()
            .expect("epoch key lock poisoned")
            .remove(&epoch);
        let path = self.path(epoch);
        // Overwrite before unlinking, so at least the file's own blocks lose the key.
        let wiped = OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut file| {
                file.write_all(&[0u8; KEY_LEN])?;
                file.sync_all()
            });
        match wiped.and_then(|()| fs::remove_file(&path)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(self.io(path)(e)),
            _ => {}
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(self.io(parent.to_path_buf()))?;
        }
        Ok(())
    }

    fn seal(&self, epoch: u64, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        self.with_key(epoch, |key| seal_with(key, context, plaintext))
    }

    fn open(
        &self,
        epoch: u64,
        context: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.with_key(epoch, |key| open_with(key, context, sealed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(dir: &Path) -> KeyFileSealer {
        KeyFileSealer::open_or_create(dir.join("node.key")).unwrap()
    }

    #[test]
    fn round_trip_and_key_file_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealer(dir.path());
        let sealed = s.seal(b"ctx", b"hello vault").unwrap();
        assert_eq!(sealed.len(), OVERHEAD + 11);
        assert_eq!(sealed[0], VERSION);
        assert_eq!(s.open(b"ctx", &sealed).unwrap().as_slice(), b"hello vault");
        // Reopening the same file gives the same key.
        let again = sealer(dir.path());
        assert_eq!(
            again.open(b"ctx", &sealed).unwrap().as_slice(),
            b"hello vault"
        );
        let mode = fs::metadata(dir.path().join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        // Fresh nonce per value.
        assert_ne!(s.seal(b"ctx", b"x").unwrap(), s.seal(b"ctx", b"x").unwrap());
        assert_eq!(s.open(b"", &s.seal(b"", b"").unwrap()).unwrap().len(), 0);
    }

    #[test]
    fn wrong_context_fails() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealer(dir.path());
        let sealed = s.seal(b"backlock vault log\x00\x01", b"entry").unwrap();
        assert!(matches!(
            s.open(b"backlock vault log\x00\x02", &sealed),
            Err(SealError::Unauthentic)
        ));
    }

    #[test]
    fn flipped_byte_fails() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealer(dir.path());
        let sealed = s.seal(b"ctx", b"some plaintext").unwrap();
        for i in 1..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(s.open(b"ctx", &bad), Err(SealError::Unauthentic)),
                "byte {i}"
            );
        }
        let mut bad = sealed.clone();
        bad[0] = 2;
        assert!(matches!(
            s.open(b"ctx", &bad),
            Err(SealError::UnknownVersion { version: 2 })
        ));
        assert!(matches!(
            s.open(b"ctx", &sealed[..OVERHEAD - 1]),
            Err(SealError::Truncated { .. })
        ));
        assert!(matches!(
            s.open(b"ctx", &[]),
            Err(SealError::Truncated { len: 0 })
        ));
    }

    #[test]
    fn wrong_key_fails() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let sealed = sealer(a.path()).seal(b"ctx", b"secret").unwrap();
        assert!(matches!(
            sealer(b.path()).open(b"ctx", &sealed),
            Err(SealError::Unauthentic)
        ));
    }

    #[test]
    fn bad_key_files_are_refused_with_actionable_errors() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.key");
        fs::write(&short, [0u8; 5]).unwrap();
        fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).unwrap();
        let err = KeyFileSealer::open_or_create(&short).unwrap_err();
        assert!(
            matches!(err, SealError::KeyFileLength { len: 5, .. }),
            "{err}"
        );

        let open = dir.path().join("open.key");
        fs::write(&open, [0u8; 32]).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeyFileSealer::open_or_create(&open).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn debug_and_describe_hide_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealer(dir.path());
        let key = fs::read(dir.path().join("node.key")).unwrap();
        let shown = format!("{s:?} {}", s.describe());
        assert!(shown.contains("REDACTED"));
        assert!(!shown.contains(&hex::encode(&key)));
        assert!(!shown.contains(&format!("{:?}", key)));
    }
}
