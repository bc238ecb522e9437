//! Who may enter the fleet, held in the replicated state (docs/OPERATIONS.md §Admitting
//! a replica): one-time join tickets the operator issued on a running member, and the
//! ids of removed replicas, whose certificates are refused from then on.
//!
//! A certificate of the fleet CA names one replica id. It proves who a peer is; what
//! the peer may do follows from this state and from the Raft membership: a member
//! takes part in Raft, a holder of an open ticket for its id may fetch the fleet secret
//! once and join, a retired id may do nothing, ever again.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How long a join ticket stays valid unless the operator says otherwise.
pub const TICKET_TTL_MS: u64 = 15 * 60 * 1000;

/// A join ticket as the state holds it: its hash only, so a copy of the state (a
/// snapshot, a replica's disk) does not admit anyone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// BLAKE3 of the ticket.
    pub ticket_hash: [u8; 32],
    /// Unix ms after which it admits no one.
    pub expires_ms: u64,
    /// The fleet secret was handed out for it: it still lets that replica join until
    /// it expires, and hands out nothing more.
    pub redeemed: bool,
}

/// The replicated admission state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    admissions: BTreeMap<u64, Admission>,
    retired: BTreeSet<u64>,
}

/// Why an admission command changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TicketRefusal {
    /// The replica id was removed from the fleet: it is never admitted again.
    Retired,
    /// No open ticket for this id matches (never issued, used, or expired).
    NoTicket,
}

/// The local clock, Unix ms (tickets are checked against the proposer's clock).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The hash a ticket is held under.
pub fn ticket_hash(ticket: &[u8; 32]) -> [u8; 32] {
    *blake3::hash(ticket).as_bytes()
}

impl Members {
    /// Whether replica `id` was removed from the fleet.
    pub fn is_retired(&self, id: u64) -> bool {
        self.retired.contains(&id)
    }

    /// Opens a ticket for replica `id` (replacing an older one for it).
    pub fn admit(
        &mut self,
        id: u64,
        ticket_hash: [u8; 32],
        expires_ms: u64,
    ) -> Result<(), TicketRefusal> {
        if self.is_retired(id) {
            return Err(TicketRefusal::Retired);
        }
        self.admissions.insert(
            id,
            Admission {
                ticket_hash,
                expires_ms,
                redeemed: false,
            },
        );
        Ok(())
    }

    /// Uses the ticket of replica `id`: succeeds once, for the right ticket, before it
    /// expires.
    pub fn redeem(
        &mut self,
        id: u64,
        ticket_hash: [u8; 32],
        now_ms: u64,
    ) -> Result<(), TicketRefusal> {
        if self.is_retired(id) {
            return Err(TicketRefusal::Retired);
        }
        match self.admissions.get_mut(&id) {
            Some(a) if a.ticket_hash == ticket_hash && !a.redeemed && a.expires_ms > now_ms => {
                a.redeemed = true;
                Ok(())
            }
            _ => Err(TicketRefusal::NoTicket),
        }
    }

    /// Whether replica `id` (not a member) may ask to join at `now_ms`: its ticket was
    /// redeemed and has not expired.
    pub fn may_join(&self, id: u64, now_ms: u64) -> bool {
        !self.is_retired(id)
            && self
                .admissions
                .get(&id)
                .is_some_and(|a| a.redeemed && a.expires_ms > now_ms)
    }

    /// Replica `id` leaves the fleet for good.
    pub fn retire(&mut self, id: u64) {
        self.admissions.remove(&id);
        self.retired.insert(id);
    }

    /// Forgets tickets expired by `now_ms`.
    pub fn sweep(&mut self, now_ms: u64) {
        self.admissions.retain(|_, a| a.expires_ms > now_ms);
    }

    /// Whether a sweep at `now_ms` would forget something.
    pub fn any_expired(&self, now_ms: u64) -> bool {
        self.admissions.values().any(|a| a.expires_ms <= now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_admits_its_replica_once_and_only_before_it_expires() {
        let mut m = Members::default();
        let hash = ticket_hash(&[7; 32]);
        m.admit(6, hash, 1_000).unwrap();
        assert_eq!(m.redeem(5, hash, 10), Err(TicketRefusal::NoTicket));
        assert_eq!(
            m.redeem(6, ticket_hash(&[8; 32]), 10),
            Err(TicketRefusal::NoTicket)
        );
        assert!(!m.may_join(6, 10));
        m.redeem(6, hash, 10).unwrap();
        assert!(m.may_join(6, 10));
        assert_eq!(m.redeem(6, hash, 11), Err(TicketRefusal::NoTicket));
        assert!(!m.may_join(6, 1_000));

        let mut late = Members::default();
        late.admit(6, hash, 1_000).unwrap();
        assert_eq!(late.redeem(6, hash, 1_000), Err(TicketRefusal::NoTicket));
    }

    #[test]
    fn a_retired_replica_is_never_admitted_again() {
        let mut m = Members::default();
        let hash = ticket_hash(&[7; 32]);
        m.admit(3, hash, 1_000).unwrap();
        m.redeem(3, hash, 1).unwrap();
        m.retire(3);
        assert!(m.is_retired(3));
        assert!(!m.may_join(3, 2));
        assert_eq!(m.admit(3, hash, 5_000), Err(TicketRefusal::Retired));
        assert_eq!(m.redeem(3, hash, 2), Err(TicketRefusal::Retired));
    }
}
