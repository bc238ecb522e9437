//! The index of a repository too large to hold in memory, kept in a scratch file.
//!
//! While index objects are read, entries collect in memory until the limit the
//! repository was opened with; each full run is sorted and appended to an unnamed
//! scratch file. At the end the runs are merged into one sorted table (a second
//! scratch file), one entry per chunk ID, and lookups read it a page at a time. What
//! stays in memory is the first ID of each page: 32 bytes per 64 entries, about 1/128
//! of the table. The files are unlinked from the start: nothing is left when the
//! process ends, however it ends, and no other process can open them by name.
//!
//! A backup's own new chunks are kept the same way ([`IdTable`]): past the limit, the
//! IDs held in memory go to a sorted scratch file with a filter of 2 bytes per ID that
//! answers most lookups of an ID not there without reading it.
//!
//! Commands that go through a spilled index a group of packs at a time sort its entries
//! into their groups in one pass ([`Buckets`]), then read a group at a time.
//!
//! They hold what index objects hold once decrypted (chunk IDs, which are keyed MACs,
//! and where each blob lies in its pack), never file content; they sit on this device,
//! beside the files the backup reads.

use crate::index::Entry;
use backlock_core::ids::ChunkId;
use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    fs::File,
    io::{self, BufWriter, Write},
    os::unix::fs::FileExt,
    path::Path,
};

/// Bytes of one entry in a scratch file.
const RECORD: usize = 64;
/// Entries per page of the table: one read of 4 KiB finds any ID.
const PAGE_ENTRIES: usize = 64;
/// Bytes each run's reader buffers during the merge.
const MERGE_BUFFER: usize = 64 << 10;
/// Bytes buffered while a scratch file is written: a spill happens at the backup's
/// memory peak, so the buffer is small; the writes are sequential either way.
const WRITE_BUFFER: usize = 256 << 10;

fn encode(e: &Entry) -> [u8; RECORD] {
    let mut out = [0u8; RECORD];
    out[..32].copy_from_slice(&e.id.0);
    out[32..40].copy_from_slice(&e.offset.to_le_bytes());
    for (i, v) in [e.pack, e.seq, e.length, e.raw_length, e.base, e.added]
        .into_iter()
        .enumerate()
    {
        out[40 + 4 * i..44 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    out
}

fn decode(b: &[u8]) -> Entry {
    let u32_at = |i: usize| u32::from_le_bytes(b[40 + 4 * i..44 + 4 * i].try_into().unwrap());
    Entry {
        id: ChunkId(b[..32].try_into().unwrap()),
        offset: u64::from_le_bytes(b[32..40].try_into().unwrap()),
        pack: u32_at(0),
        seq: u32_at(1),
        length: u32_at(2),
        raw_length: u32_at(3),
        base: u32_at(4),
        added: u32_at(5),
    }
}

/// A read of a scratch file failed. The file is this process's memory put on disk,
/// unlinked, read back from the page cache; it fails as memory does, when the machine
/// does, and the command stops as it would then.
pub(crate) fn unreadable(e: io::Error) -> ! {
    panic!("a scratch file of the index could not be read back ({e}): the disk under the temporary or cache directory failed")
}

/// Sorted runs of entries in one scratch file.
pub(crate) struct Runs {
    file: File,
    /// Each run's first entry and its number of entries.
    runs: Vec<(u64, u64)>,
    written: u64,
}

impl Runs {
    /// An empty scratch file in `dir`, created if need be.
    pub(crate) fn new(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Runs {
            file: tempfile::tempfile_in(dir)?,
            runs: Vec::new(),
            written: 0,
        })
    }

    /// Appends `run`, sorted by `(id, added)`.
    pub(crate) fn push(&mut self, run: &[Entry]) -> io::Result<()> {
        let mut out = BufWriter::with_capacity(WRITE_BUFFER, &self.file);
        for e in run {
            out.write_all(&encode(e))?;
        }
        out.flush()?;
        self.runs.push((self.written, run.len() as u64));
        self.written += run.len() as u64;
        Ok(())
    }

    /// Merges the runs and `last` (sorted too, still in memory) into a table in a new
    /// scratch file in `dir`, keeping for each ID the entry added first. The runs' file
    /// is gone once this returns.
    pub(crate) fn merge(self, last: &[Entry], dir: &Path) -> io::Result<Table> {
        let mut sources: Vec<RunReader<'_>> = self
            .runs
            .iter()
            .map(|&(first, len)| RunReader::new(&self.file, RECORD, first, len))
            .collect();
        // Each source's next entry, and the sources by it, smallest first. Source
        // `memory` is `last`.
        let memory = sources.len();
        let mut last = last.iter().copied();
        let mut heads = Vec::with_capacity(memory + 1);
        for source in sources.iter_mut() {
            heads.push(source.next()?);
        }
        heads.push(last.next());
        let mut heap: BinaryHeap<_> = heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.map(|e| Reverse((e.id, e.added, i))))
            .collect();
        let file = tempfile::tempfile_in(dir)?;
        let mut out = BufWriter::with_capacity(WRITE_BUFFER, &file);
        let mut fence = Vec::new();
        let mut len = 0usize;
        let mut previous: Option<ChunkId> = None;
        while let Some(Reverse((id, _, i))) = heap.pop() {
            let entry = heads[i].expect("a source in the heap has a head");
            heads[i] = match i == memory {
                true => last.next(),
                false => sources[i].next()?,
            };
            if let Some(e) = heads[i] {
                heap.push(Reverse((e.id, e.added, i)));
            }
            // Of one ID, the entry added first comes first.
            if previous == Some(id) {
                continue;
            }
            previous = Some(id);
            if len % PAGE_ENTRIES == 0 {
                fence.push(id);
            }
            out.write_all(&encode(&entry))?;
            len += 1;
        }
        out.flush()?;
        drop(out);
        fence.shrink_to_fit();
        Ok(Table { file, len, fence })
    }
}

/// Reads the page of a sorted scratch file of `len` records of `record` bytes (ID
/// first) that holds `id` if the file does: `fence` holds each page's first ID and
/// `buffer` is a page long (the last page may be shorter). Returns the page's first position and
/// its bytes; `None` when `id` sorts before every page.
fn read_page<'b>(
    file: &File,
    fence: &[ChunkId],
    id: &ChunkId,
    (len, record): (usize, usize),
    buffer: &'b mut [u8],
) -> io::Result<Option<(usize, &'b [u8])>> {
    let Some(page) = fence.partition_point(|first| first <= id).checked_sub(1) else {
        return Ok(None);
    };
    let per_page = buffer.len() / record;
    let first = page * per_page;
    let buffer = &mut buffer[..per_page.min(len - first) * record];
    file.read_exact_at(buffer, (first * record) as u64)?;
    Ok(Some((first, buffer)))
}

/// Reads records of a scratch file back in order, a buffer at a time.
struct RunReader<'a> {
    file: &'a File,
    /// Bytes of a record.
    record: usize,
    /// The next record to read from the file, and the end of the run.
    at: u64,
    end: u64,
    buffer: Vec<u8>,
    used: usize,
}

impl<'a> RunReader<'a> {
    /// Records `first..first + len` of `record` bytes each.
    fn new(file: &'a File, record: usize, first: u64, len: u64) -> Self {
        RunReader {
            file,
            record,
            at: first,
            end: first + len,
            buffer: Vec::new(),
            used: 0,
        }
    }

    fn next_record(&mut self) -> io::Result<Option<&[u8]>> {
        if self.used == self.buffer.len() {
            let n = ((self.end - self.at) as usize).min(MERGE_BUFFER / self.record);
            if n == 0 {
                self.buffer = Vec::new();
                return Ok(None);
            }
            self.buffer.resize(n * self.record, 0);
            self.file
                .read_exact_at(&mut self.buffer, self.at * self.record as u64)?;
            self.at += n as u64;
            self.used = 0;
        }
        self.used += self.record;
        Ok(Some(&self.buffer[self.used - self.record..self.used]))
    }

    fn next(&mut self) -> io::Result<Option<Entry>> {
        Ok(self.next_record()?.map(decode))
    }

    fn next_id(&mut self) -> io::Result<Option<ChunkId>> {
        Ok(self
            .next_record()?
            .map(|b| ChunkId(b[..32].try_into().unwrap())))
    }
}

/// The merged index: entries sorted by ID, one per ID, in a scratch file.
#[derive(Debug)]
pub(crate) struct Table {
    file: File,
    len: usize,
    /// The first ID of each page.
    fence: Vec<ChunkId>,
}

impl Table {
    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The position of `id` in the table and its entry, if it is there.
    pub(crate) fn find(&self, id: &ChunkId) -> io::Result<Option<(usize, Entry)>> {
        let mut buffer = [0u8; PAGE_ENTRIES * RECORD];
        let Some((first, buffer)) =
            read_page(&self.file, &self.fence, id, (self.len, RECORD), &mut buffer)?
        else {
            return Ok(None);
        };
        let n = buffer.len() / RECORD;
        let key = |i: usize| &buffer[i * RECORD..i * RECORD + 32];
        let (mut low, mut high) = (0, n);
        let mut found = Err(());
        while low < high {
            let mid = (low + high) / 2;
            match key(mid).cmp(&id.0[..]) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => {
                    found = Ok(mid);
                    break;
                }
            }
        }
        Ok(found
            .ok()
            .map(|i| (first + i, decode(&buffer[i * RECORD..(i + 1) * RECORD]))))
    }

    /// The entry at `position`.
    pub(crate) fn entry(&self, position: usize) -> io::Result<Entry> {
        let mut record = [0u8; RECORD];
        self.file
            .read_exact_at(&mut record, (position * RECORD) as u64)?;
        Ok(decode(&record))
    }

    /// Every entry, in ID order.
    pub(crate) fn for_each(&self, mut each: impl FnMut(Entry)) -> io::Result<()> {
        let mut reader = RunReader::new(&self.file, RECORD, 0, self.len as u64);
        while let Some(e) = reader.next()? {
            each(e);
        }
        Ok(())
    }
}

/// Entries put in numbered buckets in one pass, in a scratch file, to be read back a
/// bucket at a time: a command going through a large index a group of packs at a time
/// reads the index once instead of once per group.
///
/// Entries collect in memory up to a limit; each full run is sorted by bucket (in
/// place: no second buffer at the peak) and appended to the file, with where each
/// bucket starts in it. Reading a bucket back reads its stretch of every run.
pub(crate) struct Buckets {
    file: File,
    buckets: usize,
    /// Entries held in memory before a run is written.
    most: usize,
    pending: Vec<(u32, Entry)>,
    /// For each written run, the position of each bucket's first record and then the
    /// run's end: `buckets + 1` positions per run.
    starts: Vec<u64>,
    written: u64,
}

impl Buckets {
    /// An empty scratch file in `dir` for `buckets` buckets, holding at most `most`
    /// entries in memory.
    pub(crate) fn new(dir: &Path, buckets: usize, most: usize) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Buckets {
            file: tempfile::tempfile_in(dir)?,
            buckets,
            most: most.max(1),
            pending: Vec::new(),
            starts: Vec::new(),
            written: 0,
        })
    }

    /// Puts `entry` in `bucket` (below the number of buckets).
    pub(crate) fn push(&mut self, bucket: usize, entry: Entry) -> io::Result<()> {
        debug_assert!(bucket < self.buckets);
        self.pending.push((bucket as u32, entry));
        if self.pending.len() >= self.most {
            self.write_run()?;
        }
        Ok(())
    }

    fn write_run(&mut self) -> io::Result<()> {
        self.pending.sort_unstable_by_key(|&(bucket, _)| bucket);
        let mut out = BufWriter::with_capacity(WRITE_BUFFER, &self.file);
        let mut next = 0;
        for &(bucket, ref e) in &self.pending {
            while next <= bucket as usize {
                self.starts.push(self.written);
                next += 1;
            }
            out.write_all(&encode(e))?;
            self.written += 1;
        }
        out.flush()?;
        while next <= self.buckets {
            self.starts.push(self.written);
            next += 1;
        }
        self.pending.clear();
        Ok(())
    }

    /// Every entry put in `bucket`, in no particular order.
    pub(crate) fn read(&mut self, bucket: usize, mut each: impl FnMut(Entry)) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.write_run()?;
        }
        // The run's memory is not held while the buckets are gone through.
        self.pending = Vec::new();
        for run in self.starts.chunks_exact(self.buckets + 1) {
            let (first, end) = (run[bucket], run[bucket + 1]);
            let mut reader = RunReader::new(&self.file, RECORD, first, end - first);
            while let Some(e) = reader.next()? {
                each(e);
            }
        }
        Ok(())
    }
}

/// IDs per page of an [`IdTable`]: 4 KiB.
const ID_PAGE: usize = 128;
/// Bits of an [`IdTable`]'s filter per ID, and bits set per ID: about one lookup in
/// 2,000 of an ID not there reads the file.
const FILTER_BITS: usize = 16;
const FILTER_HASHES: u64 = 6;

/// Sorted chunk IDs in a scratch file, with a Bloom filter in memory.
pub(crate) struct IdTable {
    file: File,
    len: usize,
    /// The first ID of each page.
    fence: Vec<ChunkId>,
    filter: Vec<u64>,
}

/// The filter bits of `id`: chunk IDs are keyed MACs, uniform to anyone without the
/// key, so two of their words serve as the two hashes of double hashing. Each hash is
/// mapped onto `0..bits` by multiply-shift, so the filter is sized to its IDs exactly
/// instead of rounded up to a power of two (up to twice the memory).
fn filter_bits(id: &ChunkId, bits: u64) -> impl Iterator<Item = u64> {
    let word = |i: usize| u64::from_le_bytes(id.0[i..i + 8].try_into().unwrap());
    let (h1, h2) = (word(8), word(16) | 1);
    (0..FILTER_HASHES).map(move |i| {
        let h = h1.wrapping_add(i.wrapping_mul(h2));
        ((u128::from(h) * u128::from(bits)) >> 64) as u64
    })
}

/// The bits of the filter of `len` IDs: [`FILTER_BITS`] each, in whole words.
fn filter_size(len: usize) -> u64 {
    (len * FILTER_BITS).max(64).next_multiple_of(64) as u64
}

impl IdTable {
    /// Writes `len` IDs, given in ascending order, to a new scratch file in `dir`.
    pub(crate) fn write(
        dir: &Path,
        len: usize,
        ids: impl IntoIterator<Item = io::Result<ChunkId>>,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let file = tempfile::tempfile_in(dir)?;
        let bits = filter_size(len);
        let mut filter = vec![0u64; (bits / 64) as usize];
        let mut fence = Vec::with_capacity(len.div_ceil(ID_PAGE));
        let mut out = BufWriter::with_capacity(WRITE_BUFFER, &file);
        let mut written = 0;
        for id in ids {
            let id = id?;
            if written % ID_PAGE == 0 {
                fence.push(id);
            }
            for bit in filter_bits(&id, bits) {
                filter[(bit / 64) as usize] |= 1 << (bit % 64);
            }
            out.write_all(&id.0)?;
            written += 1;
        }
        out.flush()?;
        drop(out);
        debug_assert_eq!(written, len);
        Ok(IdTable {
            file,
            len: written,
            fence,
            filter,
        })
    }

    /// Number of IDs.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// One table in a new scratch file in `dir` of the IDs of `self` and `other`, which
    /// hold none in common. Both files are gone once this returns.
    pub(crate) fn merge(self, other: IdTable, dir: &Path) -> io::Result<IdTable> {
        let mut a = RunReader::new(&self.file, 32, 0, self.len as u64);
        let mut b = RunReader::new(&other.file, 32, 0, other.len as u64);
        let (mut next_a, mut next_b) = (a.next_id()?, b.next_id()?);
        let merged = std::iter::from_fn(|| {
            let from_a = match (next_a, next_b) {
                (None, None) => return None,
                (Some(x), Some(y)) => x < y,
                (x, _) => x.is_some(),
            };
            let (next, reader) = match from_a {
                true => (&mut next_a, &mut a),
                false => (&mut next_b, &mut b),
            };
            let id = next.take().expect("the side chosen has an ID");
            Some(reader.next_id().map(|n| {
                *next = n;
                id
            }))
        });
        IdTable::write(dir, self.len + other.len, merged)
    }

    /// True when `id` is in the table.
    pub(crate) fn contains(&self, id: &ChunkId) -> io::Result<bool> {
        let bits = self.filter.len() as u64 * 64;
        if !filter_bits(id, bits)
            .all(|bit| self.filter[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
        {
            return Ok(false);
        }
        let mut buffer = [0u8; ID_PAGE * 32];
        let Some((_, buffer)) =
            read_page(&self.file, &self.fence, id, (self.len, 32), &mut buffer)?
        else {
            return Ok(false);
        };
        Ok(buffer.chunks_exact(32).any(|r| r == id.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u32, added: u32) -> Entry {
        Entry {
            id: ChunkId(*blake3::hash(&n.to_le_bytes()).as_bytes()),
            offset: u64::from(n) << 33,
            pack: n % 7,
            seq: n,
            length: n + 1,
            raw_length: n + 2,
            base: n % 3,
            added,
        }
    }

    #[test]
    fn an_entry_reads_back_as_written() {
        let e = entry(9, 4);
        let back = decode(&encode(&e));
        assert_eq!(encode(&back), encode(&e));
        assert_eq!((back.offset, back.added), (9 << 33, 4));
    }

    #[test]
    fn merged_runs_keep_the_first_added_of_each_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs = Runs::new(dir.path()).unwrap();
        // Three runs of 300 whose IDs overlap, and 300 in memory: IDs 0..800.
        let mut added = 0;
        let mut all = Vec::new();
        let mut make = |from: u32| {
            let mut run: Vec<Entry> = (from..from + 300)
                .map(|n| {
                    added += 1;
                    entry(n, added)
                })
                .collect();
            run.sort_unstable_by_key(|e| (e.id, e.added));
            all.extend_from_slice(&run);
            run
        };
        for from in [0, 200, 100] {
            runs.push(&make(from)).unwrap();
        }
        let last = make(500);
        let table = runs.merge(&last, dir.path()).unwrap();
        assert_eq!(table.len(), 800);
        let mut seen = Vec::new();
        table.for_each(|e| seen.push(e)).unwrap();
        assert!(seen.windows(2).all(|w| w[0].id < w[1].id));
        for n in 0..800 {
            let first = all
                .iter()
                .filter(|e| e.id == entry(n, 0).id)
                .min_by_key(|e| e.added)
                .unwrap();
            let (at, found) = table.find(&first.id).unwrap().expect("found");
            assert_eq!(encode(&found), encode(first));
            assert_eq!(encode(&table.entry(at).unwrap()), encode(first));
        }
        for n in 800..1000 {
            assert!(table.find(&entry(n, 0).id).unwrap().is_none());
        }
        assert!(table.find(&ChunkId([0; 32])).unwrap().is_none());
        assert!(table.find(&ChunkId([0xff; 32])).unwrap().is_none());
    }

    #[test]
    fn an_id_table_holds_its_ids_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids: Vec<ChunkId> = (0..1000).map(|n| entry(n, 0).id).collect();
        ids.sort();
        let table = IdTable::write(dir.path(), ids.len(), ids.iter().copied().map(Ok)).unwrap();
        assert!(ids.iter().all(|id| table.contains(id).unwrap()));
        let others = (1000..20_000).map(|n| entry(n, 0).id);
        assert_eq!(others.filter(|id| table.contains(id).unwrap()).count(), 0);
        assert!(!table.contains(&ChunkId([0; 32])).unwrap());
        let empty = IdTable::write(dir.path(), 0, []).unwrap();
        assert!(!empty.contains(&ids[0]).unwrap());
    }

    /// The filter costs its 2 bytes per ID, not up to twice that, and still answers
    /// nearly every lookup of an ID not there without reading the file.
    #[test]
    fn an_id_tables_filter_is_two_bytes_per_id_and_rarely_wrong() {
        let dir = tempfile::tempdir().unwrap();
        // Just past a power of two of bits, where rounding up would double it.
        let len = (1 << 16) + 1000;
        let mut ids: Vec<ChunkId> = (0..len as u32).map(|n| entry(n, 0).id).collect();
        ids.sort();
        let table = IdTable::write(dir.path(), len, ids.iter().copied().map(Ok)).unwrap();
        assert!(
            table.filter.len() * 8 <= len * 2 + 8,
            "{} bytes",
            table.filter.len() * 8
        );
        let bits = table.filter.len() as u64 * 64;
        let passed = (len as u32..len as u32 + 200_000)
            .map(|n| entry(n, 0).id)
            .filter(|id| {
                filter_bits(id, bits)
                    .all(|b| table.filter[(b / 64) as usize] & (1 << (b % 64)) != 0)
            })
            .count();
        // 16 bits and 6 hashes per ID: about 1 in 1,700 in theory.
        assert!(
            passed < 400,
            "{passed} of 200,000 absent IDs passed the filter"
        );
    }

    #[test]
    fn merged_id_tables_hold_the_ids_of_both_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let table = |range: std::ops::Range<u32>, step: usize| {
            let mut ids: Vec<ChunkId> = range.step_by(step).map(|n| entry(n, 0).id).collect();
            ids.sort();
            IdTable::write(dir.path(), ids.len(), ids.into_iter().map(Ok)).unwrap()
        };
        // Interleaved, one much larger than the other, and one empty.
        let merged = table(0..3000, 2)
            .merge(table(1..600, 2), dir.path())
            .unwrap()
            .merge(table(0..0, 1), dir.path())
            .unwrap();
        assert_eq!(merged.len(), 1500 + 300);
        let mut back = Vec::new();
        let mut reader = RunReader::new(&merged.file, 32, 0, merged.len as u64);
        while let Some(id) = reader.next_id().unwrap() {
            back.push(id);
        }
        assert!(back.windows(2).all(|w| w[0] < w[1]), "sorted, no ID twice");
        let held = |n: u32| n < 600 || n % 2 == 0;
        for n in 0..4000 {
            assert_eq!(
                merged.contains(&entry(n, 0).id).unwrap(),
                n < 3000 && held(n),
                "{n}"
            );
        }
    }

    /// Each bucket reads back exactly the entries put in it, across several written
    /// runs (some without that bucket) and the part still in memory, or none.
    #[test]
    fn buckets_read_back_what_was_put_in_each() {
        let dir = tempfile::tempdir().unwrap();
        const BUCKETS: usize = 5;
        let check = |total: u32| {
            let mut buckets = Buckets::new(dir.path(), BUCKETS, 64).unwrap();
            let mut put: Vec<Vec<u32>> = vec![Vec::new(); BUCKETS];
            // Bucket 4 only in the last 100 entries, bucket 0 never: runs without them.
            for n in 0..total {
                let bucket = match n {
                    _ if n + 100 >= total => 4,
                    _ => 1 + (n as usize * 7) % 3,
                };
                buckets.push(bucket, entry(n, n)).unwrap();
                put[bucket].push(n);
            }
            for (bucket, expected) in put.iter().enumerate().rev() {
                let mut back = Vec::new();
                buckets
                    .read(bucket, |e| {
                        assert_eq!(encode(&e), encode(&entry(e.seq, e.seq)));
                        back.push(e.seq)
                    })
                    .unwrap();
                back.sort_unstable();
                assert_eq!(&back, expected, "{total} entries, bucket {bucket}");
            }
        };
        // A last run in memory, and every run written (a multiple of the run length).
        check(1000);
        check(1024);
        check(0);
    }
}
