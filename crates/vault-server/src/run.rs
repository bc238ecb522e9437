//! Running a whole vault: data directory, node key, secrets, the Raft node, the HTTP API
//! and housekeeping (docs/VAULT.md §Operating a vault, docs/OPERATIONS.md).
//!
//! [`RunningVault::start`] runs a one-replica vault (the embedded default);
//! [`RunningVault::start_fleet`] runs one replica of a fleet from its configuration file,
//! with a second listener for its peers behind mutual TLS.

use crate::api;
use crate::fleet_config::FleetConfig;
use crate::http::{self, HttpLimits};
use crate::pkcs11::{Pkcs11Sealer, TokenConfig};
use crate::raft::{Bootstrap, HttpNetwork, NodeConfig, VaultNode, VoteGate};
use crate::seal::{KeyFileSealer, Sealer};
use crate::secrets::VaultSecrets;
use crate::service::{Vault, VaultConfig};
use backlock_vault_proto::token::{FleetId, TokenKeys};
use serde::Deserialize;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Marks a replica that joined (or rejoined after losing its data) and has not yet
/// been confirmed by the leader as holding the whole log: it does not vote meanwhile.
pub const JOINING_MARKER: &str = "joining";

/// Where and how to run a one-replica vault.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Data directory (log, snapshot, sealed secrets).
    pub data: PathBuf,
    /// Node key file; `DATA/node.key` when `None`.
    pub node_key: Option<PathBuf>,
    /// Address for the device API; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Guess limit, session lifetime and rate limits.
    pub vault: VaultConfig,
    /// Serve HTTPS with this certificate chain and key (PEM files); plain HTTP if `None`.
    pub tls: Option<TlsFiles>,
    /// Time-outs and connection limits of the device API.
    pub http: HttpLimits,
    /// Address for `/metrics` (for monitoring, apart from the device API); none if
    /// `None`.
    pub metrics_listen: Option<SocketAddr>,
}

impl ServeConfig {
    /// A vault for this machine alone, with its data in `data`: plain HTTP on a free
    /// loopback port, the default guess limit and limits, no `/metrics`. The vault a
    /// device embeds (the command's default, an app's `embedded_data`), and the tests'.
    pub fn loopback(data: impl Into<PathBuf>) -> Self {
        ServeConfig {
            data: data.into(),
            node_key: None,
            listen: ([127, 0, 0, 1], 0).into(),
            vault: VaultConfig::default(),
            tls: None,
            http: HttpLimits::default(),
            metrics_listen: None,
        }
    }
}

/// PEM files of the API's TLS certificate chain and private key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf.
    pub key: PathBuf,
}

/// Why a vault did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Another process holds the data directory.
    #[error("the vault data directory {0} is in use by another process (a running `backlock vault serve`, or another backlock command using the embedded vault); stop it or wait")]
    InUse(PathBuf),
    /// Reading or creating the data directory or node key failed.
    #[error("{0}")]
    Setup(String),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A vault serving on a socket until [`RunningVault::shutdown`].
pub struct RunningVault {
    /// The bound address.
    pub addr: SocketAddr,
    tls: bool,
    /// The bound address of `/metrics`, if it is served.
    pub metrics_addr: Option<SocketAddr>,
    /// The service, for tests and the embedded vault.
    pub vault: Arc<Vault>,
    servers: Vec<http::Server>,
    /// Background work that holds the vault: housekeeping, a pending join.
    tasks: Vec<JoinHandle<()>>,
    _lock: File,
}

/// Creates the data directory readable by its owner only.
pub(crate) fn create_data_dir(dir: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            ServeError::Setup(format!(
                "cannot create the vault data directory {}: {e}",
                dir.display()
            ))
        })
}

pub(crate) fn lock_data_dir(dir: &Path) -> Result<File, ServeError> {
    use fs2::FileExt;
    create_data_dir(dir)?;
    let path = dir.join("lock");
    let file = File::create(&path)
        .map_err(|e| ServeError::Setup(format!("cannot create {}: {e}", path.display())))?;
    file.try_lock_exclusive()
        .map_err(|_| ServeError::InUse(dir.to_path_buf()))?;
    Ok(file)
}

/// The node key of a data directory, created on first use.
pub fn open_sealer(data: &Path, node_key: Option<&Path>) -> Result<Arc<dyn Sealer>, ServeError> {
    let path = node_key
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data.join("node.key"));
    create_data_dir(data)?;
    let sealer =
        KeyFileSealer::open_or_create(&path).map_err(|e| ServeError::Setup(e.to_string()))?;
    Ok(Arc::new(sealer))
}

/// The node key a fleet replica's configuration names: a PKCS#11 token, or a key file.
pub fn open_fleet_sealer(config: &FleetConfig) -> Result<Arc<dyn Sealer>, ServeError> {
    let Some(hsm) = &config.pkcs11 else {
        return open_sealer(&config.data, config.node_key.as_deref());
    };
    create_data_dir(&config.data)?;
    let pin = match &hsm.pin_file {
        Some(file) => std::fs::read_to_string(file)
            .map(|pin| pin.trim_end_matches(['\r', '\n']).to_owned())
            .map_err(|e| {
                ServeError::Setup(format!("cannot read the PIN file {}: {e}", file.display()))
            })?,
        None => std::env::var("BACKLOCK_HSM_PIN").map_err(|_| {
            ServeError::Setup(
                "the [pkcs11] token needs a PIN: set pin_file in the configuration or BACKLOCK_HSM_PIN"
                    .to_owned(),
            )
        })?,
    };
    let sealer = Pkcs11Sealer::open_or_create(&TokenConfig {
        module: hsm.module.clone(),
        token_label: hsm.token_label.clone(),
        pin: zeroize::Zeroizing::new(pin),
        key_label: hsm.key_label.clone(),
    })
    .map_err(|e| ServeError::Setup(e.to_string()))?;
    Ok(Arc::new(sealer))
}

/// Loads the sealed secrets of an existing vault (for `vault token`).
pub fn load_secrets(data: &Path, node_key: Option<&Path>) -> Result<VaultSecrets, ServeError> {
    if !data.join(crate::secrets::FILE).exists() {
        return Err(ServeError::Setup(format!(
            "{} holds no vault: start one with `backlock vault serve --data {}` first",
            data.display(),
            data.display()
        )));
    }
    let sealer = open_sealer(data, node_key)?;
    VaultSecrets::load_or_create(data, sealer.as_ref())
        .map_err(|e| ServeError::Setup(e.to_string()))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, ServeError> {
    listener.local_addr().map_err(|source| ServeError::Listen {
        addr: ([0, 0, 0, 0], 0).into(),
        source,
    })
}

/// Serves the device API on `listener`, over TLS if `tls` names files, and `/metrics`
/// on its own listener if one is given.
async fn serve_api(
    listener: TcpListener,
    vault: Arc<Vault>,
    tls: Option<&TlsFiles>,
    limits: &HttpLimits,
    metrics: Option<TcpListener>,
) -> Result<Vec<http::Server>, ServeError> {
    let acceptor = match tls {
        None => None,
        Some(files) => {
            let config =
                axum_server::tls_rustls::RustlsConfig::from_pem_file(&files.cert, &files.key)
                    .await
                    .map_err(|e| {
                        ServeError::Setup(format!(
                            "cannot load the TLS certificate {} and key {}: {e}",
                            files.cert.display(),
                            files.key.display()
                        ))
                    })?;
            let mut config = (*config.get_inner()).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
        }
    };
    let mut servers = vec![http::serve(
        listener,
        api::router(vault.clone()),
        acceptor,
        limits.clone(),
    )];
    if let Some(listener) = metrics {
        servers.push(http::serve(
            listener,
            api::metrics_router(vault),
            None,
            limits.clone(),
        ));
    }
    Ok(servers)
}

/// Housekeeping every second: expired sessions, exhausted records.
fn start_sweeper(vault: Arc<Vault>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            vault.sweep().await;
        }
    })
}

impl RunningVault {
    /// Opens (or creates) the vault in `config.data` and serves it.
    pub async fn start(config: ServeConfig) -> Result<RunningVault, ServeError> {
        let lock = lock_data_dir(&config.data)?;
        let sealer = open_sealer(&config.data, config.node_key.as_deref())?;
        let secrets = VaultSecrets::load_or_create(&config.data, sealer.as_ref())
            .map_err(|e| ServeError::Setup(e.to_string()))?;
        config.http.check().map_err(ServeError::Setup)?;
        let listener = bind(config.listen).await?;
        let addr = local_addr(&listener)?;
        let metrics = match config.metrics_listen {
            Some(at) => Some(bind(at).await?),
            None => None,
        };
        let metrics_addr = metrics.as_ref().map(local_addr).transpose()?;
        let node = VaultNode::start(NodeConfig::local(
            config.data.join("raft"),
            sealer,
            1,
            addr.to_string(),
        ))
        .await
        .map_err(|e| ServeError::Setup(e.to_string()))?;
        let VaultSecrets { server, tokens } = secrets;
        let tokens = TokenKeys::new(FleetId::of(&server.public_key()), 1, tokens);
        let vault = Arc::new(Vault::new(node, server, tokens, config.vault));
        let servers = serve_api(
            listener,
            vault.clone(),
            config.tls.as_ref(),
            &config.http,
            metrics,
        )
        .await?;
        tracing::info!(%addr, public_key = %hex::encode(vault.info().server_public_key), "vault serving");
        warn_bench_fill();
        Ok(RunningVault {
            addr,
            tls: config.tls.is_some(),
            metrics_addr,
            tasks: vec![start_sweeper(vault.clone())],
            vault,
            servers,
            _lock: lock,
        })
    }

    /// Runs one replica of a fleet, as its configuration file says. The replica must
    /// have been set up with `vault init` (the first) or `vault join` (the others).
    /// Serves at once; device requests get "unavailable" until a leader is known.
    pub async fn start_fleet(config: &FleetConfig) -> Result<RunningVault, ServeError> {
        // Certificates first: a configuration that cannot work creates nothing.
        let peer_tls = config
            .fleet_tls
            .load()
            .map_err(|e| ServeError::Setup(e.to_string()))?;
        let lock = lock_data_dir(&config.data)?;
        let sealer = open_fleet_sealer(config)?;
        let secrets = VaultSecrets::load(&config.data, sealer.as_ref())
            .map_err(|e| ServeError::Setup(e.to_string()))?
            .ok_or_else(|| {
                ServeError::Setup(format!(
                    "{} holds no fleet secret: run `backlock vault init` on the first replica, `backlock vault join` on the others",
                    config.data.display()
                ))
            })?;
        let source = Some(config.peer_listen.ip()).filter(|ip| !ip.is_unspecified());
        let client = peer_tls
            .http_client(source)
            .map_err(|e| ServeError::Setup(e.to_string()))?;
        let api_listener = bind(config.listen).await?;
        let addr = local_addr(&api_listener)?;
        let metrics = match config.metrics_listen {
            Some(at) => Some(bind(at).await?),
            None => None,
        };
        let metrics_addr = metrics.as_ref().map(local_addr).transpose()?;
        let peer_listener = bind(config.peer_listen).await?;
        let joining = config.data.join(JOINING_MARKER);
        // Closed on every start: a joining replica votes once the leader confirms it
        // holds the log, a restarted one once enough members confirm its state is
        // current (raft/rollback.rs).
        let votes = VoteGate::new(false);
        let node = VaultNode::start_with(
            NodeConfig {
                dir: config.data.join("raft"),
                sealer,
                node_id: config.node_id,
                addr: config.peer_address(),
                network: HttpNetwork::mutual_tls(client),
                votes,
                counter: config.rollback_counter()?,
                epoch_length: std::time::Duration::from_secs(config.epoch_secs),
            },
            Bootstrap::Join,
        )
        .await
        .map_err(|e| ServeError::Setup(e.to_string()))?;
        let configured = config.replicas.iter().map(|r| r.id).collect();
        let peer_app = node.fleet_peer_router(secrets.to_transfer(), configured);
        let VaultSecrets { server, tokens } = secrets;
        let tokens = config.token_keys(&server.public_key(), tokens)?;
        let vault = Arc::new(Vault::new(node, server, tokens, config.vault()));
        let mut peer_server = (*peer_tls.server).clone();
        peer_server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let peer_server = http::serve(
            peer_listener,
            peer_app,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(peer_server))),
            HttpLimits::peers(),
        );
        let mut servers = serve_api(
            api_listener,
            vault.clone(),
            config.api_tls.as_ref(),
            &config.http,
            metrics,
        )
        .await?;
        // Stopped last: peers keep hearing from this replica while devices drain.
        servers.push(peer_server);
        let mut tasks = vec![start_sweeper(vault.clone())];
        if joining.exists() {
            tasks.push(tokio::spawn(finish_join(
                vault.clone(),
                config.other_peers(),
                joining,
            )));
        } else {
            let (vault, contacts) = (vault.clone(), config.other_peers());
            tasks.push(tokio::spawn(async move {
                vault.node().confirm_current(&contacts).await;
            }));
        }
        tracing::info!(%addr, node_id = config.node_id, public_key = %hex::encode(vault.info().server_public_key), "vault replica serving");
        warn_bench_fill();
        Ok(RunningVault {
            addr,
            tls: config.api_tls.is_some(),
            metrics_addr,
            vault,
            servers,
            tasks,
            _lock: lock,
        })
    }

    /// The base URL of the device API.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops serving and shuts the node down cleanly.
    pub async fn shutdown(mut self) {
        for server in self.servers.drain(..) {
            server.stop(Duration::from_secs(5)).await;
        }
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        match Arc::try_unwrap(self.vault) {
            Ok(vault) => vault.into_node().shutdown().await,
            Err(_) => tracing::warn!(
                "vault still referenced at shutdown; the node stops with the process"
            ),
        }
    }
}

/// Asks the leader to confirm this replica as a voter holding the whole log, then drops
/// the joining marker: from then on the replica votes, after restarts too.
async fn finish_join(vault: Arc<Vault>, contacts: Vec<String>, marker: PathBuf) {
    let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    match vault.node().join(&contacts, far).await {
        Ok(()) => {
            if let Err(e) = std::fs::remove_file(&marker) {
                tracing::error!(error = %e, marker = %marker.display(), "joined, but cannot remove the joining marker; remove it by hand");
            } else {
                tracing::info!("joined the fleet: this replica holds the whole log and votes");
            }
        }
        Err(e) => tracing::error!(error = %e, "could not join the fleet"),
    }
}

/// A build with the `bench-fill` feature says so at every start: its API registers
/// synthetic accounts without a token.
fn warn_bench_fill() {
    #[cfg(feature = "bench-fill")]
    tracing::warn!(
        path = crate::bench_fill::PATH,
        "this build registers synthetic accounts without a token (feature bench-fill): for benchmarks only"
    );
}
