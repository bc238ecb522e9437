//! The state machine store: [`VaultState`] in memory, sealed snapshots on disk.
//!
//! Applied state is not written per entry: after a restart openraft re-applies the
//! committed log on top of the last snapshot. A snapshot is `postcard(SmData)`; the file
//! `snapshot` holds it with its metadata, sealed, and is replaced by rename so the old
//! bytes (which may hold an erased record) leave the directory.

use super::files::{self, FileError};
use super::types::{Batch, Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::seal::Sealer;
use crate::state::{Applied, Command, Place, VaultState};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, Snapshot, StorageIOError};
use serde::{Deserialize, Serialize};
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use tokio::sync::watch;
use zeroize::Zeroizing;

pub(crate) const SNAPSHOT_CONTEXT: &[u8] = b"backlock vault snapshot";
pub(crate) const SNAPSHOT_FILE: &str = "snapshot";

/// Everything a snapshot captures, updated together under one lock.
#[derive(Clone, Default, Serialize, Deserialize)]
pub(crate) struct SmData {
    pub(crate) state: VaultState,
    pub(crate) last_applied: Option<LogId>,
    pub(crate) last_membership: StoredMembership,
}

/// The snapshot file: metadata plus the snapshot data as sent to followers.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The vault's Raft state machine store.
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

struct Shared {
    snapshot_path: PathBuf,
    sealer: Arc<dyn Sealer>,
    data: RwLock<SmData>,
    /// Metadata of the snapshot on disk; held while the file is replaced.
    current_snapshot: Mutex<Option<SnapshotMeta>>,
    /// Log index of the last applied entry that dropped a record's bytes.
    dropped_record: watch::Sender<Option<u64>>,
    builds: AtomicU64,
}

/// Read access to the applied state, shared with the node.
#[derive(Clone)]
pub(crate) struct StateHandle {
    shared: Arc<Shared>,
}

impl StateHandle {
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, SmData> {
        self.shared.read()
    }

    /// How many handles (openraft's worker, snapshot builds, this one) hold the store.
    pub(crate) fn holders(&self) -> usize {
        Arc::strong_count(&self.shared)
    }
}

impl StateMachineStore {
    /// Opens the state machine under `dir`, loading the snapshot if there is one. Does
    /// blocking file I/O.
    #[allow(
        clippy::result_large_err,
        reason = "openraft's error type, as its storage traits return it"
    )]
    pub fn open(dir: &Path, sealer: Arc<dyn Sealer>) -> Result<Self, StorageError> {
        let read = || -> Result<Option<StoredSnapshot>, FileError> {
            files::create_private_dir(dir)?;
            files::remove_temp_files(dir)?;
            files::read_sealed(&*sealer, &dir.join(SNAPSHOT_FILE), SNAPSHOT_CONTEXT)
        };
        let stored = read().map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let (data, meta) = match stored {
            Some(stored) => {
                let data = decode_data(&stored.data, &stored.meta)?;
                (data, Some(stored.meta))
            }
            None => (SmData::default(), None),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                snapshot_path: dir.join(SNAPSHOT_FILE),
                sealer,
                data: RwLock::new(data),
                current_snapshot: Mutex::new(meta),
                dropped_record: watch::channel(None).0,
                builds: AtomicU64::new(0),
            }),
        })
    }

    pub(crate) fn state_handle(&self) -> StateHandle {
        StateHandle {
            shared: self.shared.clone(),
        }
    }

    /// Changes to the log index of the last applied entry that erased or replaced a
    /// record: a snapshot covering it lets the log entries holding the old bytes go.
    pub(crate) fn dropped_records(&self) -> watch::Receiver<Option<u64>> {
        self.shared.dropped_record.subscribe()
    }
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, SmData> {
        self.data
            .read()
            .expect("state machine lock poisoned by a panic while applying")
    }

    /// Replaces the snapshot file unless it already holds a newer snapshot.
    fn persist(&self, meta: &SnapshotMeta, data: &[u8], force: bool) -> Result<(), FileError> {
        let mut current = self
            .current_snapshot
            .lock()
            .expect("snapshot lock poisoned by a panic");
        let newer_on_disk = current
            .as_ref()
            .is_some_and(|c| c.last_log_id > meta.last_log_id);
        if newer_on_disk && !force {
            return Ok(());
        }
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.to_vec(),
        };
        let written = files::write_sealed_durably(
            &*self.sealer,
            &self.snapshot_path,
            SNAPSHOT_CONTEXT,
            &stored,
        );
        // The plaintext copy may hold records: wipe it either way.
        drop(Zeroizing::new(stored.data));
        written?;
        *current = Some(meta.clone());
        Ok(())
    }
}

#[allow(
    clippy::result_large_err,
    reason = "openraft's error type, as its storage traits return it"
)]
fn decode_data(bytes: &[u8], meta: &SnapshotMeta) -> Result<SmData, StorageError> {
    // `postcard(SmData)`, then the open attempts and the admission state (absent in a
    // snapshot written before they existed).
    let (mut data, trailer): (SmData, &[u8]) = postcard::take_from_bytes(bytes)
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
    data.state
        .set_trailer(trailer)
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
    if data.last_applied != meta.last_log_id {
        let msg = io::Error::other("snapshot data and metadata disagree on the last applied entry");
        return Err(StorageIOError::read_snapshot(Some(meta.signature()), &msg).into());
    }
    Ok(data)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, FileError> + Send + 'static,
) -> Result<T, FileError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| {
            Err(FileError::io(
                Path::new(SNAPSHOT_FILE),
                io::Error::other(join.to_string()),
            ))
        })
}

/// Builds snapshots of the state machine as it is when the build runs.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, data) = {
            let sm = self.shared.read();
            let mut data =
                postcard::to_allocvec(&*sm).map_err(|e| StorageIOError::read_state_machine(&e))?;
            data.extend(sm.state.trailer());
            let build = self.shared.builds.fetch_add(1, Ordering::Relaxed);
            let snapshot_id = match sm.last_applied {
                Some(id) => format!("{}-{}-{build}", id.leader_id, id.index),
                None => format!("none-{build}"),
            };
            let meta = SnapshotMeta {
                last_log_id: sm.last_applied,
                last_membership: sm.last_membership.clone(),
                snapshot_id,
            };
            (meta, data)
        };
        let shared = self.shared.clone();
        let (persist_meta, persist_data) = (meta.clone(), data.clone());
        blocking(move || shared.persist(&persist_meta, &persist_data, false))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let sm = self.shared.read();
        Ok((sm.last_applied, sm.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Applied>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut results = Vec::new();
        let mut dropped = None;
        {
            let mut sm = self
                .shared
                .data
                .write()
                .expect("state machine lock poisoned by a panic while applying");
            for entry in entries {
                sm.last_applied = Some(entry.log_id);
                // Entries that are not vault commands (blank, membership) yield no
                // results; no caller of `propose` waits for them.
                let result = match entry.payload {
                    EntryPayload::Blank => Vec::new(),
                    EntryPayload::Membership(membership) => {
                        sm.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                        Vec::new()
                    }
                    EntryPayload::Normal(Batch(commands)) => commands
                        .into_iter()
                        .enumerate()
                        .map(|(position, command)| {
                            let replaces = matches!(command, Command::Replace { .. });
                            let place = Place {
                                index: entry.log_id.index,
                                position: position as u32,
                            };
                            let result = sm.state.apply(command, place);
                            if matches!(result, Applied::Erased)
                                || (replaces && matches!(result, Applied::Stored { .. }))
                            {
                                dropped = Some(entry.log_id.index);
                            }
                            result
                        })
                        .collect(),
                };
                results.push(result);
            }
        }
        if let Some(index) = dropped {
            self.shared.dropped_record.send_replace(Some(index));
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = Zeroizing::new(snapshot.into_inner());
        let data = decode_data(&bytes, meta)?;
        let shared = self.shared.clone();
        let persist_meta = meta.clone();
        blocking(move || shared.persist(&persist_meta, &bytes, true))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        *self
            .shared
            .data
            .write()
            .expect("state machine lock poisoned by a panic while applying") = data;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let shared = self.shared.clone();
        let stored: Option<StoredSnapshot> = blocking(move || {
            // Under the lock, so the file matches the metadata we believe is current.
            let _current = shared
                .current_snapshot
                .lock()
                .expect("snapshot lock poisoned by a panic");
            files::read_sealed(&*shared.sealer, &shared.snapshot_path, SNAPSHOT_CONTEXT)
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
