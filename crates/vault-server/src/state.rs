//! The vault's replicated state machine (docs/VAULT.md §State machine).
//!
//! Pure and deterministic: every replica applies the same committed [`Command`]s in the
//! same order and reaches the same [`VaultState`]. Guess counting happens here, at
//! apply time, so concurrent guesses on any replica are serialised by the log: a guess
//! is counted only if the count is still above zero when its entry is applied.

use crate::members::{Members, TicketRefusal};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Where a command was applied: its log entry and its place in the entry's batch.
/// Unique for ever, so the KE2 of an attempt opened there is never computed for
/// another attempt (docs/VAULT.md §Recovery).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    /// Log index of the entry.
    pub index: u64,
    /// Position of the command in the entry's batch.
    pub position: u32,
}

/// A guess whose KE2 went out and whose KE3 has not been settled: any replica can
/// answer its KE1 again (with the same KE2) or finish it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenAttempt {
    /// The attempt's id, from the account, generation and KE1; also the session id.
    pub id: [u8; 16],
    /// Generation of the record it runs against.
    pub generation: u64,
    /// Where it was opened: seeds the vault's randomness in KE2.
    pub place: Place,
    /// The device's KE1 (public: a relay sees it).
    pub ke1: Vec<u8>,
    /// The count after this guess, as answered.
    pub attempts_left: u32,
    /// Proposer time (Unix ms) after which it can no longer be finished.
    pub expires_ms: u64,
}

impl fmt::Debug for OpenAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAttempt")
            .field("id", &hex::encode(self.id))
            .field("generation", &self.generation)
            .field("attempts_left", &self.attempts_left)
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}

/// One account's registered key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Record id the OPRF key is derived from (new at each registration).
    pub record_id: [u8; 16],
    /// OPAQUE password file (`ServerRegistration`).
    pub password_file: Vec<u8>,
    /// The backup key wrapped under the export key; the vault cannot open it.
    pub wrapped: Vec<u8>,
    /// Owner key that may change or delete the record.
    pub owner_public_key: [u8; 32],
    /// Bumped by every replacement; owner proofs name it.
    pub generation: u64,
    /// Guesses left.
    pub attempts_left: u32,
    /// Guesses allowed after a success.
    pub max_attempts: u32,
    /// Leader time (Unix ms) of the guess that took the count to zero. The record is
    /// kept only until that guess's login session expires, so a right last guess can
    /// still finish; then it is erased.
    pub exhausted_at_ms: Option<u64>,
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("generation", &self.generation)
            .field("attempts_left", &self.attempts_left)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// A record as registered, before the state machine numbers it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRecord {
    /// See [`Record::record_id`].
    pub record_id: [u8; 16],
    /// See [`Record::password_file`].
    pub password_file: Vec<u8>,
    /// See [`Record::wrapped`].
    pub wrapped: Vec<u8>,
    /// See [`Record::owner_public_key`].
    pub owner_public_key: [u8; 32],
    /// See [`Record::max_attempts`].
    pub max_attempts: u32,
}

impl fmt::Debug for NewRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewRecord")
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// A state change, committed to the log before it takes effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// First registration; refused if a record exists.
    Register {
        /// Account.
        account: String,
        /// The record.
        record: NewRecord,
    },
    /// One guess (KE1 received, KE2 not yet sent). Refused unless the record still has
    /// `generation` and a count above zero.
    Attempt {
        /// Account.
        account: String,
        /// Generation the KE2 is computed from.
        generation: u64,
        /// Leader's clock, Unix ms.
        now_ms: u64,
    },
    /// A KE3 verified: the count goes back to the maximum.
    Success {
        /// Account.
        account: String,
        /// Generation the login ran against.
        generation: u64,
    },
    /// Replace the record (owner proof checked before proposing).
    Replace {
        /// Account.
        account: String,
        /// Generation the proof names.
        generation: u64,
        /// The new record.
        record: NewRecord,
    },
    /// Erase the record: the owner asked (proof checked before proposing), or the
    /// count reached zero and the last guess's session expired.
    Erase {
        /// Account.
        account: String,
        /// Generation being erased; a newer record is left alone.
        generation: u64,
        /// Why.
        reason: EraseReason,
    },
    /// One guess, named by its id: counted unless an attempt of that id is open, in
    /// which case it is answered again as it was (a retry at another replica, or of
    /// a proposal that timed out and committed anyway). Replaces `Attempt`.
    Open {
        /// Account.
        account: String,
        /// Generation the KE2 is computed from.
        generation: u64,
        /// The attempt's id.
        id: [u8; 16],
        /// The device's KE1.
        ke1: Vec<u8>,
        /// Proposer's clock, Unix ms.
        now_ms: u64,
        /// How long the attempt stays open.
        ttl_ms: u64,
    },
    /// A KE3 of open attempt `id` verified: the attempt closes and the count goes back
    /// to the maximum. Refused once the attempt is closed or expired. Replaces
    /// `Success`.
    Finish {
        /// Account.
        account: String,
        /// Generation the login ran against.
        generation: u64,
        /// The attempt.
        id: [u8; 16],
        /// Proposer's clock, Unix ms.
        now_ms: u64,
    },
    /// A KE3 of open attempt `id` did not verify: the attempt closes, and if the count
    /// is zero and no other attempt is open, the record is erased.
    Close {
        /// Account.
        account: String,
        /// Generation the login ran against.
        generation: u64,
        /// The attempt.
        id: [u8; 16],
        /// Proposer's clock, Unix ms.
        now_ms: u64,
    },
    /// Forget every attempt and join ticket expired by `now_ms` (the leader's sweeper).
    Sweep {
        /// Proposer's clock, Unix ms.
        now_ms: u64,
    },
    /// Open a one-time join ticket for replica `replica` (`vault admit`).
    Admit {
        /// The replica id the ticket is for.
        replica: u64,
        /// BLAKE3 of the ticket.
        ticket_hash: [u8; 32],
        /// Unix ms after which it admits no one.
        expires_ms: u64,
    },
    /// Use the ticket of replica `replica`, before the fleet secret is handed to it.
    Redeem {
        /// The replica id its certificate names.
        replica: u64,
        /// BLAKE3 of the ticket it presented.
        ticket_hash: [u8; 32],
        /// Proposer's clock, Unix ms.
        now_ms: u64,
    },
    /// Replica `replica` leaves the fleet for good: its certificate is refused from now
    /// on (`vault remove`, before the membership change).
    Retire {
        /// The replica id.
        replica: u64,
    },
    /// Replace the account's snapshot anchor by a newer one (owner proof checked before
    /// proposing). Refused unless the record still has `generation` and the anchor's
    /// generation exceeds the one held.
    SetAnchor {
        /// Account.
        account: String,
        /// Generation of the record the proof names.
        generation: u64,
        /// The new anchor.
        anchor: Anchor,
    },
}

impl Command {
    /// The account the command acts on, if it acts on one.
    pub fn account(&self) -> Option<&str> {
        match self {
            Command::Register { account, .. }
            | Command::Attempt { account, .. }
            | Command::Success { account, .. }
            | Command::Replace { account, .. }
            | Command::Erase { account, .. }
            | Command::Open { account, .. }
            | Command::Finish { account, .. }
            | Command::Close { account, .. }
            | Command::SetAnchor { account, .. } => Some(account),
            Command::Sweep { .. }
            | Command::Admit { .. }
            | Command::Redeem { .. }
            | Command::Retire { .. } => None,
        }
    }
}

/// A snapshot anchor as the vault keeps it (docs/VAULT.md §Snapshot anchor): a value
/// sealed under the backup key, which the vault cannot open, and a generation that
/// only grows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// Grows with each backup.
    pub generation: u64,
    /// Opaque to the vault.
    pub value: Vec<u8>,
}

/// Why a record is erased.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EraseReason {
    /// The owner deleted it.
    Owner,
    /// Every guess was used.
    Exhausted,
}

/// The result of applying a command, returned to the proposer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Register or Replace took effect.
    Stored {
        /// Generation of the stored record.
        generation: u64,
        /// Guesses allowed.
        attempts_left: u32,
    },
    /// The guess is counted.
    Counted {
        /// Guesses left if this one is wrong.
        attempts_left: u32,
    },
    /// An attempt is open (newly counted, or `again`: it was open already).
    Opened {
        /// Guesses left if this one is wrong.
        attempts_left: u32,
        /// Where it was first opened.
        place: Place,
        /// It was open already: not counted again.
        again: bool,
    },
    /// A wrong KE3 closed its attempt.
    Closed {
        /// Guesses left.
        attempts_left: u32,
    },
    /// Expired attempts forgotten.
    Swept,
    /// The count is back to the maximum; here is the wrapped key to release.
    Restored {
        /// Guesses allowed again.
        attempts_left: u32,
        /// The wrapped key.
        wrapped: Vec<u8>,
    },
    /// The record is gone.
    Erased,
    /// A join ticket was opened or used, or why not.
    Ticket(Result<(), TicketRefusal>),
    /// The replica is retired.
    Retired,
    /// The anchor is stored.
    AnchorSet,
    /// Nothing changed.
    Refused(Refusal),
}

impl fmt::Debug for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Applied::Stored {
                generation,
                attempts_left,
            } => f
                .debug_struct("Stored")
                .field("generation", generation)
                .field("attempts_left", attempts_left)
                .finish(),
            Applied::Counted { attempts_left } => f
                .debug_struct("Counted")
                .field("attempts_left", attempts_left)
                .finish(),
            Applied::Opened {
                attempts_left,
                again,
                ..
            } => f
                .debug_struct("Opened")
                .field("attempts_left", attempts_left)
                .field("again", again)
                .finish_non_exhaustive(),
            Applied::Closed { attempts_left } => f
                .debug_struct("Closed")
                .field("attempts_left", attempts_left)
                .finish(),
            Applied::Swept => f.write_str("Swept"),
            // The wrapped key stays out of logs: with the fleet secret it would allow
            // offline guessing.
            Applied::Restored { attempts_left, .. } => f
                .debug_struct("Restored")
                .field("attempts_left", attempts_left)
                .finish_non_exhaustive(),
            Applied::Erased => f.write_str("Erased"),
            Applied::Ticket(t) => f.debug_tuple("Ticket").field(t).finish(),
            Applied::Retired => f.write_str("Retired"),
            Applied::AnchorSet => f.write_str("AnchorSet"),
            Applied::Refused(r) => f.debug_tuple("Refused").field(r).finish(),
        }
    }
}

/// Why a command changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// No record for the account (never registered, deleted, or erased when locked).
    NoRecord,
    /// Register on an account that has a record.
    AlreadyRegistered,
    /// The count is zero: no more guesses.
    Exhausted,
    /// The record changed since the proposer read it.
    StaleGeneration,
    /// An erasure for an exhausted count found guesses left (the proposer read a lagging
    /// replica, or a right guess restored the count meanwhile).
    NotExhausted,
    /// No open attempt has that id: it was finished, closed, or it expired.
    AttemptClosed,
    /// An erasure for an exhausted count found an attempt not yet closed or swept.
    AttemptsOpen,
    /// The anchor held is as new or newer.
    AnchorNotNewer {
        /// The generation held.
        held: u64,
    },
}

/// What one account holds. A command for an account reads it whole, changes it and is
/// stored back, so the rules ([`Account::apply`]) never see how the state is kept: in
/// memory ([`VaultState`]) or in a replica's database (`raft/records.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The registered key, if any.
    pub record: Option<Record>,
    /// What outlives the record.
    pub history: History,
    /// Guesses whose KE2 went out and whose KE3 is not settled.
    pub attempts: Vec<OpenAttempt>,
    /// The snapshot anchor its owner set.
    pub anchor: Option<Anchor>,
}

/// Where the housekeeping index files an account: the time of the guess that took its
/// record to zero, and when each open attempt expires.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DueKeys {
    /// The record's count is zero since then.
    pub exhausted: Option<u64>,
    /// Expiry of each open attempt.
    pub attempts: Vec<u64>,
}

impl Account {
    /// Where the sweeper's index files this account.
    pub fn due(&self) -> DueKeys {
        DueKeys {
            exhausted: self
                .record
                .as_ref()
                .filter(|r| r.attempts_left == 0)
                .and_then(|r| r.exhausted_at_ms),
            attempts: self.attempts.iter().map(|a| a.expires_ms).collect(),
        }
    }

    /// Whether the last record was erased by the guess limit (and no new one was
    /// registered since).
    pub fn locked(&self) -> bool {
        self.record.is_none() && self.history.locked
    }

    /// The open attempt `id`, if it is open.
    pub fn open_attempt(&self, id: &[u8; 16]) -> Option<&OpenAttempt> {
        self.attempts.iter().find(|a| a.id == *id)
    }

    /// Whether an attempt is open at `now_ms`.
    pub fn has_open_attempt(&self, now_ms: u64) -> bool {
        self.attempts.iter().any(|a| a.expires_ms > now_ms)
    }

    /// Drops the attempts that expired by `now_ms`.
    fn expire(&mut self, now_ms: u64) {
        self.attempts.retain(|a| a.expires_ms > now_ms);
    }

    /// Removes open attempt `id` if it is open at `now_ms`.
    fn take_open(&mut self, id: &[u8; 16], now_ms: u64) -> Option<OpenAttempt> {
        self.expire(now_ms);
        let at = self.attempts.iter().position(|a| a.id == *id)?;
        Some(self.attempts.remove(at))
    }

    fn store(&mut self, new: NewRecord) -> Applied {
        self.history.generation += 1;
        self.history.locked = false;
        let generation = self.history.generation;
        let attempts_left = new.max_attempts;
        self.record = Some(Record {
            record_id: new.record_id,
            password_file: new.password_file,
            wrapped: new.wrapped,
            owner_public_key: new.owner_public_key,
            generation,
            attempts_left,
            max_attempts: new.max_attempts,
            exhausted_at_ms: None,
        });
        Applied::Stored {
            generation,
            attempts_left,
        }
    }

    /// The record, unless it is missing or not at `generation`.
    fn current(&mut self, generation: u64) -> Result<&mut Record, Applied> {
        match &mut self.record {
            None => Err(Applied::Refused(Refusal::NoRecord)),
            Some(r) if r.generation != generation => {
                Err(Applied::Refused(Refusal::StaleGeneration))
            }
            Some(r) => Ok(r),
        }
    }

    fn erase(&mut self, reason: EraseReason) -> Applied {
        self.record = None;
        self.attempts.clear();
        self.anchor = None;
        self.history.locked = reason == EraseReason::Exhausted;
        Applied::Erased
    }

    /// Applies a command that acts on this account, applied at `place`.
    fn apply(&mut self, command: Command, place: Place) -> Applied {
        match command {
            Command::Register { record, .. } => {
                if self.record.is_some() {
                    return Applied::Refused(Refusal::AlreadyRegistered);
                }
                self.store(record)
            }
            Command::Attempt {
                generation, now_ms, ..
            } => {
                let r = match self.current(generation) {
                    Ok(r) => r,
                    Err(refused) => return refused,
                };
                if r.attempts_left == 0 {
                    return Applied::Refused(Refusal::Exhausted);
                }
                r.attempts_left -= 1;
                if r.attempts_left == 0 {
                    r.exhausted_at_ms = Some(now_ms);
                }
                Applied::Counted {
                    attempts_left: r.attempts_left,
                }
            }
            Command::Success { generation, .. } => match self.current(generation) {
                Err(refused) => refused,
                Ok(r) => {
                    r.attempts_left = r.max_attempts;
                    r.exhausted_at_ms = None;
                    Applied::Restored {
                        attempts_left: r.attempts_left,
                        wrapped: r.wrapped.clone(),
                    }
                }
            },
            Command::Replace {
                generation, record, ..
            } => {
                let r = match self.current(generation) {
                    Ok(r) => r,
                    Err(refused) => return refused,
                };
                // A record out of guesses cannot be rescued by a proof made before.
                if r.attempts_left == 0 {
                    return Applied::Refused(Refusal::Exhausted);
                }
                // A new owner key is a new backup key (rotate-key): the anchor, sealed
                // under the old one, would no longer open.
                if r.owner_public_key != record.owner_public_key {
                    self.anchor = None;
                }
                self.store(record)
            }
            Command::Erase {
                generation, reason, ..
            } => {
                let r = match self.current(generation) {
                    Ok(r) => r,
                    Err(refused) => return refused,
                };
                if reason == EraseReason::Exhausted {
                    if r.attempts_left > 0 {
                        return Applied::Refused(Refusal::NotExhausted);
                    }
                    // A guess still open may be the right one; its attempt closes or is
                    // swept first, whatever the proposer's (maybe lagging) copy showed.
                    if !self.attempts.is_empty() {
                        return Applied::Refused(Refusal::AttemptsOpen);
                    }
                }
                self.erase(reason)
            }
            Command::Open {
                generation,
                id,
                ke1,
                now_ms,
                ttl_ms,
                ..
            } => {
                if let Err(refused) = self.current(generation) {
                    return refused;
                }
                self.expire(now_ms);
                if let Some(a) = self.open_attempt(&id) {
                    return Applied::Opened {
                        attempts_left: a.attempts_left,
                        place: a.place,
                        again: true,
                    };
                }
                let r = self.record.as_mut().expect("checked above");
                if r.attempts_left == 0 {
                    return Applied::Refused(Refusal::Exhausted);
                }
                r.attempts_left -= 1;
                if r.attempts_left == 0 {
                    r.exhausted_at_ms = Some(now_ms);
                }
                let attempts_left = r.attempts_left;
                self.attempts.push(OpenAttempt {
                    id,
                    generation,
                    place,
                    ke1,
                    attempts_left,
                    expires_ms: now_ms.saturating_add(ttl_ms),
                });
                Applied::Opened {
                    attempts_left,
                    place,
                    again: false,
                }
            }
            Command::Finish {
                generation,
                id,
                now_ms,
                ..
            } => {
                if let Err(refused) = self.current(generation) {
                    return refused;
                }
                if self.take_open(&id, now_ms).is_none() {
                    return Applied::Refused(Refusal::AttemptClosed);
                }
                let r = self.record.as_mut().expect("checked above");
                r.attempts_left = r.max_attempts;
                r.exhausted_at_ms = None;
                Applied::Restored {
                    attempts_left: r.attempts_left,
                    wrapped: r.wrapped.clone(),
                }
            }
            Command::Close {
                generation,
                id,
                now_ms,
                ..
            } => {
                if let Err(refused) = self.current(generation) {
                    return refused;
                }
                if self.take_open(&id, now_ms).is_none() {
                    return Applied::Refused(Refusal::AttemptClosed);
                }
                let left = self.record.as_ref().expect("checked above").attempts_left;
                // The last guess was wrong and no other is pending: nothing can
                // restore the count any more.
                if left == 0 && !self.has_open_attempt(now_ms) {
                    return self.erase(EraseReason::Exhausted);
                }
                Applied::Closed {
                    attempts_left: left,
                }
            }
            Command::SetAnchor {
                generation, anchor, ..
            } => {
                if let Err(refused) = self.current(generation) {
                    return refused;
                }
                match &self.anchor {
                    Some(held) if held.generation >= anchor.generation => {
                        Applied::Refused(Refusal::AnchorNotNewer {
                            held: held.generation,
                        })
                    }
                    _ => {
                        self.anchor = Some(anchor);
                        Applied::AnchorSet
                    }
                }
            }
            Command::Sweep { .. }
            | Command::Admit { .. }
            | Command::Redeem { .. }
            | Command::Retire { .. } => unreachable!("not an account's command"),
        }
    }
}

/// How the state is kept. Commands go through [`apply`], the one place the rules are
/// applied, whatever keeps the state.
pub trait Tables {
    /// What keeping the state can fail with.
    type Error;
    /// What `account` holds (all empty if nothing).
    fn account(&mut self, account: &str) -> Result<Account, Self::Error>;
    /// Stores `after` in place of `before` (as [`Tables::account`] returned it) and
    /// moves the account in the housekeeping index.
    fn put_account(
        &mut self,
        account: &str,
        before: &Account,
        after: &Account,
    ) -> Result<(), Self::Error>;
    /// Join tickets and retired replicas.
    fn members(&mut self) -> Result<Members, Self::Error>;
    /// Stores the join tickets and retired replicas.
    fn put_members(&mut self, members: &Members) -> Result<(), Self::Error>;
    /// Accounts with an attempt expired by `now_ms`, from the index.
    fn expired_attempt_accounts(&mut self, now_ms: u64) -> Result<Vec<String>, Self::Error>;
}

/// Applies one committed command, applied at `place`, to the state `tables` keep.
pub fn apply<T: Tables>(
    tables: &mut T,
    command: Command,
    place: Place,
) -> Result<Applied, T::Error> {
    let members = |tables: &mut T, f: &dyn Fn(&mut Members) -> Applied| {
        let mut members = tables.members()?;
        let applied = f(&mut members);
        tables.put_members(&members)?;
        Ok(applied)
    };
    match command {
        Command::Sweep { now_ms } => {
            for name in tables.expired_attempt_accounts(now_ms)? {
                let before = tables.account(&name)?;
                let mut after = before.clone();
                after.expire(now_ms);
                tables.put_account(&name, &before, &after)?;
            }
            let mut m = tables.members()?;
            if m.any_expired(now_ms) {
                m.sweep(now_ms);
                tables.put_members(&m)?;
            }
            Ok(Applied::Swept)
        }
        Command::Admit {
            replica,
            ticket_hash,
            expires_ms,
        } => members(tables, &|m| {
            Applied::Ticket(m.admit(replica, ticket_hash, expires_ms))
        }),
        Command::Redeem {
            replica,
            ticket_hash,
            now_ms,
        } => members(tables, &|m| {
            Applied::Ticket(m.redeem(replica, ticket_hash, now_ms))
        }),
        Command::Retire { replica } => members(tables, &|m| {
            m.retire(replica);
            Applied::Retired
        }),
        command => {
            let name = command.account().expect("an account's command").to_owned();
            let before = tables.account(&name)?;
            let mut after = before.clone();
            let applied = after.apply(command, place);
            if after != before {
                tables.put_account(&name, &before, &after)?;
            }
            Ok(applied)
        }
    }
}

/// Every record, by account, in memory: the form a snapshot travels in between
/// replicas, and the model the database is tested against.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultState {
    records: BTreeMap<String, Record>,
    /// What outlives a record: the highest generation issued (so a proof for an erased
    /// record never matches a later one) and whether the guess limit erased it (so the
    /// account holder hears "locked", not "no key").
    history: BTreeMap<String, History>,
    /// Open attempts by account. Not part of the record's layout: a snapshot carries
    /// them after the state ([`VaultState::trailer`]), so a snapshot written
    /// before attempts had ids still reads.
    #[serde(skip)]
    attempts: BTreeMap<String, Vec<OpenAttempt>>,
    /// Join tickets and retired replicas; in the trailer after the open attempts.
    #[serde(skip)]
    members: Members,
    /// Snapshot anchors by account; in the trailer after the members.
    #[serde(skip)]
    anchors: BTreeMap<String, Anchor>,
    /// Derived from the above, never stored: what the sweeper looks for, by time, so a
    /// sweep costs what it finds rather than a pass over every account.
    #[serde(skip)]
    due: Due,
}

/// The housekeeping index of a [`VaultState`]: records out of guesses by the time of
/// their last guess, and open attempts by expiry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Due {
    exhausted: BTreeSet<(u64, String)>,
    attempts: BTreeSet<(u64, String)>,
}

impl Due {
    fn file(&mut self, account: &str, keys: &DueKeys, present: bool) {
        let entries = keys
            .exhausted
            .iter()
            .map(|&t| (true, t))
            .chain(keys.attempts.iter().map(|&t| (false, t)));
        for (exhausted, t) in entries {
            let set = if exhausted {
                &mut self.exhausted
            } else {
                &mut self.attempts
            };
            if present {
                set.insert((t, account.to_owned()));
            } else {
                set.remove(&(t, account.to_owned()));
            }
        }
    }
}

/// The part of an account that survives erasure. Holds no secret.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Highest generation issued.
    pub generation: u64,
    /// The last record was erased by the guess limit.
    pub locked: bool,
}

fn put_or_remove<V>(map: &mut BTreeMap<String, V>, account: &str, value: Option<V>) {
    match value {
        Some(v) => {
            map.insert(account.to_owned(), v);
        }
        None => {
            map.remove(account);
        }
    }
}

impl Tables for VaultState {
    type Error = std::convert::Infallible;

    fn account(&mut self, account: &str) -> Result<Account, Self::Error> {
        Ok(self.account_of(account))
    }

    fn put_account(
        &mut self,
        account: &str,
        before: &Account,
        after: &Account,
    ) -> Result<(), Self::Error> {
        self.due.file(account, &before.due(), false);
        put_or_remove(&mut self.records, account, after.record.clone());
        put_or_remove(
            &mut self.history,
            account,
            (after.history != History::default()).then_some(after.history),
        );
        put_or_remove(
            &mut self.attempts,
            account,
            (!after.attempts.is_empty()).then(|| after.attempts.clone()),
        );
        put_or_remove(&mut self.anchors, account, after.anchor.clone());
        self.due.file(account, &after.due(), true);
        Ok(())
    }

    fn members(&mut self) -> Result<Members, Self::Error> {
        Ok(self.members.clone())
    }

    fn put_members(&mut self, members: &Members) -> Result<(), Self::Error> {
        self.members = members.clone();
        Ok(())
    }

    fn expired_attempt_accounts(&mut self, now_ms: u64) -> Result<Vec<String>, Self::Error> {
        let mut accounts: Vec<String> = self
            .due
            .attempts
            .iter()
            .take_while(|(expires, _)| *expires <= now_ms)
            .map(|(_, account)| account.clone())
            .collect();
        accounts.sort();
        accounts.dedup();
        Ok(accounts)
    }
}

impl VaultState {
    /// What `account` holds.
    pub fn account_of(&self, account: &str) -> Account {
        Account {
            record: self.records.get(account).cloned(),
            history: self.history.get(account).copied().unwrap_or_default(),
            attempts: self.attempts.get(account).cloned().unwrap_or_default(),
            anchor: self.anchors.get(account).cloned(),
        }
    }

    /// Every account that holds something, in order.
    pub fn accounts(&self) -> impl Iterator<Item = (String, Account)> + '_ {
        let names: BTreeSet<&String> = self
            .records
            .keys()
            .chain(self.history.keys())
            .chain(self.attempts.keys())
            .chain(self.anchors.keys())
            .collect();
        names
            .into_iter()
            .map(|name| (name.clone(), self.account_of(name)))
    }

    /// Stores what `account` holds (building a state from a database).
    pub fn insert_account(&mut self, account: &str, held: &Account) {
        let before = self.account_of(account);
        let _ = Tables::put_account(self, account, &before, held);
    }

    /// Replaces the join tickets and retired replicas (building a state from a
    /// database).
    pub fn set_members(&mut self, members: Members) {
        self.members = members;
    }

    /// The account's record, if any.
    pub fn record(&self, account: &str) -> Option<&Record> {
        self.records.get(account)
    }

    /// The highest generation the account's records had (0: never registered).
    pub fn last_generation(&self, account: &str) -> u64 {
        self.history.get(account).map_or(0, |h| h.generation)
    }

    /// Whether the account's last record was erased by the guess limit (and no new one
    /// was registered since).
    pub fn locked(&self, account: &str) -> bool {
        !self.records.contains_key(account) && self.history.get(account).is_some_and(|h| h.locked)
    }

    /// The open attempt `id` of `account`, if it is open.
    pub fn open_attempt(&self, account: &str, id: &[u8; 16]) -> Option<&OpenAttempt> {
        self.attempts.get(account)?.iter().find(|a| a.id == *id)
    }

    /// Whether `account` has an attempt open at `now_ms`.
    pub fn has_open_attempt(&self, account: &str, now_ms: u64) -> bool {
        self.attempts
            .get(account)
            .is_some_and(|open| open.iter().any(|a| a.expires_ms > now_ms))
    }

    /// Whether any attempt or join ticket has expired by `now_ms` (a sweep would forget
    /// it).
    pub fn any_expired_attempt(&self, now_ms: u64) -> bool {
        self.members.any_expired(now_ms)
            || self
                .due
                .attempts
                .first()
                .is_some_and(|(expires, _)| *expires <= now_ms)
    }

    /// Builds the index from scratch (after loading a snapshot).
    fn reindex(&mut self) {
        self.due = Due::default();
        let accounts: Vec<(String, Account)> = self.accounts().collect();
        for (name, held) in accounts {
            self.due.file(&name, &held.due(), true);
        }
    }

    /// The open attempts, the admission state and the anchors, encoded to follow the
    /// state in a snapshot (a replica of an earlier release reads what it knows and
    /// ignores the rest).
    pub fn trailer(&self) -> Vec<u8> {
        let mut bytes = postcard::to_allocvec(&self.attempts).expect("postcard encodes into a Vec");
        bytes.extend(postcard::to_allocvec(&self.members).expect("postcard encodes into a Vec"));
        bytes.extend(postcard::to_allocvec(&self.anchors).expect("postcard encodes into a Vec"));
        bytes
    }

    /// The account's snapshot anchor, if its owner set one since registering.
    pub fn anchor(&self, account: &str) -> Option<&Anchor> {
        self.anchors.get(account)
    }

    /// Restores the open attempts and the admission state from a snapshot's trailer;
    /// what an older snapshot lacks is empty. Returns what follows the trailer.
    pub fn set_trailer<'b>(&mut self, trailer: &'b [u8]) -> Result<&'b [u8], postcard::Error> {
        self.attempts = BTreeMap::new();
        self.members = Members::default();
        self.anchors = BTreeMap::new();
        let read = self.read_trailer(trailer);
        self.reindex();
        read
    }

    fn read_trailer<'b>(&mut self, trailer: &'b [u8]) -> Result<&'b [u8], postcard::Error> {
        if trailer.is_empty() {
            return Ok(trailer);
        }
        let (attempts, rest) = postcard::take_from_bytes(trailer)?;
        self.attempts = attempts;
        if rest.is_empty() {
            return Ok(rest);
        }
        let (members, rest) = postcard::take_from_bytes(rest)?;
        self.members = members;
        if rest.is_empty() {
            return Ok(rest);
        }
        // A replica of an earlier release reads the anchors with `from_bytes`, which
        // ignores what follows.
        let (anchors, rest) = postcard::take_from_bytes(rest)?;
        self.anchors = anchors;
        Ok(rest)
    }

    /// Join tickets and retired replicas.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// Records whose count is zero and whose last guess was made before `cutoff_ms`.
    pub fn expired_exhausted(&self, cutoff_ms: u64) -> Vec<(String, u64)> {
        self.due
            .exhausted
            .range(..(cutoff_ms, String::new()))
            .filter_map(|(_, a)| Some((a.clone(), self.records.get(a)?.generation)))
            .collect()
    }

    /// Every record, to seal or open its secrets for the disk.
    pub(crate) fn records_mut(&mut self) -> impl Iterator<Item = (&String, &mut Record)> {
        self.records.iter_mut()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// No records at all.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Applies one committed command, applied at `place`.
    pub fn apply(&mut self, command: Command, place: Place) -> Applied {
        match apply(self, command, place) {
            Ok(applied) => applied,
            Err(never) => match never {},
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn new_record(max: u32) -> NewRecord {
        NewRecord {
            record_id: [1; 16],
            password_file: vec![2; 8],
            wrapped: vec![3; 8],
            owner_public_key: [4; 32],
            max_attempts: max,
        }
    }

    fn ap(s: &mut VaultState, c: Command) -> Applied {
        s.apply(c, Place::default())
    }

    fn attempt(s: &mut VaultState, generation: u64) -> Applied {
        ap(
            s,
            Command::Attempt {
                account: "a".into(),
                generation,
                now_ms: 5,
            },
        )
    }

    fn open(s: &mut VaultState, id: u8, now_ms: u64, index: u64) -> Applied {
        s.apply(
            Command::Open {
                account: "a".into(),
                generation: 1,
                id: [id; 16],
                ke1: vec![id; 4],
                now_ms,
                ttl_ms: 100,
            },
            Place { index, position: 0 },
        )
    }

    fn settle(s: &mut VaultState, id: u8, now_ms: u64, right: bool) -> Applied {
        let (account, generation, id) = ("a".to_string(), 1, [id; 16]);
        ap(
            s,
            match right {
                true => Command::Finish {
                    account,
                    generation,
                    id,
                    now_ms,
                },
                false => Command::Close {
                    account,
                    generation,
                    id,
                    now_ms,
                },
            },
        )
    }

    #[test]
    fn an_attempt_sent_again_while_open_is_counted_once_and_answered_the_same() {
        let mut s = VaultState::default();
        ap(
            &mut s,
            Command::Register {
                account: "a".into(),
                record: new_record(3),
            },
        );
        let first = open(&mut s, 7, 10, 40);
        let place = Place {
            index: 40,
            position: 0,
        };
        assert_eq!(
            first,
            Applied::Opened {
                attempts_left: 2,
                place,
                again: false
            }
        );
        // The same KE1 at another replica, or a proposal that committed twice.
        assert_eq!(
            open(&mut s, 7, 20, 41),
            Applied::Opened {
                attempts_left: 2,
                place,
                again: true
            }
        );
        assert_eq!(s.record("a").unwrap().attempts_left, 2);
        // A right KE3 closes it for good: a replayed KE3 is refused, and the same KE1
        // is a new attempt at a new place (so its KE2 differs from the one recorded).
        assert!(matches!(
            settle(&mut s, 7, 30, true),
            Applied::Restored {
                attempts_left: 3,
                ..
            }
        ));
        assert_eq!(
            settle(&mut s, 7, 31, true),
            Applied::Refused(Refusal::AttemptClosed)
        );
        let replay = open(&mut s, 7, 40, 42);
        assert_eq!(
            replay,
            Applied::Opened {
                attempts_left: 2,
                place: Place {
                    index: 42,
                    position: 0
                },
                again: false
            }
        );
        // Past its time an attempt can be neither finished nor answered again.
        assert_eq!(
            settle(&mut s, 7, 140, true),
            Applied::Refused(Refusal::AttemptClosed)
        );
        assert!(matches!(
            open(&mut s, 7, 150, 43),
            Applied::Opened {
                again: false,
                attempts_left: 1,
                ..
            }
        ));
    }

    #[test]
    fn the_last_guess_erases_only_when_no_other_attempt_is_open() {
        let mut s = VaultState::default();
        ap(
            &mut s,
            Command::Register {
                account: "a".into(),
                record: new_record(2),
            },
        );
        open(&mut s, 1, 0, 1);
        open(&mut s, 2, 0, 2);
        assert_eq!(open(&mut s, 3, 0, 3), Applied::Refused(Refusal::Exhausted));
        // An erasure proposed from a copy that has not seen the open attempts waits.
        let erase = Command::Erase {
            account: "a".into(),
            generation: 1,
            reason: EraseReason::Exhausted,
        };
        assert_eq!(ap(&mut s, erase), Applied::Refused(Refusal::AttemptsOpen));
        // The second guess is wrong, but the first may still be right.
        assert_eq!(
            settle(&mut s, 2, 5, false),
            Applied::Closed { attempts_left: 0 }
        );
        assert!(s.record("a").is_some());
        assert!(matches!(
            settle(&mut s, 1, 6, true),
            Applied::Restored { .. }
        ));
        // Both wrong: the second close erases.
        open(&mut s, 1, 10, 4);
        open(&mut s, 2, 10, 5);
        assert_eq!(
            settle(&mut s, 1, 11, false),
            Applied::Closed { attempts_left: 0 }
        );
        assert_eq!(settle(&mut s, 2, 12, false), Applied::Erased);
        assert!(s.locked("a"));
    }

    #[test]
    fn open_attempts_survive_a_snapshot_and_an_old_snapshot_has_none() {
        let mut s = VaultState::default();
        ap(
            &mut s,
            Command::Register {
                account: "a".into(),
                record: new_record(3),
            },
        );
        open(&mut s, 9, 0, 1);
        let mut bytes = postcard::to_allocvec(&s).unwrap();
        let old_layout = bytes.clone();
        bytes.extend(s.trailer());
        let (mut back, trailer): (VaultState, &[u8]) = postcard::take_from_bytes(&bytes).unwrap();
        back.set_trailer(trailer).unwrap();
        assert_eq!(back, s);
        let (mut old, rest): (VaultState, &[u8]) = postcard::take_from_bytes(&old_layout).unwrap();
        old.set_trailer(rest).unwrap();
        assert!(old.open_attempt("a", &[9; 16]).is_none());
        assert_eq!(old.record("a"), s.record("a"));
        // Swept once expired.
        ap(&mut s, Command::Sweep { now_ms: 100 });
        assert!(s.open_attempt("a", &[9; 16]).is_none());
    }

    #[test]
    fn anchors_only_grow_go_with_the_record_and_ride_in_the_trailer() {
        let mut s = VaultState::default();
        ap(
            &mut s,
            Command::Register {
                account: "a".into(),
                record: new_record(3),
            },
        );
        let set = |generation, record| Command::SetAnchor {
            account: "a".into(),
            generation: record,
            anchor: Anchor {
                generation,
                value: vec![generation as u8; 69],
            },
        };
        assert_eq!(ap(&mut s, set(2, 1)), Applied::AnchorSet);
        assert_eq!(
            ap(&mut s, set(2, 1)),
            Applied::Refused(Refusal::AnchorNotNewer { held: 2 })
        );
        assert_eq!(
            ap(&mut s, set(1, 1)),
            Applied::Refused(Refusal::AnchorNotNewer { held: 2 })
        );
        assert_eq!(
            ap(&mut s, set(3, 7)),
            Applied::Refused(Refusal::StaleGeneration)
        );
        assert_eq!(s.anchor("a").unwrap().generation, 2);

        // In a snapshot: read back whole, and a replica of the previous release (which
        // reads the attempts, then the members with `from_bytes`) still reads its part.
        let trailer = s.trailer();
        let mut back = VaultState::default();
        back.set_trailer(&trailer).unwrap();
        assert_eq!(back.anchor("a"), s.anchor("a"));
        let (_, rest): (BTreeMap<String, Vec<OpenAttempt>>, &[u8]) =
            postcard::take_from_bytes(&trailer).unwrap();
        let _members: Members = postcard::from_bytes(rest).unwrap();

        // A new password keeps it; a new backup key (another owner key) drops it.
        let replace = |generation, owner: u8| Command::Replace {
            account: "a".into(),
            generation,
            record: NewRecord {
                owner_public_key: [owner; 32],
                ..new_record(3)
            },
        };
        let owner = s.record("a").unwrap().owner_public_key[0];
        assert!(matches!(
            ap(&mut s, replace(1, owner)),
            Applied::Stored { .. }
        ));
        assert_eq!(s.anchor("a").unwrap().generation, 2);
        assert!(matches!(
            ap(&mut s, replace(2, owner.wrapping_add(1))),
            Applied::Stored { .. }
        ));
        assert!(s.anchor("a").is_none());
        assert_eq!(ap(&mut s, set(4, 3)), Applied::AnchorSet);

        let erase = Command::Erase {
            account: "a".into(),
            generation: 3,
            reason: EraseReason::Owner,
        };
        assert_eq!(ap(&mut s, erase), Applied::Erased);
        assert!(s.anchor("a").is_none());
    }

    #[test]
    fn guesses_are_counted_until_zero_and_never_below() {
        let mut s = VaultState::default();
        let reg = ap(
            &mut s,
            Command::Register {
                account: "a".into(),
                record: new_record(3),
            },
        );
        assert_eq!(
            reg,
            Applied::Stored {
                generation: 1,
                attempts_left: 3
            }
        );
        assert_eq!(attempt(&mut s, 1), Applied::Counted { attempts_left: 2 });
        assert_eq!(attempt(&mut s, 1), Applied::Counted { attempts_left: 1 });
        assert_eq!(attempt(&mut s, 1), Applied::Counted { attempts_left: 0 });
        assert_eq!(s.record("a").unwrap().exhausted_at_ms, Some(5));
        assert_eq!(attempt(&mut s, 1), Applied::Refused(Refusal::Exhausted));
        assert_eq!(s.expired_exhausted(5), vec![]);
        assert_eq!(s.expired_exhausted(6), vec![("a".to_string(), 1)]);
        // The last guess may still be right.
        let ok = ap(
            &mut s,
            Command::Success {
                account: "a".into(),
                generation: 1,
            },
        );
        assert_eq!(
            ok,
            Applied::Restored {
                attempts_left: 3,
                wrapped: vec![3; 8]
            }
        );
        assert_eq!(s.record("a").unwrap().exhausted_at_ms, None);

        for _ in 0..3 {
            attempt(&mut s, 1);
        }
        let erased = ap(
            &mut s,
            Command::Erase {
                account: "a".into(),
                generation: 1,
                reason: EraseReason::Exhausted,
            },
        );
        assert_eq!(erased, Applied::Erased);
        assert!(s.locked("a"));
        assert!(s.record("a").is_none());
    }

    #[test]
    fn an_exhausted_erasure_needs_a_count_of_zero_when_applied() {
        let mut s = VaultState::default();
        ap(
            &mut s,
            Command::Register {
                account: "a".into(),
                record: new_record(2),
            },
        );
        let erase = Command::Erase {
            account: "a".into(),
            generation: 1,
            reason: EraseReason::Exhausted,
        };
        assert_eq!(
            ap(&mut s, erase.clone()),
            Applied::Refused(Refusal::NotExhausted)
        );
        assert!(s.record("a").is_some());
        for _ in 0..2 {
            ap(
                &mut s,
                Command::Attempt {
                    account: "a".into(),
                    generation: 1,
                    now_ms: 0,
                },
            );
        }
        assert_eq!(ap(&mut s, erase), Applied::Erased);
        assert!(s.locked("a"));
    }

    #[test]
    fn stale_generations_and_erasure() {
        let mut s = VaultState::default();
        ap(
            &mut s,
            Command::Register {
                account: "a".into(),
                record: new_record(10),
            },
        );
        assert_eq!(
            ap(
                &mut s,
                Command::Register {
                    account: "a".into(),
                    record: new_record(10)
                }
            ),
            Applied::Refused(Refusal::AlreadyRegistered)
        );
        let replaced = ap(
            &mut s,
            Command::Replace {
                account: "a".into(),
                generation: 1,
                record: new_record(10),
            },
        );
        assert_eq!(
            replaced,
            Applied::Stored {
                generation: 2,
                attempts_left: 10
            }
        );
        // A guess against the old record is not counted; the old proof is stale.
        assert_eq!(
            attempt(&mut s, 1),
            Applied::Refused(Refusal::StaleGeneration)
        );
        assert_eq!(
            ap(
                &mut s,
                Command::Erase {
                    account: "a".into(),
                    generation: 1,
                    reason: EraseReason::Owner
                }
            ),
            Applied::Refused(Refusal::StaleGeneration)
        );
        assert_eq!(
            ap(
                &mut s,
                Command::Erase {
                    account: "a".into(),
                    generation: 2,
                    reason: EraseReason::Owner
                }
            ),
            Applied::Erased
        );
        assert!(s.record("a").is_none());
        assert!(!s.locked("a"), "an owner delete is not a lockout");
        // Registering again never reuses a generation.
        let again = ap(
            &mut s,
            Command::Register {
                account: "a".into(),
                record: new_record(10),
            },
        );
        assert_eq!(
            again,
            Applied::Stored {
                generation: 3,
                attempts_left: 10
            }
        );
        assert!(!format!("{:?}", s).contains("[2, 2"));
    }

    /// What the sweeper's index answers, by a pass over every account (as before it).
    fn scanned(s: &VaultState, now_ms: u64) -> (Vec<(String, u64)>, bool) {
        let exhausted = s
            .records
            .iter()
            .filter(|(_, r)| r.attempts_left == 0 && r.exhausted_at_ms.is_some_and(|t| t < now_ms))
            .map(|(a, r)| (a.clone(), r.generation))
            .collect();
        let expired = s
            .attempts
            .values()
            .flatten()
            .any(|a| a.expires_ms <= now_ms);
        (exhausted, expired)
    }

    fn indexed(s: &VaultState, now_ms: u64) -> (Vec<(String, u64)>, bool) {
        let mut exhausted = s.expired_exhausted(now_ms);
        exhausted.sort();
        (exhausted, s.any_expired_attempt(now_ms))
    }

    pub(crate) fn arbitrary_command() -> impl proptest::strategy::Strategy<Value = Command> {
        use proptest::prelude::*;
        let account = prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_owned);
        let generation = 1u64..4;
        let id = (0u8..3).prop_map(|i| [i; 16]);
        let now = 0u64..400;
        prop_oneof![
            account.clone().prop_map(|account| Command::Register {
                account,
                record: new_record(2)
            }),
            (account.clone(), generation.clone()).prop_map(|(account, generation)| {
                Command::Replace {
                    account,
                    generation,
                    record: new_record(2),
                }
            }),
            (
                account.clone(),
                generation.clone(),
                id.clone(),
                now.clone(),
                1u64..200
            )
                .prop_map(|(account, generation, id, now_ms, ttl_ms)| Command::Open {
                    account,
                    generation,
                    id,
                    ke1: vec![id[0]],
                    now_ms,
                    ttl_ms,
                }),
            (account.clone(), generation.clone(), id.clone(), now.clone()).prop_map(
                |(account, generation, id, now_ms)| Command::Finish {
                    account,
                    generation,
                    id,
                    now_ms,
                }
            ),
            (account.clone(), generation.clone(), id, now.clone()).prop_map(
                |(account, generation, id, now_ms)| Command::Close {
                    account,
                    generation,
                    id,
                    now_ms,
                }
            ),
            (account.clone(), generation.clone(), now.clone()).prop_map(
                |(account, generation, now_ms)| Command::Attempt {
                    account,
                    generation,
                    now_ms,
                }
            ),
            (account, generation, any::<bool>()).prop_map(|(account, generation, owner)| {
                Command::Erase {
                    account,
                    generation,
                    reason: if owner {
                        EraseReason::Owner
                    } else {
                        EraseReason::Exhausted
                    },
                }
            }),
            now.prop_map(|now_ms| Command::Sweep { now_ms }),
        ]
    }

    proptest::proptest! {
        /// The sweeper reads an index instead of passing over every account: whatever
        /// the commands, it finds exactly what a pass would, also after a snapshot.
        #[test]
        fn the_sweepers_index_finds_what_a_pass_over_every_account_finds(
            commands in proptest::collection::vec(arbitrary_command(), 1..60),
            probes in proptest::collection::vec(0u64..500, 4),
        ) {
            let mut s = VaultState::default();
            for (i, command) in commands.into_iter().enumerate() {
                s.apply(command, Place { index: i as u64, position: 0 });
                for &now in &probes {
                    proptest::prop_assert_eq!(indexed(&s, now), scanned(&s, now));
                }
            }
            let mut bytes = postcard::to_allocvec(&s).unwrap();
            bytes.extend(s.trailer());
            let (mut back, trailer): (VaultState, &[u8]) = postcard::take_from_bytes(&bytes).unwrap();
            back.set_trailer(trailer).unwrap();
            proptest::prop_assert_eq!(back, s);
        }
    }
}
