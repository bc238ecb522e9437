//! The Raft log on disk: append-only segment files of sealed records.
//!
//! Layout: `wal/<index of its first entry, 20 digits>` holds consecutive entries, each
//! framed as `len: u32 LE ‖ check: 8 bytes ‖ sealed entry`. The entry is sealed with
//! context `"backlock vault log" ‖ index (u64 BE)`, so a record copied to another place
//! does not open; `check` (BLAKE3 of `len ‖ sealed`, cut to 8 bytes, no key) only tells
//! a torn write from a record that does not open under this node key.
//!
//! Durability: a group of appends is one write and one `fdatasync` of the segment being
//! written (plus a sync of the directory when the segment is new). Files are never
//! flushed filesystem-wide, so other writers on the disk do not slow the vault down.
//!
//! Erasure: purging (after each snapshot) deletes every segment that holds only purged
//! entries, and copies the live tail of the segment holding the purge point into a new
//! segment before deleting the old one, so no purged entry, and no erased record in it,
//! stays on disk.
//!
//! Crash rules, applied on open:
//! - Only the last segment can end in a torn record (appends after its last flush were
//!   never acknowledged): it is cut back to its last whole record. A torn record in an
//!   earlier segment, or any record that does not open, is damage, and opening fails.
//! - A purge interrupted after its new segment was renamed into place leaves the old
//!   segment overlapping it: the old one is deleted. One interrupted earlier is redone.

use super::files::{self, FileError};
use super::types::Entry;
use crate::seal::Sealer;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

/// Seal context prefix of a log entry; the big-endian index follows.
pub(crate) const LOG_CONTEXT: &[u8] = b"backlock vault log";

/// A segment grows to about this size before the next one starts (small in unit tests,
/// so they roll over segments cheaply).
const SEGMENT_BYTES: u64 = if cfg!(test) { 64 << 10 } else { 8 << 20 };

/// No entry seals to more than this (a vault command is a few hundred bytes).
const MAX_RECORD: usize = 4 << 20;

/// Digits of a segment file name: every `u64` fits, and names sort like indexes.
const INDEX_DIGITS: usize = 20;

const LEN_BYTES: usize = 4;
const CHECK_BYTES: usize = 8;
const HEADER_BYTES: usize = LEN_BYTES + CHECK_BYTES;

/// The segment files of one log, written by one thread.
pub(crate) struct Wal {
    dir: PathBuf,
    sealer: Arc<dyn Sealer>,
    /// Segments in index order; appends go to the last, open in `tail`.
    segments: Vec<Segment>,
    tail: File,
    /// Bytes were written to `tail` since its last sync.
    unsynced: bool,
    /// A segment was created, renamed or deleted since the directory's last sync.
    dir_changed: bool,
}

/// One segment file: the index of its first entry and where each record starts.
struct Segment {
    first: u64,
    offsets: Vec<u64>,
    /// End of the last record: the file's length once synced.
    end: u64,
}

impl Segment {
    fn empty(first: u64) -> Self {
        Self {
            first,
            offsets: Vec::new(),
            end: 0,
        }
    }

    /// The index the next record appended here gets.
    fn next(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }

    /// Byte offset of `index`'s record (or the end, for the next index).
    fn offset(&self, index: u64) -> u64 {
        usize::try_from(index - self.first)
            .ok()
            .and_then(|i| self.offsets.get(i).copied())
            .unwrap_or(self.end)
    }
}

impl Wal {
    /// Opens (or creates) the log in `dir`, applies the crash rules, and returns it with
    /// every entry from `first_live` on (earlier ones are purged).
    pub(crate) fn open(
        dir: &Path,
        sealer: Arc<dyn Sealer>,
        first_live: u64,
    ) -> Result<(Self, Vec<Entry>), FileError> {
        files::create_private_dir(dir)?;
        files::remove_temp_files(dir)?;
        let mut firsts = list_segments(dir)?;
        let mut dir_changed = false;
        // The segment holding `first_live` is the last that starts at or before it;
        // earlier ones hold purged entries only, or copies of what it holds.
        if let Some(start) = firsts.iter().rposition(|&first| first <= first_live) {
            for first in firsts.drain(..start) {
                files::remove_if_present(&segment_path(dir, first))?;
                dir_changed = true;
            }
        }
        if let Some(&first) = firsts.first() {
            if first > first_live {
                return Err(damaged(
                    &segment_path(dir, first),
                    format!("the log is missing entries {first_live} to {}", first - 1),
                ));
            }
        }

        let mut segments: Vec<Segment> = Vec::new();
        let mut entries = Vec::new();
        let count = firsts.len();
        for (k, first) in firsts.into_iter().enumerate() {
            let path = segment_path(dir, first);
            if let Some(previous) = segments.last() {
                if previous.next() != first {
                    return Err(damaged(
                        &path,
                        format!(
                            "the log is missing entries {} to {}",
                            previous.next(),
                            first - 1
                        ),
                    ));
                }
            }
            let is_last = k + 1 == count;
            let (segment, live) = read_segment(&*sealer, &path, first, first_live, is_last)?;
            entries.extend(live);
            segments.push(segment);
        }
        if segments.is_empty() {
            create_segment(dir, first_live)?;
            segments.push(Segment::empty(first_live));
            dir_changed = true;
        }
        let tail = open_for_append(dir, segments.last().map_or(first_live, |s| s.first))?;
        let mut wal = Self {
            dir: dir.to_path_buf(),
            sealer,
            segments,
            tail,
            unsynced: false,
            dir_changed,
        };
        if wal.segments[0].first < first_live {
            // A purge did not finish: its entries must not stay on disk.
            wal.cut_purged(first_live)?;
        }
        wal.sync()?;
        Ok((wal, entries))
    }

    /// The index the next appended entry must have.
    pub(crate) fn next_index(&self) -> u64 {
        self.segments.last().map_or(0, Segment::next)
    }

    /// Seals and writes `entries` (which must follow the log) without syncing.
    pub(crate) fn append(&mut self, entries: &[Entry]) -> Result<(), FileError> {
        let mut frames = Vec::new();
        let mut offsets = Vec::with_capacity(entries.len());
        for entry in entries {
            let index = entry.log_id.index;
            let expected = self.next_index() + offsets.len() as u64;
            if index != expected {
                return Err(damaged(
                    &self.tail_path(),
                    format!("entry {index} appended where entry {expected} belongs"),
                ));
            }
            offsets.push(self.tail_segment().end + frames.len() as u64);
            self.frame(entry, &mut frames)?;
        }
        {
            #[cfg(test)]
            let _powered = super::power_cut::powered(&self.dir)
                .map_err(|e| FileError::io(&self.tail_path(), e))?;
            self.tail
                .write_all(&frames)
                .map_err(|e| FileError::io(&self.tail_path(), e))?;
        }
        self.unsynced = true;
        let segment = self.tail_segment_mut();
        segment.offsets.extend(offsets);
        segment.end += frames.len() as u64;
        if segment.end >= SEGMENT_BYTES {
            self.start_segment()?;
        }
        Ok(())
    }

    /// Makes every write so far durable.
    pub(crate) fn sync(&mut self) -> Result<(), FileError> {
        if self.unsynced {
            #[cfg(test)]
            let mut powered = super::power_cut::powered(&self.dir)
                .map_err(|e| FileError::io(&self.tail_path(), e))?;
            self.tail
                .sync_data()
                .map_err(|e| FileError::io(&self.tail_path(), e))?;
            self.unsynced = false;
            #[cfg(test)]
            powered.durable(&self.tail_path(), self.tail_segment().end);
        }
        if self.dir_changed {
            files::sync_dir(&self.dir)?;
            self.dir_changed = false;
        }
        Ok(())
    }

    /// Removes every entry from `from` on, durably. Newest first, so a crash midway
    /// never leaves a gap.
    pub(crate) fn truncate(&mut self, from: u64) -> Result<(), FileError> {
        while self.segments.len() > 1 && self.tail_segment().first >= from {
            let doomed = self.segments.pop().map_or(from, |s| s.first);
            files::remove_if_present(&segment_path(&self.dir, doomed))?;
            self.dir_changed = true;
            self.tail = open_for_append(&self.dir, self.tail_segment().first)?;
        }
        let segment = self.tail_segment_mut();
        let keep = usize::try_from(from.saturating_sub(segment.first))
            .unwrap_or(usize::MAX)
            .min(segment.offsets.len());
        let end = segment.offset(segment.first + keep as u64);
        segment.offsets.truncate(keep);
        segment.end = end;
        self.tail
            .set_len(end)
            .map_err(|e| FileError::io(&self.tail_path(), e))?;
        self.unsynced = true;
        self.sync()
    }

    /// Removes every entry before `first_live` from disk, durably (the caller recorded
    /// the purge point first).
    pub(crate) fn purge(&mut self, first_live: u64) -> Result<(), FileError> {
        self.sync()?;
        if self.tail_segment().next() <= first_live {
            // Everything written is purged: the next append starts a new segment.
            self.start_segment_at(first_live)?;
        }
        self.cut_purged(first_live)?;
        self.sync()
    }

    /// Deletes the segments before the one holding `first_live`, and rewrites that one
    /// without its purged head.
    fn cut_purged(&mut self, first_live: u64) -> Result<(), FileError> {
        let holder = self
            .segments
            .iter()
            .rposition(|s| s.first <= first_live)
            .unwrap_or(0);
        for segment in self.segments.drain(..holder) {
            files::remove_if_present(&segment_path(&self.dir, segment.first))?;
            self.dir_changed = true;
        }
        if self.segments[0].first < first_live {
            self.rewrite_head(first_live)?;
        }
        Ok(())
    }

    /// Copies the records of the first segment from `first_live` on into a new segment
    /// named after it (synced before the rename, so a crash leaves one complete copy),
    /// then deletes the old segment.
    fn rewrite_head(&mut self, first_live: u64) -> Result<(), FileError> {
        let old = &self.segments[0];
        let old_path = segment_path(&self.dir, old.first);
        let bytes = fs::read(&old_path).map_err(|e| FileError::io(&old_path, e))?;
        let start = old.offset(first_live);
        let live = bytes
            .get(to_usize(start)..to_usize(old.end))
            .ok_or_else(|| damaged(&old_path, "the segment is shorter than written".into()))?;
        let new_path = segment_path(&self.dir, first_live);
        let mut tmp = new_path.as_os_str().to_owned();
        tmp.push(files::TMP_SUFFIX);
        let tmp = PathBuf::from(tmp);
        (|| {
            let mut file = new_file(&tmp)?;
            file.write_all(live)?;
            file.sync_data()
        })()
        .map_err(|e| FileError::io(&tmp, e))?;
        fs::rename(&tmp, &new_path).map_err(|e| FileError::io(&new_path, e))?;
        files::sync_dir(&self.dir)?;
        files::remove_if_present(&old_path)?;
        self.dir_changed = true;

        let old = &mut self.segments[0];
        let skipped = to_usize(first_live - old.first).min(old.offsets.len());
        old.offsets = old.offsets[skipped..].iter().map(|o| o - start).collect();
        old.end -= start;
        old.first = first_live;
        if self.segments.len() == 1 {
            self.tail = open_for_append(&self.dir, first_live)?;
        }
        Ok(())
    }

    /// Syncs the tail segment and starts a new, empty one after it.
    fn start_segment(&mut self) -> Result<(), FileError> {
        let next = self.next_index();
        self.start_segment_at(next)
    }

    fn start_segment_at(&mut self, first: u64) -> Result<(), FileError> {
        // Earlier segments are synced before a later one exists: only the last
        // segment can end torn.
        self.sync()?;
        self.tail = create_segment(&self.dir, first)?;
        #[cfg(test)]
        super::power_cut::powered(&self.dir)
            .map_err(|e| FileError::io(&segment_path(&self.dir, first), e))?
            .durable(&segment_path(&self.dir, first), 0);
        self.segments.push(Segment::empty(first));
        self.dir_changed = true;
        Ok(())
    }

    fn frame(&self, entry: &Entry, out: &mut Vec<u8>) -> Result<(), FileError> {
        self.frame_at(entry, &self.tail_path(), out)
    }

    /// Seals `entry` and appends its frame to `out`; `path` names the segment in errors.
    fn frame_at(&self, entry: &Entry, path: &Path, out: &mut Vec<u8>) -> Result<(), FileError> {
        let index = entry.log_id.index;
        let path = path.to_path_buf();
        let plaintext =
            Zeroizing::new(
                postcard::to_allocvec(entry).map_err(|source| FileError::Encode {
                    path: path.clone(),
                    source,
                })?,
            );
        let sealed = self
            .sealer
            .seal(&log_context(index), &plaintext)
            .map_err(|source| FileError::Seal {
                path: path.clone(),
                source,
            })?;
        if sealed.len() > MAX_RECORD {
            return Err(damaged(
                &path,
                format!(
                    "entry {index} seals to {} bytes, over the limit",
                    sealed.len()
                ),
            ));
        }
        let len = u32::try_from(sealed.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes();
        out.extend_from_slice(&len);
        out.extend_from_slice(&check(&len, &sealed));
        out.extend_from_slice(&sealed);
        Ok(())
    }

    fn tail_segment(&self) -> &Segment {
        self.segments
            .last()
            .expect("the log always has a segment open")
    }

    fn tail_segment_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("the log always has a segment open")
    }

    fn tail_path(&self) -> PathBuf {
        segment_path(&self.dir, self.tail_segment().first)
    }

    /// Seals every record again under the sealer's current key: each segment is
    /// rewritten under a temporary name, synced and renamed over the old one, so a crash
    /// leaves every segment whole, under the old key or the new (both still open until
    /// the caller destroys the old one).
    pub(crate) fn reseal(&mut self) -> Result<(), FileError> {
        self.sync()?;
        for k in 0..self.segments.len() {
            let first = self.segments[k].first;
            let path = segment_path(&self.dir, first);
            let bytes = fs::read(&path).map_err(|e| FileError::io(&path, e))?;
            let mut frames = Vec::with_capacity(bytes.len());
            let mut offsets = Vec::with_capacity(self.segments[k].offsets.len());
            let mut at = 0;
            let mut index = first;
            while at < bytes.len() {
                let sealed = whole_record(&bytes[at..])
                    .ok_or_else(|| damaged(&path, format!("record {index} is torn")))?;
                let entry = open_record(&*self.sealer, &path, index, sealed)?;
                offsets.push(frames.len() as u64);
                self.frame_at(&entry, &path, &mut frames)?;
                at += HEADER_BYTES + sealed.len();
                index += 1;
            }
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(files::TMP_SUFFIX);
            let tmp = PathBuf::from(tmp);
            (|| {
                let mut file = new_file(&tmp)?;
                file.write_all(&frames)?;
                file.sync_data()
            })()
            .map_err(|e| FileError::io(&tmp, e))?;
            fs::rename(&tmp, &path).map_err(|e| FileError::io(&path, e))?;
            let segment = &mut self.segments[k];
            segment.offsets = offsets;
            segment.end = frames.len() as u64;
            if k + 1 == self.segments.len() {
                // Appends must go to the new file, not the unlinked old one.
                self.reopen_tail()?;
            }
        }
        files::sync_dir(&self.dir)
    }

    /// Opens the tail segment for appending again (after it was replaced by a rename).
    pub(crate) fn reopen_tail(&mut self) -> Result<(), FileError> {
        self.tail = open_for_append(&self.dir, self.tail_segment().first)?;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn segment_firsts(&self) -> Vec<u64> {
        self.segments.iter().map(|s| s.first).collect()
    }
}

/// Reads a segment: its records' offsets, and the entries from `first_live` on. In the
/// last segment a torn record ends the log and is cut off.
fn read_segment(
    sealer: &dyn Sealer,
    path: &Path,
    first: u64,
    first_live: u64,
    is_last: bool,
) -> Result<(Segment, Vec<Entry>), FileError> {
    let bytes = fs::read(path).map_err(|e| FileError::io(path, e))?;
    let mut segment = Segment::empty(first);
    let mut entries = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let index = segment.next();
        let Some(sealed) = whole_record(&bytes[at..]) else {
            if !is_last {
                return Err(damaged(path, format!("record {index} is torn")));
            }
            tracing::warn!(
                segment = %path.display(),
                index,
                "the vault log ends in a torn write (never acknowledged); cutting it off"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| FileError::io(path, e))?;
            file.set_len(at as u64)
                .and_then(|()| file.sync_data())
                .map_err(|e| FileError::io(path, e))?;
            break;
        };
        segment.offsets.push(at as u64);
        at += HEADER_BYTES + sealed.len();
        if index >= first_live {
            entries.push(open_record(sealer, path, index, sealed)?);
        }
    }
    segment.end = at as u64;
    Ok((segment, entries))
}

/// The sealed bytes of the record at the start of `bytes`, if it is whole and its check
/// matches.
fn whole_record(bytes: &[u8]) -> Option<&[u8]> {
    let len: [u8; LEN_BYTES] = bytes.get(..LEN_BYTES)?.try_into().ok()?;
    let sealed_len = usize::try_from(u32::from_le_bytes(len)).ok()?;
    if sealed_len > MAX_RECORD {
        return None;
    }
    let stored = bytes.get(LEN_BYTES..HEADER_BYTES)?;
    let sealed = bytes.get(HEADER_BYTES..HEADER_BYTES + sealed_len)?;
    (stored == check(&len, sealed)).then_some(sealed)
}

fn open_record(
    sealer: &dyn Sealer,
    path: &Path,
    index: u64,
    sealed: &[u8],
) -> Result<Entry, FileError> {
    let plaintext =
        crate::epoch::open_any(sealer, &log_context(index), sealed).map_err(|source| {
            FileError::Seal {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let entry: Entry = postcard::from_bytes(&plaintext).map_err(|source| FileError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    if entry.log_id.index != index {
        return Err(damaged(
            path,
            format!("record {index} holds entry {}", entry.log_id.index),
        ));
    }
    Ok(entry)
}

/// Unseals every record of a segment file and concatenates the plaintexts, for audits
/// of what a node keeps at rest. `None` if `name` is not a segment file name.
pub(crate) fn unseal_segment(
    sealer: &dyn Sealer,
    name: &str,
    bytes: &[u8],
) -> Option<Result<Vec<u8>, String>> {
    let mut index = parse_name(name)?;
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(sealed) = whole_record(&bytes[at..]) else {
            return Some(Err(format!("record {index} is torn")));
        };
        match crate::epoch::open_any(sealer, &log_context(index), sealed) {
            Ok(plain) => out.extend_from_slice(&plain),
            Err(e) => return Some(Err(format!("record {index}: {e}"))),
        }
        at += HEADER_BYTES + sealed.len();
        index += 1;
    }
    Some(Ok(out))
}

fn check(len: &[u8; LEN_BYTES], sealed: &[u8]) -> [u8; CHECK_BYTES] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(len);
    hasher.update(sealed);
    let mut out = [0; CHECK_BYTES];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..CHECK_BYTES]);
    out
}

pub(crate) fn log_context(index: u64) -> Vec<u8> {
    let mut context = LOG_CONTEXT.to_vec();
    context.extend_from_slice(&index.to_be_bytes());
    context
}

fn parse_name(name: &str) -> Option<u64> {
    (name.len() == INDEX_DIGITS && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:0width$}", width = INDEX_DIGITS))
}

/// The first indexes of the segments in `dir`, sorted. Any other file is an error: the
/// log directory belongs to the vault.
fn list_segments(dir: &Path) -> Result<Vec<u64>, FileError> {
    let mut firsts = Vec::new();
    for item in fs::read_dir(dir).map_err(|e| FileError::io(dir, e))? {
        let item = item.map_err(|e| FileError::io(dir, e))?;
        let first = item
            .file_name()
            .to_str()
            .and_then(parse_name)
            .ok_or_else(|| {
                damaged(
                    &item.path(),
                    "not a log segment; move it out of the vault's log directory".into(),
                )
            })?;
        firsts.push(first);
    }
    firsts.sort_unstable();
    Ok(firsts)
}

fn new_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn create_segment(dir: &Path, first: u64) -> Result<File, FileError> {
    let path = segment_path(dir, first);
    new_file(&path).map_err(|e| FileError::io(&path, e))
}

fn open_for_append(dir: &Path, first: u64) -> Result<File, FileError> {
    let path = segment_path(dir, first);
    OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| FileError::io(&path, e))
}

fn damaged(path: &Path, what: String) -> FileError {
    FileError::io(
        path,
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what}; restore this replica from another (see docs/OPERATIONS.md)"),
        ),
    )
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).expect("segment offsets fit in memory")
}
