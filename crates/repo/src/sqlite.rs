//! Live SQLite databases are read through SQLite itself, never by copying the file
//! under a writer: every page comes from `sqlite_dbpage` within one read
//! transaction, and runs of them become chunks.

use crate::error::{RepoError, Result};
use backlock_core::chunker::{database_chunk, sqlite_page_size, ChunkSource};
use rusqlite::{Connection, OpenFlags};
use std::{
    io::{self, Read},
    path::{Path, PathBuf},
    time::Duration,
};

/// SQLite's page size if the file at `path` starts with a SQLite header.
pub(crate) fn sniff(file: &mut std::fs::File) -> std::io::Result<Option<usize>> {
    let mut header = [0u8; 100];
    let mut filled = 0;
    while filled < header.len() {
        match file.read(&mut header[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(sqlite_page_size(&header[..filled]))
}

/// Files SQLite keeps next to a database while it is open; the captured copy already
/// contains what they hold.
pub(crate) fn is_sidecar(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    ["-wal", "-shm", "-journal"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .map(|base| path.with_file_name(base))
}

/// How long a backup waits for a writer that holds the database locked (a
/// rollback-journal database mid-commit) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `read` over the pages of the live database at `path`, in page order, as one
/// consistent state even while an app keeps writing: a single `SELECT` over
/// `sqlite_dbpage` is a single read transaction, which sees committed pages
/// (write-ahead log included) and nothing after. Unlike a copy through the online
/// backup API, nothing is written to a temporary file: the pages stream straight
/// into the backup, and the restored file is the database's own bytes.
pub(crate) fn with_pages<T>(
    path: &Path,
    read: impl FnOnce(&mut dyn ChunkSource) -> T,
) -> Result<T> {
    let err = |e: rusqlite::Error| RepoError::Sqlite {
        path: path.to_path_buf(),
        busy: matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        ),
        detail: e.to_string(),
    };
    // Read-write (never create) when we may: a WAL database needs its -shm and -wal
    // files while open, and only a read-write connection that closes last removes
    // them again, leaving the app's folder as it was. Read-only otherwise.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .or_else(|_| {
        Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
    })
    .map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    let mut stmt = conn
        .prepare("SELECT pgno, data FROM sqlite_dbpage")
        .map_err(err)?;
    let rows = stmt.query([]).map_err(err)?;
    let mut pages = LivePages {
        rows,
        next_pgno: 1,
        page: 0,
        failed: None,
    };
    let out = read(&mut pages);
    match pages.failed {
        Some((detail, busy)) => Err(RepoError::Sqlite {
            path: path.to_path_buf(),
            detail,
            busy,
        }),
        None => Ok(out),
    }
}

/// The rows of `SELECT pgno, data FROM sqlite_dbpage` as chunks.
struct LivePages<'s> {
    rows: rusqlite::Rows<'s>,
    next_pgno: i64,
    /// The size of the pages read so far (SQLite's, from the first page).
    page: usize,
    /// What went wrong, and whether it was a lock, reported by [`with_pages`] rather
    /// than as an I/O error.
    failed: Option<(String, bool)>,
}

impl LivePages<'_> {
    fn next_page(&mut self, out: &mut Vec<u8>) -> std::result::Result<bool, (String, bool)> {
        let plain = |e: String| (e, false);
        let Some(row) = self.rows.next().map_err(|e| {
            let busy = matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            );
            (e.to_string(), busy)
        })?
        else {
            return Ok(false);
        };
        let pgno: i64 = row.get(0).map_err(|e| plain(e.to_string()))?;
        // Pages in order, none missing: delta bases and restore rely on it.
        if pgno != self.next_pgno {
            return Err(plain(format!(
                "page {pgno} came where page {} was due",
                self.next_pgno
            )));
        }
        self.next_pgno += 1;
        let data = row
            .get_ref(1)
            .and_then(|v| v.as_blob().map_err(Into::into))
            .map_err(|e| plain(e.to_string()))?;
        if self.page == 0 {
            self.page = data.len();
        } else if data.len() != self.page {
            return Err(plain(format!(
                "page {pgno} has {} bytes where pages have {}",
                data.len(),
                self.page
            )));
        }
        out.extend_from_slice(data);
        Ok(true)
    }
}

impl ChunkSource for LivePages<'_> {
    /// The next run of pages ([`database_chunk`] bytes, fewer at the end).
    fn next_into(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        out.clear();
        loop {
            match self.next_page(out) {
                Ok(true) if out.len() < database_chunk(self.page) => continue,
                Ok(_) => return Ok(!out.is_empty()),
                Err(failure) => {
                    let e = io::Error::other(failure.0.clone());
                    self.failed = Some(failure);
                    return Err(e);
                }
            }
        }
    }
}
