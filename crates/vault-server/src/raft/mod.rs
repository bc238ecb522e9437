//! The vault under Raft (docs/VAULT.md §Fleet): every state change is a committed,
//! durable log entry before it takes effect. All openraft-facing code lives here.
//!
//! - [`VaultNode`]: one replica; propose commands, read applied state, report status.
//! - [`LogStore`], [`StateMachineStore`]: sealed storage (segment files for the log,
//!   purged so an erased record's bytes really leave the data directory; the applied
//!   state in a redb file, each record sealed under its own key of the key tree).
//! - Proposals are batched: one log entry carries every command proposed while the
//!   previous entry was being committed (see `batcher`).
//! - [`HttpNetwork`], [`VaultNode::peer_router`]: messages between replicas over HTTP
//!   (mutual TLS in a fleet). A follower forwards its proposals to the leader, and a
//!   replica that lost its state does not vote until it has caught up ([`VoteGate`]).

pub mod anchor;
pub use epochs::EpochError;
mod batcher;
mod epochs;
mod files;
mod keytree;
mod lease;
mod log_store;
mod network;
mod peer;
#[cfg(test)]
mod power_cut;
mod records;
pub use records::{ReadError, View, CACHE_BYTES};
pub mod rollback;
mod snapshot_stream;
mod spool;
mod state_machine;
mod types;
mod wal;

pub use log_store::LogStore;
pub use network::{HttpNetwork, PeerCallError, PeerClient};
pub use peer::{AdmitRequest, JoinRequest, PeerRefusal, ReplicaReport, VoteGate};
pub use spool::SnapshotFile;
pub use state_machine::{SnapshotBuilder, SnapshotFigures, StateMachineStore};
pub use types::{Batch, TypeConfig, VaultRaft};

use crate::epoch::EpochSealer;
use crate::seal::Sealer;
use crate::state::{Applied, Command, VaultState};
use batcher::Batcher;
use openraft::metrics::WaitError;
use openraft::{BasicNode, Config, SnapshotPolicy};
use state_machine::StateHandle;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long [`VaultNode::start`] waits for a leader.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight state machine work (snapshot writes).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// How long a proposal may wait for a quorum (and a leader) before the caller hears
/// "unavailable".
pub(crate) const PROPOSE_WAIT: Duration = Duration::from_secs(5);
/// How long a join request may take: the leader answers once the replica caught up.
const JOIN_CALL_WAIT: Duration = Duration::from_secs(150);
/// How long a snapshot chunk's answer may take, milliseconds (see [`raft_config`]).
const SNAPSHOT_INSTALL_TIMEOUT_MS: u64 = 60_000;

/// Entries between policy snapshots; erasures trigger one at once.
const SNAPSHOT_EVERY: u64 = 1000;
/// Most entries in one AppendEntries: that many full batches of the largest commands
/// stay well under the peers' body limit (see the test), so a follower that fell
/// behind a burst of registrations catches up instead of being refused every payload.
const MAX_PAYLOAD_ENTRIES: u64 = 32;
/// How long an epoch lasts unless configured (docs/VAULT.md §Crypto-erasure).
pub const DEFAULT_EPOCH: Duration = Duration::from_secs(3600);

/// What a replica needs to start.
pub struct NodeConfig {
    /// Data directory (log, vote, applied state), created with mode 0700 if absent.
    pub dir: PathBuf,
    /// Seals everything written to `dir`.
    pub sealer: Arc<dyn Sealer>,
    /// This replica's Raft id, stable for its lifetime.
    pub node_id: u64,
    /// `host:port` where peers reach this replica's [`VaultNode::peer_router`].
    pub addr: String,
    /// How this replica reaches its peers.
    pub network: HttpNetwork,
    /// Whether this replica votes (closed while a rejoining replica catches up).
    pub votes: VoteGate,
    /// A monotonic counter outside the data directory that its state is bound to
    /// (`anchor.rs`); none without a TPM.
    pub counter: Option<anchor::RollbackCounter>,
    /// How long an epoch lasts: at its end the old epoch key is destroyed (`epochs.rs`).
    pub epoch_length: Duration,
}

impl NodeConfig {
    /// A replica on plain HTTP that votes: tests and in-process clusters.
    pub fn local(dir: PathBuf, sealer: Arc<dyn Sealer>, node_id: u64, addr: String) -> Self {
        NodeConfig {
            dir,
            sealer,
            node_id,
            addr,
            network: HttpNetwork::new(),
            votes: VoteGate::new(true),
            counter: None,
            epoch_length: DEFAULT_EPOCH,
        }
    }
}

impl fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeConfig")
            .field("dir", &self.dir)
            .field("sealer", &self.sealer.describe())
            .field("node_id", &self.node_id)
            .field("addr", &self.addr)
            .field("votes", &self.votes.is_open())
            .field("counter", &self.counter)
            .field("epoch_length", &self.epoch_length)
            .finish_non_exhaustive()
    }
}

/// How a replica that was never initialised joins a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Bootstrap {
    /// A one-replica vault: initialise with this node alone and wait until it leads.
    SingleReplica,
    /// Initialise with these members (id → `host:port`) and wait until a leader is known.
    Members(BTreeMap<u64, String>),
    /// Do not initialise: another member's initialisation reaches this one. Returns at
    /// once.
    Join,
}

/// Unseals `path`, a file in the data directory `dir` of a node, for audits and tests
/// of everything the node keeps at rest: `None` if it is not one of the node's sealed
/// files, an error if it does not open under `sealer`. A log segment yields its
/// records' plaintexts one after another.
pub fn unseal_file(
    dir: &Path,
    path: &Path,
    sealer: &dyn Sealer,
) -> Option<Result<Vec<u8>, String>> {
    let relative = path.strip_prefix(dir).ok()?;
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => return Some(Err(format!("{}: {e}", path.display()))),
    };
    let open = |context| {
        crate::epoch::open_any(sealer, context, &bytes)
            .map(|plain| plain.to_vec())
            .map_err(|e| e.to_string())
    };
    if relative == Path::new(state_machine::SNAPSHOT_FILE) {
        // Version 2 (records under the key tree) or version 1.
        return Some(
            open(state_machine::SNAPSHOT_CONTEXT_V2)
                .or_else(|_| open(state_machine::SNAPSHOT_CONTEXT)),
        );
    }
    if relative == Path::new(records::DB_FILE) {
        // Not sealed as a whole: its rows are, under the key tree whose root is in
        // `keyroot`. What the file gives without that is the file itself.
        return Some(Ok(bytes));
    }
    if relative == Path::new(state_machine::KEY_ROOT_FILE) {
        return Some(open(state_machine::KEY_ROOT_CONTEXT));
    }
    if relative == Path::new(epochs::EPOCH_FILE) {
        return Some(open(epochs::EPOCH_CONTEXT));
    }
    log_store::unseal_file(sealer, relative, &bytes)
}

/// Everything a data directory (a replica's, or a copy of one) reveals to whoever also
/// holds its key store: its applied state with every log entry after it applied,
/// records' secrets included. For audits, and for the tests that attack
/// erasure with a copy of the disk. Reads the directory as a replica starting on it
/// would (cutting a torn log tail), so use it on a copy, never on a running replica's
/// directory.
pub async fn open_copy(dir: &Path, sealer: Arc<dyn Sealer>) -> Result<VaultState, String> {
    use openraft::storage::RaftStateMachine;
    use openraft::RaftLogReader;
    let opened = {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let sealer = Arc::new(EpochSealer::open(sealer).map_err(|e| e.to_string())?);
            let log = LogStore::open(&dir, sealer.clone()).map_err(|e| e.to_string())?;
            let sm = StateMachineStore::open(&dir, sealer).map_err(|e| e.to_string())?;
            Ok::<_, String>((log, sm))
        })
        .await
        .map_err(|e| e.to_string())??
    };
    let (mut log, mut sm) = opened;
    let (applied, _) = sm.applied_state().await.map_err(|e| e.to_string())?;
    let from = applied.map_or(0, |id| id.index + 1);
    let entries = log
        .try_get_log_entries(from..)
        .await
        .map_err(|e| e.to_string())?;
    sm.apply(entries).await.map_err(|e| e.to_string())?;
    sm.export().map_err(|e| e.to_string())
}

/// Why a replica did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The data directory could not be opened (I/O, wrong key, damaged file).
    #[error("cannot open the vault data directory {dir}: {reason}")]
    Storage {
        /// The data directory.
        dir: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The data directory is older than the replica's monotonic counter says, or does
    /// not match it.
    #[error("cannot serve the vault data directory {dir}: {reason}")]
    Rollback {
        /// The data directory.
        dir: PathBuf,
        /// What the anchor check found, and what to do.
        reason: anchor::AnchorError,
    },
    /// openraft refused to start or initialise.
    #[error("the Raft node did not start: {0}")]
    Raft(String),
    /// No leader emerged in time (for a one-replica vault: this node did not become
    /// leader, e.g. the directory belongs to a larger cluster).
    #[error("node {node_id} saw no leader within {waited:?}; check that a majority of replicas is running")]
    NoLeader {
        /// This replica.
        node_id: u64,
        /// How long it waited.
        waited: Duration,
    },
}

/// Why a proposal did not take effect (or may not have).
#[derive(Clone, Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum ProposeError {
    /// No leader, no quorum, not the leader, or shutting down: retry later or elsewhere.
    /// After a timeout the command may still commit later.
    #[error("the vault is unavailable: {0}")]
    Unavailable(String),
    /// Storage failed or the node stopped on an error: this replica needs an operator.
    #[error("the vault replica failed: {0}")]
    Fatal(String),
}

/// A replica's view of the cluster, for `/metrics` and `vault status`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStatus {
    /// This replica.
    pub node_id: u64,
    /// The leader this replica knows of.
    pub leader_id: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Index of the last entry in the log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to the state machine.
    pub last_applied_index: Option<u64>,
    /// Index of the last entry known committed (as durably recorded).
    pub commit_index: Option<u64>,
    /// Index the latest snapshot covers.
    pub snapshot_index: Option<u64>,
    /// Index up to which the log was purged (after a snapshot).
    pub purged_index: Option<u64>,
}

/// One vault replica running the [`VaultState`] machine under Raft.
pub struct VaultNode {
    node_id: u64,
    addr: String,
    raft: VaultRaft,
    state: StateHandle,
    log: LogStore,
    batcher: Batcher,
    network: HttpNetwork,
    votes: VoteGate,
    lease: lease::QuorumLease,
    eraser: JoinHandle<()>,
    lease_watch: JoinHandle<()>,
    book: Arc<std::sync::Mutex<rollback::Book>>,
    book_keeper: JoinHandle<()>,
    anchor_keeper: Option<JoinHandle<()>>,
    epochs: Arc<epochs::Epochs>,
    epoch_keeper: JoinHandle<()>,
}

impl fmt::Debug for VaultNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultNode")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

fn raft_config() -> Result<Config, StartError> {
    Config {
        cluster_name: "backlock-vault".to_owned(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
        // After a snapshot every entry it covers is purged: the log must not keep erased
        // records' bytes.
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        snapshot_max_chunk_size: network::SNAPSHOT_CHUNK,
        // Each chunk of a snapshot must be answered within this, and the answer to the
        // last one waits for the follower to install the whole state (seconds at a
        // million accounts). openraft's 200 ms made every send of a large snapshot
        // time out and start over.
        install_snapshot_timeout: SNAPSHOT_INSTALL_TIMEOUT_MS,
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        ..Config::default()
    }
    .validate()
    .map_err(|e| StartError::Raft(e.to_string()))
}

impl VaultNode {
    /// Starts a one-replica vault on `config.dir`: opens the sealed storage, initialises
    /// the cluster on first start, and returns once this node leads.
    pub async fn start(config: NodeConfig) -> Result<VaultNode, StartError> {
        Self::start_with(config, Bootstrap::SingleReplica).await
    }

    /// Starts a replica, initialising the cluster as `bootstrap` says if it never was.
    pub async fn start_with(
        config: NodeConfig,
        bootstrap: Bootstrap,
    ) -> Result<VaultNode, StartError> {
        let NodeConfig {
            dir,
            sealer,
            node_id,
            addr,
            network,
            votes,
            counter,
            epoch_length,
        } = config;
        let open_dir = dir.clone();
        let book_sealer = sealer.clone();
        let (log, sm, anchoring, epoch_sealer) = tokio::task::spawn_blocking(move || {
            let epoch_sealer = Arc::new(
                EpochSealer::open(sealer.clone())
                    .map_err(|e| storage_error_of(&open_dir, e.to_string()))?,
            );
            let log = LogStore::open(&open_dir, epoch_sealer.clone())
                .map_err(|e| storage_error_of(&open_dir, e.to_string()))?;
            // Before anything of the directory is used: a stale copy must not serve.
            let anchoring = counter
                .map(|counter| anchor::Anchoring::check(counter, &open_dir, sealer.clone(), &log))
                .transpose()
                .map_err(|reason| StartError::Rollback {
                    dir: open_dir.clone(),
                    reason,
                })?;
            let sm = StateMachineStore::open(&open_dir, epoch_sealer.clone())
                .map_err(|e| storage_error_of(&open_dir, e.to_string()))?;
            Ok::<_, StartError>((log, sm, anchoring, epoch_sealer))
        })
        .await
        .map_err(|e| storage_error_of(&dir, e.to_string()))??;
        let state = sm.state_handle();
        let dropped_records = sm.dropped_records();
        let epochs = Arc::new(epochs::Epochs {
            sealer: epoch_sealer,
            key_root: sm.key_root(),
            log: log.clone(),
            dropped: dropped_records.clone(),
            start_file: dir.join(epochs::EPOCH_FILE),
            ending: tokio::sync::Mutex::new(()),
        });
        if !epochs
            .sealer
            .stale()
            .map_err(|e| storage_error_of(&dir, e.to_string()))?
            .is_empty()
        {
            // A crash interrupted the end of an epoch: finish it before anything else.
            epochs
                .finish()
                .await
                .map_err(|e| storage_error_of(&dir, e.to_string()))?;
        }

        let config = Arc::new(raft_config()?);
        let raft = VaultRaft::new(node_id, config, network.clone(), log.clone(), sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if !votes.is_open() {
            // Nor stands for election: a candidate votes for itself.
            raft.runtime_config().elect(false);
        }
        let book = Arc::new(std::sync::Mutex::new(rollback::read_book(
            &dir,
            &*book_sealer,
        )));
        let book_keeper = tokio::spawn(rollback::keep_book(
            raft.clone(),
            dir.clone(),
            book_sealer,
            book.clone(),
        ));
        let anchor_keeper = anchoring.map(|(anchoring, anchor)| {
            tokio::spawn(anchoring.keep(raft.clone(), log.clone(), anchor))
        });
        let eraser = tokio::spawn(snapshot_after_drops(raft.clone(), dropped_records));
        let epoch_keeper = tokio::spawn(epochs.clone().keep(raft.clone(), epoch_length));
        let lease = lease::QuorumLease::default();
        let lease_watch = lease.watch(raft.clone());
        let node = VaultNode {
            node_id,
            addr: addr.clone(),
            batcher: Batcher::start(raft.clone(), node_id, network.clone(), lease.clone()),
            lease,
            lease_watch,
            raft,
            network,
            votes,
            state,
            log,
            eraser,
            book,
            book_keeper,
            anchor_keeper,
            epochs,
            epoch_keeper,
        };

        let initialized = node
            .raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let members = match bootstrap {
            Bootstrap::Join => return Ok(node),
            Bootstrap::SingleReplica => BTreeMap::from([(node_id, addr)]),
            Bootstrap::Members(members) => members,
        };
        let single = members.len() == 1 && members.contains_key(&node_id);
        if !initialized {
            let nodes: BTreeMap<u64, BasicNode> = members
                .into_iter()
                .map(|(id, addr)| (id, BasicNode { addr }))
                .collect();
            node.raft
                .initialize(nodes)
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
        }
        let waited = node
            .raft
            .wait(Some(LEADER_WAIT))
            .metrics(
                |m| match m.current_leader {
                    Some(leader) => !single || leader == node_id,
                    None => false,
                },
                "a leader is known",
            )
            .await;
        match waited {
            Ok(_) => Ok(node),
            Err(e) => {
                node.shutdown().await;
                match e {
                    WaitError::Timeout(..) => Err(StartError::NoLeader {
                        node_id,
                        waited: LEADER_WAIT,
                    }),
                    WaitError::ShuttingDown => {
                        Err(StartError::Raft("Raft stopped while starting".to_owned()))
                    }
                }
            }
        }
    }

    /// Ends the current epoch now (as the timer does at the end of each): the old epoch
    /// key is destroyed once the live files are sealed under the next. Returns the new
    /// epoch.
    pub async fn end_epoch(&self) -> Result<u64, epochs::EpochError> {
        self.epochs.end(Some(&self.raft)).await
    }

    /// The epoch whose key seals new values.
    pub fn epoch(&self) -> u64 {
        self.epochs.sealer.current()
    }

    /// Commits `command` to the log (durably, on a majority) and applies it; returns the
    /// state machine's result. Concurrent proposals share log entries (see `batcher`).
    pub async fn propose(&self, command: Command) -> Result<Applied, ProposeError> {
        self.batcher.propose(command).await
    }

    /// Commits `commands` in order (in as few entries as the batcher allows) and returns
    /// each one's result.
    pub async fn propose_all(&self, commands: Vec<Command>) -> Vec<Result<Applied, ProposeError>> {
        self.batcher.queue().propose_all(commands).await
    }

    /// Runs `f` on the state applied so far on this replica (not linearizable on its own:
    /// a follower may lag), one consistent read transaction. `f` holds up applying:
    /// keep it short and never await inside. Fails if a read in `f` failed (whatever
    /// `f` returned then is not to be trusted).
    pub fn read<T>(&self, f: impl FnOnce(&View<'_>) -> T) -> Result<T, ReadError> {
        Ok(self.state.read(f)?)
    }

    /// Join tickets and retired replicas as applied here.
    pub fn members(&self) -> crate::members::Members {
        self.state.summary().members
    }

    /// Accounts with a record on this replica.
    pub fn records(&self) -> u64 {
        self.state.summary().records
    }

    /// What the last snapshot built on this replica cost, if it built one since it
    /// started.
    pub fn last_snapshot(&self) -> Option<SnapshotFigures> {
        self.state.last_snapshot()
    }

    /// This replica's view of the cluster.
    pub fn status(&self) -> NodeStatus {
        let metrics = self.raft.metrics().borrow().clone();
        NodeStatus {
            node_id: self.node_id,
            leader_id: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index,
            // From the state machine itself: metrics trail the apply by a moment.
            last_applied_index: self.state.summary().last_applied.map(|id| id.index),
            commit_index: self.log.committed().map(|id| id.index),
            snapshot_index: metrics.snapshot.map(|id| id.index),
            purged_index: metrics.purged.map(|id| id.index),
        }
    }

    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.current_leader == Some(self.node_id)
    }

    /// Whether this replica leads and may append now: it has heard from a quorum
    /// within its lease (a leader cut off from its majority stops appending).
    pub fn may_append(&self) -> bool {
        self.is_leader() && self.lease.check(&self.raft, self.node_id).is_ok()
    }

    /// This replica's report on itself, as peers and `vault status` see it.
    pub fn report(&self) -> ReplicaReport {
        peer::report(&self.peer_context())
    }

    /// The gate that keeps a rejoining replica from voting.
    pub fn votes(&self) -> &VoteGate {
        &self.votes
    }

    /// Waits until this replica has applied everything committed before the call, so
    /// that a read of its state that follows is linearizable. On a follower this asks
    /// the leader for its commit index.
    pub async fn catch_up(&self) -> Result<(), ProposeError> {
        let index = match peer::leader_read_index(&self.raft).await {
            Ok(index) => index,
            Err(openraft::error::RaftError::APIError(
                openraft::error::CheckIsLeaderError::ForwardToLeader(forward),
            )) => {
                let (leader_id, leader) = forward
                    .leader_id
                    .zip(forward.leader_node)
                    .ok_or_else(|| ProposeError::Unavailable("no leader is known".to_owned()))?;
                self.network
                    .read_index(leader_id, &leader.addr, PROPOSE_WAIT)
                    .await
                    .map_err(|e| ProposeError::Unavailable(e.to_string()))?
            }
            Err(e) => return Err(ProposeError::Unavailable(e.to_string())),
        };
        let Some(index) = index else { return Ok(()) };
        self.raft
            .wait(Some(PROPOSE_WAIT))
            .applied_index_at_least(Some(index), "caught up with the leader")
            .await
            .map(|_| ())
            .map_err(|e| ProposeError::Unavailable(e.to_string()))
    }

    /// Asks the leader, through the peers at `contacts`, to make this replica a voting
    /// member, and opens the vote gate once the leader says it holds the whole log.
    /// Retries until it succeeds or `deadline` passes.
    pub async fn join(&self, contacts: &[String], deadline: Instant) -> Result<(), String> {
        let request = JoinRequest {
            node_id: self.node_id,
            addr: self.addr.clone(),
        };
        let mut leader: Option<String> = None;
        let mut last = "no other replica is configured".to_owned();
        loop {
            let targets = leader
                .iter()
                .chain(contacts.iter())
                .cloned()
                .collect::<Vec<_>>();
            for target in targets {
                if target == self.addr {
                    continue;
                }
                match self.network.join(&target, &request, JOIN_CALL_WAIT).await {
                    Ok(()) => {
                        self.open_votes();
                        return Ok(());
                    }
                    Err(PeerCallError::Refused(PeerRefusal::NotLeader(Some((_, addr))))) => {
                        leader = Some(addr);
                        last = format!("{target} is not the leader");
                        break;
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            if Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Lets this replica vote and stand for election.
    pub fn open_votes(&self) {
        self.votes.open();
        self.raft.runtime_config().elect(true);
    }

    /// The openraft handle.
    pub(crate) fn raft(&self) -> &VaultRaft {
        &self.raft
    }

    /// After a restart: votes once enough other members at `contacts` confirm this
    /// replica's state is current (`rollback.rs`).
    pub async fn confirm_current(&self, contacts: &[String]) {
        rollback::confirm_current(self, &self.network, &self.votes, contacts).await
    }

    fn peer_context(&self) -> peer::PeerContext {
        peer::PeerContext {
            raft: self.raft.clone(),
            votes: self.votes.clone(),
            lease: self.lease.clone(),
            queue: self.batcher.queue(),
            state: self.state.clone(),
            log: self.log.clone(),
            book: self.book.clone(),
        }
    }

    /// The routes peers call (Raft messages, forwarded proposals, joins, status),
    /// unguarded: for replicas that trust every caller (in-process tests).
    pub fn peer_router(&self) -> axum::Router {
        peer::router(self.peer_context())
    }

    /// The routes a fleet replica serves its peers over mutual TLS, behind the guard
    /// that checks each caller's certificate against the membership, the join tickets
    /// and the retired ids; `transfer` is the fleet secret a ticket buys, `configured`
    /// the replica ids of this replica's configuration.
    pub fn fleet_peer_router(
        &self,
        transfer: zeroize::Zeroizing<Vec<u8>>,
        configured: std::collections::BTreeSet<u64>,
    ) -> axum::Router {
        let context = self.peer_context();
        let secrets = peer::secrets_router(context.clone(), transfer);
        peer::guarded_router(context, secrets, configured)
    }

    /// Stops Raft and waits (bounded) for in-flight state machine work to finish.
    pub async fn shutdown(self) {
        self.batcher.stop();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft task ended abnormally");
        }
        self.eraser.abort();
        self.epoch_keeper.abort();
        self.lease_watch.abort();
        self.book_keeper.abort();
        if let Some(keeper) = &self.anchor_keeper {
            keeper.abort();
        }
        // openraft's state machine worker and snapshot builds hold the store; once they
        // let go, nothing writes to the directory any more.
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        while self.state.holders() > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for VaultNode {
    fn drop(&mut self) {
        self.eraser.abort();
        self.epoch_keeper.abort();
        self.lease_watch.abort();
        self.book_keeper.abort();
        if let Some(keeper) = &self.anchor_keeper {
            keeper.abort();
        }
    }
}

fn storage_error_of(dir: &Path, reason: String) -> StartError {
    StartError::Storage {
        dir: dir.to_path_buf(),
        reason,
    }
}

/// Triggers a snapshot after a record was erased or replaced, and again until one covers
/// that entry (a build already running may predate it). The snapshot lets openraft purge
/// the log entries that carried the record's bytes.
async fn snapshot_after_drops(raft: VaultRaft, mut dropped: watch::Receiver<Option<u64>>) {
    while dropped.changed().await.is_ok() {
        let Some(target) = *dropped.borrow_and_update() else {
            continue;
        };
        loop {
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
            let covered = raft
                .wait(Some(Duration::from_secs(2)))
                .metrics(
                    |m| m.snapshot.is_some_and(|s| s.index >= target),
                    "a snapshot covers the dropped record",
                )
                .await;
            match covered {
                Ok(_) => break,
                Err(WaitError::Timeout(..)) => {
                    tracing::warn!(target, "snapshot after erasure is late; retrying")
                }
                Err(WaitError::ShuttingDown) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Anchor, NewRecord};
    use backlock_vault_proto::server::PASSWORD_FILE_LEN;
    use backlock_vault_proto::token::MAX_ACCOUNT_LEN;
    use backlock_vault_proto::wrap::WRAPPED_LEN;
    use openraft::raft::AppendEntriesRequest;
    use openraft::{CommittedLeaderId, EntryPayload};
    use types::{Entry, LogId};

    /// The largest command a device can cause (an account name at its limit, the
    /// largest anchor, a whole record).
    fn largest_commands() -> Vec<Command> {
        let account = "a".repeat(MAX_ACCOUNT_LEN);
        let record = NewRecord {
            record_id: [0xff; 16],
            password_file: vec![0xff; PASSWORD_FILE_LEN],
            wrapped: vec![0xff; WRAPPED_LEN],
            owner_public_key: [0xff; 32],
            max_attempts: u32::MAX,
        };
        vec![
            Command::Replace {
                account: account.clone(),
                generation: u64::MAX,
                record,
            },
            Command::SetAnchor {
                account: account.clone(),
                generation: u64::MAX,
                anchor: Anchor {
                    generation: u64::MAX,
                    value: vec![0xff; crate::service::MAX_ANCHOR_BYTES],
                },
            },
            Command::Open {
                account,
                generation: u64::MAX,
                id: [0xff; 16],
                ke1: vec![0xff; 96],
                now_ms: u64::MAX,
                ttl_ms: u64::MAX,
            },
        ]
    }

    #[test]
    fn the_largest_append_entries_fits_the_peers_body_limit() {
        let largest = largest_commands()
            .into_iter()
            .max_by_key(|c| postcard::to_allocvec(c).unwrap().len())
            .unwrap();
        let entry = |index| Entry {
            log_id: LogId::new(CommittedLeaderId::new(u64::MAX, u64::MAX), index),
            payload: EntryPayload::Normal(Batch(vec![largest.clone(); batcher::MAX_BATCH])),
        };
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: types::Vote::new_committed(u64::MAX, u64::MAX),
            prev_log_id: None,
            entries: (0..MAX_PAYLOAD_ENTRIES)
                .map(|i| entry(u64::MAX - i))
                .collect(),
            leader_commit: None,
        };
        let size = postcard::to_allocvec(&request).unwrap().len();
        assert!(
            size * 2 <= network::MAX_PEER_BODY,
            "{size} bytes: the largest AppendEntries must stay under half the peers' limit"
        );
        assert_eq!(
            raft_config().unwrap().max_payload_entries,
            MAX_PAYLOAD_ENTRIES
        );
    }
}
