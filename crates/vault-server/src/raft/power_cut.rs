//! A power cut inside the test process: what SIGKILL does not show. The log writer
//! reports the length of each segment it made durable (after `fdatasync`); a cut
//! makes every later write of that log fail, as a dead machine would, and truncates
//! each segment to its last durable length, dropping every write not yet synced (what
//! a power loss may drop; no fault-injecting file system is packaged here).
//!
//! Compiled only into unit tests; `log_store.rs` shows the cut drops unsynced writes.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
struct Disk {
    /// Segment path → bytes known durable.
    durable: BTreeMap<PathBuf, u64>,
    /// Log directories whose machine lost power.
    dead: BTreeSet<PathBuf>,
}

static DISK: Mutex<Disk> = Mutex::new(Disk {
    durable: BTreeMap::new(),
    dead: BTreeSet::new(),
});

fn disk() -> MutexGuard<'static, Disk> {
    DISK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Held while the log writer writes to `dir`, so a cut falls between two writes:
/// fails if `dir` lost power.
pub(crate) struct Powered(MutexGuard<'static, Disk>);

pub(crate) fn powered(dir: &Path) -> io::Result<Powered> {
    let disk = disk();
    if disk.dead.contains(dir) {
        return Err(io::Error::other("power cut (test)"));
    }
    Ok(Powered(disk))
}

impl Powered {
    /// `path` holds `len` durable bytes (just synced, or just created empty).
    pub(crate) fn durable(&mut self, path: &Path, len: u64) {
        self.0.durable.insert(path.to_path_buf(), len);
    }
}

/// Cuts the power of the log in `dir`: later writes fail, and every segment written
/// in this process is cut back to its durable length. Returns the bytes dropped.
pub(crate) fn cut(dir: &Path) -> u64 {
    let mut disk = disk();
    disk.dead.insert(dir.to_path_buf());
    let mut dropped = 0;
    for (path, len) in disk.durable.iter().filter(|(p, _)| p.starts_with(dir)) {
        let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) else {
            continue;
        };
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        if written > *len {
            file.set_len(*len)
                .expect("truncate a segment to its durable length");
            dropped += written - len;
        }
    }
    dropped
}

/// The machine of `dir` is back (a restart after the cut).
pub(crate) fn restore(dir: &Path) {
    let mut disk = disk();
    disk.dead.remove(dir);
    disk.durable.retain(|p, _| !p.starts_with(dir));
}

/// A disk for redb (its `StorageBackend`) that loses power: reads see every write;
/// what survives a cut is what the last `sync_data` made durable plus, in order, a
/// random subset of the writes since (a power loss may keep any of them). From the
/// `fail_at`-th operation on, every operation fails, as on a dead machine.
#[derive(Clone, Debug)]
pub(crate) struct CutDisk(std::sync::Arc<Mutex<CutDiskState>>);

#[derive(Debug, Default)]
struct CutDiskState {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Writes (offset, bytes) and resizes (None) since the last sync.
    pending: Vec<(u64, Option<Vec<u8>>)>,
    ops: u64,
    fail_at: Option<u64>,
}

impl CutDisk {
    /// An empty disk that fails from operation `fail_at` on, if given.
    pub(crate) fn new(fail_at: Option<u64>) -> Self {
        Self(std::sync::Arc::new(Mutex::new(CutDiskState {
            fail_at,
            ..CutDiskState::default()
        })))
    }

    fn state(&self) -> MutexGuard<'_, CutDiskState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails every operation from the `n`-th from now on.
    pub(crate) fn fail_after(&self, n: u64) {
        let mut state = self.state();
        state.fail_at = Some(state.ops + n);
    }

    /// Operations so far.
    pub(crate) fn ops(&self) -> u64 {
        self.state().ops
    }

    /// The disk after the power came back: the durable bytes and the pending writes
    /// `keep` picks, working again.
    pub(crate) fn after_cut(&self, mut keep: impl FnMut() -> bool) -> Self {
        let state = self.state();
        let mut image = state.durable.clone();
        for (offset, write) in &state.pending {
            if !keep() {
                continue;
            }
            match write {
                Some(bytes) => {
                    let end = *offset as usize + bytes.len();
                    if image.len() < end {
                        image.resize(end, 0);
                    }
                    image[*offset as usize..end].copy_from_slice(bytes);
                }
                None => image.resize(*offset as usize, 0),
            }
        }
        Self(std::sync::Arc::new(Mutex::new(CutDiskState {
            live: image.clone(),
            durable: image,
            ..CutDiskState::default()
        })))
    }

    fn op(&self) -> Result<MutexGuard<'_, CutDiskState>, redb::BackendError> {
        let mut state = self.state();
        state.ops += 1;
        if state.fail_at.is_some_and(|at| state.ops >= at) {
            return Err(redb::BackendError::Io(io::Error::other("power cut (test)")));
        }
        Ok(state)
    }
}

impl redb::StorageBackend for CutDisk {
    fn len(&self) -> Result<u64, redb::BackendError> {
        Ok(self.op()?.live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), redb::BackendError> {
        let state = self.op()?;
        let end = offset as usize + out.len();
        let bytes = state
            .live
            .get(offset as usize..end)
            .ok_or_else(|| redb::BackendError::Io(io::ErrorKind::UnexpectedEof.into()))?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), redb::BackendError> {
        let mut state = self.op()?;
        state.live.resize(len as usize, 0);
        state.pending.push((len, None));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), redb::BackendError> {
        let mut state = self.op()?;
        state.durable = state.live.clone();
        state.pending.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), redb::BackendError> {
        let mut state = self.op()?;
        let end = offset as usize + data.len();
        if state.live.len() < end {
            state.live.resize(end, 0);
        }
        state.live[offset as usize..end].copy_from_slice(data);
        state.pending.push((offset, Some(data.to_vec())));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{RunningVault, ServeConfig};
    use crate::service::VaultConfig;
    use backlock_core::key::BackupKey;
    use backlock_vault_client::VaultClient;
    use backlock_vault_proto::client::start_recovery;
    use backlock_vault_proto::password::Password;
    use backlock_vault_proto::suite::Stretch;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    const LIMIT: u32 = 100_000;

    fn config(data: &Path) -> ServeConfig {
        ServeConfig {
            data: data.to_path_buf(),
            node_key: None,
            listen: ([127, 0, 0, 1], 0).into(),
            vault: VaultConfig {
                max_attempts: LIMIT,
                account_burst: 1_000_000,
                account_rate: 1_000_000.0,
                ..VaultConfig::default()
            },
            tls: None,
            http: Default::default(),
            metrics_listen: None,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// Wrong guesses from four devices at once; the power goes while they are in
    /// flight; after the restart the count shows every guess whose KE2 a device
    /// received (an unanswered one may count too: failing closed).
    #[test]
    fn a_power_cut_loses_no_acknowledged_guess() {
        for round in 0..4u64 {
            let root = tempfile::TempDir::new().unwrap();
            let data = root.path().join("vault");
            let wal = data.join("raft").join(super::super::log_store::WAL_DIR);
            let ksf = Stretch::memoized();
            let rt = runtime();
            let running = rt.block_on(RunningVault::start(config(&data))).unwrap();
            let token = running.vault.issue_token("pat", 600).unwrap();
            let url = running.url();
            let client = VaultClient::new(&url, "pat", &token).unwrap();
            let key = BackupKey::generate();
            let pinned = running.vault.info().server_public_key;
            rt.block_on(client.register(
                &Password::new("right 1".into()),
                &key,
                &pinned,
                None,
                &ksf,
            ))
            .unwrap();

            let acked = Arc::new(AtomicU32::new(0));
            for _ in 0..4 {
                let (acked, client) = (
                    acked.clone(),
                    VaultClient::new(&url, "pat", &token).unwrap(),
                );
                rt.spawn(async move {
                    loop {
                        let (_, ke1) = start_recovery(&Password::new("wrong".into())).unwrap();
                        match client.guess_once(ke1).await {
                            Ok(_) => acked.fetch_add(1, Ordering::SeqCst),
                            Err(_) => break,
                        };
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(150 + 40 * round));
            let dropped = cut(&wal);
            // Replies already on their way still arrive; none can be acknowledged
            // after the cut, since none can be synced.
            std::thread::sleep(Duration::from_millis(300));
            let acknowledged = acked.load(Ordering::SeqCst);
            rt.block_on(async { drop(running) });
            rt.shutdown_timeout(Duration::from_secs(5));
            assert!(
                acknowledged > 0,
                "round {round}: no guess was answered before the cut"
            );

            restore(&wal);
            let rt = runtime();
            let running = rt.block_on(RunningVault::start(config(&data))).unwrap();
            let client = VaultClient::new(
                &running.url(),
                "pat",
                &running.vault.issue_token("pat", 600).unwrap(),
            )
            .unwrap();
            let left = rt
                .block_on(client.status())
                .unwrap()
                .record
                .expect("the record survives")
                .attempts_left;
            assert!(
                LIMIT - left >= acknowledged,
                "round {round}: {acknowledged} guesses were answered, {} counted after the power cut ({dropped} bytes dropped)",
                LIMIT - left
            );
            rt.block_on(running.shutdown());
        }
    }
}
