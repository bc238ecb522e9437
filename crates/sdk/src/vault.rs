//! Password mode (docs/VAULT.md §Device flows): reaching the Backup Key Vault, remote
//! or embedded in this process, with its public key pinned before anything is sent.

use crate::error::Error;
use backlock_repo::DeviceHome;
use backlock_vault_client::{VaultClient, VaultError};
use backlock_vault_proto::suite::Stretch;
use backlock_vault_server::run::{RunningVault, ServeConfig};
use std::path::PathBuf;
use std::sync::Arc;
use zeroize::Zeroizing;

/// The relay's bearer token for an account: a secret. It is an object, not a string
/// field of [`VaultConfig`], so that no language prints it: Debug and Display (Python's
/// `repr`/`str`, Kotlin's `toString`, Swift's descriptions) show `AccountToken(REDACTED)`,
/// and the text is wiped when the last reference goes.
#[derive(uniffi::Object)]
#[uniffi::export(Debug, Display)]
pub struct AccountToken(Zeroizing<String>);

#[uniffi::export]
impl AccountToken {
    /// The token as the relay issued it; `Invalid` if it is empty or holds white
    /// space or control characters (the message never repeats it).
    #[uniffi::constructor]
    pub fn new(token: String) -> Result<Arc<Self>, Error> {
        let token = Zeroizing::new(token);
        if token.is_empty() {
            return Err(Error::invalid("the account token is empty"));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::invalid(
                "the account token holds white space or control characters: give it exactly as the relay issued it",
            ));
        }
        Ok(Arc::new(AccountToken(token)))
    }
}

impl AccountToken {
    /// The token itself, for the vault client only.
    pub(crate) fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AccountToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccountToken(REDACTED)")
    }
}

impl std::fmt::Display for AccountToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccountToken(REDACTED)")
    }
}

/// Which vault holds the key, and as whom.
#[derive(Clone, uniffi::Record)]
pub struct VaultConfig {
    /// Every replica's URL (`https://v1:7070`, …); none for a vault embedded in this
    /// process (`embedded_data` then).
    #[uniffi(default = [])]
    pub urls: Vec<String>,
    /// The vault's OPAQUE public key as its operator publishes it (hex), required for
    /// a remote vault: a key a server presents on first contact is never trusted.
    #[uniffi(default = None)]
    pub public_key: Option<String>,
    /// The account the record belongs to.
    pub account: String,
    /// The relay's token for the account (remote vaults).
    #[uniffi(default = None)]
    pub token: Option<Arc<AccountToken>>,
    /// PEM of the CA that signed an `https://` vault's certificate (default: the
    /// system's roots).
    #[uniffi(default = None)]
    pub ca_pem: Option<String>,
    /// Allows `http://` beyond this machine (a test network only).
    #[uniffi(default = false)]
    pub insecure_http: bool,
    /// The data directory of a vault embedded in this process (no `urls`).
    #[uniffi(default = None)]
    pub embedded_data: Option<String>,
}

impl std::fmt::Debug for VaultConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultConfig")
            .field("urls", &self.urls)
            .field("account", &self.account)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl From<VaultError> for Error {
    fn from(e: VaultError) -> Self {
        let message = e.to_string();
        match e {
            VaultError::WrongPassword { attempts_left } => Error::WrongPassword {
                attempts_left,
                message,
            },
            VaultError::Locked => Error::Locked { message },
            VaultError::NoKey => Error::NoKey { message },
            VaultError::Unavailable(_) | VaultError::RateLimited { .. } => {
                Error::VaultUnavailable { message }
            }
            VaultError::WrongServer(_) => Error::WrongVault { message },
            VaultError::AlreadyRegistered(_) => Error::Invalid { message },
            _ => Error::Other { message },
        }
    }
}

/// A connection to the vault, its key checked against the pin.
pub(crate) struct Session {
    runtime: tokio::runtime::Runtime,
    pub(crate) client: VaultClient,
    pub(crate) pinned: [u8; 32],
    pub(crate) ksf: Stretch,
    embedded: Option<RunningVault>,
}

impl Session {
    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(v) = self.embedded.take() {
            self.runtime.block_on(v.shutdown());
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::VaultUnavailable {
        message: e.to_string(),
    }
}

/// Connects to the vault `cfg` names, starting the embedded one if it names no URL,
/// and checks its public key: the one given, else the one this device pinned (the
/// embedded vault is pinned on first use; a remote one never is).
pub(crate) fn connect(cfg: &VaultConfig, home: &DeviceHome) -> Result<Session, Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(unavailable)?;
    backlock_vault_proto::token::validate_account(&cfg.account)
        .map_err(|e| Error::invalid(format!("account: {e}")))?;
    let (url, token, embedded, pin_name) = match cfg.urls.as_slice() {
        [] => {
            let data = cfg.embedded_data.as_deref().ok_or_else(|| {
                Error::invalid("the vault config names no URL and no embedded_data directory")
            })?;
            let running = runtime
                .block_on(RunningVault::start(ServeConfig {
                    data: PathBuf::from(data),
                    node_key: None,
                    listen: ([127, 0, 0, 1], 0).into(),
                    vault: backlock_vault_server::service::VaultConfig::default(),
                    tls: None,
                    http: Default::default(),
                    metrics_listen: None,
                }))
                .map_err(unavailable)?;
            let token = Zeroizing::new(
                running
                    .vault
                    .issue_token(&cfg.account, 600)
                    .map_err(|e| Error::invalid(format!("account: {e}")))?,
            );
            let name = format!("embedded:{data}");
            (running.url(), token, Some(running), name)
        }
        urls => {
            let url = urls.join(",");
            let insecure = VaultClient::insecure_replicas(&url);
            if !insecure.is_empty() && !cfg.insecure_http {
                return Err(Error::invalid(format!(
                    "the vault URL {} is not https:// (plain HTTP is allowed only to this machine): use the vault's https:// address, or set insecure_http on a test network",
                    insecure.join(", ")
                )));
            }
            let token = Zeroizing::new(
                cfg.token
                    .as_ref()
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "a remote vault needs the relay's token for account {}",
                            cfg.account
                        ))
                    })?
                    .expose_secret()
                    .to_owned(),
            );
            let pin = url.trim_end_matches('/').to_owned();
            (url, token, None, pin)
        }
    };
    let client = VaultClient::with_ca(
        &url,
        &cfg.account,
        &token,
        cfg.ca_pem.as_deref().map(str::as_bytes),
    )?
    .with_receipt_key(embedded.as_ref().map(|r| r.vault.receipt_key()));
    let info = runtime.block_on(client.info())?;
    let presented = hex::encode(info.server_public_key);
    let stored = home.vault_pin(&pin_name)?;
    let pinned = match (&cfg.public_key, &stored) {
        (Some(given), _) => given.trim().to_ascii_lowercase(),
        (None, Some(pinned)) => pinned.clone(),
        (None, None) if embedded.is_some() => presented.clone(),
        (None, None) => {
            return Err(Error::invalid(format!(
                "this device does not know the public key of the vault at {url}: give public_key as the vault's operator publishes it"
            )))
        }
    };
    if pinned != presented {
        return Err(Error::WrongVault {
            message: format!(
                "the vault at {url} presents public key {presented}, but this device pinned {pinned}: refusing to send it anything"
            ),
        });
    }
    if stored.as_deref() != Some(pinned.as_str()) {
        home.pin_vault(&pin_name, &pinned)?;
    }
    Ok(Session {
        runtime,
        client,
        pinned: info.server_public_key,
        ksf: Stretch::default(),
        embedded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "tok-SECRET-1234";

    #[test]
    fn neither_the_token_nor_the_config_prints_the_secret() {
        let token = AccountToken::new(SECRET.into()).unwrap();
        let cfg = VaultConfig {
            urls: vec!["https://v1:7070".into()],
            public_key: None,
            account: "alice".into(),
            token: Some(token.clone()),
            ca_pem: None,
            insecure_http: false,
            embedded_data: None,
        };
        for text in [
            format!("{token:?}"),
            format!("{token:#?}"),
            format!("{token}"),
            format!("{cfg:?}"),
            format!("{cfg:#?}"),
            format!("{:?}", cfg.clone()),
        ] {
            assert!(!text.contains("SECRET"), "{text}");
            assert!(!text.contains(SECRET), "{text}");
        }
        assert_eq!(format!("{token}"), "AccountToken(REDACTED)");
        assert_eq!(token.expose_secret(), SECRET);
    }

    #[test]
    fn a_malformed_token_is_invalid_and_not_repeated() {
        for bad in ["", "tok SECRET", "tok-SECRET\n", "tok\u{7}SECRET", "\u{a0}"] {
            match AccountToken::new(bad.into()) {
                Err(Error::Invalid { message }) => {
                    assert!(!message.contains("SECRET"), "{message}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
