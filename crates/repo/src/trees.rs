//! A snapshot's trees (docs/FORMAT.md §Trees): read back into the nodes every command
//! works on, and written, as blobs in packs of their own, by a backup or a rotation.

use crate::{
    bases::bad_base,
    cache::RepoCache,
    error::{RepoError, Result},
    index::{decode_chunk, open_blob_at, Index},
};
use backlock_core::{
    blob::{BlobDecoder, BlobEncoder},
    envelope::{ObjectKind, PackOpener, PackSealer, HEADER_LEN},
    format::{BlobEntry, Node, PackEntry, Snapshot},
    ids::{ChunkId, ObjectName},
    kdf::RepoKeys,
    tree::{self, Tree, TreeBuilder},
    FormatError,
};
use backlock_store::ObjectStore;
use std::{
    collections::{HashSet, VecDeque},
    os::unix::fs::FileExt,
};

/// Why reading or writing trees stopped: the trees themselves (reported against the
/// snapshot), or anything else.
pub(crate) enum TreeFailure {
    Format(FormatError),
    Repo(RepoError),
}

impl From<FormatError> for TreeFailure {
    fn from(e: FormatError) -> Self {
        TreeFailure::Format(e)
    }
}

impl From<RepoError> for TreeFailure {
    fn from(e: RepoError) -> Self {
        TreeFailure::Repo(e)
    }
}

impl TreeFailure {
    pub(crate) fn into_repo(self, snapshot: &str) -> RepoError {
        match self {
            TreeFailure::Format(source) => RepoError::Damaged {
                kind: "snapshot",
                name: snapshot.to_owned(),
                source,
            },
            TreeFailure::Repo(e) => e,
        }
    }
}

/// Fills `snap.nodes` from its trees (a version-3 snapshot; one of an earlier version
/// holds its nodes already) and returns the IDs of the trees read, which the snapshot
/// needs kept as much as its files' chunks. `name` names it in errors. Tree packs are
/// read whole, through `cache` when given.
pub(crate) fn read_nodes(
    store: &dyn ObjectStore,
    keys: &RepoKeys,
    index: &Index,
    cache: Option<&RepoCache>,
    name: &str,
    snap: &mut Snapshot,
) -> Result<Vec<ChunkId>> {
    let mut nodes = Vec::new();
    let trees = for_each_node(store, keys, index, cache, name, snap, &mut |node| {
        nodes.push(node);
        Ok(())
    })?;
    snap.nodes = nodes;
    Ok(trees)
}

/// Gives each node of `snap` to `each`, in walk order, reading its trees one at a
/// time (a version-3 snapshot) or taking the nodes it holds; returns the IDs of the
/// trees read. `name` names the snapshot in errors.
pub(crate) fn for_each_node(
    store: &dyn ObjectStore,
    keys: &RepoKeys,
    index: &Index,
    cache: Option<&RepoCache>,
    name: &str,
    snap: &mut Snapshot,
    each: &mut dyn FnMut(Node) -> Result<()>,
) -> Result<Vec<ChunkId>> {
    let reader = TreeReader::new(store, keys, index, cache);
    for_each_node_unseen(reader, name, snap, each, None)
}

/// [`for_each_node`] for a command that goes through every snapshot for the chunks in
/// use (check, prune): a directory whose tree `seen` has been through is given to
/// `each` but not entered, so a snapshot that shares most of its directories with an
/// earlier one costs the directories that changed.
pub(crate) fn for_each_node_unseen(
    mut reader: TreeReader<'_>,
    name: &str,
    snap: &mut Snapshot,
    each: &mut dyn FnMut(Node) -> Result<()>,
    mut seen: Option<&mut SeenTrees>,
) -> Result<Vec<ChunkId>> {
    if snap.root.is_empty() {
        for node in std::mem::take(&mut snap.nodes) {
            each(node)?;
        }
        return Ok(Vec::new());
    }
    let mut trees = Vec::new();
    let walked = tree::walk_entering(
        &snap.root,
        &mut |id: &ChunkId| -> Result<Vec<u8>, TreeFailure> {
            crate::interrupt::check()?;
            trees.push(*id);
            Ok(reader.read(id)?)
        },
        &mut |node: Node| -> Result<(), TreeFailure> { Ok(each(node)?) },
        &mut |parts: &[ChunkId]| seen.as_deref_mut().is_none_or(|s| s.enter(parts)),
    );
    walked.map_err(|e| e.into_repo(name))?;
    Ok(trees)
}

/// Directories gone through (by their one tree) by a command reading every snapshot,
/// so that a later copy is not entered again. The directories of the snapshot being
/// read count once [`SeenTrees::keep`] accepts them (check keeps only what it found
/// whole, so that each damaged snapshot is still reported). At most [`SEEN_TREES`]
/// directories are remembered; past that the others are read again.
#[derive(Default)]
pub(crate) struct SeenTrees {
    kept: HashSet<ChunkId>,
    pending: HashSet<ChunkId>,
}

/// Directories [`SeenTrees`] remembers at most: about 12 MiB.
pub(crate) const SEEN_TREES: usize = 1 << 18;

impl SeenTrees {
    /// False for a directory of one tree gone through already; otherwise true, and the
    /// tree is remembered as pending. A directory split into several trees (a very
    /// large one) is always entered.
    fn enter(&mut self, parts: &[ChunkId]) -> bool {
        let [tree] = parts else {
            return true;
        };
        if self.kept.contains(tree) || self.pending.contains(tree) {
            return false;
        }
        if self.kept.len() + self.pending.len() < SEEN_TREES {
            self.pending.insert(*tree);
        }
        true
    }

    /// The pending directories count as gone through from now on.
    pub(crate) fn keep(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.kept.extend(pending);
    }

    /// The pending directories are forgotten: later snapshots enter them again.
    pub(crate) fn forget(&mut self) {
        self.pending.clear();
    }
}

/// Tree packs kept in memory while a snapshot's trees are read. A walk reads each
/// directory's tree once, mostly in the order the packs were written (a backup
/// stores trees as it leaves directories), so a few suffice; a pack dropped too soon
/// is read again from the local cache, and each kept one is up to a pack's size.
const PACKS_KEPT: usize = 3;
/// Cached tree packs kept open for ranged reads.
const CACHED_OPEN: usize = 8;

/// Reads trees from their packs, each pack fetched whole once (a tree pack holds only
/// trees, a backup's worth of changed directories), so a snapshot of thousands of
/// directories costs a few requests, and none with a warm cache. A pack the local
/// cache holds is read a tree at a time from there, so memory holds one tree, not
/// packs of them.
pub(crate) struct TreeReader<'a> {
    store: &'a dyn ObjectStore,
    keys: &'a RepoKeys,
    index: &'a Index,
    cache: Option<&'a RepoCache>,
    /// The packs read last: name, opener and sealed bytes.
    packs: VecDeque<(ObjectName, PackOpener, Vec<u8>)>,
    /// Cached packs opened last: name, opener and file.
    cached: VecDeque<(ObjectName, PackOpener, std::fs::File)>,
    decoder: BlobDecoder,
}

impl<'a> TreeReader<'a> {
    pub(crate) fn new(
        store: &'a dyn ObjectStore,
        keys: &'a RepoKeys,
        index: &'a Index,
        cache: Option<&'a RepoCache>,
    ) -> Self {
        TreeReader {
            store,
            keys,
            index,
            cache,
            packs: VecDeque::new(),
            cached: VecDeque::new(),
            decoder: BlobDecoder::new(),
        }
    }

    /// The entries of the directory whose tree is `parts`, checked as a walk checks
    /// them (names ascend across parts too). `snapshot` names the snapshot in errors.
    pub(crate) fn read_dir(&mut self, parts: &[ChunkId], snapshot: &str) -> Result<Tree> {
        let mut dir = Tree::default();
        for id in parts {
            let part = Tree::decode(&self.read(id)?);
            part.and_then(|part| dir.append_part(part))
                .map_err(|e| TreeFailure::from(e).into_repo(snapshot))?;
        }
        Ok(dir)
    }

    /// The plaintext of tree `id`, checked against its ID.
    fn read(&mut self, id: &ChunkId) -> Result<Vec<u8>> {
        let loc = self
            .index
            .get(id)
            .ok_or_else(|| bad_base(id, "a tree is in no index object"))?;
        if loc.blob.base.is_some() {
            return Err(bad_base(id, "a tree is stored as a delta"));
        }
        if let Some(at) = self.packs.iter().position(|(n, ..)| *n == loc.pack) {
            return self.open(at, &loc.blob);
        }
        let name = loc.pack.to_hex();
        // A cached copy serves if the blob authenticates in it; else the store's.
        if let Some(cache) = self.cache {
            match self.read_cached(cache, loc.pack, &loc.blob) {
                Some(Ok(tree)) => return Ok(tree),
                Some(Err(_)) => {
                    self.cached.retain(|(n, ..)| *n != loc.pack);
                    cache.forget(ObjectKind::Pack, &name);
                }
                None => {}
            }
        }
        let sealed = self.store.get(ObjectKind::Pack, &name)?;
        let at = self.keep(loc.pack, sealed)?;
        let tree = self.open(at, &loc.blob)?;
        if let Some(cache) = self.cache {
            cache.write(ObjectKind::Pack, &name, &self.packs[at].2);
        }
        Ok(tree)
    }

    /// Tree `blob` of `pack` read from the cache's copy, if it has one.
    fn read_cached(
        &mut self,
        cache: &RepoCache,
        pack: ObjectName,
        blob: &BlobEntry,
    ) -> Option<Result<Vec<u8>>> {
        let name = pack.to_hex();
        let damaged = |e: std::io::Error| {
            let truncated = backlock_core::FormatError::Malformed {
                what: "cached pack",
                detail: e.to_string(),
            };
            RepoError::damaged(ObjectKind::Pack, &name, truncated)
        };
        let at = match self.cached.iter().position(|(n, ..)| *n == pack) {
            Some(at) => at,
            None => {
                let file = cache.open(ObjectKind::Pack, &name)?;
                let mut header = [0u8; HEADER_LEN];
                if let Err(e) = file.read_exact_at(&mut header, 0) {
                    return Some(Err(damaged(e)));
                }
                let opener = match PackOpener::new(self.keys, &name, &header) {
                    Ok(opener) => opener,
                    Err(e) => return Some(Err(RepoError::damaged(ObjectKind::Pack, &name, e))),
                };
                if self.cached.len() == CACHED_OPEN {
                    self.cached.pop_front();
                }
                self.cached.push_back((pack, opener, file));
                self.cached.len() - 1
            }
        };
        let (_, opener, file) = &self.cached[at];
        let mut sealed = vec![0u8; blob.length as usize];
        if let Err(e) = file.read_exact_at(&mut sealed, blob.offset) {
            return Some(Err(damaged(e)));
        }
        Some(
            open_blob_at(opener, &name, &sealed, blob.offset, blob).and_then(|encoded| {
                let tree = decode_chunk(&mut self.decoder, self.keys, &name, &encoded, blob, None)?;
                Ok(tree.into_owned())
            }),
        )
    }

    /// Keeps pack `pack`'s bytes, dropping the one read longest ago; returns its place.
    fn keep(&mut self, pack: ObjectName, sealed: Vec<u8>) -> Result<usize> {
        let name = pack.to_hex();
        let header = sealed.get(..HEADER_LEN).unwrap_or(&sealed);
        let opener = PackOpener::new(self.keys, &name, header)
            .map_err(|e| RepoError::damaged(ObjectKind::Pack, &name, e))?;
        if self.packs.len() == PACKS_KEPT {
            self.packs.pop_front();
        }
        self.packs.push_back((pack, opener, sealed));
        Ok(self.packs.len() - 1)
    }

    fn open(&mut self, at: usize, blob: &BlobEntry) -> Result<Vec<u8>> {
        let (pack, opener, sealed) = &self.packs[at];
        let name = pack.to_hex();
        let encoded = open_blob_at(opener, &name, sealed, 0, blob)?;
        let tree = decode_chunk(&mut self.decoder, self.keys, &name, &encoded, blob, None)?;
        Ok(tree.into_owned())
    }
}

/// Stores tree blobs in packs of their own (so that reading a snapshot's trees reads
/// few packs), skipping those the repository already holds.
pub(crate) struct TreePacker<'a> {
    store: &'a dyn ObjectStore,
    keys: &'a RepoKeys,
    index: &'a Index,
    /// Where the packs written are kept too: the next backup reads its parent's
    /// trees from there.
    cache: Option<&'a RepoCache>,
    pack_size: usize,
    written: HashSet<ChunkId>,
    open: Option<(ObjectName, PackSealer, Vec<BlobEntry>)>,
    encoder: BlobEncoder,
    /// The packs stored, for the index.
    pub(crate) packs: Vec<PackEntry>,
    /// Bytes stored.
    pub(crate) bytes: u64,
}

impl<'a> TreePacker<'a> {
    pub(crate) fn new(
        store: &'a dyn ObjectStore,
        keys: &'a RepoKeys,
        index: &'a Index,
        cache: Option<&'a RepoCache>,
        pack_size: usize,
    ) -> Result<Self> {
        Ok(TreePacker {
            store,
            keys,
            index,
            cache,
            pack_size,
            written: HashSet::new(),
            open: None,
            encoder: BlobEncoder::new()
                .map_err(|e| RepoError::Usage(format!("compression failed: {e}")))?,
            packs: Vec::new(),
            bytes: 0,
        })
    }

    /// Stores tree `id` of plaintext `plain` unless the repository has it.
    fn add(&mut self, id: ChunkId, plain: Vec<u8>) -> Result<()> {
        if self.index.contains(&id) || !self.written.insert(id) {
            return Ok(());
        }
        // Never a tree no reader would read (one file of tens of millions of chunks).
        backlock_core::format::check_size("tree", plain.len() as u64, tree::MAX_TREE_BYTES as u64)
            .map_err(|source| RepoError::TooLarge { source })?;
        let (codec, payload) = self.encoder.encode_auto_parts(&plain, true);
        let payload = payload.to_vec();
        let full = self
            .open
            .as_ref()
            .is_some_and(|(_, s, _)| s.len() + 1 + payload.len() > self.pack_size);
        if full {
            let pack = self.open.take().expect("checked");
            self.put(pack)?;
        }
        let (_, sealer, blobs) = self.open.get_or_insert_with(|| {
            let name = ObjectName::random();
            let sealer = PackSealer::new(self.keys, &name.to_hex(), self.pack_size + (1 << 20));
            (name, sealer, Vec::new())
        });
        let place = sealer.push_parts(&id, &[&[codec], &payload]);
        blobs.push(BlobEntry {
            id,
            seq: place.seq,
            offset: place.offset,
            length: place.length,
            raw_length: plain.len() as u32,
            base: None,
        });
        Ok(())
    }

    fn put(
        &mut self,
        (name, sealer, blobs): (ObjectName, PackSealer, Vec<BlobEntry>),
    ) -> Result<()> {
        let bytes = sealer.finish();
        self.store.put(ObjectKind::Pack, &name.to_hex(), &bytes)?;
        if let Some(cache) = self.cache {
            cache.write(ObjectKind::Pack, &name.to_hex(), &bytes);
        }
        self.bytes += bytes.len() as u64;
        self.packs.push(PackEntry { pack: name, blobs });
        Ok(())
    }

    /// Adds the next node of a walk to `builder`, storing the trees it completes.
    pub(crate) fn push(&mut self, builder: &mut TreeBuilder, node: Node) -> Result<()> {
        let mut store =
            |id: ChunkId, plain: Vec<u8>| -> Result<(), TreeFailure> { Ok(self.add(id, plain)?) };
        builder
            .push(node, &mut store)
            .map_err(|e| e.into_repo("(new)"))
    }

    /// Stores the trees `builder` has open; returns the root tree's parts.
    pub(crate) fn finish_trees(&mut self, builder: TreeBuilder) -> Result<Vec<ChunkId>> {
        let mut store =
            |id: ChunkId, plain: Vec<u8>| -> Result<(), TreeFailure> { Ok(self.add(id, plain)?) };
        builder.finish(&mut store).map_err(|e| e.into_repo("(new)"))
    }

    /// The packs stored so far, the open one left unstored (a failed backup indexes
    /// what it uploaded).
    pub(crate) fn abandon(self) -> (Vec<PackEntry>, u64) {
        (self.packs, self.bytes)
    }

    /// Stores the pack left open; returns the packs stored and their bytes.
    pub(crate) fn finish(mut self) -> Result<(Vec<PackEntry>, u64)> {
        if let Some(pack) = self.open.take() {
            self.put(pack)?;
        }
        Ok((self.packs, self.bytes))
    }
}
