//! The in-memory index: where each chunk is stored.

use crate::error::{RepoError, Result};
use backlock_core::{
    envelope::{self, ObjectKind},
    format::{BlobEntry, IndexFile},
    ids::{ChunkId, ObjectName},
    kdf::RepoKeys,
};
use backlock_store::ObjectStore;
use std::collections::HashMap;

/// A chunk's location: its pack and blob entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The pack holding the blob.
    pub pack: ObjectName,
    /// The blob within it.
    pub blob: BlobEntry,
}

/// All index objects, merged.
#[derive(Debug, Default)]
pub struct Index {
    chunks: HashMap<ChunkId, Location>,
    /// The index objects this was built from.
    pub(crate) objects: Vec<String>,
}

impl Index {
    /// Reads and authenticates every index object.
    pub(crate) fn load(
        store: &dyn ObjectStore,
        keys: &RepoKeys,
        hidden: &crate::rotate::Hidden,
    ) -> Result<Self> {
        let mut index = Index::default();
        for info in hidden.filter(store.list(ObjectKind::Index)?) {
            let file = read_index_object(store, keys, &info.name)?;
            index.add(&file);
            index.objects.push(info.name);
        }
        Ok(index)
    }

    pub(crate) fn add(&mut self, file: &IndexFile) {
        for pack in &file.packs {
            for blob in &pack.blobs {
                self.chunks.entry(blob.id).or_insert(Location {
                    pack: pack.pack,
                    blob: *blob,
                });
            }
        }
    }

    /// Where `id` is stored.
    pub fn get(&self, id: &ChunkId) -> Option<&Location> {
        self.chunks.get(id)
    }

    /// True when `id` is stored.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.chunks.contains_key(id)
    }

    /// Number of chunks indexed.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Every indexed chunk.
    pub fn iter(&self) -> impl Iterator<Item = (&ChunkId, &Location)> {
        self.chunks.iter()
    }

    /// The indexed blobs of each pack.
    pub(crate) fn by_pack(&self) -> HashMap<ObjectName, Vec<BlobEntry>> {
        let mut out: HashMap<ObjectName, Vec<BlobEntry>> = HashMap::new();
        for loc in self.chunks.values() {
            out.entry(loc.pack).or_default().push(loc.blob);
        }
        out
    }
}

/// Every object of a listing with its size.
pub(crate) fn stored_sizes(listing: Vec<backlock_store::ObjectInfo>) -> HashMap<String, u64> {
    listing.into_iter().map(|o| (o.name, o.size)).collect()
}

pub(crate) fn read_index_object(
    store: &dyn ObjectStore,
    keys: &RepoKeys,
    name: &str,
) -> Result<IndexFile> {
    let sealed = store.get(ObjectKind::Index, name)?;
    let damaged = |e| RepoError::damaged(ObjectKind::Index, name, e);
    let (version, plain) =
        envelope::open_versioned(keys, ObjectKind::Index, name, &sealed).map_err(damaged)?;
    IndexFile::decode(version, &plain).map_err(damaged)
}

/// Writes an index object after making every pack put so far durable (data → index).
pub(crate) fn write_index_object(
    store: &dyn ObjectStore,
    keys: &RepoKeys,
    file: &IndexFile,
) -> Result<u64> {
    store.flush()?;
    let name = ObjectName::random().to_hex();
    let (version, plain) = file.encode();
    let sealed = envelope::seal_as(keys, (ObjectKind::Index, version), &name, &plain);
    store.put(ObjectKind::Index, &name, &sealed)?;
    Ok(sealed.len() as u64)
}

/// Authenticates blob `b` of pack `name` taken from `data`, which holds the pack's
/// bytes starting at offset `start`; returns the encoded blob (codec byte first).
pub(crate) fn open_blob_at(
    opener: &backlock_core::envelope::PackOpener,
    name: &str,
    data: &[u8],
    start: u64,
    b: &BlobEntry,
) -> Result<Vec<u8>> {
    let damaged = |e| RepoError::damaged(ObjectKind::Pack, name, e);
    let from = b.offset.checked_sub(start).map(|f| f as usize);
    let end = from.map(|f| f + b.length as usize);
    let sealed = from
        .zip(end)
        .and_then(|(f, e)| data.get(f..e))
        .ok_or_else(|| {
            damaged(backlock_core::FormatError::Truncated {
                len: data.len(),
                min: end.unwrap_or(usize::MAX),
            })
        })?;
    opener.open_blob(b.seq, &b.id, sealed).map_err(damaged)
}

/// Decodes an encoded blob and checks it is exactly the chunk its ID names. `base` is
/// the plaintext of `b.base` for a delta blob, `None` otherwise.
pub(crate) fn decode_chunk(
    keys: &RepoKeys,
    name: &str,
    encoded: &[u8],
    b: &BlobEntry,
    base: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let damaged = |e| RepoError::damaged(ObjectKind::Pack, name, e);
    let chunk =
        backlock_core::blob::decode(encoded, b.raw_length as usize, base).map_err(damaged)?;
    if chunk.len() != b.raw_length as usize || !b.id.verify(keys, &chunk) {
        return Err(damaged(backlock_core::FormatError::Tampered));
    }
    Ok(chunk)
}
