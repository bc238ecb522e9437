//! `repair index`: one new index of every blob that can still be read; `repair
//! snapshots`: snapshots rewritten without what the store lost.
//!
//! Packs do not describe themselves (docs/FORMAT.md §Envelope: blob boundaries and
//! chunk IDs are only in index objects), so the index is rebuilt from every index
//! object that still opens, live or not (one left by a stopped backup too), keeping
//! the blobs whose pack the store still holds at the length they need. What no index
//! object describes any more cannot be indexed again and is reported. The new index
//! is written as a prune writes its own: new objects, an index set of a new epoch
//! naming only them, then the old objects deleted. After it, nothing claims a chunk
//! whose pack is gone, so the next backup stores such a chunk again instead of
//! pointing at the hole, and `check` names the snapshots that lost data.

use crate::{
    browse::SnapshotTrees,
    error::{RepoError, Result},
    index::{read_index_object, stored_sizes},
    Indexed, Open, Repository,
};
use backlock_core::{
    envelope::ObjectKind,
    format::{self, BlobEntry, Node, PackEntry, Snapshot},
    ids::{ChunkId, ObjectName},
    tree::{EntryKind, TreeBuilder},
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// What `repair index` found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairIndexSummary {
    /// Index objects read.
    pub index_objects_read: usize,
    /// Index objects that did not open, with why: what they alone described is lost
    /// to the index.
    pub index_objects_unreadable: Vec<String>,
    /// Packs in the new index, and their blobs.
    pub packs_indexed: usize,
    /// Blobs in the new index.
    pub blobs_indexed: usize,
    /// Packs an index object named that the store does not have.
    pub packs_missing: Vec<String>,
    /// Blobs dropped: in a missing pack, or past the end of a shortened one.
    pub blobs_dropped: usize,
    /// Packs in the store that no index object describes (their data cannot be
    /// indexed again; `prune` removes them).
    pub packs_undescribed: usize,
    /// Index objects the new index replaced.
    pub index_objects_replaced: usize,
}

impl Repository<Open> {
    /// Rebuilds the index (see the module's doc), under the exclusive lock.
    pub fn repair_index(&self) -> Result<RepairIndexSummary> {
        if self.hidden.rotating() {
            return Err(RepoError::Usage(
                "a key rotation is unfinished: run `backlock rotate-key` to complete it, then repair".into(),
            ));
        }
        let lock = self.lock(true)?;
        self.check_writer_level()?;
        let live = self.live_indexes()?;
        // Never build on index sets the store rolled back.
        live.writable()?;
        let mut summary = RepairIndexSummary::default();
        // Every blob described, by pack and place in it.
        let mut described: HashMap<ObjectName, BTreeMap<u32, BlobEntry>> = HashMap::new();
        for o in self.listed(ObjectKind::Index)? {
            crate::interrupt::check()?;
            lock.refresh_if_due()?;
            match read_index_object(&*self.store, &self.keys, &o.name) {
                Ok(file) => {
                    for pack in file.packs {
                        let blobs = described.entry(pack.pack).or_default();
                        for b in pack.blobs {
                            blobs.insert(b.seq, b);
                        }
                    }
                    summary.index_objects_read += 1;
                }
                Err(RepoError::WrongKey) => return Err(RepoError::WrongKey),
                Err(e) => summary
                    .index_objects_unreadable
                    .push(format!("{}: {e}", o.name)),
            }
        }
        let stored = stored_sizes(self.listed(ObjectKind::Pack)?);
        let mut keep = Vec::new();
        for (pack, blobs) in described {
            let name = pack.to_hex();
            let Some(&size) = stored.get(&name) else {
                summary.blobs_dropped += blobs.len();
                summary.packs_missing.push(name);
                continue;
            };
            let (whole, cut): (Vec<BlobEntry>, Vec<BlobEntry>) = blobs
                .into_values()
                .partition(|b| b.offset + u64::from(b.length) <= size);
            summary.blobs_dropped += cut.len();
            if !whole.is_empty() {
                summary.blobs_indexed += whole.len();
                keep.push(PackEntry { pack, blobs: whole });
            }
        }
        summary.packs_missing.sort();
        summary.packs_indexed = keep.len();
        let indexed: HashSet<String> = keep.iter().map(|p| p.pack.to_hex()).collect();
        summary.packs_undescribed = stored.keys().filter(|n| !indexed.contains(*n)).count();

        let (replaced, _) = self.replace_index(&live, keep, None)?;
        summary.index_objects_replaced = replaced;
        Ok(summary)
    }
}

/// A snapshot that names data the store no longer has, and what it lost.
#[derive(Clone, Debug, Serialize)]
pub struct LosingSnapshot {
    /// Its name.
    pub snapshot: String,
    /// Its sequence number.
    pub seq: u64,
    /// The entries whose data is gone, each with why.
    pub lost: Vec<crate::SkippedEntry>,
    /// A snapshot written in its place by an earlier repair that stopped before
    /// deleting it: only the deletion is left to do.
    pub replaced_by: Option<String>,
}

/// One snapshot `repair snapshots` rewrote.
#[derive(Clone, Debug, Serialize)]
pub struct RewrittenSnapshot {
    /// The snapshot replaced (deleted).
    pub replaced: String,
    /// The one written in its place, with the same sequence number.
    pub snapshot: String,
    /// Its sequence number.
    pub seq: u64,
    /// Entries left out because their data is gone.
    pub lost: usize,
}

/// Where the blobs the store still holds lie.
struct Held<'a> {
    index: &'a crate::index::Index,
    sizes: HashMap<String, u64>,
}

impl Held<'_> {
    /// True when chunk `id` can be read: indexed, its pack stored long enough, and a
    /// delta's base likewise.
    fn has(&self, id: &ChunkId) -> bool {
        let Some(loc) = self.index.get(id) else {
            return false;
        };
        let stored = self
            .sizes
            .get(&loc.pack.to_hex())
            .is_some_and(|&size| loc.blob.offset + u64::from(loc.blob.length) <= size);
        stored
            && loc
                .blob
                .base
                .is_none_or(|base| base != *id && self.has_whole(&base))
    }

    fn has_whole(&self, id: &ChunkId) -> bool {
        self.index.get(id).is_some_and(|l| l.blob.base.is_none()) && self.has(id)
    }
}

impl Repository<Indexed> {
    fn held(&self) -> Result<Held<'_>> {
        Ok(Held {
            index: &self.state.index,
            sizes: stored_sizes(self.listed(ObjectKind::Pack)?),
        })
    }

    /// Gives each node of snapshot `trees` whose data the store holds to `each`, in
    /// walk order, and records in `lost` every entry it cannot: a file missing a
    /// chunk, a directory whose tree is gone (kept, empty).
    fn salvage(
        &self,
        held: &Held,
        trees: &mut SnapshotTrees,
        lost: &mut Vec<crate::SkippedEntry>,
        each: &mut dyn FnMut(Node) -> Result<()>,
    ) -> Result<()> {
        let gone = |path: &[u8], reason: String| crate::SkippedEntry {
            path: String::from_utf8_lossy(path).into_owned(),
            reason,
        };
        let unreadable = |e: &RepoError| {
            matches!(
                e,
                RepoError::Damaged { .. }
                    | RepoError::Store(backlock_store::StoreError::NotFound { .. })
            )
        };
        let root = trees.root.clone();
        let top = match trees.dir(&root) {
            Ok(tree) => tree.entries,
            Err(e) if unreadable(&e) => {
                lost.push(gone(
                    b"",
                    format!("every entry: the snapshot's top directory cannot be read ({e})"),
                ));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut open = vec![(Vec::new(), top.into_iter())];
        while let Some((dir, entries)) = open.last_mut() {
            let Some(entry) = entries.next() else {
                open.pop();
                continue;
            };
            let mut path = dir.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&entry.name);
            match &entry.kind {
                EntryKind::Dir(parts) => {
                    let below = match trees.dir(parts) {
                        Ok(tree) => tree.entries,
                        Err(e) if unreadable(&e) => {
                            lost.push(gone(
                                &path,
                                format!("what the directory held: its tree cannot be read ({e})"),
                            ));
                            Vec::new()
                        }
                        Err(e) => return Err(e),
                    };
                    each(entry.into_node(path.clone()).0)?;
                    open.push((path, below.into_iter()));
                }
                EntryKind::File(chunks) | EntryKind::SqliteFile(chunks) => {
                    let missing = chunks.iter().filter(|c| !held.has(c)).count();
                    match missing {
                        0 => each(entry.into_node(path).0)?,
                        n => lost.push(gone(
                            &path,
                            format!(
                                "lost: {n} of its {} chunks are missing from the store",
                                chunks.len()
                            ),
                        )),
                    }
                }
                _ => each(entry.into_node(path).0)?,
            }
        }
        Ok(())
    }

    /// `repair snapshots`, first step: the snapshots that name data the store no
    /// longer has, with what each would lose.
    pub fn snapshots_losing_data(&self) -> Result<Vec<LosingSnapshot>> {
        let held = self.held()?;
        // First which snapshots replace others (a repair cut short), then each
        // snapshot's trees: one snapshot held at a time.
        let mut replacing: HashMap<ObjectName, String> = HashMap::new();
        let ignored = self.authentic_snapshots(|r, snap| {
            if let Some(old) = snap.replaces() {
                replacing.insert(old, r.name.to_hex());
            }
            Ok(())
        })?;
        crate::refuse_unauthentic(&ignored)?;
        let mut found = Vec::new();
        self.authentic_snapshots(|r, snap| {
            let name = r.name.to_hex();
            let mut lost = Vec::new();
            let mut trees = SnapshotTrees::of(self, &name, snap)?;
            self.salvage(&held, &mut trees, &mut lost, &mut |_| Ok(()))?;
            if !lost.is_empty() {
                found.push(LosingSnapshot {
                    snapshot: name,
                    seq: r.seq,
                    lost,
                    replaced_by: replacing.get(&r.name).cloned(),
                });
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// `repair snapshots`, second step: writes in place of each of `losing` a
    /// snapshot of the same sequence number, time, host, paths and tags holding
    /// what can still be read and naming what was lost (`incomplete`, `replaces`),
    /// then deletes it. Call under the exclusive lock (`load_index_exclusive`).
    pub fn rewrite_snapshots(&self, losing: &[LosingSnapshot]) -> Result<Vec<RewrittenSnapshot>> {
        self.state.live.writable()?;
        self.check_writer_level()?;
        let held = self.held()?;
        let mut done = Vec::new();
        for l in losing {
            let old = ObjectName::parse(&l.snapshot).expect("a listed snapshot name");
            if let Some(new) = &l.replaced_by {
                self.store.delete(ObjectKind::Snapshot, &l.snapshot)?;
                self.store.flush()?;
                done.push(RewrittenSnapshot {
                    replaced: l.snapshot.clone(),
                    snapshot: new.clone(),
                    seq: l.seq,
                    lost: l.lost.len(),
                });
                continue;
            }
            let r = crate::SnapshotRef {
                name: old,
                seq: l.seq,
            };
            let snap = self.load_snapshot(&r)?;
            let mut trees = SnapshotTrees::of(self, &l.snapshot, snap.clone())?;
            let mut packer = self.tree_packer()?;
            let mut builder = TreeBuilder::new(&self.keys);
            let mut summary = format::Summary::default();
            let mut lost = Vec::new();
            self.salvage(&held, &mut trees, &mut lost, &mut |node| {
                summary.add(&node);
                packer.push(&mut builder, node)
            })?;
            if summary.files + summary.dirs == 0 {
                return Err(RepoError::Usage(format!(
                    "snapshot {} (#{}) has nothing left that can be read: forget it instead (`backlock forget {}`)",
                    &l.snapshot[..8],
                    l.seq,
                    &l.snapshot[..8]
                )));
            }
            let root = packer.finish_trees(builder)?;
            let (packs, _) = packer.finish()?;
            let (indexes, _) = self.write_index_objects(packs)?;
            self.write_index_set(&indexes)?;
            let mut skipped = snap.skipped().unwrap_or_default();
            skipped.extend(lost.iter().map(|k| format::Skipped {
                path: k.path.clone().into_bytes(),
                reason: k.reason.clone(),
            }));
            skipped.sort_by(|a, b| a.path.cmp(&b.path));
            let mut new = Snapshot {
                nodes: Vec::new(),
                root,
                ..snap
            };
            new.set_summary(&summary);
            new.set_skipped(&skipped);
            new.set_replaces(&old);
            let (name, _) = self.commit_snapshot(new, None)?;
            crate::testhook::pause(crate::testhook::step::REPAIR_REWRITTEN);
            self.store.delete(ObjectKind::Snapshot, &l.snapshot)?;
            self.store.flush()?;
            done.push(RewrittenSnapshot {
                replaced: l.snapshot.clone(),
                snapshot: name.to_hex(),
                seq: l.seq,
                lost: lost.len(),
            });
        }
        Ok(done)
    }
}
