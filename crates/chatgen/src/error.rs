//! Errors of generating a chat folder or simulating a day on it.

use std::path::{Path, PathBuf};

/// Why generating or changing a sample chat folder failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChatGenError {
    /// [`crate::generate`] only writes into a missing or empty folder, so it never mixes
    /// with (or overwrites) real data.
    #[error("{} is not empty: generate into a new or empty folder", dir.display())]
    DirNotEmpty {
        /// The folder given.
        dir: PathBuf,
    },
    /// The folder holds no message store to simulate a day on.
    #[error("{} has no {}: run generate on it first", dir.display(), crate::DB_FILE)]
    NoDatabase {
        /// The folder given.
        dir: PathBuf,
    },
    /// The sizes asked for cannot be produced.
    #[error("invalid spec: {reason}")]
    InvalidSpec {
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// Reading or writing a file failed (disk full, permissions, missing folder).
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// SQLite refused an operation; the database may not be one this crate wrote.
    #[error("SQLite failed to {action}: {source}")]
    Sqlite {
        /// What was being done.
        action: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A bug in this crate (an invariant did not hold).
    #[error("internal error: {detail}")]
    Internal {
        /// What went wrong.
        detail: String,
    },
}

/// Wraps an I/O error with the path and what was being done.
pub(crate) fn io_err(path: &Path, action: &'static str, source: std::io::Error) -> ChatGenError {
    ChatGenError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Adds context to a SQLite result.
pub(crate) trait SqlContext<T> {
    /// Names what was being done when SQLite failed.
    fn ctx(self, action: &'static str) -> Result<T, ChatGenError>;
}

impl<T> SqlContext<T> for Result<T, rusqlite::Error> {
    fn ctx(self, action: &'static str) -> Result<T, ChatGenError> {
        self.map_err(|source| ChatGenError::Sqlite { action, source })
    }
}
