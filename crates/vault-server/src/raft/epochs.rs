//! Ending epochs: what makes erasure cryptographic (docs/VAULT.md §Crypto-erasure).
//!
//! At the end of each epoch (default hourly, and at once on demand) the replica makes
//! the next epoch key, seals the key root and every log segment again under it, and
//! destroys the old key inside its key store. Before that it lets the log purge that
//! follows the snapshot after an erasure finish, so the entries that carried an erased
//! record are gone rather than sealed again. The work is the log since the last
//! snapshot and one small file, never the records.
//!
//! When the current epoch began is kept in the sealed file `epoch` (node key), so a
//! replica that restarts more often than an epoch lasts still ends its epochs on time.

use super::files::{self, FileError};
use super::log_store::LogStore;
use super::state_machine::KeyRootFile;
use super::VaultRaft;
use crate::epoch::EpochSealer;
use crate::seal::SealError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How long the end of an epoch waits for the purge after an erasure.
const PURGE_WAIT: Duration = Duration::from_secs(10);

/// Name of the file that says when the current epoch began, in the data directory.
pub(crate) const EPOCH_FILE: &str = "epoch";
pub(crate) const EPOCH_CONTEXT: &[u8] = b"backlock vault epoch";

/// When an epoch began.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct EpochStart {
    epoch: u64,
    /// Unix time, milliseconds.
    started_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why an epoch could not end. The old key then stays, and the next attempt retries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EpochError {
    /// The key store refused to make or destroy a key.
    #[error("the epoch keys failed: {0}")]
    Keys(#[from] SealError),
    /// Sealing the live files again failed.
    #[error("sealing the live files under the new epoch key failed: {0}")]
    Reseal(String),
}

impl From<FileError> for EpochError {
    fn from(e: FileError) -> Self {
        Self::Reseal(e.to_string())
    }
}

/// How long epoch `current` has yet to run at `now_ms`, given what the `epoch` file
/// records, and what to record if it names another epoch (then `current` starts now).
fn remaining_of(
    recorded: Option<EpochStart>,
    current: u64,
    now_ms: u64,
    length: Duration,
) -> (Duration, Option<EpochStart>) {
    let (started_ms, record) = match recorded {
        Some(start) if start.epoch == current => (start.started_ms, None),
        _ => {
            let start = EpochStart {
                epoch: current,
                started_ms: now_ms,
            };
            (now_ms, Some(start))
        }
    };
    let run = Duration::from_millis(now_ms.saturating_sub(started_ms));
    (length.saturating_sub(run), record)
}

/// Everything an epoch's end touches.
pub(crate) struct Epochs {
    pub(crate) sealer: Arc<EpochSealer>,
    pub(crate) key_root: Arc<KeyRootFile>,
    pub(crate) log: LogStore,
    pub(crate) dropped: watch::Receiver<Option<u64>>,
    /// The `epoch` file.
    pub(crate) start_file: PathBuf,
    /// One end at a time.
    pub(crate) ending: tokio::sync::Mutex<()>,
}

impl Epochs {
    /// Ends the current epoch; returns the new one.
    pub(crate) async fn end(&self, raft: Option<&VaultRaft>) -> Result<u64, EpochError> {
        let _one = self.ending.lock().await;
        if let Some(raft) = raft {
            self.wait_for_purge(raft).await;
        }
        // An end that failed midway left the old key: finish that one first rather than
        // make yet another key.
        let sealer = self.sealer.clone();
        let epoch = blocking(move || match sealer.stale()?.is_empty() {
            true => sealer.advance(),
            false => Ok(sealer.current()),
        })
        .await?;
        self.finish().await?;
        tracing::info!(epoch, "epoch ended: the old epoch key is destroyed");
        Ok(epoch)
    }

    /// How long the current epoch has yet to run, out of `length`: from when it began,
    /// as the `epoch` file says; recorded as now if the file names another epoch.
    pub(crate) fn remaining(&self, length: Duration) -> Result<Duration, FileError> {
        let node = &**self.sealer.node();
        let recorded = files::read_sealed(node, &self.start_file, EPOCH_CONTEXT)?;
        let (remaining, record) = remaining_of(recorded, self.sealer.current(), now_ms(), length);
        if let Some(start) = record {
            files::write_sealed_durably(node, &self.start_file, EPOCH_CONTEXT, &start)?;
        }
        Ok(remaining)
    }

    /// Seals the live files under the current epoch key and destroys older keys: the end
    /// of an epoch, or of one a crash interrupted (run at start).
    pub(crate) async fn finish(&self) -> Result<(), EpochError> {
        let key_root = self.key_root.clone();
        blocking(move || key_root.reseal().map_err(EpochError::from)).await?;
        self.log.reseal().await?;
        let sealer = self.sealer.clone();
        blocking(move || sealer.destroy_before_current().map(drop)).await?;
        let (sealer, path) = (self.sealer.clone(), self.start_file.clone());
        let start = EpochStart {
            epoch: sealer.current(),
            started_ms: now_ms(),
        };
        blocking(move || {
            files::write_sealed_durably(&**sealer.node(), &path, EPOCH_CONTEXT, &start)
                .map_err(EpochError::from)
        })
        .await
    }

    /// Waits (bounded) until the log is purged past the last entry that dropped a
    /// record, so that entry's predecessors are not sealed again under the new key.
    async fn wait_for_purge(&self, raft: &VaultRaft) {
        let Some(target) = *self.dropped.borrow() else {
            return;
        };
        let purged = raft
            .wait(Some(PURGE_WAIT))
            .metrics(
                |m| m.purged.is_some_and(|p| p.index >= target),
                "the log is purged past the last erasure",
            )
            .await;
        if purged.is_err() {
            tracing::warn!(
                target,
                "the log is not yet purged past the last erasure; its entries are sealed \
                 again and go with the next epoch"
            );
        }
    }

    /// Ends an epoch every `length` (the first when the current one has run that long),
    /// retrying a failed end a minute later.
    pub(crate) async fn keep(self: Arc<Self>, raft: VaultRaft, length: Duration) {
        let epochs = self.clone();
        let remaining = tokio::task::spawn_blocking(move || epochs.remaining(length))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let mut wait = remaining.unwrap_or_else(|e| {
            tracing::warn!("cannot read when the epoch began; it ends in full from now: {e}");
            length
        });
        loop {
            tokio::time::sleep(wait).await;
            wait = match self.end(Some(&raft)).await {
                Ok(_) => length,
                Err(e) => {
                    tracing::error!("cannot end the epoch (erased records stay readable with the old key until it ends): {e}");
                    length.min(Duration::from_secs(60))
                }
            };
        }
    }
}

async fn blocking<T: Send + 'static, E: From<SealError> + Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| Err(SealError::Token(format!("epoch task failed: {join}")).into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const MINUTE_MS: u64 = 60_000;

    #[test]
    fn an_epoch_ends_on_time_across_restarts() {
        let now = 1_000 * 60 * MINUTE_MS;
        // Began 50 minutes ago: 10 minutes left, nothing to record.
        let recorded = EpochStart {
            epoch: 4,
            started_ms: now - 50 * MINUTE_MS,
        };
        let (left, record) = remaining_of(Some(recorded), 4, now, HOUR);
        assert_eq!(left, Duration::from_secs(600));
        assert!(record.is_none());
        // Overdue (the replica was down): it ends at once.
        let (left, _) = remaining_of(Some(recorded), 4, now + 70 * MINUTE_MS, HOUR);
        assert_eq!(left, Duration::ZERO);
        // A clock that went back does not stretch it.
        let (left, _) = remaining_of(Some(recorded), 4, now - 60 * MINUTE_MS, HOUR);
        assert_eq!(left, HOUR);
        // The file names another epoch (a crash before it was written), or none: the
        // current one starts now, and that is recorded.
        for recorded in [Some(recorded), None] {
            let (left, record) = remaining_of(recorded, 5, now, HOUR);
            assert_eq!(left, HOUR);
            let record = record.unwrap();
            assert_eq!((record.epoch, record.started_ms), (5, now));
        }
    }
}
