//! The local cache of immutable repository objects (index objects, snapshots and the
//! packs of trees).
//!
//! A command against a cloud store would otherwise fetch every index object, one
//! request each, before doing anything. Objects of these kinds are never rewritten
//! under their random names, so a copy fetched (or written) once stays right. The cache
//! is never trusted: each copy is opened under the repository key like the store's,
//! and one that does not authenticate is deleted and fetched again. It only ever
//! answers for names the store listed or a live index set names, so it cannot bring
//! back an object the store no longer has, nor hide a rollback: which objects count
//! is decided by the store's listing and this device's state (`BACKLOCK_HOME`), which
//! the cache is not part of.
//!
//! Layout: `<root>/<repo_id>/<kind>/<name>`, each file the sealed object as stored.
//! Writes go to a temporary file renamed into place, so a reader sees all of a copy
//! or none; several processes may share a cache.

use backlock_core::envelope::ObjectKind;
use std::{
    collections::HashSet,
    fs,
    io::{self, Write},
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    time::SystemTime,
};

/// Size the cache is kept under unless told otherwise.
pub const DEFAULT_CACHE_BYTES: u64 = 2 << 30;

/// Where cached objects live and how much room they may take.
#[derive(Clone, Debug)]
pub struct ObjectCache {
    root: PathBuf,
    max_bytes: u64,
}

impl ObjectCache {
    /// A cache under `root` (`$XDG_CACHE_HOME/backlock`), trimmed to `max_bytes` by
    /// deleting the copies used longest ago.
    pub fn new(root: impl Into<PathBuf>, max_bytes: u64) -> Self {
        ObjectCache {
            root: root.into(),
            max_bytes,
        }
    }

    /// The part of the cache that belongs to repository `repo_id`.
    pub(crate) fn for_repo(&self, repo_id: &str) -> RepoCache {
        RepoCache {
            dir: self.root.join(repo_id),
            max_bytes: self.max_bytes,
        }
    }
}

/// One repository's cached objects. Every operation is best effort: a cache that
/// cannot be read or written costs requests, never a command.
#[derive(Debug)]
pub(crate) struct RepoCache {
    dir: PathBuf,
    max_bytes: u64,
}

/// The kinds cached: objects never rewritten under their name. Of packs, only those
/// of trees are cached (the tree reader's and writer's choice), never file data.
fn cached(kind: ObjectKind) -> bool {
    matches!(
        kind,
        ObjectKind::Index | ObjectKind::Snapshot | ObjectKind::Pack
    )
}

/// Object names are hex; anything else is not a name this cache keeps (and must never
/// become a path).
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

impl RepoCache {
    /// This repository's directory in the cache.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn kind_dir(&self, kind: ObjectKind) -> PathBuf {
        self.dir.join(kind.as_str())
    }

    fn path(&self, kind: ObjectKind, name: &str) -> Option<PathBuf> {
        (cached(kind) && valid_name(name)).then(|| self.kind_dir(kind).join(name))
    }

    /// The cached copy of `kind`/`name`, not yet authenticated: the caller opens it
    /// and calls [`forget`](Self::forget) if it does not.
    pub(crate) fn read(&self, kind: ObjectKind, name: &str) -> Option<Vec<u8>> {
        let path = self.path(kind, name)?;
        let bytes = fs::read(&path).ok()?;
        // Marks it used, for the trim. Only a hint: a read-only cache still serves.
        if let Ok(f) = fs::File::options().write(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(bytes)
    }

    /// The cached copy of `kind`/`name` opened for ranged reads, not yet
    /// authenticated: each range read is, as it is opened.
    pub(crate) fn open(&self, kind: ObjectKind, name: &str) -> Option<fs::File> {
        let path = self.path(kind, name)?;
        let file = fs::File::open(&path).ok()?;
        if let Ok(f) = fs::File::options().write(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(file)
    }

    /// Keeps `sealed`, an object that authenticated, as the copy of `kind`/`name`.
    pub(crate) fn write(&self, kind: ObjectKind, name: &str, sealed: &[u8]) {
        let Some(path) = self.path(kind, name) else {
            return;
        };
        if let Err(e) = write_atomically(&path, sealed) {
            tracing::debug!(path = %path.display(), error = %e, "cache write failed");
        }
    }

    /// Drops the copy of `kind`/`name`: it did not authenticate.
    pub(crate) fn forget(&self, kind: ObjectKind, name: &str) {
        if let Some(path) = self.path(kind, name) {
            tracing::warn!(path = %path.display(), "cached object does not authenticate: fetching it again");
            let _ = fs::remove_file(path);
        }
    }

    /// Drops the copies of `kind` whose names are not in `live` (a prune or forget
    /// deleted them from the store).
    pub(crate) fn retain(&self, kind: ObjectKind, live: &HashSet<&str>) {
        for (path, _, _) in entries(&self.kind_dir(kind)) {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !live.contains(name) {
                let _ = fs::remove_file(path);
            }
        }
    }

    /// Deletes the copies used longest ago until the cache is within its size.
    pub(crate) fn trim(&self) {
        let mut all: Vec<(PathBuf, u64, SystemTime)> =
            [ObjectKind::Index, ObjectKind::Snapshot, ObjectKind::Pack]
                .into_iter()
                .flat_map(|k| entries(&self.kind_dir(k)))
                .collect();
        let mut total: u64 = all.iter().map(|(_, size, _)| size).sum();
        if total <= self.max_bytes {
            return;
        }
        all.sort_by_key(|(_, _, used)| *used);
        for (path, size, _) in all {
            if total <= self.max_bytes {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total -= size;
            }
        }
    }
}

/// The files in `dir` with their sizes and last use; temporary files left by a
/// killed writer are removed once they are an hour old.
fn entries(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let Ok(listing) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in listing.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let path = entry.path();
        let is_temp = entry.file_name().to_string_lossy().starts_with(".tmp");
        if is_temp {
            let old = used.elapsed().is_ok_and(|age| age.as_secs() > 3600);
            if old {
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        if meta.is_file() {
            out.push((path, meta.len(), used));
        }
    }
    out
}

/// Writes `data` to `path` through a temporary file in the same directory, so that
/// the name holds all of it or nothing (no fsync: a copy lost in a crash is fetched
/// again, and one cut short does not authenticate).
fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().expect("cache paths have a directory");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp").tempfile_in(dir)?;
    tmp.write_all(data)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_it_was_given_and_forgets_on_request() {
        let root = tempfile::tempdir().unwrap();
        let cache = ObjectCache::new(root.path(), 1 << 20).for_repo("ab");
        assert_eq!(cache.read(ObjectKind::Index, "00ff"), None);
        cache.write(ObjectKind::Index, "00ff", b"sealed");
        assert_eq!(cache.read(ObjectKind::Index, "00ff").unwrap(), b"sealed");
        // Another kind, another repository: apart.
        assert_eq!(cache.read(ObjectKind::Snapshot, "00ff"), None);
        let other = ObjectCache::new(root.path(), 1 << 20).for_repo("cd");
        assert_eq!(other.read(ObjectKind::Index, "00ff"), None);
        cache.forget(ObjectKind::Index, "00ff");
        assert_eq!(cache.read(ObjectKind::Index, "00ff"), None);
    }

    #[test]
    fn names_that_are_not_object_names_and_mutable_kinds_are_never_cached() {
        let root = tempfile::tempdir().unwrap();
        let cache = ObjectCache::new(root.path(), 1 << 20).for_repo("ab");
        for name in ["../x", "", "a/b", "config"] {
            cache.write(ObjectKind::Index, name, b"x");
            assert_eq!(cache.read(ObjectKind::Index, name), None, "{name:?}");
        }
        cache.write(ObjectKind::Lock, "00", b"x");
        assert_eq!(cache.read(ObjectKind::Lock, "00"), None);
        cache.write(ObjectKind::Config, "00", b"x");
        assert_eq!(cache.read(ObjectKind::Config, "00"), None);
        assert!(!root.path().join("x").exists());
    }

    #[test]
    fn a_trim_deletes_the_copies_used_longest_ago_until_it_fits() {
        let root = tempfile::tempdir().unwrap();
        let cache = ObjectCache::new(root.path(), 2500).for_repo("ab");
        let names = ["01", "02", "03", "04"];
        for (age, name) in names.iter().enumerate() {
            cache.write(ObjectKind::Index, name, &[0; 1000]);
            let path = cache.path(ObjectKind::Index, name).unwrap();
            let used = SystemTime::now() - std::time::Duration::from_secs(100 - age as u64);
            fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(used)
                .unwrap();
        }
        // Reading "01" makes it the most recently used.
        cache.read(ObjectKind::Index, "01").unwrap();
        cache.trim();
        let kept: Vec<_> = names
            .iter()
            .filter(|n| cache.path(ObjectKind::Index, n).unwrap().exists())
            .collect();
        assert_eq!(kept, [&"01", &"04"]);
        cache.retain(ObjectKind::Index, &HashSet::from(["04"]));
        assert_eq!(cache.read(ObjectKind::Index, "01"), None);
        assert!(cache.read(ObjectKind::Index, "04").is_some());
    }
}
