//! Password mode: reaching the Backup Key Vault (remote, or embedded in this process),
//! pinning its key, and reading passwords (docs/VAULT.md §Device flows).

use crate::exit::{Usage, VaultFailure};
use anyhow::{Context, Result};
use backlock::ConnectError;
use backlock_repo::DeviceHome;
use backlock_vault_client::VaultError;
use backlock_vault_proto::password::Password;
use backlock_vault_server::run::{RunningVault, ServeConfig};
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

/// A vault session: the SDK's, so that the command and the apps reach a vault alike.
pub(crate) use backlock::Session;

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
        .block_on(RunningVault::start(ServeConfig::loopback(
            data.to_path_buf(),
        )))
        .map_err(|e| VaultFailure::Unavailable(e.to_string()).into())
}

/// Connects to the configured vault (starting the embedded one if none is named) and
/// pins its key, through the SDK's one implementation ([`backlock::connect`]); here
/// only the flags become its configuration.
pub(crate) fn connect(args: &VaultArgs, home: &DeviceHome) -> Result<Session> {
    let bundle = match &args.vault_bundle {
        Some(file) => Some(std::fs::read_to_string(file).map_err(|e| {
            Usage(format!(
                "cannot read the fleet bundle {}: {e}",
                file.display()
            ))
        })?),
        None => None,
    };
    if bundle.is_some() && args.vault_signer.is_none() {
        return Err(Usage("a fleet bundle needs the fleet's signer key: pass --vault-signer HEX (or set BACKLOCK_VAULT_SIGNER)".into()).into());
    }
    let remote = bundle.is_some() || args.vault.is_some();
    let (account, token, embedded_data) = if remote {
        let account = args.account.clone().ok_or_else(|| {
            Usage(
                "a remote vault needs an account: pass --account ID or set BACKLOCK_ACCOUNT".into(),
            )
        })?;
        let token_var = args.token_var.unwrap_or("BACKLOCK_TOKEN");
        let token = Zeroizing::new(std::env::var(token_var).map_err(|_| {
            Usage(format!(
                "a remote vault needs the relay's token for account {account} in {token_var}"
            ))
        })?);
        let token = backlock::AccountToken::new(token.to_string())
            .map_err(|e| Usage(format!("{token_var}: {e}")))?;
        (account, Some(token), None)
    } else {
        let data = match &args.vault_data {
            Some(d) => d.clone(),
            None => default_vault_data()?,
        };
        let account = args.account.clone().unwrap_or_else(|| LOCAL_ACCOUNT.into());
        let data = data.into_os_string().into_string().map_err(|data| {
            Usage(format!(
                "the embedded vault's data directory {} is not valid UTF-8: pass --vault-data DIR with a UTF-8 path",
                PathBuf::from(data).display()
            ))
        })?;
        (account, None, Some(data))
    };
    let ca_pem = match &args.vault_ca {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            Usage(format!(
                "cannot read the vault CA file {}: {e}",
                path.display()
            ))
        })?),
        None => None,
    };
    let config = backlock::VaultConfig {
        urls: args.vault.iter().cloned().collect(),
        public_key: args.vault_key.clone(),
        account,
        token,
        ca_pem,
        insecure_http: args.insecure_http,
        embedded_data,
        bundle,
        bundle_signer: args.vault_signer.clone(),
    };
    let session = backlock::connect(&config, home).map_err(|e| match e {
        ConnectError::Vault(e) => anyhow::Error::from(VaultFailure::from(e)),
        ConnectError::Invalid(m) => Usage(m).into(),
        ConnectError::Device(e) => e.into(),
    })?;
    if let Some(key) = &session.first_pin {
        eprintln!("Pinning the embedded vault's public key {key} (its first use on this device).");
    }
    Ok(session)
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
