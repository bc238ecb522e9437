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

/// A lock `unlock` removed, or left.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LockInfo {
    /// The lock object's name.
    pub name: String,
    /// Who holds it: `backup or check`, `prune`, or `unknown` when it does not open.
    pub kind: &'static str,
    /// Its host.
    pub host: String,
    /// Its process.
    pub pid: u32,
    /// Seconds since it was written or refreshed.
    pub age_secs: i64,
    /// Why it was removed, or why it is left.
    pub why: String,
}

/// `unlock`: removes the locks whose holder is gone (a process of this host that no
/// longer runs, or a lock not refreshed for [`STALE_AFTER_SECS`]) and lock objects
/// that do not open under this key; with `all`, every lock. Returns what it removed
/// and what it left. During a key rotation the other key's locks are left alone.
pub(crate) fn unlock(
    store: &dyn ObjectStore,
    keys: &RepoKeys,
    all: bool,
    rotating: bool,
) -> Result<(Vec<LockInfo>, Vec<LockInfo>)> {
    let (mut removed, mut left) = (Vec::new(), Vec::new());
    let now = now_secs();
    for info in store.list(ObjectKind::Lock)? {
        let sealed = match store.get(ObjectKind::Lock, &info.name) {
            Ok(sealed) => sealed,
            Err(StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let opened = envelope::open(keys, ObjectKind::Lock, &info.name, &sealed)
            .ok()
            .and_then(|plain| format::decode::<Lock>(&plain, "lock").ok());
        let (entry, remove) = match opened {
            None if rotating => continue,
            None => (
                LockInfo {
                    name: info.name.clone(),
                    kind: "unknown",
                    host: String::new(),
                    pid: 0,
                    age_secs: 0,
                    why: "does not open under this key (made up, or cut short)".into(),
                },
                true,
            ),
            Some(lock) => {
                let age = (now - lock.time_unix).max(0);
                let (remove, why) = if holder_is_gone(&lock) {
                    (true, "its process no longer runs on this host".to_owned())
                } else if age > STALE_AFTER_SECS {
                    (true, format!("not refreshed for {} min", age / 60))
                } else if all {
                    (true, "--remove-all".to_owned())
                } else {
                    (
                        false,
                        "its holder may still run: --remove-all removes it".to_owned(),
                    )
                };
                let entry = LockInfo {
                    name: info.name.clone(),
                    kind: if lock.exclusive {
                        "prune"
                    } else {
                        "backup or check"
                    },
                    host: host_of(&lock.hostname).to_owned(),
                    pid: lock.pid,
                    age_secs: age,
                    why,
                };
                (entry, remove)
            }
        };
        if remove {
            match store.delete(ObjectKind::Lock, &info.name) {
                Ok(()) | Err(StoreError::NotFound { .. }) => removed.push(entry),
                Err(e) => return Err(e.into()),
            }
        } else {
            left.push(entry);
        }
    }
    store.flush()?;
    Ok((removed, left))
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        // Best effort: a lock left behind expires (or is seen as dead on this host).
        let _ = self.store.delete(ObjectKind::Lock, &self.name);
        let _ = self.store.flush();
    }
}
