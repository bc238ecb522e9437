//! The vault's replicated state machine (docs/VAULT.md §State machine).
//!
//! Pure and deterministic: every replica applies the same committed [`Command`]s in the
//! same order and reaches the same [`VaultState`]. Guess counting happens here, at
//! apply time, so concurrent guesses on any replica are serialised by the log: a guess
//! is counted only if the count is still above zero when its entry is applied.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

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
    /// The count is back to the maximum; here is the wrapped key to release.
    Restored {
        /// Guesses allowed again.
        attempts_left: u32,
        /// The wrapped key.
        wrapped: Vec<u8>,
    },
    /// The record is gone.
    Erased,
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
            // The wrapped key stays out of logs: with the fleet secret it would allow
            // offline guessing.
            Applied::Restored { attempts_left, .. } => f
                .debug_struct("Restored")
                .field("attempts_left", attempts_left)
                .finish_non_exhaustive(),
            Applied::Erased => f.write_str("Erased"),
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
}

/// Every record, by account.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultState {
    records: BTreeMap<String, Record>,
    /// What outlives a record: the highest generation issued (so a proof for an erased
    /// record never matches a later one) and whether the guess limit erased it (so the
    /// account holder hears "locked", not "no key").
    history: BTreeMap<String, History>,
}

/// The part of an account that survives erasure. Holds no secret.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Highest generation issued.
    pub generation: u64,
    /// The last record was erased by the guess limit.
    pub locked: bool,
}

impl VaultState {
    /// The account's record, if any.
    pub fn record(&self, account: &str) -> Option<&Record> {
        self.records.get(account)
    }

    /// Whether the account's last record was erased by the guess limit (and no new one
    /// was registered since).
    pub fn locked(&self, account: &str) -> bool {
        !self.records.contains_key(account) && self.history.get(account).is_some_and(|h| h.locked)
    }

    /// Records whose count is zero and whose last guess was made before `cutoff_ms`.
    pub fn expired_exhausted(&self, cutoff_ms: u64) -> Vec<(String, u64)> {
        self.records
            .iter()
            .filter(|(_, r)| {
                r.attempts_left == 0 && r.exhausted_at_ms.is_some_and(|t| t < cutoff_ms)
            })
            .map(|(a, r)| (a.clone(), r.generation))
            .collect()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// No records at all.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn store(&mut self, account: &str, new: NewRecord) -> Applied {
        let history = self.history.entry(account.to_owned()).or_default();
        history.generation += 1;
        history.locked = false;
        let generation = history.generation;
        let attempts_left = new.max_attempts;
        self.records.insert(
            account.to_owned(),
            Record {
                record_id: new.record_id,
                password_file: new.password_file,
                wrapped: new.wrapped,
                owner_public_key: new.owner_public_key,
                generation,
                attempts_left,
                max_attempts: new.max_attempts,
                exhausted_at_ms: None,
            },
        );
        Applied::Stored {
            generation,
            attempts_left,
        }
    }

    /// Applies one committed command.
    pub fn apply(&mut self, command: Command) -> Applied {
        match command {
            Command::Register { account, record } => {
                if self.records.contains_key(&account) {
                    return Applied::Refused(Refusal::AlreadyRegistered);
                }
                self.store(&account, record)
            }
            Command::Attempt {
                account,
                generation,
                now_ms,
            } => {
                let Some(r) = self.records.get_mut(&account) else {
                    return Applied::Refused(Refusal::NoRecord);
                };
                if r.generation != generation {
                    return Applied::Refused(Refusal::StaleGeneration);
                }
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
            Command::Success {
                account,
                generation,
            } => {
                let Some(r) = self.records.get_mut(&account) else {
                    return Applied::Refused(Refusal::NoRecord);
                };
                if r.generation != generation {
                    return Applied::Refused(Refusal::StaleGeneration);
                }
                r.attempts_left = r.max_attempts;
                r.exhausted_at_ms = None;
                Applied::Restored {
                    attempts_left: r.attempts_left,
                    wrapped: r.wrapped.clone(),
                }
            }
            Command::Replace {
                account,
                generation,
                record,
            } => match self.records.get(&account) {
                None => Applied::Refused(Refusal::NoRecord),
                Some(r) if r.generation != generation => Applied::Refused(Refusal::StaleGeneration),
                // A record out of guesses cannot be rescued by a proof made before.
                Some(r) if r.attempts_left == 0 => Applied::Refused(Refusal::Exhausted),
                Some(_) => self.store(&account, record),
            },
            Command::Erase {
                account,
                generation,
                reason,
            } => match self.records.get(&account) {
                None => Applied::Refused(Refusal::NoRecord),
                Some(r) if r.generation != generation => Applied::Refused(Refusal::StaleGeneration),
                Some(r) if reason == EraseReason::Exhausted && r.attempts_left > 0 => {
                    Applied::Refused(Refusal::NotExhausted)
                }
                Some(_) => {
                    self.records.remove(&account);
                    let history = self.history.entry(account).or_default();
                    history.locked = reason == EraseReason::Exhausted;
                    Applied::Erased
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_record(max: u32) -> NewRecord {
        NewRecord {
            record_id: [1; 16],
            password_file: vec![2; 8],
            wrapped: vec![3; 8],
            owner_public_key: [4; 32],
            max_attempts: max,
        }
    }

    fn attempt(s: &mut VaultState, generation: u64) -> Applied {
        s.apply(Command::Attempt {
            account: "a".into(),
            generation,
            now_ms: 5,
        })
    }

    #[test]
    fn guesses_are_counted_until_zero_and_never_below() {
        let mut s = VaultState::default();
        let reg = s.apply(Command::Register {
            account: "a".into(),
            record: new_record(3),
        });
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
        let ok = s.apply(Command::Success {
            account: "a".into(),
            generation: 1,
        });
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
        let erased = s.apply(Command::Erase {
            account: "a".into(),
            generation: 1,
            reason: EraseReason::Exhausted,
        });
        assert_eq!(erased, Applied::Erased);
        assert!(s.locked("a"));
        assert!(s.record("a").is_none());
    }

    #[test]
    fn an_exhausted_erasure_needs_a_count_of_zero_when_applied() {
        let mut s = VaultState::default();
        s.apply(Command::Register {
            account: "a".into(),
            record: new_record(2),
        });
        let erase = Command::Erase {
            account: "a".into(),
            generation: 1,
            reason: EraseReason::Exhausted,
        };
        assert_eq!(
            s.apply(erase.clone()),
            Applied::Refused(Refusal::NotExhausted)
        );
        assert!(s.record("a").is_some());
        for _ in 0..2 {
            s.apply(Command::Attempt {
                account: "a".into(),
                generation: 1,
                now_ms: 0,
            });
        }
        assert_eq!(s.apply(erase), Applied::Erased);
        assert!(s.locked("a"));
    }

    #[test]
    fn stale_generations_and_erasure() {
        let mut s = VaultState::default();
        s.apply(Command::Register {
            account: "a".into(),
            record: new_record(10),
        });
        assert_eq!(
            s.apply(Command::Register {
                account: "a".into(),
                record: new_record(10)
            }),
            Applied::Refused(Refusal::AlreadyRegistered)
        );
        let replaced = s.apply(Command::Replace {
            account: "a".into(),
            generation: 1,
            record: new_record(10),
        });
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
            s.apply(Command::Erase {
                account: "a".into(),
                generation: 1,
                reason: EraseReason::Owner
            }),
            Applied::Refused(Refusal::StaleGeneration)
        );
        assert_eq!(
            s.apply(Command::Erase {
                account: "a".into(),
                generation: 2,
                reason: EraseReason::Owner
            }),
            Applied::Erased
        );
        assert!(s.record("a").is_none());
        assert!(!s.locked("a"), "an owner delete is not a lockout");
        // Registering again never reuses a generation.
        let again = s.apply(Command::Register {
            account: "a".into(),
            record: new_record(10),
        });
        assert_eq!(
            again,
            Applied::Stored {
                generation: 3,
                attempts_left: 10
            }
        );
        assert!(!format!("{:?}", s).contains("[2, 2"));
    }
}
