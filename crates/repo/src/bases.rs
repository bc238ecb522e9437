//! Reading the chunks that delta blobs are encoded against (docs/FORMAT.md §Blobs):
//! whole chunks by ID, neighbours in a pack fetched with one ranged read.

use crate::{
    error::{RepoError, Result},
    index::{decode_chunk, open_blob_at, Index},
};
use backlock_core::{
    blob::BlobDecoder,
    envelope::{ObjectKind, PackOpener, HEADER_LEN},
    format::BlobEntry,
    ids::{ChunkId, ObjectName},
    kdf::RepoKeys,
    FormatError,
};
use backlock_store::ObjectStore;
use std::collections::HashMap;

/// Blobs closer than this in a pack are fetched in one read. Bases are runs of SQLite
/// pages scattered through the packs of a database (a day changes about one page in
/// eight); on a cloud store each read is a request, which costs more than reading
/// through the pages between them, and a local disk reads ahead over them anyway.
const COALESCE_GAP: u64 = 1 << 20;
/// A read that joins blobs spans at most this many bytes: the read buffer's size.
const READ_SPAN: u64 = 1 << 20;

/// The error for an index whose delta chain is not what the format allows.
pub(crate) fn bad_base(id: &ChunkId, detail: &str) -> RepoError {
    RepoError::Damaged {
        kind: "index",
        name: format!("(chunk {id})"),
        source: FormatError::Malformed {
            what: "index",
            detail: detail.into(),
        },
    }
}

/// Reads base chunks of one repository, keeping each pack's opener.
pub(crate) struct BaseReader<'a> {
    store: &'a dyn ObjectStore,
    keys: &'a RepoKeys,
    index: &'a Index,
    openers: HashMap<ObjectName, PackOpener>,
    /// The read buffer, reused from read to read.
    data: Vec<u8>,
    decoder: BlobDecoder,
}

impl<'a> BaseReader<'a> {
    pub(crate) fn new(store: &'a dyn ObjectStore, keys: &'a RepoKeys, index: &'a Index) -> Self {
        BaseReader {
            store,
            keys,
            index,
            openers: HashMap::new(),
            data: Vec::new(),
            decoder: BlobDecoder::new(),
        }
    }

    /// The plaintexts of `ids`, each authenticated against its ID. A base must be
    /// indexed and must not be a delta itself.
    pub(crate) fn read(
        &mut self,
        ids: impl IntoIterator<Item = ChunkId>,
    ) -> Result<HashMap<ChunkId, Vec<u8>>> {
        let mut by_pack: HashMap<ObjectName, Vec<BlobEntry>> = HashMap::new();
        for id in ids {
            let loc = self
                .index
                .get(&id)
                .ok_or_else(|| bad_base(&id, "a delta's base is in no index object"))?;
            if loc.blob.base.is_some() {
                return Err(bad_base(&id, "a delta's base is itself a delta"));
            }
            by_pack.entry(loc.pack).or_default().push(loc.blob);
        }
        let mut out = HashMap::new();
        for (pack, mut blobs) in by_pack {
            blobs.sort_by_key(|b| b.offset);
            blobs.dedup_by_key(|b| b.id);
            self.read_pack(pack, &blobs, &HashMap::new(), &mut out)?;
        }
        Ok(out)
    }

    /// The plaintexts of `ids`, each authenticated against its ID, any of them a
    /// delta (whose base is read first): a file's chunks, as `dump` reads them.
    pub(crate) fn read_chunks(&mut self, ids: &[ChunkId]) -> Result<HashMap<ChunkId, Vec<u8>>> {
        let mut by_pack: HashMap<ObjectName, Vec<BlobEntry>> = HashMap::new();
        let mut bases = Vec::new();
        for id in ids {
            let loc = self.index.get(id).ok_or_else(|| {
                bad_base(
                    id,
                    "a file's chunk is in no index object: run `backlock check`",
                )
            })?;
            bases.extend(loc.blob.base);
            by_pack.entry(loc.pack).or_default().push(loc.blob);
        }
        let bases = self.read(bases)?;
        let mut out = HashMap::new();
        for (pack, mut blobs) in by_pack {
            blobs.sort_by_key(|b| b.offset);
            blobs.dedup_by_key(|b| b.id);
            self.read_pack(pack, &blobs, &bases, &mut out)?;
        }
        Ok(out)
    }

    /// Keeps the opener of pack `pack`, whose header starts the read buffer.
    fn keep_opener(&mut self, pack: ObjectName, name: &str) -> Result<()> {
        let opener = PackOpener::new(self.keys, name, &self.data)
            .map_err(|e| RepoError::damaged(ObjectKind::Pack, name, e))?;
        self.openers.insert(pack, opener);
        Ok(())
    }

    /// Reads `blobs` of `pack`, sorted by offset, into `out`; `bases` holds the base
    /// of each delta among them.
    fn read_pack(
        &mut self,
        pack: ObjectName,
        blobs: &[BlobEntry],
        bases: &HashMap<ChunkId, Vec<u8>>,
        out: &mut HashMap<ChunkId, Vec<u8>>,
    ) -> Result<()> {
        let name = pack.to_hex();
        let mut i = 0;
        while i < blobs.len() {
            let mut start = blobs[i].offset;
            let mut end = start + blobs[i].length as u64;
            let mut j = i + 1;
            while j < blobs.len()
                && blobs[j].offset <= end + COALESCE_GAP
                && blobs[j].offset + blobs[j].length as u64 - start <= READ_SPAN
            {
                end = end.max(blobs[j].offset + blobs[j].length as u64);
                j += 1;
            }
            // A pack seen for the first time needs its header: with the first read
            // when that starts close to it, in a request of its own otherwise.
            if !self.openers.contains_key(&pack) {
                if start <= HEADER_LEN as u64 + COALESCE_GAP {
                    start = 0;
                } else {
                    let (len, data) = (HEADER_LEN as u64, &mut self.data);
                    self.store
                        .get_range_into(ObjectKind::Pack, &name, 0, len, data)?;
                    self.keep_opener(pack, &name)?;
                }
            }
            let data = &mut self.data;
            self.store
                .get_range_into(ObjectKind::Pack, &name, start, end - start, data)?;
            if start == 0 && !self.openers.contains_key(&pack) {
                self.keep_opener(pack, &name)?;
            }
            let opener = &self.openers[&pack];
            for b in &blobs[i..j] {
                let encoded = open_blob_at(opener, &name, &self.data, start, b)?;
                let base = match &b.base {
                    None => None,
                    Some(id) => Some(
                        bases
                            .get(id)
                            .ok_or_else(|| bad_base(id, "a delta's base could not be read"))?,
                    ),
                };
                let base = base.map(Vec::as_slice);
                let chunk = decode_chunk(&mut self.decoder, self.keys, &name, &encoded, b, base)?;
                out.insert(b.id, chunk.into_owned());
            }
            i = j;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::IndexBuilder;
    use backlock_core::format::IndexFile;
    use backlock_core::{blob::CODEC_RAW, envelope::PackSealer, format::PackEntry, key::BackupKey};
    use backlock_store::MemoryStore;

    /// One pack of 600 distinct 4 KiB pages (2.4 MiB): bases near its start and
    /// far into it, as one reader meets them, come back exact: the header read with
    /// the first range or on its own, ranges split at the span limit.
    #[test]
    fn bases_anywhere_in_a_pack_read_back_exact() {
        let keys = RepoKeys::derive(&BackupKey::from_bytes([5; 32]));
        let store = MemoryStore::new();
        // Distinct pages: each starts with its number.
        let pages: Vec<Vec<u8>> = (0..600u32)
            .map(|i| {
                let fill = (4..4096u32).map(|j| (i * 31 + j * 7) as u8);
                i.to_le_bytes().into_iter().chain(fill).collect()
            })
            .collect();
        let name = ObjectName([7; 16]);
        let mut sealer = PackSealer::new(&keys, &name.to_hex(), 4 << 20);
        let mut blobs = Vec::new();
        for page in &pages {
            let id = ChunkId::compute(&keys, page);
            let place = sealer.push_parts(&id, &[&[CODEC_RAW], page]);
            blobs.push(BlobEntry {
                id,
                seq: place.seq,
                offset: place.offset,
                length: place.length,
                raw_length: page.len() as u32,
                base: None,
            });
        }
        store
            .put(ObjectKind::Pack, &name.to_hex(), &sealer.finish())
            .unwrap();
        let mut builder = IndexBuilder::default();
        builder
            .add(&IndexFile {
                packs: vec![PackEntry {
                    pack: name,
                    blobs: blobs.clone(),
                }],
            })
            .unwrap();
        let index = builder.finish().unwrap();
        // Far pages first (a header of its own), then near and scattered ones.
        for wanted in [vec![500, 599], vec![0, 3, 250, 251, 420]] {
            let mut reader = BaseReader::new(&store, &keys, &index);
            let far_first: Vec<usize> = [vec![550], wanted.clone()].concat();
            for set in [&far_first, &wanted] {
                let got = reader.read(set.iter().map(|&i| blobs[i].id)).unwrap();
                assert_eq!(got.len(), set.len());
                for &i in set.iter() {
                    assert!(got[&blobs[i].id] == pages[i], "page {i}");
                }
            }
        }
    }
}
