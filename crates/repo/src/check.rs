//! check: is every snapshot restorable? Reads every object's header and structure;
//! with `read_data`, authenticates every blob of every pack too.

use crate::{
    bases::BaseReader,
    error::{RepoError, Result},
    index::{decode_chunk, open_blob_at, read_index_object, stored_sizes, Index, IndexBuilder},
    trees::{SeenTrees, TreeReader},
    Open, Repository,
};
use backlock_core::{
    blob::BlobDecoder,
    envelope::{ObjectKind, PackOpener},
    ids::{ChunkId, ObjectName},
};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// What `check` found. `errors` empty means every snapshot is restorable.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// Snapshots read.
    pub snapshots: usize,
    /// Index objects read.
    pub index_objects: usize,
    /// Packs in the store.
    pub packs: usize,
    /// Blobs authenticated (with `read_data`).
    pub blobs_read: u64,
    /// Packs read whole and authenticated (all of them with `--read-data`, those of
    /// the subset with `--read-data-subset`).
    pub packs_read: usize,
    /// Problems that make some snapshot unrestorable, each naming the object.
    pub errors: Vec<String>,
    /// Harmless findings (for example data left by an interrupted backup).
    pub notes: Vec<String>,
}

/// Which packs `check` reads whole (`--read-data`, `--read-data-subset`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DataSubset {
    /// None: the structure only.
    Nothing,
    /// Every pack.
    All,
    /// `n/m`: the packs of group `n` of `m` (by name, so the groups of `1/m` to `m/m`
    /// run on `m` days read every pack once).
    Group {
        /// 1 to `m`.
        n: u32,
        /// How many groups.
        m: u32,
    },
    /// `P%`: each pack with this chance, drawn anew each run.
    Percent(f64),
}

impl std::str::FromStr for DataSubset {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!("{s:?} is not a subset: write n/m (group n of m, such as 1/7) or a percentage (such as 10%)")
        };
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            return match p > 0.0 && p <= 100.0 {
                true => Ok(DataSubset::Percent(p)),
                false => Err(format!(
                    "{s:?}: a percentage is more than 0 and at most 100"
                )),
            };
        }
        let (n, m) = t.split_once('/').ok_or_else(bad)?;
        let (n, m): (u32, u32) = (
            n.trim().parse().map_err(|_| bad())?,
            m.trim().parse().map_err(|_| bad())?,
        );
        match (1..=m).contains(&n) {
            true => Ok(DataSubset::Group { n, m }),
            false => Err(format!("{s:?}: n/m needs 1 ≤ n ≤ m")),
        }
    }
}

impl DataSubset {
    /// True when pack `name` is read.
    fn selects(&self, name: &ObjectName) -> bool {
        match *self {
            DataSubset::Nothing => false,
            DataSubset::All => true,
            DataSubset::Group { n, m } => {
                u32::from_be_bytes(name.0[..4].try_into().expect("16 bytes")) % m == n - 1
            }
            DataSubset::Percent(p) => rand::random::<f64>() * 100.0 < p,
        }
    }
}

impl Repository<Open> {
    /// Checks the repository; wrong key and rollback are errors, damage is reported.
    pub fn check(&self, read_data: bool) -> Result<CheckReport> {
        self.check_reading(match read_data {
            true => DataSubset::All,
            false => DataSubset::Nothing,
        })
    }

    /// [`Self::check`], reading whole the packs `read` selects.
    pub fn check_reading(&self, read: DataSubset) -> Result<CheckReport> {
        let lock = self.lock(false)?;
        let mut report = CheckReport::default();
        let refs = self.snapshot_refs()?;
        // The index objects the index sets name, as every other command reads them.
        let live = self.live_indexes()?;
        if let Some((seen, served)) = live.rolled_back {
            report
                .errors
                .push(RepoError::IndexRollback { seen, served }.to_string());
        }
        for (name, reason) in &live.rejected {
            report.notes.push(format!("index set object {name} does not count: {reason} (made up, damaged, or sealed under the other key of a rotation in progress); `backlock prune` removes it"));
        }
        let mut builder = IndexBuilder::new(self.spill());
        for name in &live.names {
            match read_index_object(&*self.store, &self.keys, name) {
                Ok(file) => builder.add(&file)?,
                Err(RepoError::WrongKey) => return Err(RepoError::WrongKey),
                Err(RepoError::Store(backlock_store::StoreError::NotFound { .. })) => {
                    report.errors.push(format!(
                        "index object {name}, which the index set names, is missing from the store"
                    ))
                }
                Err(e) => report.errors.push(e.to_string()),
            }
            report.index_objects += 1;
        }
        let index = builder.finish()?;
        let named: HashSet<&String> = live.names.iter().collect();
        let unnamed = self
            .listed(ObjectKind::Index)?
            .iter()
            .filter(|o| !named.contains(&o.name))
            .count();
        if unnamed > 0 {
            report.notes.push(format!("{unnamed} index object(s) named by no index set (left by an interrupted backup or prune, or served again by the store) do not count: `backlock prune` removes them"));
        }
        // Per pack, not per chunk: what the index needs of each pack, and the store's
        // listing. Memory stays that of the packs at any number of files.
        let extents = index.pack_extents();
        let stored = stored_sizes(self.listed(ObjectKind::Pack)?);
        report.packs = stored.len();
        let absent: HashSet<ObjectName> = extents
            .iter()
            .filter(|x| x.blobs > 0 && !stored.contains_key(&x.pack.to_hex()))
            .map(|x| x.pack)
            .collect();
        let mut needs = Needs {
            index: &index,
            absent: &absent,
            lost: HashMap::new(),
            broken_bases: HashSet::new(),
            unindexed: 0,
            damage: 0,
        };
        // A directory an earlier snapshot shares, found whole there, is not read again.
        let mut seen = SeenTrees::default();
        for r in &refs {
            match self.authenticate(r)? {
                Ok(mut snap) => {
                    let name = r.name.to_hex();
                    // Node by node: a snapshot of millions of files is never held whole.
                    needs.unindexed = 0;
                    let damage = needs.damage;
                    let read = crate::trees::for_each_node_unseen(
                        // `check` reads what the store holds, never a cached copy.
                        TreeReader::new(&*self.store, &self.keys, &index, None),
                        &name,
                        &mut snap,
                        &mut |n| {
                            n.chunks.iter().for_each(|c| needs.chunk(c));
                            Ok(())
                        },
                        Some(&mut seen),
                    );
                    match read {
                        Ok(trees) => trees.iter().for_each(|c| needs.chunk(c)),
                        Err(e @ RepoError::Interrupted) => return Err(e),
                        Err(e) => {
                            needs.damage += 1;
                            report.errors.push(format!(
                                "snapshot {} (#{}): its directories cannot be read: {e}",
                                r.name.short(),
                                r.seq
                            ))
                        }
                    }
                    // Only what was found whole is skipped in later snapshots, so that
                    // each snapshot that needs something damaged is reported.
                    match needs.damage == damage {
                        true => seen.keep(),
                        false => seen.forget(),
                    }
                    if needs.unindexed > 0 {
                        report.errors.push(format!(
                            "snapshot {} (#{}) needs {} chunks that no index lists: their pack or index object is missing",
                            r.name.short(),
                            r.seq,
                            needs.unindexed
                        ));
                    }
                }
                Err(bad) => report.errors.push(bad.to_string()),
            }
            report.snapshots += 1;
        }
        if !needs.broken_bases.is_empty() {
            report.errors.push(format!(
                "{} chunks that snapshots need are stored as deltas of a chunk no index lists (or of another delta): their pack or index object is missing or damaged",
                needs.broken_bases.len()
            ));
        }
        let mut selected = Vec::new();
        for (number, extent) in extents.iter().enumerate() {
            crate::interrupt::check()?;
            if extent.blobs == 0 {
                continue;
            }
            let name = extent.pack.to_hex();
            match stored.get(&name) {
                None => {
                    let lost = needs.lost.get(&extent.pack).map_or(0, HashSet::len);
                    if lost > 0 {
                        report.errors.push(format!(
                            "pack object {name} is missing from the store ({lost} chunks in use)"
                        ));
                    }
                }
                Some(&size) if size < extent.end => report.errors.push(format!(
                    "pack object {name} is truncated: {size} bytes, index needs {}",
                    extent.end
                )),
                Some(_) if read.selects(&extent.pack) => selected.push(number),
                Some(_) => {}
            }
        }
        // The packs to read, a group at a time: only a group's blobs are held.
        index.for_each_group(&extents, &selected, &self.spill(), |group| {
            for (pack, blobs) in group {
                crate::interrupt::check()?;
                lock.refresh_if_due()?;
                report.packs_read += 1;
                let name = pack.to_hex();
                if let Err(e) = self.check_pack(&index, &name, &blobs, &mut report.blobs_read) {
                    report.errors.push(e.to_string());
                }
            }
            Ok(())
        })?;
        let indexed: HashSet<String> = extents
            .iter()
            .filter(|x| x.blobs > 0)
            .map(|x| x.pack.to_hex())
            .collect();
        let unindexed = stored.keys().filter(|n| !indexed.contains(*n)).count();
        if unindexed > 0 {
            report.notes.push(format!("{unindexed} pack(s) not in any index (left by an interrupted backup or prune): `backlock prune` removes them"));
        }
        Ok(report)
    }

    /// Authenticates and decodes every blob of pack `name`; deltas against their bases.
    fn check_pack(
        &self,
        index: &Index,
        name: &str,
        blobs: &[backlock_core::format::BlobEntry],
        read: &mut u64,
    ) -> Result<()> {
        let damaged = |e| RepoError::damaged(ObjectKind::Pack, name, e);
        let data = self.store.get(ObjectKind::Pack, name)?;
        let opener = PackOpener::new(&self.keys, name, &data).map_err(damaged)?;
        let bases = BaseReader::new(&*self.store, &self.keys, index)
            .read(blobs.iter().filter_map(|b| b.base))?;
        let mut decoder = BlobDecoder::new();
        for b in blobs {
            let encoded = open_blob_at(&opener, name, &data, 0, b)?;
            let base = b.base.map(|id| bases[&id].as_slice());
            decode_chunk(&mut decoder, &self.keys, name, &encoded, b, base)?;
            *read += 1;
        }
        Ok(())
    }
}

/// What the snapshots need that the repository lacks, found chunk by chunk as their
/// trees are read: the counts and sets grow with the damage, not with the repository.
struct Needs<'a> {
    index: &'a Index,
    /// Indexed packs the store does not hold.
    absent: &'a HashSet<ObjectName>,
    /// The chunks in use in each absent pack.
    lost: HashMap<ObjectName, HashSet<ChunkId>>,
    /// Bases of deltas in use that no index lists, or that are deltas themselves.
    broken_bases: HashSet<ChunkId>,
    /// Chunks of the snapshot being read that no index lists (each time it is used).
    unindexed: usize,
    /// Everything found missing or damaged so far, counted each time.
    damage: usize,
}

impl Needs<'_> {
    fn chunk(&mut self, id: &ChunkId) {
        let Some(at) = self.index.get(id) else {
            self.unindexed += 1;
            self.damage += 1;
            return;
        };
        self.in_pack(at.pack, id);
        // A delta needs its base: indexed, and not a delta itself.
        if let Some(base) = at.blob.base {
            match self.index.get(&base) {
                Some(b) if b.blob.base.is_none() => self.in_pack(b.pack, &base),
                _ => {
                    self.broken_bases.insert(base);
                    self.damage += 1;
                }
            }
        }
    }

    fn in_pack(&mut self, pack: ObjectName, id: &ChunkId) {
        if self.absent.contains(&pack) {
            self.lost.entry(pack).or_default().insert(*id);
            self.damage += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{index::read_index_object, testrepo::TestRepo};
    use backlock_core::{
        envelope::{self, ObjectKind},
        ids::ChunkId,
    };
    use backlock_store::ObjectStore;

    /// Two snapshots share a directory whose file no index lists any more: both are
    /// reported, though the second's copy of that directory is one the first has gone
    /// through already (only what was found whole is skipped).
    #[test]
    fn each_snapshot_needing_an_unindexed_chunk_is_reported() {
        let t = TestRepo::new();
        let (src, store, open, opts) = (&t.src, &t.store, || t.open(), t.options());
        std::fs::create_dir_all(src.join("a")).unwrap();
        std::fs::create_dir_all(src.join("b")).unwrap();
        std::fs::write(src.join("a/shared.txt"), b"in both snapshots").unwrap();
        std::fs::write(src.join("b/changed.txt"), b"day one").unwrap();
        open().load_index().unwrap().backup(&opts).unwrap();
        std::fs::write(src.join("b/changed.txt"), b"day two").unwrap();
        open().load_index().unwrap().backup(&opts).unwrap();
        let clean = open().check(false).unwrap();
        assert!(clean.errors.is_empty(), "{:?}", clean.errors);

        // Every index object is sealed again without the shared file's chunk.
        let keys = open().keys.clone();
        let shared = ChunkId::compute(&keys, b"in both snapshots");
        let mut dropped = 0;
        for o in store.list(ObjectKind::Index).unwrap() {
            let mut file = read_index_object(&**store, &keys, &o.name).unwrap();
            for pack in &mut file.packs {
                let before = pack.blobs.len();
                pack.blobs.retain(|b| b.id != shared);
                dropped += before - pack.blobs.len();
            }
            let (version, plain) = file.encode();
            let sealed = envelope::seal_as(&keys, (ObjectKind::Index, version), &o.name, &plain);
            store.put(ObjectKind::Index, &o.name, &sealed).unwrap();
        }
        assert_eq!(dropped, 1);

        let report = open().check(false).unwrap();
        let needing: Vec<&String> = report
            .errors
            .iter()
            .filter(|e| e.contains("chunks that no index lists"))
            .collect();
        assert_eq!(needing.len(), 2, "{:?}", report.errors);
    }
}
