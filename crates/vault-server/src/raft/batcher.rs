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

use super::types::{Batch, VaultRaft};
use super::ProposeError;
use crate::state::{Applied, Command};
use openraft::error::{ClientWriteError, Fatal, RaftError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Most commands in one entry: bounds an entry's size (a command is at most a few
/// hundred bytes).
const MAX_BATCH: usize = 512;

/// How long a proposal may wait for a quorum before the caller hears "unavailable".
const PROPOSE_WAIT: Duration = Duration::from_secs(5);

type Reply = oneshot::Sender<Result<Applied, ProposeError>>;

/// Submits commands to Raft in batches; see the module docs.
pub(crate) struct Batcher {
    queue: mpsc::UnboundedSender<(Command, Reply)>,
    task: JoinHandle<()>,
}

impl Batcher {
    pub(crate) fn start(raft: VaultRaft, node_id: u64) -> Self {
        let (queue, pending) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(raft, node_id, pending));
        Self { queue, task }
    }

    /// Commits `command` in the next entry and returns what applying it gave.
    pub(crate) async fn propose(&self, command: Command) -> Result<Applied, ProposeError> {
        let (reply, result) = oneshot::channel();
        self.queue
            .send((command, reply))
            .map_err(|_| shutting_down())?;
        result.await.unwrap_or_else(|_| Err(shutting_down()))
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
        let results = match write(&raft, node_id, Batch(commands)).await {
            Ok(results) if results.len() == count => results.into_iter().map(Ok).collect(),
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

/// Commits one batch through Raft (durably, on a majority) and applies it.
async fn write(raft: &VaultRaft, node_id: u64, batch: Batch) -> Result<Vec<Applied>, ProposeError> {
    let written = tokio::time::timeout(PROPOSE_WAIT, raft.client_write(batch)).await;
    let Ok(written) = written else {
        return Err(ProposeError::Unavailable(format!(
            "no quorum committed the command within {PROPOSE_WAIT:?}; it may still commit"
        )));
    };
    match written {
        Ok(response) => Ok(response.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            let leader = match (forward.leader_id, forward.leader_node) {
                (Some(id), Some(node)) => format!("node {id} at {}", node.addr),
                (Some(id), None) => format!("node {id}"),
                _ => "unknown (election in progress)".to_owned(),
            };
            Err(ProposeError::Unavailable(format!(
                "replica {node_id} is not the leader; the leader is {leader}"
            )))
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(ProposeError::Fatal(e.to_string()))
        }
        Err(RaftError::Fatal(Fatal::Stopped)) => Err(shutting_down()),
        Err(RaftError::Fatal(e)) => Err(ProposeError::Fatal(e.to_string())),
    }
}

fn shutting_down() -> ProposeError {
    ProposeError::Unavailable("the replica is shutting down".to_owned())
}
