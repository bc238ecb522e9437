//! Key rotation (docs/FORMAT.md §Key rotation): every chunk in use is re-sealed under
//! a new key, every snapshot rewritten, the new generation verified, and only then
//! the config replaced (the commit) and the old generation deleted.
//!
//! While a rotation is in progress, a marker object under each key lists both
//! generations, and each key's readers hide the other generation's objects
//! ([`Hidden`]). Killed at any instant, the repository opens with the old key until
//! the config is replaced, and with the new key from then on.

use crate::{
    backup::NewChunks,
    bases::BaseReader,
    error::{RepoError, Result},
    index::{decode_chunk, open_blob_at, Index},
    testhook::{pause, step},
    trees::{SeenTrees, TreePacker, TreeReader},
    Open, RepoLock, Repository, SnapshotRef,
};
use backlock_core::{
    blob::BlobDecoder,
    envelope::{self, ObjectKind, PackOpener, PackSealer, HEADER_LEN},
    format::{
        self, BlobEntry, IndexFile, Node, ObjectSet, PackEntry, Rotation, Snapshot, CONFIG_NAME,
        ROTATION_PREFIX,
    },
    ids::{ChunkId, ObjectName},
    kdf::RepoKeys,
    key::BackupKey,
    tree::TreeBuilder,
};
use backlock_store::{ObjectInfo, ObjectStore, StoreError};
use serde::Serialize;
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Instant,
};

/// The marker's name for a key: `rotation-<key_id hex>`.
fn marker_name(key_id: &[u8; 16]) -> String {
    format!("{ROTATION_PREFIX}{}", hex::encode(key_id))
}

/// What this key's readers must not see: the other generation of a rotation in
/// progress (nothing when there is none).
#[derive(Debug, Default)]
pub(crate) struct Hidden {
    /// The marker sealed under this key, if any.
    marker: Option<Rotation>,
    names: HashSet<String>,
}

impl Hidden {
    /// Reads the marker sealed under `keys`, if a rotation is in progress.
    pub(crate) fn load(store: &dyn ObjectStore, keys: &RepoKeys) -> Result<Self> {
        let name = marker_name(keys.key_id());
        let sealed = match store.get(ObjectKind::Config, &name) {
            Ok(s) => s,
            Err(StoreError::NotFound { .. }) => return Ok(Hidden::default()),
            Err(e) => return Err(e.into()),
        };
        let damaged = |e| RepoError::damaged(ObjectKind::Config, &name, e);
        let plain = envelope::open(keys, ObjectKind::Config, &name, &sealed).map_err(damaged)?;
        let marker: Rotation = format::decode(&plain, "rotation marker").map_err(damaged)?;
        Ok(Hidden::from_marker(marker, keys.key_id()))
    }

    fn from_marker(marker: Rotation, key_id: &[u8; 16]) -> Self {
        let other = if marker.new_key_id == *key_id {
            &marker.old
        } else {
            &marker.new
        };
        let names = other
            .packs
            .iter()
            .chain(&other.indexes)
            .chain(&other.snapshots)
            .map(ObjectName::to_hex)
            .collect();
        Hidden {
            marker: Some(marker),
            names,
        }
    }

    /// True while a rotation marker exists for this key.
    pub(crate) fn rotating(&self) -> bool {
        self.marker.is_some()
    }

    /// `listing` without the other generation's objects.
    pub(crate) fn filter(&self, mut listing: Vec<ObjectInfo>) -> Vec<ObjectInfo> {
        if !self.names.is_empty() {
            listing.retain(|o| !self.names.contains(&o.name));
        }
        listing
    }
}

/// What a key rotation did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RotateSummary {
    /// Snapshots rewritten under the new key.
    pub snapshots: u64,
    /// Chunks re-sealed under the new key.
    pub chunks: u64,
    /// Pack objects written.
    pub packs_written: u64,
    /// Bytes written (packs, index, snapshots).
    pub bytes_written: u64,
    /// Objects of the old key deleted.
    pub objects_deleted: u64,
    /// True when this run only finished a rotation that had already switched keys.
    pub finished_earlier: bool,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// The new generation, built before anything but packs is written.
struct NewGeneration {
    packs: Vec<PackEntry>,
    chunk_map: ChunkMap,
    bytes: u64,
}

/// Each chunk in use by its ID under the old key, with its ID under the new: sorted
/// pairs, 64 bytes a chunk (a hash map of them peaked at three times that as it grew).
#[derive(Default)]
struct ChunkMap(Vec<(ChunkId, ChunkId)>);

impl ChunkMap {
    fn push(&mut self, old: ChunkId, new: ChunkId) {
        self.0.push((old, new));
    }

    /// Sorts the pairs for [`ChunkMap::new_id`], once every chunk is in. The index
    /// places each chunk once, so no ID comes twice.
    fn sort(&mut self) {
        self.0.sort_unstable_by_key(|a| a.0);
        debug_assert!(self.0.windows(2).all(|w| w[0].0 != w[1].0));
    }

    fn new_id(&self, old: &ChunkId) -> ChunkId {
        let at = self.0.binary_search_by(|(id, _)| id.cmp(old));
        self.0[at.expect("every chunk in use was resealed")].1
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

impl Repository<Open> {
    /// True when this key is the new key of a rotation that switched the config but
    /// was stopped before it deleted the old generation: [`Self::finish_rotation`].
    pub fn rotation_to_this_key_pending(&self) -> bool {
        self.hidden
            .marker
            .as_ref()
            .is_some_and(|m| m.new_key_id == *self.keys.key_id())
    }

    /// Finishes a rotation to this key: deletes the old generation and the markers.
    pub fn finish_rotation(&self) -> Result<RotateSummary> {
        let start = Instant::now();
        let Some(marker) = self.hidden.marker.clone() else {
            return Ok(RotateSummary::default());
        };
        if marker.new_key_id != *self.keys.key_id() {
            return Err(RepoError::Usage(
                "this key is the old key of an interrupted rotation: rotate again".into(),
            ));
        }
        let _lock = self.lock(true)?;
        let deleted = self.remove_generation(&marker.old, &marker)?;
        Ok(RotateSummary {
            objects_deleted: deleted,
            finished_earlier: true,
            seconds: start.elapsed().as_secs_f64(),
            ..RotateSummary::default()
        })
    }

    /// Re-encrypts the repository under `new_key`. The old key opens the repository
    /// until the config is replaced; from then on only the new one does, and
    /// afterwards no object the old key could open remains.
    pub fn rotate_key(&self, new_key: &BackupKey) -> Result<RotateSummary> {
        let start = Instant::now();
        let new_keys = Arc::new(RepoKeys::derive(new_key));
        if new_keys.key_id() == self.keys.key_id() {
            return Err(RepoError::Usage(
                "the new key is the current key: nothing to rotate".into(),
            ));
        }
        if self.rotation_to_this_key_pending() {
            return Err(RepoError::Usage(
                "a rotation to this key is unfinished: run `backlock rotate-key` again to finish it first".into(),
            ));
        }
        let lock = self.lock(true)?;
        // An attempt stopped before its commit: remove what it wrote.
        if let Some(marker) = &self.hidden.marker {
            self.remove_generation(&marker.new, marker)?;
        }
        let mut live = self.live_indexes()?;
        live.writable()?;
        live.record(&self.home, &self.id())?;
        self.check_writer_level()?;
        let index = self.read_index(&mut live)?;
        self.remove_unindexed_packs(&index)?;

        // A snapshot with trees is its root here; its nodes are read a tree at a time,
        // once for the chunks in use and once to rebuild its trees under the new key
        // (they name chunks by ID), never all at once.
        let mut snaps: Vec<(SnapshotRef, Snapshot)> = Vec::new();
        let rejected = self.authentic_snapshots(|r, s| {
            snaps.push((r, s));
            Ok(())
        })?;
        // As prune: the old generation's data is deleted at the end, and a damaged
        // snapshot may be a real one the user wants to look at first.
        crate::refuse_unauthentic(&rejected)?;
        let refs: Vec<SnapshotRef> = snaps.iter().map(|(r, _)| *r).collect();
        // Every chunk in use and the bases of deltas among them (deltas are re-sealed as
        // they are: their bases come along), in a set that moves to a scratch file past
        // the in-memory limit.
        let used = NewChunks::new(self.spill());
        let mut missing: Option<ChunkId> = None;
        let mut use_chunk = |id: ChunkId| -> Result<bool> {
            let new = used.insert(id)?;
            if new && !index.contains(&id) {
                missing.get_or_insert(id);
            }
            Ok(new)
        };
        // A directory an earlier snapshot shares adds no chunk: it is not read again.
        let mut seen = SeenTrees::default();
        for (r, s) in &snaps {
            let each = &mut |node: Node| {
                for c in node.chunks {
                    if use_chunk(c)? {
                        if let Some(base) = index.get(&c).and_then(|l| l.blob.base) {
                            use_chunk(base)?;
                        }
                    }
                }
                Ok(())
            };
            self.each_node(&index, r, s, each, Some(&mut seen))?;
            seen.keep();
        }
        if let Some(missing) = missing {
            return Err(RepoError::Damaged {
                kind: "index",
                name: format!("(chunk {missing})"),
                source: backlock_core::FormatError::Malformed {
                    what: "index",
                    detail: "a snapshot needs a chunk no index lists; run `backlock check` before rotating".into(),
                },
            });
        }
        let old = ObjectSet {
            packs: names(self.listed(ObjectKind::Pack)?),
            indexes: names(self.listed(ObjectKind::Index)?),
            snapshots: refs.iter().map(|r| r.name).collect(),
        };

        let resealed = self
            .reseal(&index, &used, &new_keys, &lock)
            .and_then(|g| self.rebuild_trees(g, &index, &snaps, &new_keys));
        let (mut generation, roots) = match resealed {
            Ok(g) => g,
            Err(e) => {
                // Unindexed packs: harmless, but do not leave them behind.
                let _ = self.remove_unindexed_packs(&index);
                return Err(e);
            }
        };
        pause(step::ROTATE_PACKS_WRITTEN);

        // The new index (in objects of bounded size, as every index writer makes them)
        // and snapshots, under names chosen now so the markers can list them before
        // they exist. The packs' blob entries move into the index objects (not a copy:
        // they are the largest thing a rotation holds), each freed once written.
        let new_packs: Vec<ObjectName> = generation.packs.iter().map(|p| p.pack).collect();
        let packs_written = new_packs.len() as u64;
        let index_parts = crate::index::index_parts(
            IndexFile {
                packs: std::mem::take(&mut generation.packs),
            },
            self.object_limit,
        )?;
        let index_names: Vec<ObjectName> =
            index_parts.iter().map(|_| ObjectName::random()).collect();
        let renamed: HashMap<ObjectName, ObjectName> = refs
            .iter()
            .map(|r| (r.name, ObjectName::for_snapshot(r.seq)))
            .collect();
        let new_snaps: Vec<(ObjectName, Snapshot)> = snaps
            .into_iter()
            .map(|(r, s)| {
                let nodes = s
                    .nodes
                    .into_iter()
                    .map(|mut n| {
                        n.chunks = n
                            .chunks
                            .iter()
                            .map(|c| generation.chunk_map.new_id(c))
                            .collect();
                        n
                    })
                    .collect();
                let parent = s.parent.and_then(|p| renamed.get(&p).copied());
                let snap = match roots.get(&r.name) {
                    Some(root) => Snapshot {
                        parent,
                        nodes: Vec::new(),
                        root: root.clone(),
                        ..s
                    },
                    None => Snapshot { parent, nodes, ..s },
                };
                (renamed[&r.name], snap)
            })
            .collect();
        // Every chunk has its new ID in the new trees and snapshots: the map goes.
        let chunks = generation.chunk_map.len() as u64;
        generation.chunk_map = ChunkMap::default();
        let marker = Rotation {
            old_key_id: *self.keys.key_id(),
            new_key_id: *new_keys.key_id(),
            old,
            new: ObjectSet {
                packs: new_packs,
                indexes: index_names.clone(),
                snapshots: new_snaps.iter().map(|(n, _)| *n).collect(),
            },
        };
        let plain = format::encode(&marker);
        for keys in [&self.keys, &new_keys] {
            let name = marker_name(keys.key_id());
            let sealed = envelope::seal(keys, ObjectKind::Config, &name, &plain);
            self.store.flush()?;
            self.store.put(ObjectKind::Config, &name, &sealed)?;
        }
        self.store.flush()?;
        pause(step::ROTATE_MARKED);

        // The new generation, sealed under the new key: index, then snapshots.
        let mut bytes = generation.bytes;
        for (index_name, part) in index_names.iter().zip(index_parts) {
            let (version, plain) = part.encode();
            let sealed = envelope::seal_as(
                &new_keys,
                (ObjectKind::Index, version),
                &index_name.to_hex(),
                &plain,
            );
            self.store
                .put(ObjectKind::Index, &index_name.to_hex(), &sealed)?;
            bytes += sealed.len() as u64;
        }
        // Sealed under the new key, a new epoch: the old key's sets never count for it.
        live.write_next(
            &*self.store,
            &new_keys,
            index_names.iter().copied().collect(),
            true,
        )?;
        for (name, snap) in &new_snaps {
            format::check_size("snapshot", snap.payload_len(), self.object_limit)
                .map_err(|source| RepoError::TooLarge { source })?;
            let (version, plain) = snap.encode();
            let sealed = envelope::seal_as(
                &new_keys,
                (ObjectKind::Snapshot, version),
                &name.to_hex(),
                &plain,
            );
            self.store
                .put(ObjectKind::Snapshot, &name.to_hex(), &sealed)?;
            bytes += sealed.len() as u64;
        }
        self.store.flush()?;
        pause(step::ROTATE_WRITTEN);

        // Verify the new generation as a reader of the new key sees it: every chunk
        // authenticated under the new key, every snapshot as rewritten.
        let view = Repository {
            store: self.store.clone(),
            keys: new_keys.clone(),
            config: self.config.clone(),
            home: self.home.clone(),
            hidden: Arc::new(Hidden::from_marker(marker.clone(), new_keys.key_id())),
            object_limit: self.object_limit,
            index_in_memory: self.index_in_memory,
            // The new generation is verified as the store holds it.
            cache: None,
            state: Open,
        };
        if let Err(e) = view.verify_generation(&new_snaps) {
            let _ = self.remove_generation(&marker.new, &marker);
            return Err(e);
        }
        pause(step::ROTATE_VERIFIED);

        // The commit: the config now opens with the new key only.
        let config = crate::seal_config(&new_keys, &self.writer_config());
        self.store.put(ObjectKind::Config, CONFIG_NAME, &config)?;
        self.store.flush()?;
        pause(step::ROTATE_COMMITTED);

        let deleted = view.remove_generation(&marker.old, &marker)?;
        drop(lock);
        Ok(RotateSummary {
            snapshots: new_snaps.len() as u64,
            chunks,
            packs_written,
            bytes_written: bytes,
            objects_deleted: deleted,
            finished_earlier: false,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Every chunk in `used`, authenticated under the old key and re-sealed
    /// (without recompressing) under the new key's chunk ID into new packs.
    fn reseal(
        &self,
        index: &Index,
        used: &NewChunks,
        new_keys: &RepoKeys,
        lock: &RepoLock,
    ) -> Result<NewGeneration> {
        let pack_size = self.config.pack_size as usize;
        let mut out = NewGeneration {
            packs: Vec::new(),
            chunk_map: ChunkMap::default(),
            bytes: 0,
        };
        let mut current: Option<(ObjectName, PackSealer, Vec<BlobEntry>)> = None;
        let extents = index.pack_extents();
        let selected: Vec<usize> = (0..extents.len())
            .filter(|&n| extents[n].blobs > 0)
            .collect();
        index.for_each_group(&extents, &selected, &self.spill(), |group| {
            for (pack, mut blobs) in group {
                blobs.retain(|b| used.contains(&b.id));
                if blobs.is_empty() {
                    continue;
                }
                let name = pack.to_hex();
                let data = self.store.get(ObjectKind::Pack, &name)?;
                let header = data.get(..HEADER_LEN).unwrap_or(&data);
                let opener = PackOpener::new(&self.keys, &name, header)
                    .map_err(|e| RepoError::damaged(ObjectKind::Pack, &name, e))?;
                let bases = BaseReader::new(&*self.store, &self.keys, index)
                    .read(blobs.iter().filter_map(|b| b.base))?;
                let mut decoder = BlobDecoder::new();
                for b in &blobs {
                    let encoded = open_blob_at(&opener, &name, &data, 0, b)?;
                    let base = b.base.map(|id| bases[&id].as_slice());
                    let chunk = decode_chunk(&mut decoder, &self.keys, &name, &encoded, b, base)?;
                    let new_id = ChunkId::compute(new_keys, &chunk);
                    // A delta's payload does not depend on the key: only its base's ID.
                    let new_base = base.map(|plain| ChunkId::compute(new_keys, plain));
                    out.chunk_map.push(b.id, new_id);
                    let full = current
                        .as_ref()
                        .is_some_and(|(_, s, _)| s.len() + encoded.len() > pack_size);
                    if full {
                        self.put_pack(current.take().expect("checked"), &mut out)?;
                        lock.refresh_if_due()?;
                    }
                    let (_, sealer, entries) = current.get_or_insert_with(|| {
                        let name = ObjectName::random();
                        (
                            name,
                            PackSealer::new(new_keys, &name.to_hex(), pack_size + (1 << 20)),
                            Vec::new(),
                        )
                    });
                    let place = sealer.push(&new_id, &encoded);
                    entries.push(BlobEntry {
                        id: new_id,
                        seq: place.seq,
                        offset: place.offset,
                        length: place.length,
                        raw_length: b.raw_length,
                        base: new_base,
                    });
                }
            }
            Ok(())
        })?;
        if let Some(last) = current.take() {
            self.put_pack(last, &mut out)?;
        }
        out.chunk_map.sort();
        Ok(out)
    }

    /// Stores the trees of the version-3 snapshots among `snaps` as the new key
    /// names them (their chunks by new ID), in packs added to `generation`; returns
    /// it with each such snapshot's new root.
    /// Gives each node of snapshot `s` to `each`, reading its trees (under the old
    /// key, through `index`) one at a time.
    /// Directories `seen` has been through are not entered (see
    /// [`crate::trees::for_each_node_unseen`]).
    fn each_node(
        &self,
        index: &Index,
        r: &SnapshotRef,
        s: &Snapshot,
        each: &mut dyn FnMut(Node) -> Result<()>,
        seen: Option<&mut SeenTrees>,
    ) -> Result<()> {
        if s.root.is_empty() {
            return s.nodes.iter().try_for_each(|n| each(n.clone()));
        }
        let reader = TreeReader::new(&*self.store, &self.keys, index, self.cache.as_deref());
        let name = r.name.to_hex();
        let mut root_only = s.clone();
        crate::trees::for_each_node_unseen(reader, &name, &mut root_only, each, seen)?;
        Ok(())
    }

    fn rebuild_trees(
        &self,
        mut generation: NewGeneration,
        index: &Index,
        snaps: &[(SnapshotRef, Snapshot)],
        new_keys: &RepoKeys,
    ) -> Result<(NewGeneration, HashMap<ObjectName, Vec<ChunkId>>)> {
        let none = Index::default();
        let pack_size = self.config.pack_size as usize;
        let mut packer = TreePacker::new(&*self.store, new_keys, &none, None, pack_size)?;
        let mut roots = HashMap::new();
        for (r, s) in snaps.iter().filter(|(_, s)| !s.root.is_empty()) {
            let mut builder = TreeBuilder::new(new_keys);
            let chunk_map = &generation.chunk_map;
            let each = &mut |mut node: Node| {
                node.chunks = node.chunks.iter().map(|c| chunk_map.new_id(c)).collect();
                packer.push(&mut builder, node)
            };
            // Every directory: the new trees are built from all of them.
            self.each_node(index, r, s, each, None)?;
            roots.insert(r.name, packer.finish_trees(builder)?);
        }
        let (packs, bytes) = packer.finish()?;
        generation.packs.extend(packs);
        generation.bytes += bytes;
        Ok((generation, roots))
    }

    fn put_pack(
        &self,
        (name, sealer, mut blobs): (ObjectName, PackSealer, Vec<BlobEntry>),
        out: &mut NewGeneration,
    ) -> Result<()> {
        // Held until the index is written: without the room the list grew into.
        blobs.shrink_to_fit();
        let bytes = sealer.finish();
        self.store.put(ObjectKind::Pack, &name.to_hex(), &bytes)?;
        out.bytes += bytes.len() as u64;
        out.packs.push(PackEntry { pack: name, blobs });
        Ok(())
    }

    /// Reads the new generation back through the new key: every snapshot as
    /// written, and every chunk authenticated against its new ID.
    fn verify_generation(&self, expected: &[(ObjectName, Snapshot)]) -> Result<()> {
        let refs = self.snapshot_refs()?;
        if refs.len() != expected.len() {
            return Err(RepoError::Usage(format!(
                "the new key lists {} snapshots, {} were written: nothing was switched; check the store and rotate again",
                refs.len(),
                expected.len()
            )));
        }
        for (r, (name, snap)) in refs.iter().zip(expected) {
            if r.name != *name || self.load_snapshot(r)? != *snap {
                return Err(RepoError::Usage(format!(
                    "snapshot #{} reads back differently under the new key: nothing was switched; check the store and rotate again",
                    r.seq
                )));
            }
        }
        let report = self.check(true)?;
        if let Some(first) = report.errors.first() {
            return Err(RepoError::Usage(format!(
                "the re-encrypted data failed verification ({first}): nothing was switched; check the store and rotate again"
            )));
        }
        Ok(())
    }

    /// Deletes the objects of `set` (snapshots, then indexes, then packs), the index
    /// sets and lock objects this key cannot open (the other key's, left by a stopped rotation), then
    /// both markers: the other key's first, this key's last.
    fn remove_generation(&self, set: &ObjectSet, marker: &Rotation) -> Result<u64> {
        let mut deleted = 0u64;
        for (kind, names) in [
            (ObjectKind::Snapshot, &set.snapshots),
            (ObjectKind::Index, &set.indexes),
        ] {
            for n in names {
                self.store.delete(kind, &n.to_hex())?;
                deleted += 1;
                if deleted == 1 {
                    pause(step::ROTATE_DELETING);
                }
            }
        }
        self.store.flush()?;
        for n in &set.packs {
            self.store.delete(ObjectKind::Pack, &n.to_hex())?;
            deleted += 1;
        }
        self.store.flush()?;
        // The other key's index sets and locks, which this key cannot open.
        for kind in [ObjectKind::IndexSet, ObjectKind::Lock] {
            for info in self.store.list(kind)? {
                let opens = self
                    .store
                    .get(kind, &info.name)
                    .map(|s| envelope::open(&self.keys, kind, &info.name, &s).is_ok());
                if matches!(opens, Ok(false)) {
                    self.store.delete(kind, &info.name)?;
                }
            }
        }
        let mine = self.keys.key_id();
        let other = if marker.new_key_id == *mine {
            marker.old_key_id
        } else {
            marker.new_key_id
        };
        self.store
            .delete(ObjectKind::Config, &marker_name(&other))?;
        self.store.flush()?;
        self.store.delete(ObjectKind::Config, &marker_name(mine))?;
        self.store.flush()?;
        Ok(deleted)
    }

    /// Deletes packs no index names (left by a stopped backup or rotation). Runs
    /// under the exclusive lock, like prune.
    fn remove_unindexed_packs(&self, index: &Index) -> Result<()> {
        let indexed: HashSet<ObjectName> = index
            .pack_extents()
            .into_iter()
            .filter(|x| x.blobs > 0)
            .map(|x| x.pack)
            .collect();
        for info in self.listed(ObjectKind::Pack)? {
            if ObjectName::parse(&info.name).is_none_or(|p| !indexed.contains(&p)) {
                self.store.delete(ObjectKind::Pack, &info.name)?;
            }
        }
        self.store.flush()?;
        Ok(())
    }
}

fn names(listing: Vec<ObjectInfo>) -> Vec<ObjectName> {
    listing
        .iter()
        .filter_map(|o| ObjectName::parse(&o.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_hides_the_other_generation() {
        let (a, b, c) = (
            ObjectName::random(),
            ObjectName::random(),
            ObjectName::random(),
        );
        let marker = Rotation {
            old_key_id: [1; 16],
            new_key_id: [2; 16],
            old: ObjectSet {
                packs: vec![a],
                ..ObjectSet::default()
            },
            new: ObjectSet {
                snapshots: vec![b],
                ..ObjectSet::default()
            },
        };
        let listing = |names: &[ObjectName]| -> Vec<ObjectInfo> {
            names
                .iter()
                .map(|n| ObjectInfo {
                    name: n.to_hex(),
                    size: 1,
                })
                .collect()
        };
        let old = Hidden::from_marker(marker.clone(), &[1; 16]);
        let new = Hidden::from_marker(marker, &[2; 16]);
        assert_eq!(old.filter(listing(&[a, b, c])), listing(&[a, c]));
        assert_eq!(new.filter(listing(&[a, b, c])), listing(&[b, c]));
        assert_eq!(Hidden::default().filter(listing(&[a])), listing(&[a]));
    }
}
