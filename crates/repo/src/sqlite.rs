//! Live SQLite databases are captured with SQLite's online backup API, never by
//! copying the file under a writer, then chunked one page per chunk.

use crate::error::{RepoError, Result};
use backlock_core::chunker::sqlite_page_size;
use rusqlite::{
    backup::{Backup, StepResult},
    Connection, OpenFlags,
};
use std::{
    io::Read,
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

/// Copies a consistent snapshot of the database at `path` into a temporary file.
pub(crate) fn capture(path: &Path, tmp_dir: &Path) -> Result<tempfile::NamedTempFile> {
    let err = |detail: String| RepoError::Sqlite {
        path: path.to_path_buf(),
        detail,
    };
    // Read-write (never create) when we may: a WAL database needs its -shm and -wal
    // files while open, and only a read-write connection that closes last removes
    // them again, leaving the app's folder as it was. Read-only otherwise.
    let src = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .or_else(|_| {
        Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
    })
    .map_err(|e| err(e.to_string()))?;
    src.busy_timeout(Duration::from_secs(30))
        .map_err(|e| err(e.to_string()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".backlock-capture-")
        .tempfile_in(tmp_dir)
        .map_err(|e| err(format!("temporary file in {}: {e}", tmp_dir.display())))?;
    let mut dst = Connection::open(tmp.path()).map_err(|e| err(e.to_string()))?;
    // The copy is read once and deleted: journaling or syncing it would only cost I/O.
    dst.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
        .map_err(|e| err(e.to_string()))?;
    {
        // One step copies every page under a single read transaction: the copy is one
        // consistent state even while the app keeps writing (WAL lets it).
        let backup = Backup::new(&src, &mut dst).map_err(|e| err(e.to_string()))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match backup.step(-1).map_err(|e| err(e.to_string()))? {
                StepResult::Done => break,
                StepResult::More => {}
                // A writer holds a lock (rollback-journal databases): wait, bounded.
                StepResult::Busy | StepResult::Locked if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    return Err(err(
                        "the database stayed locked by another writer for 60 s".into()
                    ))
                }
            }
        }
    }
    dst.close().map_err(|(_, e)| err(e.to_string()))?;
    Ok(tmp)
}
