//! Repository locks (docs/FORMAT.md §Locks).
//!
//! A backup or check holds a shared lock, prune an exclusive one: prune deletes packs
//! that a running backup has uploaded but not indexed yet, so the two must never
//! overlap. Each side writes its own lock first and only then lists the others, so of
//! two racing processes at least one sees the other and withdraws.

use crate::{
    error::{RepoError, Result},
    now_unix_ns,
};
use backlock_core::{
    envelope::{self, ObjectKind},
    format::{self, Lock},
    ids::ObjectName,
    kdf::RepoKeys,
};
use backlock_store::{ObjectStore, StoreError};
use std::{sync::Arc, sync::Mutex, time::Instant};

/// A lock not refreshed for this long belongs to a process that is gone. With
/// refreshes every [`REFRESH_EVERY_SECS`], two devices' clocks may disagree by up to
/// 50 minutes before a live lock could look stale.
pub const STALE_AFTER_SECS: i64 = 3600;
/// Long operations refresh their lock this often.
const REFRESH_EVERY_SECS: u64 = 600;

/// The name of this machine, stored in locks and snapshots.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// A held lock; dropping it releases it.
pub struct RepoLock {
    store: Arc<dyn ObjectStore>,
    keys: Arc<RepoKeys>,
    name: String,
    lock: Lock,
    refreshed: Mutex<Instant>,
}

fn now_secs() -> i64 {
    now_unix_ns() / 1_000_000_000
}

fn write(store: &dyn ObjectStore, keys: &RepoKeys, name: &str, lock: &Lock) -> Result<()> {
    store.put(
        ObjectKind::Lock,
        name,
        &envelope::seal(keys, ObjectKind::Lock, name, &format::encode(lock)),
    )?;
    Ok(store.flush()?)
}

/// Who holds a lock, as written in its `hostname` field: the host name, then this
/// boot's id and this process's PID namespace. Two containers (or two machines
/// restored from one image) may share a host name; only a holder with the same boot
/// and PID namespace can be judged gone by a missing `/proc/PID`.
pub fn holder_identity() -> String {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string());
    let boot = read("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let pid_ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{} [{boot} {pid_ns}]", hostname())
}

/// The host name part of a holder identity, for messages.
fn host_of(holder: &str) -> &str {
    holder.split(" [").next().unwrap_or(holder)
}

/// True when `lock` was taken in this boot and PID namespace by a process that no
/// longer exists. A lock written by an older backlock (a bare host name) is never
/// judged gone: it expires instead.
fn holder_is_gone(lock: &Lock) -> bool {
    let identity = holder_identity();
    // Without a boot id or a namespace to compare, nothing is certain.
    !identity.ends_with("[ ]")
        && lock.hostname == identity
        && !std::path::Path::new(&format!("/proc/{}", lock.pid)).exists()
}

impl RepoLock {
    pub(crate) fn acquire(
        store: &Arc<dyn ObjectStore>,
        keys: &Arc<RepoKeys>,
        exclusive: bool,
        rotating: bool,
    ) -> Result<Self> {
        let name = ObjectName::random().to_hex();
        let lock = Lock {
            exclusive,
            hostname: holder_identity(),
            pid: std::process::id(),
            time_unix: now_secs(),
        };
        write(&**store, keys, &name, &lock)?;
        // From here on, dropping `held` withdraws our lock on every error path.
        let held = RepoLock {
            store: store.clone(),
            keys: keys.clone(),
            name,
            lock,
            refreshed: Mutex::new(Instant::now()),
        };
        let now = now_secs();
        for info in store.list(ObjectKind::Lock)? {
            if info.name == held.name {
                continue;
            }
            let other = match store.get(ObjectKind::Lock, &info.name) {
                Ok(sealed) => {
                    let damaged = |e| RepoError::damaged(ObjectKind::Lock, &info.name, e);
                    let plain = match envelope::open(keys, ObjectKind::Lock, &info.name, &sealed) {
                        Ok(plain) => plain,
                        // During a key rotation, the other key's locks: the rotation's
                        // own, which the switch makes moot (docs/FORMAT.md §Key rotation).
                        Err(_) if rotating => continue,
                        Err(e) => return Err(damaged(e)),
                    };
                    format::decode::<Lock>(&plain, "lock").map_err(damaged)?
                }
                // Released while we listed.
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            if holder_is_gone(&other) {
                // Left by a killed process on this machine: certain, so clean it up.
                let _ = store.delete(ObjectKind::Lock, &info.name);
                continue;
            }
            // Another host's lock not refreshed for an hour is ignored, not deleted.
            let stale = now - other.time_unix > STALE_AFTER_SECS;
            if !stale && (exclusive || other.exclusive) {
                return Err(RepoError::Locked {
                    holder: format!(
                        "{} on {} (pid {})",
                        if other.exclusive {
                            "a prune"
                        } else {
                            "a backup or check"
                        },
                        host_of(&other.hostname),
                        other.pid
                    ),
                    age_secs: (now - other.time_unix).max(0),
                });
            }
        }
        Ok(held)
    }

    /// Whether this is the exclusive lock (prune's).
    pub fn is_exclusive(&self) -> bool {
        self.lock.exclusive
    }

    /// Rewrites the lock with the current time if it is due, so a long operation's
    /// lock never looks stale.
    pub(crate) fn refresh_if_due(&self) -> Result<()> {
        let mut last = self.refreshed.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed().as_secs() < REFRESH_EVERY_SECS {
            return Ok(());
        }
        let lock = Lock {
            time_unix: now_secs(),
            ..self.lock.clone()
        };
        write(&*self.store, &self.keys, &self.name, &lock)?;
        *last = Instant::now();
        Ok(())
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        // Best effort: a lock left behind expires (or is seen as dead on this host).
        let _ = self.store.delete(ObjectKind::Lock, &self.name);
        let _ = self.store.flush();
    }
}
