//! Sealed files in the data directory, written so a crash leaves the old or the new
//! value, never a mix: temporary name, fsync, rename, then fsync of the directory.

use crate::seal::{SealError, Sealer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Suffix of files being written; leftovers are removed when the store opens.
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// Why a sealed file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    /// The filesystem refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The sealer refused.
    #[error("{path}: {source}")]
    Seal {
        /// The file.
        path: PathBuf,
        /// Why.
        source: SealError,
    },
    /// The plaintext did not decode.
    #[error("{path}: opened but does not decode: {source}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why.
        source: postcard::Error,
    },
    /// The value did not encode.
    #[error("cannot encode the value for {path}: {source}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// Why.
        source: postcard::Error,
    },
    /// The records' key tree in the file does not open or decode.
    #[error("{path}: {source}")]
    Tree {
        /// The file.
        path: PathBuf,
        /// Why.
        source: super::keytree::TreeError,
    },
}

impl FileError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Creates `dir` (and parents) readable by the owner only.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), FileError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| FileError::io(dir, e))
}

/// Makes renames and deletions in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FileError::io(dir, e))
}

/// Removes leftover temporary files in `dir` (a crash between write and rename).
pub(crate) fn remove_temp_files(dir: &Path) -> Result<(), FileError> {
    for entry in fs::read_dir(dir).map_err(|e| FileError::io(dir, e))? {
        let entry = entry.map_err(|e| FileError::io(dir, e))?;
        if entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
            fs::remove_file(entry.path()).map_err(|e| FileError::io(&entry.path(), e))?;
        }
    }
    Ok(())
}

/// Encodes, seals and writes `value` to `path` via a fsync'd temporary file and a rename.
/// The caller syncs the directory (once per batch).
pub(crate) fn write_sealed<T: Serialize + ?Sized>(
    sealer: &dyn Sealer,
    path: &Path,
    context: &[u8],
    value: &T,
) -> Result<(), FileError> {
    write_sealed_with(sealer, path, context, value, true)
}

/// [`write_sealed`] without the fsync of the file: the rename is still atomic, but after
/// a crash the file may be missing, or present and empty (a rename can reach the disk
/// before the data). For hints that are safe to lose.
pub(crate) fn write_sealed_unsynced<T: Serialize + ?Sized>(
    sealer: &dyn Sealer,
    path: &Path,
    context: &[u8],
    value: &T,
) -> Result<(), FileError> {
    write_sealed_with(sealer, path, context, value, false)
}

fn write_sealed_with<T: Serialize + ?Sized>(
    sealer: &dyn Sealer,
    path: &Path,
    context: &[u8],
    value: &T,
    sync_file: bool,
) -> Result<(), FileError> {
    let plaintext =
        Zeroizing::new(
            postcard::to_allocvec(value).map_err(|source| FileError::Encode {
                path: path.to_path_buf(),
                source,
            })?,
        );
    let sealed = sealer
        .seal(context, &plaintext)
        .map_err(|source| FileError::Seal {
            path: path.to_path_buf(),
            source,
        })?;
    replace(path, &sealed, sync_file)
}

/// Writes `bytes` under a temporary name (synced if `sync_file`) and renames it to `path`.
fn replace(path: &Path, bytes: &[u8], sync_file: bool) -> Result<(), FileError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        if sync_file {
            file.sync_all()?;
        }
        Ok(())
    })();
    written.map_err(|e| FileError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| FileError::io(path, e))
}

/// [`write_sealed`] followed by a sync of the file's directory: durable on return.
pub(crate) fn write_sealed_durably<T: Serialize + ?Sized>(
    sealer: &dyn Sealer,
    path: &Path,
    context: &[u8],
    value: &T,
) -> Result<(), FileError> {
    write_sealed(sealer, path, context, value)?;
    sync_dir(parent(path))
}

/// Reads, opens and decodes `path`; `None` if the file does not exist.
pub(crate) fn read_sealed<T: DeserializeOwned>(
    sealer: &dyn Sealer,
    path: &Path,
    context: &[u8],
) -> Result<Option<T>, FileError> {
    let sealed = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FileError::io(path, e)),
    };
    let plaintext = sealer
        .open(context, &sealed)
        .map_err(|source| FileError::Seal {
            path: path.to_path_buf(),
            source,
        })?;
    postcard::from_bytes(&plaintext)
        .map(Some)
        .map_err(|source| FileError::Decode {
            path: path.to_path_buf(),
            source,
        })
}

/// Deletes `path`; a file already gone is fine.
pub(crate) fn remove_if_present(path: &Path) -> Result<(), FileError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(FileError::io(path, e)),
        _ => Ok(()),
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
