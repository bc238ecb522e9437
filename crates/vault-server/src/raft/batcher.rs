//! Group commit of proposals: the commands proposed while one log entry is being
//! committed ride together in the next.
//!
//! openraft 0.9 appends each client write on its own and waits for its flush before it
//! appends the next, so one command per entry would cost one `fdatasync` (and, in a
//! fleet, one replication round) per command. The batcher keeps one entry in flight and
//! puts every command that arrives meanwhile into the next entry, so a busy vault pays
//! one flush for many guesses while an idle one adds no delay. The commands of an entry
//! are applied in order, exactly as if they had been proposed one after another, and no
//! caller hears back before the whole entry is committed.
//!
//! On a follower the batch goes to the leader, which commits it as one entry and sends
//! back what applying it gave. A batch is retried, until [`PROPOSE_WAIT`] runs out,
//! only when it surely was not written (this replica or the peer asked was not the
//! leader, or the leader could not be reached, or it has not heard from a quorum lately
//! and wrote nothing, see `lease`): a retry never commits a command twice.

use super::lease::QuorumLease;
use super::network::{HttpNetwork, PeerCallError};
use super::peer::PeerRefusal;
use super::types::{Batch, VaultRaft};
use super::{ProposeError, PROPOSE_WAIT};
use crate::state::{Applied, Command};
use openraft::error::{ClientWriteError, Fatal, RaftError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Most commands in one entry: bounds an entry's size (a command is at most a few
/// hundred bytes).
pub(crate) const MAX_BATCH: usize = 512;

/// Pause before retrying a batch that found no leader.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

type Reply = oneshot::Sender<Result<Applied, ProposeError>>;

/// Submits commands to Raft in batches; see the module docs.
pub(crate) struct Batcher {
    queue: Queue,
    task: JoinHandle<()>,
}

/// Where commands wait for the next entry; the leader also queues here the commands its
/// followers forward, so that they share entries with its own.
#[derive(Clone)]
pub(crate) struct Queue(mpsc::UnboundedSender<(Command, Reply)>);

impl Queue {
    /// Queues `commands` in order and waits for each one's result.
    pub(crate) async fn propose_all(
        &self,
        commands: Vec<Command>,
    ) -> Vec<Result<Applied, ProposeError>> {
        let mut waiting = Vec::with_capacity(commands.len());
        for command in commands {
            let (reply, result) = oneshot::channel();
            if self.0.send((command, reply)).is_err() {
                waiting.push(None);
            } else {
                waiting.push(Some(result));
            }
        }
        let mut results = Vec::with_capacity(waiting.len());
        for result in waiting {
            results.push(match result {
                Some(result) => result.await.unwrap_or_else(|_| Err(shutting_down())),
                None => Err(shutting_down()),
            });
        }
        results
    }
}

impl Batcher {
    pub(crate) fn start(
        raft: VaultRaft,
        node_id: u64,
        network: HttpNetwork,
        lease: QuorumLease,
    ) -> Self {
        let (queue, pending) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(raft, node_id, network, lease, pending));
        Self {
            queue: Queue(queue),
            task,
        }
    }

    /// Commits `command` in the next entry and returns what applying it gave.
    pub(crate) async fn propose(&self, command: Command) -> Result<Applied, ProposeError> {
        self.queue
            .propose_all(vec![command])
            .await
            .pop()
            .unwrap_or_else(|| Err(shutting_down()))
    }

    /// The queue, for commands forwarded by followers.
    pub(crate) fn queue(&self) -> Queue {
        self.queue.clone()
    }

    /// Stops submitting; proposals still queued get "unavailable".
    pub(crate) fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    raft: VaultRaft,
    node_id: u64,
    network: HttpNetwork,
    lease: QuorumLease,
    mut pending: mpsc::UnboundedReceiver<(Command, Reply)>,
) {
    while let Some(first) = pending.recv().await {
        // Everything that queued while the previous entry was committing.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Ok(next) = pending.try_recv() else {
                break;
            };
            batch.push(next);
        }
        let (commands, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let count = commands.len();
        let results = match write(&raft, node_id, &network, &lease, Batch(commands)).await {
            Ok(results) if results.len() == count => results,
            Ok(results) => {
                let e = ProposeError::Fatal(format!(
                    "the state machine returned {} results for {count} commands",
                    results.len()
                ));
                vec![Err(e); count]
            }
            Err(e) => vec![Err(e); count],
        };
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

/// Commits one batch through Raft (durably, on a majority), here or on the leader, and
/// applies it; returns each command's outcome.
async fn write(
    raft: &VaultRaft,
    node_id: u64,
    network: &HttpNetwork,
    lease: &QuorumLease,
    batch: Batch,
) -> Result<Vec<Result<Applied, ProposeError>>, ProposeError> {
    let deadline = Instant::now() + PROPOSE_WAIT;
    let may_still_commit = || {
        ProposeError::Unavailable(format!(
            "no quorum committed the command within {PROPOSE_WAIT:?}; it may still commit"
        ))
    };
    let mut why = "no leader is known (election in progress)".to_owned();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ProposeError::Unavailable(format!(
                "replica {node_id} could not reach a leader within {PROPOSE_WAIT:?}: {why}"
            )));
        }
        if let Err(no_quorum) = lease.check(raft, node_id) {
            why = no_quorum;
            tokio::time::sleep(RETRY_PAUSE.min(left)).await;
            continue;
        }
        let written = tokio::time::timeout(left, raft.client_write(batch.clone()))
            .await
            .map_err(|_| may_still_commit())?;
        let forward = match written {
            Ok(response) => return Ok(response.data.into_iter().map(Ok).collect()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => forward,
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                return Err(ProposeError::Fatal(e.to_string()))
            }
            Err(RaftError::Fatal(Fatal::Stopped)) => return Err(shutting_down()),
            Err(RaftError::Fatal(e)) => return Err(ProposeError::Fatal(e.to_string())),
        };
        let leader = forward
            .leader_id
            .filter(|id| *id != node_id)
            .zip(forward.leader_node);
        if let Some((leader_id, leader)) = leader {
            match network.propose(leader_id, &leader.addr, &batch, left).await {
                Ok(results) if results.len() == batch.0.len() => {
                    // Each command's own outcome: a failure of one (say, the leader lost
                    // its lead between two entries) leaves the others' results intact.
                    return Ok(results);
                }
                Ok(results) => {
                    return Err(ProposeError::Fatal(format!(
                        "leader {leader_id} returned {} results for {} commands",
                        results.len(),
                        batch.0.len()
                    )))
                }
                // Surely not written: wait for the election and try again.
                Err(e @ PeerCallError::NotSent { .. })
                | Err(e @ PeerCallError::Refused(PeerRefusal::NotLeader(_)))
                | Err(e @ PeerCallError::Refused(PeerRefusal::NoQuorum(_))) => {
                    why = format!("leader {leader_id}: {e}");
                }
                Err(PeerCallError::Refused(PeerRefusal::Rejected(e))) => {
                    return Err(ProposeError::Fatal(e))
                }
                Err(e) => {
                    return Err(ProposeError::Unavailable(format!(
                        "leader {leader_id}: {e}; the command may still commit"
                    )))
                }
            }
        }
        tokio::time::sleep(RETRY_PAUSE.min(left)).await;
    }
}

fn shutting_down() -> ProposeError {
    ProposeError::Unavailable("the replica is shutting down".to_owned())
}
