//! Counters for `/metrics`, in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the vault counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Records stored (first registrations and replacements).
    pub registrations: Counter,
    /// Guesses counted (KE2 sent).
    pub attempts: Counter,
    /// Keys released after a right guess.
    pub recoveries: Counter,
    /// Records erased by the guess limit.
    pub lockouts: Counter,
    /// Requests refused by the per-account rate limit.
    pub rate_limited: Counter,
}

/// Raft figures for the gauges.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    /// Records held.
    pub records: u64,
    /// Current term.
    pub term: u64,
    /// Last applied log index.
    pub last_applied: u64,
    /// 1 if this replica is the leader.
    pub is_leader: bool,
    /// 1 if this replica leads and has heard from a quorum within its lease, so it may
    /// append a guess now.
    pub may_append: bool,
    /// The epoch whose key seals new values (docs/VAULT.md §Crypto-erasure): it grows by
    /// one at the end of each epoch; one that stops growing means erasure has stalled.
    pub epoch: u64,
    /// Size of the database file when this replica last built a snapshot (0: none
    /// since it started).
    pub snapshot_bytes: u64,
    /// How long that build took, milliseconds.
    pub snapshot_build_ms: u64,
    /// Snapshots built since the replica started.
    pub snapshots_built: u64,
}

impl Metrics {
    /// Prometheus exposition text.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::new();
        let counters = [
            (
                "backlock_vault_registrations_total",
                "Records stored.",
                &self.registrations,
            ),
            (
                "backlock_vault_attempts_total",
                "Password guesses counted.",
                &self.attempts,
            ),
            (
                "backlock_vault_recoveries_total",
                "Keys released after a right guess.",
                &self.recoveries,
            ),
            (
                "backlock_vault_lockouts_total",
                "Records erased by the guess limit.",
                &self.lockouts,
            ),
            (
                "backlock_vault_rate_limited_total",
                "Requests refused by the rate limit.",
                &self.rate_limited,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.get()
            );
        }
        let gauges = [
            ("backlock_vault_records", "Records held.", gauges.records),
            (
                "backlock_vault_raft_term",
                "Current Raft term.",
                gauges.term,
            ),
            (
                "backlock_vault_raft_last_applied",
                "Last applied log index.",
                gauges.last_applied,
            ),
            (
                "backlock_vault_raft_is_leader",
                "1 if this replica leads.",
                u64::from(gauges.is_leader),
            ),
            (
                "backlock_vault_raft_may_append",
                "1 if this replica leads within its quorum lease (it may append a guess).",
                u64::from(gauges.may_append),
            ),
            (
                "backlock_vault_epoch",
                "Current epoch; every older epoch key is destroyed.",
                gauges.epoch,
            ),
            (
                "backlock_vault_snapshot_bytes",
                "Size of the database file at the last snapshot built here (0: none since start).",
                gauges.snapshot_bytes,
            ),
            (
                "backlock_vault_snapshot_build_milliseconds",
                "Time the last snapshot build took (making the database durable).",
                gauges.snapshot_build_ms,
            ),
            (
                "backlock_vault_snapshots_built",
                "Snapshots built here since start.",
                gauges.snapshots_built,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}
