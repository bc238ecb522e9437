//! A snapshot's trees (docs/FORMAT.md §Trees): read back into the nodes every command
//! works on, and written, as blobs in packs of their own, by a backup or a rotation.

use crate::{
    bases::BaseReader,
    error::{RepoError, Result},
    index::Index,
};
use backlock_core::{
    blob::BlobEncoder,
    envelope::{ObjectKind, PackSealer},
    format::{BlobEntry, Node, PackEntry, Snapshot},
    ids::{ChunkId, ObjectName},
    kdf::RepoKeys,
    tree::{self, TreeBuilder},
    FormatError,
};
use backlock_store::ObjectStore;
use std::collections::HashSet;

/// Why reading or writing trees stopped: the trees themselves (reported against the
/// snapshot), or anything else.
enum TreeFailure {
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
    fn into_repo(self, snapshot: &str) -> RepoError {
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
/// needs kept as much as its files' chunks. `name` names it in errors.
pub(crate) fn read_nodes(
    store: &dyn ObjectStore,
    keys: &RepoKeys,
    index: &Index,
    name: &str,
    snap: &mut Snapshot,
) -> Result<Vec<ChunkId>> {
    if snap.root.is_empty() {
        return Ok(Vec::new());
    }
    let mut reader = BaseReader::new(store, keys, index);
    let mut trees = Vec::new();
    let mut nodes = Vec::new();
    let walked = tree::walk(
        &snap.root,
        &mut |id: &ChunkId| -> Result<Vec<u8>, TreeFailure> {
            crate::interrupt::check()?;
            trees.push(*id);
            let mut read = reader.read_whole([*id], "a tree")?;
            Ok(read
                .remove(id)
                .expect("read_whole returns what it was asked"))
        },
        &mut |node: Node| -> Result<(), TreeFailure> {
            nodes.push(node);
            Ok(())
        },
    );
    walked.map_err(|e| e.into_repo(name))?;
    snap.nodes = nodes;
    Ok(trees)
}

/// Stores tree blobs in packs of their own (so that reading a snapshot's trees reads
/// few packs), skipping those the repository already holds.
pub(crate) struct TreePacker<'a> {
    store: &'a dyn ObjectStore,
    keys: &'a RepoKeys,
    index: &'a Index,
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
        pack_size: usize,
    ) -> Result<Self> {
        Ok(TreePacker {
            store,
            keys,
            index,
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
        self.bytes += bytes.len() as u64;
        self.packs.push(PackEntry { pack: name, blobs });
        Ok(())
    }

    /// Stores the trees of `nodes` (a walk's nodes, parents first); returns the root
    /// tree's parts. Call [`finish`](Self::finish) after the last snapshot.
    pub(crate) fn store_nodes(
        &mut self,
        nodes: impl IntoIterator<Item = Node>,
    ) -> Result<Vec<ChunkId>> {
        let keys = self.keys;
        let mut builder = TreeBuilder::new(keys);
        let mut store =
            |id: ChunkId, plain: Vec<u8>| -> Result<(), TreeFailure> { Ok(self.add(id, plain)?) };
        let built = (|| {
            for node in nodes {
                builder.push(node, &mut store)?;
            }
            builder.finish(&mut store)
        })();
        built.map_err(|e| e.into_repo("(new)"))
    }

    /// Stores the pack left open; returns the packs stored and their bytes.
    pub(crate) fn finish(mut self) -> Result<(Vec<PackEntry>, u64)> {
        if let Some(pack) = self.open.take() {
            self.put(pack)?;
        }
        Ok((self.packs, self.bytes))
    }
}
