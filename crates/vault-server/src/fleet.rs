//! Setting up and inspecting a fleet (docs/OPERATIONS.md): `vault init` on the first
//! replica, `vault join` on each other one, `vault status`, `vault remove`.
//!
//! The fleet secret (OPRF seed and server key pair, and the relay's token secret) is
//! created once, by `init`. A joining replica fetches it from a running member over
//! mutual TLS with a one-time ticket the operator issued on a member (`vault admit`),
//! for the replica id its certificate names, and seals it under its own node key.

use crate::fleet_config::{FleetConfig, ReplicaEntry};
use crate::raft::{Bootstrap, HttpNetwork, NodeConfig, ReplicaReport, VaultNode, VoteGate};
use crate::run::{lock_data_dir, open_fleet_sealer, ServeError, JOINING_MARKER};
use crate::secrets::VaultSecrets;
use std::path::Path;

fn setup(e: impl std::fmt::Display) -> ServeError {
    ServeError::Setup(e.to_string())
}

fn has_raft_state(data: &Path) -> bool {
    std::fs::read_dir(data.join("raft"))
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false)
}

/// Creates the fleet secret and a one-member cluster on the first replica. Refuses a
/// replica that already holds a secret or Raft state. Returns the OPAQUE public key
/// devices pin.
pub async fn init(config: &FleetConfig) -> Result<[u8; 32], ServeError> {
    // The certificates are needed by `serve` right after: check them before anything is
    // created.
    config.fleet_tls.load().map_err(setup)?;
    let _lock = lock_data_dir(&config.data)?;
    if VaultSecrets::exist(&config.data) || has_raft_state(&config.data) {
        return Err(setup(format!(
            "{} already belongs to a fleet: `vault init` runs once, on the first replica; start it with `backlock vault serve`",
            config.data.display()
        )));
    }
    let sealer = open_fleet_sealer(config)?;
    let node = VaultNode::start_with(
        NodeConfig {
            dir: config.data.join("raft"),
            sealer: sealer.clone(),
            node_id: config.node_id,
            addr: config.peer_address(),
            network: HttpNetwork::new(),
            votes: VoteGate::new(true),
            counter: config.rollback_counter()?,
            epoch_length: std::time::Duration::from_secs(config.epoch_secs),
        },
        Bootstrap::SingleReplica,
    )
    .await
    .map_err(setup)?;
    node.shutdown().await;
    // Last: a replica with a secret is a finished init.
    let secrets = VaultSecrets::generate();
    secrets
        .store(&config.data, sealer.as_ref())
        .map_err(setup)?;
    Ok(secrets.server.public_key())
}

fn peer_network(config: &FleetConfig) -> Result<HttpNetwork, ServeError> {
    let tls = config.fleet_tls.load().map_err(setup)?;
    let source = Some(config.peer_listen.ip()).filter(|ip| !ip.is_unspecified());
    Ok(HttpNetwork::mutual_tls(
        tls.http_client(source).map_err(setup)?,
    ))
}

/// A one-time join ticket (`vault admit` prints it, `vault join --ticket` uses it).
pub struct JoinTicket(zeroize::Zeroizing<[u8; 32]>);

impl JoinTicket {
    /// A fresh random ticket.
    pub fn generate() -> Self {
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut *bytes);
        JoinTicket(bytes)
    }

    /// The ticket as the operator copies it (64 hex digits).
    pub fn to_hex(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(hex::encode(*self.0))
    }

    /// The ticket's bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Reads a ticket as `to_hex` wrote it.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), &mut *bytes).ok()?;
        Some(JoinTicket(bytes))
    }
}

impl std::fmt::Debug for JoinTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinTicket(REDACTED)")
    }
}

/// Opens a join ticket for replica `replica` through a running member (any: the ticket
/// is committed through Raft), valid for `valid`. Run on a member's host: it calls
/// with that replica's certificate.
pub async fn admit(
    config: &FleetConfig,
    replica: u64,
    valid: std::time::Duration,
) -> Result<JoinTicket, ServeError> {
    let network = peer_network(config)?;
    let ticket = JoinTicket::generate();
    let request = crate::raft::AdmitRequest {
        replica,
        ticket_hash: crate::members::ticket_hash(ticket.bytes()),
        valid_ms: valid.as_millis() as u64,
    };
    let mut failures = Vec::new();
    for entry in &config.replicas {
        match network.admit(&entry.peer, &request).await {
            Ok(()) => return Ok(ticket),
            Err(crate::raft::PeerCallError::Refused(crate::raft::PeerRefusal::Rejected(why))) => {
                return Err(setup(why))
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(setup(format!(
        "no replica opened the ticket ({}); a majority must be running",
        failures.join("; ")
    )))
}

/// Fetches the fleet secret from a running member with a join ticket and seals it
/// here; the replica then joins as a voter when `vault serve` first runs. Also the way
/// back for a replica whose data was lost. Returns the OPAQUE public key.
pub async fn join(config: &FleetConfig, ticket: &JoinTicket) -> Result<[u8; 32], ServeError> {
    let network = peer_network(config)?;
    let _lock = lock_data_dir(&config.data)?;
    if VaultSecrets::exist(&config.data) {
        return Err(setup(format!(
            "{} already holds the fleet secret: start the replica with `backlock vault serve`",
            config.data.display()
        )));
    }
    let mut failures = Vec::new();
    let mut secrets = None;
    for peer in config.other_peers() {
        match network.fetch_secret(&peer, ticket.bytes()).await {
            Ok(bytes) => {
                let bytes = zeroize::Zeroizing::new(bytes);
                match VaultSecrets::from_transfer(&bytes) {
                    Some(s) => {
                        secrets = Some(s);
                        break;
                    }
                    None => failures.push(format!("{peer}: not a fleet secret")),
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    let secrets = secrets.ok_or_else(|| {
        setup(format!(
            "no running replica handed over the fleet secret ({}); issue a ticket with `backlock vault admit --replica {}` on a member, and check the fleet certificates",
            failures.join("; "),
            config.node_id
        ))
    })?;
    let sealer = open_fleet_sealer(config)?;
    // The marker first: a replica holding the secret but not confirmed does not vote.
    let marker = config.data.join(JOINING_MARKER);
    std::fs::write(&marker, b"").map_err(|e| setup(format!("{}: {e}", marker.display())))?;
    secrets
        .store(&config.data, sealer.as_ref())
        .map_err(setup)?;
    Ok(secrets.server.public_key())
}

/// What `vault status` saw of one replica.
#[derive(Debug)]
pub struct ReplicaView {
    /// The replica as configured.
    pub entry: ReplicaEntry,
    /// Its own report, or why it could not be had.
    pub report: Result<ReplicaReport, String>,
}

/// Asks every configured replica for its report.
pub async fn status(config: &FleetConfig) -> Result<Vec<ReplicaView>, ServeError> {
    let network = peer_network(config)?;
    let mut views = Vec::new();
    for entry in &config.replicas {
        let report = network.status(&entry.peer).await.map_err(|e| e.to_string());
        views.push(ReplicaView {
            entry: entry.clone(),
            report,
        });
    }
    Ok(views)
}

/// Removes replica `node_id` from the fleet (a site retired or replaced), through the
/// leader.
pub async fn remove(config: &FleetConfig, node_id: u64) -> Result<(), ServeError> {
    let network = peer_network(config)?;
    let views = status(config).await?;
    let leader = views
        .iter()
        .filter_map(|v| v.report.as_ref().ok())
        .find_map(|r| r.leader_id)
        .ok_or_else(|| setup("no replica knows a leader: a majority must be running"))?;
    let addr = views
        .iter()
        .filter_map(|v| v.report.as_ref().ok())
        .find_map(|r| r.voters.get(&leader).cloned())
        .ok_or_else(|| setup(format!("the leader {leader} has no known address")))?;
    network
        .remove(&addr, node_id, std::time::Duration::from_secs(130))
        .await
        .map_err(setup)
}
