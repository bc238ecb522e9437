//! Password mode (docs/VAULT.md §Device flows): reaching the Backup Key Vault, remote
//! or embedded in this process, with its public key pinned before anything is sent.
//! [`connect`] is the one way there: the apps' calls and the `backlock` command both
//! use it, so a pin, a fleet bundle and a receipt key are checked alike everywhere.

use crate::error::Error;
use backlock_core::key::BackupKey;
use backlock_repo::{DeviceHome, RepoError};
use backlock_vault_client::{VaultClient, VaultError};
use backlock_vault_proto::anchor::SnapshotAnchor;
use backlock_vault_proto::bundle::SignedBundle;
use backlock_vault_proto::owner::OwnerKey;
use backlock_vault_proto::password::Password;
use backlock_vault_proto::receipt::Receipt;
use backlock_vault_proto::suite::Stretch;
use backlock_vault_proto::wire::RegisterFinishReply;
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
    /// A signed fleet bundle, as `backlock vault bundle` wrote it: the fleet's
    /// replicas, public key and receipt key, in place of `urls` and `public_key`.
    /// Needs `bundle_signer`. A bundle older than one this device took is refused.
    #[uniffi(default = None)]
    pub bundle: Option<String>,
    /// The public key (hex) of the fleet's bundle signer, as the app ships it.
    #[uniffi(default = None)]
    pub bundle_signer: Option<String>,
}

impl VaultConfig {
    /// A vault embedded in this process with its data in `data`, for `account` (the
    /// command's default; tests). Apps in other languages give `embedded_data`.
    pub fn embedded(data: impl Into<String>, account: impl Into<String>) -> Self {
        VaultConfig {
            urls: vec![],
            public_key: None,
            account: account.into(),
            token: None,
            ca_pem: None,
            insecure_http: false,
            embedded_data: Some(data.into()),
            bundle: None,
            bundle_signer: None,
        }
    }
}

impl std::fmt::Debug for VaultConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultConfig")
            .field("urls", &self.urls)
            .field("account", &self.account)
            .field("token", &self.token)
            .field("bundle", &self.bundle.is_some())
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

/// Why [`connect`] failed, for a caller that words it its own way (the command names
/// its flags); apps see it as an [`Error`].
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The vault answered with an error, or is not the vault pinned (`WrongServer`).
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The configuration cannot work; the message says what to give.
    #[error("{0}")]
    Invalid(String),
    /// The device's own state (pins, bundle versions) could not be read or written.
    #[error(transparent)]
    Device(#[from] RepoError),
}

impl From<ConnectError> for Error {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Vault(e) => Error::from(e),
            ConnectError::Invalid(message) => Error::Invalid { message },
            ConnectError::Device(e) => Error::from(e),
        }
    }
}

/// A key recovered from the vault, with what the vault says of its newest backup.
pub struct Recovered {
    /// The backup key.
    pub key: BackupKey,
    /// The account's snapshot anchor, if a backup left one: which backup is the newest.
    pub anchor: Option<SnapshotAnchor>,
    /// Why the anchor could not be read from a vault that answered (an earlier release
    /// keeps none): the rollback check then rests on what this device saw itself.
    pub anchor_unread: Option<VaultError>,
}

impl Recovered {
    /// Keeps the anchor on `home` as if this device had seen that backup itself: from
    /// here on its rollback checks hold the store to it. Returns it when one was left.
    pub fn keep_anchor(&self, home: &DeviceHome) -> Result<Option<SnapshotAnchor>, RepoError> {
        if let Some(a) = &self.anchor {
            home.record(&hex::encode(a.repo), a.seq)?;
        }
        Ok(self.anchor)
    }
}

/// Why a recovery gave no key.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The vault refused the guess or could not take it.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The password was right, but the vault could not say which backup is the newest
    /// (busy, down, out of requests for the account): going on would give up the
    /// rollback check, so nothing was kept. The guess is not lost; try again later.
    #[error("the password was right, but the vault could not say which backup is the newest ({0}); this device kept nothing: try again later")]
    AnchorUnavailable(VaultError),
}

impl From<RecoverError> for Error {
    fn from(e: RecoverError) -> Self {
        match e {
            RecoverError::Vault(e) => Error::from(e),
            e @ RecoverError::AnchorUnavailable(_) => Error::VaultUnavailable {
                message: e.to_string(),
            },
        }
    }
}

/// A connection to the vault, its key checked against the pin.
pub struct Session {
    runtime: tokio::runtime::Runtime,
    /// The vault client, its replicas and account set.
    pub client: VaultClient,
    /// The vault's OPAQUE public key, as pinned and presented.
    pub pinned: [u8; 32],
    /// The key stretching every password goes through.
    pub ksf: Stretch,
    /// Set when this connection pinned the key (the first use of an embedded vault).
    pub first_pin: Option<String>,
    embedded: Option<RunningVault>,
}

impl Session {
    /// Runs a vault call to completion on the session's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// Puts `key` behind `password` in the vault (password mode); a record this same
    /// key already owns (an earlier switch, a record kept from before) is replaced
    /// under the key's owner proof. Another key's record is left alone:
    /// `AlreadyRegistered`.
    pub fn register_key(
        &self,
        password: &Password,
        key: &BackupKey,
    ) -> Result<RegisterFinishReply, VaultError> {
        let register = |owner: Option<&OwnerKey>| {
            self.block_on(
                self.client
                    .register(password, key, &self.pinned, owner, &self.ksf),
            )
        };
        match register(None) {
            Err(VaultError::AlreadyRegistered(_)) => register(Some(&OwnerKey::derive(key))),
            other => other,
        }
    }

    /// One guess of `password`: on the right one, the key and the account's anchor.
    pub fn recover(&self, password: &Password) -> Result<Recovered, RecoverError> {
        let key = self.block_on(self.client.recover(password, &self.pinned, &self.ksf))?;
        match self.block_on(self.client.anchor(&key)) {
            Ok(anchor) => Ok(Recovered {
                key,
                anchor,
                anchor_unread: None,
            }),
            Err(e @ (VaultError::Unavailable(_) | VaultError::RateLimited { .. })) => {
                Err(RecoverError::AnchorUnavailable(e))
            }
            // An anchor that does not open under the key: altered on the way.
            Err(e @ VaultError::WrongServer(_)) => Err(RecoverError::Vault(e)),
            // A vault of an earlier release keeps no anchors (it has no such route).
            Err(e) => Ok(Recovered {
                key,
                anchor: None,
                anchor_unread: Some(e),
            }),
        }
    }

    /// A new password for `key`, whose record this key owns (it proves so); the old
    /// password opens nothing after. The fleet's receipt, checked, when the session
    /// expects receipts.
    pub fn change_password(
        &self,
        password: &Password,
        key: &BackupKey,
    ) -> Result<(RegisterFinishReply, Option<Receipt>), VaultError> {
        let owner = OwnerKey::derive(key);
        self.block_on(self.client.register_with_receipt(
            password,
            key,
            &self.pinned,
            Some(&owner),
            &self.ksf,
        ))
    }

    /// Leaves snapshot `snapshot` (number `seq`) of repository `repo_id` with the vault
    /// as the account's newest backup, so a new device that recovers the key knows
    /// which backup is the newest (docs/VAULT.md §Snapshot anchor). A newer one there
    /// already (another backup of this account) is fine.
    pub fn leave_anchor(
        &self,
        key: &BackupKey,
        repo_id: &str,
        snapshot: &str,
        seq: u64,
    ) -> Result<(), VaultError> {
        let name = |hex_name: &str| -> Result<[u8; 16], VaultError> {
            let mut out = [0u8; 16];
            hex::decode_to_slice(hex_name, &mut out).map_err(|_| {
                VaultError::Protocol(format!("{hex_name} is not a 16-byte object name"))
            })?;
            Ok(out)
        };
        let anchor = SnapshotAnchor {
            repo: name(repo_id)?,
            seq,
            snapshot: name(snapshot)?,
        };
        match self.block_on(self.client.set_anchor(key, &self.pinned, &anchor)) {
            Ok(()) | Err(VaultError::AnchorNotNewer(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Erases the account's record, proving ownership with `key` (leaving password
    /// mode); none there already is fine. The fleet's receipt, checked, when the
    /// session expects receipts.
    pub fn leave_vault(&self, key: &BackupKey) -> Result<Option<Receipt>, VaultError> {
        match self.block_on(self.client.delete(key, &self.pinned)) {
            Err(VaultError::NoKey) => Ok(None),
            other => other,
        }
    }

    /// Ends the session; an embedded vault stops cleanly (as when it is dropped).
    pub fn close(self) {
        drop(self);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(v) = self.embedded.take() {
            self.runtime.block_on(v.shutdown());
        }
    }
}

fn wrong_vault(message: String) -> ConnectError {
    ConnectError::Vault(VaultError::WrongServer(message))
}

fn unavailable(e: impl std::fmt::Display) -> ConnectError {
    ConnectError::Vault(VaultError::Unavailable(e.to_string()))
}

/// A fleet bundle the device may use: verified, and not older than one it took.
struct Bundle {
    url: String,
    key: String,
    version: u64,
    /// `bundle:<signer hex>:<fleet>`: where its pin and newest version are kept.
    pin_name: String,
    /// The fleet's receipt key (a version 2 bundle).
    receipt_key: Option<[u8; 32]>,
}

/// Checks `text` against the signer's key and against the bundles this device took.
fn read_bundle(
    text: &str,
    signer: Option<&str>,
    home: &DeviceHome,
) -> Result<Bundle, ConnectError> {
    let signer = signer.ok_or_else(|| {
        ConnectError::Invalid(
            "a fleet bundle needs the fleet's signer key (bundle_signer; --vault-signer on the command line)".into(),
        )
    })?;
    let mut signer_key = [0u8; 32];
    hex::decode_to_slice(signer.trim(), &mut signer_key)
        .map_err(|_| ConnectError::Invalid("the bundle signer key must be 64 hex digits".into()))?;
    let bad = |e: backlock_vault_proto::bundle::BundleError| wrong_vault(e.to_string());
    let signed = SignedBundle::parse(text).map_err(bad)?;
    let (bundle, key) = signed.verify(&signer_key).map_err(bad)?;
    let receipt_key = signed.receipt_key().map_err(bad)?;
    let pin_name = format!("bundle:{}:{}", hex::encode(signer_key), bundle.fleet);
    // Once a bundle with the receipt key was taken, one without it (an older kind, which
    // anyone holding it could hand over) would turn the fleet's receipts off.
    if receipt_key.is_none() && home.vault_pin(&receipts_pin(&pin_name))?.is_some() {
        return Err(wrong_vault(format!(
            "the fleet bundle has no receipt key, but this device took a bundle of fleet {} that \
             has one: a bundle of the older kind would turn off the fleet's signed receipts; get \
             the current bundle",
            bundle.fleet
        )));
    }
    if let Some(newest) = home.bundle_version(&pin_name)? {
        if bundle.version < newest {
            return Err(wrong_vault(format!(
                "the fleet bundle is version {} of fleet {}, but this device already took version \
                 {newest}: an older bundle may list replicas or a key the fleet no longer uses; get \
                 the current one",
                bundle.version, bundle.fleet
            )));
        }
    }
    Ok(Bundle {
        url: bundle.replicas.join(","),
        key: hex::encode(key),
        version: bundle.version,
        pin_name,
        receipt_key,
    })
}

/// Where a device notes the receipt key of a bundle's fleet (in its vault pins).
fn receipts_pin(pin_name: &str) -> String {
    format!("{pin_name}#receipts")
}

/// Connects to the vault `cfg` names (its URLs, its signed fleet bundle, or, naming
/// neither, a vault embedded in this process with its data in `embedded_data`) and
/// checks its public key before anything is sent: the bundle's, else the one given,
/// else the one this device pinned. An embedded vault is pinned on first use; a remote
/// one never is (whoever answered first could then guess without limit). Receipts are
/// checked against the bundle's receipt key, or the embedded vault's own.
pub fn connect(cfg: &VaultConfig, home: &DeviceHome) -> Result<Session, ConnectError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(unavailable)?;
    backlock_vault_proto::token::validate_account(&cfg.account)
        .map_err(|e| ConnectError::Invalid(format!("account: {e}")))?;
    let bundle = match &cfg.bundle {
        Some(_) if !cfg.urls.is_empty() || cfg.public_key.is_some() => {
            return Err(ConnectError::Invalid(
                "a fleet bundle names the replicas and the key: give the bundle, or the URLs and the public key, not both".into(),
            ))
        }
        Some(text) => Some(read_bundle(text, cfg.bundle_signer.as_deref(), home)?),
        None => None,
    };
    let remote = match &bundle {
        Some(b) => Some(b.url.clone()),
        None if cfg.urls.is_empty() => None,
        None => Some(cfg.urls.join(",")),
    };
    let (url, token, embedded, pin_name) = match remote {
        None => {
            let data = cfg.embedded_data.as_deref().ok_or_else(|| {
                ConnectError::Invalid(
                    "the vault config names no URL, no bundle and no embedded_data directory"
                        .into(),
                )
            })?;
            let running = runtime
                .block_on(RunningVault::start(ServeConfig::loopback(PathBuf::from(
                    data,
                ))))
                .map_err(unavailable)?;
            let token = Zeroizing::new(
                running
                    .vault
                    .issue_token(&cfg.account, 600)
                    .map_err(|e| ConnectError::Invalid(format!("account: {e}")))?,
            );
            let absolute = std::path::absolute(data).unwrap_or_else(|_| PathBuf::from(data));
            let name = format!("embedded:{}", absolute.display());
            (running.url(), token, Some(running), name)
        }
        Some(url) => {
            let insecure = VaultClient::insecure_replicas(&url);
            if !insecure.is_empty() && !cfg.insecure_http {
                return Err(ConnectError::Invalid(format!(
                    "the vault URL {} is not https:// (plain HTTP is allowed only to this machine): use the vault's https:// address, or allow plain HTTP on a test network (insecure_http; --insecure-http on the command line)",
                    insecure.join(", ")
                )));
            }
            let token = Zeroizing::new(
                cfg.token
                    .as_ref()
                    .ok_or_else(|| {
                        ConnectError::Invalid(format!(
                            "a remote vault needs the relay's token for account {}",
                            cfg.account
                        ))
                    })?
                    .expose_secret()
                    .to_owned(),
            );
            let pin = match &bundle {
                Some(b) => b.pin_name.clone(),
                None => url.trim_end_matches('/').to_owned(),
            };
            (url, token, None, pin)
        }
    };
    let receipt_key = match (&bundle, &embedded) {
        (Some(b), _) => b.receipt_key,
        (None, Some(running)) => Some(running.vault.receipt_key()),
        (None, None) => None,
    };
    let client = VaultClient::with_ca(
        &url,
        &cfg.account,
        &token,
        cfg.ca_pem.as_deref().map(str::as_bytes),
    )?
    .with_receipt_key(receipt_key);
    let info = runtime.block_on(client.info())?;
    let presented = hex::encode(info.server_public_key);
    let stored = home.vault_pin(&pin_name)?;
    let mut first_pin = None;
    let pinned = match (&bundle, &cfg.public_key, &stored) {
        // A verified bundle names the key, whatever was pinned from an older bundle.
        (Some(b), _, _) => b.key.clone(),
        (None, Some(given), _) => given.trim().to_ascii_lowercase(),
        (None, None, Some(pinned)) => pinned.clone(),
        // The embedded vault runs in this process: what it presents is its own key.
        (None, None, None) if embedded.is_some() => {
            first_pin = Some(presented.clone());
            presented.clone()
        }
        (None, None, None) => {
            return Err(ConnectError::Invalid(format!(
                "this device does not know the public key of the vault at {url}: give it as the vault's operator publishes it (public_key; --vault-key HEX or BACKLOCK_VAULT_KEY on the command line). \
                 backlock never trusts the key a server presents on first contact: whoever answered first could then guess the password without limit"
            )))
        }
    };
    if pinned != presented {
        return Err(wrong_vault(format!(
            "the vault at {url} presents public key {presented}, but this device pinned {pinned}; \
             refusing to send it anything (if the vault was really re-created, remove its entry from {}/vault-pins.json)",
            home.root().display()
        )));
    }
    if stored.as_deref() != Some(pinned.as_str()) {
        home.pin_vault(&pin_name, &pinned)?;
    }
    if let Some(b) = &bundle {
        home.record_bundle_version(&b.pin_name, b.version)?;
        if let Some(key) = b.receipt_key {
            home.pin_vault(&receipts_pin(&b.pin_name), &hex::encode(key))?;
        }
    }
    Ok(Session {
        runtime,
        client,
        pinned: info.server_public_key,
        ksf: Stretch::default(),
        first_pin,
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
            bundle: None,
            bundle_signer: None,
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
