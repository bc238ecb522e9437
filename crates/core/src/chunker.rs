//! Chunking (docs/FORMAT.md §Chunking).
//!
//! General files: FastCDC (v2020 cut rule, normalisation level 1) driven by a 256-entry
//! gear table derived from the key, so boundaries depend on the key and leak nothing
//! an outsider can compute. SQLite databases: one chunk per database page, because a
//! day of chatting dirties scattered pages and only those should be stored again.

use crate::kdf::RepoKeys;
use fastcdc::v2020::{cut_gear, select_masks, Normalization};
use serde::{Deserialize, Serialize};
use std::io::{self, Read};
use zeroize::Zeroize;

/// Chunk size bounds, fixed per repository in its config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// No chunk is shorter, except the last of a file.
    pub min: u32,
    /// Target average.
    pub avg: u32,
    /// No chunk is longer.
    pub max: u32,
}

impl ChunkerParams {
    /// 512 KiB / 1 MiB / 4 MiB: few, large chunks keep per-object overhead low on cloud
    /// stores (media rarely changes in place, so small chunks would buy nothing there),
    /// and a 4 MiB ceiling bounds the memory each chunk in flight can take.
    pub const DEFAULT: ChunkerParams = ChunkerParams {
        min: 512 * 1024,
        avg: 1024 * 1024,
        max: 4 * 1024 * 1024,
    };

    /// True when the bounds are ones the chunker accepts: powers of two, ordered, with
    /// the average inside fastcdc's mask table (a config is authenticated, but a
    /// decoder must never panic on it).
    pub fn is_valid(&self) -> bool {
        let p2 = |v: u32| v.is_power_of_two();
        p2(self.min)
            && p2(self.avg)
            && p2(self.max)
            && 64 <= self.min
            && self.min <= self.avg
            && self.avg <= 4 << 20
            && self.avg <= self.max
            && self.max <= 16 << 20
    }
}

/// A keyed content-defined chunker.
pub struct Chunker {
    params: ChunkerParams,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    masks: (u64, u64),
}

impl Drop for Chunker {
    fn drop(&mut self) {
        self.gear.zeroize();
        self.gear_ls.zeroize();
    }
}

impl Chunker {
    /// A chunker for the repository's key and parameters.
    pub fn new(keys: &RepoKeys, params: ChunkerParams) -> Self {
        let gear = Box::new(*keys.gear());
        let gear_ls = Box::new(gear.map(|g| g << 1));
        Chunker {
            params,
            gear,
            gear_ls,
            masks: select_masks(params.avg as usize, Normalization::Level1),
        }
    }

    /// Length of the first chunk of `data` (all of it when `data` is the tail).
    fn cut(&self, data: &[u8]) -> usize {
        let (s, l) = self.masks;
        let p = self.params;
        let (_, len) = cut_gear(
            data,
            p.min as usize,
            p.avg as usize,
            p.max as usize,
            s,
            l,
            s << 1,
            l << 1,
            &self.gear[..],
            &self.gear_ls[..],
        );
        len
    }

    /// Chunk lengths of an in-memory buffer (vectors and tests).
    pub fn chunk_lengths(&self, data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let len = self.cut(&data[pos..]);
            out.push(len);
            pos += len;
        }
        out
    }

    /// Streams `reader` as chunks, reading through a buffer of one maximum chunk.
    pub fn stream<R: Read>(&self, reader: R) -> ChunkStream<'_, R> {
        self.stream_with(reader, Vec::new())
    }

    /// [`stream`](Self::stream) reading through `buf` (cleared first), so one buffer
    /// serves many files; [`ChunkStream::into_buffer`] gives it back.
    pub fn stream_with<R: Read>(&self, reader: R, mut buf: Vec<u8>) -> ChunkStream<'_, R> {
        buf.clear();
        ChunkStream {
            chunker: self,
            reader,
            buf,
            start: 0,
            eof: false,
        }
    }
}

/// A source of chunks that copies each into a buffer the caller owns, so a pipeline
/// can recycle chunk buffers instead of allocating one per chunk.
pub trait ChunkSource {
    /// Replaces `out`'s contents with the next chunk; `false` at the end.
    fn next_into(&mut self, out: &mut Vec<u8>) -> io::Result<bool>;
}

/// Chunks of one file, produced by [`Chunker::stream`].
pub struct ChunkStream<'c, R> {
    chunker: &'c Chunker,
    reader: R,
    buf: Vec<u8>,
    start: usize,
    eof: bool,
}

impl<R: Read> ChunkStream<'_, R> {
    /// Makes at least `want` unread bytes available (fewer only at the end of the
    /// file), in a buffer that never holds more than one maximum chunk.
    fn fill(&mut self, want: usize) -> io::Result<()> {
        let limit = self.chunker.params.max as usize;
        if self.eof || self.buf.len() - self.start >= want {
            return Ok(());
        }
        if self.start + want > limit {
            // Moves fewer than `want` bytes, after at least `limit - want` were consumed.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        while self.buf.len() < limit {
            // Grows only as far as the file needs (small media stay small), doubling.
            if self.buf.len() == self.buf.capacity() {
                let more = self
                    .buf
                    .capacity()
                    .max(64 << 10)
                    .min(limit - self.buf.len());
                self.buf.reserve_exact(more);
            }
            // Bounded by the spare capacity, `read_to_end` appends without zeroing first
            // and never reallocates.
            let room = (self.buf.capacity().min(limit) - self.buf.len()) as u64;
            let got = (&mut self.reader).take(room).read_to_end(&mut self.buf)?;
            if (got as u64) < room {
                self.eof = true;
                break;
            }
        }
        Ok(())
    }
}

impl<R> ChunkStream<'_, R> {
    /// The read buffer, for the next [`Chunker::stream_with`].
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

impl<R: Read> ChunkSource for ChunkStream<'_, R> {
    fn next_into(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        out.clear();
        let max = self.chunker.params.max as usize;
        // Most chunks end within two averages: cut within what is buffered, and read
        // up to a whole maximum chunk only when no boundary shows there.
        let mut want = (2 * self.chunker.params.avg as usize).min(max);
        let len = loop {
            self.fill(want)?;
            let avail = self.buf.len() - self.start;
            if avail == 0 {
                return Ok(false);
            }
            let len = self.chunker.cut(&self.buf[self.start..]);
            // A cut before the end of the buffered bytes is where the whole file would
            // be cut: FastCDC takes the first position whose hash matches, and the
            // hash and mask at each position depend only on the bytes before it.
            if len < avail || avail >= max || self.eof {
                break len;
            }
            want = max;
        };
        // Exactly: a recycled buffer then grows only to the largest chunk it held.
        out.reserve_exact(len);
        out.extend_from_slice(&self.buf[self.start..self.start + len]);
        self.start += len;
        Ok(true)
    }
}

impl<R: Read> Iterator for ChunkStream<'_, R> {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut chunk = Vec::new();
        self.next_into(&mut chunk)
            .map(|more| more.then_some(chunk))
            .transpose()
    }
}

/// The first 16 bytes of every SQLite 3 database file.
pub const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// The page size of a SQLite database from its 100-byte header, if it is one.
pub fn sqlite_page_size(header: &[u8]) -> Option<usize> {
    if header.len() < 18 || &header[..16] != SQLITE_MAGIC {
        return None;
    }
    let raw = u16::from_be_bytes([header[16], header[17]]) as usize;
    let size = if raw == 1 { 65536 } else { raw };
    (size.is_power_of_two() && (512..=65536).contains(&size)).then_some(size)
}

/// A database is chunked in runs of whole pages of this many bytes (one page when
/// pages are larger): a day of chatting changes about one page in eight, and a run of
/// four 4 KiB pages is still small enough that most runs stay unchanged, while every
/// per-chunk cost of a backup (index entry, snapshot list entry, blob header, restore
/// plan) is paid a quarter as often. A changed run is stored as a delta of its previous
/// version, so its unchanged pages cost a few bytes.
pub const DATABASE_CHUNK: usize = 16 * 1024;

/// The chunk size for a database of `page`-byte pages: [`DATABASE_CHUNK`] or one page.
pub fn database_chunk(page: usize) -> usize {
    page.max(DATABASE_CHUNK)
}

/// Splits a reader into fixed-size chunks, the last possibly shorter: a database's
/// runs of whole pages ([`database_chunk`]).
pub struct PageChunks<R> {
    reader: R,
    page: usize,
    done: bool,
}

impl<R: Read> PageChunks<R> {
    /// Pages of `page` bytes.
    pub fn new(reader: R, page: usize) -> Self {
        PageChunks {
            reader,
            page,
            done: false,
        }
    }
}

impl<R: Read> ChunkSource for PageChunks<R> {
    fn next_into(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        out.clear();
        if self.done {
            return Ok(false);
        }
        // `read_to_end` retries interrupted reads and appends without zeroing first.
        let got = (&mut self.reader).take(self.page as u64).read_to_end(out);
        match got {
            Ok(n) if n == self.page => Ok(true),
            Ok(n) => {
                self.done = true;
                Ok(n > 0)
            }
            Err(e) => {
                self.done = true;
                Err(e)
            }
        }
    }
}

impl<R: Read> Iterator for PageChunks<R> {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut page = Vec::with_capacity(self.page);
        self.next_into(&mut page)
            .map(|more| more.then_some(page))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::BackupKey;
    use rand::{RngCore, SeedableRng};

    fn data(n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        rand::rngs::StdRng::seed_from_u64(1).fill_bytes(&mut v);
        v
    }

    const SMALL: ChunkerParams = ChunkerParams {
        min: 2048,
        avg: 8192,
        max: 65536,
    };

    #[test]
    fn stream_matches_slice_and_reassembles() {
        let keys = RepoKeys::derive(&BackupKey::from_bytes([3; 32]));
        let c = Chunker::new(&keys, SMALL);
        let d = data(1 << 20);
        let lens: Vec<usize> = c.stream(&d[..]).map(|r| r.unwrap().len()).collect();
        assert_eq!(lens, c.chunk_lengths(&d));
        assert_eq!(lens.iter().sum::<usize>(), d.len());
        assert!(lens.len() > 60 && lens.len() < 200, "{} chunks", lens.len());
    }

    #[test]
    fn recycled_buffers_leave_chunks_unchanged() {
        let keys = RepoKeys::derive(&BackupKey::from_bytes([3; 32]));
        let c = Chunker::new(&keys, SMALL);
        let (first, second) = (data(300_000), data(1 << 20));
        // The read buffer of one file, and a chunk buffer, still full of its bytes.
        let mut stream = c.stream_with(&first[..], Vec::new());
        let mut chunk = Vec::new();
        while stream.next_into(&mut chunk).unwrap() {}
        let mut stream = c.stream_with(&second[..], stream.into_buffer());
        let mut chunk = vec![0xAA; 5000];
        let mut got = Vec::new();
        while stream.next_into(&mut chunk).unwrap() {
            got.push(chunk.clone());
        }
        let mut pos = 0;
        let want: Vec<Vec<u8>> = c
            .chunk_lengths(&second)
            .into_iter()
            .map(|n| {
                pos += n;
                second[pos - n..pos].to_vec()
            })
            .collect();
        assert!(got == want, "chunks differ after recycling buffers");
    }

    #[test]
    fn the_read_buffer_holds_at_most_one_maximum_chunk() {
        let c = Chunker::new(&RepoKeys::derive(&BackupKey::from_bytes([3; 32])), SMALL);
        let max = SMALL.max as usize;
        let small = data(1000);
        let mut stream = c.stream(&small[..]);
        let mut chunk = Vec::new();
        while stream.next_into(&mut chunk).unwrap() {}
        assert!(
            stream.into_buffer().capacity() <= 64 << 10,
            "a small file stays small"
        );
        let large = data(40 * max + 123);
        let mut stream = c.stream(&large[..]);
        let mut total = 0;
        while stream.next_into(&mut chunk).unwrap() {
            total += chunk.len();
        }
        assert_eq!(total, large.len());
        assert!(stream.into_buffer().capacity() <= max);
    }

    /// A reader that returns at most `step` bytes per read, as pipes and networks do.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = out.len().min(self.step).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// The stream cuts where the whole file in memory is cut, whatever the reads
        /// return: cuts found within a partial buffer must be final. Runs of one byte
        /// force chunks of the maximum size; noise gives chunks around the average.
        #[test]
        fn streamed_cuts_are_the_cuts_of_the_whole_file(
            runs in proptest::collection::vec((0u8..3, 1usize..200_000), 1..12),
            step in 1usize..300_000,
            seed in 0u64..1000,
        ) {
            let c = Chunker::new(&RepoKeys::derive(&BackupKey::from_bytes([9; 32])), SMALL);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut d = Vec::new();
            for (kind, len) in runs {
                let at = d.len();
                d.resize(at + len, kind);
                if kind == 0 {
                    rng.fill_bytes(&mut d[at..]);
                }
            }
            let reader = Trickle { data: &d, step };
            let lens: Vec<usize> = c.stream(reader).map(|r| r.unwrap().len()).collect();
            proptest::prop_assert_eq!(lens, c.chunk_lengths(&d));
        }
    }

    #[test]
    fn boundaries_depend_on_key() {
        let d = data(1 << 20);
        let a = Chunker::new(&RepoKeys::derive(&BackupKey::from_bytes([3; 32])), SMALL);
        let b = Chunker::new(&RepoKeys::derive(&BackupKey::from_bytes([4; 32])), SMALL);
        assert_ne!(a.chunk_lengths(&d), b.chunk_lengths(&d));
    }

    #[test]
    fn insertion_only_disturbs_nearby_chunks() {
        let c = Chunker::new(&RepoKeys::derive(&BackupKey::from_bytes([3; 32])), SMALL);
        let d = data(1 << 20);
        let mut e = d.clone();
        e.splice(500_000..500_000, *b"inserted");
        let set = |v: &[u8]| -> std::collections::HashSet<Vec<u8>> {
            c.stream(v).map(|r| r.unwrap()).collect()
        };
        let (sd, se) = (set(&d), set(&e));
        assert!(sd.intersection(&se).count() + 3 >= sd.len());
    }

    #[test]
    fn sqlite_pages() {
        let mut h = SQLITE_MAGIC.to_vec();
        h.extend_from_slice(&4096u16.to_be_bytes());
        assert_eq!(sqlite_page_size(&h), Some(4096));
        h[16..18].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(sqlite_page_size(&h), Some(65536));
        h[16..18].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(sqlite_page_size(&h), None);
        let pages: Vec<usize> = PageChunks::new(&data(10_000)[..], 4096)
            .map(|p| p.unwrap().len())
            .collect();
        assert_eq!(pages, vec![4096, 4096, 1808]);
    }
}
