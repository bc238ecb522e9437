//! Mutual TLS between the replicas of a fleet (docs/OPERATIONS.md §Certificates).
//!
//! Every replica holds the fleet CA certificate and its own certificate and key, signed
//! by that CA. A replica accepts a peer connection only from a client presenting a
//! certificate of the fleet CA, and talks only to peers whose server certificate the
//! fleet CA signed for the address it dialled. Raft messages, forwarded proposals and
//! the fleet secret handed to a joining replica travel only over these connections.
//!
//! A certificate names who holds it ([`PeerIdentity`]): one replica id, or a monitoring
//! host. The CA only vouches for that name; what the holder may do is decided by the
//! fleet's replicated state (the peer routes' guard).

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

/// The URI, in a certificate's subject alternative names, that names replica `id`.
pub fn replica_uri(id: u64) -> String {
    format!("{REPLICA_URI}{id}")
}

/// The URI that names a monitoring host, which may read status and nothing else.
pub fn monitor_uri(name: &str) -> String {
    format!("{MONITOR_URI}{name}")
}

const REPLICA_URI: &str = "urn:backlock:replica:";
const MONITOR_URI: &str = "urn:backlock:monitor:";
/// The common name `vault certs` gave replicas before certificates carried the URI.
const LEGACY_REPLICA_CN: &str = "backlock vault replica ";

/// Who a peer certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerIdentity {
    /// Replica `id` of the fleet.
    Replica(u64),
    /// A monitoring host: status only.
    Monitor(String),
}

/// Reads the identity a (CA-verified) certificate names: exactly one replica or monitor
/// URI; failing any, the common name older `vault certs` wrote. `None`: it names no
/// one, or more than one.
pub fn identify(der: &[u8]) -> Option<PeerIdentity> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut named = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if let Some(id) = uri.strip_prefix(REPLICA_URI) {
                    named.push(PeerIdentity::Replica(replica_id(id)?));
                } else if let Some(monitor) = uri.strip_prefix(MONITOR_URI) {
                    named.push(PeerIdentity::Monitor(monitor.to_owned()));
                }
            }
        }
    }
    if named.is_empty() {
        let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
        let id = cn.strip_prefix(LEGACY_REPLICA_CN)?;
        named.push(PeerIdentity::Replica(replica_id(id)?));
    }
    match named.len() {
        1 => named.pop(),
        _ => None,
    }
}

fn replica_id(text: &str) -> Option<u64> {
    text.parse::<u64>().ok().filter(|id| *id > 0)
}

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
            // The answering replica's certificate, to check the id it names
            // (`raft/network.rs`): the CA alone says only "some member, once".
            .tls_info(true)
            .build()
            .map_err(|e| TlsError(format!("cannot set up the peer HTTP client: {e}")))
    }
}
