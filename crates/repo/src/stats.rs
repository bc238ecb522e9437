//! `stats`: how large the snapshots are, what the repository stores for them, and
//! what each snapshot added.
//!
//! Snapshots are read oldest first; a chunk counts for the first snapshot that uses
//! it. A directory whose tree parts an earlier snapshot had already is not read
//! again: everything in it was counted then. So the cost grows with what changed
//! between snapshots, and the chunks seen are held as a backup holds its new ones
//! (on disk past the in-memory limit).

use crate::{
    backup::NewChunks, browse::SnapshotTrees, error::Result, select::SnapshotInfo, Indexed,
    Repository,
};
use backlock_core::tree::EntryKind;
use backlock_store::ObjectKind;
use serde::Serialize;

/// One snapshot's part of [`Stats`].
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotStats {
    /// The snapshot.
    #[serde(flatten)]
    pub info: SnapshotInfo,
    /// Its files and their bytes, as a restore writes them.
    pub files: u64,
    /// Bytes of its files.
    pub logical_bytes: u64,
    /// Bytes of the chunks no earlier snapshot (of those counted) uses: what it added.
    pub new_bytes: u64,
    /// Those chunks.
    pub new_chunks: u64,
}

/// What `stats` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Each snapshot counted, oldest first.
    pub snapshots: Vec<SnapshotStats>,
    /// Bytes a restore of every one of them would write.
    pub logical_bytes: u64,
    /// Bytes of the distinct chunks they use (after deduplication, before
    /// compression).
    pub unique_bytes: u64,
    /// Those chunks.
    pub chunks: u64,
    /// Bytes those chunks take in their packs (compressed and encrypted).
    pub stored_chunk_bytes: u64,
    /// Bytes of every object in the store (packs, index, snapshots, and what no
    /// snapshot uses any more until a prune).
    pub repository_bytes: u64,
    /// `logical_bytes / unique_bytes`.
    pub dedup_ratio: f64,
    /// `unique_bytes / stored_chunk_bytes`.
    pub compression_ratio: f64,
}

impl Repository<Indexed> {
    /// Counts `snapshots` (oldest first; see the module's doc).
    pub fn stats(&self, snapshots: &[SnapshotInfo]) -> Result<Stats> {
        let index = &self.state.index;
        let seen = NewChunks::new(self.spill());
        let mut stats = Stats::default();
        for info in snapshots {
            let snap = self.load_snapshot(&info.snapshot_ref())?;
            // Its totals are recorded in it (counted from its nodes before version 3).
            let totals = snap.summary().unwrap_or_default();
            let mut trees = SnapshotTrees::of(self, &info.id, snap)?;
            let (mut new_bytes, mut new_chunks) = (0, 0);
            let root = trees.root.clone();
            // The root itself: a snapshot the same as one counted adds nothing.
            let mut descend = false;
            for id in &root {
                descend |= seen.insert(*id)?;
            }
            if descend {
                trees.walk(&[], &root, &mut |_, entry| match &entry.kind {
                    // A directory seen whole before holds nothing new.
                    EntryKind::Dir(parts) => {
                        let mut new = false;
                        for id in parts {
                            new |= seen.insert(*id)?;
                        }
                        Ok(new)
                    }
                    EntryKind::File(chunks) | EntryKind::SqliteFile(chunks) => {
                        for id in chunks {
                            if seen.insert(*id)? {
                                let loc = index.get(id);
                                new_bytes += loc.map_or(0, |l| u64::from(l.blob.raw_length));
                                stats.stored_chunk_bytes +=
                                    loc.map_or(0, |l| u64::from(l.blob.length));
                                new_chunks += 1;
                            }
                        }
                        Ok(false)
                    }
                    _ => Ok(false),
                })?;
            }
            let (files, logical) = (totals.files, totals.bytes);
            stats.logical_bytes += logical;
            stats.unique_bytes += new_bytes;
            stats.chunks += new_chunks;
            stats.snapshots.push(SnapshotStats {
                info: info.clone(),
                files,
                logical_bytes: logical,
                new_bytes,
                new_chunks,
            });
        }
        for kind in [ObjectKind::Pack, ObjectKind::Index, ObjectKind::Snapshot] {
            stats.repository_bytes += self.listed(kind)?.iter().map(|o| o.size).sum::<u64>();
        }
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        stats.dedup_ratio = ratio(stats.logical_bytes, stats.unique_bytes);
        stats.compression_ratio = ratio(stats.unique_bytes, stats.stored_chunk_bytes);
        Ok(stats)
    }
}
