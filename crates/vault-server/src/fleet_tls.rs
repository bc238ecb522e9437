//! Mutual TLS between the replicas of a fleet (docs/OPERATIONS.md §Certificates).
//!
//! Every replica holds the fleet CA certificate and its own certificate and key, signed
//! by that CA. A replica accepts a peer connection only from a client presenting a
//! certificate of the fleet CA, and talks only to peers whose server certificate the
//! fleet CA signed for the address it dialled. Raft messages, forwarded proposals and
//! the fleet secret handed to a joining replica travel only over these connections.

use rustls::client::ClientConfig;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// PEM files of a replica's fleet identity.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetTlsFiles {
    /// The fleet CA certificate (the only one trusted between replicas).
    pub ca: PathBuf,
    /// This replica's certificate, signed by the fleet CA, naming its peer address.
    pub cert: PathBuf,
    /// This replica's private key.
    pub key: PathBuf,
}

/// TLS configurations for both ends of peer connections.
#[derive(Clone)]
pub struct PeerTls {
    /// For the peer listener: requires a client certificate of the fleet CA.
    pub server: Arc<ServerConfig>,
    /// For connections to peers: presents this replica's certificate.
    pub client: ClientConfig,
}

/// A fleet certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("fleet TLS: {0}")]
pub struct TlsError(String);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("cannot read the {what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "the {what} {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

impl FleetTlsFiles {
    /// Reads the files and builds both configurations.
    pub fn load(&self) -> Result<PeerTls, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in certificates(&self.ca, "fleet CA certificate")? {
            roots.add(ca).map_err(|e| {
                TlsError(format!(
                    "the fleet CA certificate {} is not usable: {e}",
                    self.ca.display()
                ))
            })?;
        }
        let roots = Arc::new(roots);
        let chain = certificates(&self.cert, "replica certificate")?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| {
            TlsError(format!(
                "cannot read the replica's private key {}: {e}",
                self.key.display()
            ))
        })?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError(format!("cannot verify peers with the fleet CA: {e}")))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                TlsError(format!(
                    "the certificate {} and key {} do not form a TLS identity: {e}",
                    self.cert.display(),
                    self.key.display()
                ))
            })?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError(format!("cannot present {}: {e}", self.cert.display())))?;
        Ok(PeerTls {
            server: Arc::new(server),
            client,
        })
    }
}

impl PeerTls {
    /// An HTTP client for peer requests. With `source`, connections leave from that
    /// address (the replica's own peer address, so peers and firewalls see which
    /// replica is calling).
    pub fn http_client(&self, source: Option<IpAddr>) -> Result<reqwest::Client, TlsError> {
        reqwest::Client::builder()
            .use_preconfigured_tls(self.client.clone())
            .local_address(source)
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| TlsError(format!("cannot set up the peer HTTP client: {e}")))
    }
}
