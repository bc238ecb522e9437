//! backlock-repo: the backup engine.
//!
//! A [`Repository`] is opened with the backup key (the config object tells a wrong key
//! from damage), then [`Repository::load_index`] turns it into a
//! `Repository<Indexed>` that can back up, restore, check and prune. Commit order is
//! data → index → snapshot, so a backup killed at any instant leaves the previous
//! snapshot restorable and the next backup able to finish.
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

mod backup;
mod bases;
pub mod browse;
mod cache;
mod check;
mod copy;
pub mod device;
mod error;
pub mod exclude;
mod index;
mod indexset;
pub mod interrupt;
mod lock;
mod metadata;
mod pipe;
mod prune;
mod repair;
mod restore;
mod restore_select;
pub mod retention;
mod rotate;
pub mod select;
mod spill;
mod sqlite;
mod stats;
pub mod testhook;
#[cfg(test)]
mod testrepo;
mod trees;
pub mod verify;
mod walk;

pub use backup::{
    BackupOptions, BackupPlan, BackupSummary, Change, PlannedEntry, Progress, SkippedEntry,
};
pub use cache::{ObjectCache, DEFAULT_CACHE_BYTES};
pub use check::{CheckReport, DataSubset};
pub use copy::CopiedSnapshot;
pub use device::DeviceHome;
pub use error::{RepoError, Result};
pub use index::Index;
pub use lock::{holder_identity, hostname, LockInfo, RepoLock, STALE_AFTER_SECS};
pub use prune::{ForgetSummary, PruneSummary};
pub use repair::{LosingSnapshot, RepairIndexSummary, RewrittenSnapshot};
pub use restore::RestoreSummary;
pub use restore_select::RestoreOptions;
pub use rotate::RotateSummary;
pub use stats::{SnapshotStats, Stats};

use backlock_core::{
    chunker::ChunkerParams,
    envelope::{self, ObjectKind},
    format::{self, Compression, Config, Snapshot, CONFIG_NAME},
    ids::ObjectName,
    kdf::RepoKeys,
    key::BackupKey,
    FormatError,
};
use backlock_store::{ObjectInfo, ObjectStore, StoreError};
use serde::Serialize;
use std::sync::Arc;

/// Default target size of a pack object.
pub const DEFAULT_PACK_SIZE: u32 = 4 << 20;

/// Typestate: config read, key verified.
pub struct Open;
/// Typestate: every index object loaded, under a repository lock taken first.
pub struct Indexed {
    index: Index,
    /// The index sets it was loaded from (docs/FORMAT.md §Index sets).
    live: indexset::LiveIndexes,
    /// Taken before the index was read and held as long as the repository: a prune
    /// (exclusive) can never delete what a backup's or restore's index names, and a
    /// backup's packs are never unindexed under a prune's eyes.
    lock: RepoLock,
}

/// An opened repository.
pub struct Repository<S = Open> {
    store: Arc<dyn ObjectStore>,
    keys: Arc<RepoKeys>,
    config: Config,
    home: DeviceHome,
    /// The other generation of a key rotation in progress (docs/FORMAT.md §Key rotation).
    hidden: Arc<rotate::Hidden>,
    /// The largest object payload this writer writes ([`format::MAX_OBJECT_PLAINTEXT`],
    /// the readers' limit; smaller only in tests of the boundary).
    object_limit: u64,
    /// Index entries held in memory at most; past it the index is kept in a scratch file
    /// (the cache directory, or the temporary directory without a cache).
    index_in_memory: usize,
    /// This repository's part of the local object cache (none: every object is read
    /// from the store, as `check` does).
    cache: Option<Arc<cache::RepoCache>>,
    state: S,
}

/// A snapshot's name and sequence number, from a listing (not yet decrypted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotRef {
    /// The object name.
    pub name: ObjectName,
    /// Its sequence number (authenticated when the object is opened).
    pub seq: u64,
}

/// A listed snapshot object that does not authenticate under this key: damaged,
/// fabricated by whoever can write to the store, cut short by a power loss, or gone
/// since the listing. Every command ignores it (it is never a parent, never `latest`,
/// never counted by a retention rule, never deleted by one) and names it in a
/// warning; `check` reports it and `repair snapshots` removes it.
#[derive(Clone, Debug, Serialize)]
pub struct RejectedSnapshot {
    /// The object name.
    pub name: String,
    /// The sequence number its name claims.
    pub seq: u64,
    /// Why it does not count.
    pub reason: String,
}

impl std::fmt::Display for RejectedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ignoring snapshot object {}: {}. Run `backlock repair snapshots` to remove it",
            self.name, self.reason
        )
    }
}

/// The newest authentic snapshot of a listing, with the newer objects that did not
/// authenticate.
pub struct Newest {
    /// The newest snapshot that authenticates, loaded (`None`: there is none).
    pub snapshot: Option<(SnapshotRef, Snapshot)>,
    /// Newer listed objects that do not count, newest first.
    pub rejected: Vec<RejectedSnapshot>,
}

impl Repository<Open> {
    /// Creates a repository in an empty store.
    pub fn init(store: Arc<dyn ObjectStore>, key: &BackupKey, home: DeviceHome) -> Result<Self> {
        Self::init_with(store, key, home, Compression::Auto)
    }

    /// [`Self::init`] of a repository that compresses new chunks as `compression` says.
    pub fn init_with(
        store: Arc<dyn ObjectStore>,
        key: &BackupKey,
        home: DeviceHome,
        compression: Compression,
    ) -> Result<Self> {
        if !store.list(ObjectKind::Config)?.is_empty() {
            return Err(RepoError::AlreadyExists {
                location: store.location(),
            });
        }
        let keys = Arc::new(RepoKeys::derive(key));
        let config = Config {
            repo_id: ObjectName::random(),
            chunker: ChunkerParams::DEFAULT,
            pack_size: DEFAULT_PACK_SIZE,
            created_unix: now_unix_ns() / 1_000_000_000,
            writer_level: format::WRITER_LEVEL,
            compression,
        };
        let sealed = seal_config(&keys, &config);
        store.put(ObjectKind::Config, CONFIG_NAME, &sealed)?;
        // A repository of writer level 2 always lists an index set: none listed is
        // the store's doing.
        indexset::LiveIndexes::default().write_next(&*store, &keys, Default::default(), true)?;
        Ok(Repository {
            store,
            keys,
            config,
            home,
            hidden: Arc::default(),
            object_limit: format::MAX_OBJECT_PLAINTEXT,
            index_in_memory: index::DEFAULT_IN_MEMORY,
            cache: None,
            state: Open,
        })
    }

    /// Opens a repository; fails with [`RepoError::WrongKey`] before anything else.
    pub fn open(store: Arc<dyn ObjectStore>, key: &BackupKey, home: DeviceHome) -> Result<Self> {
        let sealed = match store.get(ObjectKind::Config, CONFIG_NAME) {
            Ok(s) => s,
            Err(StoreError::NotFound { .. }) => {
                return Err(RepoError::NotARepository {
                    location: store.location(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let keys = Arc::new(RepoKeys::derive(key));
        let damaged = |e| RepoError::damaged(ObjectKind::Config, CONFIG_NAME, e);
        let (version, plain) =
            envelope::open_versioned(&keys, ObjectKind::Config, CONFIG_NAME, &sealed)
                .map_err(damaged)?;
        let config = Config::decode(version, &plain).map_err(damaged)?;
        if !config.chunker.is_valid() || config.pack_size < 1 << 16 {
            return Err(damaged(backlock_core::FormatError::Malformed {
                what: "config",
                detail: "chunker or pack size out of range".into(),
            }));
        }
        let hidden = Arc::new(rotate::Hidden::load(&*store, &keys)?);
        Ok(Repository {
            store,
            keys,
            config,
            home,
            hidden,
            object_limit: format::MAX_OBJECT_PLAINTEXT,
            index_in_memory: index::DEFAULT_IN_MEMORY,
            cache: None,
            state: Open,
        })
    }

    /// Takes a shared lock (backup, restore), then loads every index object.
    pub fn load_index(self) -> Result<Repository<Indexed>> {
        self.load_index_under(false)
    }

    /// Takes the exclusive lock (prune), then loads every index object.
    pub fn load_index_exclusive(self) -> Result<Repository<Indexed>> {
        self.load_index_under(true)
    }

    fn load_index_under(self, exclusive: bool) -> Result<Repository<Indexed>> {
        // The lock first: an index read before it could miss what a process that
        // held the lock meanwhile committed.
        let lock = self.lock(exclusive)?;
        testhook::pause(testhook::step::LOCKED);
        let mut live = self.live_indexes()?;
        live.record(&self.home, &self.id())?;
        let index = self.read_index(&mut live)?;
        if let Some(cache) = &self.cache {
            cache.trim();
        }
        Ok(Repository {
            store: self.store,
            keys: self.keys,
            config: self.config,
            home: self.home,
            hidden: self.hidden,
            object_limit: self.object_limit,
            index_in_memory: self.index_in_memory,
            cache: self.cache,
            state: Indexed { index, live, lock },
        })
    }
}

/// The sealed config object.
pub(crate) fn seal_config(keys: &RepoKeys, config: &Config) -> Vec<u8> {
    let (version, plain) = config.encode();
    envelope::seal_as(keys, (ObjectKind::Config, version), CONFIG_NAME, &plain)
}

impl<S> Repository<S> {
    /// Writes `packs` as index objects, every pack put so far made durable first
    /// ([`index::write_index_object`]); their names and the bytes written.
    pub(crate) fn write_index_objects(
        &self,
        packs: Vec<format::PackEntry>,
    ) -> Result<(Vec<backlock_core::ids::ObjectName>, u64)> {
        index::write_index_object(
            &*self.store,
            &self.keys,
            format::IndexFile { packs },
            self.object_limit,
            self.cache.as_deref(),
        )
    }

    /// Refuses to change a repository whose writer level a newer build raised above
    /// this build's. Call under the repository lock, before writing anything.
    pub(crate) fn check_writer_level(&self) -> Result<()> {
        match self.config.writer_level > format::WRITER_LEVEL {
            true => Err(RepoError::UpgradeNeeded {
                level: self.config.writer_level,
                supported: format::WRITER_LEVEL,
            }),
            false => Ok(()),
        }
    }

    /// Raises the writer level to this build's once an index set is written, so that
    /// older builds (which would write index objects no set names) refuse to change
    /// the repository, and so that a store serving no set is caught.
    pub(crate) fn raise_writer_level(&self) -> Result<()> {
        if self.config.writer_level < format::WRITER_LEVEL {
            let sealed = seal_config(&self.keys, &self.writer_config());
            self.store.put(ObjectKind::Config, CONFIG_NAME, &sealed)?;
            self.store.flush()?;
        }
        Ok(())
    }

    /// The config as this build writes it: at its writer level at least.
    pub(crate) fn writer_config(&self) -> Config {
        Config {
            writer_level: self.config.writer_level.max(format::WRITER_LEVEL),
            ..self.config.clone()
        }
    }

    /// Writes no object whose payload is over `limit` bytes (at most the readers'
    /// [`format::MAX_OBJECT_PLAINTEXT`]): for tests of that boundary with small objects.
    pub fn with_object_limit(mut self, limit: u64) -> Self {
        self.object_limit = limit.min(format::MAX_OBJECT_PLAINTEXT);
        self
    }

    /// Keeps at most `entries` index entries (64 bytes each) in memory, and a larger
    /// index in a scratch file under the cache directory (the temporary directory
    /// without a cache), read a page per lookup. The default,
    /// [`index::DEFAULT_IN_MEMORY`], holds the index of about 130,000 small files;
    /// an app with little memory sets less.
    pub fn with_index_in_memory(mut self, entries: usize) -> Self {
        self.index_in_memory = entries.max(1);
        self
    }

    /// Reads the index objects `live` names (through the cache, spilling a large
    /// index to a scratch file).
    pub(crate) fn read_index(&self, live: &mut indexset::LiveIndexes) -> Result<Index> {
        Index::load(
            &*self.store,
            &self.keys,
            live,
            self.cache.as_deref(),
            self.spill(),
        )
    }

    /// Where an index too large for memory goes.
    pub(crate) fn spill(&self) -> index::Spill {
        index::Spill {
            dir: match &self.cache {
                Some(cache) => cache.dir().to_owned(),
                None => std::env::temp_dir(),
            },
            in_memory: self.index_in_memory,
        }
    }

    /// Reads index objects and snapshots through `cache` (`None`: from the store
    /// only), and keeps there what it reads and writes of them.
    pub fn with_cache(mut self, cache: Option<&ObjectCache>) -> Self {
        self.cache = cache.map(|c| Arc::new(c.for_repo(&self.id())));
        self
    }

    /// The repository's random identifier.
    pub fn id(&self) -> String {
        self.config.repo_id.to_hex()
    }

    /// Takes the repository lock: shared (backup, check) or exclusive (prune).
    pub fn lock(&self, exclusive: bool) -> Result<RepoLock> {
        RepoLock::acquire(&self.store, &self.keys, exclusive, self.hidden.rotating())
    }

    /// Seals `snapshot` under the name of its sequence number and puts it, in the
    /// commit order (docs/FORMAT.md §Commit order): everything before it (the index
    /// that names its data) flushed first, then the snapshot put and flushed, and kept
    /// in the cache as the next backup's parent. Refuses one over the readers' limit.
    /// Pauses at `step` (tests) between the first flush and the put. Returns its name
    /// and the bytes written.
    pub(crate) fn commit_snapshot(
        &self,
        snapshot: Snapshot,
        step: Option<&str>,
    ) -> Result<(ObjectName, u64)> {
        format::check_size("snapshot", snapshot.payload_len(), self.object_limit)
            .map_err(|source| RepoError::TooLarge { source })?;
        let name = ObjectName::for_snapshot(snapshot.seq);
        let (version, plaintext) = snapshot.encode();
        drop(snapshot);
        let sealed = envelope::seal_as(
            &self.keys,
            (ObjectKind::Snapshot, version),
            &name.to_hex(),
            &plaintext,
        );
        drop(plaintext);
        self.store.flush()?;
        if let Some(step) = step {
            testhook::pause(step);
        }
        self.store
            .put(ObjectKind::Snapshot, &name.to_hex(), &sealed)?;
        self.store.flush()?;
        if let Some(cache) = &self.cache {
            cache.write(ObjectKind::Snapshot, &name.to_hex(), &sealed);
        }
        Ok((name, sealed.len() as u64))
    }

    /// `unlock`: removes stale locks (every lock with `all`); returns those removed
    /// and those left.
    pub fn unlock(&self, all: bool) -> Result<(Vec<LockInfo>, Vec<LockInfo>)> {
        lock::unlock(&*self.store, &self.keys, all, self.hidden.rotating())
    }

    /// Lists the objects of `kind` this key's generation holds: during a key
    /// rotation, the other key's objects are left out.
    pub(crate) fn listed(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>> {
        Ok(self.hidden.filter(self.store.list(kind)?))
    }

    /// The newest snapshot sequence this device has recorded for this repository (0:
    /// it has never seen one, as on a new phone, so nothing here detects a rollback).
    pub fn seen_seq(&self) -> Result<u64> {
        Ok(self.home.seen(&self.id())?.newest_seq)
    }

    /// The live index objects, as the listed index sets say.
    pub(crate) fn live_indexes(&self) -> Result<indexset::LiveIndexes> {
        indexset::LiveIndexes::load(
            &*self.store,
            &self.keys,
            &self.hidden,
            &self.home,
            &self.config,
        )
    }

    /// The store it lives in.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Lists snapshots oldest first and checks the store did not roll back: the newest
    /// listed must be at least the newest this device has seen.
    pub fn snapshot_refs(&self) -> Result<Vec<SnapshotRef>> {
        let refs = self.listing()?;
        let served = refs.last().map_or(0, |r| r.seq);
        let seen = self.home.seen(&self.id())?.newest_seq;
        if served < seen {
            return Err(RepoError::Rollback { seen, served });
        }
        Ok(refs)
    }

    /// The listed snapshot names, oldest first, with no rollback check.
    fn listing(&self) -> Result<Vec<SnapshotRef>> {
        let mut refs: Vec<SnapshotRef> = self
            .listed(ObjectKind::Snapshot)?
            .iter()
            .filter_map(|o| ObjectName::parse(&o.name))
            .map(|name| SnapshotRef {
                name,
                seq: name.snapshot_seq(),
            })
            .collect();
        refs.sort_by_key(|r| (r.seq, r.name));
        if let Some(cache) = &self.cache {
            // Copies of snapshots forgotten since are of no more use.
            let names: Vec<String> = refs.iter().map(|r| r.name.to_hex()).collect();
            cache.retain(
                ObjectKind::Snapshot,
                &names.iter().map(String::as_str).collect(),
            );
        }
        Ok(refs)
    }

    /// `restore --accept-older`: after a rollback or damage error, the user may still
    /// restore what the store has. Finds snapshot `id` (`latest`: the newest that
    /// authenticates) without the rollback check, authenticates it, and records the
    /// choice in the device state; returns it with the sequence this device had seen.
    pub fn accept_older(&self, id: &str) -> Result<(SnapshotRef, u64)> {
        let seen = self.home.seen(&self.id())?.newest_seq;
        let refs = self.listing()?;
        let chosen = if id == "latest" {
            let mut found = None;
            for r in refs.iter().rev() {
                if self.authenticate(r)?.is_ok() {
                    found = Some(*r);
                    break;
                }
            }
            found.ok_or(RepoError::NoSnapshots)?
        } else {
            by_prefix(&refs, id)?
        };
        self.load_snapshot(&chosen)?;
        if chosen.seq < seen {
            self.home
                .record_accepted_older(&self.id(), &chosen.name.to_hex(), chosen.seq)?;
        }
        Ok((chosen, seen))
    }

    /// Loads `r`; `Ok(Err(..))` if the object does not authenticate or is gone (a
    /// store's doing: the caller skips it), `Err` for everything else (a wrong key, an
    /// unreachable store, this device's state).
    pub(crate) fn authenticate(
        &self,
        r: &SnapshotRef,
    ) -> Result<std::result::Result<Snapshot, RejectedSnapshot>> {
        match self.load_snapshot(r) {
            Ok(snap) => Ok(Ok(snap)),
            Err(
                e @ (RepoError::Damaged { .. } | RepoError::Store(StoreError::NotFound { .. })),
            ) => Ok(Err(RejectedSnapshot {
                name: r.name.to_hex(),
                seq: r.seq,
                reason: e.to_string(),
            })),
            Err(e) => Err(e),
        }
    }

    /// The newest snapshot that authenticates, skipping newer objects that do not;
    /// fails if it is older than this device has seen (the store rolled back, or
    /// replaced the newest snapshots by objects that do not authenticate).
    pub fn newest_snapshot(&self) -> Result<Newest> {
        let refs = self.snapshot_refs()?;
        let seen = self.home.seen(&self.id())?.newest_seq;
        let mut rejected = Vec::new();
        let mut snapshot = None;
        for r in refs.iter().rev() {
            match self.authenticate(r)? {
                Ok(snap) => {
                    snapshot = Some((*r, snap));
                    break;
                }
                Err(bad) => rejected.push(bad),
            }
        }
        let served = snapshot.as_ref().map_or(0, |(r, _)| r.seq);
        if served < seen {
            // The snapshots this device saw are listed but do not open: damage, not
            // an older state.
            if let Some(bad) = rejected.iter().find(|b| b.seq >= seen) {
                return Err(RepoError::NewestDamaged {
                    seen,
                    name: bad.name.clone(),
                    reason: bad.reason.clone(),
                });
            }
            return Err(RepoError::Rollback { seen, served });
        }
        Ok(Newest { snapshot, rejected })
    }

    /// Visits every snapshot that authenticates, oldest first; returns the listed
    /// objects that do not.
    pub fn authentic_snapshots(
        &self,
        mut each: impl FnMut(SnapshotRef, Snapshot) -> Result<()>,
    ) -> Result<Vec<RejectedSnapshot>> {
        let mut rejected = Vec::new();
        for r in self.snapshot_refs()? {
            match self.authenticate(&r)? {
                Ok(snap) => each(r, snap)?,
                Err(bad) => rejected.push(bad),
            }
        }
        Ok(rejected)
    }

    /// `repair snapshots`: deletes the listed snapshot objects that do not
    /// authenticate, under the exclusive lock, and returns them. Authentic snapshots
    /// are never touched.
    pub fn remove_unauthentic_snapshots(&self) -> Result<Vec<RejectedSnapshot>> {
        let _lock = self.lock(true)?;
        self.check_writer_level()?;
        let rejected = self.authentic_snapshots(|_, _| Ok(()))?;
        for bad in &rejected {
            match self.store.delete(ObjectKind::Snapshot, &bad.name) {
                Ok(()) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.store.flush()?;
        Ok(rejected)
    }

    /// Reads and authenticates one snapshot (a cached copy if one authenticates).
    pub fn load_snapshot(&self, r: &SnapshotRef) -> Result<Snapshot> {
        let name = r.name.to_hex();
        let cache = self.cache.as_deref();
        let cached = cache.and_then(|c| c.read(ObjectKind::Snapshot, &name));
        let snap = match cached.map(|sealed| self.open_snapshot(r, &name, sealed)) {
            Some(Ok(snap)) => snap,
            found => {
                if let (Some(cache), Some(Err(_))) = (cache, found) {
                    cache.forget(ObjectKind::Snapshot, &name);
                }
                let sealed = self.store.get(ObjectKind::Snapshot, &name)?;
                let keep = cache.map(|_| sealed.clone());
                let snap = self.open_snapshot(r, &name, sealed)?;
                if let (Some(cache), Some(sealed)) = (cache, keep) {
                    cache.write(ObjectKind::Snapshot, &name, &sealed);
                }
                snap
            }
        };
        // Having authenticated it, the device will not accept anything older.
        self.home.record(&self.id(), snap.seq)?;
        Ok(snap)
    }

    /// Authenticates and decodes `sealed`, the snapshot object `r` named `name`.
    fn open_snapshot(&self, r: &SnapshotRef, name: &str, sealed: Vec<u8>) -> Result<Snapshot> {
        let name = name.to_owned();
        let damaged = |e| RepoError::damaged(ObjectKind::Snapshot, &name, e);
        let (version, plain) =
            match envelope::open_versioned(&self.keys, ObjectKind::Snapshot, &name, &sealed) {
                Ok(opened) => opened,
                // A newer backlock's snapshot is real: refuse to go on rather than pass
                // it over. Anything else that claims a newer version is made up.
                Err(e @ FormatError::UnsupportedVersion { .. }) => {
                    return Err(
                        match envelope::is_authentic_newer(
                            &self.keys,
                            ObjectKind::Snapshot,
                            &name,
                            &sealed,
                        ) {
                            true => RepoError::Newer {
                                kind: "snapshot",
                                name,
                                source: e,
                            },
                            false => damaged(FormatError::Tampered),
                        },
                    )
                }
                Err(e) => return Err(damaged(e)),
            };
        let mut snap = Snapshot::decode(version, &plain).map_err(damaged)?;
        drop((sealed, plain));
        // Decoding grows each chunk list by doubling, and a database's list (a chunk
        // ID per 16 KiB run of pages) is what a backup keeps longest after the index.
        for node in &mut snap.nodes {
            node.chunks.shrink_to_fit();
        }
        if snap.seq != r.seq {
            return Err(damaged(backlock_core::FormatError::Malformed {
                what: "snapshot",
                detail: format!("sequence {} does not match its name's {}", snap.seq, r.seq),
            }));
        }
        Ok(snap)
    }

    /// The ref of the newest authentic snapshot, and the newer objects skipped.
    pub fn latest(&self) -> Result<(SnapshotRef, Vec<RejectedSnapshot>)> {
        let newest = self.newest_snapshot()?;
        match newest.snapshot {
            Some((r, _)) => Ok((r, newest.rejected)),
            None => Err(RepoError::NoSnapshots),
        }
    }

    /// Finds a snapshot by `latest`, a full name or a unique prefix of its short id.
    pub fn find_snapshot(&self, id: &str) -> Result<SnapshotRef> {
        if id == "latest" {
            return self.latest().map(|(r, _)| r);
        }
        by_prefix(&self.snapshot_refs()?, id)
    }
}

impl Repository<Indexed> {
    /// [`Repository::load_snapshot`], with its nodes read from its trees (a
    /// version-3 snapshot holds only its root).
    pub fn load_snapshot_nodes(&self, r: &SnapshotRef) -> Result<Snapshot> {
        let mut snap = self.load_snapshot(r)?;
        let name = r.name.to_hex();
        trees::read_nodes(
            &*self.store,
            &self.keys,
            &self.state.index,
            self.cache.as_deref(),
            &name,
            &mut snap,
        )?;
        Ok(snap)
    }

    /// The loaded index.
    pub fn index(&self) -> &Index {
        &self.state.index
    }

    /// A packer for the trees of a new snapshot, deduplicated against the index.
    pub(crate) fn tree_packer(&self) -> Result<trees::TreePacker<'_>> {
        trees::TreePacker::new(
            &*self.store,
            &self.keys,
            &self.state.index,
            self.cache.as_deref(),
            self.config.pack_size as usize,
        )
    }
}

/// The one snapshot of `refs` whose name starts with `id` (any case).
pub(crate) fn by_prefix(refs: &[SnapshotRef], id: &str) -> Result<SnapshotRef> {
    let id_lower = id.to_ascii_lowercase();
    let matches: Vec<_> = refs
        .iter()
        .filter(|r| !id_lower.is_empty() && r.name.to_hex().starts_with(&id_lower))
        .collect();
    match matches.as_slice() {
        [one] => Ok(**one),
        [] => Err(RepoError::SnapshotNotFound { id: id.to_string() }),
        many => Err(RepoError::Usage(format!(
            "snapshot id {id:?} is ambiguous: it starts {}; give more digits",
            many.iter()
                .map(|r| format!("{} (#{})", &r.name.to_hex()[..12], r.seq))
                .collect::<Vec<_>>()
                .join(" and ")
        ))),
    }
}

/// Fails with [`RepoError::UnauthenticSnapshots`] if any listed snapshot did not
/// authenticate: what deletes data (prune, a rotation) must not guess about them.
pub(crate) fn refuse_unauthentic(rejected: &[RejectedSnapshot]) -> Result<()> {
    match rejected.first() {
        Some(bad) => Err(RepoError::UnauthenticSnapshots {
            count: rejected.len(),
            first: bad.name.clone(),
            reason: bad.reason.clone(),
        }),
        None => Ok(()),
    }
}

pub(crate) fn now_unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}
