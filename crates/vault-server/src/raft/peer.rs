//! What a replica serves its peers: Raft messages, and what followers ask of the leader
//! (forwarded proposals, read indexes, joins and removals), plus a status report for
//! `backlock vault status`. Mounted on the peer listener, behind mutual TLS in a fleet.

use super::log_store::LogStore;
use super::network::{CONTENT_TYPE, MAX_PEER_BODY};
use super::state_machine::StateHandle;
use super::types::{Batch, TypeConfig, VaultRaft};
use super::ProposeError;
use crate::fleet_tls::PeerIdentity;
use crate::members::TicketRefusal;
use crate::state::Applied;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::Router;
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{BasicNode, ChangeMembers, ServerState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the leader works on a join (the new replica catching up included).
const JOIN_WAIT: Duration = Duration::from_secs(120);

/// A replica asking to become (again) a voting member.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Its Raft id.
    pub node_id: u64,
    /// Where peers reach it.
    pub addr: String,
}

/// Why a peer did not do what was asked.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum PeerRefusal {
    /// Only the leader does this; here is the leader if known (id, peer address).
    NotLeader(Option<(u64, String)>),
    /// No quorum, timeout, or shutting down: retry later.
    Unavailable(String),
    /// The leader has not heard from a quorum lately and wrote nothing: safe to retry.
    NoQuorum(String),
    /// The request itself cannot succeed.
    Rejected(String),
}

impl fmt::Display for PeerRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerRefusal::NotLeader(Some((id, addr))) => {
                write!(f, "not the leader; the leader is replica {id} at {addr}")
            }
            PeerRefusal::NotLeader(None) => write!(f, "not the leader, and no leader is known"),
            PeerRefusal::Unavailable(why) => write!(f, "unavailable: {why}"),
            PeerRefusal::NoQuorum(why) => write!(f, "no quorum: {why}"),
            PeerRefusal::Rejected(why) => write!(f, "rejected: {why}"),
        }
    }
}

/// One replica's report on itself (JSON), as `vault status` collects it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaReport {
    /// This replica.
    pub node_id: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// The leader this replica knows of.
    pub leader_id: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Last entry in the log.
    pub last_log_index: Option<u64>,
    /// Last entry known committed.
    pub commit_index: Option<u64>,
    /// Last entry applied to the state machine.
    pub last_applied_index: Option<u64>,
    /// Last entry the latest snapshot covers.
    pub snapshot_index: Option<u64>,
    /// Voting members, with their peer addresses.
    pub voters: BTreeMap<u64, String>,
    /// Non-voting members (catching up).
    pub learners: BTreeMap<u64, String>,
    /// On the leader: the last entry each member is known to hold.
    pub replication: Option<BTreeMap<u64, Option<u64>>>,
    /// BLAKE3 of the applied state (records and counts) at `last_applied_index`:
    /// replicas at the same index must agree.
    pub state_digest: String,
    /// False while a rejoining replica has not caught up (it does not vote then).
    pub votes: bool,
    /// The highest log index this replica knows each other replica held
    /// (`rollback.rs`).
    #[serde(default)]
    pub acked: BTreeMap<u64, u64>,
}

/// Whether this replica may vote: a replica that lost its state (or never had any)
/// must not, until the leader says it holds everything it may once have acknowledged;
/// one that restarted must not vote again in a term it may have voted in
/// (`rollback.rs`).
#[derive(Clone, Debug)]
pub struct VoteGate {
    open: Arc<AtomicBool>,
    floor: Arc<AtomicU64>,
}

impl VoteGate {
    /// A gate, open or closed.
    pub fn new(open: bool) -> Self {
        VoteGate {
            open: Arc::new(AtomicBool::new(open)),
            floor: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Lets the replica vote.
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Whether the replica votes.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    /// Refuses votes in terms up to `term` from now on.
    pub fn refuse_terms_up_to(&self, term: u64) {
        self.floor.fetch_max(term, Ordering::SeqCst);
    }

    /// Whether a vote in `term` may be given.
    pub fn admits(&self, term: u64) -> bool {
        self.is_open() && term > self.floor.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
pub(crate) struct PeerContext {
    pub(crate) raft: VaultRaft,
    pub(crate) votes: VoteGate,
    pub(crate) lease: super::lease::QuorumLease,
    pub(crate) queue: super::batcher::Queue,
    pub(crate) state: StateHandle,
    pub(crate) log: LogStore,
    pub(crate) book: Arc<std::sync::Mutex<super::rollback::Book>>,
}

/// The routes peers call: `/raft/{append,vote,snapshot}` (Raft itself),
/// `/raft/{propose,read-index,join,remove,admit}` (asked of the leader, or of any
/// member), `GET /raft/status`.
pub(crate) fn router(context: PeerContext) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/propose", post(propose))
        .route("/raft/read-index", post(read_index))
        .route(JOIN_ROUTE, post(join))
        .route("/raft/remove", post(remove))
        .route("/raft/admit", post(admit_ticket))
        .route(STATUS_ROUTE, get(status))
        .layer(DefaultBodyLimit::max(MAX_PEER_BODY))
        .with_state(context)
}

const JOIN_ROUTE: &str = "/raft/join";
const STATUS_ROUTE: &str = "/raft/status";

/// `router` with `extra` routes, behind the guard that decides from the caller's
/// certificate and the replicated state who may call what: the way a fleet serves its
/// peers over mutual TLS.
pub(crate) fn guarded_router(
    context: PeerContext,
    extra: Router,
    configured: BTreeSet<u64>,
) -> Router {
    let state = Guard {
        peer: context.clone(),
        configured: Arc::new(configured),
    };
    router(context)
        .merge(extra)
        .layer(axum::middleware::from_fn_with_state(state, guard))
}

/// What the guard decides from.
#[derive(Clone)]
struct Guard {
    peer: PeerContext,
    /// The replica ids of this replica's configuration: the only leaders it takes
    /// before it knows a membership.
    configured: Arc<BTreeSet<u64>>,
}

/// A member (voter or learner) calls anything; a replica that is not one may only
/// fetch the fleet secret with a ticket and then ask to join (both checked by their
/// handlers), or, if it is one of the configured replicas, lead a replica that knows
/// no membership yet; a retired replica nothing; a monitoring host the status report.
async fn guard(
    State(Guard { peer, configured }): State<Guard>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    let refused = match request.extensions().get::<PeerIdentity>() {
        None => Some("the client certificate names no replica and no monitoring host".to_owned()),
        Some(PeerIdentity::Monitor(_)) => (path != STATUS_ROUTE)
            .then(|| "a monitoring certificate may read the status and nothing else".to_owned()),
        Some(PeerIdentity::Replica(id)) => {
            let id = *id;
            if peer.state.summary().members.is_retired(id) {
                Some(format!(
                    "replica {id} was removed from the fleet: its certificate is refused for good"
                ))
            } else if is_member(&peer.raft, id)
                || path == JOIN_ROUTE
                || path == SECRETS_ROUTE
                || (RAFT_ROUTES.contains(&path)
                    && configured.contains(&id)
                    && knows_no_membership(&peer.raft))
            {
                None
            } else {
                Some(format!(
                    "replica {id} is not a member of the fleet: admit it with `backlock vault admit --replica {id}` and join with the ticket"
                ))
            }
        }
    };
    match refused {
        Some(why) => {
            tracing::warn!(path, why, "peer request refused");
            (StatusCode::FORBIDDEN, why).into_response()
        }
        None => next.run(request).await,
    }
}

/// The route on which a joining replica fetches the fleet secret with its ticket.
pub(crate) const SECRETS_ROUTE: &str = "/fleet/secrets";

/// The secrets route: the ticket in the body, for the replica id the caller's
/// certificate names, is used (committed) before the secret leaves.
pub(crate) fn secrets_router(
    context: PeerContext,
    transfer: zeroize::Zeroizing<Vec<u8>>,
) -> Router {
    let transfer = Arc::new(transfer);
    Router::new().route(
        SECRETS_ROUTE,
        post(move |identity: Caller, body: Bytes| {
            let (peer, transfer) = (context.clone(), transfer.clone());
            async move { hand_secret(&peer, caller(&identity), &body, &transfer).await }
        }),
    )
}

async fn hand_secret(
    peer: &PeerContext,
    identity: Option<&PeerIdentity>,
    ticket: &[u8],
    transfer: &[u8],
) -> Response {
    let forbidden = |why: String| (StatusCode::FORBIDDEN, why).into_response();
    let Some(PeerIdentity::Replica(id)) = identity else {
        return forbidden("only a replica's certificate may fetch the fleet secret".to_owned());
    };
    let Ok(ticket) = <[u8; 32]>::try_from(ticket) else {
        return (StatusCode::BAD_REQUEST, "a join ticket is 32 bytes").into_response();
    };
    let command = crate::state::Command::Redeem {
        replica: *id,
        ticket_hash: crate::members::ticket_hash(&ticket),
        now_ms: crate::members::now_ms(),
    };
    match propose_one(peer, command).await {
        Ok(Applied::Ticket(Ok(()))) => {
            tracing::info!(replica = id, "join ticket redeemed: fleet secret handed over");
            ([(header::CONTENT_TYPE, CONTENT_TYPE)], transfer.to_vec()).into_response()
        }
        Ok(Applied::Ticket(Err(TicketRefusal::Retired))) => {
            forbidden(format!("replica {id} was removed from the fleet"))
        }
        Ok(_) => forbidden(format!(
            "no open join ticket for replica {id} matches (never issued, already used, or expired): issue one with `backlock vault admit --replica {id}`"
        )),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// What a leader sends a replica; each is checked to come from the replica the
/// certificate names.
const RAFT_ROUTES: [&str; 3] = ["/raft/append", "/raft/vote", "/raft/snapshot"];

/// A replica that just joined holds no log yet, so no membership to check its first
/// leader against: it takes Raft messages from the replicas of its configuration
/// until it has one. It does not vote until the leader confirms it (the vote gate).
fn knows_no_membership(raft: &VaultRaft) -> bool {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .next()
        .is_none()
}

fn is_member(raft: &VaultRaft, id: u64) -> bool {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&id)
        .is_some()
}

/// Refuses a Raft message whose sender is not the replica the certificate names.
/// Without an identity (the unguarded router, in-process tests) nothing is checked.
fn check_sender(
    identity: Option<&PeerIdentity>,
    claimed: Option<u64>,
) -> Result<(), Box<Response>> {
    match identity {
        None => Ok(()),
        Some(PeerIdentity::Replica(id)) if Some(*id) == claimed => Ok(()),
        Some(who) => Err(Box::new(
            (
                StatusCode::FORBIDDEN,
                format!("the message claims replica {claimed:?}, the certificate names {who:?}"),
            )
                .into_response(),
        )),
    }
}

fn decoded<T: DeserializeOwned>(body: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(body)
}

fn bad_request(e: &postcard::Error) -> Response {
    (StatusCode::BAD_REQUEST, format!("not a peer message: {e}")).into_response()
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

type Caller = Option<Extension<PeerIdentity>>;

fn caller(identity: &Caller) -> Option<&PeerIdentity> {
    identity.as_ref().map(|Extension(who)| who)
}

async fn append(State(peer): State<PeerContext>, identity: Caller, body: Bytes) -> Response {
    match decoded::<AppendEntriesRequest<TypeConfig>>(&body) {
        Ok(request) => {
            if let Err(refused) =
                check_sender(caller(&identity), request.vote.leader_id().voted_for())
            {
                return *refused;
            }
            reply(&peer.raft.append_entries(request).await)
        }
        Err(e) => bad_request(&e),
    }
}

async fn vote(State(peer): State<PeerContext>, identity: Caller, body: Bytes) -> Response {
    match decoded::<VoteRequest<u64>>(&body) {
        Ok(request) => {
            if !peer.votes.admits(request.vote.leader_id().term) {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this replica does not vote yet (rejoining, or restarted and checking with the others that its state is current), nor in a term it may have voted in before",
                )
                    .into_response();
            }
            if let Err(refused) =
                check_sender(caller(&identity), request.vote.leader_id().voted_for())
            {
                return *refused;
            }
            reply(&peer.raft.vote(request).await)
        }
        Err(e) => bad_request(&e),
    }
}

async fn snapshot(State(peer): State<PeerContext>, identity: Caller, body: Bytes) -> Response {
    match decoded::<InstallSnapshotRequest<TypeConfig>>(&body) {
        Ok(request) => {
            if let Err(refused) =
                check_sender(caller(&identity), request.vote.leader_id().voted_for())
            {
                return *refused;
            }
            reply(&peer.raft.install_snapshot(request).await)
        }
        Err(e) => bad_request(&e),
    }
}

fn not_leader(forward: &ForwardToLeader<u64, BasicNode>) -> PeerRefusal {
    PeerRefusal::NotLeader(
        forward
            .leader_id
            .zip(forward.leader_node.as_ref().map(|n| n.addr.clone())),
    )
}

fn write_refusal(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> PeerRefusal {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => not_leader(&forward),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            PeerRefusal::Rejected(e.to_string())
        }
        RaftError::Fatal(e) => PeerRefusal::Unavailable(e.to_string()),
    }
}

async fn propose(State(peer): State<PeerContext>, body: Bytes) -> Response {
    let batch: Batch = match decoded(&body) {
        Ok(batch) => batch,
        Err(e) => return bad_request(&e),
    };
    // Checked before anything is queued, so the follower may retry on these refusals.
    if let Err(refusal) = leader_check(&peer.raft) {
        return reply(&Err::<Vec<Result<Applied, ProposeError>>, _>(refusal));
    }
    let node_id = peer.raft.metrics().borrow().id;
    if let Err(why) = peer.lease.check(&peer.raft, node_id) {
        return reply(&Err::<Vec<Result<Applied, ProposeError>>, _>(
            PeerRefusal::NoQuorum(why),
        ));
    }
    let results = peer.queue.propose_all(batch.0).await;
    reply(&Ok::<_, PeerRefusal>(results))
}

async fn read_index(State(peer): State<PeerContext>) -> Response {
    let result = match leader_read_index(&peer.raft).await {
        Ok(index) => Ok(index),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(not_leader(&f)),
        Err(e) => Err(PeerRefusal::Unavailable(e.to_string())),
    };
    reply(&result)
}

/// On the leader: an index that, once applied, makes a read linearizable.
///
/// openraft's own read index is the larger of the commit index and the leader's first
/// entry in its term. A leader that resumed its term after a restart (openraft restores
/// it at once) has no such entry, and the commit index it loaded is only a hint that may
/// lag far behind. So the leader confirms its leadership and then answers with the last
/// entry of its log: everything committed so far is at or before it, and it commits
/// soon while this replica leads (or the reader times out).
pub(crate) async fn leader_read_index(
    raft: &VaultRaft,
) -> Result<Option<u64>, RaftError<u64, CheckIsLeaderError<u64, BasicNode>>> {
    let confirmed = raft.ensure_linearizable().await?.map(|id| id.index);
    let last = raft.metrics().borrow().last_log_index;
    Ok(confirmed.max(last))
}

async fn join(State(peer): State<PeerContext>, identity: Caller, body: Bytes) -> Response {
    let request = match decoded::<JoinRequest>(&body) {
        Ok(request) => request,
        Err(e) => return bad_request(&e),
    };
    if let Err(refused) = check_sender(caller(&identity), Some(request.node_id)) {
        return *refused;
    }
    let result = async {
        leader_check(&peer.raft)?;
        // A replica that is not a member joins only on a ticket it redeemed (checked on
        // the leader, which committed the redemption).
        let id = request.node_id;
        let now = crate::members::now_ms();
        if caller(&identity).is_some()
            && !is_member(&peer.raft, id)
            && !peer.state.summary().members.may_join(id, now)
        {
            return Err(PeerRefusal::Rejected(format!(
                "replica {id} holds no redeemed join ticket: admit it with `backlock vault admit --replica {id}`"
            )));
        }
        admit(&peer.raft, request).await
    }
    .await;
    reply(&result)
}

/// A join ticket the operator asked a member for (`vault admit`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdmitRequest {
    /// The replica id it admits.
    pub replica: u64,
    /// BLAKE3 of the ticket (the ticket itself stays with the operator).
    pub ticket_hash: [u8; 32],
    /// How long it stays valid.
    pub valid_ms: u64,
}

async fn admit_ticket(State(peer): State<PeerContext>, body: Bytes) -> Response {
    let request = match decoded::<AdmitRequest>(&body) {
        Ok(request) => request,
        Err(e) => return bad_request(&e),
    };
    let command = crate::state::Command::Admit {
        replica: request.replica,
        ticket_hash: request.ticket_hash,
        expires_ms: crate::members::now_ms().saturating_add(request.valid_ms),
    };
    let result = match propose_one(&peer, command).await {
        Ok(Applied::Ticket(Ok(()))) => Ok(()),
        Ok(Applied::Ticket(Err(TicketRefusal::Retired))) => Err(PeerRefusal::Rejected(format!(
            "replica {} was removed from the fleet and is never admitted again; give the new site a new id",
            request.replica
        ))),
        Ok(other) => Err(PeerRefusal::Rejected(format!("unexpected outcome {other:?}"))),
        Err(e) => Err(PeerRefusal::Unavailable(e.to_string())),
    };
    reply(&result)
}

/// Commits one command through this replica's queue (forwarded if it follows).
pub(crate) async fn propose_one(
    peer: &PeerContext,
    command: crate::state::Command,
) -> Result<Applied, ProposeError> {
    peer.queue
        .propose_all(vec![command])
        .await
        .pop()
        .unwrap_or_else(|| Err(ProposeError::Unavailable("shutting down".to_owned())))
}

fn leader_check(raft: &VaultRaft) -> Result<(), PeerRefusal> {
    let metrics = raft.metrics().borrow().clone();
    if metrics.current_leader == Some(metrics.id) {
        return Ok(());
    }
    let leader = metrics.current_leader.and_then(|id| {
        let membership = metrics.membership_config.membership();
        membership.get_node(&id).map(|n| (id, n.addr.clone()))
    });
    Err(PeerRefusal::NotLeader(leader))
}

/// Makes the replica a voting member once it holds the whole log. A replica that is
/// already a voter (restarted, or rejoining with its data wiped) is answered once it
/// has caught up with the leader's log as it is now.
async fn admit(raft: &VaultRaft, request: JoinRequest) -> Result<(), PeerRefusal> {
    leader_check(raft)?;
    let JoinRequest { node_id, addr } = request;
    let metrics = raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership().clone();
    let is_voter = membership.voter_ids().any(|id| id == node_id);
    let timed_out = || {
        PeerRefusal::Unavailable(format!(
            "replica {node_id} did not catch up within {JOIN_WAIT:?}; it retries"
        ))
    };
    if is_voter {
        if membership.get_node(&node_id).map(|n| n.addr.as_str()) != Some(addr.as_str()) {
            let nodes = BTreeMap::from([(node_id, BasicNode { addr })]);
            tokio::time::timeout(
                JOIN_WAIT,
                raft.change_membership(ChangeMembers::SetNodes(nodes), true),
            )
            .await
            .map_err(|_| timed_out())?
            .map_err(write_refusal)?;
        }
        let target = raft.metrics().borrow().last_log_index;
        let caught_up = raft
            .wait(Some(JOIN_WAIT))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&node_id).copied().flatten())
                        .map(|id| id.index)
                        >= target
                },
                "the rejoining replica holds the leader's log",
            )
            .await;
        return caught_up.map(|_| ()).map_err(|_| timed_out());
    }
    // Blocking: returns once the learner has caught up, so promoting it never stalls
    // the quorum.
    tokio::time::timeout(
        JOIN_WAIT,
        raft.add_learner(node_id, BasicNode { addr }, true),
    )
    .await
    .map_err(|_| timed_out())?
    .map_err(write_refusal)?;
    tokio::time::timeout(
        JOIN_WAIT,
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false),
    )
    .await
    .map_err(|_| timed_out())?
    .map_err(write_refusal)?;
    tracing::info!(node_id, "replica joined the fleet as a voter");
    Ok(())
}

async fn remove(State(peer): State<PeerContext>, body: Bytes) -> Response {
    let node_id: u64 = match decoded(&body) {
        Ok(id) => id,
        Err(e) => return bad_request(&e),
    };
    let result = async {
        leader_check(&peer.raft)?;
        if peer.raft.metrics().borrow().id == node_id {
            return Err(PeerRefusal::Rejected(
                "the leader does not remove itself; stop it so another replica leads, then remove it there".to_owned(),
            ));
        }
        // Retired first: from the moment the change is decided, its certificate is
        // refused, and its id is never admitted again.
        match propose_one(&peer, crate::state::Command::Retire { replica: node_id }).await {
            Ok(Applied::Retired) => {}
            Ok(other) => {
                return Err(PeerRefusal::Rejected(format!("unexpected outcome {other:?}")))
            }
            Err(e) => return Err(PeerRefusal::Unavailable(e.to_string())),
        }
        let ids = BTreeSet::from([node_id]);
        for change in [
            ChangeMembers::RemoveVoters(ids.clone()),
            ChangeMembers::RemoveNodes(ids.clone()),
        ] {
            tokio::time::timeout(JOIN_WAIT, peer.raft.change_membership(change, false))
                .await
                .map_err(|_| PeerRefusal::Unavailable("no quorum for the change".to_owned()))?
                .map_err(write_refusal)?;
        }
        tracing::info!(node_id, "replica removed from the fleet");
        Ok(())
    }
    .await;
    reply(&result)
}

async fn status(State(peer): State<PeerContext>) -> Response {
    axum::Json(report(&peer)).into_response()
}

pub(crate) fn report(peer: &PeerContext) -> ReplicaReport {
    let metrics = peer.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let nodes = |ids: Vec<u64>| -> BTreeMap<u64, String> {
        ids.into_iter()
            .map(|id| {
                let addr = membership.get_node(&id).map(|n| n.addr.clone());
                (id, addr.unwrap_or_default())
            })
            .collect()
    };
    let role = match metrics.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    let (applied, digest) = {
        // A digest of the applied log, kept as entries are applied: no pass over the
        // state.
        let summary = peer.state.summary();
        (
            summary.last_applied.map(|id| id.index),
            hex::encode(summary.digest),
        )
    };
    ReplicaReport {
        node_id: metrics.id,
        role: role.to_owned(),
        leader_id: metrics.current_leader,
        term: metrics.current_term,
        last_log_index: metrics.last_log_index,
        commit_index: peer.log.committed().map(|id| id.index),
        last_applied_index: applied,
        snapshot_index: metrics.snapshot.map(|id| id.index),
        voters: nodes(membership.voter_ids().collect()),
        learners: nodes(membership.learner_ids().collect()),
        replication: metrics.replication.as_ref().map(|r| {
            r.iter()
                .map(|(id, log_id)| (*id, log_id.map(|l| l.index)))
                .collect()
        }),
        state_digest: digest,
        votes: peer.votes.is_open(),
        acked: peer.book.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    }
}
