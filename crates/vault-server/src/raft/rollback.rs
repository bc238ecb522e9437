//! Rollback detection without a hardware counter (docs/OPERATIONS.md §Rollback).
//!
//! A replica restored from an old copy of its data directory holds an older log and an
//! older vote than it acknowledged. Voting with them could let a committed guess vanish
//! (the copy lacks it) or give two leaders one term (the old vote file lets it vote
//! twice). So a fleet replica, whenever it starts, neither votes nor stands for
//! election until enough other members have answered:
//!
//! - Every replica keeps a sealed book of the highest log index it knows each other
//!   replica held: as leader, what each follower acknowledged; as follower, what its
//!   leader sent it (the leader held at least that). Written at most every
//!   [`BOOK_EVERY`].
//! - On start, the replica asks the other members for their status until
//!   `n − majority + 1` of them answer: that many always include one that holds
//!   every entry committed with this replica's acknowledgement, and one that saw every
//!   term it voted in.
//! - It refuses votes in any term up to the highest term they report, so it never
//!   votes twice in a term; and if any of them knows it held a later entry than its log
//!   now ends at, it waits until the leader confirms it holds the leader's whole log.
//!
//! What remains: acknowledgements of the last [`BOOK_EVERY`] before the copy was taken
//! may be unknown to the others; and with fewer than `n − majority + 1` other members
//! up, a restarted replica waits (fails closed). A rollback of every site at once is
//! not detected.

use super::files;
use super::network::HttpNetwork;
use super::peer::VoteGate;
use super::types::VaultRaft;
use crate::seal::Sealer;
use openraft::ServerState;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How often the book of acknowledgements is written when it changed.
pub const BOOK_EVERY: Duration = Duration::from_millis(500);

const BOOK_FILE: &str = "acked";
const BOOK_CONTEXT: &[u8] = b"backlock vault acked";

/// Replica id → highest log index it is known to have held.
pub type Book = BTreeMap<u64, u64>;

/// Reads the book (empty when there is none yet).
pub(crate) fn read_book(dir: &Path, sealer: &dyn Sealer) -> Book {
    files::read_sealed(sealer, &dir.join(BOOK_FILE), BOOK_CONTEXT)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Keeps the book up to date from the node's metrics while it runs.
pub(crate) async fn keep_book(
    raft: VaultRaft,
    dir: PathBuf,
    sealer: Arc<dyn Sealer>,
    shared: Arc<std::sync::Mutex<Book>>,
) {
    let mut tick = tokio::time::interval(BOOK_EVERY);
    loop {
        tick.tick().await;
        let m = raft.metrics().borrow().clone();
        let mut seen: Vec<(u64, u64)> = Vec::new();
        match (m.state, m.current_leader) {
            (ServerState::Leader, _) => {
                if let Some(replication) = &m.replication {
                    for (id, matched) in replication {
                        if let Some(log_id) = matched {
                            seen.push((*id, log_id.index));
                        }
                    }
                }
            }
            (_, Some(leader)) if leader != m.id => {
                if let Some(last) = m.last_log_index {
                    seen.push((leader, last));
                }
            }
            _ => {}
        }
        seen.retain(|(id, _)| *id != m.id);
        let book = {
            let mut book = shared.lock().unwrap_or_else(|p| p.into_inner());
            let mut changed = false;
            for (id, index) in seen {
                let known = book.entry(id).or_insert(0);
                if index > *known {
                    *known = index;
                    changed = true;
                }
            }
            changed.then(|| book.clone())
        };
        if let Some(book) = book {
            let (dir, sealer) = (dir.clone(), sealer.clone());
            let written = tokio::task::spawn_blocking(move || {
                files::write_sealed_durably(&*sealer, &dir.join(BOOK_FILE), BOOK_CONTEXT, &book)
            })
            .await;
            if let Ok(Err(e)) = written {
                tracing::warn!(error = %e, "cannot write the book of acknowledgements");
            }
        }
    }
}

/// How many other members must answer before a restarted replica of a fleet of `n`
/// voters may vote.
pub fn answers_needed(n: usize) -> usize {
    let majority = n / 2 + 1;
    if majority <= 1 {
        0
    } else {
        n - majority + 1
    }
}

/// What the answers say a restarted replica may do.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Vote, in terms above `floor`.
    Current {
        /// The highest term an answer reported.
        floor: u64,
    },
    /// It held entry `known` and its log ends at `last`: wait for the leader.
    Behind {
        /// The highest term an answer reported.
        floor: u64,
        /// The highest index another member knows it held.
        known: u64,
        /// Where its log ends now.
        last: u64,
    },
}

/// Judges the answers `(term, book)` of other members for replica `me` whose log ends
/// at `last`.
pub fn judge(me: u64, last: u64, answers: &[(u64, Book)]) -> Verdict {
    let floor = answers.iter().map(|(term, _)| *term).max().unwrap_or(0);
    let known = answers
        .iter()
        .filter_map(|(_, book)| book.get(&me).copied())
        .max()
        .unwrap_or(0);
    if known > last {
        Verdict::Behind { floor, known, last }
    } else {
        Verdict::Current { floor }
    }
}

/// Asks the other members until enough answer, then opens the gate, or waits for the
/// leader's confirmation first (see the module's comment).
pub(crate) async fn confirm_current(
    node: &super::VaultNode,
    network: &HttpNetwork,
    votes: &VoteGate,
    contacts: &[String],
) {
    // The membership and log as loaded from disk (published once the core runs).
    let loaded = node
        .raft()
        .wait(None)
        .metrics(
            |m| {
                m.membership_config
                    .membership()
                    .voter_ids()
                    .next()
                    .is_some()
            },
            "the membership is loaded",
        )
        .await;
    let Ok(metrics) = loaded else { return };
    let me = metrics.id;
    let last = metrics.last_log_index.unwrap_or(0);
    let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
    let needed = answers_needed(voters.len());
    if needed == 0 {
        node.open_votes();
        return;
    }
    let mut waited_said = false;
    loop {
        let mut asks = tokio::task::JoinSet::new();
        for addr in contacts {
            let (network, addr) = (network.clone(), addr.clone());
            asks.spawn(async move { network.status(&addr).await });
        }
        let mut answers = Vec::new();
        while let Some(asked) = asks.join_next().await {
            if let Ok(Ok(report)) = asked {
                if report.node_id != me && voters.contains(&report.node_id) {
                    answers.push((report.term, report.acked));
                }
            }
        }
        if answers.len() >= needed {
            match judge(me, last, &answers) {
                Verdict::Current { floor } => {
                    votes.refuse_terms_up_to(floor);
                    node.open_votes();
                    tracing::info!(
                        floor,
                        answers = answers.len(),
                        "restarted with current state: voting in terms above {floor}"
                    );
                }
                Verdict::Behind { floor, known, last } => {
                    votes.refuse_terms_up_to(floor);
                    tracing::warn!(known, last, "this replica held entry {known} but its log ends at {last}: its data directory was restored from an older copy or lost writes; it votes once the leader confirms it holds the whole log");
                    let far = std::time::Instant::now() + Duration::from_secs(365 * 86_400);
                    if let Err(e) = node.join(contacts, far).await {
                        tracing::error!(error = %e, "could not get the leader's confirmation");
                    }
                }
            }
            return;
        }
        if !waited_said {
            tracing::warn!(
                answers = answers.len(),
                needed,
                "restarted: waiting for {needed} other members to answer before voting"
            );
            waited_said = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enough_answers_always_meet_a_holder_of_every_commit() {
        assert_eq!(answers_needed(1), 0);
        assert_eq!(answers_needed(3), 2);
        assert_eq!(answers_needed(5), 3);
        assert_eq!(answers_needed(7), 4);
        // Any set of answers this big meets every majority the replica was part of.
        for n in [3usize, 5, 7] {
            let others = n - 1;
            let holders_besides_me = n / 2;
            assert!(answers_needed(n) + holders_besides_me > others);
        }
    }

    #[test]
    fn a_replica_behind_what_others_saw_it_hold_waits() {
        let book = |me: u64, index: u64| Book::from([(me, index)]);
        assert_eq!(
            judge(3, 10, &[(4, book(3, 9)), (5, Book::new())]),
            Verdict::Current { floor: 5 }
        );
        assert_eq!(
            judge(3, 10, &[(4, book(3, 16)), (5, book(1, 99))]),
            Verdict::Behind {
                floor: 5,
                known: 16,
                last: 10
            }
        );
    }
}
