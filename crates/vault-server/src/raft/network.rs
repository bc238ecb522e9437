//! Raft messages between replicas: postcard bodies over HTTP.
//!
//! A replica posts to `http://{addr}/raft/{append,vote,snapshot}` of its peer, which
//! [`peer_router`] serves. Each response is a postcard `Result<reply, RaftError>`, so a
//! peer's Raft-level refusal comes back as a [`RemoteError`] and transport trouble as
//! [`Unreachable`] or [`NetworkError`]. Mutual TLS is added when the routes are mounted.

use super::types::{TypeConfig, VaultRaft};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
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

/// Largest request body a peer accepts: a batch of entries or one snapshot chunk.
pub(crate) const MAX_PEER_BODY: usize = 16 * 1024 * 1024;
/// Snapshot chunk size, well under [`MAX_PEER_BODY`].
pub(crate) const SNAPSHOT_CHUNK: u64 = 1024 * 1024;

const CONTENT_TYPE: &str = "application/x-backlock-raft";

/// Creates one [`PeerClient`] per peer, sharing one HTTP connection pool.
#[derive(Clone)]
pub struct HttpNetwork {
    client: reqwest::Client,
}

impl HttpNetwork {
    /// A network with its own connection pool.
    pub fn new() -> Self {
        Self {
            client: reqwest::Client::new(),
        }
    }
}

impl Default for HttpNetwork {
    fn default() -> Self {
        Self::new()
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            client: self.client.clone(),
            target,
            node: node.clone(),
        }
    }
}

/// Sends Raft messages to one peer.
pub struct PeerClient {
    client: reqwest::Client,
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
        let url = format!("http://{}/raft/{route}", self.node.addr);
        let response = self
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
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>, openraft::error::Infallible> {
        self.call("vote", &rpc, &option).await
    }
}

/// Routes serving a replica's peers: `POST /raft/append`, `/raft/vote`, `/raft/snapshot`.
pub fn peer_router(raft: VaultRaft) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .layer(DefaultBodyLimit::max(MAX_PEER_BODY))
        .with_state(raft)
}

async fn append(State(raft): State<VaultRaft>, body: Bytes) -> Response {
    match postcard::from_bytes::<AppendEntriesRequest<TypeConfig>>(&body) {
        Ok(request) => reply(&raft.append_entries(request).await),
        Err(e) => bad_request(&e),
    }
}

async fn vote(State(raft): State<VaultRaft>, body: Bytes) -> Response {
    match postcard::from_bytes::<VoteRequest<u64>>(&body) {
        Ok(request) => reply(&raft.vote(request).await),
        Err(e) => bad_request(&e),
    }
}

async fn snapshot(State(raft): State<VaultRaft>, body: Bytes) -> Response {
    match postcard::from_bytes::<InstallSnapshotRequest<TypeConfig>>(&body) {
        Ok(request) => reply(&raft.install_snapshot(request).await),
        Err(e) => bad_request(&e),
    }
}

fn reply<T: Serialize>(result: &T) -> Response {
    match postcard::to_allocvec(result) {
        Ok(bytes) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], bytes).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the reply: {e}"),
        )
            .into_response(),
    }
}

fn bad_request(e: &postcard::Error) -> Response {
    (StatusCode::BAD_REQUEST, format!("not a Raft message: {e}")).into_response()
}
