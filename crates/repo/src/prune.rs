//! forget and prune.
//!
//! `forget` deletes snapshot objects (never the newest). `prune` then removes data no
//! snapshot uses, in an order that keeps every remaining snapshot restorable if it is
//! killed at any point: new packs (live blobs of mostly-dead packs), then one new
//! index naming every live blob, then the old index objects, and only then the packs
//! nothing indexes any more. Prune must not run while a backup of the same repository
//! is in progress (a backup's packs are unindexed until its next index object).

use crate::{
    backup::NewChunks,
    error::{RepoError, Result},
    index::{open_blob_at, stored_sizes, Index},
    indexset::{delete_all, LiveIndexes},
    retention::{self, GroupBy, GroupVerdicts, Keep, Policy},
    select::{SnapshotFilter, SnapshotInfo},
    testhook::{pause, step},
    trees::{SeenTrees, TreeReader},
    Indexed, Open, Repository,
};
use backlock_core::{
    envelope::{ObjectKind, PackOpener, PackSealer},
    format::{BlobEntry, PackEntry},
    ids::{ChunkId, ObjectName},
};
use jiff::tz::TimeZone;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// Repack a pack when at least this fraction of its bytes is unused.
const REPACK_DEAD_FRACTION: f64 = 0.25;

/// What `forget` decided, and what it removed.
#[derive(Clone, Debug, Serialize)]
pub struct ForgetSummary {
    /// Each group of the snapshots selected, newest first, each with the policy's
    /// verdict and why it is kept.
    pub groups: Vec<GroupVerdicts>,
    /// Snapshots deleted (none in a dry run).
    pub removed: Vec<String>,
    /// Snapshots kept, of those selected.
    pub kept: usize,
    /// Nothing was deleted: this is what would be.
    pub dry_run: bool,
    /// Listed objects that do not authenticate: neither counted nor deleted.
    pub ignored: Vec<crate::RejectedSnapshot>,
}

/// What `prune` removed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneSummary {
    /// Packs deleted.
    pub packs_deleted: usize,
    /// Packs whose live blobs were copied into new packs.
    pub packs_repacked: usize,
    /// Bytes freed in the store (approximate: packs deleted minus packs written).
    pub bytes_freed: i64,
    /// Index objects replaced by one new index.
    pub index_objects_replaced: usize,
}

/// Why the repository's newest snapshot stays whatever the policy says.
const NEWEST_REASON: &str = "newest in the repository: devices check the store against it";

impl Repository<Open> {
    /// Deletes all but the newest `keep` snapshots (`keep` ≥ 1) of every host and
    /// path together.
    pub fn forget_keep_last(&self, keep: usize) -> Result<ForgetSummary> {
        if keep == 0 {
            return Err(RepoError::Usage(
                "--keep-last must be at least 1: the newest snapshot is always kept".into(),
            ));
        }
        let policy = Policy {
            last: Some(Keep::Count(keep.try_into().unwrap_or(u32::MAX))),
            ..Default::default()
        };
        let one_group = GroupBy {
            host: false,
            paths: false,
            tags: false,
        };
        self.forget(
            &policy,
            &SnapshotFilter::default(),
            one_group,
            &TimeZone::UTC,
            false,
        )
    }

    /// `forget ID...`: deletes the snapshots named (IDs or unique prefixes), under a
    /// shared lock. The repository's newest snapshot is refused: a device checks the
    /// store against it.
    pub fn forget_ids(&self, ids: &[String]) -> Result<ForgetSummary> {
        let _lock = self.lock(false)?;
        self.check_writer_level()?;
        let mut all = Vec::new();
        let ignored = self.authentic_snapshots(|r, snap| {
            all.push(SnapshotInfo::of(r, &snap));
            Ok(())
        })?;
        let refs: Vec<crate::SnapshotRef> = all.iter().map(|s| s.snapshot_ref()).collect();
        let mut chosen = Vec::new();
        for id in ids {
            let r = crate::by_prefix(&refs, id)?;
            if Some(r.seq) == refs.last().map(|n| n.seq) {
                return Err(RepoError::Usage(format!(
                    "snapshot {} is the repository's newest, which devices check the store against: back up again first, then forget it. Nothing was deleted",
                    &r.name.to_hex()[..8]
                )));
            }
            chosen.push(r.name.to_hex());
        }
        chosen.sort();
        chosen.dedup();
        for id in &chosen {
            self.store.delete(ObjectKind::Snapshot, id)?;
        }
        Ok(ForgetSummary {
            groups: Vec::new(),
            kept: all.len() - chosen.len(),
            removed: chosen,
            dry_run: false,
            ignored,
        })
    }

    /// Applies `policy` to the snapshots `select` picks, grouped `by`, with calendar
    /// periods in `tz`; deletes those it does not keep, under a shared lock, unless
    /// `dry_run`. The repository's newest snapshot is never deleted: it is what a
    /// device checks the store against.
    pub fn forget(
        &self,
        policy: &Policy,
        select: &SnapshotFilter,
        by: GroupBy,
        tz: &TimeZone,
        dry_run: bool,
    ) -> Result<ForgetSummary> {
        if policy.is_empty() {
            return Err(RepoError::Usage(
                "no --keep-* rule keeps anything, and forget would delete every snapshot: give at least one (such as --keep-last 1 or --keep-daily 7)".into(),
            ));
        }
        let _lock = match dry_run {
            true => None,
            false => Some(self.lock(false)?),
        };
        if !dry_run {
            self.check_writer_level()?;
        }
        // Only snapshots that authenticate count, and only they are deleted: an object
        // the store made up can neither push a real snapshot out of a rule nor be
        // deleted as if it were one.
        let mut all = Vec::new();
        let ignored = self.authentic_snapshots(|r, snap| {
            all.push(SnapshotInfo::of(r, &snap));
            Ok(())
        })?;
        let newest = all.last().map(|s| s.seq);
        let selected = all.into_iter().filter(|s| select.matches(s)).collect();
        let mut groups = retention::apply(policy, by, selected, tz, crate::now_unix_ns());
        let mut removed = Vec::new();
        let mut kept = 0;
        for group in &mut groups {
            for (s, verdict) in &mut group.snapshots {
                if !verdict.keep && Some(s.seq) == newest {
                    verdict.keep = true;
                    verdict.reasons.push(NEWEST_REASON.to_owned());
                }
                match verdict.keep {
                    true => kept += 1,
                    false if dry_run => {}
                    false => {
                        self.store.delete(ObjectKind::Snapshot, &s.id)?;
                        removed.push(s.id.clone());
                    }
                }
            }
        }
        Ok(ForgetSummary {
            groups,
            removed,
            kept,
            dry_run,
            ignored,
        })
    }
}

impl<S> Repository<S> {
    /// Makes `packs` the whole index: new index objects, in as many as readers need,
    /// and the index set of a new epoch naming only them (from then on no earlier set
    /// counts, so no object deleted next can count again, whatever the store
    /// serves); then every other index object and set, the old live ones and any a
    /// stopped backup wrote, deleted and flushed. Pauses at `step` (tests) between.
    /// Returns the index objects replaced and the bytes written.
    pub(crate) fn replace_index(
        &self,
        live: &LiveIndexes,
        packs: Vec<PackEntry>,
        step: Option<&str>,
    ) -> Result<(usize, u64)> {
        let (indexes, written) = self.write_index_objects(packs)?;
        Ok((self.install_index(live, indexes, step)?, written))
    }

    /// Makes the index objects `indexes`, already written, the whole index, as
    /// [`Repository::replace_index`] does. Returns the index objects replaced.
    pub(crate) fn install_index(
        &self,
        live: &LiveIndexes,
        indexes: Vec<ObjectName>,
        step: Option<&str>,
    ) -> Result<usize> {
        let (set, seq) = live.write_next(
            &*self.store,
            &self.keys,
            indexes.iter().copied().collect(),
            true,
        )?;
        self.home.record_index_set(&self.id(), seq)?;
        self.raise_writer_level()?;
        if let Some(step) = step {
            pause(step);
        }
        let new: HashSet<String> = indexes.iter().map(ObjectName::to_hex).collect();
        let old: Vec<String> = self
            .listed(ObjectKind::Index)?
            .into_iter()
            .map(|o| o.name)
            .filter(|n| !new.contains(n))
            .collect();
        let sets: Vec<String> = self
            .store
            .list(ObjectKind::IndexSet)?
            .into_iter()
            .map(|o| o.name)
            .filter(|n| *n != set)
            .collect();
        delete_all(&*self.store, ObjectKind::Index, &old)?;
        delete_all(&*self.store, ObjectKind::IndexSet, &sets)?;
        self.store.flush()?;
        Ok(old.len())
    }
}

impl Repository<Indexed> {
    /// Removes data that no snapshot uses.
    pub fn prune(self) -> Result<PruneSummary> {
        if self.hidden.rotating() {
            return Err(RepoError::Usage(
                "a key rotation is unfinished: run `backlock rotate-key` to complete it, then prune".into(),
            ));
        }
        if !self.state.lock.is_exclusive() {
            return Err(RepoError::Usage(
                "prune needs the exclusive lock taken before the index is read (load_index_exclusive)".into(),
            ));
        }
        // Never delete by index sets the store rolled back.
        self.state.live.writable()?;
        self.check_writer_level()?;
        let mut summary = PruneSummary::default();
        // Every chunk in use (a live delta's base too), kept in a set that moves to a
        // scratch file past the in-memory limit, and those no index lists.
        let used = NewChunks::new(self.spill());
        let mut unindexed = 0usize;
        let mut use_chunk = |id: &ChunkId| -> Result<()> {
            if !used.insert(*id)? {
                return Ok(());
            }
            match self.state.index.get(id) {
                None => unindexed += 1,
                Some(at) => {
                    if let Some(base) = at.blob.base {
                        if used.insert(base)? && !self.state.index.contains(&base) {
                            unindexed += 1;
                        }
                    }
                }
            }
            Ok(())
        };
        // The trees among them, repacked apart from file data: tree packs are read
        // (and cached) whole.
        let mut trees: HashSet<ChunkId> = HashSet::new();
        let (store, keys, index) = (&*self.store, &*self.keys, &self.state.index);
        let cache = self.cache.as_deref();
        let mut seen = SeenTrees::default();
        let rejected = self.authentic_snapshots(|r, mut snap| {
            // A tree that cannot be read may name chunks: nothing is freed then.
            let name = r.name.to_hex();
            // Node by node: a snapshot of millions of files is never held whole; a
            // directory an earlier snapshot shares adds no chunk and is not read again.
            let read = crate::trees::for_each_node_unseen(
                TreeReader::new(store, keys, index, cache),
                &name,
                &mut snap,
                &mut |n| n.chunks.iter().try_for_each(&mut use_chunk),
                Some(&mut seen),
            )?;
            seen.keep();
            read.iter().try_for_each(&mut use_chunk)?;
            trees.extend(read);
            Ok(())
        })?;
        // A damaged snapshot may be a real one whose data is still here: prune frees
        // nothing until it is repaired or removed on purpose.
        crate::refuse_unauthentic(&rejected)?;
        // Everything in use must be indexed before anything goes: a chunk in use that
        // no index names means an index object is missing or was replaced by an older
        // one, and deleting by this index would delete data a snapshot needs.
        if unindexed > 0 {
            return Err(RepoError::Damaged {
                kind: "index",
                name: format!("({unindexed} chunks in use)"),
                source: backlock_core::FormatError::Malformed {
                    what: "index",
                    detail: "snapshots need chunks that no index object lists; nothing was deleted. Run `backlock check`".into(),
                },
            });
        }
        pause(step::PRUNE_PLANNED);
        crate::interrupt::check()?;
        let index = &self.state.index;
        let extents = index.pack_extents();
        let verdicts = verdicts(index, extents.len(), &used);
        let stored = stored_sizes(self.listed(ObjectKind::Pack)?);

        // The packs that stay, and the live blobs of those repacked, a group of packs at
        // a time: only a group's blobs are held, and the index objects of what stays
        // are written as each group ends.
        let mut written: i64 = 0;
        let mut new_index = NewIndex::default();
        let mut stays: Vec<PackEntry> = Vec::new();
        let mut repacker = Repacker::new(self.config.pack_size as usize);
        let selected: Vec<usize> = (0..extents.len())
            .filter(|&n| verdicts[n] != Verdict::Delete)
            .collect();
        let verdict: HashMap<ObjectName, Verdict> = selected
            .iter()
            .map(|&n| (extents[n].pack, verdicts[n]))
            .collect();
        index.for_each_group(&extents, &selected, &self.spill(), |group| {
            self.state.lock.refresh_if_due()?;
            for (pack, mut blobs) in group {
                let verdict = verdict[&pack];
                if verdict != Verdict::KeepAll {
                    blobs.retain(|b| used.contains(&b.id));
                }
                match verdict {
                    // Not selected: deleted below.
                    Verdict::Delete => {}
                    Verdict::KeepAll | Verdict::KeepLive => stays.push(PackEntry { pack, blobs }),
                    Verdict::Repack => {
                        crate::interrupt::check()?;
                        self.state.lock.refresh_if_due()?;
                        written += repacker.copy(&self, &pack, &blobs, &trees, &mut stays)?;
                        summary.packs_repacked += 1;
                    }
                }
            }
            // The packs a group keeps, and the new packs it filled, are indexed now; the
            // index set naming them comes once every group is done.
            if !stays.is_empty() {
                new_index.add(&self, std::mem::take(&mut stays))?;
            }
            Ok(())
        })?;
        written += repacker.finish(&self, &mut stays)?;
        // An empty repository still gets an index object, as it always has.
        if !stays.is_empty() || new_index.names.is_empty() {
            new_index.add(&self, stays)?;
        }
        written += new_index.written;
        summary.index_objects_replaced =
            self.install_index(&self.state.live, new_index.names, Some(step::PRUNE_INDEXED))?;

        let mut freed: i64 = 0;
        for name in stored.keys().filter(|n| !new_index.packs.contains(*n)) {
            self.store.delete(ObjectKind::Pack, name)?;
            freed += stored[name] as i64;
            summary.packs_deleted += 1;
        }
        summary.bytes_freed = freed - written;
        Ok(summary)
    }
}

/// The index objects prune has written so far, and the packs they name.
#[derive(Default)]
struct NewIndex {
    names: Vec<ObjectName>,
    packs: HashSet<String>,
    written: i64,
}

impl NewIndex {
    fn add<S>(&mut self, repo: &Repository<S>, stays: Vec<PackEntry>) -> Result<()> {
        self.packs.extend(stays.iter().map(|p| p.pack.to_hex()));
        let (names, n) = repo.write_index_objects(stays)?;
        self.names.extend(names);
        self.written += n as i64;
        Ok(())
    }
}

/// Copies the blobs in use of mostly-unused packs into new packs: one being filled
/// for file data, one for trees (tree packs are read, and cached, whole).
struct Repacker {
    sealers: [Option<(ObjectName, PackSealer, Vec<BlobEntry>)>; 2],
    pack_size: usize,
}

impl Repacker {
    fn new(pack_size: usize) -> Self {
        Repacker {
            sealers: [None, None],
            pack_size,
        }
    }

    /// Copies `live` of `pack` (re-sealed as stored: no decompression); each new pack
    /// filled goes to `stays`. Returns the bytes written.
    fn copy<S>(
        &mut self,
        repo: &Repository<S>,
        pack: &ObjectName,
        live: &[BlobEntry],
        trees: &HashSet<ChunkId>,
        stays: &mut Vec<PackEntry>,
    ) -> Result<i64> {
        let name = pack.to_hex();
        let damaged = |e| RepoError::damaged(ObjectKind::Pack, &name, e);
        let data = repo.store.get(ObjectKind::Pack, &name)?;
        let opener = PackOpener::new(&repo.keys, &name, &data).map_err(damaged)?;
        let mut written = 0;
        for b in live {
            let plain = open_blob_at(&opener, &name, &data, 0, b)?;
            let sealer = &mut self.sealers[usize::from(trees.contains(&b.id))];
            if sealer
                .as_ref()
                .is_some_and(|(_, s, _)| s.len() + plain.len() > self.pack_size)
            {
                written += flush(repo, sealer.take().expect("checked"), stays)?;
            }
            let (_, s, blobs) = sealer.get_or_insert_with(|| {
                let n = ObjectName::random();
                (
                    n,
                    PackSealer::new(&repo.keys, &n.to_hex(), self.pack_size),
                    Vec::new(),
                )
            });
            let place = s.push(&b.id, &plain);
            blobs.push(BlobEntry {
                seq: place.seq,
                offset: place.offset,
                length: place.length,
                ..*b
            });
        }
        Ok(written)
    }

    /// Stores the packs still being filled. Returns the bytes written.
    fn finish<S>(self, repo: &Repository<S>, stays: &mut Vec<PackEntry>) -> Result<i64> {
        let mut written = 0;
        for s in self.sealers.into_iter().flatten() {
            written += flush(repo, s, stays)?;
        }
        Ok(written)
    }
}

/// Stores a filled pack and adds it to `stays`. Returns its size.
fn flush<S>(
    repo: &Repository<S>,
    (name, sealer, blobs): (ObjectName, PackSealer, Vec<BlobEntry>),
    stays: &mut Vec<PackEntry>,
) -> Result<i64> {
    let bytes = sealer.finish();
    repo.store.put(ObjectKind::Pack, &name.to_hex(), &bytes)?;
    stays.push(PackEntry { pack: name, blobs });
    Ok(bytes.len() as i64)
}

/// What prune does with an indexed pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// No blob of it is in use (or the index places every one elsewhere).
    Delete,
    /// Every blob is in use.
    KeepAll,
    /// Kept, and indexed with only the blobs in use: too little is unused to repack.
    KeepLive,
    /// Its blobs in use are copied into new packs, and it is deleted.
    Repack,
}

/// Each pack's verdict, by its number in [`Index::pack_extents`], from one pass over
/// the index that sums its bytes and those in use: memory per pack, not per blob.
fn verdicts(index: &Index, packs: usize, used: &NewChunks) -> Vec<Verdict> {
    // Per pack: blobs, blobs in use, bytes, bytes in use.
    let mut sums = vec![(0usize, 0usize, 0u64, 0u64); packs];
    index.for_each_entry(|e| {
        let sum = &mut sums[e.pack as usize];
        sum.0 += 1;
        sum.2 += u64::from(e.length);
        if used.contains(&e.id) {
            sum.1 += 1;
            sum.3 += u64::from(e.length);
        }
    });
    sums.into_iter()
        .map(|(blobs, live, bytes, live_bytes)| {
            if live == 0 {
                Verdict::Delete
            } else if live == blobs {
                Verdict::KeepAll
            } else if (bytes - live_bytes) as f64 >= REPACK_DEAD_FRACTION * bytes as f64 {
                Verdict::Repack
            } else {
                Verdict::KeepLive
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::testrepo::TestRepo;
    use std::collections::HashSet;

    /// A prune that repacks keeps trees and file data in packs apart: a tree pack is
    /// read, and cached, whole.
    #[test]
    fn a_repack_keeps_trees_apart_from_file_data() {
        let t = TestRepo::new();
        let (dir, src, open, opts) = (t.dir.path(), &t.src, || t.open(), t.options());
        std::fs::create_dir_all(src.join("a")).unwrap();
        // Unchanged from the first day: its tree stays live in a pack of dead trees.
        std::fs::create_dir_all(src.join("b")).unwrap();
        std::fs::write(src.join("b/kept.txt"), b"kept").unwrap();
        // Small packs, several snapshots, most files then deleted: packs of data and of
        // trees end up partly dead, and are repacked in one prune.
        for day in 0..4u64 {
            for f in 0..20u64 {
                let body = backlock_testkit::tree::random_bytes(day * 100 + f, 5_000);
                std::fs::write(src.join(format!("a/{f}-{day}.bin")), body).unwrap();
            }
            let mut repo = open().load_index().unwrap();
            repo.config.pack_size = 1 << 16;
            repo.backup(&opts).unwrap();
            for f in 0..20u64 {
                if f % 3 != 0 {
                    std::fs::remove_file(src.join(format!("a/{f}-{day}.bin"))).unwrap();
                }
            }
        }
        open().forget_keep_last(1).unwrap();
        let mut pruner = open().load_index_exclusive().unwrap();
        pruner.config.pack_size = 1 << 16;
        let summary = pruner.prune().unwrap();
        assert!(summary.packs_repacked > 0, "nothing was repacked");

        let repo = open().load_index().unwrap();
        let (latest, _) = repo.latest().unwrap();
        let mut snap = repo.load_snapshot(&latest).unwrap();
        let index = &repo.state.index;
        let trees: HashSet<_> =
            crate::trees::read_nodes(&*repo.store, &repo.keys, index, None, "s", &mut snap)
                .unwrap()
                .into_iter()
                .collect();
        assert!(!trees.is_empty());
        for (pack, blobs) in index.by_pack() {
            let kinds: HashSet<bool> = blobs.iter().map(|b| trees.contains(&b.id)).collect();
            assert_eq!(kinds.len(), 1, "pack {pack:?} mixes trees and file data");
        }
        let target = dir.join("restored");
        repo.restore(&latest, &target).unwrap();
    }
}
