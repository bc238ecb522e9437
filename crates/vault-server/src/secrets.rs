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

impl VaultSecrets {
    /// Loads `dir/secrets.sealed`, or creates it with fresh secrets if `dir` has none.
    pub fn load_or_create(dir: &Path, sealer: &dyn Sealer) -> Result<Self, SecretsError> {
        let path = dir.join(FILE);
        let io = |source| SecretsError::Io {
            path: path.clone(),
            source,
        };
        match fs::read(&path) {
            Ok(sealed) => {
                let plain = sealer
                    .open(CONTEXT, &sealed)
                    .map_err(|_| SecretsError::Unseal(path.clone()))?;
                let stored: Stored =
                    postcard::from_bytes(&plain).map_err(|_| SecretsError::Unseal(path.clone()))?;
                Ok(VaultSecrets {
                    server: ServerKeys::from_bytes(&stored.server)
                        .map_err(|_| SecretsError::Unseal(path.clone()))?,
                    tokens: TokenSecret::from_bytes(stored.tokens),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secrets = VaultSecrets {
                    server: ServerKeys::generate(),
                    tokens: TokenSecret::generate(),
                };
                let stored = Stored {
                    server: secrets.server.to_bytes().to_vec(),
                    tokens: *secrets.tokens.expose_secret(),
                };
                let plain = zeroize::Zeroizing::new(
                    postcard::to_allocvec(&stored).expect("postcard encodes into a Vec"),
                );
                let sealed = sealer
                    .seal(CONTEXT, &plain)
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
                fs::hard_link(&tmp, &path).map_err(io)?;
                fs::remove_file(&tmp).map_err(io)?;
                fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
                Ok(secrets)
            }
            Err(e) => Err(io(e)),
        }
    }
}
