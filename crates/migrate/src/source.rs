//! The unencrypted backup being moved off: a local directory or files under a store
//! location. Scanned into a [`Manifest`] before the backup and again before anything
//! is deleted; re-read (never from a copy) for the verification; deleted last.

use crate::MigrateError;
use backlock_store_cloud::{CloudStore, Location, ObjectStore, Settings};
use std::{
    fs,
    io::{self, Read, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Bytes per read when streaming a source file.
pub(crate) const BLOCK: usize = 1 << 20;

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink(PathBuf),
}

/// One entry of the source, with what changes when it is modified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Relative to the source root.
    pub rel: PathBuf,
    pub kind: Kind,
    pub size: u64,
    /// Permission bits (local sources; 0 for stores, which have none).
    pub mode: u32,
    /// Local: mtime, ctime and inode; store: ETag and modification time.
    pub version: String,
}

/// Every entry of a source, parents before children.
pub(crate) type Manifest = Vec<Entry>;

/// Where the unencrypted backup is.
pub enum Source {
    /// A directory on this machine (canonical path).
    Local(PathBuf),
    /// Files under a store location.
    Cloud(CloudStore),
}

impl Source {
    /// Opens `from`: a local path, or a store URL with credentials from `settings`.
    pub fn open(from: &str, settings: &Settings) -> Result<Source, MigrateError> {
        match Location::parse(from)? {
            Location::Local(path) => {
                // A missing folder is reported by the first scan, after the journal
                // says whether an earlier run already moved it.
                let root = path
                    .canonicalize()
                    .or_else(|_| std::path::absolute(&path))
                    .map_err(|_| MigrateError::SourceMissing {
                        location: path.display().to_string(),
                    })?;
                if root.exists() && !root.is_dir() {
                    return Err(MigrateError::NotAChatFolder {
                        location: root.display().to_string(),
                        reason: "it is a file, not a folder".into(),
                    });
                }
                Ok(Source::Local(root))
            }
            remote => {
                let options = backlock_store_cloud::Options::from_settings(settings)?;
                Ok(Source::Cloud(backlock_store_cloud::open_cloud(
                    &remote, settings, &options,
                )?))
            }
        }
    }

    /// Where it is, for messages (never with credentials).
    pub fn location(&self) -> String {
        match self {
            Source::Local(root) => root.display().to_string(),
            Source::Cloud(store) => store.location(),
        }
    }

    /// The name the source's top folder gets in the snapshot.
    pub(crate) fn name(&self) -> String {
        let loc = self.location();
        let tail = loc
            .rsplit('/')
            .find(|s| !s.is_empty() && !s.contains(':'))
            .unwrap_or("source");
        tail.to_string()
    }

    /// The name of the source's top folder in a restore of its snapshot.
    pub(crate) fn top_name(&self) -> std::ffi::OsString {
        match self {
            Source::Local(root) => root
                .file_name()
                .map_or_else(|| self.name().into(), |n| n.to_os_string()),
            Source::Cloud(_) => self.name().into(),
        }
    }

    /// How `rel` is shown to people: the location joined with the path.
    pub(crate) fn show(&self, rel: &Path) -> String {
        format!(
            "{}/{}",
            self.location().trim_end_matches('/'),
            rel.display()
        )
    }

    /// Lists every entry now.
    pub(crate) fn scan(&self) -> Result<Manifest, MigrateError> {
        match self {
            Source::Local(root) => {
                let mut out = Vec::new();
                scan_dir(root, Path::new(""), &mut out)?;
                Ok(out)
            }
            Source::Cloud(store) => Ok(store
                .tree_list()?
                .files
                .into_iter()
                .map(|f| Entry {
                    rel: PathBuf::from(f.path),
                    kind: Kind::File,
                    size: f.size,
                    mode: 0,
                    version: f.version,
                })
                .collect()),
        }
    }

    /// The entry at `rel` as it is now (`None` once it is gone).
    pub(crate) fn stat(&self, rel: &Path) -> Result<Option<Entry>, MigrateError> {
        match self {
            Source::Local(root) => match fs::symlink_metadata(root.join(rel)) {
                Ok(meta) => local_entry(root, rel, &meta).map(Some),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(read_error(root.join(rel), e)),
            },
            Source::Cloud(store) => Ok(store.tree_stat(&rel_str(rel))?.map(|f| Entry {
                rel: rel.to_path_buf(),
                kind: Kind::File,
                size: f.size,
                mode: 0,
                version: f.version,
            })),
        }
    }

    /// The content of file `e`, read from the source itself in blocks of at most
    /// [`BLOCK`] bytes (a local file to its end, a store object to its listed size).
    pub(crate) fn blocks<'a>(&'a self, e: &'a Entry) -> Result<Blocks<'a>, MigrateError> {
        let file = match self {
            Source::Local(root) => {
                let path = root.join(&e.rel);
                Some(fs::File::open(&path).map_err(|err| read_error(path, err))?)
            }
            Source::Cloud(_) => None,
        };
        Ok(Blocks {
            source: self,
            entry: e,
            file,
            offset: 0,
        })
    }

    /// Deletes the file or symlink at `rel`.
    pub(crate) fn delete_file(&self, rel: &Path) -> Result<(), MigrateError> {
        match self {
            Source::Local(root) => {
                let path = root.join(rel);
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        Err(MigrateError::Delete { path, source: e })
                    }
                    _ => Ok(()),
                }
            }
            Source::Cloud(store) => Ok(store.tree_delete(&rel_str(rel))?),
        }
    }

    /// Removes the directories left empty, deepest first, then the source folder
    /// itself; returns those removed. A directory that is not empty stays.
    pub(crate) fn delete_dirs(&self, manifest: &Manifest) -> Result<Vec<PathBuf>, MigrateError> {
        let mut removed = Vec::new();
        match self {
            Source::Local(root) => {
                let dirs = manifest.iter().rev().filter(|e| e.kind == Kind::Dir);
                for rel in dirs.map(|e| e.rel.as_path()).chain([Path::new("")]) {
                    if fs::remove_dir(root.join(rel)).is_ok() {
                        removed.push(rel.to_path_buf());
                    }
                }
            }
            Source::Cloud(store) => {
                for dir in store.tree_list()?.dirs {
                    if store.tree_delete(&dir).is_ok() {
                        removed.push(PathBuf::from(dir));
                    }
                }
            }
        }
        Ok(removed)
    }

    /// A local directory holding the source as files, for the backup engine: the
    /// source itself if it is local, else a copy downloaded into `stage`.
    pub(crate) fn staged(
        &self,
        manifest: &Manifest,
        stage: &Path,
    ) -> Result<PathBuf, MigrateError> {
        if let Source::Local(root) = self {
            return Ok(root.clone());
        }
        let top = stage.join(self.name());
        let write_error = |path: &Path, e| MigrateError::Work {
            path: path.to_path_buf(),
            source: e,
        };
        for e in manifest {
            let path = top.join(&e.rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|err| write_error(parent, err))?;
            }
            let mut out = fs::File::create(&path).map_err(|err| write_error(&path, err))?;
            for block in self.blocks(e)? {
                out.write_all(&block?)
                    .map_err(|err| write_error(&path, err))?;
            }
        }
        fs::create_dir_all(&top).map_err(|err| write_error(&top, err))?;
        Ok(top)
    }
}

fn rel_str(rel: &Path) -> String {
    rel.to_string_lossy().into_owned()
}

fn read_error(path: PathBuf, source: io::Error) -> MigrateError {
    MigrateError::SourceIo { path, source }
}

fn local_entry(root: &Path, rel: &Path, meta: &fs::Metadata) -> Result<Entry, MigrateError> {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        let path = root.join(rel);
        Kind::Symlink(fs::read_link(&path).map_err(|e| read_error(path, e))?)
    } else {
        return Err(MigrateError::NotAChatFolder {
            location: root.join(rel).display().to_string(),
            reason: "it is a socket, pipe or device, which backlock does not back up; move it out of the folder".into(),
        });
    };
    Ok(Entry {
        rel: rel.to_path_buf(),
        size: if ft.is_file() { meta.len() } else { 0 },
        kind,
        mode: meta.mode() & 0o7777,
        version: format!(
            "{}.{}/{}.{}/{}",
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec(),
            meta.ino()
        ),
    })
}

/// Walks `root/rel` in the backup's order: sorted names, parents before children.
pub(crate) fn scan_dir(root: &Path, rel: &Path, out: &mut Manifest) -> Result<(), MigrateError> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect())
        .map_err(|e: io::Error| read_error(dir.clone(), e))?;
    names.sort();
    for name in names {
        let child = rel.join(&name);
        let meta = fs::symlink_metadata(root.join(&child))
            .map_err(|e| read_error(root.join(&child), e))?;
        let entry = local_entry(root, &child, &meta)?;
        let is_dir = entry.kind == Kind::Dir;
        out.push(entry);
        if is_dir {
            scan_dir(root, &child, out)?;
        }
    }
    Ok(())
}

/// A source file's content, block by block.
pub(crate) struct Blocks<'a> {
    source: &'a Source,
    entry: &'a Entry,
    file: Option<fs::File>,
    offset: u64,
}

impl Iterator for Blocks<'_> {
    type Item = Result<Vec<u8>, MigrateError>;

    fn next(&mut self) -> Option<Self::Item> {
        let block = match (&mut self.file, self.source) {
            (Some(file), Source::Local(root)) => {
                read_up_to(file, BLOCK).map_err(|e| read_error(root.join(&self.entry.rel), e))
            }
            (_, Source::Cloud(store)) => {
                let left = self.entry.size.saturating_sub(self.offset);
                if left == 0 {
                    return None;
                }
                let path = rel_str(&self.entry.rel);
                store
                    .tree_read(&path, self.offset, left.min(BLOCK as u64))
                    .map_err(MigrateError::from)
            }
            (None, Source::Local(_)) => return None,
        };
        match block {
            Ok(b) if b.is_empty() => None,
            Ok(b) => {
                self.offset += b.len() as u64;
                Some(Ok(b))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// Reads up to `len` bytes, fewer only at the end of `r`.
pub(crate) fn read_up_to(r: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    r.take(len as u64).read_to_end(&mut buf)?;
    Ok(buf)
}
