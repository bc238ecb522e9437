//! The backup's walk: the sources in depth-first pre-order, one directory listed at
//! a time, each entry with its node in the parent snapshot. Only the directories open
//! along the current path are held (their listings, and the parent's tree of each), so
//! memory is bounded by the widest directory, not by the number of files.

use crate::{
    error::{RepoError, Result},
    exclude::{absolute, Excludes},
    sqlite,
    trees::TreeReader,
};
use backlock_core::{
    format::{Node, NodeKind, Skipped},
    ids::ChunkId,
    tree::{EntryKind, TreeEntry},
};
use std::{
    collections::{HashMap, HashSet},
    fs::{self, File},
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

/// One entry found by the walk.
pub(crate) struct Entry {
    pub(crate) fs_path: PathBuf,
    /// Its path in the snapshot.
    pub(crate) rel: Vec<u8>,
    pub(crate) meta: fs::Metadata,
    /// A file: its node in the parent snapshot, if it was a file there.
    pub(crate) old: Option<Node>,
    /// A sidecar (`-wal`, `-journal`) of a database read through SQLite, which
    /// captures what it holds: not stored.
    pub(crate) sidecar: bool,
    /// A directory: its tree in the parent snapshot.
    old_dir: Option<Vec<ChunkId>>,
    /// The device of the source it is under (`--one-file-system`).
    source_dev: u64,
    /// The parent snapshot has an entry of this path (of any kind).
    in_parent: bool,
    /// Standard input, stored as a regular file of the content read to its end
    /// (`backup --stdin`).
    pub(crate) stream: bool,
}

impl Entry {
    /// True when the parent snapshot has an entry of this path.
    pub(crate) fn in_parent(&self) -> bool {
        self.in_parent
    }
}

/// What the parent snapshot holds, read as the walk needs it.
pub(crate) enum Parent<'a> {
    None,
    /// A version-3 snapshot: its trees, read directory by directory. `name` names it
    /// in errors.
    Trees {
        reader: TreeReader<'a>,
        root: Vec<ChunkId>,
        name: String,
    },
    /// An earlier version's: its files' nodes by path (such a snapshot held them all
    /// in one object anyway).
    Nodes(HashMap<Vec<u8>, Node>),
}

/// The sources, entry by entry (see the module's doc).
pub(crate) struct Walker<'a> {
    /// The directories being listed, innermost last: the entries not given out yet.
    open: Vec<std::vec::IntoIter<Entry>>,
    parent: Parent<'a>,
    /// Where entries that cannot be read are recorded; `None` (a verbatim copy,
    /// which must hold everything or nothing): they fail the walk.
    skipped: Option<Vec<Skipped>>,
    verbatim: bool,
    excludes: Excludes,
    /// Entries left out by `excludes`.
    pub(crate) excluded: u64,
    /// Set when the parent's trees could not be read.
    pub(crate) warning: Option<String>,
}

impl<'a> Walker<'a> {
    /// A walk of `paths`, each stored under its last name, leaving out what
    /// `excludes` says.
    pub(crate) fn new(
        paths: &[PathBuf],
        parent: Parent<'a>,
        verbatim: bool,
        excludes: Excludes,
    ) -> Result<Self> {
        let mut walker = Walker {
            open: Vec::new(),
            parent,
            skipped: (!verbatim).then(Vec::new),
            verbatim,
            excludes,
            excluded: 0,
            warning: None,
        };
        let mut roots = HashSet::new();
        let mut top = Vec::new();
        for path in paths {
            let name = path
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.as_bytes().to_vec()))
                .ok_or_else(|| RepoError::Source {
                    path: path.clone(),
                    source: io::Error::new(io::ErrorKind::NotFound, "no such file or directory"),
                })?;
            if !roots.insert(name.clone()) {
                return Err(RepoError::Usage(format!(
                    "two paths end in the same name {:?}: back them up in separate snapshots or rename one",
                    String::from_utf8_lossy(&name)
                )));
            }
            top.push((absolute(path), name, None));
        }
        let root = match &walker.parent {
            Parent::Trees { root, .. } => root.clone(),
            _ => Vec::new(),
        };
        let old = walker.old_dir(&root)?;
        let listing = walker.stat_all(top, old)?;
        walker.open.push(listing.into_iter());
        Ok(walker)
    }

    /// A walk of one entry: standard input, stored as a file named `name`.
    pub(crate) fn stdin(name: &str, parent: Parent<'a>) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(RepoError::Usage(format!(
                "--stdin-filename {name:?} is not a file name: give a name without `/`, such as db.sql"
            )));
        }
        let fs_path = PathBuf::from("/dev/stdin");
        let meta = fs::metadata(&fs_path).map_err(|source| RepoError::Source {
            path: fs_path.clone(),
            source,
        })?;
        let entry = Entry {
            source_dev: meta.dev(),
            fs_path,
            rel: name.as_bytes().to_vec(),
            meta,
            old: None,
            sidecar: false,
            old_dir: None,
            in_parent: false,
            stream: true,
        };
        Ok(Walker {
            open: vec![vec![entry].into_iter()],
            parent,
            skipped: None,
            verbatim: false,
            excludes: Excludes::default(),
            excluded: 0,
            warning: None,
        })
    }

    /// The entries that could not be read so far.
    pub(crate) fn take_skipped(&mut self) -> Vec<Skipped> {
        self.skipped
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Up to `max` next entries, in walk order; none at the end.
    pub(crate) fn next_batch(&mut self, max: usize) -> Result<Vec<Entry>> {
        let mut batch = Vec::new();
        while batch.len() < max {
            match self.next_entry()? {
                Some(e) => batch.push(e),
                None => break,
            }
        }
        Ok(batch)
    }

    fn next_entry(&mut self) -> Result<Option<Entry>> {
        loop {
            let Some(listing) = self.open.last_mut() else {
                return Ok(None);
            };
            let Some(mut entry) = listing.next() else {
                self.open.pop();
                continue;
            };
            if entry.meta.is_dir() {
                // A signal stops the walk between directories.
                crate::interrupt::check()?;
                let old_dir = entry.old_dir.take();
                let listing = self.list(&entry, old_dir)?;
                self.open.push(listing.into_iter());
            }
            return Ok(Some(entry));
        }
    }

    /// The entries of directory `dir`, sorted by name; `old_dir` is its tree in the
    /// parent. A directory that cannot be listed is recorded as skipped (and stored
    /// empty).
    fn list(&mut self, dir: &Entry, old_dir: Option<Vec<ChunkId>>) -> Result<Vec<Entry>> {
        if self.excludes.stops_at(&dir.meta, dir.source_dev) {
            return Ok(Vec::new());
        }
        let listed: io::Result<Vec<_>> =
            fs::read_dir(&dir.fs_path).and_then(|d| d.map(|e| e.map(|e| e.file_name())).collect());
        let mut names = match listed {
            Ok(names) => names,
            Err(e) => {
                self.skip(&dir.fs_path, &dir.rel, e)?;
                return Ok(Vec::new());
            }
        };
        names.sort();
        let old = match old_dir {
            Some(parts) => self.old_dir(&parts)?,
            None => HashMap::new(),
        };
        let children = names
            .into_iter()
            .map(|name| {
                let mut rel = dir.rel.clone();
                rel.push(b'/');
                rel.extend_from_slice(name.as_bytes());
                (dir.fs_path.join(&name), rel, Some(dir.source_dev))
            })
            .collect();
        self.stat_all(children, old)
    }

    /// The entries of one directory's `(path, rel, source device)`, in that order
    /// (a source is its own: no device given). `old` maps the names in the parent's
    /// tree of that directory to their entries.
    fn stat_all(
        &mut self,
        children: Vec<(PathBuf, Vec<u8>, Option<u64>)>,
        mut old: HashMap<Vec<u8>, TreeEntry>,
    ) -> Result<Vec<Entry>> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::with_capacity(children.len());
        for (fs_path, rel, source_dev) in children {
            let meta = match fs::symlink_metadata(&fs_path) {
                Ok(meta) => meta,
                Err(e) => {
                    self.skip(&fs_path, &rel, e)?;
                    continue;
                }
            };
            if self.excludes.leaves_out(&fs_path, &meta) {
                self.excluded += 1;
                continue;
            }
            let name = rel.rsplit(|&b| b == b'/').next().unwrap_or(&rel);
            let mut in_parent = true;
            let (old_file, old_dir) = match old.remove(name) {
                Some(entry) => match (&entry.kind, meta.is_dir()) {
                    (EntryKind::Dir(_), true) => (None, Some(entry.into_node(Vec::new()).1)),
                    (EntryKind::File(_) | EntryKind::SqliteFile(_), false) if meta.is_file() => {
                        (Some(entry.into_node(rel.clone()).0), None)
                    }
                    _ => (None, None),
                },
                None => match &mut self.parent {
                    Parent::Nodes(nodes) if meta.is_file() => {
                        let node = nodes.remove(&rel);
                        in_parent = node.is_some();
                        (node, None)
                    }
                    _ => {
                        in_parent = false;
                        (None, None)
                    }
                },
            };
            let source_dev = source_dev.unwrap_or(meta.dev());
            out.push(Entry {
                fs_path,
                rel,
                meta,
                old: old_file,
                sidecar: false,
                old_dir,
                source_dev,
                in_parent,
                stream: false,
            });
        }
        if !self.verbatim {
            mark_sidecars(&mut out);
        }
        Ok(out)
    }

    /// The parent's entries of the directory whose tree is `parts`, by name. A tree
    /// that cannot be read costs time, not data: the parent is set aside and every
    /// file from here on is read again.
    fn old_dir(&mut self, parts: &[ChunkId]) -> Result<HashMap<Vec<u8>, TreeEntry>> {
        let Parent::Trees { reader, name, .. } = &mut self.parent else {
            return Ok(HashMap::new());
        };
        match reader.read_dir(parts, name) {
            Ok(tree) => Ok(tree
                .entries
                .into_iter()
                .map(|e| (e.name.clone(), e))
                .collect()),
            Err(
                e @ (RepoError::Damaged { .. }
                | RepoError::Store(backlock_store::StoreError::NotFound { .. })),
            ) => {
                self.warning = Some(format!(
                    "the previous snapshot's directories cannot be read ({e}): every file is read again"
                ));
                self.parent = Parent::None;
                Ok(HashMap::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Records `path` as left out, or fails a verbatim walk.
    fn skip(&mut self, path: &Path, rel: &[u8], e: io::Error) -> Result<()> {
        match &mut self.skipped {
            Some(list) => {
                list.push(skipped_entry(rel, &e));
                Ok(())
            }
            None => Err(RepoError::Source {
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }
}

/// Marks the sidecars of databases among `entries` (one directory's: a sidecar sits
/// next to its database).
fn mark_sidecars(entries: &mut [Entry]) {
    let mut databases: HashMap<PathBuf, bool> = HashMap::new();
    for e in entries.iter_mut().filter(|e| e.meta.is_file()) {
        if let Some(base) = sqlite::is_sidecar(&e.fs_path) {
            e.sidecar = *databases.entry(base).or_insert_with_key(|base| {
                File::open(base)
                    .and_then(|mut f| sqlite::sniff(&mut f))
                    .is_ok_and(|p| p.is_some())
            });
        }
    }
}

/// What a snapshot records of an entry it could not store.
pub(crate) fn skipped_entry(rel: &[u8], e: &io::Error) -> Skipped {
    let reason = match e.kind() {
        io::ErrorKind::NotFound => "vanished during the backup".to_owned(),
        _ => e.to_string(),
    };
    Skipped {
        path: rel.to_vec(),
        reason,
    }
}

/// Counts the files under `paths` and their bytes into `files` and `bytes`, for a
/// progress bar's totals, until done or `stop` is set. The walk itself holds one
/// directory at a time and so cannot know them up front.
pub(crate) fn count(
    paths: &[PathBuf],
    excludes: &Excludes,
    (files, bytes): (&AtomicU64, &AtomicU64),
    stop: &AtomicBool,
) {
    let mut pending: Vec<PathBuf> = paths.iter().map(|p| absolute(p)).collect();
    while let Some(path) = pending.pop() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if excludes.leaves_out(&path, &meta) {
            continue;
        }
        if meta.is_file() {
            files.fetch_add(1, Ordering::Relaxed);
            bytes.fetch_add(meta.len(), Ordering::Relaxed);
        } else if meta.is_dir() {
            if let Ok(dir) = fs::read_dir(&path) {
                pending.extend(dir.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        }
    }
}

/// The node of entry `e`, of kind `kind`, without chunks or captured metadata.
pub(crate) fn node_of(e: &Entry, kind: NodeKind) -> Node {
    use std::os::unix::fs::MetadataExt;
    let m = &e.meta;
    Node {
        path: e.rel.clone(),
        kind,
        mode: m.mode() & 0o7777,
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        size: if m.is_file() { m.len() } else { 0 },
        inode: m.ino(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        chunks: vec![],
        more: Default::default(),
    }
}
