//! backlock-chatgen: a realistic sample chat-app data folder, and a day of chatting on it.
//!
//! [`generate`] writes a folder shaped like a messenger's:
//!
//! - `msgstore.db` ([`DB_FILE`]): a SQLite message store modelled on WhatsApp's (chats,
//!   messages with random key ids, per-recipient receipts, media rows, reactions, and the
//!   indexes that go with them), 4 KiB pages, WAL mode, fully checkpointed.
//! - `Media/WhatsApp Images|Voice Notes|Video|Documents/`: files named like the app names
//!   them (`IMG-20261121-WA0042.jpg`), a real format header followed by incompressible
//!   bytes, about a fifth of them forwarded byte-identical copies.
//!
//! [`simulate_day`] then does what a day of use does to that folder: thousands of new
//! messages and receipts, status updates scattered over the whole history, edits,
//! deletions and some new media, rewriting about 12% of the database's pages.
//!
//! Everything is deterministic for a seed, so benchmarks see the same bytes every run.
//!
//! ```no_run
//! use backlock_chatgen::{generate, simulate_day, ChatSpec};
//! let dir = std::path::Path::new("/tmp/chat-demo");
//! let made = generate(dir, &ChatSpec::demo())?;
//! let day = simulate_day(dir, 1)?;
//! println!("{} messages, then {} of {} pages changed", made.messages, day.db_pages_changed, day.db_pages);
//! # Ok::<(), backlock_chatgen::ChatGenError>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

mod build;
mod day;
mod db;
mod error;
mod media;
mod text;

pub use error::ChatGenError;
pub use media::civil as civil_from_days;

/// Name of the message store inside the data folder.
pub const DB_FILE: &str = "msgstore.db";

/// SQLite page size of the message store (the app's default).
pub const PAGE_SIZE: usize = 4096;

/// How big a folder to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatSpec {
    /// Seeds every random choice; the same spec gives the same bytes.
    pub seed: u64,
    /// Target size of `msgstore.db` (reached within a few percent; at least 256 KiB).
    pub db_bytes: u64,
    /// Total size of the media files, reached exactly (forwarded copies included).
    pub media_bytes: u64,
}

impl ChatSpec {
    /// The folder `backlock demo` uses: about 60 MB of database and 240 MB of media.
    pub fn demo() -> Self {
        Self {
            seed: 42,
            db_bytes: 60_000_000,
            media_bytes: 240_000_000,
        }
    }

    /// A folder of about `total_bytes`, 15% of it database (a typical phone's ratio).
    pub fn scaled(total_bytes: u64, seed: u64) -> Self {
        let db_bytes = total_bytes / 100 * 15 + total_bytes % 100 * 15 / 100;
        Self {
            seed,
            db_bytes,
            media_bytes: total_bytes - db_bytes,
        }
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GenSummary {
    /// Rows in the `message` table.
    pub messages: u64,
    /// Size of `msgstore.db`.
    pub db_bytes: u64,
    /// Media files written, forwarded copies included.
    pub media_files: u64,
    /// Their total size.
    pub media_bytes: u64,
    /// Media files that are byte-identical copies of another one (forwards).
    pub duplicate_media_files: u64,
}

/// What [`simulate_day`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DaySummary {
    /// Messages added.
    pub new_messages: u64,
    /// Existing rows updated or deleted (statuses, receipts, reactions, stars, edits,
    /// deletions).
    pub updated_rows: u64,
    /// Media files added (forwards of stored media included).
    pub new_media_files: u64,
    /// Their total size.
    pub new_media_bytes: u64,
    /// Pages of `msgstore.db` after the day.
    pub db_pages: u64,
    /// Of those, pages that differ from before the day (new pages included).
    pub db_pages_changed: u64,
}

/// Writes a new sample chat folder at `dir`, which must be missing or empty.
///
/// Fails with [`ChatGenError::DirNotEmpty`] rather than touch existing files.
pub fn generate(dir: &Path, spec: &ChatSpec) -> Result<GenSummary, ChatGenError> {
    build::generate(dir, spec)
}

/// Simulates one day of chatting on a folder made by [`generate`]: the day after the
/// newest stored message.
///
/// The same folder and `seed` give the same day; successive days may reuse a seed (the
/// store's state is mixed in). New activity scales with the stored message count, so about
/// 12% of the pages change whatever the size. The store is opened as the app opens it
/// (WAL) and checkpointed at the end, so `msgstore.db` alone holds the result.
pub fn simulate_day(dir: &Path, seed: u64) -> Result<DaySummary, ChatGenError> {
    day::simulate_day(dir, seed)
}

/// Counts the `page_size` pages of `b` that differ from the same page of `a`.
///
/// Returns `(changed, total pages of b)`. Pages past the end of `a` count as changed; a
/// short last page is compared as far as it goes.
pub fn pages_changed(a: &Path, b: &Path, page_size: usize) -> io::Result<(u64, u64)> {
    if page_size == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "page size must be positive",
        ));
    }
    let mut fa = io::BufReader::with_capacity(1 << 20, File::open(a)?);
    let mut fb = io::BufReader::with_capacity(1 << 20, File::open(b)?);
    let mut pa = vec![0u8; page_size];
    let mut pb = vec![0u8; page_size];
    let (mut changed, mut total) = (0u64, 0u64);
    loop {
        let nb = read_full(&mut fb, &mut pb)?;
        if nb == 0 {
            break;
        }
        let na = read_full(&mut fa, &mut pa)?;
        total += 1;
        if na != nb || pa[..na] != pb[..nb] {
            changed += 1;
        }
    }
    Ok((changed, total))
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
