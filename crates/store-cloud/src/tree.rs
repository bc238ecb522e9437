//! Plain files under a cloud location, outside the repository layout: what `migrate`
//! reads and then deletes when the unencrypted backup being moved off lives in a store
//! (docs/STORES.md §Migrating). Paths are relative to the location's prefix, with `/`
//! separators; the same layers (bounded requests, time-outs, retries) apply.

use crate::store::{block_on, CloudStore};
use backlock_store::StoreError;
use opendal::ErrorKind;

/// A file found under the location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeFile {
    /// Relative path, `/`-separated, never starting with `/`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// What changes when the object is rewritten: the ETag and modification time
    /// the store reports (empty when it reports neither).
    pub version: String,
}

/// Everything under a location: files, and the directories of stores that have them
/// (WebDAV, SFTP), deepest first.
#[derive(Clone, Debug, Default)]
pub struct TreeListing {
    /// Regular files, sorted by path.
    pub files: Vec<TreeFile>,
    /// Directories (ending in `/`), deepest first.
    pub dirs: Vec<String>,
}

/// Refuses paths that could leave the prefix.
fn checked(path: &str) -> Result<&str, StoreError> {
    let bad =
        path.is_empty() || path.starts_with('/') || path.split('/').any(|c| c == ".." || c == ".");
    if bad {
        return Err(StoreError::Io {
            what: path.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a relative path"),
        });
    }
    Ok(path)
}

fn version(m: &opendal::Metadata) -> String {
    let etag = m.etag().unwrap_or("");
    match m.last_modified() {
        Some(t) => format!("{etag}@{t}"),
        None => etag.to_string(),
    }
}

impl CloudStore {
    /// Lists every file and directory under the location.
    pub fn tree_list(&self) -> Result<TreeListing, StoreError> {
        let op = self.operator().clone();
        let (result, retries) = block_on(async move { op.list_with("").recursive(true).await });
        let entries = match result {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(self.error_on("listing", "", (e, retries))),
        };
        let mut out = TreeListing::default();
        for e in entries {
            let path = e.path().trim_start_matches('/').to_string();
            if path.is_empty() {
                continue;
            }
            if e.metadata().is_dir() {
                out.dirs.push(path);
            } else {
                out.files.push(TreeFile {
                    path,
                    size: e.metadata().content_length(),
                    version: version(e.metadata()),
                });
            }
        }
        out.files.sort_by(|a, b| a.path.cmp(&b.path));
        out.files.dedup_by(|a, b| a.path == b.path);
        out.dirs
            .sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
        out.dirs.dedup();
        Ok(out)
    }

    /// The file at `path` as it is now, or `None` if it is gone.
    pub fn tree_stat(&self, path: &str) -> Result<Option<TreeFile>, StoreError> {
        let owned = checked(path)?.to_string();
        let op = self.operator().clone();
        let (result, retries) = block_on(async move { op.stat(&owned).await });
        match result {
            Ok(m) => Ok(Some(TreeFile {
                path: path.to_string(),
                size: m.content_length(),
                version: version(&m),
            })),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error_on("file", path, (e, retries))),
        }
    }

    /// Reads `len` bytes of `path` at `offset` (fewer at its end).
    pub fn tree_read(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let (result, retries) = self.read_at(checked(path)?.to_string(), offset, len);
        match result {
            Ok(data) => Ok(data),
            Err(e) if e.kind() == ErrorKind::RangeNotSatisfied => Ok(Vec::new()),
            Err(e) => Err(self.error_on("file", path, (e, retries))),
        }
    }

    /// Deletes the file or (empty) directory at `path`; a missing one is not an error.
    pub fn tree_delete(&self, path: &str) -> Result<(), StoreError> {
        let owned = checked(path.trim_end_matches('/'))?.to_string()
            + if path.ends_with('/') { "/" } else { "" };
        let op = self.operator().clone();
        match block_on(async move { op.delete(&owned).await }) {
            (Ok(()), _) => Ok(()),
            (Err(e), _) if e.kind() == ErrorKind::NotFound => Ok(()),
            (Err(e), retries) => Err(self.error_on("file", path, (e, retries))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::checked;

    #[test]
    fn paths_cannot_leave_the_prefix() {
        for bad in ["", "/etc/passwd", "a/../../b", "./a", "a/./b"] {
            assert!(checked(bad).is_err(), "{bad:?}");
        }
        assert_eq!(checked("Media/IMG 1.jpg").unwrap(), "Media/IMG 1.jpg");
    }
}
