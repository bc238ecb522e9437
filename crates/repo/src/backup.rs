//! Backup: walk, chunk, deduplicate, compress, seal, upload; then index; then snapshot.
//!
//! Threads: a walker lists the sources one directory at a time against the parent
//! snapshot's tree of it (`walk.rs`) and hands out batches of [`BATCH_ENTRIES`]
//! entries; for each batch [`PRODUCERS`] threads take files largest first, read, chunk
//! and hash them (chunking and keyed BLAKE3 run at GiB/s), so a
//! chat database's pages are computed on while media streams from disk; a prefetcher
//! asks the kernel for the files coming next; `workers` threads compress new chunks
//! and seal them into the one pack being filled; uploader threads (as many as the
//! store takes puts at once, at most [`MAX_UPLOADERS`]) store finished packs and,
//! every few packs, an index object naming them, so an interrupted backup leaves its
//! uploaded data reusable. This thread builds the trees from each batch's nodes, in
//! walk order, storing each directory's tree as the walk leaves it. Memory is bounded
//! by a batch, the widest directory, the channel capacities, the uploaders and the pack
//! size; what grows is the index and the set of chunks this backup stored, tens of
//! bytes per chunk. Chunk and pack buffers circulate through pools rather than being
//! allocated anew.

use crate::{
    bases::BaseReader,
    cache::RepoCache,
    error::{RepoError, Result},
    exclude::{absolute, Excludes},
    index::{write_index_object, Spill},
    metadata::{self, Owners},
    now_unix_ns,
    pipe::{self, Receiver, Sender},
    spill::{unreadable, IdTable},
    sqlite,
    testhook::{pause, step},
    trees::TreeReader,
    walk::{self, node_of, skipped_entry, Entry, Parent, Walker},
    Indexed, Repository,
};
use backlock_core::{
    blob::BlobEncoder,
    chunker::{database_chunk, ChunkSource, Chunker, PageChunks},
    envelope::{ObjectKind, PackSealer},
    format::{
        self, BlobEntry, Compression, IndexFile, Node, NodeKind, NodeMeta, PackEntry, Skipped,
        Snapshot,
    },
    ids::{ChunkId, ObjectName},
    kdf::RepoKeys,
    threads::{at_most, spawn_named},
    tree::TreeBuilder,
};
use backlock_store::ObjectStore;
use serde::Serialize;
use std::{
    collections::HashMap,
    fs::{self, File},
    io,
    os::unix::{ffi::OsStrExt, fs::FileTypeExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Condvar, Mutex, RwLock,
    },
    time::Instant,
};

/// Packs between two index objects written during a backup.
const INDEX_EVERY_PACKS: usize = 8;
/// Most pack uploads in flight at once, whatever the store asks for
/// ([`ObjectStore::max_concurrent_puts`]): each holds one pack in memory.
const MAX_UPLOADERS: usize = 16;

/// Progress of a running backup.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// Bytes of file content processed so far (read or reused).
    pub bytes_done: u64,
    /// Bytes of file content in the backup.
    pub bytes_total: u64,
    /// Files processed so far.
    pub files_done: u64,
    /// Files in the backup.
    pub files_total: u64,
}

/// What to back up.
pub struct BackupOptions<'a> {
    /// Files and directories; each becomes a top-level entry named by its last part.
    pub paths: Vec<PathBuf>,
    /// The device's name, stored in the snapshot.
    pub hostname: String,
    /// Called as work progresses: one call at a time, counts that never go back, and a
    /// last call with everything read once the backup succeeds.
    pub progress: Option<&'a (dyn Fn(Progress) + Sync)>,
    /// Compression and sealing threads (default: the thread budget, the machine's
    /// cores unless `backlock_core::threads::set_budget` said otherwise; never more).
    pub workers: usize,
    /// Store every file exactly as it is on disk: SQLite databases are read directly
    /// as files (still in runs of whole pages) instead of through SQLite,
    /// and their `-wal`/`-shm`/`-journal` sidecars are kept. For a source nothing
    /// writes to, such as an unencrypted backup being migrated, so that its restore
    /// equals it bit for bit (docs/FORMAT.md §SQLite databases).
    pub verbatim: bool,
    /// What the snapshot records as its paths instead of `paths` made absolute (a
    /// migration from a store records the store's URL, not the folder it was
    /// downloaded into).
    pub recorded_paths: Option<Vec<String>>,
    /// Back up standard input, read to its end, as one file of this name instead
    /// of `paths` (`--stdin --stdin-filename NAME`).
    pub stdin: Option<String>,
    /// Tags stored in the snapshot (`--tag`).
    pub tags: Vec<String>,
    /// The snapshot's time instead of now (`--time`), nanoseconds since the epoch.
    pub time_unix_ns: Option<i64>,
    /// What to leave out (`--exclude` and the like).
    pub excludes: Excludes,
    /// Where the data came from, when not this device's files: a WhatsApp backup
    /// (`import-whatsapp`), recorded in the snapshot's metadata.
    pub whatsapp: Option<backlock_core::format::WhatsAppSource>,
}

impl Default for BackupOptions<'_> {
    fn default() -> Self {
        BackupOptions {
            paths: vec![],
            hostname: String::new(),
            progress: None,
            workers: backlock_core::threads::budget(),
            verbatim: false,
            recorded_paths: None,
            stdin: None,
            tags: Vec::new(),
            time_unix_ns: None,
            excludes: Excludes::default(),
            whatsapp: None,
        }
    }
}

/// What a backup did.
#[derive(Clone, Debug, Serialize)]
pub struct BackupSummary {
    /// The new snapshot's name.
    pub snapshot: String,
    /// Its sequence number.
    pub seq: u64,
    /// Regular files in the snapshot.
    pub files: u64,
    /// Files not read again because they were unchanged since the parent.
    pub files_unchanged: u64,
    /// Bytes of all files in the snapshot.
    pub bytes_total: u64,
    /// Bytes read from disk.
    pub bytes_read: u64,
    /// Bytes of chunks the repository did not have.
    pub bytes_new: u64,
    /// Bytes written to the store (packs, index, snapshot).
    pub bytes_stored: u64,
    /// `bytes_total / bytes_new`: how much deduplication saved.
    pub dedup_ratio: f64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Newer snapshot objects that did not authenticate and were passed over for the
    /// parent (see [`crate::RejectedSnapshot`]).
    pub ignored_snapshots: Vec<crate::RejectedSnapshot>,
    /// Entries left out (unreadable, vanished, a database that stayed locked): the
    /// snapshot is marked incomplete and names them.
    pub skipped: Vec<SkippedEntry>,
    /// Entries left out by `--exclude` and the like (a directory counts once).
    pub excluded: u64,
    /// Entries stored, with something to know (a file that looks like a database but
    /// SQLite cannot read, stored as plain bytes).
    pub warnings: Vec<String>,
}

/// What `backup --dry-run` would do with an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Not in the parent snapshot.
    New,
    /// A file the parent has, changed: it would be read again.
    Changed,
    /// A file as the parent has it (not read), or another entry the parent has (a
    /// directory's entries are listed on their own).
    Unchanged,
}

/// An entry `backup --dry-run` would store.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedEntry {
    /// Its path in the snapshot.
    pub path: String,
    /// `dir`, `file`, `symlink`, `fifo`, `chardev`, `blockdev` or `socket`.
    pub kind: &'static str,
    /// Bytes (files).
    pub size: u64,
    /// Against the parent snapshot.
    pub status: Change,
}

/// What `backup --dry-run` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BackupPlan {
    /// Regular files that would be stored.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Links, pipes and devices.
    pub others: u64,
    /// Bytes of those files.
    pub bytes_total: u64,
    /// Files new or changed since the parent: what the backup would read.
    pub files_to_read: u64,
    /// Their bytes: at most what the backup would add, less what deduplicates.
    pub bytes_to_read: u64,
    /// Entries left out by `--exclude` and the like.
    pub excluded: u64,
    /// Entries that could not be read.
    pub skipped: Vec<SkippedEntry>,
}

/// What a walk's file type is, as `ls` and `--dry-run` name it.
pub(crate) fn entry_kind(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_char_device() {
        "chardev"
    } else if ft.is_block_device() {
        "blockdev"
    } else {
        "socket"
    }
}

/// An entry a backup left out.
#[derive(Clone, Debug, Serialize)]
pub struct SkippedEntry {
    /// Its path in the snapshot.
    pub path: String,
    /// Why.
    pub reason: String,
}

struct Job {
    id: ChunkId,
    data: Vec<u8>,
    compress: bool,
    /// The previous version of this chunk (a run of SQLite pages) and its ID: the worker
    /// stores a delta against it when that is shorter.
    base: Option<(ChunkId, Vec<u8>)>,
}

impl Job {
    /// The bytes it holds.
    fn weight(&self) -> usize {
        self.data.len() + self.base.as_ref().map_or(0, |(_, b)| b.len())
    }
}

/// Jobs handed to a worker at once, up to about [`JOB_BATCH_BYTES`] (one large chunk
/// alone): a database's 16 KiB runs of pages would otherwise cost a hand-over, and
/// often a wake-up, each.
type Jobs = Vec<Job>;

const JOB_BATCH_BYTES: usize = 128 << 10;

/// Changed runs of SQLite pages whose bases are read together, in one pass over their
/// packs, up to this many bytes of them: the window holds them and their bases.
const BASE_WINDOW_BYTES: usize = 1 << 20;

struct FinishedPack {
    name: ObjectName,
    bytes: Vec<u8>,
    blobs: Vec<BlobEntry>,
}

/// State shared by the pipeline threads.
struct Shared<'a> {
    error: Mutex<Option<RepoError>>,
    pending: Mutex<Vec<PackEntry>>,
    /// The index objects this backup wrote: its index set adds them.
    indexes: Mutex<Vec<ObjectName>>,
    bytes_stored: AtomicU64,
    /// The largest payload of an index object written.
    object_limit: u64,
    /// Where the index objects written are also kept.
    cache: Option<&'a RepoCache>,
}

impl Shared<'_> {
    fn fail(&self, e: RepoError) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(e);
    }

    fn take_pending(&self) -> Vec<PackEntry> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Writes `packs` as index objects and remembers their names.
    fn write_index(
        &self,
        store: &dyn ObjectStore,
        keys: &RepoKeys,
        packs: Vec<PackEntry>,
    ) -> Result<()> {
        let (names, n) = write_index_object(
            store,
            keys,
            IndexFile { packs },
            self.object_limit,
            self.cache,
        )?;
        self.indexes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(names);
        self.bytes_stored.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
}

/// Buffers passed back to the threads that fill them once their contents are gone,
/// so the hot path reuses memory instead of allocating: glibc's per-thread arenas
/// keep freed multi-MiB buffers as resident fragments, and RSS then grows with the
/// data instead of staying flat. Runs of database pages (16 KiB, dozens of them in
/// flight in batches) are kept apart: allocated in one thread and freed in another,
/// they would fragment the arenas too.
struct BufferPool {
    kept: Mutex<Vec<Vec<u8>>>,
    /// Buffers kept at most.
    capacity: usize,
    /// Capacity a kept buffer is cut back to.
    max_kept: usize,
    /// Buffers smaller than [`POOLED_MIN`], as they were made.
    small: Mutex<Vec<Vec<u8>>>,
}

/// Small buffers a [`BufferPool`] keeps: the runs of pages of the batches in flight
/// (each producer's, the one queued, each worker's).
const SMALL_KEPT: usize = 6 * JOB_BATCH_BYTES / (16 << 10);

impl BufferPool {
    /// A pool keeping at most `capacity` buffers of at most `max_kept` bytes each.
    fn new(capacity: usize, max_kept: usize) -> Self {
        BufferPool {
            kept: Mutex::new(Vec::with_capacity(capacity)),
            capacity,
            max_kept,
            small: Mutex::new(Vec::new()),
        }
    }

    /// A kept buffer (empty, with its capacity), or a new one of `capacity` bytes.
    /// A small one (`capacity` below [`POOLED_MIN`]) holds at least `capacity`.
    fn take(&self, capacity: usize) -> Vec<u8> {
        let stack = match capacity {
            1..POOLED_MIN => &self.small,
            _ => &self.kept,
        };
        let kept = stack.lock().unwrap_or_else(|p| p.into_inner()).pop();
        kept.filter(|b| b.capacity() >= capacity)
            .unwrap_or_else(|| Vec::with_capacity(capacity))
    }

    /// Keeps `buf` for a later [`take`](Self::take) if the pool has room. A
    /// chunk buffer grows to the largest chunk it held, so over a long backup every
    /// kept one would reach the largest chunk size: cut back, the kept memory stays
    /// the same however much data goes through (glibc returns the cut pages).
    fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() < POOLED_MIN {
            let mut small = self.small.lock().unwrap_or_else(|p| p.into_inner());
            if small.len() < SMALL_KEPT && buf.capacity() > 0 {
                buf.clear();
                small.push(buf);
            }
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < self.capacity {
            buf.clear();
            buf.shrink_to(self.max_kept.max(POOLED_MIN));
            kept.push(buf);
        }
    }
}

/// The smallest buffer a [`BufferPool`] keeps.
const POOLED_MIN: usize = 64 << 10;

/// A pack being filled: its name, its sealer and the blobs pushed so far.
type OpenPack = (ObjectName, PackSealer, Vec<BlobEntry>);

/// A chunk encoded by a worker, ready to be sealed into the pack.
struct EncodedChunk<'a> {
    id: ChunkId,
    raw_length: u32,
    /// The base of a delta blob.
    base: Option<ChunkId>,
    codec: u8,
    payload: &'a [u8],
}

/// The one pack all workers fill. One pack per worker would hold another pack's worth
/// of memory for no speed: sealing a blob takes well under a millisecond, so workers
/// rarely wait for each other here (compression, the slow part, happens outside);
/// they do wait, all of them, when uploads fall behind, as they would have anyway.
struct FillingPack<'a> {
    keys: &'a RepoKeys,
    pack_size: usize,
    pack_pool: &'a BufferPool,
    open: Mutex<Option<OpenPack>>,
    /// Workers still running: the last one out sends the last pack.
    running: AtomicUsize,
}

impl FillingPack<'_> {
    /// Seals a blob into the pack. A full pack is handed to an uploader first, with
    /// the pack locked: the other worker waits rather than start a new pack, so no
    /// more than one pack is ever open beside those being uploaded. `Stopped`: the
    /// uploaders are gone (one failed), or a worker panicked while sealing, which may
    /// have left the open pack half-sealed; it is then never used again.
    fn push(&self, chunk: EncodedChunk, packs: &Sender<FinishedPack>) -> Result<(), Stopped> {
        let Ok(mut open) = self.open.lock() else {
            return Err(Stopped);
        };
        let full = open
            .as_ref()
            .is_some_and(|(_, sealer, _)| sealer.len() + 1 + chunk.payload.len() > self.pack_size);
        if full {
            let pack = open.take().expect("checked");
            packs.send(finished(pack)).map_err(|_| Stopped)?;
        }
        let (_, sealer, blobs) = open.get_or_insert_with(|| {
            let name = ObjectName::random();
            let buf = self.pack_pool.take(self.pack_size + (1 << 20));
            (
                name,
                PackSealer::with_buffer(self.keys, &name.to_hex(), buf),
                Vec::new(),
            )
        });
        let place = sealer.push_parts(&chunk.id, &[&[chunk.codec], chunk.payload]);
        blobs.push(BlobEntry {
            id: chunk.id,
            seq: place.seq,
            offset: place.offset,
            length: place.length,
            raw_length: chunk.raw_length,
            base: chunk.base,
        });
        Ok(())
    }

    /// A worker is done; the last one sends the pack left open (none after a panic:
    /// the backup fails then, and a half-sealed pack must not be stored).
    fn leave(&self, packs: &Sender<FinishedPack>) {
        if self.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            let last = self.open.lock().ok().and_then(|mut open| open.take());
            if let Some(pack) = last {
                // Uploaders gone: the backup fails, with the reason in `Shared`.
                let _ = packs.send(finished(pack));
            }
        }
    }
}

fn finished((name, sealer, blobs): OpenPack) -> FinishedPack {
    FinishedPack {
        name,
        bytes: sealer.finish(),
        blobs,
    }
}

fn worker(
    jobs: Receiver<Jobs>,
    pack: &FillingPack,
    packs: &Sender<FinishedPack>,
    chunk_pool: &BufferPool,
    compression: Compression,
) -> io::Result<()> {
    let mut encoder = match compression {
        Compression::Max => BlobEncoder::max()?,
        _ => BlobEncoder::new()?,
    };
    for job in jobs.flatten() {
        let delta_blob: Vec<u8>;
        // The blob as codec byte and payload: a raw chunk is copied only into the pack.
        let (codec, payload, base) = match &job.base {
            Some((base_id, base)) => {
                let (blob, delta) = encoder.encode_against(&job.data, base);
                delta_blob = blob;
                (delta_blob[0], &delta_blob[1..], delta.then_some(*base_id))
            }
            None => {
                let (codec, payload) = encoder.encode_auto_parts(&job.data, job.compress);
                (codec, payload, None)
            }
        };
        let chunk = EncodedChunk {
            id: job.id,
            raw_length: job.data.len() as u32,
            base,
            codec,
            payload,
        };
        let pushed = pack.push(chunk, packs);
        chunk_pool.give(job.data);
        if pushed.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

fn uploader(
    store: &dyn ObjectStore,
    keys: &RepoKeys,
    lock: &crate::RepoLock,
    packs: Receiver<FinishedPack>,
    pack_pool: &BufferPool,
    shared: &Shared,
) {
    for pack in packs {
        // Once any upload failed, stop: the producer then sees closed channels.
        if shared
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return;
        }
        let size = pack.bytes.len() as u64;
        match store.put_owned(ObjectKind::Pack, &pack.name.to_hex(), pack.bytes) {
            // The buffer goes back to the workers: packs reuse a fixed set of buffers,
            // except where the store kept one as its request body.
            Ok(buffer) => {
                shared.bytes_stored.fetch_add(size, Ordering::Relaxed);
                if let Some(buffer) = buffer {
                    pack_pool.give(buffer);
                }
            }
            Err(e) => return shared.fail(e.into()),
        }
        if let Err(e) = lock.refresh_if_due() {
            return shared.fail(e);
        }
        // Index only packs whose upload finished: data before index, always.
        let batch = {
            let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.push(PackEntry {
                pack: pack.name,
                blobs: pack.blobs,
            });
            if pending.len() >= INDEX_EVERY_PACKS {
                std::mem::take(&mut *pending)
            } else {
                Vec::new()
            }
        };
        if !batch.is_empty() {
            if let Err(e) = shared.write_index(store, keys, batch) {
                return shared.fail(e);
            }
        }
    }
}

/// Threads that read, chunk and hash source files. Two, so that one keeps the disk
/// busy with media while the other computes over a database's pages (one within a
/// budget of one thread).
const PRODUCERS: usize = 2;

/// What the producing threads share.
struct ProduceState<'a> {
    keys: &'a RepoKeys,
    /// The repository's compression: `off` compresses nothing and makes no delta.
    compression: Compression,
    /// The repository's index: chunks already stored.
    index: &'a crate::index::Index,
    /// Chunks this backup has sent to the workers (not in the index yet).
    new: NewChunks,
    progress: Option<&'a (dyn Fn(Progress) + Sync)>,
    /// Held while a report is made, so reports never overlap or go back.
    reporting: Mutex<()>,
    /// Counted while the backup runs (see [`walk::count`]).
    bytes_total: AtomicU64,
    files_total: AtomicU64,
    bytes_done: AtomicU64,
    files_done: AtomicU64,
    verbatim: bool,
    bytes_read: AtomicU64,
    /// What the prefetcher keeps ahead of.
    reading: ReadProgress,
    bytes_new: AtomicU64,
    files_unchanged: AtomicU64,
    /// Set when one producer failed: the others stop at their next chunk.
    stop: AtomicBool,
    /// Buffers of content-defined chunks, returned by the workers once sealed.
    chunk_pool: &'a BufferPool,
    /// Entries left out: unreadable, vanished, or a database that stayed locked.
    skipped: Mutex<Vec<Skipped>>,
    /// What the user should know about entries that were stored (a file that looks
    /// like a database but is not one, stored as plain bytes).
    warnings: Mutex<Vec<String>>,
    /// Owners' names, looked up once per ID.
    owners: Mutex<Owners>,
    /// The parent snapshot recorded owners and attributes (version 3): an unchanged
    /// file's are taken from it instead of read again.
    parent_has_meta: bool,
}

impl ProduceState<'_> {
    /// Tells the listener how far the backup is. A producer that finds another one
    /// reporting goes on reading: the next report carries its bytes, and the counters,
    /// read under the lock, only grow.
    fn report(&self) {
        let Some(p) = self.progress else { return };
        let Ok(_one) = self.reporting.try_lock() else {
            return;
        };
        p(self.progress_now());
    }

    fn progress_now(&self) -> Progress {
        Progress {
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            files_done: self.files_done.load(Ordering::Relaxed),
            files_total: self.files_total.load(Ordering::Relaxed),
        }
    }

    /// The last report, once every producer is done: all of it read, whether or not
    /// the count finished first.
    fn report_done(&self) {
        let Some(p) = self.progress else { return };
        let now = self.progress_now();
        p(Progress {
            bytes_total: now.bytes_total.max(now.bytes_done),
            files_total: now.files_total.max(now.files_done),
            ..now
        });
    }
}

/// A set of chunk IDs that may outgrow memory: the chunks a backup (or copy) has
/// stored so far, the chunks prune finds in use. Up to the repository's in-memory
/// limit it is open-addressing tables, one per ID prefix behind its own lock so the
/// producers rarely wait for each other. The tables grow to one slot per ID the limit
/// allows (4 MiB in all by default) and are then kept, emptied, never freed: the glibc
/// heap stays unfragmented, where 65,536 sorted lists that grew and were freed again
/// left 20 MiB of holes at a million files. When a table is three quarters full (with
/// uniform IDs at about two thirds of the limit) the IDs move to a sorted scratch file
/// ([`IdTable`]), so a first backup of ten million files keeps 2 bytes per chunk, not
/// 40, and a few such files.
pub(crate) struct NewChunks {
    tables: Box<[Mutex<IdSlots>]>,
    /// IDs in the tables.
    held: AtomicUsize,
    /// IDs moved out of the tables; written only with every insertion kept out.
    spilled: RwLock<Vec<IdTable>>,
    spill: Spill,
}

/// Tables of [`NewChunks`].
const NEW_TABLES: usize = 256;

/// One open-addressing table of IDs (linear probing). The all-zero ID marks a free
/// slot, so it is kept apart.
struct IdSlots {
    slots: Vec<ChunkId>,
    /// The size the table grows to.
    most: usize,
    len: usize,
    zero: bool,
}

/// Where an ID's search starts: chunk IDs are keyed MACs, uniform already; the mix
/// only spreads IDs that tests make up by hand.
fn id_hash(id: &ChunkId) -> u64 {
    let word = |i: usize| u64::from_le_bytes(id.0[i..i + 8].try_into().unwrap());
    (word(0) ^ word(8).rotate_left(16) ^ word(16).rotate_left(32) ^ word(24).rotate_left(48))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl IdSlots {
    /// Adds `id`; true if it was not there yet.
    fn insert(&mut self, id: ChunkId, hash: u64) -> bool {
        if id.0 == [0; 32] {
            return !std::mem::replace(&mut self.zero, true);
        }
        if (self.len + 1) * 4 > self.slots.len() * 3 && self.slots.len() < self.most {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut at = hash as usize & mask;
        loop {
            let slot = &mut self.slots[at];
            if *slot == id {
                return false;
            }
            if slot.0 == [0; 32] {
                *slot = id;
                self.len += 1;
                return true;
            }
            at = (at + 1) & mask;
        }
    }

    /// Doubles the table (16 slots the first time).
    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(16);
        let old = std::mem::replace(&mut self.slots, vec![ChunkId([0; 32]); size]);
        self.len = 0;
        for id in old.into_iter().filter(|id| id.0 != [0; 32]) {
            self.insert(id, id_hash(&id));
        }
    }

    /// True when `id` is in the table.
    fn contains(&self, id: &ChunkId, hash: u64) -> bool {
        if id.0 == [0; 32] {
            return self.zero;
        }
        if self.slots.is_empty() {
            return false;
        }
        let mask = self.slots.len() - 1;
        let mut at = hash as usize & mask;
        loop {
            match &self.slots[at] {
                slot if slot == id => return true,
                slot if slot.0 == [0; 32] => return false,
                _ => at = (at + 1) & mask,
            }
        }
    }

    /// Three quarters full at its largest: it must be emptied before the next insertion.
    fn full(&self) -> bool {
        self.slots.len() >= self.most && self.len * 4 >= self.slots.len() * 3
    }

    /// Sorts the slots in place and returns the IDs, ascending (the all-zero ID apart):
    /// the table is no longer searchable until [`IdSlots::clear`].
    fn sorted(&mut self) -> &[ChunkId] {
        self.slots.sort_unstable();
        &self.slots[self.slots.len() - self.len..]
    }

    /// Empties the table, keeping its allocation.
    fn clear(&mut self) {
        self.slots.fill(ChunkId([0; 32]));
        self.len = 0;
        self.zero = false;
    }
}

/// True when one of the scratch tables holds `id`.
fn in_any(tables: &[IdTable], id: &ChunkId) -> bool {
    tables
        .iter()
        .any(|t| t.contains(id).unwrap_or_else(|e| unreadable(e)))
}

/// The IDs of several ascending runs, ascending.
fn merge_runs<'a>(runs: &[&'a [ChunkId]]) -> impl Iterator<Item = ChunkId> + 'a {
    use std::{cmp::Reverse, collections::BinaryHeap};
    let mut heads: BinaryHeap<Reverse<(ChunkId, &'a [ChunkId])>> = runs
        .iter()
        .filter_map(|run| Some(Reverse((*run.first()?, &run[1..]))))
        .collect();
    std::iter::from_fn(move || {
        let Reverse((id, rest)) = heads.pop()?;
        if let Some((&next, tail)) = rest.split_first() {
            heads.push(Reverse((next, tail)));
        }
        Some(id)
    })
}

impl NewChunks {
    pub(crate) fn new(spill: Spill) -> Self {
        let most = (spill.in_memory / NEW_TABLES).next_power_of_two().max(16);
        NewChunks {
            tables: (0..NEW_TABLES)
                .map(|_| {
                    Mutex::new(IdSlots {
                        slots: Vec::new(),
                        most,
                        len: 0,
                        zero: false,
                    })
                })
                .collect(),
            held: AtomicUsize::new(0),
            spilled: RwLock::new(Vec::new()),
            spill,
        }
    }

    /// Adds `id`; true if it was not there yet.
    pub(crate) fn insert(&self, id: ChunkId) -> Result<bool> {
        let spilled = self.spilled.read().unwrap_or_else(|p| p.into_inner());
        if in_any(&spilled, &id) {
            return Ok(false);
        }
        let hash = id_hash(&id);
        let table = &self.tables[(hash >> 56) as usize % NEW_TABLES];
        let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
        if !table.insert(id, hash) {
            return Ok(false);
        }
        let full = table.full();
        drop(table);
        let held = self.held.fetch_add(1, Ordering::Relaxed) + 1;
        if full || held >= self.spill.in_memory {
            drop(spilled);
            self.move_to_disk()?;
        }
        Ok(true)
    }

    /// True when `id` was added.
    pub(crate) fn contains(&self, id: &ChunkId) -> bool {
        let spilled = self.spilled.read().unwrap_or_else(|p| p.into_inner());
        if in_any(&spilled, id) {
            return true;
        }
        let hash = id_hash(id);
        let table = &self.tables[(hash >> 56) as usize % NEW_TABLES];
        let found = table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id, hash);
        found
    }

    /// Moves the tables' IDs to a scratch file, unless another thread just did.
    fn move_to_disk(&self) -> Result<()> {
        let mut spilled = self.spilled.write().unwrap_or_else(|p| p.into_inner());
        let held = self.held.load(Ordering::Relaxed);
        let full = self
            .tables
            .iter()
            .any(|t| t.lock().unwrap_or_else(|p| p.into_inner()).full());
        if held < self.spill.in_memory && !full {
            return Ok(());
        }
        // Each table is sorted in place and the sorted tables merged into the file: no
        // copy of the IDs (4 MiB at the default limit) on top of the tables.
        let mut tables: Vec<_> = self
            .tables
            .iter()
            .map(|t| t.lock().unwrap_or_else(|p| p.into_inner()))
            .collect();
        let zero = tables.iter().any(|t| t.zero).then_some(ChunkId([0; 32]));
        let runs: Vec<&[ChunkId]> = tables.iter_mut().map(|t| t.sorted()).collect();
        let len = runs.iter().map(|r| r.len()).sum::<usize>() + usize::from(zero.is_some());
        let ids = zero.into_iter().chain(merge_runs(&runs)).map(Ok);
        let scratch = |source| self.spill.scratch(source);
        let written = IdTable::write(&self.spill.dir, len, ids);
        drop(runs);
        tables.iter_mut().for_each(|t| t.clear());
        drop(tables);
        self.held.store(0, Ordering::Relaxed);
        spilled.push(written.map_err(scratch)?);
        // Tables of like size are merged, as a binary counter carries: a few tables
        // (log2 of the IDs over the limit), each an open file and a filter that every
        // insertion checks, and each ID rewritten as often.
        while let [.., older, newer] = spilled.as_slice() {
            if older.len() >= 2 * newer.len() {
                break;
            }
            let newer = spilled.pop().expect("two tables");
            let older = spilled.pop().expect("two tables");
            spilled.push(older.merge(newer, &self.spill.dir).map_err(scratch)?);
        }
        Ok(())
    }
}

/// One producing thread.
struct Producer<'a> {
    shared: &'a ProduceState<'a>,
    /// Reads the previous versions of changed runs of SQLite pages.
    bases: BaseReader<'a>,
    /// Changed pages waiting for their bases, each with its base's ID.
    window: Vec<(Job, ChunkId)>,
    /// Bytes of the chunks in `window`.
    window_bytes: usize,
    jobs: Sender<Jobs>,
    /// Jobs not handed to the workers yet, and their weight.
    batch: Jobs,
    batch_bytes: usize,
    /// The chunker's read buffer, kept from file to file.
    stream_buf: Vec<u8>,
}

/// The pipeline has stopped (a worker, the uploader or another producer failed); the
/// reason is in `Shared` or with the failed producer.
struct Stopped;

impl Producer<'_> {
    /// Hashes `data` into its chunk ID, sending it to the workers if it is new.
    /// `previous` is the chunk at the same place in the parent snapshot's version of
    /// a database, and whether it was that version's last: the base a changed run of
    /// pages may be stored as a delta of.
    fn chunk(
        &mut self,
        data: Vec<u8>,
        previous: Option<(ChunkId, bool)>,
    ) -> Result<Result<ChunkId, Stopped>> {
        let sh = self.shared;
        if sh.stop.load(Ordering::Relaxed) {
            return Ok(Err(Stopped));
        }
        let id = ChunkId::compute(sh.keys, &data);
        let len = data.len() as u64;
        sh.bytes_read.fetch_add(len, Ordering::Relaxed);
        sh.bytes_done.fetch_add(len, Ordering::Relaxed);
        let is_new = !sh.index.contains(&id) && sh.new.insert(id)?;
        if !is_new {
            sh.chunk_pool.give(data);
        } else {
            sh.bytes_new.fetch_add(len, Ordering::Relaxed);
            let job = Job {
                id,
                data,
                compress: sh.compression != Compression::Off,
                base: None,
            };
            // The previous version covers the same bytes: the same length, or less if
            // the database has grown past its end. (Parent chunks of another length
            // were cut another way, one page per chunk or another page size: a delta
            // against them would only cost a base read and a compression.) A base is
            // never a delta itself: a delta's base is the delta's base.
            let base = previous
                .filter(|_| sh.compression != Compression::Off)
                .and_then(|(p, last)| sh.index.get(&p).map(|l| (l, last)))
                .filter(|(l, last)| {
                    let prev_len = l.blob.raw_length as u64;
                    prev_len == len || (*last && prev_len < len)
                })
                .map(|(l, _)| l.blob.base.unwrap_or(l.blob.id));
            match base {
                Some(base) => {
                    self.window_bytes += job.data.len();
                    self.window.push((job, base));
                    if self.window_bytes >= BASE_WINDOW_BYTES {
                        if let Err(s) = self.flush_window() {
                            return Ok(Err(s));
                        }
                    }
                }
                None => {
                    if let Err(s) = self.send(job) {
                        return Ok(Err(s));
                    }
                }
            }
        }
        sh.report();
        Ok(Ok(id))
    }

    /// Queues `job` for the workers, handing them a batch once it weighs enough.
    fn send(&mut self, job: Job) -> Result<(), Stopped> {
        self.batch_bytes += job.weight();
        self.batch.push(job);
        if self.batch_bytes >= JOB_BATCH_BYTES {
            return self.send_batch();
        }
        Ok(())
    }

    /// Hands the jobs queued so far to the workers.
    fn send_batch(&mut self) -> Result<(), Stopped> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.batch_bytes = 0;
        let batch = std::mem::take(&mut self.batch);
        self.jobs.send(batch).map_err(|_| Stopped)
    }

    /// Reads the bases of the waiting runs and sends them to the workers. A base
    /// that cannot be read only costs space: the run is then stored whole.
    fn flush_window(&mut self) -> Result<(), Stopped> {
        if self.window.is_empty() {
            return Ok(());
        }
        let window = std::mem::take(&mut self.window);
        self.window_bytes = 0;
        let mut bases = match self.bases.read(window.iter().map(|(_, b)| *b)) {
            Ok(bases) => bases,
            Err(e) => {
                tracing::warn!(error = %e, "previous versions of database pages unreadable: storing the changed pages whole");
                HashMap::new()
            }
        };
        let mut uses: HashMap<ChunkId, usize> = HashMap::new();
        for (_, base) in &window {
            *uses.entry(*base).or_default() += 1;
        }
        for (mut job, base) in window {
            // A base's last user takes it; earlier ones (pages equal yesterday) copy it.
            let left = uses.get_mut(&base).map(|n| {
                *n -= 1;
                *n
            });
            let plain = match left {
                Some(0) => bases.remove(&base),
                _ => bases.get(&base).cloned(),
            };
            job.base = plain.map(|plain| (base, plain));
            self.send(job)?;
        }
        Ok(())
    }

    /// Feeds the chunks of `source` into `node`; returns the bytes read. Chunks of
    /// `run` bytes (a database's runs of pages) get fresh buffers, others pooled ones.
    /// `node.chunks` holds on entry the parent snapshot's chunk list of this database,
    /// run for run, or nothing: each entry is the base of the run read at its place
    /// and is then overwritten by that run's ID, so a database's list is held once.
    fn chunk_all(
        &mut self,
        source: &mut (impl ChunkSource + ?Sized),
        run: Option<usize>,
        node: &mut Node,
        path: &Path,
    ) -> Result<Result<u64, Stopped>> {
        let mut size = 0;
        let mut count = 0;
        let parent_count = node.chunks.len();
        loop {
            // A signal stops a large file between chunks, not at its end.
            crate::interrupt::check()?;
            let mut chunk = match run {
                Some(run) => self.shared.chunk_pool.take(run),
                None => self.shared.chunk_pool.take(0),
            };
            let more = source
                .next_into(&mut chunk)
                .map_err(|source| RepoError::Source {
                    path: path.to_path_buf(),
                    source,
                })?;
            if !more {
                self.shared.chunk_pool.give(chunk);
                break;
            }
            size += chunk.len() as u64;
            let previous = node
                .chunks
                .get(count)
                .map(|&p| (p, count + 1 == parent_count));
            let id = match self.chunk(chunk, previous)? {
                Ok(id) => id,
                Err(s) => return Ok(Err(s)),
            };
            match node.chunks.get_mut(count) {
                Some(slot) => *slot = id,
                None => node.chunks.push(id),
            }
            count += 1;
        }
        node.chunks.truncate(count);
        // A file's last jobs go at its end, not with the next file's first.
        Ok(self
            .flush_window()
            .and_then(|()| self.send_batch())
            .map(|()| size))
    }

    /// Reads file `e`; `pages` is the parent's chunk list of it as a database (or
    /// nothing), the bases of its changed runs of pages.
    fn file(
        &mut self,
        chunker: &Chunker,
        e: &Entry,
        pages: Vec<ChunkId>,
    ) -> Result<Result<Node, Stopped>> {
        let source = |err| RepoError::Source {
            path: e.fs_path.clone(),
            source: err,
        };
        let mut file = File::open(&e.fs_path).map_err(source)?;
        let page_size = sqlite::sniff(&mut file).map_err(source)?;
        io::Seek::rewind(&mut file).map_err(source)?;
        // A live database is captured, a verbatim one read as it is; both in runs of pages.
        let (mut node, read) = match page_size {
            Some(page) if !self.shared.verbatim => {
                drop(file);
                let mut node = node_of(e, NodeKind::SqliteFile);
                // Changed pages become deltas of their previous version.
                node.chunks = pages;
                let size = database_chunk(page);
                let chunk_count = (e.meta.len() / size as u64) as usize + 1;
                node.chunks
                    .reserve_exact(chunk_count.saturating_sub(node.chunks.len()));
                let captured = sqlite::with_pages(&e.fs_path, |pages| {
                    self.chunk_all(pages, Some(size), &mut node, &e.fs_path)
                });
                match captured {
                    Ok(read) => (node, read?),
                    // Not a database SQLite can read (a half-downloaded `.db` a chat
                    // peer sent): its bytes are kept as they are.
                    Err(RepoError::Sqlite {
                        busy: false,
                        detail,
                        ..
                    }) => {
                        self.shared
                            .warnings
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!(
                                "{} starts like a SQLite database but SQLite cannot read it ({detail}): stored as plain bytes",
                                e.fs_path.display()
                            ));
                        return self.plain_file(chunker, e);
                    }
                    Err(other) => return Err(other),
                }
            }
            Some(page) => {
                let mut node = node_of(e, NodeKind::File);
                let size = database_chunk(page);
                node.chunks
                    .reserve_exact((e.meta.len() / size as u64) as usize + 1);
                let reader = io::BufReader::with_capacity(1 << 20, file);
                let mut source = PageChunks::new(reader, size);
                let read = self.chunk_all(&mut source, Some(size), &mut node, &e.fs_path)?;
                (node, read)
            }
            None => return self.stream_file(chunker, e, file),
        };
        match read {
            Ok(size) => {
                node.size = size;
                Ok(Ok(node))
            }
            Err(s) => Ok(Err(s)),
        }
    }

    /// `e` as plain bytes in content-defined chunks, read again from the start.
    fn plain_file(&mut self, chunker: &Chunker, e: &Entry) -> Result<Result<Node, Stopped>> {
        let file = File::open(&e.fs_path).map_err(|err| RepoError::Source {
            path: e.fs_path.clone(),
            source: err,
        })?;
        self.stream_file(chunker, e, file)
    }

    /// The content-defined chunks of `file`, the opened `e`.
    fn stream_file(
        &mut self,
        chunker: &Chunker,
        e: &Entry,
        file: File,
    ) -> Result<Result<Node, Stopped>> {
        let mut node = node_of(e, NodeKind::File);
        let buf = std::mem::take(&mut self.stream_buf);
        let mut source = chunker.stream_with(file, buf);
        let read = self.chunk_all(&mut source, None, &mut node, &e.fs_path);
        self.stream_buf = source.into_buffer();
        Ok(read?.map(|size| {
            node.size = size;
            node
        }))
    }

    /// Turns the entry `e` into its snapshot node (`None`: not stored), feeding new
    /// chunks to the workers. `old` is its node in the parent snapshot.
    fn node(
        &mut self,
        chunker: &Chunker,
        e: &Entry,
        old: Option<Node>,
    ) -> Result<Result<Option<Node>, Stopped>> {
        let sh = self.shared;
        let ft = e.meta.file_type();
        if e.stream {
            // Read to its end as it comes: it cannot be sniffed and rewound, nor
            // compared with the parent.
            sh.files_done.fetch_add(1, Ordering::Relaxed);
            let file = File::open(&e.fs_path).map_err(|err| RepoError::Source {
                path: e.fs_path.clone(),
                source: err,
            })?;
            return Ok(self.stream_file(chunker, e, file)?.map(|node| {
                Some(Node {
                    mode: 0o644,
                    mtime_ns: now_unix_ns(),
                    inode: 0,
                    ctime_ns: 0,
                    more: NodeMeta {
                        uid: std::os::unix::fs::MetadataExt::uid(&e.meta),
                        gid: std::os::unix::fs::MetadataExt::gid(&e.meta),
                        ..Default::default()
                    },
                    ..node
                })
            }));
        }
        let node = if ft.is_dir() {
            node_of(e, NodeKind::Dir)
        } else if ft.is_symlink() {
            let target = fs::read_link(&e.fs_path).map_err(|err| RepoError::Source {
                path: e.fs_path.clone(),
                source: err,
            })?;
            node_of(e, NodeKind::Symlink(target.as_os_str().as_bytes().to_vec()))
        } else if ft.is_file() {
            sh.files_done.fetch_add(1, Ordering::Relaxed);
            if e.sidecar {
                return Ok(Ok(None));
            }
            let fresh = node_of(e, NodeKind::File);
            match old {
                Some(old) if unchanged(&old, &fresh, sh.index) => {
                    sh.files_unchanged.fetch_add(1, Ordering::Relaxed);
                    sh.bytes_done.fetch_add(fresh.size, Ordering::Relaxed);
                    // Owner, links and attributes changed would have changed the
                    // ctime: a parent that recorded them (version 3) still has them.
                    let more = match sh.parent_has_meta {
                        true => old.more,
                        false => self.capture(e),
                    };
                    return Ok(Ok(Some(Node {
                        chunks: old.chunks,
                        more,
                        ..fresh
                    })));
                }
                old => {
                    let pages = old
                        .filter(|o| o.kind == NodeKind::SqliteFile)
                        .map(|o| o.chunks)
                        .unwrap_or_default();
                    sh.reading.began(e.meta.len());
                    match self.file(chunker, e, pages)? {
                        Ok(node) => node,
                        Err(Stopped) => return Ok(Err(Stopped)),
                    }
                }
            }
        } else if ft.is_fifo() {
            node_of(e, NodeKind::Fifo)
        } else if ft.is_char_device() {
            node_of(e, NodeKind::CharDevice)
        } else if ft.is_block_device() {
            node_of(e, NodeKind::BlockDevice)
        } else {
            // A socket belongs to the process that made it: nothing to restore.
            tracing::warn!(path = %e.fs_path.display(), "skipping socket");
            return Ok(Ok(None));
        };
        Ok(Ok(Some(Node {
            more: self.capture(e),
            ..node
        })))
    }

    /// Owner, links, device, extended attributes and holes of `e`.
    fn capture(&self, e: &Entry) -> NodeMeta {
        metadata::capture(&e.fs_path, &e.meta, &self.shared.owners)
    }
}

/// The paths a snapshot records of `paths`: absolute, as typed otherwise (no link
/// resolved), so that `snapshots --path` and `forget`'s groups see one name for one
/// place wherever the backup ran from.
fn recorded_paths(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| absolute(p).display().to_string())
        .collect()
}

/// Whether file `fresh` is `old` (its node in the parent snapshot) untouched, with
/// every chunk still stored: then it is not read again.
fn unchanged(old: &Node, fresh: &Node, index: &crate::index::Index) -> bool {
    old.kind == NodeKind::File
        && old.size == fresh.size
        && old.mtime_ns == fresh.mtime_ns
        && old.ctime_ns == fresh.ctime_ns
        && old.inode == fresh.inode
        && old.chunks.iter().all(|c| index.contains(c))
}

/// How far the prefetcher keeps ahead of the producers, in bytes of files to read.
const PREFETCH_AHEAD: u64 = 256 << 20;

/// How far the producers have got, for the prefetcher to keep ahead of. The
/// prefetcher sleeps on it rather than polling, and is woken only when it can go on:
/// a backup of a million small files does not pay a wake-up call per file.
#[derive(Default)]
struct ReadProgress {
    state: Mutex<Reading>,
    moved: Condvar,
}

#[derive(Default)]
struct Reading {
    /// Bytes of the files the producers began to read.
    begun: u64,
    /// The producers are done with the batch (or stopped).
    done: bool,
    /// The prefetcher sleeps until `begun` reaches this.
    awaited: Option<u64>,
}

impl ReadProgress {
    fn lock(&self) -> std::sync::MutexGuard<'_, Reading> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A producer begins to read a file of `size` bytes.
    fn began(&self, size: u64) {
        let mut st = self.lock();
        st.begun += size;
        if st.awaited.is_some_and(|a| st.begun >= a) {
            st.awaited = None;
            self.moved.notify_one();
        }
    }

    /// The producers are done with a batch (or stopped): the prefetcher stops too.
    fn finish(&self, done: bool) {
        self.lock().done = done;
        self.moved.notify_all();
    }

    /// Bytes begun so far.
    fn begun(&self) -> u64 {
        self.lock().begun
    }

    /// Sleeps until `advised` bytes are at most [`PREFETCH_AHEAD`] ahead of what the
    /// producers began; `false` once they are done.
    fn wait_for_room(&self, advised: u64) -> bool {
        let need = advised.saturating_sub(PREFETCH_AHEAD);
        let mut st = self.lock();
        while !st.done && st.begun < need {
            st.awaited = Some(need);
            st = self.moved.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        !st.done
    }
}

/// Asks the kernel to read `files` (in the order the producers will read them, each
/// with its size) into the page cache, staying at most [`PREFETCH_AHEAD`] bytes ahead
/// of what the producers began to read. While they compute over a database's pages
/// the disk would otherwise idle; this way it fetches the media that comes next.
/// Memory is the kernel's page cache, which it reclaims at will, not this process's.
/// It is the only read-ahead hint a file gets: one call per file.
fn prefetch(files: &[(&Path, u64)], progress: &ReadProgress) {
    // Begun before this batch: the producers' count goes on from there.
    let mut advised = progress.begun();
    for &(path, size) in files {
        if !progress.wait_for_room(advised) {
            return;
        }
        if let Ok(f) = File::open(path) {
            // Advice only: a failure costs speed, never correctness.
            let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::WillNeed);
        }
        advised += size;
    }
}

/// The order producers take entries in: largest files first, so a big database
/// starts at once and overlaps the many media files instead of running alone at
/// the end (the longest-job-first rule for parallel machines).
fn work_order(entries: &[Entry]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| {
        let m = &entries[i].meta;
        std::cmp::Reverse(if m.is_file() { m.len() } else { 0 })
    });
    order
}

/// Tells the prefetcher the producers are done when dropped.
struct FinishOnDrop<'a>(&'a ReadProgress);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        self.0.finish(true);
    }
}

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Entries the producers take at once: the walk lists the next batch while they
/// read this one. A batch's entries and nodes are all the backup holds of its files.
const BATCH_ENTRIES: usize = 4096;

/// Runs [`PRODUCERS`] threads over `entries` (a batch of the walk); returns their
/// nodes in walk order. `Ok(None)`: the pipeline stopped, and the reason is in `Shared`.
fn produce<'a>(
    shared: &'a ProduceState<'a>,
    store: &'a dyn ObjectStore,
    chunker: &Chunker,
    mut entries: Vec<Entry>,
    jobs: &Sender<Jobs>,
) -> Result<Option<Vec<Node>>> {
    let order = work_order(&entries);
    // The parent's nodes, each taken by the producer of its entry.
    let olds: Vec<Mutex<Option<Node>>> = entries
        .iter_mut()
        .map(|e| Mutex::new(e.old.take()))
        .collect();
    let entries = entries;
    // What the producers will read, in the order they read it.
    let to_read: Vec<(&Path, u64)> = order
        .iter()
        .map(|&i| (&entries[i], &olds[i]))
        .filter(|(e, _)| e.meta.is_file() && !e.sidecar)
        .filter(|(e, old)| {
            !old.lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(|old| unchanged(old, &node_of(e, NodeKind::File), shared.index))
        })
        .map(|(e, _)| (e.fs_path.as_path(), e.meta.len()))
        .collect();
    shared.reading.finish(false);
    let cursor = AtomicUsize::new(0);
    let run = |jobs: Sender<Jobs>| -> Result<Result<Vec<(usize, Node)>, Stopped>> {
        let mut producer = Producer {
            shared,
            bases: BaseReader::new(store, shared.keys, shared.index),
            window: Vec::new(),
            window_bytes: 0,
            jobs,
            batch: Vec::new(),
            batch_bytes: 0,
            stream_buf: Vec::new(),
        };
        let mut out = Vec::new();
        loop {
            let Some(&i) = order.get(cursor.fetch_add(1, Ordering::Relaxed)) else {
                return Ok(Ok(out));
            };
            let old = olds[i].lock().unwrap_or_else(|p| p.into_inner()).take();
            // A signal stops the backup between files (and between a file's chunks);
            // what was uploaded is indexed.
            let node =
                crate::interrupt::check().and_then(|()| producer.node(chunker, &entries[i], old));
            match node {
                Ok(Ok(Some(node))) => out.push((i, node)),
                Ok(Ok(None)) => {}
                Ok(Err(Stopped)) => return Ok(Err(Stopped)),
                // One unreadable file does not stop the backup of all the others.
                Err(RepoError::Source { source, .. }) if !shared.verbatim => shared
                    .skipped
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(skipped_entry(&entries[i].rel, &source)),
                Err(RepoError::Sqlite {
                    busy: true, detail, ..
                }) if !shared.verbatim => shared
                    .skipped
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Skipped {
                        path: entries[i].rel.clone(),
                        reason: format!("the database stayed locked: {detail}"),
                    }),
                Err(e) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
    };
    let results: Vec<_> = std::thread::scope(|s| {
        spawn_named(s, "bl-prefetch", || prefetch(&to_read, &shared.reading));
        // Stops the prefetcher however the producers end, a panic included.
        let _stop_prefetch = FinishOnDrop(&shared.reading);
        let handles: Vec<_> = (0..at_most(PRODUCERS))
            .map(|_| {
                let jobs = jobs.clone();
                spawn_named(s, "bl-produce", move || run(jobs))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut nodes = Vec::with_capacity(entries.len());
    let mut stopped = false;
    for r in results {
        match r? {
            Ok(part) => nodes.extend(part),
            Err(Stopped) => stopped = true,
        }
    }
    if stopped {
        return Ok(None);
    }
    nodes.sort_unstable_by_key(|(i, _)| *i);
    Ok(Some(nodes.into_iter().map(|(_, n)| n).collect()))
}

impl Repository<Indexed> {
    /// The parent snapshot's name, and what the walk compares against: the walk
    /// reads the parent's trees directory by directory, and they tell which files
    /// are unchanged.
    fn walk_parent(
        &self,
        newest: Option<(crate::SnapshotRef, Snapshot)>,
    ) -> (Option<ObjectName>, Parent<'_>) {
        match newest {
            Some((r, snap)) if !snap.root.is_empty() => (
                Some(r.name),
                Parent::Trees {
                    reader: TreeReader::new(
                        &*self.store,
                        &self.keys,
                        &self.state.index,
                        self.cache.as_deref(),
                    ),
                    root: snap.root,
                    name: r.name.to_hex(),
                },
            ),
            Some((r, snap)) => (
                Some(r.name),
                Parent::Nodes(
                    snap.nodes
                        .into_iter()
                        .filter(|n| matches!(n.kind, NodeKind::File | NodeKind::SqliteFile))
                        .map(|n| (n.path.clone(), n))
                        .collect(),
                ),
            ),
            None => (None, Parent::None),
        }
    }

    /// `backup --dry-run`: walks `opts.paths` as a backup would, with its exclusions
    /// and against the same parent, giving each entry it would store to `each`;
    /// reads no file's content and writes nothing. Files it calls new or changed are
    /// the ones a backup would read (their chunks may still be stored already).
    pub fn plan_backup(
        &self,
        opts: &BackupOptions,
        each: &mut dyn FnMut(&PlannedEntry),
    ) -> Result<BackupPlan> {
        let newest = self.newest_snapshot()?;
        let (_, parent) = self.walk_parent(newest.snapshot);
        let mut walker = Walker::new(&opts.paths, parent, opts.verbatim, opts.excludes.clone())?;
        let mut plan = BackupPlan::default();
        loop {
            let batch = walker.next_batch(BATCH_ENTRIES)?;
            if batch.is_empty() {
                break;
            }
            for e in batch.into_iter().filter(|e| !e.sidecar) {
                let ft = e.meta.file_type();
                let kind = entry_kind(&ft);
                let size = if ft.is_file() { e.meta.len() } else { 0 };
                let status = match (&e.old, e.in_parent()) {
                    (Some(old), _)
                        if unchanged(old, &node_of(&e, NodeKind::File), &self.state.index) =>
                    {
                        Change::Unchanged
                    }
                    (_, false) => Change::New,
                    _ if ft.is_file() => Change::Changed,
                    _ => Change::Unchanged,
                };
                match kind {
                    "dir" => plan.dirs += 1,
                    "file" => {
                        plan.files += 1;
                        plan.bytes_total += size;
                        if status != Change::Unchanged {
                            plan.files_to_read += 1;
                            plan.bytes_to_read += size;
                        }
                    }
                    _ => plan.others += 1,
                }
                each(&PlannedEntry {
                    path: String::from_utf8_lossy(&e.rel).into_owned(),
                    kind,
                    size,
                    status,
                });
            }
        }
        plan.excluded = walker.excluded;
        plan.skipped = walker
            .take_skipped()
            .into_iter()
            .map(|k| SkippedEntry {
                path: String::from_utf8_lossy(&k.path).into_owned(),
                reason: k.reason,
            })
            .collect();
        Ok(plan)
    }

    /// Backs up `opts.paths` as a new snapshot. Consumes the repository: its index no
    /// longer describes the store afterwards (open it again for another backup).
    pub fn backup(self, opts: &BackupOptions) -> Result<BackupSummary> {
        let start = Instant::now();
        let lock = &self.state.lock;
        // Never build on index sets the store rolled back: their index objects may
        // name packs a prune deleted.
        self.state.live.writable()?;
        self.check_writer_level()?;
        // The parent is the newest snapshot that authenticates: an object the store
        // made up, or one cut short, is passed over (and named in the summary).
        let newest = self.newest_snapshot()?;
        let ignored_snapshots = newest.rejected;
        let seq = newest.snapshot.as_ref().map_or(1, |(r, _)| r.seq + 1);
        let keys = &*self.keys;
        let store = &*self.store;
        let (parent, parent_files) = self.walk_parent(newest.snapshot);
        // A version-3 parent recorded owners and attributes.
        let parent_has_meta = matches!(parent_files, Parent::Trees { .. });
        // Entries that cannot be read are left out and named in the snapshot, except in
        // a verbatim copy (migration), which must hold everything or nothing.
        let walker = match &opts.stdin {
            Some(name) => Walker::stdin(name, parent_files)?,
            None => Walker::new(
                &opts.paths,
                parent_files,
                opts.verbatim,
                opts.excludes.clone(),
            )?,
        };

        let pack_size = self.config.pack_size as usize;
        let shared = Shared {
            error: Mutex::new(None),
            pending: Mutex::new(Vec::new()),
            indexes: Mutex::new(Vec::new()),
            bytes_stored: AtomicU64::new(0),
            object_limit: self.object_limit,
            cache: self.cache.as_deref(),
        };
        let workers = at_most(opts.workers);
        let uploaders = at_most(store.max_concurrent_puts().clamp(1, MAX_UPLOADERS));
        // Room for every buffer that can be in flight at once: chunks held by the
        // producers, queued for (one batch: one large chunk) and held by the
        // workers; the pack being filled (or handed over: the pack channel holds
        // none) and those being uploaded. Chunk buffers are kept at up to twice the
        // average chunk: most chunks fit.
        let chunk_pool = BufferPool::new(
            at_most(PRODUCERS) + 1 + workers,
            2 * self.config.chunker.avg as usize,
        );
        let pack_pool = BufferPool::new(1 + uploaders, usize::MAX);
        let filling = FillingPack {
            keys,
            pack_size,
            pack_pool: &pack_pool,
            open: Mutex::new(None),
            running: AtomicUsize::new(workers),
        };
        let compression = self.config.compression;
        let produce_state = ProduceState {
            keys,
            compression,
            index: &self.state.index,
            new: NewChunks::new(self.spill()),
            progress: opts.progress,
            reporting: Mutex::new(()),
            bytes_total: AtomicU64::new(0),
            files_total: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            files_done: AtomicU64::new(0),
            verbatim: opts.verbatim,
            bytes_read: AtomicU64::new(0),
            reading: ReadProgress::default(),
            bytes_new: AtomicU64::new(0),
            files_unchanged: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            chunk_pool: &chunk_pool,
            skipped: Mutex::new(Vec::new()),
            warnings: Mutex::new(Vec::new()),
            owners: Mutex::new(Owners::default()),
            parent_has_meta,
        };
        // One batch of jobs queued (a worker has the next as soon as it is done); a
        // finished pack waits for an uploader to take it.
        let (job_tx, job_rx) = pipe::bounded::<Jobs>(1);
        let (pack_tx, pack_rx) = pipe::bounded::<FinishedPack>(0);
        // The trees of what is backed up, stored (in packs of their own) as the walk
        // leaves each directory, before the index that names them.
        let mut packer = self.tree_packer()?;
        let counted = AtomicBool::new(false);
        // The producers (and with them the only job sender) live inside the scope, so
        // even a panic drops the sender and lets the workers finish.
        let (built, mut walker) = std::thread::scope(|s| {
            for _ in 0..workers {
                let (rx, tx) = (job_rx.clone(), pack_tx.clone());
                let (shared, filling, chunk_pool) = (&shared, &filling, &chunk_pool);
                spawn_named(s, "bl-worker", move || {
                    if let Err(e) = worker(rx, filling, &tx, chunk_pool, compression) {
                        shared.fail(RepoError::Usage(format!("compression failed: {e}")));
                    }
                    filling.leave(&tx);
                });
            }
            drop((job_rx, pack_tx));
            // Uploads overlap store latency (an fsync, a cloud PUT).
            for _ in 0..uploaders {
                let (rx, shared) = (pack_rx.clone(), &shared);
                let pack_pool = &pack_pool;
                spawn_named(s, "bl-upload", move || {
                    uploader(store, keys, lock, rx, pack_pool, shared)
                });
            }
            drop(pack_rx);
            // A progress bar's totals, counted alongside.
            let _stop_count = SetOnDrop(&counted);
            if opts.progress.is_some() {
                let (st, counted) = (&produce_state, &counted);
                spawn_named(s, "bl-count", move || {
                    let totals = (&st.files_total, &st.bytes_total);
                    walk::count(&opts.paths, &opts.excludes, totals, counted)
                });
            }
            // The walk lists the next batch while the producers read this one, and
            // hands it over when they are done: two batches alive, not three (a batch
            // of a million-file tree's entries is about 4 MiB, and the walk is rarely
            // the slower side).
            let (batch_tx, batch_rx) = pipe::bounded::<Result<Vec<Entry>>>(0);
            let walking = spawn_named(s, "bl-walk", move || {
                let mut walker = walker;
                loop {
                    let batch = walker.next_batch(BATCH_ENTRIES);
                    let last = batch.as_ref().map_or(true, |b| b.is_empty());
                    if batch_tx.send(batch).is_err() || last {
                        return walker;
                    }
                }
            });
            let chunker = Chunker::new(keys, self.config.chunker);
            let mut builder = TreeBuilder::new(keys);
            let mut summary = format::Summary::default();
            let built = || -> Result<Option<(Vec<ChunkId>, format::Summary)>> {
                for (n, batch) in batch_rx.iter().enumerate() {
                    let batch = batch?;
                    if batch.is_empty() {
                        break;
                    }
                    if n == 0 {
                        pause(step::BACKUP_WALKED);
                    }
                    let Some(nodes) = produce(&produce_state, store, &chunker, batch, &job_tx)?
                    else {
                        return Ok(None);
                    };
                    for node in nodes {
                        summary.add(&node);
                        packer.push(&mut builder, node)?;
                    }
                }
                Ok(Some((packer.finish_trees(builder)?, summary)))
            };
            let built = built();
            // Once the producers end, the workers finish, and the last one out sends
            // the open pack; the walk stops at its next batch.
            drop((job_tx, batch_rx));
            let walker = walking
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (built, walker)
        });
        if matches!(built, Ok(Some(_))) {
            produce_state.report_done();
        }
        let stats = (
            produce_state.bytes_read.into_inner(),
            produce_state.bytes_new.into_inner(),
            produce_state.files_unchanged.into_inner(),
        );
        let (bytes_read, bytes_new, files_unchanged) = stats;
        let excluded = walker.excluded;
        let mut skipped = walker.take_skipped();
        skipped.extend(
            produce_state
                .skipped
                .into_inner()
                .unwrap_or_else(|p| p.into_inner()),
        );
        // In walk order, as the snapshot lists its nodes.
        skipped.sort_by(|a, b| a.path.cmp(&b.path));
        let mut warnings = self.state.live.warnings();
        warnings.extend(walker.warning.take());
        warnings.extend(
            produce_state
                .warnings
                .into_inner()
                .unwrap_or_else(|p| p.into_inner()),
        );
        drop(walker);
        drop((produce_state.new, chunk_pool, pack_pool));
        let failed = shared
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let built = match (failed, built) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            // A stopped pipeline leaves its reason in `shared.error`.
            (None, Ok(None)) => Err(RepoError::Usage(
                "the backup stopped early; run it again".into(),
            )),
            (None, Ok(Some(built))) => Ok(built),
        };
        // Whatever was uploaded gets indexed, and the index set names it, even on
        // failure, so a retry reuses it.
        let (tree_packs, tree_bytes) = match &built {
            Ok(_) => packer.finish()?,
            Err(_) => packer.abandon(),
        };
        shared.bytes_stored.fetch_add(tree_bytes, Ordering::Relaxed);
        let mut leftover = shared.take_pending();
        leftover.extend(tree_packs);
        if !leftover.is_empty() {
            shared.write_index(store, keys, leftover)?;
        }
        let written =
            std::mem::take(&mut *shared.indexes.lock().unwrap_or_else(|p| p.into_inner()));
        if !written.is_empty() || self.state.live.legacy {
            self.write_index_set(&written)?;
        }
        let (root, summary) = built?;

        let mut snapshot = Snapshot {
            seq,
            parent,
            time_unix_ns: opts.time_unix_ns.unwrap_or_else(now_unix_ns),
            hostname: opts.hostname.clone(),
            paths: opts
                .recorded_paths
                .clone()
                .unwrap_or_else(|| match &opts.stdin {
                    Some(name) => vec![format!("stdin:{name}")],
                    None => recorded_paths(&opts.paths),
                }),
            meta: Default::default(),
            nodes: Vec::new(),
            root,
        };
        snapshot.set_summary(&summary);
        snapshot.set_tags(&opts.tags);
        snapshot.set_skipped(&skipped);
        if let Some(source) = &opts.whatsapp {
            snapshot.set_whatsapp(source);
        }
        // Index durable before the snapshot that needs it; the snapshot durable before
        // the device records it as seen.
        let (name, sealed_len) = self.commit_snapshot(snapshot, Some(step::BACKUP_INDEXED))?;
        pause(step::BACKUP_COMMITTED);
        self.home.record(&self.id(), seq)?;
        Ok(BackupSummary {
            snapshot: name.to_hex(),
            seq,
            files: summary.files,
            files_unchanged,
            bytes_total: summary.bytes,
            bytes_read,
            bytes_new,
            bytes_stored: shared.bytes_stored.load(Ordering::Relaxed) + sealed_len,
            dedup_ratio: summary.bytes as f64 / bytes_new.max(1) as f64,
            seconds: start.elapsed().as_secs_f64(),
            ignored_snapshots,
            skipped: skipped
                .iter()
                .map(|k| SkippedEntry {
                    path: String::from_utf8_lossy(&k.path).into_owned(),
                    reason: k.reason.clone(),
                })
                .collect(),
            excluded,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeviceHome;
    use backlock_core::key::BackupKey;
    use backlock_store::MemoryStore;
    use rand::RngCore;
    use std::sync::Arc;

    /// Each ID is new once, whatever its prefix shares with others and whatever the
    /// order of insertion.
    #[test]
    fn new_chunks_says_new_once_per_id() {
        let dir = tempfile::tempdir().unwrap();
        // In memory, and moved to scratch files every 700 IDs.
        for in_memory in [crate::index::DEFAULT_IN_MEMORY, 700] {
            let set = NewChunks::new(Spill {
                dir: dir.path().into(),
                in_memory,
            });
            let mut ids: Vec<ChunkId> = (0..5000u32)
                .map(|i| {
                    let mut id = [0u8; 32];
                    // Few prefixes, the rest varies.
                    id[1] = (i % 3) as u8;
                    id[2..6].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
                    ChunkId(id)
                })
                .collect();
            assert!(ids.iter().all(|&id| set.insert(id).unwrap()));
            ids.reverse();
            assert!(ids.iter().all(|&id| !set.insert(id).unwrap()));
            assert!(ids.iter().all(|id| set.contains(id)));
            let mut absent = ids[7];
            absent.0[31] ^= 0x55;
            assert!(!set.contains(&absent));
            let sizes: Vec<usize> = set
                .spilled
                .read()
                .unwrap()
                .iter()
                .map(|t| t.len())
                .collect();
            match in_memory {
                // Merged as a binary counter carries: each table at least twice the next.
                700 => assert!(
                    !sizes.is_empty() && sizes.windows(2).all(|w| w[0] >= 2 * w[1]),
                    "{sizes:?}"
                ),
                _ => assert!(sizes.is_empty()),
            }
            // i = 0 made the all-zero ID, a free slot's mark: an ID like any other.
            assert!(ids.contains(&ChunkId([0; 32])));
        }
    }

    /// Kept chunk buffers are cut back to the pool's limit, so the memory a long backup
    /// keeps does not creep up to the largest chunk times the pool's size; a full
    /// pool drops what it is given. Small buffers (runs of pages) are kept apart, up
    /// to their own count, and handed out only for a run they can hold.
    #[test]
    fn the_buffer_pool_keeps_few_buffers_of_bounded_size() {
        let pool = BufferPool::new(2, 1 << 20);
        pool.give(Vec::with_capacity(4 << 20));
        pool.give(Vec::with_capacity(512 << 10));
        pool.give(Vec::with_capacity(3 << 20));
        pool.give(Vec::with_capacity(1 << 10));
        let kept: Vec<usize> = pool
            .kept
            .lock()
            .unwrap()
            .iter()
            .map(Vec::capacity)
            .collect();
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert!(kept[0] >= 1 << 20 && kept[0] < (1 << 20) + 4096, "{kept:?}");
        assert!(kept[1] >= 512 << 10 && kept[1] < 1 << 20, "{kept:?}");

        for _ in 0..SMALL_KEPT + 10 {
            pool.give(Vec::with_capacity(16 << 10));
        }
        assert_eq!(pool.small.lock().unwrap().len(), SMALL_KEPT);
        assert_eq!(pool.take(16 << 10).capacity(), 16 << 10);
        assert_eq!(pool.small.lock().unwrap().len(), SMALL_KEPT - 1);
        assert!(
            pool.take(32 << 10).capacity() >= 32 << 10,
            "a kept run too small is not handed out"
        );
    }

    /// However many workers seal chunks, they fill one pack at a time, so every pack of
    /// a backup but its last is full. With a pack per worker, each worker's last pack
    /// was part-filled, and each worker held a pack's worth of memory.
    #[test]
    fn workers_fill_one_pack_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        let db_path = src.join("chat.db");
        let db = rusqlite::Connection::open(&db_path).unwrap();
        db.execute_batch("CREATE TABLE m(body BLOB)").unwrap();
        let mut rng = rand::thread_rng();
        for _ in 0..800 {
            let mut body = vec![0u8; 3000];
            rng.fill_bytes(&mut body);
            db.execute("INSERT INTO m VALUES (?1)", [body]).unwrap();
        }
        drop(db);
        let store = MemoryStore::new();
        let key = BackupKey::generate();
        let home = DeviceHome::new(dir.path().join("home"));
        let mut repo = Repository::init(Arc::new(store.clone()), &key, home.clone())
            .unwrap()
            .load_index()
            .unwrap();
        let pack_size = 64 << 10;
        repo.config.pack_size = pack_size;
        let opts = BackupOptions {
            paths: vec![src],
            hostname: "test".into(),
            workers: 4,
            ..Default::default()
        };
        repo.backup(&opts).unwrap();
        // The last, part-filled pack was sent too: the database restores exact.
        let repo = Repository::open(Arc::new(store.clone()), &key, home)
            .unwrap()
            .load_index()
            .unwrap();
        let restored = dir.path().join("restored");
        repo.restore(&repo.find_snapshot("latest").unwrap(), &restored)
            .unwrap();
        assert!(fs::read(restored.join("src/chat.db")).unwrap() == fs::read(&db_path).unwrap());
        let sizes: Vec<u64> = store
            .list(ObjectKind::Pack)
            .unwrap()
            .iter()
            .map(|o| o.size)
            .collect();
        assert!(sizes.len() >= 30, "only {} packs", sizes.len());
        // A pack is sent when the next blob, a run of pages and its framing, does not
        // fit.
        let blob_max = (database_chunk(4096) + 200) as u64;
        let part_filled = sizes
            .iter()
            .filter(|&&size| size + blob_max < u64::from(pack_size))
            .count();
        // The last data pack, and the pack of the snapshot's trees.
        assert!(
            part_filled <= 2,
            "{part_filled} part-filled packs: {sizes:?}"
        );
    }
}
