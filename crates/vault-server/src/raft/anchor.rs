//! Rollback detection with a hardware counter (docs/OPERATIONS.md §Rollback).
//!
//! The anchor is a sealed file in the data directory naming a value of the replica's
//! monotonic counter (a TPM NV counter, outside the disk) together with the vote term
//! and the log index that the replica held when it was written. The replica advances
//! the counter whenever its vote changes and, while its log grows, at most every
//! `advance_every`: first the anchor with the next value is written durably, then the
//! counter is incremented. So the anchor names the counter's value, or one more when a
//! crash fell between the two steps.
//!
//! On start, an anchor below the counter is a copy of the data directory that is older
//! than the last advance: the replica refuses it outright, even if every site was put
//! back at once, which nothing but independent counters can tell. A log or vote older
//! than the anchor (files put back one by one) is refused too. What remains: state
//! acknowledged after the last advance (at most `advance_every` of log growth) is not
//! covered by the counter; the member check of `rollback.rs` still runs on top.

use super::files;
use super::log_store::LogStore;
use super::types::VaultRaft;
use crate::counter::{CounterError, MonotonicCounter};
use crate::seal::Sealer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ANCHOR_FILE: &str = "anchor";
const ANCHOR_CONTEXT: &[u8] = b"backlock vault anchor";

/// What the replica held when the counter had `counter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// The counter's value this anchor belongs to.
    pub counter: u64,
    /// The term of the replica's vote.
    pub term: u64,
    /// An index the log held durably and committed: never truncated after.
    pub index: u64,
}

/// The data directory does not match the counter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorError {
    /// The anchor is older than the counter: a copy put back.
    #[error("this data directory was anchored at counter value {anchor}, but the counter is at {counter}: it is an older copy put back (a restored backup or VM snapshot). Do not serve it: remove this replica (`backlock vault remove`), wipe the directory and admit it again (docs/OPERATIONS.md §Rollback)")]
    Stale {
        /// The anchor's value.
        anchor: u64,
        /// The counter's.
        counter: u64,
    },
    /// The anchor is further ahead than a crash explains.
    #[error("this data directory was anchored at counter value {anchor}, ahead of the counter ({counter}): the configured counter is not this replica's (another TPM or NV index?); fix [tpm_counter]")]
    Ahead {
        /// The anchor's value.
        anchor: u64,
        /// The counter's.
        counter: u64,
    },
    /// The log or vote is older than the anchor: files put back one by one.
    #[error("this data directory's {what} is older than its anchor says ({found} < {anchored}): files were put back from an older copy. Do not serve it: remove this replica, wipe the directory and admit it again (docs/OPERATIONS.md §Rollback)")]
    Torn {
        /// "log" or "vote".
        what: &'static str,
        /// What the directory holds.
        found: u64,
        /// What the anchor names.
        anchored: u64,
    },
    /// The directory holds a log or a vote but no anchor.
    #[error("this data directory holds a log but no anchor: the anchor was removed, or the directory dates from before [tpm_counter] was set. Only an empty directory is put under a counter: remove this replica (`backlock vault remove`), wipe the directory and admit it again, and it copies the state from the others")]
    Missing,
    /// The counter or the anchor file failed.
    #[error("{0}")]
    Device(String),
}

impl From<CounterError> for AnchorError {
    fn from(e: CounterError) -> Self {
        AnchorError::Device(e.to_string())
    }
}

/// What the data directory holds, as read on start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// The term of the vote file (0: none).
    pub term: u64,
    /// The index the log ends at (0: empty).
    pub last_index: u64,
}

/// What to do with the directory at start.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The anchor matches the counter.
    Current,
    /// A crash fell between writing the anchor and advancing the counter: advance now.
    FinishAdvance,
    /// No anchor and nothing held yet: write the first anchor.
    Adopt,
}

/// Judges an anchor against the counter's value and what the directory holds.
pub fn judge(anchor: Option<Anchor>, counter: u64, held: Held) -> Result<Verdict, AnchorError> {
    let Some(anchor) = anchor else {
        // An anchor removed from a directory put back must not be re-adopted, so only
        // an empty directory (a new or wiped replica) gets its first anchor.
        let empty = held.term == 0 && held.last_index == 0;
        return if empty {
            Ok(Verdict::Adopt)
        } else {
            Err(AnchorError::Missing)
        };
    };
    if anchor.counter < counter {
        return Err(AnchorError::Stale {
            anchor: anchor.counter,
            counter,
        });
    }
    if anchor.counter > counter + 1 {
        return Err(AnchorError::Ahead {
            anchor: anchor.counter,
            counter,
        });
    }
    if held.term < anchor.term {
        return Err(AnchorError::Torn {
            what: "vote",
            found: held.term,
            anchored: anchor.term,
        });
    }
    if held.last_index < anchor.index {
        return Err(AnchorError::Torn {
            what: "log",
            found: held.last_index,
            anchored: anchor.index,
        });
    }
    Ok(if anchor.counter == counter + 1 {
        Verdict::FinishAdvance
    } else {
        Verdict::Current
    })
}

/// A replica's counter, and how often its log growth advances it.
#[derive(Clone, Debug)]
pub struct RollbackCounter {
    /// The counter (a TPM NV index).
    pub counter: Arc<dyn MonotonicCounter>,
    /// The longest time between log growth and the advance that covers it.
    pub every: Duration,
}

/// The replica's counter and where its anchor lives.
#[derive(Clone)]
pub(crate) struct Anchoring {
    counter: Arc<dyn MonotonicCounter>,
    dir: PathBuf,
    sealer: Arc<dyn Sealer>,
    every: Duration,
}

impl Anchoring {
    /// Checks the directory against `counter` before the replica starts, and brings the
    /// anchor and the counter level. Blocking (file and TPM I/O).
    pub(crate) fn check(
        counter: RollbackCounter,
        dir: &Path,
        sealer: Arc<dyn Sealer>,
        log: &LogStore,
    ) -> Result<(Anchoring, Anchor), AnchorError> {
        let anchoring = Anchoring {
            counter: counter.counter,
            dir: dir.to_path_buf(),
            sealer,
            every: counter.every,
        };
        let file = |e: files::FileError| AnchorError::Device(e.to_string());
        let anchor: Option<Anchor> =
            files::read_sealed(&*anchoring.sealer, &dir.join(ANCHOR_FILE), ANCHOR_CONTEXT)
                .map_err(file)?;
        let vote = log.vote().map_err(file)?;
        let held = Held {
            term: vote.map_or(0, |v| v.leader_id.term),
            last_index: log.last_index(),
        };
        let value = anchoring.counter.read()?;
        let anchor = match judge(anchor, value, held)? {
            Verdict::Current => anchor.expect("judged current"),
            Verdict::FinishAdvance => {
                anchoring.counter.increment()?;
                anchor.expect("judged one ahead")
            }
            Verdict::Adopt => anchoring.advance(held.term, log.durable_committed())?,
        };
        Ok((anchoring, anchor))
    }

    /// Writes the anchor of the counter's next value, then advances the counter to it.
    /// The value is read from the counter each time: after a failed increment whose
    /// answer was lost, the counter may be one ahead of the last anchor written.
    fn advance(&self, term: u64, index: u64) -> Result<Anchor, AnchorError> {
        let current = self.counter.read()?;
        let anchor = Anchor {
            counter: current + 1,
            term,
            index,
        };
        files::write_sealed_durably(
            &*self.sealer,
            &self.dir.join(ANCHOR_FILE),
            ANCHOR_CONTEXT,
            &anchor,
        )
        .map_err(|e| AnchorError::Device(e.to_string()))?;
        self.counter.increment()?;
        Ok(anchor)
    }

    /// Advances the anchor while the replica runs: at once when the vote's term moves,
    /// and at most every `every` while the committed log grows.
    pub(crate) async fn keep(self, raft: VaultRaft, log: LogStore, mut anchor: Anchor) {
        let poll = (self.every / 4).clamp(Duration::from_millis(20), Duration::from_millis(250));
        let mut last_advance = Instant::now();
        // After a failure, the next try waits an interval (a TPM answering
        // TPM_RC_NV_RATE wants fewer writes, not more).
        let mut retry_at = Instant::now();
        loop {
            tokio::time::sleep(poll).await;
            if Instant::now() < retry_at {
                continue;
            }
            let term = raft.metrics().borrow().vote.leader_id.term;
            let index = log.durable_committed();
            let due = term > anchor.term
                || (index > anchor.index && last_advance.elapsed() >= self.every);
            if !due {
                continue;
            }
            let this = self.clone();
            let advanced = tokio::task::spawn_blocking(move || this.advance(term, index)).await;
            match advanced {
                Ok(Ok(next)) => {
                    anchor = next;
                    last_advance = Instant::now();
                }
                Ok(Err(e)) => {
                    // Whatever step failed, the next advance (or a restart) finds the
                    // counter at the anchor's value or one below it.
                    tracing::error!(error = %e, "cannot advance the rollback counter; retrying");
                    retry_at = Instant::now() + self.every;
                }
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor(counter: u64, term: u64, index: u64) -> Option<Anchor> {
        Some(Anchor {
            counter,
            term,
            index,
        })
    }

    fn held(term: u64, last_index: u64) -> Held {
        Held { term, last_index }
    }

    #[test]
    fn an_anchor_below_the_counter_is_a_copy_put_back() {
        assert_eq!(
            judge(anchor(7, 3, 40), 7, held(3, 41)).unwrap(),
            Verdict::Current
        );
        assert_eq!(
            judge(anchor(8, 3, 40), 7, held(3, 40)).unwrap(),
            Verdict::FinishAdvance
        );
        assert!(matches!(
            judge(anchor(6, 3, 40), 7, held(3, 40)),
            Err(AnchorError::Stale {
                anchor: 6,
                counter: 7
            })
        ));
        assert!(matches!(
            judge(anchor(9, 3, 40), 7, held(3, 40)),
            Err(AnchorError::Ahead { .. })
        ));
    }

    #[test]
    fn a_log_or_vote_older_than_the_anchor_is_refused() {
        assert!(matches!(
            judge(anchor(7, 3, 40), 7, held(3, 39)),
            Err(AnchorError::Torn { what: "log", .. })
        ));
        assert!(matches!(
            judge(anchor(7, 3, 40), 7, held(2, 40)),
            Err(AnchorError::Torn { what: "vote", .. })
        ));
    }

    #[test]
    fn a_missing_anchor_is_adopted_only_for_an_empty_directory() {
        assert_eq!(judge(None, 7, held(0, 0)).unwrap(), Verdict::Adopt);
        assert!(matches!(
            judge(None, 7, held(3, 40)),
            Err(AnchorError::Missing)
        ));
        assert!(matches!(
            judge(None, 7, held(0, 40)),
            Err(AnchorError::Missing)
        ));
    }
}
