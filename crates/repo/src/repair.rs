//! `repair index`: one new index of every blob that can still be read.
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
    error::{RepoError, Result},
    index::{read_index_object, stored_sizes},
    Open, Repository,
};
use backlock_core::{
    envelope::ObjectKind,
    format::{BlobEntry, PackEntry},
    ids::ObjectName,
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
