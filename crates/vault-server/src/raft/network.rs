//! Messages between replicas: postcard bodies over HTTP, HTTPS with mutual TLS in a
//! fleet (see `fleet_tls`).
//!
//! A replica posts Raft messages to `{scheme}://{addr}/raft/{append,vote,snapshot}` of
//! its peer, which [`super::peer_router`] serves. Each response is a postcard
//! `Result<reply, RaftError>`, so a peer's Raft-level refusal comes back as a
//! [`RemoteError`] and transport trouble as [`Unreachable`] or [`NetworkError`]. The same
//! routes carry what a follower asks of the leader: forwarded proposals, read indexes
//! and joins ([`HttpNetwork::propose`] and its siblings).

use super::peer::{AdmitRequest, JoinRequest, PeerRefusal, ReplicaReport};
use super::types::{Batch, TypeConfig};
use super::ProposeError;
use crate::fleet_tls::PeerIdentity;
use crate::state::Applied;
use axum::http::header;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::error::Error;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Largest request body a peer accepts: a batch of entries or one snapshot chunk.
pub(crate) const MAX_PEER_BODY: usize = 16 * 1024 * 1024;
/// Snapshot chunk size, well under [`MAX_PEER_BODY`].
pub(crate) const SNAPSHOT_CHUNK: u64 = 1024 * 1024;

pub(crate) const CONTENT_TYPE: &str = "application/x-backlock-raft";

/// How a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerCallError {
    /// The request never reached the peer (no connection): safe to retry elsewhere.
    #[error("cannot reach the replica at {addr}: {reason}")]
    NotSent {
        /// The peer address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The peer answered with a refusal.
    #[error("{0}")]
    Refused(PeerRefusal),
    /// The request may have reached the peer, but no valid answer came back.
    #[error("no valid answer from the replica at {addr}: {reason}")]
    Failed {
        /// The peer address.
        addr: String,
        /// What failed.
        reason: String,
    },
}

/// Who must answer a request to a peer, by the id its certificate names. Over plain
/// HTTP (in-process tests) there is no certificate and nothing is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answerer {
    /// This replica: a Raft message to it, a proposal to it as the leader.
    Replica(u64),
    /// Any replica (not a monitor): a contact whose id is not known yet.
    AnyReplica,
}

/// The replica id the certificate of `response`'s peer names, if the answer came over
/// TLS; an error if it names none or is not `expected`. A certificate of the fleet CA
/// issued for the same host to another id (a replaced site's, say) must not be able to
/// answer "committed" for a leader, or "appended" for a follower.
fn check_answerer(
    response: &reqwest::Response,
    identities: Option<&Identities>,
    expected: Answerer,
) -> Result<Option<u64>, String> {
    let Some(identities) = identities else {
        return Ok(None);
    };
    let der = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .ok_or("the answer carried no peer certificate")?;
    match (identities.of(der), expected) {
        (Some(PeerIdentity::Replica(id)), Answerer::Replica(want)) if id == want => Ok(Some(id)),
        (Some(PeerIdentity::Replica(id)), Answerer::AnyReplica) => Ok(Some(id)),
        (named, _) => Err(format!(
            "the answering certificate names {}, not {}: another machine holds this address",
            match named {
                Some(PeerIdentity::Replica(id)) => format!("replica {id}"),
                Some(PeerIdentity::Monitor(name)) => format!("monitor {name}"),
                None => "no replica".to_owned(),
            },
            match expected {
                Answerer::Replica(want) => format!("replica {want}"),
                Answerer::AnyReplica => "a replica".to_owned(),
            }
        )),
    }
}

/// The identities of the few certificates peers answer with, parsed once each: every
/// Raft message's answer is checked, and X.509 parsing is not free.
#[derive(Default)]
struct Identities(std::sync::Mutex<Vec<(Vec<u8>, Option<PeerIdentity>)>>);

impl Identities {
    /// A fleet has at most 7 replicas; renewed certificates push old ones out.
    const KEPT: usize = 32;

    fn of(&self, der: &[u8]) -> Option<PeerIdentity> {
        let mut known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, identity)) = known.iter().find(|(cert, _)| cert == der) {
            return identity.clone();
        }
        let identity = crate::fleet_tls::identify(der);
        if known.len() == Self::KEPT {
            known.remove(0);
        }
        known.push((der.to_vec(), identity.clone()));
        identity
    }
}

/// Creates one [`PeerClient`] per peer, sharing one HTTP connection pool.
#[derive(Clone)]
pub struct HttpNetwork {
    client: reqwest::Client,
    scheme: &'static str,
    /// With TLS: the answering certificates' identities.
    identities: Option<Arc<Identities>>,
}

impl HttpNetwork {
    /// Plain HTTP, for replicas in one process or on one trusted host (tests).
    pub fn new() -> Self {
        Self {
            client: reqwest::Client::new(),
            scheme: "http",
            identities: None,
        }
    }

    /// HTTPS through `client`, which presents this replica's fleet certificate (see
    /// [`crate::fleet_tls::PeerTls::http_client`]).
    pub fn mutual_tls(client: reqwest::Client) -> Self {
        Self {
            client,
            scheme: "https",
            identities: Some(Arc::default()),
        }
    }

    fn url(&self, addr: &str, route: &str) -> String {
        format!("{}://{addr}{route}", self.scheme)
    }

    /// Posts `request` to `route` of the replica at `addr` and decodes its postcard
    /// `Result<T, PeerRefusal>`.
    async fn post<Req: Serialize, T: DeserializeOwned>(
        &self,
        addr: &str,
        answerer: Answerer,
        route: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<T, PeerCallError> {
        let body = postcard::to_allocvec(request).map_err(|e| PeerCallError::NotSent {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
        let request = self
            .client
            .post(self.url(addr, route))
            .timeout(timeout)
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body);
        let (_, bytes) = self.send(addr, answerer, request).await?;
        let reply: Result<T, PeerRefusal> =
            postcard::from_bytes(&bytes).map_err(|e| PeerCallError::Failed {
                addr: addr.to_owned(),
                reason: format!("undecodable reply: {e}"),
            })?;
        reply.map_err(PeerCallError::Refused)
    }

    /// Sends `request`; returns the id the answering certificate names (TLS only) and
    /// the body of a successful answer.
    async fn send(
        &self,
        addr: &str,
        answerer: Answerer,
        request: reqwest::RequestBuilder,
    ) -> Result<(Option<u64>, Vec<u8>), PeerCallError> {
        let response = request.send().await.map_err(|e| {
            let reason = error_chain(&e);
            if e.is_connect() {
                PeerCallError::NotSent {
                    addr: addr.to_owned(),
                    reason,
                }
            } else {
                PeerCallError::Failed {
                    addr: addr.to_owned(),
                    reason,
                }
            }
        })?;
        let id =
            check_answerer(&response, self.identities.as_deref(), answerer).map_err(|reason| {
                PeerCallError::Failed {
                    addr: addr.to_owned(),
                    reason,
                }
            })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| PeerCallError::Failed {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
        if !status.is_success() {
            return Err(PeerCallError::Failed {
                addr: addr.to_owned(),
                reason: format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
            });
        }
        Ok((id, bytes.to_vec()))
    }

    /// Asks the leader (replica `leader` at `addr`) to commit the commands of `batch`
    /// (in order, sharing entries with its own); returns each one's outcome.
    pub async fn propose(
        &self,
        leader: u64,
        addr: &str,
        batch: &Batch,
        timeout: Duration,
    ) -> Result<Vec<Result<Applied, ProposeError>>, PeerCallError> {
        self.post(
            addr,
            Answerer::Replica(leader),
            "/raft/propose",
            batch,
            timeout,
        )
        .await
    }

    /// Asks the leader (replica `leader` at `addr`) for an index that, once applied
    /// here, makes a read linearizable.
    pub async fn read_index(
        &self,
        leader: u64,
        addr: &str,
        timeout: Duration,
    ) -> Result<Option<u64>, PeerCallError> {
        self.post(
            addr,
            Answerer::Replica(leader),
            "/raft/read-index",
            &(),
            timeout,
        )
        .await
    }

    /// Asks the replica at `addr` (the leader) to make the sender a voting member.
    pub async fn join(
        &self,
        addr: &str,
        request: &JoinRequest,
        timeout: Duration,
    ) -> Result<(), PeerCallError> {
        self.post(addr, Answerer::AnyReplica, "/raft/join", request, timeout)
            .await
    }

    /// Asks the leader at `addr` to remove a replica from the fleet.
    pub async fn remove(
        &self,
        addr: &str,
        node_id: u64,
        timeout: Duration,
    ) -> Result<(), PeerCallError> {
        self.post(
            addr,
            Answerer::AnyReplica,
            "/raft/remove",
            &node_id,
            timeout,
        )
        .await
    }

    /// The replica at `addr` reports on itself, in the name its certificate gives.
    pub async fn status(&self, addr: &str) -> Result<ReplicaReport, PeerCallError> {
        let request = self
            .client
            .get(self.url(addr, "/raft/status"))
            .timeout(Duration::from_secs(3));
        let (id, bytes) = self.send(addr, Answerer::AnyReplica, request).await?;
        let report: ReplicaReport =
            serde_json::from_slice(&bytes).map_err(|e| PeerCallError::Failed {
                addr: addr.to_owned(),
                reason: format!("undecodable status: {e}"),
            })?;
        match id {
            Some(id) if id != report.node_id => Err(PeerCallError::Failed {
                addr: addr.to_owned(),
                reason: format!(
                    "the answer claims to be replica {} but its certificate names replica {id}",
                    report.node_id
                ),
            }),
            _ => Ok(report),
        }
    }

    /// GETs `route` of the replica at `addr` (the fleet secret for a joining replica).
    pub async fn get_bytes(&self, addr: &str, route: &str) -> Result<Vec<u8>, PeerCallError> {
        let request = self
            .client
            .get(self.url(addr, route))
            .timeout(Duration::from_secs(10));
        Ok(self.send(addr, Answerer::AnyReplica, request).await?.1)
    }

    /// Redeems a join ticket at the member at `addr`, which answers with the fleet
    /// secret (sealed for transfer).
    pub async fn fetch_secret(
        &self,
        addr: &str,
        ticket: &[u8; 32],
    ) -> Result<Vec<u8>, PeerCallError> {
        let request = self
            .client
            .post(self.url(addr, super::peer::SECRETS_ROUTE))
            .timeout(Duration::from_secs(30))
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .body(ticket.to_vec());
        Ok(self.send(addr, Answerer::AnyReplica, request).await?.1)
    }

    /// Asks a member at `addr` to open a join ticket.
    pub async fn admit(&self, addr: &str, request: &AdmitRequest) -> Result<(), PeerCallError> {
        self.post(
            addr,
            Answerer::AnyReplica,
            "/raft/admit",
            request,
            Duration::from_secs(30),
        )
        .await
    }
}

impl Default for HttpNetwork {
    fn default() -> Self {
        Self::new()
    }
}

/// An error with its causes: reqwest's own message hides why a TLS handshake failed.
fn error_chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            network: self.clone(),
            target,
            node: node.clone(),
        }
    }
}

/// Sends Raft messages to one peer.
pub struct PeerClient {
    network: HttpNetwork,
    target: u64,
    node: BasicNode,
}

type RpcResult<T, E> = Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        route: &str,
        request: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let body =
            postcard::to_allocvec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let url = self.network.url(&self.node.addr, route);
        let response = self
            .network
            .client
            .post(url)
            .timeout(option.hard_ttl())
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        check_answerer(
            &response,
            self.network.identities.as_deref(),
            Answerer::Replica(self.target),
        )
        .map_err(|e| RPCError::Network(NetworkError::new(&io::Error::other(e))))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let e = io::Error::other(format!("peer {} answered {status}: {text}", self.target));
            return Err(RPCError::Network(NetworkError::new(&e)));
        }
        let reply: Result<Resp, RaftError<u64, E>> =
            postcard::from_bytes(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        reply.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, openraft::error::Infallible> {
        self.call("/raft/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.call("/raft/snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, openraft::error::Infallible> {
        self.call("/raft/vote", &rpc, &option).await
    }
}
