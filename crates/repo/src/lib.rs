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
mod check;
pub mod device;
mod error;
mod index;
mod lock;
mod prune;
mod readahead;
mod restore;
mod rotate;
mod sqlite;
pub mod testhook;
pub mod verify;

pub use backup::{BackupOptions, BackupSummary, Progress};
pub use check::CheckReport;
pub use device::DeviceHome;
pub use error::{RepoError, Result};
pub use index::Index;
pub use lock::{hostname, RepoLock, STALE_AFTER_SECS};
pub use prune::{ForgetSummary, PruneSummary};
pub use restore::RestoreSummary;
pub use rotate::RotateSummary;

use backlock_core::{
    chunker::ChunkerParams,
    envelope::{self, ObjectKind},
    format::{self, Config, Snapshot, CONFIG_NAME},
    ids::ObjectName,
    kdf::RepoKeys,
    key::BackupKey,
};
use backlock_store::{ObjectInfo, ObjectStore, StoreError};
use std::sync::Arc;

/// Default target size of a pack object.
pub const DEFAULT_PACK_SIZE: u32 = 4 << 20;

/// Typestate: config read, key verified.
pub struct Open;
/// Typestate: every index object loaded.
pub struct Indexed {
    index: Index,
}

/// An opened repository.
pub struct Repository<S = Open> {
    store: Arc<dyn ObjectStore>,
    keys: Arc<RepoKeys>,
    config: Config,
    home: DeviceHome,
    /// The other generation of a key rotation in progress (docs/FORMAT.md §Key rotation).
    hidden: Arc<rotate::Hidden>,
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

impl Repository<Open> {
    /// Creates a repository in an empty store.
    pub fn init(store: Arc<dyn ObjectStore>, key: &BackupKey, home: DeviceHome) -> Result<Self> {
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
        };
        let sealed = envelope::seal(
            &keys,
            ObjectKind::Config,
            CONFIG_NAME,
            &format::encode(&config),
        );
        store.put(ObjectKind::Config, CONFIG_NAME, &sealed)?;
        store.flush()?;
        Ok(Repository {
            store,
            keys,
            config,
            home,
            hidden: Arc::default(),
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
        let plain =
            envelope::open(&keys, ObjectKind::Config, CONFIG_NAME, &sealed).map_err(damaged)?;
        let config: Config = format::decode(&plain, "config").map_err(damaged)?;
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
            state: Open,
        })
    }

    /// Loads every index object.
    pub fn load_index(self) -> Result<Repository<Indexed>> {
        let index = Index::load(&*self.store, &self.keys, &self.hidden)?;
        Ok(Repository {
            store: self.store,
            keys: self.keys,
            config: self.config,
            home: self.home,
            hidden: self.hidden,
            state: Indexed { index },
        })
    }
}

impl<S> Repository<S> {
    /// The repository's random identifier.
    pub fn id(&self) -> String {
        self.config.repo_id.to_hex()
    }

    /// Takes the repository lock: shared (backup, check) or exclusive (prune).
    pub fn lock(&self, exclusive: bool) -> Result<RepoLock> {
        RepoLock::acquire(&self.store, &self.keys, exclusive, self.hidden.rotating())
    }

    /// Lists the objects of `kind` this key's generation holds: during a key
    /// rotation, the other key's objects are left out.
    pub(crate) fn listed(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>> {
        Ok(self.hidden.filter(self.store.list(kind)?))
    }

    /// The store it lives in.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Lists snapshots oldest first and checks the store did not roll back: the newest
    /// listed must be at least the newest this device has seen.
    pub fn snapshot_refs(&self) -> Result<Vec<SnapshotRef>> {
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
        let served = refs.last().map_or(0, |r| r.seq);
        let seen = self.home.seen(&self.id())?.newest_seq;
        if served < seen {
            return Err(RepoError::Rollback { seen, served });
        }
        Ok(refs)
    }

    /// Reads and authenticates one snapshot.
    pub fn load_snapshot(&self, r: &SnapshotRef) -> Result<Snapshot> {
        let name = r.name.to_hex();
        let sealed = self.store.get(ObjectKind::Snapshot, &name)?;
        let damaged = |e| RepoError::damaged(ObjectKind::Snapshot, &name, e);
        let plain =
            envelope::open(&self.keys, ObjectKind::Snapshot, &name, &sealed).map_err(damaged)?;
        let mut snap: Snapshot = format::decode(&plain, "snapshot").map_err(damaged)?;
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
        // Having authenticated it, the device will not accept anything older.
        self.home.record(&self.id(), snap.seq)?;
        Ok(snap)
    }

    /// Finds a snapshot by `latest`, a full name or a unique prefix of its short id.
    pub fn find_snapshot(&self, id: &str) -> Result<SnapshotRef> {
        let refs = self.snapshot_refs()?;
        if id == "latest" {
            return refs.last().copied().ok_or(RepoError::NoSnapshots);
        }
        let id_lower = id.to_ascii_lowercase();
        let matches: Vec<_> = refs
            .iter()
            .filter(|r| !id_lower.is_empty() && r.name.to_hex().starts_with(&id_lower))
            .collect();
        match matches.as_slice() {
            [one] => Ok(**one),
            [] => Err(RepoError::SnapshotNotFound { id: id.to_string() }),
            _ => Err(RepoError::Usage(format!(
                "snapshot id {id:?} is ambiguous: give more digits"
            ))),
        }
    }
}

impl Repository<Indexed> {
    /// The loaded index.
    pub fn index(&self) -> &Index {
        &self.state.index
    }
}

pub(crate) fn now_unix_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}
