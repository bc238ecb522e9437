//! A replica's applied state in one redb file (docs/VAULT.md §Records on disk).
//!
//! Every account is a few rows: its record's public fields beside its secrets (record
//! id, password file, wrapped key) sealed under the record's own leaf key, its
//! history, open attempts and anchor; the sweeper's index keeps accounts by time. The
//! key tree (`keytree.rs` explains it) is rows too: the root node, 256 upper and
//! 65,536 lower nodes, each sealed under its own key; the root key stays in the key
//! root file under the epoch key. Memory holds the node keys (at most 65,793), never
//! the records, and redb's page cache, bounded by [`CACHE_BYTES`].
//!
//! A batch of log entries is applied in one write transaction that also records the
//! last applied log id, so a torn apply is rolled back by redb and a restart replays
//! the log from there. Plain batches commit without a sync (the log holds them
//! durably); a batch that erases a record, and every snapshot, commits durably.

use super::files::{self, FileError};
use super::keytree::{
    node_context, random_array, record_context, Registration, TreeError, TreeKey,
};
use super::snapshot_stream::{StreamHeader, StreamWriter};
use super::state_machine::KeyRootFile;
use super::types::{LogId, SnapshotMeta, StoredMembership};
use crate::members::Members;
use crate::seal::SealError;
use crate::state::{Account, Anchor, DueKeys, History, OpenAttempt, Record, Tables, VaultState};
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, TableHandle, WriteTransaction,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use zeroize::{Zeroize, Zeroizing};

/// The database file in a replica's data directory.
pub(crate) const DB_FILE: &str = "state.redb";
/// redb's page cache (its default is 1 GiB): memory stays bounded whatever the
/// number of accounts.
pub const CACHE_BYTES: usize = 64 << 20;

type Rows = TableDefinition<'static, &'static str, &'static [u8]>;
type Due = TableDefinition<'static, (u64, &'static str), ()>;
const META: Rows = TableDefinition::new("meta");
const RECORDS: Rows = TableDefinition::new("records");
const HISTORY: Rows = TableDefinition::new("history");
const ATTEMPTS: Rows = TableDefinition::new("attempts");
const ANCHORS: Rows = TableDefinition::new("anchors");
const DUE_EXHAUSTED: Due = TableDefinition::new("due_exhausted");
const DUE_ATTEMPTS: Due = TableDefinition::new("due_attempts");
/// Key tree nodes by [`node_id`]: sealed children.
const NODES: TableDefinition<'static, u32, &'static [u8]> = TableDefinition::new("key_tree");

const APPLIED: &str = "applied";
const MEMBERSHIP: &str = "membership";
const MEMBERS: &str = "members";
const DIGEST: &str = "digest";
const TREE: &str = "tree";
const SNAPSHOT: &str = "snapshot";

/// A read of the applied state failed (I/O, a damaged row): the message names the
/// file and what to do.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the vault's state: {0}")]
pub struct ReadError(String);

impl From<DbError> for ReadError {
    fn from(e: DbError) -> Self {
        Self(e.to_string())
    }
}

/// What the database could not do. Names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    /// redb refused (I/O, a damaged file).
    #[error("{path}: {source}; if the file is damaged, restore this replica from another (docs/OPERATIONS.md)")]
    Engine {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: Box<redb::Error>,
    },
    /// A row or node does not open or decode.
    #[error("{path}: {source}; restore this replica from another (docs/OPERATIONS.md)")]
    Tree {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: TreeError,
    },
    /// The key root file.
    #[error(transparent)]
    File(#[from] FileError),
    /// A snapshot stream could not be written or read (its spool file, or a stream
    /// that is cut short or does not decode).
    #[error("snapshot stream: {0}; the leader sends the snapshot again")]
    Stream(#[source] io::Error),
}

/// The tree's name (its root key's id in the key root file) and the bucket hash's key.
#[derive(Clone, Copy, Serialize, Deserialize)]
struct TreeHead {
    id: [u8; 16],
    placement: [u8; 32],
}

/// The node keys of the tree as committed.
#[derive(Clone)]
struct Keys {
    head: TreeHead,
    root: TreeKey,
    upper: BTreeMap<u8, TreeKey>,
    lower: BTreeMap<u16, TreeKey>,
}

impl Keys {
    fn fresh() -> Result<Self, SealError> {
        Ok(Self {
            head: TreeHead {
                id: random_array()?,
                placement: random_array()?,
            },
            root: TreeKey::random()?,
            upper: BTreeMap::new(),
            lower: BTreeMap::new(),
        })
    }

    fn bucket(&self, account: &str) -> u16 {
        let hash = blake3::keyed_hash(&self.head.placement, account.as_bytes());
        u16::from_be_bytes([hash.as_bytes()[0], hash.as_bytes()[1]])
    }
}

/// Small state kept in memory beside the rows, updated at each commit: what status,
/// metrics and peers ask without touching the file.
#[derive(Clone, Default)]
pub(crate) struct Summary {
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
    pub(crate) members: Members,
    /// BLAKE3 chain over every applied entry: equal on replicas that applied the same
    /// log (`vault status` compares them).
    pub(crate) digest: [u8; 32],
    pub(crate) records: u64,
    /// The last snapshot built or installed.
    pub(crate) snapshot: Option<SnapshotMeta>,
}

/// A record as stored: public fields in clear, the secrets sealed under its leaf.
#[derive(Serialize, Deserialize)]
struct RecordRow {
    generation: u64,
    attempts_left: u32,
    max_attempts: u32,
    exhausted_at_ms: Option<u64>,
    owner_public_key: [u8; 32],
    sealed: Vec<u8>,
}

/// A record's secrets: its registration id, password file and wrapped key.
type Secrets = ([u8; 16], Vec<u8>, Vec<u8>);

/// One record's leaf: which registration it seals, under which key.
struct Leaf {
    registration: Registration,
    key: TreeKey,
}

fn node_id(level: u8, prefix: u16) -> u32 {
    (u32::from(level) << 16) | u32::from(prefix)
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, TreeError> {
    postcard::from_bytes(bytes).map_err(|e| TreeError::Decode(format!("{what}: {e}")))
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("postcard encodes into a Vec")
}

fn sealing(what: impl Into<String>) -> impl FnOnce(SealError) -> TreeError {
    let what = what.into();
    move |source| TreeError::Seal { what, source }
}

/// Opens a lower node's leaves.
fn open_bucket(
    key: &TreeKey,
    bucket: u16,
    sealed: &[u8],
) -> Result<BTreeMap<String, Leaf>, TreeError> {
    let what = format!("lower node {bucket}");
    let opened = key
        .open(&node_context(2, bucket), sealed)
        .map_err(sealing(what.clone()))?;
    let mut leaves: Vec<(String, Registration, [u8; 32])> = decode(&what, &opened)?;
    let mut out = BTreeMap::new();
    for (account, registration, key) in &mut leaves {
        out.insert(
            std::mem::take(account),
            Leaf {
                registration: *registration,
                key: TreeKey::from_bytes(key),
            },
        );
        key.zeroize();
    }
    Ok(out)
}

/// One account's leaf in a lower node, without making the others' (a bucket holds
/// accounts / 65,536 leaves: 150 at ten million).
fn find_leaf(
    key: &TreeKey,
    bucket: u16,
    sealed: &[u8],
    account: &str,
) -> Result<Option<(Registration, TreeKey)>, TreeError> {
    let opened = key
        .open(&node_context(2, bucket), sealed)
        .map_err(sealing(format!("lower node {bucket}")))?;
    let mut leaves: Vec<(&str, Registration, [u8; 32])> = postcard::from_bytes(&opened)
        .map_err(|e| TreeError::Decode(format!("lower node {bucket}: {e}")))?;
    let found = leaves
        .iter()
        .find(|(held, _, _)| *held == account)
        .map(|(_, registration, key)| (*registration, TreeKey::from_bytes(key)));
    leaves.iter_mut().for_each(|(_, _, key)| key.zeroize());
    Ok(found)
}

/// Opens a node whose children are keys (the root, an upper node).
fn open_keys<K: DeserializeOwned + Ord + Copy>(
    key: &TreeKey,
    level: u8,
    prefix: u16,
    sealed: &[u8],
) -> Result<BTreeMap<K, TreeKey>, TreeError> {
    let what = format!("key tree node {level}/{prefix}");
    let opened = key
        .open(&node_context(level, prefix), sealed)
        .map_err(sealing(what.clone()))?;
    let mut children: Vec<(K, [u8; 32])> = decode(&what, &opened)?;
    let out = children
        .iter()
        .map(|(id, key)| (*id, TreeKey::from_bytes(key)))
        .collect();
    children.iter_mut().for_each(|(_, key)| key.zeroize());
    Ok(out)
}

fn seal_keys<K: Serialize + Copy>(
    key: &TreeKey,
    level: u8,
    prefix: u16,
    children: impl Iterator<Item = (K, [u8; 32])>,
) -> Result<Vec<u8>, TreeError> {
    let mut children: Vec<(K, [u8; 32])> = children.collect();
    let plain = Zeroizing::new(encode(&children));
    children.iter_mut().for_each(|(_, key)| key.zeroize());
    key.seal(&node_context(level, prefix), &plain)
        .map_err(sealing(format!("key tree node {level}/{prefix}")))
}

fn record_of(account: &str, row: RecordRow, leaf: &TreeKey) -> Result<Record, TreeError> {
    let plain = leaf
        .open(&record_context(account), &row.sealed)
        .map_err(sealing(format!("the record of {account:?}")))?;
    let (record_id, password_file, wrapped): Secrets =
        decode(&format!("the record of {account:?}"), &plain)?;
    Ok(Record {
        record_id,
        password_file,
        wrapped,
        owner_public_key: row.owner_public_key,
        generation: row.generation,
        attempts_left: row.attempts_left,
        max_attempts: row.max_attempts,
        exhausted_at_ms: row.exhausted_at_ms,
    })
}

/// The applied state of one replica.
pub(crate) struct RecordDb {
    db: Database,
    path: PathBuf,
    /// Held for writing across each write transaction and the key update after its
    /// commit, so a reader's keys always match the rows its transaction sees.
    keys: RwLock<Keys>,
    summary: RwLock<Summary>,
}

impl RecordDb {
    /// Opens (or creates) the database in `dir`, its tree's root key from `key_root`.
    #[cfg(test)]
    pub(crate) fn open(dir: &Path, key_root: &KeyRootFile) -> Result<Self, DbError> {
        Self::open_with_cache(dir, key_root, CACHE_BYTES)
    }

    /// [`RecordDb::open`] with a page cache of `cache_bytes`.
    pub(crate) fn open_with_cache(
        dir: &Path,
        key_root: &KeyRootFile,
        cache_bytes: usize,
    ) -> Result<Self, DbError> {
        let path = dir.join(DB_FILE);
        let engine = |e: redb::Error| DbError::Engine {
            path: path.clone(),
            source: Box::new(e),
        };
        let create = || {
            Database::builder()
                .set_cache_size(cache_bytes)
                .create(&path)
        };
        if !path.exists() {
            // Made whole under a temporary name (which the next start removes) and
            // renamed: a crash while it is made leaves no file that does not open.
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(files::TMP_SUFFIX);
            let tmp = PathBuf::from(tmp);
            let db = Database::builder()
                .set_cache_size(cache_bytes)
                .create(&tmp)
                .map_err(|e| engine(e.into()))?;
            drop(Self::open_db(db, tmp.clone(), key_root)?);
            std::fs::rename(&tmp, &path).map_err(|e| FileError::io(&path, e))?;
            files::sync_dir(dir)?;
        }
        let db = create().map_err(|e| engine(e.into()))?;
        Self::open_db(db, path, key_root)
    }

    /// [`RecordDb::open`] on a disk that loses power (`power_cut.rs`).
    #[cfg(test)]
    pub(crate) fn open_on(
        dir: &Path,
        key_root: &KeyRootFile,
        disk: super::power_cut::CutDisk,
    ) -> Result<Self, DbError> {
        let path = dir.join(DB_FILE);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(disk)
            .map_err(|e| DbError::Engine {
                path: path.clone(),
                source: Box::new(e.into()),
            })?;
        Self::open_db(db, path, key_root)
    }

    fn open_db(db: Database, path: PathBuf, key_root: &KeyRootFile) -> Result<Self, DbError> {
        let engine = |e: redb::Error| DbError::Engine {
            path: path.clone(),
            source: Box::new(e),
        };
        let txn = db.begin_write().map_err(|e| engine(e.into()))?;
        let head: Option<TreeHead> = {
            // Creates every table, so readers find them.
            for def in [META, RECORDS, HISTORY, ATTEMPTS, ANCHORS] {
                txn.open_table(def).map_err(|e| engine(e.into()))?;
            }
            for def in [DUE_EXHAUSTED, DUE_ATTEMPTS] {
                txn.open_table(def).map_err(|e| engine(e.into()))?;
            }
            txn.open_table(NODES).map_err(|e| engine(e.into()))?;
            let meta = txn.open_table(META).map_err(|e| engine(e.into()))?;
            let head = meta.get(TREE).map_err(|e| engine(e.into()))?;
            head.map(|h| decode("the tree's head", h.value()))
                .transpose()
                .map_err(|source| DbError::Tree {
                    path: path.clone(),
                    source,
                })?
        };
        let this = match head {
            None => {
                // A new file: an empty tree, its root key in the key root file first.
                let keys = Keys::fresh().map_err(|e| DbError::Tree {
                    path: path.clone(),
                    source: sealing("a new tree")(e),
                })?;
                {
                    let mut nodes = txn.open_table(NODES).map_err(|e| engine(e.into()))?;
                    let root = seal_keys::<u8>(&keys.root, 0, 0, std::iter::empty()).map_err(
                        |source| DbError::Tree {
                            path: path.clone(),
                            source,
                        },
                    )?;
                    nodes
                        .insert(node_id(0, 0), root.as_slice())
                        .map_err(|e| engine(e.into()))?;
                    let mut meta = txn.open_table(META).map_err(|e| engine(e.into()))?;
                    meta.insert(TREE, encode(&keys.head).as_slice())
                        .map_err(|e| engine(e.into()))?;
                }
                key_root.replace_root(keys.head.id, &keys.root, || {
                    txn.commit().map_err(|e| engine(e.into()))
                })?;
                Self {
                    db,
                    path: path.clone(),
                    keys: RwLock::new(keys),
                    summary: RwLock::new(Summary::default()),
                }
            }
            Some(head) => {
                txn.commit().map_err(|e| engine(e.into()))?;
                let root = key_root.root(head.id)?.ok_or_else(|| DbError::Tree {
                    path: path.clone(),
                    source: TreeError::Decode(format!(
                        "{} holds no root key for this database's key tree",
                        key_root.path().display()
                    )),
                })?;
                key_root.keep_only(head.id)?;
                let this = Self {
                    db,
                    path: path.clone(),
                    keys: RwLock::new(Keys {
                        head,
                        root,
                        upper: BTreeMap::new(),
                        lower: BTreeMap::new(),
                    }),
                    summary: RwLock::new(Summary::default()),
                };
                this.load_keys()?;
                this
            }
        };
        this.load_summary()?;
        Ok(this)
    }

    fn engine(&self) -> impl Fn(redb::Error) -> DbError + '_ {
        |e| DbError::Engine {
            path: self.path.clone(),
            source: Box::new(e),
        }
    }

    fn tree(&self) -> impl Fn(TreeError) -> DbError + '_ {
        |source| DbError::Tree {
            path: self.path.clone(),
            source,
        }
    }

    /// Opens the root and every upper node for the node keys.
    fn load_keys(&self) -> Result<(), DbError> {
        let engine = self.engine();
        let mut keys = self.keys.write().expect("key lock poisoned");
        let txn = self.db.begin_read().map_err(|e| engine(e.into()))?;
        let nodes = txn.open_table(NODES).map_err(|e| engine(e.into()))?;
        let missing = |what: &str| self.tree()(TreeError::Decode(format!("{what} is missing")));
        let root = nodes
            .get(node_id(0, 0))
            .map_err(|e| engine(e.into()))?
            .ok_or_else(|| missing("the root node"))?;
        keys.upper = open_keys(&keys.root, 0, 0, root.value()).map_err(self.tree())?;
        let mut lower = BTreeMap::new();
        for (prefix, key) in &keys.upper {
            let sealed = nodes
                .get(node_id(1, u16::from(*prefix)))
                .map_err(|e| engine(e.into()))?
                .ok_or_else(|| missing(&format!("upper node {prefix}")))?;
            lower.extend(
                open_keys::<u16>(key, 1, u16::from(*prefix), sealed.value())
                    .map_err(self.tree())?,
            );
        }
        keys.lower = lower;
        Ok(())
    }

    fn load_summary(&self) -> Result<(), DbError> {
        let engine = self.engine();
        let txn = self.db.begin_read().map_err(|e| engine(e.into()))?;
        let meta = txn.open_table(META).map_err(|e| engine(e.into()))?;
        let get = |name: &str| -> Result<Option<Vec<u8>>, DbError> {
            Ok(meta
                .get(name)
                .map_err(|e| engine(e.into()))?
                .map(|v| v.value().to_vec()))
        };
        fn field<T: DeserializeOwned>(
            path: &Path,
            name: &str,
            bytes: Option<Vec<u8>>,
        ) -> Result<Option<T>, DbError> {
            bytes
                .map(|b| {
                    postcard::from_bytes(&b).map_err(|e| DbError::Tree {
                        path: path.to_path_buf(),
                        source: TreeError::Decode(format!("{name}: {e}")),
                    })
                })
                .transpose()
        }
        let records = txn
            .open_table(RECORDS)
            .map_err(|e| engine(e.into()))?
            .len()
            .map_err(|e| engine(e.into()))?;
        let summary = Summary {
            last_applied: field(&self.path, APPLIED, get(APPLIED)?)?.flatten(),
            membership: field(&self.path, MEMBERSHIP, get(MEMBERSHIP)?)?.unwrap_or_default(),
            members: field(&self.path, MEMBERS, get(MEMBERS)?)?.unwrap_or_default(),
            digest: field(&self.path, DIGEST, get(DIGEST)?)?.unwrap_or_default(),
            snapshot: field(&self.path, SNAPSHOT, get(SNAPSHOT)?)?.flatten(),
            records,
        };
        *self.summary.write().expect("summary lock poisoned") = summary;
        Ok(())
    }

    /// The small state kept in memory.
    pub(crate) fn summary(&self) -> Summary {
        self.summary.read().expect("summary lock poisoned").clone()
    }

    /// Runs `f` in one write transaction and commits it: durably if `f` erased a
    /// record (the key tree's root changed) or `durable` asks for it.
    pub(crate) fn write<T>(
        &self,
        key_root: &KeyRootFile,
        durable: bool,
        f: impl FnOnce(&mut Writer<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let mut keys = self.keys.write().expect("key lock poisoned");
        self.write_on(&mut keys, None, key_root, durable, f)
    }

    /// Replaces the whole state by `state` (a snapshot installed, or a snapshot file of
    /// an earlier release), under a new key tree: nothing of the old tree opens under
    /// the new root.
    pub(crate) fn replace(
        &self,
        key_root: &KeyRootFile,
        state: &VaultState,
        summary: Summary,
    ) -> Result<(), DbError> {
        let mut keys = self.keys.write().expect("key lock poisoned");
        let fresh = Keys::fresh().map_err(|e| self.tree()(sealing("a new tree")(e)))?;
        self.write_on(&mut keys, Some(fresh), key_root, true, |w| {
            for (name, held) in state.accounts() {
                w.put_account(&name, &Account::default(), &held)?;
            }
            w.put_members(state.members())?;
            w.summary.last_applied = summary.last_applied;
            w.summary.membership = summary.membership.clone();
            w.summary.digest = summary.digest;
            w.summary.snapshot = summary.snapshot.clone();
            Ok(())
        })
    }

    fn write_on<T>(
        &self,
        keys: &mut Keys,
        fresh: Option<Keys>,
        key_root: &KeyRootFile,
        durable: bool,
        f: impl FnOnce(&mut Writer<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let engine = self.engine();
        let mut txn = self.db.begin_write().map_err(|e| engine(e.into()))?;
        let replacing = fresh.is_some();
        if replacing {
            for def in [META, RECORDS, HISTORY, ATTEMPTS, ANCHORS] {
                txn.delete_table(def).map_err(|e| engine(e.into()))?;
            }
            for def in [DUE_EXHAUSTED, DUE_ATTEMPTS] {
                txn.delete_table(def).map_err(|e| engine(e.into()))?;
            }
            txn.delete_table(NODES).map_err(|e| engine(e.into()))?;
        }
        let summary = if replacing {
            Summary::default()
        } else {
            self.summary()
        };
        let (out, changes, summary) = {
            let base = fresh.as_ref().unwrap_or(&*keys);
            let mut w = Writer::open(&txn, base, summary, &self.path)?;
            if replacing {
                w.changes.root = Some(base.root.clone());
                w.changes.head = Some(base.head);
                w.changes.root_dirty = true;
            }
            let out = f(&mut w)?;
            let (changes, summary) = w.finish()?;
            (out, changes, summary)
        };
        let rekeyed = changes.head.map(|h| (h.id, changes.root.clone()));
        let durability = if durable || rekeyed.is_some() {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability)
            .map_err(|e| engine(e.into()))?;
        match &rekeyed {
            Some((id, Some(root))) => {
                key_root.replace_root(*id, root, || txn.commit().map_err(|e| engine(e.into())))?
            }
            _ => txn.commit().map_err(|e| engine(e.into()))?,
        }
        if let Some(fresh) = fresh {
            *keys = fresh;
        }
        changes.merge_into(keys);
        *self.summary.write().expect("summary lock poisoned") = summary;
        Ok(out)
    }

    /// Runs `f` on a consistent view of the committed state; fails if any read in it
    /// failed.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&View<'_>) -> T) -> Result<T, DbError> {
        let keys = self.keys.read().expect("key lock poisoned");
        let txn = self.db.begin_read().map_err(|e| self.engine()(e.into()))?;
        let view = View {
            keys: &keys,
            txn: &txn,
            path: &self.path,
            failed: RefCell::new(None),
        };
        let out = f(&view);
        view.finish()?;
        Ok(out)
    }

    /// Makes every commit so far durable, with `note` changing the summary in that
    /// commit: the log up to the last applied entry may go.
    pub(crate) fn make_durable(
        &self,
        key_root: &KeyRootFile,
        note: impl FnOnce(&mut Summary),
    ) -> Result<Summary, DbError> {
        let mut keys = self.keys.write().expect("key lock poisoned");
        self.write_on(&mut keys, None, key_root, true, |w| {
            note(&mut w.summary);
            Ok(())
        })?;
        Ok(self.summary())
    }

    /// Bytes of the database file.
    pub(crate) fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// [`RecordDb::make_durable`], then the whole state as of that commit, in memory
    /// (a copy's inspection, tests).
    pub(crate) fn export(
        &self,
        key_root: &KeyRootFile,
        note: impl FnOnce(&mut Summary),
    ) -> Result<(VaultState, Summary), DbError> {
        let pinned = self.pin(key_root, note)?;
        Ok((pinned.everything()?, pinned.summary))
    }

    /// [`RecordDb::make_durable`], then a read transaction pinned at that commit with
    /// a copy of its keys (a few MiB): what a snapshot sent to a follower reads,
    /// without holding up applying (what is sent must survive a crash, since the log
    /// before it goes).
    pub(crate) fn pin(
        &self,
        key_root: &KeyRootFile,
        note: impl FnOnce(&mut Summary),
    ) -> Result<Pinned, DbError> {
        let mut keys = self.keys.write().expect("key lock poisoned");
        self.write_on(&mut keys, None, key_root, true, |w| {
            note(&mut w.summary);
            Ok(())
        })?;
        // Still under the key lock: no commit can come between.
        let txn = self.db.begin_read().map_err(|e| self.engine()(e.into()))?;
        Ok(Pinned {
            keys: Keys::clone(&keys),
            txn,
            path: self.path.clone(),
            summary: self.summary(),
        })
    }

    /// Replaces the whole state by the accounts of a snapshot stream, under a new key
    /// tree whose bucket hash key is `placement` (the sender's: its accounts come
    /// bucket by bucket, so each lower node is sealed once and leaves memory). One
    /// durable transaction: a crash or a bad stream leaves the state as it was.
    /// Returns the number of accounts.
    pub(crate) fn install_stream(
        &self,
        key_root: &KeyRootFile,
        placement: [u8; 32],
        summary: Summary,
        accounts: impl Iterator<Item = io::Result<(String, Account)>>,
    ) -> Result<u64, DbError> {
        let mut keys = self.keys.write().expect("key lock poisoned");
        let mut fresh = Keys::fresh().map_err(|e| self.tree()(sealing("a new tree")(e)))?;
        fresh.head.placement = placement;
        self.write_on(&mut keys, Some(fresh), key_root, true, |w| {
            let mut open = None;
            let mut count = 0;
            for account in accounts {
                let (name, held) = account.map_err(DbError::Stream)?;
                if held.record.is_some() {
                    let bucket = w.bucket_of(&name);
                    match open {
                        Some(b) if b != bucket => w.seal_lower(b)?,
                        _ => {}
                    }
                    open = Some(bucket);
                }
                w.put_account(&name, &Account::default(), &held)?;
                count += 1;
            }
            w.summary.last_applied = summary.last_applied;
            w.summary.membership = summary.membership.clone();
            w.summary.members = summary.members.clone();
            w.summary.digest = summary.digest;
            w.summary.snapshot = summary.snapshot.clone();
            Ok(count)
        })
    }
}

/// A read transaction pinned at a durable commit, with the keys of that commit.
pub(crate) struct Pinned {
    keys: Keys,
    txn: ReadTransaction,
    path: PathBuf,
    summary: Summary,
}

impl Pinned {
    fn view(&self) -> View<'_> {
        View {
            keys: &self.keys,
            txn: &self.txn,
            path: &self.path,
            failed: RefCell::new(None),
        }
    }

    /// The whole state, in memory.
    pub(crate) fn everything(&self) -> Result<VaultState, DbError> {
        self.view().everything()
    }

    /// Writes the state as a snapshot stream to `out`; returns `out` and the number
    /// of accounts. Memory holds one lower node's leaves and one account.
    pub(crate) fn write_stream<W: Write>(&self, out: W) -> Result<(W, u64), DbError> {
        let s = &self.summary;
        let header = StreamHeader {
            last_applied: s.last_applied,
            membership: s.membership.clone(),
            members: s.members.clone(),
            digest: s.digest,
            placement: self.keys.head.placement,
        };
        let mut stream = StreamWriter::new(out, &header).map_err(DbError::Stream)?;
        self.view().stream(&mut stream)?;
        stream.finish().map_err(DbError::Stream)
    }
}

/// The changes a write transaction makes to the key tree, applied to [`Keys`] after
/// the commit.
#[derive(Default)]
struct TreeChanges {
    /// A new root key and tree id (an erasure).
    root: Option<TreeKey>,
    head: Option<TreeHead>,
    upper: BTreeMap<u8, TreeKey>,
    lower: BTreeMap<u16, TreeKey>,
    /// Buckets read or changed in this transaction.
    buckets: HashMap<u16, BTreeMap<String, Leaf>>,
    dirty_lower: BTreeSet<u16>,
    dirty_upper: BTreeSet<u8>,
    root_dirty: bool,
}

impl TreeChanges {
    fn merge_into(self, keys: &mut Keys) {
        if let Some(head) = self.head {
            keys.head = head;
        }
        if let Some(root) = self.root {
            keys.root = root;
        }
        keys.upper.extend(self.upper);
        keys.lower.extend(self.lower);
    }
}

/// One write transaction's tables, seen as [`Tables`].
pub(crate) struct Writer<'t> {
    meta: redb::Table<'t, &'static str, &'static [u8]>,
    records: redb::Table<'t, &'static str, &'static [u8]>,
    history: redb::Table<'t, &'static str, &'static [u8]>,
    attempts: redb::Table<'t, &'static str, &'static [u8]>,
    anchors: redb::Table<'t, &'static str, &'static [u8]>,
    due_exhausted: redb::Table<'t, (u64, &'static str), ()>,
    due_attempts: redb::Table<'t, (u64, &'static str), ()>,
    nodes: redb::Table<'t, u32, &'static [u8]>,
    base: &'t Keys,
    changes: TreeChanges,
    /// Records' sealed secrets as read, reused while the registration stays.
    sealed: HashMap<String, (Registration, Vec<u8>)>,
    pub(crate) summary: Summary,
    path: &'t Path,
}

impl<'t> Writer<'t> {
    fn open(
        txn: &'t WriteTransaction,
        base: &'t Keys,
        summary: Summary,
        path: &'t Path,
    ) -> Result<Self, DbError> {
        let engine = |e: redb::TableError| DbError::Engine {
            path: path.to_path_buf(),
            source: Box::new(e.into()),
        };
        Ok(Self {
            meta: txn.open_table(META).map_err(engine)?,
            records: txn.open_table(RECORDS).map_err(engine)?,
            history: txn.open_table(HISTORY).map_err(engine)?,
            attempts: txn.open_table(ATTEMPTS).map_err(engine)?,
            anchors: txn.open_table(ANCHORS).map_err(engine)?,
            due_exhausted: txn.open_table(DUE_EXHAUSTED).map_err(engine)?,
            due_attempts: txn.open_table(DUE_ATTEMPTS).map_err(engine)?,
            nodes: txn.open_table(NODES).map_err(engine)?,
            base,
            changes: TreeChanges::default(),
            sealed: HashMap::new(),
            summary,
            path,
        })
    }

    fn engine(&self) -> impl Fn(redb::StorageError) -> DbError + 't {
        let path = self.path;
        move |e| DbError::Engine {
            path: path.to_path_buf(),
            source: Box::new(e.into()),
        }
    }

    fn tree(&self) -> impl Fn(TreeError) -> DbError + 't {
        let path = self.path;
        move |source| DbError::Tree {
            path: path.to_path_buf(),
            source,
        }
    }

    fn root_key(&self) -> &TreeKey {
        self.changes.root.as_ref().unwrap_or(&self.base.root)
    }

    fn upper_key(&self, prefix: u8) -> Option<&TreeKey> {
        self.changes
            .upper
            .get(&prefix)
            .or_else(|| self.base.upper.get(&prefix))
    }

    fn lower_key(&self, bucket: u16) -> Option<&TreeKey> {
        self.changes
            .lower
            .get(&bucket)
            .or_else(|| self.base.lower.get(&bucket))
    }

    fn bucket_of(&self, account: &str) -> u16 {
        self.base.bucket(account)
    }

    /// The leaves of `bucket`, read once per transaction.
    fn bucket(&mut self, bucket: u16) -> Result<&mut BTreeMap<String, Leaf>, DbError> {
        if !self.changes.buckets.contains_key(&bucket) {
            let leaves = match self.lower_key(bucket) {
                None => BTreeMap::new(),
                Some(key) => {
                    let sealed = self
                        .nodes
                        .get(node_id(2, bucket))
                        .map_err(self.engine())?
                        .map(|v| v.value().to_vec())
                        .ok_or_else(|| {
                            self.tree()(TreeError::Decode(format!(
                                "lower node {bucket} is missing"
                            )))
                        })?;
                    open_bucket(key, bucket, &sealed).map_err(self.tree())?
                }
            };
            self.changes.buckets.insert(bucket, leaves);
        }
        Ok(self
            .changes
            .buckets
            .get_mut(&bucket)
            .expect("inserted above"))
    }

    fn new_key(&self) -> Result<TreeKey, DbError> {
        TreeKey::random().map_err(|e| self.tree()(sealing("a new key")(e)))
    }

    /// Deletes `account`'s leaf and replaces every key on the path to it.
    fn erase_leaf(&mut self, account: &str) -> Result<(), DbError> {
        let bucket = self.bucket_of(account);
        if self.bucket(bucket)?.remove(account).is_none() {
            return Ok(());
        }
        let upper = (bucket >> 8) as u8;
        let lower_key = self.new_key()?;
        self.changes.lower.insert(bucket, lower_key);
        let upper_key = self.new_key()?;
        self.changes.upper.insert(upper, upper_key);
        self.changes.root = Some(self.new_key()?);
        let id = random_array().map_err(|e| self.tree()(sealing("a new tree id")(e)))?;
        self.changes.head = Some(TreeHead {
            id,
            placement: self.base.head.placement,
        });
        self.changes.dirty_lower.insert(bucket);
        self.changes.dirty_upper.insert(upper);
        self.changes.root_dirty = true;
        Ok(())
    }

    /// Gives `account`'s `registration` a leaf (erasing an earlier registration's) and
    /// returns its key.
    fn leaf(&mut self, account: &str, registration: Registration) -> Result<TreeKey, DbError> {
        let bucket = self.bucket_of(account);
        let held = self
            .bucket(bucket)?
            .get(account)
            .map(|l| (l.registration, l.key.clone()));
        match held {
            Some((r, key)) if r == registration => return Ok(key),
            Some(_) => self.erase_leaf(account)?,
            None => {}
        }
        let upper = (bucket >> 8) as u8;
        if self.upper_key(upper).is_none() {
            let key = self.new_key()?;
            self.changes.upper.insert(upper, key);
            self.changes.root_dirty = true;
        }
        if self.lower_key(bucket).is_none() {
            let key = self.new_key()?;
            self.changes.lower.insert(bucket, key);
            self.changes.dirty_upper.insert(upper);
        }
        let key = self.new_key()?;
        self.bucket(bucket)?.insert(
            account.to_owned(),
            Leaf {
                registration,
                key: key.clone(),
            },
        );
        self.changes.dirty_lower.insert(bucket);
        Ok(key)
    }

    fn leaf_key(&mut self, account: &str) -> Result<Option<(Registration, TreeKey)>, DbError> {
        let bucket = self.bucket_of(account);
        if let Some(leaves) = self.changes.buckets.get(&bucket) {
            return Ok(leaves.get(account).map(|l| (l.registration, l.key.clone())));
        }
        // Most commands only read the leaf: find it without reading the bucket whole.
        let Some(key) = self.lower_key(bucket) else {
            return Ok(None);
        };
        let sealed = self
            .nodes
            .get(node_id(2, bucket))
            .map_err(self.engine())?
            .ok_or_else(|| {
                self.tree()(TreeError::Decode(format!("lower node {bucket} is missing")))
            })?;
        find_leaf(key, bucket, sealed.value(), account).map_err(self.tree())
    }

    fn get_row(
        table: &redb::Table<'t, &'static str, &'static [u8]>,
        account: &str,
    ) -> Result<Option<Vec<u8>>, redb::StorageError> {
        Ok(table.get(account)?.map(|v| v.value().to_vec()))
    }

    fn put_row<V: Serialize>(
        table: &mut redb::Table<'t, &'static str, &'static [u8]>,
        account: &str,
        value: Option<&V>,
    ) -> Result<(), redb::StorageError> {
        match value {
            Some(v) => table.insert(account, encode(v).as_slice()).map(drop),
            None => table.remove(account).map(drop),
        }
    }

    /// Seals lower node `bucket` under its key if it changed, and lets its leaves
    /// (and the records' sealed secrets kept for reuse) leave memory: a snapshot's
    /// install goes through every bucket in one transaction.
    pub(crate) fn seal_lower(&mut self, bucket: u16) -> Result<(), DbError> {
        self.sealed.clear();
        let Some(leaves) = self.changes.buckets.remove(&bucket) else {
            return Ok(());
        };
        if !self.changes.dirty_lower.remove(&bucket) {
            return Ok(());
        }
        let key = self
            .lower_key(bucket)
            .expect("a dirty node has a key")
            .clone();
        let mut plain: Vec<(&str, Registration, [u8; 32])> = leaves
            .iter()
            .map(|(a, l)| (a.as_str(), l.registration, *l.key.bytes()))
            .collect();
        let bytes = Zeroizing::new(encode(&plain));
        plain.iter_mut().for_each(|(_, _, k)| k.zeroize());
        let sealed = key
            .seal(&node_context(2, bucket), &bytes)
            .map_err(|e| self.tree()(sealing(format!("lower node {bucket}"))(e)))?;
        let engine = self.engine();
        self.nodes
            .insert(node_id(2, bucket), sealed.as_slice())
            .map_err(engine)?;
        Ok(())
    }

    /// Seals every changed node under its key, children first.
    fn finish(mut self) -> Result<(TreeChanges, Summary), DbError> {
        let engine = self.engine();
        for bucket in self.changes.dirty_lower.clone() {
            self.seal_lower(bucket)?;
        }
        for upper in std::mem::take(&mut self.changes.dirty_upper) {
            let first = u16::from(upper) << 8;
            let mut children: BTreeMap<u16, [u8; 32]> = self
                .base
                .lower
                .range(first..=first | 0xff)
                .map(|(id, k)| (*id, *k.bytes()))
                .collect();
            for (id, k) in self.changes.lower.range(first..=first | 0xff) {
                children.insert(*id, *k.bytes());
            }
            let key = self.upper_key(upper).expect("a dirty node has a key");
            let sealed = seal_keys(key, 1, first >> 8, children.iter().map(|(i, k)| (*i, *k)))
                .map_err(self.tree())?;
            children.values_mut().for_each(Zeroize::zeroize);
            self.nodes
                .insert(node_id(1, u16::from(upper)), sealed.as_slice())
                .map_err(&engine)?;
            self.changes.root_dirty = true;
        }
        if self.changes.root_dirty {
            let mut children: BTreeMap<u8, [u8; 32]> = self
                .base
                .upper
                .iter()
                .map(|(id, k)| (*id, *k.bytes()))
                .collect();
            for (id, k) in &self.changes.upper {
                children.insert(*id, *k.bytes());
            }
            let sealed = seal_keys(
                self.root_key(),
                0,
                0,
                children.iter().map(|(i, k)| (*i, *k)),
            )
            .map_err(self.tree())?;
            children.values_mut().for_each(Zeroize::zeroize);
            self.nodes
                .insert(node_id(0, 0), sealed.as_slice())
                .map_err(&engine)?;
        }
        if let Some(head) = self.changes.head {
            self.meta
                .insert(TREE, encode(&head).as_slice())
                .map_err(&engine)?;
        }
        let s = &self.summary;
        let meta = [
            (APPLIED, encode(&s.last_applied)),
            (MEMBERSHIP, encode(&s.membership)),
            (MEMBERS, encode(&s.members)),
            (DIGEST, encode(&s.digest)),
            (SNAPSHOT, encode(&s.snapshot)),
        ];
        for (name, bytes) in meta {
            self.meta.insert(name, bytes.as_slice()).map_err(&engine)?;
        }
        self.summary.records = self.records.len().map_err(&engine)?;
        Ok((self.changes, self.summary))
    }
}

impl Tables for Writer<'_> {
    type Error = DbError;

    fn account(&mut self, account: &str) -> Result<Account, DbError> {
        let engine = self.engine();
        let record_row = Self::get_row(&self.records, account).map_err(&engine)?;
        let history = Self::get_row(&self.history, account).map_err(&engine)?;
        let attempts = Self::get_row(&self.attempts, account).map_err(&engine)?;
        let anchor = Self::get_row(&self.anchors, account).map_err(&engine)?;
        drop(engine);
        let tree = |source| DbError::Tree {
            path: self.path.to_path_buf(),
            source,
        };
        let record = match record_row {
            None => None,
            Some(bytes) => {
                let row: RecordRow =
                    decode(&format!("the record of {account:?}"), &bytes).map_err(tree)?;
                let (registration, key) = self.leaf_key(account)?.ok_or_else(|| {
                    self.tree()(TreeError::Decode(format!(
                        "no leaf for the record of {account:?}"
                    )))
                })?;
                self.sealed
                    .insert(account.to_owned(), (registration, row.sealed.clone()));
                Some(record_of(account, row, &key).map_err(self.tree())?)
            }
        };
        let tree = |source| DbError::Tree {
            path: self.path.to_path_buf(),
            source,
        };
        Ok(Account {
            record,
            history: history
                .map(|b| decode("a history", &b))
                .transpose()
                .map_err(tree)?
                .unwrap_or_default(),
            attempts: attempts
                .map(|b| decode("open attempts", &b))
                .transpose()
                .map_err(tree)?
                .unwrap_or_default(),
            anchor: anchor
                .map(|b| decode("an anchor", &b))
                .transpose()
                .map_err(tree)?,
        })
    }

    fn put_account(
        &mut self,
        account: &str,
        before: &Account,
        after: &Account,
    ) -> Result<(), DbError> {
        match (&before.record, &after.record) {
            (_, Some(r)) => {
                let registration = (r.record_id, r.generation);
                let same = before.record.as_ref().is_some_and(|b| {
                    b.record_id == r.record_id
                        && b.generation == r.generation
                        && b.password_file == r.password_file
                        && b.wrapped == r.wrapped
                });
                let kept = self
                    .sealed
                    .get(account)
                    .filter(|(held, _)| same && *held == registration)
                    .map(|(_, sealed)| sealed.clone());
                let sealed = match kept {
                    Some(sealed) => sealed,
                    None => {
                        let key = self.leaf(account, registration)?;
                        let secrets: (&[u8; 16], &[u8], &[u8]) =
                            (&r.record_id, &r.password_file, &r.wrapped);
                        let plain = Zeroizing::new(encode(&secrets));
                        key.seal(&record_context(account), &plain).map_err(|e| {
                            self.tree()(sealing(format!("the record of {account:?}"))(e))
                        })?
                    }
                };
                let row = RecordRow {
                    generation: r.generation,
                    attempts_left: r.attempts_left,
                    max_attempts: r.max_attempts,
                    exhausted_at_ms: r.exhausted_at_ms,
                    owner_public_key: r.owner_public_key,
                    sealed: sealed.clone(),
                };
                self.sealed
                    .insert(account.to_owned(), (registration, sealed));
                Self::put_row(&mut self.records, account, Some(&row)).map_err(self.engine())?;
            }
            (Some(_), None) => {
                self.erase_leaf(account)?;
                self.sealed.remove(account);
                Self::put_row::<RecordRow>(&mut self.records, account, None)
                    .map_err(self.engine())?;
            }
            (None, None) => {}
        }
        let engine = |e: redb::StorageError| DbError::Engine {
            path: self.path.to_path_buf(),
            source: Box::new(e.into()),
        };
        if before.history != after.history {
            let h = (after.history != History::default()).then_some(&after.history);
            Self::put_row(&mut self.history, account, h).map_err(engine)?;
        }
        if before.attempts != after.attempts {
            let a = (!after.attempts.is_empty()).then_some(&after.attempts);
            Self::put_row::<Vec<OpenAttempt>>(&mut self.attempts, account, a).map_err(engine)?;
        }
        if before.anchor != after.anchor {
            Self::put_row::<Anchor>(&mut self.anchors, account, after.anchor.as_ref())
                .map_err(engine)?;
        }
        let (old, new) = (before.due(), after.due());
        if old != new {
            file_due(
                &mut self.due_exhausted,
                &mut self.due_attempts,
                account,
                &old,
                false,
            )
            .map_err(engine)?;
            file_due(
                &mut self.due_exhausted,
                &mut self.due_attempts,
                account,
                &new,
                true,
            )
            .map_err(engine)?;
        }
        Ok(())
    }

    fn members(&mut self) -> Result<Members, DbError> {
        Ok(self.summary.members.clone())
    }

    fn put_members(&mut self, members: &Members) -> Result<(), DbError> {
        self.summary.members = members.clone();
        Ok(())
    }

    fn expired_attempt_accounts(&mut self, now_ms: u64) -> Result<Vec<String>, DbError> {
        let mut accounts = BTreeSet::new();
        for entry in self
            .due_attempts
            .range(..(now_ms.saturating_add(1), ""))
            .map_err(self.engine())?
        {
            let (key, _) = entry.map_err(self.engine())?;
            accounts.insert(key.value().1.to_owned());
        }
        Ok(accounts.into_iter().collect())
    }
}

fn file_due<'t>(
    exhausted: &mut redb::Table<'t, (u64, &'static str), ()>,
    attempts: &mut redb::Table<'t, (u64, &'static str), ()>,
    account: &str,
    keys: &DueKeys,
    present: bool,
) -> Result<(), redb::StorageError> {
    let entries = keys
        .exhausted
        .iter()
        .map(|&t| (true, t))
        .chain(keys.attempts.iter().map(|&t| (false, t)));
    for (is_exhausted, t) in entries {
        let table = if is_exhausted {
            &mut *exhausted
        } else {
            &mut *attempts
        };
        if present {
            table.insert((t, account), ())?;
        } else {
            table.remove((t, account))?;
        }
    }
    Ok(())
}

/// A read transaction on the committed state. A read that fails (I/O, a damaged
/// row) answers as if empty and is remembered: [`View::finish`] reports it, so the
/// caller never acts on a wrong answer.
pub struct View<'d> {
    keys: &'d Keys,
    txn: &'d ReadTransaction,
    path: &'d Path,
    failed: RefCell<Option<DbError>>,
}

impl View<'_> {
    fn fail<T: Default>(&self, e: DbError) -> T {
        self.failed.borrow_mut().get_or_insert(e);
        T::default()
    }

    fn engine(&self, e: impl Into<redb::Error>) -> DbError {
        DbError::Engine {
            path: self.path.to_path_buf(),
            source: Box::new(e.into()),
        }
    }

    fn tree(&self, source: TreeError) -> DbError {
        DbError::Tree {
            path: self.path.to_path_buf(),
            source,
        }
    }

    /// The first failed read, if any.
    fn finish(self) -> Result<(), DbError> {
        match self.failed.into_inner() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn row<T: DeserializeOwned>(&self, def: Rows, account: &str) -> Result<Option<T>, DbError> {
        let table = self.txn.open_table(def).map_err(|e| self.engine(e))?;
        let Some(bytes) = table.get(account).map_err(|e| self.engine(e))? else {
            return Ok(None);
        };
        decode(def.name(), bytes.value())
            .map(Some)
            .map_err(|e| self.tree(e))
    }

    /// The sealed lower node `bucket` and its key, if it exists.
    fn lower_node(&self, bucket: u16) -> Result<Option<(&TreeKey, Vec<u8>)>, DbError> {
        let Some(key) = self.keys.lower.get(&bucket) else {
            return Ok(None);
        };
        let nodes = self.txn.open_table(NODES).map_err(|e| self.engine(e))?;
        let sealed = nodes
            .get(node_id(2, bucket))
            .map_err(|e| self.engine(e))?
            .ok_or_else(|| {
                self.tree(TreeError::Decode(format!("lower node {bucket} is missing")))
            })?;
        Ok(Some((key, sealed.value().to_vec())))
    }

    fn bucket(&self, bucket: u16) -> Result<BTreeMap<String, Leaf>, DbError> {
        match self.lower_node(bucket)? {
            None => Ok(BTreeMap::new()),
            Some((key, sealed)) => open_bucket(key, bucket, &sealed).map_err(|e| self.tree(e)),
        }
    }

    fn leaf(&self, bucket: u16, account: &str) -> Result<Option<(Registration, TreeKey)>, DbError> {
        match self.lower_node(bucket)? {
            None => Ok(None),
            Some((key, sealed)) => {
                find_leaf(key, bucket, &sealed, account).map_err(|e| self.tree(e))
            }
        }
    }

    /// The account's record; `buckets` keeps the lower nodes read (a pass over every
    /// account), or, if none, only the account's leaf is taken from its node.
    fn try_record(
        &self,
        account: &str,
        buckets: Option<&mut HashMap<u16, BTreeMap<String, Leaf>>>,
    ) -> Result<Option<Record>, DbError> {
        let Some(row) = self.row::<RecordRow>(RECORDS, account)? else {
            return Ok(None);
        };
        let bucket = self.keys.bucket(account);
        let no_leaf = || {
            self.tree(TreeError::Decode(format!(
                "no leaf for the record of {account:?}"
            )))
        };
        let key = match buckets {
            Some(buckets) => {
                if let std::collections::hash_map::Entry::Vacant(slot) = buckets.entry(bucket) {
                    slot.insert(self.bucket(bucket)?);
                }
                buckets[&bucket]
                    .get(account)
                    .ok_or_else(no_leaf)?
                    .key
                    .clone()
            }
            None => self.leaf(bucket, account)?.ok_or_else(no_leaf)?.1,
        };
        record_of(account, row, &key)
            .map(Some)
            .map_err(|e| self.tree(e))
    }

    fn try_account(
        &self,
        account: &str,
        buckets: Option<&mut HashMap<u16, BTreeMap<String, Leaf>>>,
    ) -> Result<Account, DbError> {
        let record = self.try_record(account, buckets)?;
        self.held(account, record)
    }

    /// What `account` holds besides `record`, its record.
    fn held(&self, account: &str, record: Option<Record>) -> Result<Account, DbError> {
        Ok(Account {
            record,
            history: self.row(HISTORY, account)?.unwrap_or_default(),
            attempts: self.row(ATTEMPTS, account)?.unwrap_or_default(),
            anchor: self.row(ANCHORS, account)?,
        })
    }

    /// The account's record, if any.
    pub fn record(&self, account: &str) -> Option<Record> {
        self.try_record(account, None)
            .unwrap_or_else(|e| self.fail(e))
    }

    /// What the account holds.
    pub fn account(&self, account: &str) -> Account {
        self.try_account(account, None)
            .unwrap_or_else(|e| self.fail(e))
    }

    /// Whether the account's last record was erased by the guess limit.
    pub fn locked(&self, account: &str) -> bool {
        let has_record = self
            .row::<RecordRow>(RECORDS, account)
            .map(|r| r.is_some())
            .unwrap_or_else(|e| self.fail(e));
        let history: History = self
            .row(HISTORY, account)
            .map(Option::unwrap_or_default)
            .unwrap_or_else(|e| self.fail(e));
        !has_record && history.locked
    }

    /// The highest generation the account's records had (0: never registered).
    pub fn last_generation(&self, account: &str) -> u64 {
        self.row::<History>(HISTORY, account)
            .map(|h| h.map_or(0, |h| h.generation))
            .unwrap_or_else(|e| self.fail(e))
    }

    /// The account's open attempt `id`, if it is open.
    pub fn open_attempt(&self, account: &str, id: &[u8; 16]) -> Option<OpenAttempt> {
        self.row::<Vec<OpenAttempt>>(ATTEMPTS, account)
            .map(|open| open.unwrap_or_default().into_iter().find(|a| a.id == *id))
            .unwrap_or_else(|e| self.fail(e))
    }

    /// Whether the account has an attempt open at `now_ms`.
    pub fn has_open_attempt(&self, account: &str, now_ms: u64) -> bool {
        self.row::<Vec<OpenAttempt>>(ATTEMPTS, account)
            .map(|open| {
                open.unwrap_or_default()
                    .iter()
                    .any(|a| a.expires_ms > now_ms)
            })
            .unwrap_or_else(|e| self.fail(e))
    }

    /// The account's snapshot anchor.
    pub fn anchor(&self, account: &str) -> Option<Anchor> {
        self.row(ANCHORS, account).unwrap_or_else(|e| self.fail(e))
    }

    /// Records whose count is zero and whose last guess was made before `cutoff_ms`,
    /// with their generation.
    pub fn expired_exhausted(&self, cutoff_ms: u64) -> Vec<(String, u64)> {
        let found = || -> Result<Vec<(String, u64)>, DbError> {
            let due = self
                .txn
                .open_table(DUE_EXHAUSTED)
                .map_err(|e| self.engine(e))?;
            let mut out = Vec::new();
            for entry in due.range(..(cutoff_ms, "")).map_err(|e| self.engine(e))? {
                let (key, _) = entry.map_err(|e| self.engine(e))?;
                let account = key.value().1.to_owned();
                if let Some(row) = self.row::<RecordRow>(RECORDS, &account)? {
                    out.push((account, row.generation));
                }
            }
            Ok(out)
        };
        found().unwrap_or_else(|e| self.fail(e))
    }

    /// Whether any attempt has expired by `now_ms` (join tickets: [`Summary`]).
    pub fn any_expired_attempt(&self, now_ms: u64) -> bool {
        let found = || -> Result<bool, DbError> {
            let due = self
                .txn
                .open_table(DUE_ATTEMPTS)
                .map_err(|e| self.engine(e))?;
            let first = due.first().map_err(|e| self.engine(e))?;
            Ok(first.is_some_and(|(k, _)| k.value().0 <= now_ms))
        };
        found().unwrap_or_else(|e| self.fail(e))
    }

    /// Writes every account to `out`: first those with a record, lower node by lower
    /// node (each node's leaves give the records' keys), then those without one.
    fn stream<W: Write>(&self, out: &mut StreamWriter<W>) -> Result<(), DbError> {
        let records = self.txn.open_table(RECORDS).map_err(|e| self.engine(e))?;
        let mut with_record = 0;
        for &bucket in self.keys.lower.keys() {
            for (name, leaf) in self.bucket(bucket)? {
                let Some(row) = records.get(name.as_str()).map_err(|e| self.engine(e))? else {
                    // A leaf whose record is gone holds nothing to send.
                    continue;
                };
                let row: RecordRow =
                    decode(RECORDS.name(), row.value()).map_err(|e| self.tree(e))?;
                let record = record_of(&name, row, &leaf.key).map_err(|e| self.tree(e))?;
                let held = self.held(&name, Some(record))?;
                out.account(name, held).map_err(DbError::Stream)?;
                with_record += 1;
            }
        }
        let total = records.len().map_err(|e| self.engine(e))?;
        if with_record != total {
            return Err(self.tree(TreeError::Decode(format!(
                "{} of {total} records have no leaf in the key tree",
                total - with_record
            ))));
        }
        // The rest: an account is sent from the first of these tables that has it.
        let tables = [HISTORY, ATTEMPTS, ANCHORS];
        for (i, def) in tables.iter().enumerate() {
            let table = self.txn.open_table(*def).map_err(|e| self.engine(e))?;
            for entry in table.iter().map_err(|e| self.engine(e))? {
                let (key, _) = entry.map_err(|e| self.engine(e))?;
                let name = key.value();
                if records.get(name).map_err(|e| self.engine(e))?.is_some() {
                    continue;
                }
                let mut sent_before = false;
                for earlier in &tables[..i] {
                    let earlier = self.txn.open_table(*earlier).map_err(|e| self.engine(e))?;
                    sent_before |= earlier.get(name).map_err(|e| self.engine(e))?.is_some();
                }
                if sent_before {
                    continue;
                }
                let held = self.held(name, None)?;
                out.account(name.to_owned(), held)
                    .map_err(DbError::Stream)?;
            }
        }
        Ok(())
    }

    /// The whole state, in memory (a copy's inspection, tests).
    fn everything(&self) -> Result<VaultState, DbError> {
        let mut names = BTreeSet::new();
        for def in [RECORDS, HISTORY, ATTEMPTS, ANCHORS] {
            let table = self.txn.open_table(def).map_err(|e| self.engine(e))?;
            for entry in table.iter().map_err(|e| self.engine(e))? {
                let (key, _) = entry.map_err(|e| self.engine(e))?;
                names.insert(key.value().to_owned());
            }
        }
        let mut state = VaultState::default();
        let mut buckets = HashMap::new();
        for name in names {
            let held = self.try_account(&name, Some(&mut buckets))?;
            state.insert_account(&name, &held);
        }
        let meta = self.txn.open_table(META).map_err(|e| self.engine(e))?;
        if let Some(bytes) = meta.get(MEMBERS).map_err(|e| self.engine(e))? {
            state.set_members(decode("members", bytes.value()).map_err(|e| self.tree(e))?);
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::epoch::EpochSealer;
    use crate::seal::KeyFileSealer;
    use crate::state::tests::{arbitrary_command, new_record};
    use crate::state::{self, Applied, Command, NewRecord, Place};
    use std::sync::Arc;

    struct Fixture {
        _root: tempfile::TempDir,
        dir: PathBuf,
        key_root: KeyRootFile,
        db: RecordDb,
    }

    fn fixture() -> Fixture {
        let root = tempfile::tempdir().unwrap();
        let node = Arc::new(KeyFileSealer::open_or_create(root.path().join("node.key")).unwrap());
        let dir = root.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        let key_root = KeyRootFile::new(&dir, Arc::new(EpochSealer::open(node).unwrap()));
        let db = RecordDb::open(&dir, &key_root).unwrap();
        Fixture {
            _root: root,
            dir,
            key_root,
            db,
        }
    }

    impl Fixture {
        fn apply(&self, command: Command, index: u64) -> Applied {
            self.db
                .write(&self.key_root, false, |w| {
                    state::apply(w, command, Place { index, position: 0 })
                })
                .unwrap()
        }

        fn reopen(self) -> Self {
            let Fixture {
                _root,
                dir,
                key_root,
                db,
            } = self;
            drop(db);
            let db = RecordDb::open(&dir, &key_root).unwrap();
            Fixture {
                _root,
                dir,
                key_root,
                db,
            }
        }
    }

    fn register(account: &str, file: &[u8]) -> Command {
        Command::Register {
            account: account.into(),
            record: NewRecord {
                password_file: file.to_vec(),
                ..new_record(3)
            },
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// The database and the state in memory (the model the rules were written
        /// against) answer every command alike and hold the same state after it, also
        /// across a reopen; the sweeper's queries agree.
        #[test]
        fn the_database_applies_commands_as_the_state_in_memory_does(
            commands in proptest::collection::vec(arbitrary_command(), 1..40),
            probes in proptest::collection::vec(0u64..500, 3),
        ) {
            let mut fx = fixture();
            let mut model = VaultState::default();
            for (i, command) in commands.into_iter().enumerate() {
                let place = Place { index: i as u64, position: 0 };
                let expected = model.apply(command.clone(), place);
                proptest::prop_assert_eq!(fx.apply(command, i as u64), expected);
                if i % 7 == 6 {
                    fx = fx.reopen();
                }
            }
            let (held, _) = fx.db.export(&fx.key_root, |_| {}).unwrap();
            proptest::prop_assert_eq!(&held, &model);
            for now in probes {
                let (mut exhausted, expired) = fx
                    .db
                    .read(|v| (v.expired_exhausted(now), v.any_expired_attempt(now)))
                    .unwrap();
                exhausted.sort();
                let mut want = model.expired_exhausted(now);
                want.sort();
                proptest::prop_assert_eq!(exhausted, want);
                proptest::prop_assert_eq!(
                    expired || model.members().any_expired(now),
                    model.any_expired_attempt(now)
                );
            }
        }
    }

    /// What an attacker holding an old copy of the file and the live tree's keys (the
    /// live token, the live key root) tries: the nodes on an erased record's path, as
    /// the copy holds them, open under no key the live tree holds, and the copy's
    /// record row opens under none of the live leaves. Before the erasure the same
    /// attack opens the row (so the test can fail).
    #[test]
    fn an_erased_records_path_opens_under_no_live_key() {
        let fx = fixture();
        const SECRET: &[u8] = b"erased-password-file-7d41";
        assert!(matches!(
            fx.apply(register("alice", SECRET), 1),
            Applied::Stored { .. }
        ));
        fx.apply(register("bob", b"bob"), 2);
        // Durable first: a copy of the file shows the last durable commit.
        fx.db.export(&fx.key_root, |_| {}).unwrap();
        let copy = fx.dir.join("copy.redb");
        std::fs::copy(fx.dir.join(DB_FILE), &copy).unwrap();
        let old = Database::open(&copy).unwrap();
        let old = old.begin_read().unwrap();
        let old_nodes = old.open_table(NODES).unwrap();
        let old_row: RecordRow = {
            let records = old.open_table(RECORDS).unwrap();
            let row = records.get("alice").unwrap().unwrap();
            postcard::from_bytes(row.value()).unwrap()
        };
        let keys = fx.db.keys.read().unwrap();
        let bucket = keys.bucket("alice");
        let upper = (bucket >> 8) as u8;
        let opens_now = |keys: &Keys| {
            let sealed = old_nodes.get(node_id(2, bucket)).unwrap().unwrap();
            let leaves = open_bucket(&keys.lower[&bucket], bucket, sealed.value()).unwrap();
            record_of(
                "alice",
                postcard::from_bytes(&encode(&old_row)).unwrap(),
                &leaves["alice"].key,
            )
            .unwrap()
            .password_file
        };
        assert_eq!(
            opens_now(&keys),
            SECRET,
            "the attack works before the erasure"
        );
        drop(keys);

        let erase = Command::Erase {
            account: "alice".into(),
            generation: 1,
            reason: crate::state::EraseReason::Owner,
        };
        assert_eq!(fx.apply(erase, 3), Applied::Erased);
        let keys = fx.db.keys.read().unwrap();
        let live: Vec<&TreeKey> = std::iter::once(&keys.root)
            .chain(keys.upper.values())
            .chain(keys.lower.values())
            .collect();
        let path = [
            (
                0,
                0,
                old_nodes
                    .get(node_id(0, 0))
                    .unwrap()
                    .unwrap()
                    .value()
                    .to_vec(),
            ),
            (
                1,
                u16::from(upper),
                old_nodes
                    .get(node_id(1, upper.into()))
                    .unwrap()
                    .unwrap()
                    .value()
                    .to_vec(),
            ),
            (
                2,
                bucket,
                old_nodes
                    .get(node_id(2, bucket))
                    .unwrap()
                    .unwrap()
                    .value()
                    .to_vec(),
            ),
        ];
        for (level, prefix, sealed) in &path {
            for key in &live {
                assert!(
                    key.open(&node_context(*level, *prefix), sealed).is_err(),
                    "node {level}/{prefix} of the old copy opens under a live key"
                );
            }
        }
        // Bob, in another bucket or the same one, still opens.
        drop(keys);
        let bob = fx.db.read(|v| v.record("bob")).unwrap().unwrap();
        assert_eq!(bob.password_file, b"bob");
        assert!(fx.db.read(|v| v.record("alice")).unwrap().is_none());
        // The key root holds the live tree's root only.
        let live_id = fx.db.keys.read().unwrap().head.id;
        let roots = fx.key_root.root(live_id).unwrap();
        assert!(roots.is_some());
    }

    /// A replacement that keeps the record id is a new registration: a new leaf, the
    /// old one erased with its path.
    #[test]
    fn a_replacement_erases_the_old_leaf() {
        let fx = fixture();
        fx.apply(register("erin", b"old"), 1);
        let id_before = fx.db.keys.read().unwrap().head.id;
        let replaced = fx.apply(
            Command::Replace {
                account: "erin".into(),
                generation: 1,
                record: NewRecord {
                    password_file: b"new".to_vec(),
                    ..new_record(3)
                },
            },
            2,
        );
        assert!(matches!(replaced, Applied::Stored { generation: 2, .. }));
        assert_ne!(
            fx.db.keys.read().unwrap().head.id,
            id_before,
            "the root was not replaced"
        );
        // A count change keeps the leaf (no erasure, no new root).
        let id = fx.db.keys.read().unwrap().head.id;
        fx.apply(
            Command::Attempt {
                account: "erin".into(),
                generation: 2,
                now_ms: 5,
            },
            3,
        );
        assert_eq!(fx.db.keys.read().unwrap().head.id, id);
        let fx = fx.reopen();
        let erin = fx.db.read(|v| v.record("erin")).unwrap().unwrap();
        assert_eq!(
            (erin.password_file.as_slice(), erin.attempts_left),
            (&b"new"[..], 2)
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// The power goes at any operation of the disk, in the middle of a commit or
        /// between two, and a power loss keeps any subset of the writes not yet synced:
        /// the database opens again (its key root too) and holds exactly the state after
        /// some command from the last durable one on, never a mix, never less.
        #[test]
        fn a_power_cut_leaves_the_state_after_a_whole_command(
            commands in proptest::collection::vec(arbitrary_command(), 1..30),
            durable_every in 1usize..6,
            fail_fraction in 0.0f64..1.0,
            keep_seed: u64,
        ) {
            use rand::{Rng, SeedableRng};
            use super::super::power_cut::CutDisk;
            // How many disk operations the whole run takes, to cut somewhere inside it.
            let run = |disk: &CutDisk, fx: &Fixture| {
                let db = RecordDb::open_on(&fx.dir, &fx.key_root, disk.clone())?;
                let mut model = VaultState::default();
                let mut states = vec![model.clone()];
                let mut durable = 0;
                for (i, command) in commands.iter().enumerate() {
                    let place = Place { index: i as u64, position: 0 };
                    let applied = db.write(&fx.key_root, false, |w| {
                        state::apply(w, command.clone(), place)
                    });
                    if applied.is_err() {
                        return Ok::<_, DbError>((states, durable, true));
                    }
                    model.apply(command.clone(), place);
                    states.push(model.clone());
                    if (i + 1) % durable_every == 0 {
                        if db.make_durable(&fx.key_root, |_| {}).is_err() {
                            return Ok((states, durable, true));
                        }
                        durable = i + 1;
                    }
                }
                Ok((states, durable, false))
            };
            // A new database is made whole before it is used (`RecordDb::open`): the
            // power may go from the first operation after that.
            let made = |fx: &Fixture| {
                let disk = CutDisk::new(None);
                drop(RecordDb::open_on(&fx.dir, &fx.key_root, disk.clone()).unwrap());
                disk
            };
            let whole = fixture();
            let counter = made(&whole);
            let before = counter.ops();
            run(&counter, &whole).unwrap();
            let fail_after = 1 + ((counter.ops() - before) as f64 * fail_fraction) as u64;

            let fx = fixture();
            let disk = made(&fx);
            disk.fail_after(fail_after);
            let Ok((states, durable, _)) = run(&disk, &fx) else {
                // The power went while the database opened: it opens on the same disk
                // once it is back, empty.
                let again = disk.after_cut(|| true);
                let db = RecordDb::open_on(&fx.dir, &fx.key_root, again).unwrap();
                let (held, _) = db.export(&fx.key_root, |_| {}).unwrap();
                proptest::prop_assert_eq!(held, VaultState::default());
                return Ok(());
            };
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(keep_seed);
            let again = disk.after_cut(|| rng.gen_bool(0.5));
            let db = RecordDb::open_on(&fx.dir, &fx.key_root, again).unwrap();
            let (held, _) = db.export(&fx.key_root, |_| {}).unwrap();
            let matching: Vec<usize> = (0..states.len()).filter(|&k| states[k] == held).collect();
            proptest::prop_assert!(
                matching.iter().any(|&k| k >= durable),
                "the state after the cut is none of the states from command {durable} on (it matches {matching:?} of {})",
                states.len() - 1
            );
        }
    }

    /// A damaged row is an error that names the file, never a wrong answer.
    #[test]
    fn a_damaged_record_row_is_an_error_not_an_answer() {
        let fx = fixture();
        fx.apply(register("alice", b"file"), 1);
        {
            let txn = fx.db.db.begin_write().unwrap();
            {
                let mut records = txn.open_table(RECORDS).unwrap();
                let mut row: RecordRow =
                    postcard::from_bytes(records.get("alice").unwrap().unwrap().value()).unwrap();
                let last = row.sealed.len() - 1;
                row.sealed[last] ^= 1;
                records.insert("alice", encode(&row).as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let err = fx.db.read(|v| v.record("alice")).unwrap_err();
        assert!(err.to_string().contains(DB_FILE), "{err}");
        assert!(err.to_string().contains("restore this replica"), "{err}");
    }
}
