//! `copy`: a snapshot of another repository made a snapshot of this one, without a
//! restore in between.
//!
//! The source's trees are read a directory at a time and each file's content a
//! batch of chunks at a time; the content is chunked again under this repository's
//! key (so it deduplicates against what this repository holds), compressed as this
//! repository says, and sealed into packs of its own; the trees are built again as
//! the nodes go by. The snapshot keeps the source's time, host, paths, tags and
//! what it left out, and records where it came from (§Snapshot metadata,
//! `original`), so a second copy skips it. What is held is one pack being filled,
//! one batch of chunks, the directories open along one path, and the index entries
//! of the packs written since the last index object, as in a backup. The commit
//! order is a backup's: packs, index objects, index set, snapshot, each durable
//! before the next.

use crate::{
    backup::NewChunks,
    browse::{repo_error, Content, SnapshotTrees},
    error::{RepoError, Result},
    select::SnapshotInfo,
    Indexed, Repository,
};
use backlock_core::{
    blob::BlobEncoder,
    chunker::{ChunkSource, Chunker, PageChunks},
    envelope::{ObjectKind, PackSealer},
    format::{self, BlobEntry, Compression, NodeKind, Original, PackEntry, Snapshot},
    ids::{ChunkId, ObjectName},
    tree::{EntryKind, TreeBuilder},
};
use serde::Serialize;

/// Packs written between two index objects.
const INDEX_EVERY_PACKS: usize = 8;

/// One snapshot `copy` made.
#[derive(Clone, Debug, Serialize)]
pub struct CopiedSnapshot {
    /// The source snapshot's name.
    pub source: String,
    /// The new snapshot's name here, and its sequence number.
    pub snapshot: String,
    /// Its sequence number.
    pub seq: u64,
    /// Bytes of its files.
    pub bytes_total: u64,
    /// Bytes of chunks this repository did not have.
    pub bytes_new: u64,
    /// Bytes written to the store.
    pub bytes_stored: u64,
}

/// Data chunks of the snapshot being copied, sealed into packs as they come.
struct Packer<'a> {
    repo: &'a Repository<Indexed>,
    encoder: BlobEncoder,
    new: NewChunks,
    open: Option<(ObjectName, PackSealer, Vec<BlobEntry>)>,
    /// Packs written and not yet in an index object.
    pending: Vec<PackEntry>,
    /// Index objects written.
    indexes: Vec<ObjectName>,
    bytes_new: u64,
    bytes_stored: u64,
}

impl Packer<'_> {
    /// Stores `data` unless the repository has it; returns its ID here.
    fn add(&mut self, data: &[u8]) -> Result<ChunkId> {
        let repo = self.repo;
        let id = ChunkId::compute(&repo.keys, data);
        if repo.state.index.contains(&id) || !self.new.insert(id)? {
            return Ok(id);
        }
        self.bytes_new += data.len() as u64;
        let pack_size = repo.config.pack_size as usize;
        // An encoded chunk is never longer than the chunk and its codec byte.
        if self
            .open
            .as_ref()
            .is_some_and(|(_, s, _)| s.len() + data.len() + 1 > pack_size)
        {
            self.seal()?;
        }
        let compress = repo.config.compression != Compression::Off;
        let (codec, payload) = self.encoder.encode_auto_parts(data, compress);
        let (_, sealer, blobs) = self.open.get_or_insert_with(|| {
            let name = ObjectName::random();
            (
                name,
                PackSealer::new(&repo.keys, &name.to_hex(), pack_size),
                Vec::new(),
            )
        });
        let place = sealer.push_parts(&id, &[&[codec], payload]);
        blobs.push(BlobEntry {
            id,
            seq: place.seq,
            offset: place.offset,
            length: place.length,
            raw_length: data.len() as u32,
            base: None,
        });
        Ok(id)
    }

    /// Stores the pack being filled; every few packs, an index object naming them.
    fn seal(&mut self) -> Result<()> {
        if let Some((name, sealer, blobs)) = self.open.take() {
            let bytes = sealer.finish();
            self.bytes_stored += bytes.len() as u64;
            self.repo
                .store
                .put(ObjectKind::Pack, &name.to_hex(), &bytes)?;
            self.pending.push(PackEntry { pack: name, blobs });
        }
        if self.pending.len() >= INDEX_EVERY_PACKS {
            self.write_index(Vec::new())?;
        }
        Ok(())
    }

    /// Writes an index object of the pending packs and `more` (flushed first).
    fn write_index(&mut self, more: Vec<PackEntry>) -> Result<()> {
        let mut packs = std::mem::take(&mut self.pending);
        packs.extend(more);
        if packs.is_empty() {
            return Ok(());
        }
        let (names, n) = self.repo.write_index_objects(packs)?;
        self.indexes.extend(names);
        self.bytes_stored += n;
        Ok(())
    }
}

impl Repository<Indexed> {
    /// The snapshots of repository `source_id` already copied here, by their name
    /// there.
    pub fn copied_from(&self, source_id: &ObjectName) -> Result<Vec<ObjectName>> {
        let mut copied = Vec::new();
        let ignored = self.authentic_snapshots(|_, snap| {
            if let Ok(Some(o)) = snap.original() {
                if o.repo == *source_id {
                    copied.push(o.snapshot);
                }
            }
            Ok(())
        })?;
        crate::refuse_unauthentic(&ignored)?;
        Ok(copied)
    }

    /// Copies snapshot `info` of `source` into this repository as its newest
    /// snapshot (see the module's doc). Consumes the repository, as a backup does:
    /// open it again for the next.
    pub fn copy_snapshot(
        self,
        source: &Repository<Indexed>,
        info: &SnapshotInfo,
    ) -> Result<CopiedSnapshot> {
        self.state.live.writable()?;
        self.check_writer_level()?;
        let newest = self.newest_snapshot()?;
        let seq = newest.snapshot.as_ref().map_or(1, |(r, _)| r.seq + 1);
        let parent = newest.snapshot.as_ref().map(|(r, _)| r.name);
        let source_snap = source.load_snapshot(&info.snapshot_ref())?;
        let mut trees = SnapshotTrees::of(source, &info.id, source_snap.clone())?;
        let mut reader =
            crate::bases::BaseReader::new(&*source.store, &source.keys, &source.state.index);
        let chunker = Chunker::new(&self.keys, self.config.chunker);
        let mut packer = Packer {
            repo: &self,
            encoder: match self.config.compression {
                Compression::Max => BlobEncoder::max(),
                _ => BlobEncoder::new(),
            }
            .map_err(|e| RepoError::Usage(format!("compression failed: {e}")))?,
            new: NewChunks::new(self.spill()),
            open: None,
            pending: Vec::new(),
            indexes: Vec::new(),
            bytes_new: 0,
            bytes_stored: 0,
        };
        let mut tree_packer = self.tree_packer()?;
        let mut builder = TreeBuilder::new(&self.keys);
        let mut summary = format::Summary::default();
        let mut chunk = Vec::new();
        let root = trees.root.clone();
        trees.walk(&[], &root, &mut |path, entry| {
            self.state.lock.refresh_if_due()?;
            let (mut node, _) = entry.clone().into_node(path.to_vec());
            let source_chunks = match &entry.kind {
                EntryKind::File(c) | EntryKind::SqliteFile(c) => Some(c),
                _ => None,
            };
            if let Some(chunks) = source_chunks {
                let content = Content::new(&mut reader, chunks, entry.size, path);
                let mut ids = Vec::new();
                // A database's runs of pages keep their length: the source's first.
                let run = match node.kind {
                    NodeKind::SqliteFile if chunks.len() > 1 => source
                        .state
                        .index
                        .get(&chunks[0])
                        .map(|l| l.blob.raw_length as usize),
                    _ => None,
                };
                let mut source: Box<dyn ChunkSource> = match run {
                    Some(run) => Box::new(PageChunks::new(content, run)),
                    None => Box::new(chunker.stream_with(content, Vec::new())),
                };
                while source
                    .next_into(&mut chunk)
                    .map_err(|e| copy_read_error(e, path))?
                {
                    ids.push(packer.add(&chunk)?);
                }
                node.chunks = ids;
            }
            summary.add(&node);
            tree_packer.push(&mut builder, node)?;
            Ok(true)
        })?;
        let root = tree_packer.finish_trees(builder)?;
        packer.seal()?;
        let (tree_packs, tree_bytes) = tree_packer.finish()?;
        packer.bytes_stored += tree_bytes;
        packer.write_index(tree_packs)?;
        let indexes = std::mem::take(&mut packer.indexes);
        let (bytes_new, mut bytes_stored) = (packer.bytes_new, packer.bytes_stored);
        drop(packer);
        self.write_index_set(&indexes)?;

        let mut snapshot = Snapshot {
            seq,
            parent,
            time_unix_ns: source_snap.time_unix_ns,
            hostname: source_snap.hostname.clone(),
            paths: source_snap.paths.clone(),
            meta: Default::default(),
            nodes: Vec::new(),
            root,
        };
        snapshot.set_summary(&summary);
        snapshot.set_tags(&info.tags);
        // What the source said of its content travels with it (the WhatsApp header
        // lets an export from the copy write the same header).
        for key in [format::META_INCOMPLETE, format::META_WHATSAPP] {
            if let Some(value) = source_snap.meta.get(key) {
                snapshot.meta.insert(key.to_owned(), value.clone());
            }
        }
        snapshot.set_original(&Original {
            repo: source.config.repo_id,
            snapshot: info.snapshot_ref().name,
        });
        let (name, sealed_len) = self.commit_snapshot(snapshot, None)?;
        bytes_stored += sealed_len;
        self.home.record(&self.id(), seq)?;
        Ok(CopiedSnapshot {
            source: info.id.clone(),
            snapshot: name.to_hex(),
            seq,
            bytes_total: summary.bytes,
            bytes_new,
            bytes_stored,
        })
    }
}

/// A failure to read the source while copying: its repository's error.
fn copy_read_error(e: std::io::Error, path: &[u8]) -> RepoError {
    repo_error(e, &|e| {
        RepoError::Usage(format!(
            "the source's copy of /{} could not be read: {e}",
            String::from_utf8_lossy(path)
        ))
    })
}
