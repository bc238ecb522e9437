//! The index: where each chunk is stored.
//!
//! A repository holds one blob per distinct chunk, and a chat database alone is one
//! chunk per 16 KiB run of pages, so the index is the largest structure a backup or restore
//! keeps. It is a sorted table of 64-byte entries (pack names and delta bases are kept
//! once, in side tables). Up to a limit ([`DEFAULT_IN_MEMORY`] entries unless the
//! repository was opened with another) the table is in memory, found through a table
//! of ID prefixes: chunk IDs are keyed MACs, so they spread evenly and a prefix bucket
//! holds a handful of entries. A larger one is kept in a scratch file ([`crate::spill`])
//! and read a page per lookup, so that memory stays flat however many files a
//! repository holds.

use crate::cache::RepoCache;
use crate::error::{RepoError, Result};
use backlock_core::{
    blob::BlobDecoder,
    envelope::{self, ObjectKind},
    format::{BlobEntry, IndexFile, PackEntry},
    ids::{ChunkId, ObjectName},
    kdf::RepoKeys,
};
use backlock_store::{ObjectStore, StoreError};
use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, HashSet},
    ops::Range,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Condvar, Mutex,
    },
};

/// A chunk's location: its pack and blob entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The pack holding the blob.
    pub pack: ObjectName,
    /// The blob within it.
    pub blob: BlobEntry,
}

/// An indexed blob's place in the index: a 4-byte handle for plans of many chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Slot(u32);

/// One indexed blob. Pack and base are numbers into [`Index`]'s side tables.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub(crate) id: ChunkId,
    pub(crate) offset: u64,
    pub(crate) pack: u32,
    pub(crate) seq: u32,
    pub(crate) length: u32,
    pub(crate) raw_length: u32,
    /// 1 + the base's position in `bases` for a delta blob; 0 for a whole blob.
    pub(crate) base: u32,
    /// Its place in the order entries were added (it fits the struct's padding): of
    /// two entries of one ID, the first added is kept.
    pub(crate) added: u32,
}

/// Index entries kept in memory by default: 8 MiB, the index of about 130,000 small
/// files (a phone's chat folder is a few thousand chunks). A larger index goes to a
/// scratch file, so that a command's memory at a million files is what it is at a
/// hundred thousand; a backup's new chunk IDs move out past the same count.
pub const DEFAULT_IN_MEMORY: usize = 1 << 17;

/// Where an index larger than its in-memory limit goes.
#[derive(Clone, Debug)]
pub(crate) struct Spill {
    /// The directory of the scratch files.
    pub(crate) dir: std::path::PathBuf,
    /// Entries held in memory at most.
    pub(crate) in_memory: usize,
}

impl Spill {
    /// Blob entries a command holds at once while it goes through packs a group at a
    /// time: half the index's in-memory limit (4 MiB of entries by default).
    pub(crate) fn group_blobs(&self) -> usize {
        (self.in_memory / 2).max(1)
    }

    /// A scratch file in [`Spill::dir`] could not be written or read.
    pub(crate) fn scratch(&self, source: std::io::Error) -> RepoError {
        RepoError::Scratch {
            path: self.dir.clone(),
            source,
        }
    }
}

impl Default for Spill {
    fn default() -> Self {
        Spill {
            dir: std::env::temp_dir(),
            in_memory: DEFAULT_IN_MEMORY,
        }
    }
}

/// Bits of a chunk ID that pick its bucket in the prefix table.
const PREFIX_BITS: u32 = 16;

fn prefix(id: &ChunkId) -> usize {
    u16::from_be_bytes([id.0[0], id.0[1]]) as usize >> (16 - PREFIX_BITS)
}

/// All index objects, merged.
#[derive(Debug)]
pub struct Index {
    table: Table,
    packs: Vec<ObjectName>,
    bases: Vec<ChunkId>,
}

/// The entries, sorted by ID, one per ID.
#[derive(Debug)]
enum Table {
    Memory {
        entries: Vec<Entry>,
        /// `entries[starts[p]..starts[p + 1]]` are the entries whose ID has prefix `p`.
        starts: Vec<u32>,
    },
    Spilled(crate::spill::Table),
}

impl Default for Index {
    fn default() -> Self {
        Index {
            table: Table::memory(Vec::new()),
            packs: Vec::new(),
            bases: Vec::new(),
        }
    }
}

impl Table {
    fn memory(entries: Vec<Entry>) -> Self {
        let mut starts = Vec::with_capacity((1 << PREFIX_BITS) + 1);
        let mut at = 0;
        for p in 0..=(1usize << PREFIX_BITS) {
            while at < entries.len() && prefix(&entries[at].id) < p {
                at += 1;
            }
            starts.push(at as u32);
        }
        Table::Memory { entries, starts }
    }
}

/// Collects index objects; [`IndexBuilder::finish`] sorts them into an [`Index`].
#[derive(Default)]
pub(crate) struct IndexBuilder {
    /// The entries not yet spilled, at most `spill.in_memory`.
    entries: Vec<Entry>,
    spill: Spill,
    runs: Option<crate::spill::Runs>,
    added: u32,
    packs: Vec<ObjectName>,
    pack_numbers: HashMap<ObjectName, u32>,
    bases: Vec<ChunkId>,
}

impl IndexBuilder {
    /// A builder that keeps at most `spill.in_memory` entries in memory.
    pub(crate) fn new(spill: Spill) -> Self {
        IndexBuilder {
            spill,
            ..IndexBuilder::default()
        }
    }

    /// Adds the blobs of one index object. Where two objects list the same chunk, the
    /// one added first wins, as it always has.
    pub(crate) fn add(&mut self, file: &IndexFile) -> Result<()> {
        for pack in &file.packs {
            let next = self.packs.len() as u32;
            let number = *self.pack_numbers.entry(pack.pack).or_insert(next);
            if number == next {
                self.packs.push(pack.pack);
            }
            for blob in &pack.blobs {
                if self.entries.len() >= self.spill.in_memory.max(1) {
                    self.spill_run()?;
                }
                let base = match blob.base {
                    None => 0,
                    Some(b) => {
                        self.bases.push(b);
                        self.bases.len() as u32
                    }
                };
                self.entries.push(Entry {
                    id: blob.id,
                    offset: blob.offset,
                    pack: number,
                    seq: blob.seq,
                    length: blob.length,
                    raw_length: blob.raw_length,
                    base,
                    added: self.added,
                });
                self.added += 1;
            }
        }
        Ok(())
    }

    /// Sorts the entries in memory and moves them to a run in the scratch file.
    fn spill_run(&mut self) -> Result<()> {
        self.entries.sort_unstable_by_key(|e| (e.id, e.added));
        let runs = match &mut self.runs {
            Some(runs) => runs,
            None => {
                let runs =
                    crate::spill::Runs::new(&self.spill.dir).map_err(|e| self.spill.scratch(e))?;
                self.runs.insert(runs)
            }
        };
        let pushed = runs.push(&self.entries);
        pushed.map_err(|e| self.spill.scratch(e))?;
        self.entries.clear();
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<Index> {
        // In place (a stable sort's scratch space would be half the index again);
        // among entries of one ID the first added comes first and is kept.
        self.entries.sort_unstable_by_key(|e| (e.id, e.added));
        let table = match self.runs.take() {
            None => {
                let mut entries = std::mem::take(&mut self.entries);
                entries.dedup_by(|later, kept| later.id == kept.id);
                entries.shrink_to_fit();
                Table::memory(entries)
            }
            Some(runs) => {
                let merged = runs.merge(&self.entries, &self.spill.dir);
                Table::Spilled(merged.map_err(|e| self.spill.scratch(e))?)
            }
        };
        Ok(Index {
            table,
            packs: self.packs,
            bases: self.bases,
        })
    }
}

impl Index {
    /// Reads and authenticates the live index objects; those the sets name but the
    /// store does not hold are noted in `live.missing`. With a cache, the store's
    /// listing says which it holds, and only those not cached are fetched.
    pub(crate) fn load(
        store: &dyn ObjectStore,
        keys: &RepoKeys,
        live: &mut crate::indexset::LiveIndexes,
        cache: Option<&RepoCache>,
        spill: Spill,
    ) -> Result<Self> {
        let listed: Option<HashSet<String>> = match cache {
            Some(cache) => {
                let listed: HashSet<String> = store
                    .list(ObjectKind::Index)?
                    .into_iter()
                    .map(|o| o.name)
                    .collect();
                // Copies of objects a prune deleted are of no more use.
                cache.retain(
                    ObjectKind::Index,
                    &listed.iter().map(String::as_str).collect(),
                );
                Some(listed)
            }
            None => None,
        };
        let mut builder = IndexBuilder::new(spill);
        let threads = parallel_reads(store);
        // Added in name order: where two objects list a chunk, the first wins,
        // whichever thread read it first. A few objects ahead at most are held
        // decoded (a large repository's are hundreds of MiB together).
        let mut missing = Vec::new();
        read_in_order(
            &live.names,
            threads,
            2 * threads,
            |name| {
                if listed.as_ref().is_some_and(|l| !l.contains(name)) {
                    return Ok(None);
                }
                match read_index_cached(store, keys, name, cache) {
                    Ok(file) => Ok(Some(file)),
                    Err(RepoError::Store(StoreError::NotFound { .. })) => Ok(None),
                    Err(e) => Err(e),
                }
            },
            |name, file: Result<Option<IndexFile>>| -> Result<()> {
                match file? {
                    Some(file) => builder.add(&file)?,
                    None => missing.push(name.clone()),
                }
                Ok(())
            },
        )?;
        live.missing.extend(missing);
        builder.finish()
    }

    /// The slot of `id`, if it is indexed.
    pub(crate) fn slot(&self, id: &ChunkId) -> Option<Slot> {
        match &self.table {
            Table::Memory { entries, starts } => {
                let p = prefix(id);
                let (from, to) = (starts[p] as usize, starts[p + 1] as usize);
                entries[from..to]
                    .binary_search_by(|e| e.id.cmp(id))
                    .ok()
                    .map(|i| Slot((from + i) as u32))
            }
            Table::Spilled(table) => table
                .find(id)
                .unwrap_or_else(|e| crate::spill::unreadable(e))
                .map(|(i, _)| Slot(i as u32)),
        }
    }

    /// The slot of `id` and its entry, if it is indexed: one read of a large index.
    pub(crate) fn lookup(&self, id: &ChunkId) -> Option<(Slot, Entry)> {
        match &self.table {
            Table::Memory { entries, .. } => self.slot(id).map(|s| (s, entries[s.0 as usize])),
            Table::Spilled(table) => table
                .find(id)
                .unwrap_or_else(|e| crate::spill::unreadable(e))
                .map(|(i, e)| (Slot(i as u32), e)),
        }
    }

    /// The entry in `slot`.
    fn entry(&self, slot: Slot) -> Entry {
        match &self.table {
            Table::Memory { entries, .. } => entries[slot.0 as usize],
            Table::Spilled(table) => table
                .entry(slot.0 as usize)
                .unwrap_or_else(|e| crate::spill::unreadable(e)),
        }
    }

    /// Where the blob in `slot` is stored.
    pub(crate) fn location(&self, slot: Slot) -> Location {
        self.located(&self.entry(slot))
    }

    fn located(&self, e: &Entry) -> Location {
        Location {
            pack: self.packs[e.pack as usize],
            blob: BlobEntry {
                id: e.id,
                seq: e.seq,
                offset: e.offset,
                length: e.length,
                raw_length: e.raw_length,
                base: e.base.checked_sub(1).map(|b| self.bases[b as usize]),
            },
        }
    }

    /// True when the blob in `slot` is a delta.
    pub(crate) fn is_delta(&self, slot: Slot) -> bool {
        self.entry(slot).base != 0
    }

    /// Length of the chunk in `slot`.
    pub(crate) fn raw_length(&self, slot: Slot) -> u32 {
        self.entry(slot).raw_length
    }

    /// Sorts slots into read order: pack by pack, in the order the index lists the
    /// packs (the order they were written), by offset within a pack.
    pub(crate) fn read_order(&self, slot: Slot) -> (u32, u64) {
        let e = self.entry(slot);
        (e.pack, e.offset)
    }

    /// Where `id` is stored.
    pub fn get(&self, id: &ChunkId) -> Option<Location> {
        self.slot(id).map(|s| self.location(s))
    }

    /// True when `id` is stored.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.slot(id).is_some()
    }

    /// Number of chunks indexed.
    pub fn len(&self) -> usize {
        match &self.table {
            Table::Memory { entries, .. } => entries.len(),
            Table::Spilled(table) => table.len(),
        }
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the index is kept in a scratch file rather than in memory.
    pub fn is_spilled(&self) -> bool {
        matches!(self.table, Table::Spilled(_))
    }

    /// The indexed blobs of each pack (tests: commands take packs a group at a time).
    #[cfg(test)]
    pub(crate) fn by_pack(&self) -> HashMap<ObjectName, Vec<BlobEntry>> {
        self.blobs_of(|_| true)
    }

    /// The indexed blobs of each pack that `wanted` selects (by its number in
    /// [`Index::pack_extents`]): one pass over the index, memory for those packs' blobs.
    pub(crate) fn blobs_of(
        &self,
        wanted: impl Fn(usize) -> bool,
    ) -> HashMap<ObjectName, Vec<BlobEntry>> {
        let mut out: HashMap<ObjectName, Vec<BlobEntry>> = HashMap::new();
        self.for_each_entry(|e| {
            if wanted(e.pack as usize) {
                let loc = self.located(&e);
                out.entry(loc.pack).or_default().push(loc.blob);
            }
        });
        out
    }

    /// The indexed blobs of the packs `selected` (numbers in `extents`, this index's
    /// [`Index::pack_extents`]), each pack's in the order they lie in it, given to `each`
    /// a group of about [`Spill::group_blobs`] blobs at a time: memory for one group's
    /// blobs. A spilled index of more than one group is read once: that pass sorts the
    /// selected entries into their groups in a scratch file ([`crate::spill::Buckets`]);
    /// one in memory is gone through once per group (at most a few).
    pub(crate) fn for_each_group(
        &self,
        extents: &[PackExtent],
        selected: &[usize],
        spill: &Spill,
        mut each: impl FnMut(HashMap<ObjectName, Vec<BlobEntry>>) -> Result<()>,
    ) -> Result<()> {
        let most = spill.group_blobs();
        let groups: Vec<&[usize]> = pack_groups(selected, |n| extents[n].blobs, most).collect();
        let mut group_of = vec![u32::MAX; extents.len()];
        for (g, group) in groups.iter().enumerate() {
            group.iter().for_each(|&n| group_of[n] = g as u32);
        }
        let by_pack = |mut blobs: HashMap<ObjectName, Vec<BlobEntry>>| {
            blobs.values_mut().for_each(|b| b.sort_by_key(|b| b.offset));
            blobs
        };
        if groups.len() == 1 || !self.is_spilled() {
            for g in 0..groups.len() as u32 {
                crate::interrupt::check()?;
                each(by_pack(self.blobs_of(|n| group_of[n] == g)))?;
            }
            return Ok(());
        }
        let scratch = |e| spill.scratch(e);
        let mut buckets =
            crate::spill::Buckets::new(&spill.dir, groups.len(), most).map_err(scratch)?;
        let mut failed = None;
        self.for_each_entry(|e| {
            let g = group_of[e.pack as usize];
            if g != u32::MAX && failed.is_none() {
                failed = buckets.push(g as usize, e).err();
            }
        });
        if let Some(e) = failed {
            return Err(scratch(e));
        }
        for g in 0..groups.len() {
            crate::interrupt::check()?;
            let mut blobs: HashMap<ObjectName, Vec<BlobEntry>> = HashMap::new();
            buckets
                .read(g, |e| {
                    let loc = self.located(&e);
                    blobs.entry(loc.pack).or_default().push(loc.blob);
                })
                .map_err(scratch)?;
            each(by_pack(blobs))?;
        }
        Ok(())
    }

    /// Every pack an index object names, with the count of blobs the index places in it
    /// (none when every one is placed in another pack) and the end of its last blob, by
    /// number: memory for the packs, not for their blobs.
    pub(crate) fn pack_extents(&self) -> Vec<PackExtent> {
        let mut out: Vec<PackExtent> = self
            .packs
            .iter()
            .map(|&pack| PackExtent {
                pack,
                blobs: 0,
                end: 0,
            })
            .collect();
        self.for_each_entry(|e| {
            let extent = &mut out[e.pack as usize];
            extent.blobs += 1;
            extent.end = extent.end.max(e.offset + u64::from(e.length));
        });
        out
    }

    /// Every entry, once: one pass over the index, in memory or on disk.
    pub(crate) fn for_each_entry(&self, each: impl FnMut(Entry)) {
        match &self.table {
            Table::Memory { entries, .. } => entries.iter().copied().for_each(each),
            Table::Spilled(table) => table
                .for_each(each)
                .unwrap_or_else(|e| crate::spill::unreadable(e)),
        }
    }
}

/// `selected` (numbers of packs in [`Index::pack_extents`]) in groups of about `most`
/// blobs, pack `n` holding `blobs(n)`: what `check` reads, or `prune` rewrites the index
/// of, at once (a group's blob entries are held in memory).
fn pack_groups<'a>(
    selected: &'a [usize],
    blobs: impl Fn(usize) -> usize + 'a,
    most: usize,
) -> impl Iterator<Item = &'a [usize]> + 'a {
    let mut rest = selected;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut held = 0;
        let take = rest
            .iter()
            .take_while(|&&n| {
                let fits = held == 0 || held + blobs(n) <= most;
                held += blobs(n);
                fits
            })
            .count();
        let (group, tail) = rest.split_at(take);
        rest = tail;
        Some(group)
    })
}

/// An indexed pack's size as its index entries need it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PackExtent {
    pub(crate) pack: ObjectName,
    /// Blobs the index places in it.
    pub(crate) blobs: usize,
    /// Bytes the pack must have: the end of its last blob.
    pub(crate) end: u64,
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
    open_index_object(keys, name, &store.get(ObjectKind::Index, name)?)
}

fn open_index_object(keys: &RepoKeys, name: &str, sealed: &[u8]) -> Result<IndexFile> {
    let damaged = |e| RepoError::damaged(ObjectKind::Index, name, e);
    let (version, plain) =
        envelope::open_versioned(keys, ObjectKind::Index, name, sealed).map_err(damaged)?;
    IndexFile::decode(version, &plain).map_err(damaged)
}

/// [`read_index_object`], from the cache when it holds a copy that authenticates;
/// what is fetched is kept there once it has.
fn read_index_cached(
    store: &dyn ObjectStore,
    keys: &RepoKeys,
    name: &str,
    cache: Option<&RepoCache>,
) -> Result<IndexFile> {
    let Some(cache) = cache else {
        return read_index_object(store, keys, name);
    };
    if let Some(sealed) = cache.read(ObjectKind::Index, name) {
        match open_index_object(keys, name, &sealed) {
            Ok(file) => return Ok(file),
            Err(_) => cache.forget(ObjectKind::Index, name),
        }
    }
    let sealed = store.get(ObjectKind::Index, name)?;
    let file = open_index_object(keys, name, &sealed)?;
    cache.write(ObjectKind::Index, name, &sealed);
    Ok(file)
}

/// How many objects to read at once: enough to overlap a cloud store's latency
/// (it says how many requests it keeps in flight) and to decrypt on every core.
pub(crate) fn parallel_reads(store: &dyn ObjectStore) -> usize {
    let cores = backlock_core::threads::budget();
    backlock_core::threads::at_most(store.max_concurrent_puts().max(cores).clamp(1, 16))
}

/// `read(item)` for every item on up to `threads` threads, each result given to `each`
/// in item order as soon as it and those before it are read. Reads run at most `ahead`
/// items ahead of `each`, so at most that many results are held at once. The first
/// error of `each` stops the reads and is returned.
pub(crate) fn read_in_order<T: Sync, R: Send, E>(
    items: &[T],
    threads: usize,
    ahead: usize,
    read: impl Fn(&T) -> R + Sync,
    mut each: impl FnMut(&T, R) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let ahead = ahead.max(1);
    let next = AtomicUsize::new(0);
    // Items given to `each` so far, and whether to stop.
    let progress = Mutex::new((0usize, false));
    let moved = Condvar::new();
    let (done_tx, done_rx) = crate::pipe::bounded::<(usize, R)>(ahead);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1).min(items.len()) {
            let done_tx = done_tx.clone();
            let (next, progress, moved, read) = (&next, &progress, &moved, &read);
            backlock_core::threads::spawn_named(s, "bl-read", move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { return };
                {
                    let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
                    while !p.1 && i >= p.0 + ahead {
                        p = moved.wait(p).unwrap_or_else(|p| p.into_inner());
                    }
                    if p.1 {
                        return;
                    }
                }
                // Never blocks: at most `ahead` results are unconsumed.
                if done_tx.send((i, read(item))).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);
        let mut waiting = BTreeMap::new();
        let mut want = 0;
        let stop = |progress: &Mutex<(usize, bool)>| {
            progress.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
            moved.notify_all();
        };
        for (i, r) in done_rx.iter() {
            waiting.insert(i, r);
            while let Some(r) = waiting.remove(&want) {
                if let Err(e) = each(&items[want], r) {
                    stop(&progress);
                    return Err(e);
                }
                want += 1;
                progress.lock().unwrap_or_else(|p| p.into_inner()).0 = want;
                moved.notify_all();
            }
        }
        Ok(())
    })
}

/// Writes `file` as index objects after making every pack put so far durable (data →
/// index): one, or as many as keep each payload within `limit` (what readers accept),
/// each also kept in `cache`. Returns their names and the bytes written.
pub(crate) fn write_index_object(
    store: &dyn ObjectStore,
    keys: &RepoKeys,
    file: IndexFile,
    limit: u64,
    cache: Option<&RepoCache>,
) -> Result<(Vec<ObjectName>, u64)> {
    let parts = index_parts(file, limit)?;
    store.flush()?;
    let mut written = 0;
    let mut names = Vec::with_capacity(parts.len());
    for part in parts {
        let name = ObjectName::random();
        let (version, plain) = part.encode();
        let sealed = envelope::seal_as(keys, (ObjectKind::Index, version), &name.to_hex(), &plain);
        store.put(ObjectKind::Index, &name.to_hex(), &sealed)?;
        // This device needs no request for what it wrote itself.
        if let Some(cache) = cache {
            cache.write(ObjectKind::Index, &name.to_hex(), &sealed);
        }
        written += sealed.len() as u64;
        names.push(name);
    }
    Ok((names, written))
}

/// Blobs an index object lists at most (whole packs permitting): every command reads
/// an index object whole, so one that prune or a rotation writes for a whole
/// repository would cost every later command memory in proportion to it (40 MiB at a
/// million files). A backup's objects, eight packs each, hold about as many.
pub(crate) const INDEX_OBJECT_BLOBS: usize = 1 << 14;

/// `file` as the index objects to write: whole packs, at most [`INDEX_OBJECT_BLOBS`]
/// blobs each where packs permit, and each within `limit` bytes.
pub(crate) fn index_parts(file: IndexFile, limit: u64) -> Result<Vec<IndexFile>> {
    let mut parts = Vec::new();
    for group in in_groups(file.packs, INDEX_OBJECT_BLOBS) {
        let split = IndexFile { packs: group }.split_within(limit);
        parts.extend(split.map_err(|source| RepoError::TooLarge { source })?);
    }
    Ok(parts)
}

/// `packs` in groups of whole packs of at most `most` blobs (a larger pack alone); no
/// pack at all is one empty group, written as it always was.
fn in_groups(packs: Vec<PackEntry>, most: usize) -> Vec<Vec<PackEntry>> {
    if packs.is_empty() {
        return vec![Vec::new()];
    }
    let mut groups: Vec<Vec<PackEntry>> = Vec::new();
    let mut blobs = 0;
    for pack in packs {
        match groups.last_mut() {
            Some(group) if blobs + pack.blobs.len() <= most => {
                blobs += pack.blobs.len();
                group.push(pack);
            }
            _ => {
                blobs = pack.blobs.len();
                groups.push(vec![pack]);
            }
        }
    }
    groups
}

/// Where blob `b` lies in `data`, which holds a pack's bytes from offset `start`.
fn blob_range(name: &str, len: usize, start: u64, b: &BlobEntry) -> Result<Range<usize>> {
    let from = b.offset.checked_sub(start).map(|f| f as usize);
    let end = from.and_then(|f| f.checked_add(b.length as usize));
    match from.zip(end) {
        Some((f, e)) if e <= len => Ok(f..e),
        _ => Err(RepoError::damaged(
            ObjectKind::Pack,
            name,
            backlock_core::FormatError::Truncated {
                len,
                min: end.unwrap_or(usize::MAX),
            },
        )),
    }
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
    let sealed = &data[blob_range(name, data.len(), start, b)?];
    opener
        .open_blob(b.seq, &b.id, sealed)
        .map_err(|e| RepoError::damaged(ObjectKind::Pack, name, e))
}

/// [`open_blob_at`] decrypting in `data` itself: the encoded blob is a slice of it.
pub(crate) fn open_blob_in<'a>(
    opener: &backlock_core::envelope::PackOpener,
    name: &str,
    data: &'a mut [u8],
    start: u64,
    b: &BlobEntry,
) -> Result<&'a [u8]> {
    let range = blob_range(name, data.len(), start, b)?;
    opener
        .open_blob_in_place(b.seq, &b.id, &mut data[range])
        .map_err(|e| RepoError::damaged(ObjectKind::Pack, name, e))
}

/// Decodes an encoded blob and checks it is exactly the chunk its ID names. `base` is
/// the plaintext of `b.base` for a delta blob, `None` otherwise.
pub(crate) fn decode_chunk<'a>(
    decoder: &mut BlobDecoder,
    keys: &RepoKeys,
    name: &str,
    encoded: &'a [u8],
    b: &BlobEntry,
    base: Option<&[u8]>,
) -> Result<Cow<'a, [u8]>> {
    let damaged = |e| RepoError::damaged(ObjectKind::Pack, name, e);
    let chunk = decoder
        .decode(encoded, b.raw_length as usize, base)
        .map_err(damaged)?;
    if chunk.len() != b.raw_length as usize || !b.id.verify(keys, &chunk) {
        return Err(damaged(backlock_core::FormatError::Tampered));
    }
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every selected pack is read once, in order, and a group holds at most
    /// `most` blobs unless one pack alone has more.
    #[test]
    fn pack_groups_cover_the_selection_within_the_bound() {
        const GROUP_BLOBS: usize = 1 << 16;
        let sizes = [
            GROUP_BLOBS / 2,
            GROUP_BLOBS / 2,
            1,
            GROUP_BLOBS * 3,
            7,
            GROUP_BLOBS,
            0,
            5,
        ];
        let extents: Vec<PackExtent> = sizes
            .iter()
            .map(|&blobs| PackExtent {
                pack: ObjectName::random(),
                blobs,
                end: 0,
            })
            .collect();
        let selected: Vec<usize> = (0..sizes.len()).filter(|&n| n != 6).collect();
        let groups: Vec<&[usize]> =
            pack_groups(&selected, |n| extents[n].blobs, GROUP_BLOBS).collect();
        assert_eq!(groups.concat(), selected);
        for group in &groups {
            let blobs: usize = group.iter().map(|&n| extents[n].blobs).sum();
            assert!(
                blobs <= GROUP_BLOBS || group.len() == 1,
                "{group:?}: {blobs}"
            );
        }
        assert!(groups.len() >= 4, "{groups:?}");
        assert_eq!(
            pack_groups(&[], |n| extents[n].blobs, GROUP_BLOBS).count(),
            0
        );
    }

    /// An index written for a whole repository (prune, rotation) is split into objects
    /// of whole packs of at most [`INDEX_OBJECT_BLOBS`] blobs, which together list
    /// every blob once.
    #[test]
    fn a_large_index_is_written_as_objects_of_bounded_size() {
        let store = backlock_store::MemoryStore::new();
        let keys = RepoKeys::derive(&backlock_core::key::BackupKey::generate());
        let per_pack = INDEX_OBJECT_BLOBS / 3 + 1;
        let packs: Vec<PackEntry> = (0..10u32)
            .map(|p| PackEntry {
                pack: ObjectName::random(),
                blobs: (0..per_pack as u32)
                    .map(|b| {
                        let mut id = [0u8; 32];
                        id[..4].copy_from_slice(&p.to_le_bytes());
                        id[4..8].copy_from_slice(&b.to_le_bytes());
                        BlobEntry {
                            id: ChunkId(id),
                            seq: b,
                            offset: u64::from(b) * 100,
                            length: 100,
                            raw_length: 100,
                            base: None,
                        }
                    })
                    .collect(),
            })
            .collect();
        let (names, _) =
            write_index_object(&store, &keys, IndexFile { packs }, u64::MAX, None).unwrap();
        // Two packs of a third of the bound each fit in one object, three do not.
        assert_eq!(names.len(), 5);
        let mut builder = IndexBuilder::new(Spill {
            dir: std::env::temp_dir(),
            in_memory: DEFAULT_IN_MEMORY,
        });
        for name in &names {
            let file = read_index_object(&store, &keys, &name.to_hex()).unwrap();
            let blobs: usize = file.packs.iter().map(|p| p.blobs.len()).sum();
            assert!(blobs <= INDEX_OBJECT_BLOBS, "{blobs}");
            builder.add(&file).unwrap();
        }
        assert_eq!(builder.finish().unwrap().len(), 10 * per_pack);
    }

    #[test]
    fn reads_in_parallel_come_out_in_order_and_an_error_stops_them() {
        let items: Vec<u64> = (0..200).collect();
        let mut seen = Vec::new();
        let done = read_in_order(
            &items,
            4,
            8,
            |&i| {
                // Later items often finish first.
                std::thread::sleep(std::time::Duration::from_micros((i * 7919) % 500));
                i * 2
            },
            |&i, r| -> std::result::Result<(), ()> {
                assert_eq!(r, i * 2);
                seen.push(i);
                Ok(())
            },
        );
        assert_eq!(done, Ok(()));
        assert_eq!(seen, items);

        let read = AtomicUsize::new(0);
        let failed = read_in_order(
            &items,
            4,
            8,
            |_| read.fetch_add(1, Ordering::Relaxed),
            |&i, _| if i == 10 { Err(i) } else { Ok(()) },
        );
        assert_eq!(failed, Err(10));
        // Reads stayed within `ahead` of the failure.
        assert!(read.load(Ordering::Relaxed) <= 10 + 8 + 4);
    }

    #[test]
    fn an_entry_is_64_bytes() {
        // The index is the largest structure a backup holds: 64 bytes per chunk.
        assert_eq!(std::mem::size_of::<Entry>(), 64);
    }

    /// Groups of packs come out with each selected pack once, whole, its blobs in the
    /// order they lie in it, within the group bound: from an index in memory in one
    /// group or several, and from a spilled one (sorted into groups in one pass).
    #[test]
    fn each_selected_pack_comes_once_whole_in_pack_order() {
        let packs: Vec<PackEntry> = (0..6u32)
            .map(|p| PackEntry {
                pack: ObjectName::random(),
                blobs: (0..5u32)
                    .map(|b| BlobEntry {
                        // Later blobs first in the pack: ID order is not pack order.
                        offset: u64::from(100 - b * 10),
                        ..blob(id(p * 10 + b), b, None)
                    })
                    .collect(),
            })
            .collect();
        let file = IndexFile {
            packs: packs.clone(),
        };
        for (in_memory, spilled, groups) in [(64, false, 1), (32, false, 2), (8, true, 5)] {
            let dir = tempfile::tempdir().unwrap();
            let spill = Spill {
                dir: dir.path().into(),
                in_memory,
            };
            let mut builder = IndexBuilder::new(spill.clone());
            builder.add(&file).unwrap();
            let index = builder.finish().unwrap();
            assert_eq!(index.is_spilled(), spilled);
            let extents = index.pack_extents();
            // Pack 2 is not selected.
            let selected: Vec<usize> = (0..extents.len()).filter(|&n| n != 2).collect();
            let mut seen: Vec<ObjectName> = Vec::new();
            let mut count = 0;
            index
                .for_each_group(&extents, &selected, &spill, |group| {
                    count += 1;
                    let held: usize = group.values().map(Vec::len).sum();
                    assert!(held <= spill.group_blobs() || group.len() == 1, "{held}");
                    for (pack, blobs) in group {
                        let want = packs.iter().find(|p| p.pack == pack).unwrap();
                        let mut want = want.blobs.clone();
                        want.sort_by_key(|b| b.offset);
                        assert_eq!(blobs, want);
                        seen.push(pack);
                    }
                    Ok(())
                })
                .unwrap();
            assert_eq!(count, groups, "in memory {in_memory}");
            seen.sort();
            let mut want: Vec<ObjectName> = selected.iter().map(|&n| extents[n].pack).collect();
            want.sort();
            assert_eq!(seen, want);
        }
    }

    fn blob(id: ChunkId, seq: u32, base: Option<ChunkId>) -> BlobEntry {
        BlobEntry {
            id,
            seq,
            offset: 100 + seq as u64 * 10,
            length: 10,
            raw_length: 4096 + seq,
            base,
        }
    }

    fn id(n: u32) -> ChunkId {
        ChunkId(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    #[test]
    fn finds_every_chunk_and_no_other() {
        let (a, b) = (ObjectName([1; 16]), ObjectName([2; 16]));
        // Edge prefixes too: the first and the last bucket.
        let mut ids: Vec<ChunkId> = (0..5000).map(id).collect();
        ids.push(ChunkId([0; 32]));
        ids.push(ChunkId([0xff; 32]));
        let file = IndexFile {
            packs: vec![
                PackEntry {
                    pack: a,
                    blobs: (0..2500).map(|i| blob(ids[i], i as u32, None)).collect(),
                },
                PackEntry {
                    pack: b,
                    blobs: (2500..ids.len())
                        .map(|i| blob(ids[i], i as u32, Some(ids[i - 2500])))
                        .collect(),
                },
            ],
        };
        // In memory, and in a scratch file in runs of 7 entries.
        for (in_memory, spilled) in [(DEFAULT_IN_MEMORY, false), (7, true)] {
            let dir = tempfile::tempdir().unwrap();
            let spill = Spill {
                dir: dir.path().into(),
                in_memory,
            };
            let mut builder = IndexBuilder::new(spill);
            builder.add(&file).unwrap();
            let index = builder.finish().unwrap();
            assert_eq!(index.is_spilled(), spilled);
            assert_eq!(index.len(), ids.len());
            for (i, want) in file
                .packs
                .iter()
                .flat_map(|p| p.blobs.iter().map(|b| (p.pack, *b)))
                .enumerate()
            {
                let got = index.get(&ids[i]).expect("indexed");
                assert_eq!(
                    got,
                    Location {
                        pack: want.0,
                        blob: want.1
                    }
                );
                assert_eq!(
                    index.is_delta(index.slot(&ids[i]).unwrap()),
                    want.1.base.is_some()
                );
            }
            for n in 5000..7000 {
                assert!(!index.contains(&id(n)));
            }
            assert!(!index.contains(&ChunkId([0x80; 32])));
            assert_eq!(index.by_pack()[&b].len(), ids.len() - 2500);
        }
        assert_eq!(Index::default().get(&ids[0]), None);
    }

    #[test]
    fn the_first_object_to_list_a_chunk_wins() {
        let (a, b) = (ObjectName([1; 16]), ObjectName([2; 16]));
        let one = |pack, seq| IndexFile {
            packs: vec![PackEntry {
                pack,
                blobs: vec![blob(id(7), seq, None), blob(id(seq), seq, None)],
            }],
        };
        for in_memory in [DEFAULT_IN_MEMORY, 1, 3] {
            let dir = tempfile::tempdir().unwrap();
            let spill = Spill {
                dir: dir.path().into(),
                in_memory,
            };
            let mut builder = IndexBuilder::new(spill);
            builder.add(&one(a, 1)).unwrap();
            builder.add(&one(b, 2)).unwrap();
            builder.add(&one(a, 3)).unwrap();
            let index = builder.finish().unwrap();
            assert_eq!(index.len(), 4);
            let loc = index.get(&id(7)).unwrap();
            assert_eq!((loc.pack, loc.blob.seq), (a, 1));
            // A pack listed by two objects is one pack.
            assert_eq!(index.by_pack().len(), 2);
            assert_eq!(index.by_pack()[&a].len(), 3);
            let (s1, s3) = (index.slot(&id(1)).unwrap(), index.slot(&id(3)).unwrap());
            assert_eq!(index.read_order(s1).0, index.read_order(s3).0);
        }
    }
}
