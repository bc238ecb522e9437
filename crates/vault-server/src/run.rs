//! Running a whole vault: data directory, node key, secrets, the Raft node, the HTTP API
//! and housekeeping (docs/VAULT.md §Operating a vault).

use crate::api;
use crate::raft::{NodeConfig, VaultNode};
use crate::seal::{KeyFileSealer, Sealer};
use crate::secrets::VaultSecrets;
use crate::service::{Vault, VaultConfig};
use axum::serve::ListenerExt;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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
}

/// PEM files of the API's TLS certificate chain and private key.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf.
    pub key: PathBuf,
}

/// How to stop the HTTP server gracefully.
enum Stop {
    Plain(Option<oneshot::Sender<()>>),
    Tls(axum_server::Handle),
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
    /// The service, for tests and the embedded vault.
    pub vault: Arc<Vault>,
    stop: Stop,
    server: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    _lock: File,
}

/// Creates the data directory readable by its owner only.
fn create_data_dir(dir: &Path) -> Result<(), ServeError> {
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

fn lock_data_dir(dir: &Path) -> Result<File, ServeError> {
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

impl RunningVault {
    /// Opens (or creates) the vault in `config.data` and serves it.
    pub async fn start(config: ServeConfig) -> Result<RunningVault, ServeError> {
        let lock = lock_data_dir(&config.data)?;
        let sealer = open_sealer(&config.data, config.node_key.as_deref())?;
        let secrets = VaultSecrets::load_or_create(&config.data, sealer.as_ref())
            .map_err(|e| ServeError::Setup(e.to_string()))?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServeError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
        let node = VaultNode::start(NodeConfig {
            dir: config.data.join("raft"),
            sealer,
            node_id: 1,
            addr: addr.to_string(),
        })
        .await
        .map_err(|e| ServeError::Setup(e.to_string()))?;
        let VaultSecrets { server, tokens } = secrets;
        let vault = Arc::new(Vault::new(node, server, tokens, config.vault));
        let app = api::router(vault.clone());
        let (stop, server) = match &config.tls {
            None => {
                let (stop, stopped) = oneshot::channel::<()>();
                // Small replies must not wait for the client's delayed ACK (Nagle).
                let listener = listener.tap_io(|tcp| {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                });
                let server = tokio::spawn(async move {
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                        let _ = stopped.await;
                    });
                    if let Err(e) = serve.await {
                        tracing::error!(error = %e, "vault HTTP server stopped");
                    }
                });
                (Stop::Plain(Some(stop)), server)
            }
            Some(files) => {
                let tls =
                    axum_server::tls_rustls::RustlsConfig::from_pem_file(&files.cert, &files.key)
                        .await
                        .map_err(|e| {
                            ServeError::Setup(format!(
                                "cannot load the TLS certificate {} and key {}: {e}",
                                files.cert.display(),
                                files.key.display()
                            ))
                        })?;
                let std_listener = listener.into_std().map_err(|source| ServeError::Listen {
                    addr: config.listen,
                    source,
                })?;
                let handle = axum_server::Handle::new();
                let serve = axum_server::from_tcp_rustls(std_listener, tls)
                    .handle(handle.clone())
                    .serve(app.into_make_service());
                let server = tokio::spawn(async move {
                    if let Err(e) = serve.await {
                        tracing::error!(error = %e, "vault HTTPS server stopped");
                    }
                });
                (Stop::Tls(handle), server)
            }
        };
        let sweeping = vault.clone();
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                sweeping.sweep().await;
            }
        });
        tracing::info!(%addr, public_key = %hex::encode(vault.info().server_public_key), "vault serving");
        Ok(RunningVault {
            addr,
            tls: config.tls.is_some(),
            vault,
            stop,
            server,
            sweeper,
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
        match &mut self.stop {
            Stop::Plain(stop) => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
            }
            Stop::Tls(handle) => handle.graceful_shutdown(Some(Duration::from_secs(5))),
        }
        self.sweeper.abort();
        let _ = (&mut self.server).await;
        match Arc::try_unwrap(self.vault) {
            Ok(vault) => vault.into_node().shutdown().await,
            Err(_) => tracing::warn!(
                "vault still referenced at shutdown; the node stops with the process"
            ),
        }
    }
}
