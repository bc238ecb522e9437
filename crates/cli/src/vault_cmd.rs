//! `backlock vault …`: run a vault, issue development tokens, delete a record.

use crate::exit::{Usage, VaultFailure};
use crate::password_mode;
use anyhow::{Context, Result};
use backlock_vault_server::run::{load_secrets, RunningVault, ServeConfig, TlsFiles};
use backlock_vault_server::service::VaultConfig;
use clap::Subcommand;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Subcommand)]
pub(crate) enum VaultCommand {
    /// Run a one-replica vault until interrupted (Ctrl-C or SIGTERM).
    Serve {
        /// Data directory (created on first start, with the vault's secrets).
        #[arg(long)]
        data: PathBuf,
        /// Address for the device API.
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: SocketAddr,
        /// Node key file (default: DATA/node.key). Keep it apart from backups of DATA.
        #[arg(long)]
        node_key: Option<PathBuf>,
        /// Wrong guesses allowed per record.
        #[arg(long, default_value_t = 10)]
        max_attempts: u32,
        /// Requests per account allowed in a burst.
        #[arg(long, default_value_t = 20)]
        account_burst: u32,
        /// Requests per account per second, sustained.
        #[arg(long, default_value_t = 1.0)]
        account_rate: f64,
        /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Print a development account token, as the relay would issue.
    Token {
        /// The vault's data directory.
        #[arg(long)]
        data: PathBuf,
        /// Account to vouch for.
        #[arg(long)]
        account: String,
        /// Validity in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Node key file (default: DATA/node.key).
        #[arg(long)]
        node_key: Option<PathBuf>,
    },
    /// Delete this account's vault record (needs the key this device holds).
    Delete {
        #[command(flatten)]
        repo: crate::RepoArgs,
        /// Confirm: the password will no longer open the backup.
        #[arg(long)]
        yes: bool,
    },
}

pub(crate) fn run(command: VaultCommand) -> Result<()> {
    match command {
        VaultCommand::Serve {
            data,
            listen,
            node_key,
            max_attempts,
            account_burst,
            account_rate,
            tls_cert,
            tls_key,
        } => {
            if max_attempts == 0 || account_burst == 0 || account_rate <= 0.0 {
                return Err(Usage(
                    "--max-attempts, --account-burst and --account-rate must be above zero".into(),
                )
                .into());
            }
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(async {
                let config = ServeConfig {
                    data,
                    node_key,
                    listen,
                    tls: tls_cert
                        .zip(tls_key)
                        .map(|(cert, key)| TlsFiles { cert, key }),
                    vault: VaultConfig {
                        max_attempts,
                        account_burst,
                        account_rate,
                        ..VaultConfig::default()
                    },
                };
                let running = RunningVault::start(config)
                    .await
                    .map_err(|e| VaultFailure::Unavailable(e.to_string()))?;
                // Operators and scripts read these two lines.
                println!(
                    "vault public key: {}",
                    hex::encode(running.vault.info().server_public_key)
                );
                println!("listening on {}", running.url());
                wait_for_stop().await;
                running.shutdown().await;
                Ok(())
            })
        }
        VaultCommand::Token {
            data,
            account,
            ttl,
            node_key,
        } => {
            let secrets =
                load_secrets(&data, node_key.as_deref()).map_err(|e| Usage(e.to_string()))?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let token = secrets
                .tokens
                .issue(&account, now + ttl)
                .map_err(|e| Usage(format!("--account: {e}")))?;
            println!("{token}");
            Ok(())
        }
        VaultCommand::Delete { repo, yes } => password_mode::delete(
            &repo.repo,
            repo.key_file.as_deref(),
            &repo.vault,
            yes,
            repo.json,
        ),
    }
}

async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
