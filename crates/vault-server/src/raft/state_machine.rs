//! The state machine store: [`VaultState`] in memory, sealed snapshots on disk.
//!
//! Applied state is not written per entry: after a restart openraft re-applies the
//! committed log on top of the last snapshot. A snapshot as sent to followers is
//! `postcard(SmData)` followed by the state's trailer. The file `snapshot` holds it with
//! its metadata, sealed under the node key, and is replaced by rename so the old bytes
//! leave the directory. In the file (version 2) each record's secrets are sealed under
//! its own leaf key of the replica's key tree (`keytree.rs`), which the file carries; the
//! tree's root key is in `keyroot`, sealed under the current epoch key, so an erased
//! record opens from no copy of the disk once its epoch ends (docs/VAULT.md
//! §Crypto-erasure). A version 1 file (whole records under the node key) still reads.

use super::files::{self, FileError};
use super::keytree::{KeyTree, StoredTree, TreeError, TreeKey};
use super::types::{Batch, Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::epoch::EpochSealer;
use crate::seal::SealError;
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

/// Seal context of a version 1 snapshot file (records whole, under the node key).
pub(crate) const SNAPSHOT_CONTEXT: &[u8] = b"backlock vault snapshot";
/// Seal context of a version 2 snapshot file (records under the key tree).
pub(crate) const SNAPSHOT_CONTEXT_V2: &[u8] = b"backlock vault snapshot 2";
pub(crate) const SNAPSHOT_FILE: &str = "snapshot";
/// The key tree's root keys, by tree id, sealed under the current epoch key.
pub(crate) const KEY_ROOT_FILE: &str = "keyroot";
pub(crate) const KEY_ROOT_CONTEXT: &[u8] = b"backlock vault key root";

/// Everything a snapshot captures, updated together under one lock.
#[derive(Clone, Default, Serialize, Deserialize)]
pub(crate) struct SmData {
    pub(crate) state: VaultState,
    pub(crate) last_applied: Option<LogId>,
    pub(crate) last_membership: StoredMembership,
}

/// A version 1 snapshot file: metadata plus the snapshot data as sent to followers.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// A version 2 snapshot file: the snapshot data with every record's secrets sealed under
/// its leaf of `tree` (see [`seal_secrets`]).
#[derive(Serialize, Deserialize)]
struct StoredSnapshotV2 {
    meta: SnapshotMeta,
    tree: StoredTree,
    data: Vec<u8>,
}

/// Root keys of the key tree by tree id: the one the snapshot file names and, while a
/// new snapshot is written, the next one.
type KeyRoots = Vec<([u8; 16], [u8; 32])>;

/// The vault's Raft state machine store.
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

/// The key root file: the tree's root keys, sealed under the current epoch key.
pub(crate) struct KeyRootFile {
    path: PathBuf,
    sealer: Arc<EpochSealer>,
    /// The id of the tree in the snapshot file; held across each read-modify-write of
    /// the file.
    live: Mutex<Option<[u8; 16]>>,
}

impl KeyRootFile {
    fn read(&self) -> Result<Zeroizing<KeyRoots>, FileError> {
        let roots = files::read_sealed(&*self.sealer, &self.path, KEY_ROOT_CONTEXT)?;
        Ok(Zeroizing::new(roots.unwrap_or_default()))
    }

    fn write(&self, roots: &KeyRoots) -> Result<(), FileError> {
        files::write_sealed_durably(&*self.sealer, &self.path, KEY_ROOT_CONTEXT, roots)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<[u8; 16]>> {
        self.live.lock().expect("key root lock poisoned by a panic")
    }

    /// Rewrites the file with only the live tree's root (if it holds more: a crash or
    /// a failed write after a snapshot), sealed under the current epoch key.
    fn prune(&self, live: &Option<[u8; 16]>) -> Result<(), FileError> {
        if !self.path.exists() {
            return Ok(());
        }
        let mut roots = self.read()?;
        if let Some(id) = live {
            roots.retain(|(root, _)| root == id);
        }
        self.write(&roots)
    }

    /// Seals the file again under the current epoch key (the epoch just advanced),
    /// keeping only the live tree's root: an older one would outlive its epoch.
    pub(crate) fn reseal(&self) -> Result<(), FileError> {
        let live = self.lock();
        self.prune(&live)
    }
}

struct Shared {
    snapshot_path: PathBuf,
    key_root: Arc<KeyRootFile>,
    sealer: Arc<EpochSealer>,
    /// The key tree of the snapshot on disk (updated with it), under the snapshot lock.
    tree: Mutex<KeyTree>,
    data: RwLock<SmData>,
    /// Metadata of the snapshot on disk; held while the file is replaced.
    current_snapshot: Mutex<Option<SnapshotMeta>>,
    /// Log index of the last applied entry that dropped a record's bytes.
    dropped_record: watch::Sender<Option<u64>>,
    builds: AtomicU64,
    /// Builds that completed (for `/metrics`).
    built: AtomicU64,
    /// The last snapshot built here, for `/metrics`.
    last_build: Mutex<Option<SnapshotFigures>>,
}

/// What the last snapshot build cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotFigures {
    /// Size of the snapshot as sent to followers.
    pub bytes: u64,
    /// From taking the state to the file on disk, milliseconds.
    pub build_ms: u64,
    /// Snapshots built (completed) since the replica started.
    pub builds: u64,
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

    /// The last snapshot built since the replica started, if any.
    pub(crate) fn last_snapshot(&self) -> Option<SnapshotFigures> {
        *self
            .shared
            .last_build
            .lock()
            .expect("snapshot figures lock poisoned")
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
    pub fn open(dir: &Path, sealer: Arc<EpochSealer>) -> Result<Self, StorageError> {
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let key_root = Arc::new(KeyRootFile {
            path: dir.join(KEY_ROOT_FILE),
            sealer: sealer.clone(),
            live: Mutex::new(None),
        });
        let read = || -> Result<Option<Loaded>, FileError> {
            files::create_private_dir(dir)?;
            files::remove_temp_files(dir)?;
            let loaded = read_snapshot(&sealer, &snapshot_path, &key_root)?;
            if let Some(Loaded {
                tree,
                legacy: false,
                ..
            }) = &loaded
            {
                let mut live = key_root.lock();
                *live = Some(tree.id());
                key_root.prune(&live)?;
            }
            Ok(loaded)
        };
        let loaded = read().map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let mut legacy = None;
        let (data, meta, tree) = match loaded {
            Some(Loaded {
                meta,
                data,
                tree,
                legacy: was_legacy,
            }) => {
                if was_legacy {
                    legacy = Some((meta.clone(), data.clone()));
                }
                (data, Some(meta), tree)
            }
            None => (
                SmData::default(),
                None,
                KeyTree::new().map_err(|e| {
                    StorageIOError::read_snapshot(
                        None,
                        &FileError::Seal {
                            path: snapshot_path.clone(),
                            source: e,
                        },
                    )
                })?,
            ),
        };
        let shared = Arc::new(Shared {
            snapshot_path,
            key_root,
            sealer,
            tree: Mutex::new(tree),
            data: RwLock::new(data),
            current_snapshot: Mutex::new(meta),
            dropped_record: watch::channel(None).0,
            builds: AtomicU64::new(0),
            built: AtomicU64::new(0),
            last_build: Mutex::new(None),
        });
        if let Some((meta, data)) = legacy {
            // A snapshot of an earlier release holds whole records under the node key:
            // write it again at once with its records under the key tree.
            shared
                .persist(&meta, data, true)
                .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        }
        Ok(Self { shared })
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

impl StateMachineStore {
    /// The key root file, which the end of an epoch seals again.
    pub(crate) fn key_root(&self) -> Arc<KeyRootFile> {
        self.shared.key_root.clone()
    }
}

/// A snapshot file as read.
struct Loaded {
    meta: SnapshotMeta,
    data: SmData,
    tree: KeyTree,
    /// Version 1: whole records under the node key, and a new, empty tree.
    legacy: bool,
}

/// Reads the snapshot file, of either version, with its key tree.
fn read_snapshot(
    sealer: &EpochSealer,
    snapshot_path: &Path,
    key_root: &KeyRootFile,
) -> Result<Option<Loaded>, FileError> {
    let node = &**sealer.node();
    let v2 = files::read_sealed::<StoredSnapshotV2>(node, snapshot_path, SNAPSHOT_CONTEXT_V2);
    let stored = match v2 {
        Err(FileError::Seal {
            source: SealError::Unauthentic,
            ..
        }) => {
            // A version 1 file: its records are whole, under the node key.
            let Some(v1) =
                files::read_sealed::<StoredSnapshot>(node, snapshot_path, SNAPSHOT_CONTEXT)?
            else {
                return Ok(None);
            };
            let data =
                decode_data(&v1.data, &v1.meta).map_err(|e| decode_error(snapshot_path, e))?;
            let tree = KeyTree::new().map_err(|source| FileError::Seal {
                path: snapshot_path.to_path_buf(),
                source,
            })?;
            return Ok(Some(Loaded {
                meta: v1.meta,
                data,
                tree,
                legacy: true,
            }));
        }
        other => other?,
    };
    let Some(stored) = stored else {
        return Ok(None);
    };
    let roots = key_root.read()?;
    let tree_error = |source| FileError::Tree {
        path: snapshot_path.to_path_buf(),
        source,
    };
    let root = roots
        .iter()
        .find(|(id, _)| *id == stored.tree.id)
        .map(|(_, key)| TreeKey::from_bytes(key))
        .ok_or_else(|| {
            tree_error(TreeError::Decode(format!(
                "{} holds no root key for this snapshot's tree; restore this replica from \
                 another (see docs/OPERATIONS.md)",
                key_root.path.display()
            )))
        })?;
    let tree = KeyTree::load(stored.tree, root).map_err(tree_error)?;
    let mut data =
        decode_data(&stored.data, &stored.meta).map_err(|e| decode_error(snapshot_path, e))?;
    open_secrets(&mut data.state, &tree).map_err(tree_error)?;
    Ok(Some(Loaded {
        meta: stored.meta,
        data,
        tree,
        legacy: false,
    }))
}

fn decode_error(path: &Path, e: StorageError) -> FileError {
    FileError::io(
        path,
        io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    )
}

/// A record's secrets as sealed under its leaf key: its registration id, password file
/// and wrapped key.
type Secrets = ([u8; 16], Vec<u8>, Vec<u8>);

/// Seals each record's secrets under its leaf key, in place: the sealed value takes the
/// password file's place and the id and wrapped key are emptied, so the state encodes
/// as before with nothing secret in clear.
fn seal_secrets(state: &mut VaultState, tree: &KeyTree) -> Result<(), TreeError> {
    for (account, record) in state.records_mut() {
        let secrets: Secrets = (
            record.record_id,
            std::mem::take(&mut record.password_file),
            std::mem::take(&mut record.wrapped),
        );
        let plain = Zeroizing::new(postcard::to_allocvec(&secrets).expect("encodes"));
        drop(Zeroizing::new(secrets.1));
        drop(Zeroizing::new(secrets.2));
        record.password_file = tree.seal_record(account, &plain)?;
        record.record_id = [0; 16];
    }
    Ok(())
}

/// Undoes [`seal_secrets`].
fn open_secrets(state: &mut VaultState, tree: &KeyTree) -> Result<(), TreeError> {
    for (account, record) in state.records_mut() {
        let plain = tree.open_record(account, &record.password_file)?;
        let (record_id, password_file, wrapped): Secrets = postcard::from_bytes(&plain)
            .map_err(|e| TreeError::Decode(format!("the record of {account:?}: {e}")))?;
        record.record_id = record_id;
        record.password_file = password_file;
        record.wrapped = wrapped;
    }
    Ok(())
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, SmData> {
        self.data
            .read()
            .expect("state machine lock poisoned by a panic while applying")
    }

    /// Replaces the snapshot file unless it already holds a newer snapshot. The key tree
    /// first follows the records (erasing the leaves of records gone); a new root key is
    /// added to the key root before the file that needs it, and the old one removed
    /// after, so a crash between leaves a pair that opens.
    /// `disk` is consumed: its records' secrets are moved out and wiped as they are sealed.
    fn persist(&self, meta: &SnapshotMeta, mut disk: SmData, force: bool) -> Result<(), FileError> {
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
        let path = &self.snapshot_path;
        let seal_error = |source| FileError::Seal {
            path: path.clone(),
            source,
        };
        let tree_error = |source| FileError::Tree {
            path: path.clone(),
            source,
        };
        let mut tree = self.tree.lock().expect("key tree lock poisoned by a panic");
        tree.reconcile(disk.state.registrations())
            .map_err(seal_error)?;
        seal_secrets(&mut disk.state, &tree).map_err(tree_error)?;
        let mut bytes = postcard::to_allocvec(&disk).map_err(|source| FileError::Encode {
            path: path.clone(),
            source,
        })?;
        bytes.extend(disk.state.trailer());
        let stored = StoredSnapshotV2 {
            meta: meta.clone(),
            tree: tree.store().map_err(seal_error)?,
            data: bytes,
        };

        let mut live = self.key_root.lock();
        let mut roots = self.key_root.read()?;
        let root = (tree.id(), *tree.root_key().bytes());
        if !roots.contains(&root) {
            roots.push(root);
            self.key_root.write(&roots)?;
        }
        files::write_sealed_durably(&**self.sealer.node(), path, SNAPSHOT_CONTEXT_V2, &stored)?;
        // From here the file needs this root only; if dropping the old one fails now,
        // the next epoch's end drops it.
        *live = Some(tree.id());
        if roots.len() > 1 {
            self.key_root.prune(&live)?;
        }
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
        let started = std::time::Instant::now();
        // Only the copy is taken under the lock, which holds up applying; encoding and
        // sealing work on the copy.
        let (meta, copy) = {
            let sm = self.shared.read();
            let copy = sm.clone();
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
            (meta, copy)
        };
        let shared = self.shared.clone();
        let persist_meta = meta.clone();
        let data = blocking(move || {
            let mut data = postcard::to_allocvec(&copy).map_err(|source| FileError::Encode {
                path: shared.snapshot_path.clone(),
                source,
            })?;
            data.extend(copy.state.trailer());
            shared.persist(&persist_meta, copy, false)?;
            Ok(data)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        *self
            .shared
            .last_build
            .lock()
            .expect("snapshot figures lock poisoned") = Some(SnapshotFigures {
            bytes: data.len() as u64,
            build_ms: started.elapsed().as_millis() as u64,
            builds: self.shared.built.fetch_add(1, Ordering::Relaxed) + 1,
        });
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
        let copy = data.clone();
        blocking(move || shared.persist(&persist_meta, copy, true))
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
        let stored = blocking(move || {
            // Under the lock, so the file matches the metadata we believe is current.
            let _current = shared
                .current_snapshot
                .lock()
                .expect("snapshot lock poisoned by a panic");
            let Some(Loaded { meta, data, .. }) =
                read_snapshot(&shared.sealer, &shared.snapshot_path, &shared.key_root)?
            else {
                return Ok(None);
            };
            let mut bytes = postcard::to_allocvec(&data).map_err(|source| FileError::Encode {
                path: shared.snapshot_path.clone(),
                source,
            })?;
            bytes.extend(data.state.trailer());
            Ok(Some((meta, bytes)))
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::KeyFileSealer;
    use crate::state::NewRecord;
    use openraft::CommittedLeaderId;

    /// A snapshot file as the release before crypto-erasure wrote it (version 1, whole
    /// records under the node key) opens, and is at once written again as version 2
    /// with the record under its leaf key.
    #[test]
    fn a_snapshot_of_the_previous_release_opens_and_is_rewritten_under_the_key_tree() {
        let root = tempfile::tempdir().unwrap();
        let node: Arc<dyn crate::seal::Sealer> =
            Arc::new(KeyFileSealer::open_or_create(root.path().join("node.key")).unwrap());
        let dir = root.path().join("data");
        files::create_private_dir(&dir).unwrap();
        let mut state = VaultState::default();
        let file = b"v1-password-file-3e9c1d77".to_vec();
        let last = LogId::new(CommittedLeaderId::new(1, 1), 3);
        state.apply(
            Command::Register {
                account: "alice".into(),
                record: NewRecord {
                    record_id: [1; 16],
                    password_file: file.clone(),
                    wrapped: b"wrapped".to_vec(),
                    owner_public_key: [2; 32],
                    max_attempts: 10,
                },
            },
            Place {
                index: 3,
                position: 0,
            },
        );
        let data = SmData {
            state,
            last_applied: Some(last),
            last_membership: StoredMembership::default(),
        };
        let mut bytes = postcard::to_allocvec(&data).unwrap();
        bytes.extend(data.state.trailer());
        let meta = SnapshotMeta {
            last_log_id: Some(last),
            last_membership: StoredMembership::default(),
            snapshot_id: "1-3-0".into(),
        };
        let v1 = StoredSnapshot { meta, data: bytes };
        files::write_sealed_durably(&*node, &dir.join(SNAPSHOT_FILE), SNAPSHOT_CONTEXT, &v1)
            .unwrap();

        let sealer = Arc::new(EpochSealer::open(node.clone()).unwrap());
        let store = StateMachineStore::open(&dir, sealer.clone()).unwrap();
        let record = store.shared.read().state.record("alice").unwrap().clone();
        assert_eq!(record.password_file, file);
        // Rewritten as version 2: the v1 context no longer opens it, and the outer
        // plaintext no longer holds the record.
        let raw = std::fs::read(dir.join(SNAPSHOT_FILE)).unwrap();
        assert!(node.open(SNAPSHOT_CONTEXT, &raw).is_err());
        let outer = node.open(SNAPSHOT_CONTEXT_V2, &raw).unwrap();
        assert!(!outer.windows(file.len()).any(|w| w == file.as_slice()));
        drop(store);
        let again = StateMachineStore::open(&dir, sealer).unwrap();
        assert_eq!(
            again
                .shared
                .read()
                .state
                .record("alice")
                .unwrap()
                .password_file,
            file
        );
    }
}
