//! The leader appends a command only while it has heard from a quorum recently.
//!
//! An entry appended by a leader cut off from its quorum is not committed then, but it
//! stays in that leader's log and commits when the quorum comes back. A guess refused as
//! "unavailable" during a three-site outage would then still count, long after the
//! device was told otherwise, and a device retrying through an outage could exhaust the
//! limit without a single KE2. So a leader that has not heard from a quorum within
//! [`LEASE`] appends nothing and the proposal waits (or fails as unavailable); only
//! proposals in the first [`LEASE`] of an outage can still count later.

use super::types::VaultRaft;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How old the last quorum acknowledgement may be for the leader to append.
pub(crate) const LEASE: Duration = Duration::from_millis(1000);

/// When the leader last heard from a quorum, as openraft reports it.
#[derive(Clone, Default)]
pub(crate) struct QuorumLease {
    acked: Arc<Mutex<Option<Instant>>>,
}

impl QuorumLease {
    /// Follows the leader's quorum acknowledgements in `raft`'s metrics.
    pub(crate) fn watch(&self, raft: VaultRaft) -> JoinHandle<()> {
        let acked = self.acked.clone();
        let mut metrics = raft.metrics();
        tokio::spawn(async move {
            while metrics.changed().await.is_ok() {
                // A report computes the age when it is made; no report means no news,
                // so the recorded instant simply ages.
                let at = metrics
                    .borrow_and_update()
                    .millis_since_quorum_ack
                    .and_then(|ms| Instant::now().checked_sub(Duration::from_millis(ms)));
                *acked.lock().expect("lease lock poisoned") = at;
            }
        })
    }

    /// Whether this node, the leader, may append now; otherwise why not.
    pub(crate) fn check(&self, raft: &VaultRaft, node_id: u64) -> Result<(), String> {
        {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let alone = membership.voter_ids().eq([node_id]);
            if alone || metrics.current_leader != Some(node_id) {
                return Ok(());
            }
        }
        let acked = *self.acked.lock().expect("lease lock poisoned");
        match acked {
            Some(at) if at.elapsed() <= LEASE => Ok(()),
            Some(at) => Err(format!(
                "the leader has not heard from a majority for {} ms",
                at.elapsed().as_millis()
            )),
            None => Err("the leader has not heard from a majority yet".to_owned()),
        }
    }
}
