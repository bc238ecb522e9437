//! The vault's own secrets, sealed at rest (docs/VAULT.md §Secrets at rest).
//!
//! `DIR/secrets.sealed` holds the fleet secret (OPRF seed and server key pair) and the
//! token secret shared with the relay, sealed under the node key. Created once, on the
//! vault's first start.

use crate::seal::Sealer;
use backlock_vault_proto::server::ServerKeys;
use backlock_vault_proto::token::TokenSecret;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use zeroize::{Zeroize, ZeroizeOnDrop};

const CONTEXT: &[u8] = b"backlock vault secrets v1";
/// File name of the sealed secrets inside the data directory.
pub const FILE: &str = "secrets.sealed";

/// Fleet secret and token secret.
pub struct VaultSecrets {
    /// OPAQUE server setup.
    pub server: ServerKeys,
    /// HMAC key for account tokens.
    pub tokens: TokenSecret,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct Stored {
    server: Vec<u8>,
    tokens: [u8; 32],
}

/// The secrets could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Reading or writing the file failed.
    #[error("vault secrets at {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The node key does not open the file, or it is damaged.
    #[error("vault secrets at {0} do not open with this node key (wrong node key, or the file is damaged)")]
    Unseal(PathBuf),
}

/// Bytes of the secrets as one replica hands them to a joining one (over mutual TLS).
pub type Transfer = zeroize::Zeroizing<Vec<u8>>;

impl VaultSecrets {
    /// Fresh secrets.
    pub fn generate() -> Self {
        VaultSecrets {
            server: ServerKeys::generate(),
            tokens: TokenSecret::generate(),
        }
    }

    /// The secrets as a joining replica receives them.
    pub fn to_transfer(&self) -> Transfer {
        let stored = Stored {
            server: self.server.to_bytes().to_vec(),
            tokens: *self.tokens.expose_secret(),
        };
        zeroize::Zeroizing::new(
            postcard::to_allocvec(&stored).expect("postcard encodes into a Vec"),
        )
    }

    /// Secrets received from another replica; `None` if the bytes are not secrets.
    pub fn from_transfer(bytes: &[u8]) -> Option<Self> {
        let stored: Stored = postcard::from_bytes(bytes).ok()?;
        Some(VaultSecrets {
            server: ServerKeys::from_bytes(&stored.server).ok()?,
            tokens: TokenSecret::from_bytes(stored.tokens),
        })
    }

    /// Whether `dir` holds sealed secrets.
    pub fn exist(dir: &Path) -> bool {
        dir.join(FILE).exists()
    }

    /// Loads `dir/secrets.sealed`; `None` if there is none.
    pub fn load(dir: &Path, sealer: &dyn Sealer) -> Result<Option<Self>, SecretsError> {
        let path = dir.join(FILE);
        let sealed = match fs::read(&path) {
            Ok(sealed) => sealed,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(SecretsError::Io { path, source }),
        };
        let plain = sealer
            .open(CONTEXT, &sealed)
            .map_err(|_| SecretsError::Unseal(path.clone()))?;
        Self::from_transfer(&plain)
            .map(Some)
            .ok_or(SecretsError::Unseal(path))
    }

    /// Loads `dir/secrets.sealed`, or creates it with fresh secrets if `dir` has none.
    pub fn load_or_create(dir: &Path, sealer: &dyn Sealer) -> Result<Self, SecretsError> {
        if let Some(secrets) = Self::load(dir, sealer)? {
            return Ok(secrets);
        }
        let secrets = Self::generate();
        secrets.store(dir, sealer)?;
        Ok(secrets)
    }

    /// Seals these secrets into `dir/secrets.sealed`, which must not exist yet.
    pub fn store(&self, dir: &Path, sealer: &dyn Sealer) -> Result<(), SecretsError> {
        let path = dir.join(FILE);
        let io = |source| SecretsError::Io {
            path: path.clone(),
            source,
        };
        let sealed = sealer
            .seal(CONTEXT, &self.to_transfer())
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        fs::create_dir_all(dir).map_err(io)?;
        // hard_link fails if the file exists: two processes racing to initialise
        // never overwrite each other's secrets.
        let tmp = dir.join(format!("{FILE}.tmp"));
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?
        };
        f.write_all(&sealed).map_err(io)?;
        f.sync_all().map_err(io)?;
        let linked = fs::hard_link(&tmp, &path);
        fs::remove_file(&tmp).map_err(io)?;
        linked.map_err(io)?;
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }
}
