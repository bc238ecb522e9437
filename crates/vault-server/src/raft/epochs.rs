//! Ending epochs: what makes erasure cryptographic (docs/VAULT.md §Crypto-erasure).
//!
//! At the end of each epoch (default hourly, and at once on demand) the replica makes
//! the next epoch key, seals the key root and every log segment again under it, and
//! destroys the old key inside its key store. Before that it lets the log purge that
//! follows the snapshot after an erasure finish, so the entries that carried an erased
//! record are gone rather than sealed again. The work is the log since the last
//! snapshot and one small file, never the records.

use super::files::FileError;
use super::log_store::LogStore;
use super::state_machine::KeyRootFile;
use super::VaultRaft;
use crate::epoch::EpochSealer;
use crate::seal::SealError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long the end of an epoch waits for the purge after an erasure.
const PURGE_WAIT: Duration = Duration::from_secs(10);

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

/// Everything an epoch's end touches.
pub(crate) struct Epochs {
    pub(crate) sealer: Arc<EpochSealer>,
    pub(crate) key_root: Arc<KeyRootFile>,
    pub(crate) log: LogStore,
    pub(crate) dropped: watch::Receiver<Option<u64>>,
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
        let sealer = self.sealer.clone();
        let epoch = blocking(move || sealer.advance()).await?;
        self.finish().await?;
        tracing::info!(epoch, "epoch ended: the old epoch key is destroyed");
        Ok(epoch)
    }

    /// Seals the live files under the current epoch key and destroys older keys: the end
    /// of an epoch, or of one a crash interrupted (run at start).
    pub(crate) async fn finish(&self) -> Result<(), EpochError> {
        let key_root = self.key_root.clone();
        blocking(move || key_root.reseal().map_err(EpochError::from)).await?;
        self.log.reseal().await?;
        let sealer = self.sealer.clone();
        blocking(move || sealer.destroy_before_current().map(drop)).await?;
        Ok(())
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

    /// Ends an epoch every `length`, retrying a failed end a minute later.
    pub(crate) async fn keep(self: Arc<Self>, raft: VaultRaft, length: Duration) {
        let mut wait = length;
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
