//! The state machine store: the applied state in the replica's database
//! (`records.rs`), snapshots built from it.
//!
//! A snapshot as sent to followers is a stream of accounts (`snapshot_stream.rs`),
//! written from a read transaction pinned at a durable commit into a sealed spool file
//! (`spool.rs`) when openraft first reads it; a follower receives it into a spool and
//! installs it account by account. Releases before sent `postcard(SmData)` followed by
//! the state's trailer and the applied log's digest, which is still installed. Building
//! a snapshot makes the database durable, so the log before it can go.
//!
//! Releases before the database kept the state in memory and wrote it to the file
//! `snapshot`, sealed under the node key (version 1: whole records; version 2: each
//! record's secrets under its leaf of a key tree the file carries, its root key in
//! `keyroot`); such a file is read once, moved into the database under a new key tree,
//! and removed.

use super::files::{self, FileError};
use super::keytree::{KeyTree, StoredTree, TreeError, TreeKey};
use super::records::{DbError, RecordDb, Summary, View, CACHE_BYTES};
use super::snapshot_stream::{self, StreamReader};
use super::spool::{SnapshotFile, Spool};
use super::types::{Batch, Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::epoch::EpochSealer;
use crate::seal::SealError;
use crate::state::{self, Applied, Command, Place, VaultState};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, Snapshot, StorageIOError};
use serde::{Deserialize, Serialize};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use zeroize::Zeroizing;

/// Seal context of a version 1 snapshot file (records whole, under the node key).
pub(crate) const SNAPSHOT_CONTEXT: &[u8] = b"backlock vault snapshot";
/// Seal context of a version 2 snapshot file (records under the key tree).
pub(crate) const SNAPSHOT_CONTEXT_V2: &[u8] = b"backlock vault snapshot 2";
/// The snapshot file of releases before the database. This release leaves in its place
/// a marker: an empty value sealed as a version 2 file, which such a release refuses
/// to start on (it does not decode), rather than start on an empty state and a purged
/// log.
pub(crate) const SNAPSHOT_FILE: &str = "snapshot";
/// The key tree's root keys, by tree id, sealed under the current epoch key.
pub(crate) const KEY_ROOT_FILE: &str = "keyroot";
pub(crate) const KEY_ROOT_CONTEXT: &[u8] = b"backlock vault key root";

/// Everything a snapshot captures.
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
/// its leaf of `tree`.
#[derive(Serialize, Deserialize)]
struct StoredSnapshotV2 {
    meta: SnapshotMeta,
    tree: StoredTree,
    data: Vec<u8>,
}

/// Root keys of the key tree by tree id: the live one and, while a transaction that
/// replaces it commits, the next one.
type KeyRoots = Vec<([u8; 16], [u8; 32])>;

/// The vault's Raft state machine store.
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

/// The key root file: the tree's root keys, sealed under the current epoch key.
pub(crate) struct KeyRootFile {
    path: PathBuf,
    sealer: Arc<EpochSealer>,
    /// The id of the live tree; held across each read-modify-write of the file.
    live: Mutex<Option<[u8; 16]>>,
}

impl KeyRootFile {
    /// The key root file of the data directory `dir`.
    pub(crate) fn new(dir: &Path, sealer: Arc<EpochSealer>) -> Self {
        Self {
            path: dir.join(KEY_ROOT_FILE),
            sealer,
            live: Mutex::new(None),
        }
    }

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

    /// The root key of tree `id`, if the file holds it.
    pub(crate) fn root(&self, id: [u8; 16]) -> Result<Option<TreeKey>, FileError> {
        Ok(self
            .read()?
            .iter()
            .find(|(held, _)| *held == id)
            .map(|(_, key)| TreeKey::from_bytes(key)))
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Makes tree `id` the live one and drops any other root.
    pub(crate) fn keep_only(&self, id: [u8; 16]) -> Result<(), FileError> {
        let mut live = self.lock();
        *live = Some(id);
        self.prune(&live)
    }

    /// Adds root `key` of tree `id` to the file before `commit` (which writes the tree
    /// that needs it) and, once it committed, drops the old root: a crash between
    /// leaves a pair that opens.
    pub(crate) fn replace_root<T>(
        &self,
        id: [u8; 16],
        key: &TreeKey,
        commit: impl FnOnce() -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let mut live = self.lock();
        let mut roots = self.read()?;
        let root = (id, *key.bytes());
        if !roots.contains(&root) {
            roots.push(root);
            self.write(&roots)?;
        }
        let out = commit()?;
        *live = Some(id);
        // If dropping the old root fails now, the next start or epoch's end drops it.
        if roots.len() > 1 {
            let _ = self.prune(&live);
        }
        Ok(out)
    }

    /// Seals the file again under the current epoch key (the epoch just advanced),
    /// keeping only the live tree's root: an older one would outlive its epoch.
    pub(crate) fn reseal(&self) -> Result<(), FileError> {
        let live = self.lock();
        self.prune(&live)
    }
}

struct Shared {
    db: RecordDb,
    /// The data directory, where snapshot spools are made.
    dir: PathBuf,
    key_root: Arc<KeyRootFile>,
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
    /// Size of the database file the snapshot stands for.
    pub bytes: u64,
    /// From the request to the database made durable, milliseconds.
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
    /// Runs `f` on a consistent view of the applied state.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&View<'_>) -> T) -> Result<T, DbError> {
        self.shared.db.read(f)
    }

    /// What is kept in memory beside the database: last applied entry, membership,
    /// join tickets, digest, number of records.
    pub(crate) fn summary(&self) -> Summary {
        self.shared.db.summary()
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

fn storage_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl StateMachineStore {
    /// Opens the state machine under `dir`: its database, and a snapshot file of an
    /// earlier release moved into it. Does blocking file I/O.
    #[allow(
        clippy::result_large_err,
        reason = "openraft's error type, as its storage traits return it"
    )]
    pub fn open(dir: &Path, sealer: Arc<EpochSealer>) -> Result<Self, StorageError> {
        Self::open_with_cache(dir, sealer, CACHE_BYTES)
    }

    /// [`StateMachineStore::open`] with a database page cache of `cache_bytes` (what a
    /// replica's memory holds of the records; [`CACHE_BYTES`] by default).
    #[allow(
        clippy::result_large_err,
        reason = "openraft's error type, as its storage traits return it"
    )]
    pub fn open_with_cache(
        dir: &Path,
        sealer: Arc<EpochSealer>,
        cache_bytes: usize,
    ) -> Result<Self, StorageError> {
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let key_root = Arc::new(KeyRootFile::new(dir, sealer.clone()));
        let read_error =
            |e: &dyn std::fmt::Display| StorageIOError::read_snapshot(None, &storage_error(e));
        files::create_private_dir(dir).map_err(|e| read_error(&e))?;
        files::remove_temp_files(dir).map_err(|e| read_error(&e))?;
        // Read before the database opens: opening drops every root but its own.
        let legacy =
            read_snapshot(&sealer, &snapshot_path, &key_root).map_err(|e| read_error(&e))?;
        let db =
            RecordDb::open_with_cache(dir, &key_root, cache_bytes).map_err(|e| read_error(&e))?;
        if let Some(Loaded { meta, data }) = legacy {
            let held = db.summary().last_applied;
            if held < meta.last_log_id {
                let digest =
                    *blake3::hash(&postcard::to_allocvec(&data).unwrap_or_default()).as_bytes();
                let summary = Summary {
                    last_applied: data.last_applied,
                    membership: data.last_membership.clone(),
                    digest,
                    snapshot: Some(meta.clone()),
                    ..Summary::default()
                };
                db.replace(&key_root, &data.state, summary).map_err(|e| {
                    StorageIOError::write_snapshot(Some(meta.signature()), &storage_error(e))
                })?;
            }
        }
        // In the database now (or already, if a crash came before): the marker takes
        // the file's place.
        if !is_marker(&sealer, &snapshot_path).map_err(|e| read_error(&e))? {
            files::write_sealed_durably(&**sealer.node(), &snapshot_path, SNAPSHOT_CONTEXT_V2, &())
                .map_err(|e| read_error(&e))?;
        }
        let shared = Arc::new(Shared {
            db,
            dir: dir.to_path_buf(),
            key_root,
            dropped_record: watch::channel(None).0,
            builds: AtomicU64::new(0),
            built: AtomicU64::new(0),
            last_build: Mutex::new(None),
        });
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

    /// The key root file, which the end of an epoch seals again.
    pub(crate) fn key_root(&self) -> Arc<KeyRootFile> {
        self.shared.key_root.clone()
    }

    /// The number of records held.
    pub fn records(&self) -> u64 {
        self.shared.db.summary().records
    }

    /// The digest chain of the entries applied (or installed with a snapshot).
    pub fn state_digest(&self) -> [u8; 32] {
        self.shared.db.summary().digest
    }

    /// The whole applied state in memory (a copy's inspection; made durable first).
    pub(crate) fn export(&self) -> Result<VaultState, DbError> {
        Ok(self.shared.db.export(&self.shared.key_root, |_| {})?.0)
    }
}

/// A snapshot file as read.
struct Loaded {
    meta: SnapshotMeta,
    data: SmData,
}

/// Whether `path` is this release's marker (see [`SNAPSHOT_FILE`]).
fn is_marker(sealer: &EpochSealer, path: &Path) -> Result<bool, FileError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(FileError::io(path, e)),
    };
    Ok(sealer
        .node()
        .open(SNAPSHOT_CONTEXT_V2, &bytes)
        .is_ok_and(|plain| plain.is_empty()))
}

/// Reads a snapshot file of an earlier release, of either version, if there is one.
fn read_snapshot(
    sealer: &EpochSealer,
    snapshot_path: &Path,
    key_root: &KeyRootFile,
) -> Result<Option<Loaded>, FileError> {
    if is_marker(sealer, snapshot_path)? {
        return Ok(None);
    }
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
            let (data, _) =
                decode_data(&v1.data, &v1.meta).map_err(|e| decode_error(snapshot_path, e))?;
            return Ok(Some(Loaded {
                meta: v1.meta,
                data,
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
    let (mut data, _) =
        decode_data(&stored.data, &stored.meta).map_err(|e| decode_error(snapshot_path, e))?;
    open_secrets(&mut data.state, &tree).map_err(tree_error)?;
    Ok(Some(Loaded {
        meta: stored.meta,
        data,
    }))
}

fn decode_error(path: &Path, e: StorageError) -> FileError {
    FileError::io(
        path,
        io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    )
}

/// A record's secrets as a version 2 snapshot file sealed them under its leaf key: its
/// registration id, password file and wrapped key.
type Secrets = ([u8; 16], Vec<u8>, Vec<u8>);

/// Opens the records of a version 2 snapshot file: each one's sealed secrets took its
/// password file's place, its id and wrapped key emptied.
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

/// Decodes snapshot bytes: `postcard(SmData)`, the trailer (open attempts, admission
/// state, anchors: absent in a snapshot written before they existed), then the applied
/// log's digest (absent before the database).
#[allow(
    clippy::result_large_err,
    reason = "openraft's error type, as its storage traits return it"
)]
fn decode_data(
    bytes: &[u8],
    meta: &SnapshotMeta,
) -> Result<(SmData, Option<[u8; 32]>), StorageError> {
    let (mut data, trailer): (SmData, &[u8]) = postcard::take_from_bytes(bytes)
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
    let rest = data
        .state
        .set_trailer(trailer)
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
    if data.last_applied != meta.last_log_id {
        let msg = io::Error::other("snapshot data and metadata disagree on the last applied entry");
        return Err(StorageIOError::read_snapshot(Some(meta.signature()), &msg).into());
    }
    Ok((data, rest.try_into().ok()))
}

/// Encodes a snapshot as [`decode_data`] reads it (as releases before the stream
/// sent it).
#[cfg(test)]
fn encode_data(state: VaultState, summary: &Summary) -> Vec<u8> {
    let data = SmData {
        state,
        last_applied: summary.last_applied,
        last_membership: summary.membership.clone(),
    };
    let mut bytes = postcard::to_allocvec(&data).expect("postcard encodes into a Vec");
    bytes.extend(data.state.trailer());
    bytes.extend(summary.digest);
    bytes
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, DbError> + Send + 'static,
) -> Result<T, io::Error> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(storage_error(e)),
        Err(join) => Err(storage_error(join)),
    }
}

impl Shared {
    /// The state as of a durable commit, with its metadata: the current snapshot,
    /// which is the last built or installed under its own name while nothing was
    /// applied since (none if there never was one). Its stream is written into a spool
    /// only when it is first read.
    fn current_snapshot(self: &Arc<Self>) -> Result<Option<(SnapshotMeta, SnapshotFile)>, DbError> {
        let mut chosen = None;
        let pinned = self
            .db
            .pin(&self.key_root, |s| chosen = self.name_snapshot(s, false))?;
        let Some(meta) = chosen else {
            return Ok(None);
        };
        // Holds the store, as the pinned transaction holds its database open.
        let shared = self.clone();
        let data = SnapshotFile::lazy(move || {
            let spool = Spool::create(&shared.dir)?;
            let (out, _) = pinned
                .write_stream(BufWriter::with_capacity(1 << 16, spool))
                .map_err(storage_error)?;
            let mut spool = out.into_inner().map_err(|e| e.into_error())?;
            std::io::Write::flush(&mut spool)?;
            spool.seek(SeekFrom::Start(0))?;
            Ok(spool)
        });
        Ok(Some((meta, data)))
    }

    /// Installs snapshot data received into `spool`: a stream, or the bytes a release
    /// before sent.
    fn install(&self, meta: &SnapshotMeta, mut spool: Spool) -> Result<(), DbError> {
        spool.seek(SeekFrom::Start(0)).map_err(DbError::Stream)?;
        let mut prefix = [0u8; snapshot_stream::MAGIC.len()];
        let n = spool.read(&mut prefix).map_err(DbError::Stream)?;
        spool.seek(SeekFrom::Start(0)).map_err(DbError::Stream)?;
        if !snapshot_stream::is_stream(&prefix[..n]) {
            return self.install_whole(meta, spool);
        }
        let (header, accounts) = StreamReader::open(BufReader::with_capacity(1 << 16, spool))
            .map_err(DbError::Stream)?;
        if header.last_applied != meta.last_log_id {
            return Err(DbError::Stream(io::Error::new(
                io::ErrorKind::InvalidData,
                "the snapshot stream and its metadata disagree on the last applied entry",
            )));
        }
        let summary = Summary {
            last_applied: header.last_applied,
            membership: header.membership,
            members: header.members,
            digest: header.digest,
            snapshot: Some(meta.clone()),
            ..Summary::default()
        };
        self.db
            .install_stream(&self.key_root, header.placement, summary, accounts)?;
        Ok(())
    }

    /// Installs `postcard(SmData)`, trailer and digest, as releases before the stream
    /// sent them: whole, in memory.
    fn install_whole(&self, meta: &SnapshotMeta, mut spool: Spool) -> Result<(), DbError> {
        let mut bytes = Zeroizing::new(Vec::with_capacity(spool.len() as usize));
        spool.read_to_end(&mut bytes).map_err(DbError::Stream)?;
        let (data, digest) = decode_data(&bytes, meta).map_err(|e| {
            DbError::Stream(io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
        })?;
        let summary = Summary {
            last_applied: data.last_applied,
            membership: data.last_membership.clone(),
            digest: digest.unwrap_or_else(|| *blake3::hash(&bytes).as_bytes()),
            snapshot: Some(meta.clone()),
            ..Summary::default()
        };
        self.db.replace(&self.key_root, &data.state, summary)
    }

    /// A new snapshot: the database made durable under a new snapshot name. Only its
    /// metadata is used (openraft purges the log up to it; a follower is sent
    /// [`Shared::current_snapshot`]), so nothing is copied.
    fn build_snapshot(&self) -> Result<SnapshotMeta, DbError> {
        let mut chosen = None;
        self.db
            .make_durable(&self.key_root, |s| chosen = self.name_snapshot(s, true))?;
        Ok(chosen.expect("a build always names a snapshot"))
    }

    /// The snapshot the summary `s` stands for: its current one if nothing was applied
    /// since and `build` does not ask for a new one; else a new one, noted in `s`.
    fn name_snapshot(&self, s: &mut Summary, build: bool) -> Option<SnapshotMeta> {
        let current = s
            .snapshot
            .clone()
            .filter(|m| m.last_log_id == s.last_applied);
        if !build && (current.is_some() || s.snapshot.is_none()) {
            return current;
        }
        let n = self.builds.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match s.last_applied {
            Some(id) => format!("{}-{}-{n}", id.leader_id, id.index),
            None => format!("none-{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: s.last_applied,
            last_membership: s.membership.clone(),
            snapshot_id,
        };
        s.snapshot = Some(meta.clone());
        Some(meta)
    }

    /// Applies `entries` in one transaction; returns each entry's results and the last
    /// index that dropped a record's bytes.
    #[allow(clippy::type_complexity)]
    fn apply(&self, entries: Vec<Entry>) -> Result<(Vec<Vec<Applied>>, Option<u64>), DbError> {
        self.db.write(&self.key_root, false, |w| {
            let mut results = Vec::with_capacity(entries.len());
            let mut dropped = None;
            for entry in entries {
                let mut digest = blake3::Hasher::new();
                digest.update(&w.summary.digest);
                digest.update(&postcard::to_allocvec(&entry).expect("postcard encodes into a Vec"));
                w.summary.digest = *digest.finalize().as_bytes();
                w.summary.last_applied = Some(entry.log_id);
                // Entries that are not vault commands (blank, membership) yield no
                // results; no caller of `propose` waits for them.
                let result = match entry.payload {
                    EntryPayload::Blank => Vec::new(),
                    EntryPayload::Membership(membership) => {
                        w.summary.membership =
                            StoredMembership::new(Some(entry.log_id), membership);
                        Vec::new()
                    }
                    EntryPayload::Normal(Batch(commands)) => {
                        let mut out = Vec::with_capacity(commands.len());
                        for (position, command) in commands.into_iter().enumerate() {
                            let replaces = matches!(command, Command::Replace { .. });
                            let place = Place {
                                index: entry.log_id.index,
                                position: position as u32,
                            };
                            let result = state::apply(w, command, place)?;
                            if matches!(result, Applied::Erased)
                                || (replaces && matches!(result, Applied::Stored { .. }))
                            {
                                dropped = Some(entry.log_id.index);
                            }
                            out.push(result);
                        }
                        out
                    }
                };
                results.push(result);
            }
            Ok((results, dropped))
        })
    }
}

/// Builds snapshots of the state machine as it is when the build runs.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let started = std::time::Instant::now();
        let shared = self.shared.clone();
        let meta = blocking(move || shared.build_snapshot())
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        *self
            .shared
            .last_build
            .lock()
            .expect("snapshot figures lock poisoned") = Some(SnapshotFigures {
            bytes: self.shared.db.file_bytes(),
            build_ms: started.elapsed().as_millis() as u64,
            builds: self.shared.built.fetch_add(1, Ordering::Relaxed) + 1,
        });
        // openraft keeps only the metadata of a build; a follower is sent the current
        // snapshot.
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile::lazy(|| {
                Err(io::Error::other(
                    "a built snapshot keeps no data: send the current snapshot",
                ))
            })),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let summary = self.shared.db.summary();
        Ok((summary.last_applied, summary.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Applied>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let last = entries.last().map(|e| e.log_id);
        let shared = self.shared.clone();
        let (results, dropped) = blocking(move || shared.apply(entries))
            .await
            .map_err(|e| StorageIOError::apply(last.unwrap_or_default(), &e))?;
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let spool = Spool::create(&self.shared.dir)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(SnapshotFile::ready(spool)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let shared = self.shared.clone();
        let installed = meta.clone();
        blocking(move || {
            let spool = snapshot.into_spool().map_err(DbError::Stream)?;
            shared.install(&installed, spool)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let shared = self.shared.clone();
        let built = blocking(move || shared.current_snapshot())
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(built.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(data),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::{KeyFileSealer, Sealer};
    use crate::state::NewRecord;
    use openraft::CommittedLeaderId;

    const FILE: &[u8] = b"v1-password-file-3e9c1d77";
    const WRAPPED: &[u8] = b"wrapped-key-51c0a9e2";

    fn data() -> SmData {
        let mut state = VaultState::default();
        let last = LogId::new(CommittedLeaderId::new(1, 1), 3);
        state.apply(
            Command::Register {
                account: "alice".into(),
                record: NewRecord {
                    record_id: [1; 16],
                    password_file: FILE.to_vec(),
                    wrapped: WRAPPED.to_vec(),
                    owner_public_key: [2; 32],
                    max_attempts: 10,
                },
            },
            Place {
                index: 3,
                position: 0,
            },
        );
        SmData {
            state,
            last_applied: Some(last),
            last_membership: StoredMembership::default(),
        }
    }

    fn meta(data: &SmData) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: data.last_applied,
            last_membership: StoredMembership::default(),
            snapshot_id: "1-3-0".into(),
        }
    }

    fn encoded(data: &SmData) -> Vec<u8> {
        let mut bytes = postcard::to_allocvec(data).unwrap();
        bytes.extend(data.state.trailer());
        bytes
    }

    fn holds(bytes: &[u8], secret: &[u8]) -> bool {
        bytes.windows(secret.len()).any(|w| w == secret)
    }

    /// Opens the store on `dir` and checks the record came through, the snapshot file is
    /// gone, and neither secret is in clear anywhere in the directory.
    fn opens_into_the_database(dir: &Path, sealer: Arc<EpochSealer>) {
        let store = StateMachineStore::open(dir, sealer.clone()).unwrap();
        let record = store
            .shared
            .db
            .read(|v| v.record("alice"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (record.password_file.as_slice(), record.wrapped.as_slice()),
            (FILE, WRAPPED)
        );
        // The release before refuses the directory now, as it refuses any snapshot file
        // that does not decode, rather than start on an empty state.
        let node = sealer.node();
        let before = files::read_sealed::<StoredSnapshotV2>(
            &**node,
            &dir.join(SNAPSHOT_FILE),
            SNAPSHOT_CONTEXT_V2,
        );
        assert!(
            matches!(before, Err(FileError::Decode { .. })),
            "{:?}",
            before.map(|_| ())
        );
        assert_eq!(store.shared.db.summary().last_applied, data().last_applied);
        drop(store);
        for entry in std::fs::read_dir(dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(!holds(&bytes, FILE) && !holds(&bytes, WRAPPED));
        }
        let again = StateMachineStore::open(dir, sealer).unwrap();
        let record = again
            .shared
            .db
            .read(|v| v.record("alice"))
            .unwrap()
            .unwrap();
        assert_eq!(record.password_file, FILE);
    }

    fn setup() -> (tempfile::TempDir, Arc<dyn Sealer>, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let node: Arc<dyn Sealer> =
            Arc::new(KeyFileSealer::open_or_create(root.path().join("node.key")).unwrap());
        let dir = root.path().join("data");
        files::create_private_dir(&dir).unwrap();
        (root, node, dir)
    }

    fn store_in(root: &Path, name: &str) -> StateMachineStore {
        let node: Arc<dyn Sealer> =
            Arc::new(KeyFileSealer::open_or_create(root.join(format!("{name}.key"))).unwrap());
        StateMachineStore::open(&root.join(name), Arc::new(EpochSealer::open(node).unwrap()))
            .unwrap()
    }

    fn entry(index: u64, commands: Vec<Command>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch(commands)),
        }
    }

    fn register(account: &str, secret: &[u8]) -> Command {
        Command::Register {
            account: account.into(),
            record: NewRecord {
                record_id: [9; 16],
                password_file: secret.to_vec(),
                wrapped: secret.iter().rev().copied().collect(),
                owner_public_key: [2; 32],
                max_attempts: 10,
            },
        }
    }

    /// `from`'s current snapshot, its stream as a follower receives it: read from the
    /// sender's spool into a new one. `keep` bytes of it (all if `None`).
    fn received(
        from: &StateMachineStore,
        to: &StateMachineStore,
        keep: Option<u64>,
    ) -> (SnapshotMeta, Spool) {
        from.shared.build_snapshot().unwrap();
        let (meta, data) = from.shared.current_snapshot().unwrap().unwrap();
        let sent = data.into_spool().unwrap();
        let len = keep.unwrap_or(sent.len());
        let mut spool = Spool::create(&to.shared.dir).unwrap();
        std::io::copy(&mut sent.take(len), &mut spool).unwrap();
        std::io::Write::flush(&mut spool).unwrap();
        (meta, spool)
    }

    fn send(from: &StateMachineStore, to: &StateMachineStore) -> Result<(), DbError> {
        let (meta, spool) = received(from, to, None);
        to.shared.install(&meta, spool)
    }

    /// The same accounts, applied entry, digest, join tickets and record count.
    fn assert_same(a: &StateMachineStore, b: &StateMachineStore) {
        assert_eq!(a.export().unwrap(), b.export().unwrap());
        let (x, y) = (a.shared.db.summary(), b.shared.db.summary());
        assert_eq!(x.last_applied, y.last_applied);
        assert_eq!(x.digest, y.digest);
        assert_eq!(x.records, y.records);
        assert_eq!(x.members, y.members);
        assert_eq!(x.membership, y.membership);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// A follower that held anything installs the leader's streamed snapshot and
        /// then holds the leader's state; both answer the entries after it alike, and
        /// the follower's state survives a restart.
        #[test]
        fn a_streamed_snapshot_installs_the_senders_state(
            leader in proptest::collection::vec(crate::state::tests::arbitrary_command(), 0..30),
            follower in proptest::collection::vec(crate::state::tests::arbitrary_command(), 0..10),
            after in proptest::collection::vec(crate::state::tests::arbitrary_command(), 0..20),
        ) {
            let root = tempfile::tempdir().unwrap();
            let (a, b) = (store_in(root.path(), "a"), store_in(root.path(), "b"));
            for (i, command) in follower.into_iter().enumerate() {
                b.shared.apply(vec![entry(i as u64 + 1, vec![command])]).unwrap();
            }
            for (i, command) in leader.into_iter().enumerate() {
                a.shared.apply(vec![entry(i as u64 + 1, vec![command])]).unwrap();
            }
            send(&a, &b).unwrap();
            assert_same(&a, &b);
            for (i, command) in after.into_iter().enumerate() {
                let e = entry(1000 + i as u64, vec![command]);
                let (x, _) = a.shared.apply(vec![e.clone()]).unwrap();
                let (y, _) = b.shared.apply(vec![e]).unwrap();
                proptest::prop_assert_eq!(x, y);
            }
            assert_same(&a, &b);
            drop(b);
            assert_same(&a, &store_in(root.path(), "b"));
        }
    }

    /// Thousands of accounts over many lower nodes, some erased, come through whole,
    /// and no spool file outlives the transfer.
    #[test]
    fn a_snapshot_of_many_accounts_streams_bucket_by_bucket() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (store_in(root.path(), "a"), store_in(root.path(), "b"));
        for batch in 0..30u64 {
            let commands = (0..100)
                .map(|i| {
                    register(
                        &format!("user-{batch}-{i}"),
                        format!("pf-{batch}-{i}").as_bytes(),
                    )
                })
                .collect();
            a.shared.apply(vec![entry(batch + 1, commands)]).unwrap();
        }
        b.shared
            .apply(vec![entry(1, vec![register("only-on-b", b"b-secret")])])
            .unwrap();
        send(&a, &b).unwrap();
        assert_same(&a, &b);
        assert_eq!(b.shared.db.summary().records, 3000);
        for dir in [&a.shared.dir, &b.shared.dir] {
            for file in std::fs::read_dir(dir).unwrap() {
                let name = file.unwrap().file_name();
                assert!(
                    !name.to_string_lossy().ends_with(files::TMP_SUFFIX),
                    "{name:?} outlived the transfer"
                );
            }
        }
    }

    /// A spool that a crash left behind (its key died with the process) is removed
    /// when the store opens again.
    #[test]
    fn a_spool_left_by_a_crash_is_removed_at_start() {
        let root = tempfile::tempdir().unwrap();
        let store = store_in(root.path(), "a");
        let mut spool = Spool::create(&store.shared.dir).unwrap();
        std::io::Write::write_all(&mut spool, b"records in a stream").unwrap();
        std::io::Write::flush(&mut spool).unwrap();
        let left = spool.path().to_path_buf();
        // What a crash does: the file stays, the key in memory is gone.
        std::mem::forget(spool);
        drop(store);
        assert!(left.exists());
        let _again = store_in(root.path(), "a");
        assert!(!left.exists(), "{} outlived a restart", left.display());
    }

    /// A snapshot as releases before the stream sent it (`postcard(SmData)`, trailer,
    /// digest) still installs.
    #[test]
    fn a_snapshot_a_release_before_sent_still_installs() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (store_in(root.path(), "a"), store_in(root.path(), "b"));
        a.shared
            .apply(vec![entry(
                1,
                vec![register("alice", b"alice-pf"), register("bob", b"bob-pf")],
            )])
            .unwrap();
        let (state, summary) = a.shared.db.export(&a.shared.key_root, |_| {}).unwrap();
        let meta = SnapshotMeta {
            last_log_id: summary.last_applied,
            last_membership: summary.membership.clone(),
            snapshot_id: "1-1-0".into(),
        };
        let mut spool = Spool::create(&b.shared.dir).unwrap();
        std::io::Write::write_all(&mut spool, &encode_data(state, &summary)).unwrap();
        b.shared.install(&meta, spool).unwrap();
        assert_same(&a, &b);
    }

    /// A stream cut short anywhere (a sender that died, a peer that lies) is refused
    /// and the follower keeps what it held.
    #[test]
    fn a_cut_snapshot_stream_changes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (store_in(root.path(), "a"), store_in(root.path(), "b"));
        let commands = (0..300)
            .map(|i| register(&format!("user-{i}"), b"pf"))
            .collect();
        a.shared.apply(vec![entry(1, commands)]).unwrap();
        b.shared
            .apply(vec![entry(1, vec![register("only-on-b", b"b-secret")])])
            .unwrap();
        let before = b.export().unwrap();
        let whole = received(&a, &b, None).1.len();
        for keep in [0, 5, 11, 200, whole / 2, whole - 1] {
            let (meta, spool) = received(&a, &b, Some(keep));
            let err = b.shared.install(&meta, spool).unwrap_err();
            assert!(matches!(err, DbError::Stream(_)), "{err}");
            assert_eq!(
                b.export().unwrap(),
                before,
                "a cut at {keep} changed the state"
            );
        }
    }

    /// A snapshot file as the release before crypto-erasure wrote it (version 1, whole
    /// records under the node key) moves into the database and is removed.
    #[test]
    fn a_version_1_snapshot_file_moves_into_the_database() {
        let (_root, node, dir) = setup();
        let data = data();
        let v1 = StoredSnapshot {
            meta: meta(&data),
            data: encoded(&data),
        };
        files::write_sealed_durably(&*node, &dir.join(SNAPSHOT_FILE), SNAPSHOT_CONTEXT, &v1)
            .unwrap();
        opens_into_the_database(&dir, Arc::new(EpochSealer::open(node).unwrap()));
    }

    /// A snapshot file as the release before the database wrote it (version 2: each
    /// record's secrets under its leaf of the key tree the file carries, the root in
    /// `keyroot`) moves into the database under a new tree; the old root leaves
    /// `keyroot`, so a copy of the old file no longer opens.
    #[test]
    fn a_version_2_snapshot_file_moves_into_the_database_under_a_new_tree() {
        let (_root, node, dir) = setup();
        let sealer = Arc::new(EpochSealer::open(node.clone()).unwrap());
        let mut data = data();
        let mut tree = KeyTree::new().unwrap();
        tree.put("alice", ([1; 16], 1)).unwrap();
        for (account, record) in data.state.records_mut() {
            let secrets: Secrets = (
                record.record_id,
                std::mem::take(&mut record.password_file),
                std::mem::take(&mut record.wrapped),
            );
            record.password_file = tree
                .seal_record(account, &postcard::to_allocvec(&secrets).unwrap())
                .unwrap();
            record.record_id = [0; 16];
        }
        let stored = StoredSnapshotV2 {
            meta: meta(&data),
            tree: tree.store().unwrap(),
            data: encoded(&data),
        };
        let old_id = tree.id();
        let roots: KeyRoots = vec![(old_id, *tree.root_key().bytes())];
        files::write_sealed_durably(&*sealer, &dir.join(KEY_ROOT_FILE), KEY_ROOT_CONTEXT, &roots)
            .unwrap();
        files::write_sealed_durably(
            &*node,
            &dir.join(SNAPSHOT_FILE),
            SNAPSHOT_CONTEXT_V2,
            &stored,
        )
        .unwrap();
        let copy = std::fs::read(dir.join(SNAPSHOT_FILE)).unwrap();

        opens_into_the_database(&dir, sealer.clone());
        let key_root = KeyRootFile::new(&dir, sealer);
        assert!(key_root.root(old_id).unwrap().is_none());
        std::fs::write(dir.join("old-snapshot"), copy).unwrap();
        let old = read_snapshot(
            &EpochSealer::open(node).unwrap(),
            &dir.join("old-snapshot"),
            &key_root,
        );
        assert!(old.is_err(), "the old file opened without its root");
    }
}
