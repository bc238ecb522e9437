//! Password mode: reaching the Backup Key Vault (remote, or embedded in this process),
//! pinning its key, and reading passwords (docs/VAULT.md §Device flows).

use crate::exit::{Usage, VaultFailure};
use anyhow::{Context, Result};
use backlock_repo::DeviceHome;
use backlock_vault_client::{VaultClient, VaultError};
use backlock_vault_proto::password::Password;
use backlock_vault_proto::suite::Stretch;
use backlock_vault_server::run::{RunningVault, ServeConfig};
use backlock_vault_server::service::VaultConfig;
use clap::Args;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Account used with the embedded vault when none is given.
pub(crate) const LOCAL_ACCOUNT: &str = "local";

pub(crate) const FORGOTTEN_PASSWORD_WARNING: &str =
    "The vault keeps your backup key behind this password and allows 10 wrong guesses; \
after that it destroys the key. Nobody can reset the password for you: if you forget it, \
you can still change it from this device, but a new phone can never restore the backup.";

/// Where the vault is and who is asking.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct VaultArgs {
    /// Vault URL (default: a vault embedded in this process, data in --vault-data).
    #[arg(long, env = "BACKLOCK_VAULT")]
    pub vault: Option<String>,
    /// Data directory of the embedded vault (default: the XDG data dir's backlock-vault).
    #[arg(long, env = "BACKLOCK_VAULT_DATA")]
    pub vault_data: Option<PathBuf>,
    /// Account the vault record belongs to (default with the embedded vault: `local`).
    #[arg(long, env = "BACKLOCK_ACCOUNT")]
    pub account: Option<String>,
    /// File holding the password (otherwise you are prompted).
    #[arg(long, env = "BACKLOCK_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// The vault public key to pin (hex, as the vault's operator publishes it and
    /// `vault serve` prints it). Required the first time a device uses a remote vault:
    /// the key a server presents on first contact is never trusted.
    #[arg(long, env = "BACKLOCK_VAULT_KEY")]
    pub vault_key: Option<String>,
    /// A signed fleet bundle file (`vault bundle`): the fleet's replicas and key, in
    /// place of --vault and --vault-key; needs --vault-signer.
    #[arg(long, env = "BACKLOCK_VAULT_BUNDLE", conflicts_with = "vault")]
    pub vault_bundle: Option<PathBuf>,
    /// The public key of the fleet's bundle signer (hex, as `vault bundle-key` printed
    /// it; the app ships it).
    #[arg(long, env = "BACKLOCK_VAULT_SIGNER")]
    pub vault_signer: Option<String>,
    /// Allow a remote vault over plain `http://` beyond this machine (a test network):
    /// anyone on the path sees which account asks, when, and how often.
    #[arg(long, env = "BACKLOCK_VAULT_INSECURE_HTTP")]
    pub insecure_http: bool,
    /// PEM file of the CA that signed an `https://` vault's certificate (default: the
    /// system's roots).
    #[arg(long, env = "BACKLOCK_VAULT_CA")]
    pub vault_ca: Option<PathBuf>,
    /// The environment variable holding a remote vault's account token, if not
    /// `BACKLOCK_TOKEN`: a command that reaches a second account (`copy
    /// --from-account`) reads that one's token from another.
    #[arg(skip)]
    pub token_var: Option<&'static str>,
}

impl VaultArgs {
    /// Whether the user named a vault or an account: a wish for password mode.
    pub fn given(&self) -> bool {
        self.vault.is_some() || self.vault_bundle.is_some() || self.account.is_some()
    }
}

/// A vault session: the client, the pinned key, and the embedded vault if there is one.
pub(crate) struct Session {
    pub runtime: tokio::runtime::Runtime,
    pub client: VaultClient,
    pub pinned: [u8; 32],
    pub ksf: Stretch,
    embedded: Option<RunningVault>,
}

impl Session {
    /// Runs a vault call to completion.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// Stops the embedded vault cleanly.
    pub fn close(mut self) {
        if let Some(v) = self.embedded.take() {
            self.runtime.block_on(v.shutdown());
        }
    }
}

fn default_vault_data() -> Result<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .context("cannot find a data directory for the embedded vault: set BACKLOCK_VAULT_DATA")?;
    Ok(data.join("backlock-vault"))
}

/// Starts an embedded vault in `data` on a loopback port.
pub(crate) fn start_embedded(
    runtime: &tokio::runtime::Runtime,
    data: &Path,
) -> Result<RunningVault> {
    runtime
        .block_on(RunningVault::start(ServeConfig {
            data: data.to_path_buf(),
            node_key: None,
            listen: ([127, 0, 0, 1], 0).into(),
            vault: VaultConfig::default(),
            tls: None,
            http: Default::default(),
            metrics_listen: None,
        }))
        .map_err(|e| VaultFailure::Unavailable(e.to_string()).into())
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

fn read_bundle(file: &Path, signer: Option<&str>, home: &DeviceHome) -> Result<Bundle> {
    use backlock_vault_proto::bundle::SignedBundle;
    let signer = signer.ok_or_else(|| {
        Usage("a fleet bundle needs the fleet's signer key: pass --vault-signer HEX (or set BACKLOCK_VAULT_SIGNER)".into())
    })?;
    let mut signer_key = [0u8; 32];
    hex::decode_to_slice(signer.trim(), &mut signer_key)
        .map_err(|_| Usage("--vault-signer must be 64 hex digits".into()))?;
    let text = std::fs::read_to_string(file).map_err(|e| {
        Usage(format!(
            "cannot read the fleet bundle {}: {e}",
            file.display()
        ))
    })?;
    let signed = SignedBundle::parse(&text)
        .map_err(|e| VaultFailure::WrongServer(format!("{}: {e}", file.display())))?;
    let (bundle, key) = signed
        .verify(&signer_key)
        .map_err(|e| VaultFailure::WrongServer(format!("{}: {e}", file.display())))?;
    let receipt_key = signed
        .receipt_key()
        .map_err(|e| VaultFailure::WrongServer(format!("{}: {e}", file.display())))?;
    let pin_name = format!("bundle:{}:{}", hex::encode(signer_key), bundle.fleet);
    // Once a bundle with the receipt key was taken, one without it (an older kind, which
    // anyone holding it could hand over) would turn the fleet's receipts off.
    if receipt_key.is_none() && home.vault_pin(&receipts_pin(&pin_name))?.is_some() {
        return Err(VaultFailure::WrongServer(format!(
            "{} has no receipt key, but this device took a bundle of fleet {} that has one: \
             a bundle of the older kind would turn off the fleet's signed receipts; get the \
             current bundle",
            file.display(),
            bundle.fleet
        ))
        .into());
    }
    if let Some(newest) = home.bundle_version(&pin_name)? {
        if bundle.version < newest {
            return Err(VaultFailure::WrongServer(format!(
                "{} is version {} of fleet {}, but this device already took version {newest}: an older bundle may list replicas or a key the fleet no longer uses; get the current one",
                file.display(),
                bundle.version,
                bundle.fleet
            ))
            .into());
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

/// Connects to the configured vault (starting the embedded one if none is named) and
/// pins its key.
pub(crate) fn connect(args: &VaultArgs, home: &DeviceHome) -> Result<Session> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let bundle = match &args.vault_bundle {
        Some(file) => Some(read_bundle(file, args.vault_signer.as_deref(), home)?),
        None => None,
    };
    let remote = match &bundle {
        Some(b) => Some(b.url.clone()),
        None => args.vault.clone(),
    };
    let (url, token, account, embedded, pin_name) = match &remote {
        Some(url) => {
            let insecure = VaultClient::insecure_replicas(url);
            if !insecure.is_empty() && !args.insecure_http {
                return Err(Usage(format!(
                    "the vault URL {} is not https:// (plain HTTP is allowed only to this machine): use the vault's https:// address, or pass --insecure-http on a test network",
                    insecure.join(", ")
                ))
                .into());
            }
            let account = args.account.clone().ok_or_else(|| {
                Usage(
                    "a remote vault needs an account: pass --account ID or set BACKLOCK_ACCOUNT"
                        .into(),
                )
            })?;
            let token_var = args.token_var.unwrap_or("BACKLOCK_TOKEN");
            let token = Zeroizing::new(std::env::var(token_var).map_err(|_| {
                Usage(format!(
                    "a remote vault needs the relay's token for account {account} in {token_var}"
                ))
            })?);
            let pin_name = match &bundle {
                Some(b) => b.pin_name.clone(),
                None => url.trim_end_matches('/').to_owned(),
            };
            (url.clone(), token, account, None, pin_name)
        }
        None => {
            let data = match &args.vault_data {
                Some(d) => d.clone(),
                None => default_vault_data()?,
            };
            let running = start_embedded(&runtime, &data)?;
            let account = args.account.clone().unwrap_or_else(|| LOCAL_ACCOUNT.into());
            let token = Zeroizing::new(
                running
                    .vault
                    .issue_token(&account, 600)
                    .map_err(|e| Usage(format!("--account: {e}")))?,
            );
            let name = format!(
                "embedded:{}",
                std::path::absolute(&data).unwrap_or(data).display()
            );
            (running.url(), token, account, Some(running), name)
        }
    };
    backlock_vault_proto::token::validate_account(&account)
        .map_err(|e| Usage(format!("--account: {e}")))?;
    let ca = match &args.vault_ca {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            Usage(format!(
                "cannot read the vault CA file {}: {e}",
                path.display()
            ))
        })?),
        None => None,
    };
    // Receipts are checked against a bundle's receipt key, or the embedded vault's own.
    let receipt_key = match (&bundle, &embedded) {
        (Some(b), _) => b.receipt_key,
        (None, Some(running)) => Some(running.vault.receipt_key()),
        (None, None) => None,
    };
    let client = VaultClient::with_ca(&url, &account, &token, ca.as_deref())
        .map_err(VaultFailure::from)?
        .with_receipt_key(receipt_key);
    let info = runtime
        .block_on(client.info())
        .map_err(VaultFailure::from)?;
    let presented = hex::encode(info.server_public_key);
    let stored = home.vault_pin(&pin_name)?;
    let pinned_hex = match (&args.vault_key, &stored) {
        // A verified bundle names the key, whatever was pinned from an older bundle.
        _ if bundle.is_some() => bundle.as_ref().map(|b| b.key.clone()).unwrap_or_default(),
        (Some(given), _) => given.trim().to_ascii_lowercase(),
        (None, Some(pinned)) => pinned.clone(),
        // The embedded vault runs in this process: what it presents is its own key.
        (None, None) if embedded.is_some() => {
            eprintln!("Pinning the vault's public key {presented} (first use of {pin_name}).");
            presented.clone()
        }
        (None, None) => {
            return Err(Usage(format!(
                "this device does not know the public key of the vault at {url}: pass --vault-key HEX (or set BACKLOCK_VAULT_KEY) as the vault's operator publishes it. \
                 backlock never trusts the key a server presents on first contact: whoever answered first could then guess the password without limit"
            ))
            .into())
        }
    };
    if pinned_hex != presented {
        return Err(VaultFailure::WrongServer(format!(
            "the vault at {url} presents public key {presented}, but this device pinned {pinned_hex}; \
             refusing to send it anything (if the vault was really re-created, remove its entry from {}/vault-pins.json)",
            home.root().display()
        ))
        .into());
    }
    if stored.as_deref() != Some(pinned_hex.as_str()) {
        home.pin_vault(&pin_name, &pinned_hex)?;
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
        embedded,
    })
}

/// Reads a password from `--password-file`, else a hidden prompt.
pub(crate) fn read_password(args: &VaultArgs, prompt: &str) -> Result<Password> {
    if let Some(path) = &args.password_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Usage(format!(
                "cannot read the password file {}: {e}",
                path.display()
            ))
        })?;
        return Ok(Password::new(text));
    }
    if !std::io::stdin().is_terminal() {
        return Err(Usage("no password given: pass --password-file FILE or set BACKLOCK_PASSWORD_FILE (passwords are never taken as arguments)".into()).into());
    }
    Ok(Password::new(rpassword::prompt_password(prompt)?))
}

/// A new password: the policy, then typed twice (a password file counts as typed twice).
pub(crate) fn read_new_password(args: &VaultArgs) -> Result<Password> {
    let password = read_password(args, "New password (at least 6 characters, one letter): ")?;
    password
        .check_policy()
        .map_err(|e| Usage(format!("{e}; choose another password")))?;
    if args.password_file.is_none() {
        let again = read_password(args, "Type it again: ")?;
        if !password.matches(&again) {
            return Err(Usage("the two passwords differ; nothing was changed".into()).into());
        }
    }
    Ok(password)
}

/// Maps a vault error to a CLI failure with its exit code.
impl From<VaultError> for VaultFailure {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::WrongPassword { attempts_left } => {
                VaultFailure::WrongPassword { attempts_left }
            }
            VaultError::Locked => VaultFailure::Locked,
            VaultError::NoKey => VaultFailure::NoKey,
            VaultError::Unavailable(m) => VaultFailure::Unavailable(m),
            e @ VaultError::RateLimited { .. } => VaultFailure::Busy(e.to_string()),
            VaultError::WrongServer(m) => VaultFailure::WrongServer(m),
            other => VaultFailure::Other(other.to_string()),
        }
    }
}
