//! `backlock vault …`: run a vault (one replica, or a fleet replica from its
//! configuration file), set up and inspect a fleet, issue development tokens, delete a
//! record.

use crate::exit::{Usage, VaultFailure};
use crate::fleet_certs;
use crate::password_mode;
use anyhow::{Context, Result};
use backlock_vault_proto::token::{FleetId, TokenKeys, TokenSecret};
use backlock_vault_server::fleet;
use backlock_vault_server::fleet_config::FleetConfig;
use backlock_vault_server::run::{load_secrets, RunningVault, ServeConfig, TlsFiles};
use backlock_vault_server::service::VaultConfig;
use clap::Subcommand;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Subcommand)]
pub(crate) enum VaultCommand {
    /// Run a vault until interrupted (Ctrl-C or SIGTERM): one replica of a fleet with
    /// --config, or a one-replica vault with --data.
    Serve {
        /// A fleet replica's configuration file (docs/OPERATIONS.md); the other options
        /// then come from it.
        #[arg(long, conflicts_with_all = ["data", "node_key", "tls_cert"])]
        config: Option<PathBuf>,
        /// Data directory of a one-replica vault (created on first start, with its
        /// secrets).
        #[arg(long, required_unless_present = "config")]
        data: Option<PathBuf>,
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
        /// Serve /metrics on this address (for monitoring; it needs no credential).
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
    },
    /// Create the fleet secret and a one-member fleet on the first replica (once).
    Init {
        /// This replica's configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Fetch the fleet secret from a running member (over mutual TLS) with a ticket from
    /// `vault admit`; the replica then joins as a voter when `vault serve` starts. Also
    /// brings back a wiped replica.
    Join {
        /// This replica's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The join ticket `vault admit --replica ID` printed for this replica (64 hex
        /// digits; used once).
        #[arg(long, env = "BACKLOCK_JOIN_TICKET", hide_env_values = true)]
        ticket: String,
    },
    /// Issue a one-time join ticket for replica ID (run on a member's host; valid for
    /// --valid-minutes, committed through the fleet).
    Admit {
        /// A member's configuration file (its certificate is used to ask).
        #[arg(long)]
        config: PathBuf,
        /// The id of the replica to admit (its certificate must name it).
        #[arg(long)]
        replica: u64,
        /// Minutes the ticket stays valid.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=1440))]
        valid_minutes: u64,
    },
    /// Show the leader, term, commit index and each replica's health and lag.
    Status {
        /// A replica's configuration file (its fleet certificate is used to ask), or a
        /// copy of one on a monitoring host, with --cert and --key.
        #[arg(long)]
        config: PathBuf,
        /// A monitoring certificate (`vault certs --monitor NAME`) instead of the
        /// replica's: it may read status and nothing else.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// The monitoring certificate's key.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a replica from the fleet (a site retired, or replaced by a new one).
    Remove {
        /// A replica's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Id of the replica to remove.
        #[arg(long)]
        replica: u64,
    },
    /// Create the fleet CA (once) and a certificate per replica for mutual TLS.
    Certs(fleet_certs::CertsArgs),
    /// Create the fleet's offline signing key for bundles (once); prints its public half.
    BundleKey {
        /// The key file to create (mode 0600); keep it offline.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a fleet bundle: the replicas' URLs and the fleet's public key, for devices.
    Bundle(crate::fleet_bundle::BundleArgs),
    /// Create a token secret for the relay (a rotation): 64 hex digits in a new file
    /// (mode 0600), listed as [[token_keys]] in every replica's configuration.
    TokenKey {
        /// The file to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a development account token, as the relay would issue.
    Token {
        /// A one-replica vault's data directory.
        #[arg(long, required_unless_present = "config", conflicts_with = "config")]
        data: Option<PathBuf>,
        /// A fleet replica's configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
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
            config: Some(config),
            ..
        } => {
            let config = load_config(&config)?;
            block_on(async {
                let running = RunningVault::start_fleet(&config)
                    .await
                    .map_err(|e| VaultFailure::Other(e.to_string()))?;
                println!(
                    "vault public key: {}",
                    hex::encode(running.vault.info().server_public_key)
                );
                println!(
                    "replica {} listening on {}, peers on {}",
                    config.node_id,
                    running.url(),
                    config.peer_listen
                );
                println!(
                    "vault receipt key: {}",
                    hex::encode(running.vault.receipt_key())
                );
                wait_for_stop().await;
                running.shutdown().await;
                Ok::<_, anyhow::Error>(())
            })?
        }
        VaultCommand::Serve {
            config: None,
            data,
            listen,
            node_key,
            max_attempts,
            account_burst,
            account_rate,
            tls_cert,
            tls_key,
            metrics_listen,
        } => {
            let data = data.ok_or_else(|| Usage("give --data DIR or --config FILE".into()))?;
            // A NaN passes `<= 0.0` and would turn the rate limit off.
            if max_attempts == 0
                || account_burst == 0
                || !(account_rate.is_finite() && account_rate > 0.0)
            {
                return Err(Usage(
                    "--max-attempts, --account-burst and --account-rate must be finite numbers above zero".into(),
                )
                .into());
            }
            block_on(async {
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
                    http: Default::default(),
                    metrics_listen,
                };
                let running = RunningVault::start(config)
                    .await
                    .map_err(|e| VaultFailure::Unavailable(e.to_string()))?;
                // Operators and scripts read these lines (key, address, receipt key), in this order.
                println!(
                    "vault public key: {}",
                    hex::encode(running.vault.info().server_public_key)
                );
                println!("listening on {}", running.url());
                println!(
                    "vault receipt key: {}",
                    hex::encode(running.vault.receipt_key())
                );
                wait_for_stop().await;
                running.shutdown().await;
                Ok::<_, anyhow::Error>(())
            })?
        }
        VaultCommand::Init { config } => {
            let config = load_config(&config)?;
            let public_key = block_on(fleet::init(&config))?.map_err(|e| Usage(e.to_string()))?;
            println!("vault public key: {}", hex::encode(public_key));
            println!(
                "fleet initialised with replica {}: start it with `backlock vault serve --config`, then run `backlock vault join` on each other replica",
                config.node_id
            );
            Ok(())
        }
        VaultCommand::Join { config, ticket } => {
            let config = load_config(&config)?;
            let ticket = fleet::JoinTicket::from_hex(&ticket).ok_or_else(|| {
                Usage(
                    "the join ticket is 64 hex digits, as `backlock vault admit` printed it".into(),
                )
            })?;
            let public_key = block_on(fleet::join(&config, &ticket))?
                .map_err(|e| VaultFailure::Unavailable(e.to_string()))?;
            println!("vault public key: {}", hex::encode(public_key));
            println!(
                "replica {} holds the fleet secret: start it with `backlock vault serve --config`; it joins as a voter once it has caught up",
                config.node_id
            );
            Ok(())
        }
        VaultCommand::Admit {
            config,
            replica,
            valid_minutes,
        } => {
            let config = load_config(&config)?;
            let valid = std::time::Duration::from_secs(valid_minutes * 60);
            let ticket = block_on(fleet::admit(&config, replica, valid))?
                .map_err(|e| VaultFailure::Unavailable(e.to_string()))?;
            println!("{}", ticket.to_hex().as_str());
            eprintln!(
                "join ticket for replica {replica}, valid {valid_minutes} min, usable once: on its host run `BACKLOCK_JOIN_TICKET=<ticket> backlock vault join --config FILE`"
            );
            Ok(())
        }
        VaultCommand::Status {
            config,
            cert,
            key,
            json,
        } => {
            let mut config = load_config(&config)?;
            if let (Some(cert), Some(key)) = (cert, key) {
                config.fleet_tls.cert = cert;
                config.fleet_tls.key = key;
            }
            let views = block_on(fleet::status(&config))?.map_err(|e| Usage(e.to_string()))?;
            crate::fleet_status::print(&views, json)
        }
        VaultCommand::Remove { config, replica } => {
            let config = load_config(&config)?;
            block_on(fleet::remove(&config, replica))?
                .map_err(|e| VaultFailure::Unavailable(e.to_string()))?;
            println!("replica {replica} removed from the fleet");
            Ok(())
        }
        VaultCommand::Certs(args) => fleet_certs::run(&args),
        VaultCommand::BundleKey { out } => crate::fleet_bundle::new_key(&out),
        VaultCommand::Bundle(args) => crate::fleet_bundle::sign(&args),
        VaultCommand::TokenKey { out } => {
            let secret = TokenSecret::generate();
            let text =
                zeroize::Zeroizing::new(format!("{}\n", hex::encode(secret.expose_secret())));
            fleet_certs::write_new(&out, &text, 0o600)?;
            println!(
                "token secret written to {}: give it to the relay and list it as [[token_keys]] on every replica",
                out.display()
            );
            Ok(())
        }
        VaultCommand::Token {
            data,
            config,
            account,
            ttl,
            node_key,
        } => {
            let keys = match (data, config) {
                (Some(data), _) => load_secrets(&data, node_key.as_deref())
                    .map(|s| TokenKeys::new(FleetId::of(&s.server.public_key()), 1, s.tokens)),
                (None, Some(config)) => {
                    let config = load_config(&config)?;
                    load_fleet_secrets(&config)
                        .and_then(|s| config.token_keys(&s.server.public_key(), s.tokens))
                }
                (None, None) => return Err(Usage("give --data DIR or --config FILE".into()).into()),
            }
            .map_err(|e| Usage(e.to_string()))?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let token = keys
                .issue(&account, now, now + ttl)
                .map_err(|e| Usage(format!("cannot issue the token: {e}")))?;
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

fn load_config(path: &std::path::Path) -> Result<FleetConfig> {
    FleetConfig::load(path).map_err(|e| Usage(e.to_string()).into())
}

fn load_fleet_secrets(
    config: &FleetConfig,
) -> Result<backlock_vault_server::secrets::VaultSecrets, backlock_vault_server::run::ServeError> {
    let sealer = backlock_vault_server::run::open_fleet_sealer(config)?;
    backlock_vault_server::secrets::VaultSecrets::load(&config.data, sealer.as_ref())
        .map_err(|e| backlock_vault_server::run::ServeError::Setup(e.to_string()))?
        .ok_or_else(|| {
            backlock_vault_server::run::ServeError::Setup(format!(
                "{} holds no fleet secret yet: run `backlock vault init` or `backlock vault join`",
                config.data.display()
            ))
        })
}

fn block_on<T, E>(work: impl std::future::Future<Output = Result<T, E>>) -> Result<Result<T, E>> {
    Ok(tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")?
        .block_on(work))
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
