//! Looking into snapshots without restoring them: `ls`, `find`, `diff` and `dump`.
//!
//! Each reads a snapshot's trees a directory at a time, so memory holds the
//! directories open along one path, never the whole snapshot. A snapshot of an
//! earlier version (every node in one object) is first built into trees in memory, as
//! its object was in memory anyway. `diff` goes into no directory whose trees are the
//! same in both snapshots: its cost grows with what changed.

use crate::{
    bases::BaseReader,
    error::{RepoError, Result},
    trees::{TreeFailure, TreeReader},
    Indexed, Repository, SnapshotRef,
};
use backlock_core::{
    format::Snapshot,
    ids::ChunkId,
    tree::{EntryKind, Tree, TreeBuilder, TreeEntry},
};
use serde::Serialize;
use std::{
    collections::{HashMap, HashSet},
    io::{self, Read, Write},
    os::unix::ffi::OsStrExt,
};

/// An entry of a snapshot, as `ls`, `find` and `diff` show it.
#[derive(Clone, Debug, Serialize)]
pub struct ListedEntry {
    /// Its path in the snapshot, from `/` (the snapshot's root, whose entries are
    /// the backed-up paths by their last names).
    pub path: String,
    /// `dir`, `file`, `symlink`, `fifo`, `chardev` or `blockdev`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Permission bits.
    pub mode: u32,
    /// Bytes (files).
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Owner's user ID.
    pub uid: u32,
    /// Group ID.
    pub gid: u32,
    /// Owner's name where the backing-up system knew it.
    pub user: String,
    /// Group's name likewise.
    pub group: String,
    /// A symbolic link's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

impl ListedEntry {
    fn of(path: &[u8], e: &TreeEntry) -> Self {
        ListedEntry {
            path: display_path(path),
            kind: kind_name(&e.kind),
            mode: e.mode,
            size: e.size,
            mtime_ns: e.mtime_ns,
            uid: e.meta.uid,
            gid: e.meta.gid,
            user: e.meta.user.to_string(),
            group: e.meta.group.to_string(),
            link_target: match &e.kind {
                EntryKind::Symlink(t) => Some(String::from_utf8_lossy(t).into_owned()),
                _ => None,
            },
        }
    }
}

/// `/` followed by a snapshot path (lossy where it is not UTF-8).
fn display_path(path: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(path))
}

fn kind_name(kind: &EntryKind) -> &'static str {
    match kind {
        EntryKind::Dir(_) => "dir",
        EntryKind::File(_) | EntryKind::SqliteFile(_) => "file",
        EntryKind::Symlink(_) => "symlink",
        EntryKind::Fifo => "fifo",
        EntryKind::CharDevice => "chardev",
        EntryKind::BlockDevice => "blockdev",
    }
}

fn chunks(kind: &EntryKind) -> &[ChunkId] {
    match kind {
        EntryKind::File(c) | EntryKind::SqliteFile(c) => c,
        _ => &[],
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = dir.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// A snapshot path from what a user types: `/a/b`, `a/b/` and `a//b` are `a/b`;
/// `/` and the empty path are the root.
pub(crate) fn snapshot_path(typed: &str) -> Vec<u8> {
    typed
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
        .into_bytes()
}

/// Where a path leads in a snapshot.
pub(crate) enum Located {
    /// The root: its entries are the backed-up paths.
    Root,
    /// An entry, with its path.
    Entry(Vec<u8>, Box<TreeEntry>),
}

/// One snapshot's trees, read a directory at a time.
pub(crate) struct SnapshotTrees<'a> {
    reader: TreeReader<'a>,
    /// An earlier version's snapshot, built into trees here.
    built: HashMap<ChunkId, Vec<u8>>,
    pub(crate) root: Vec<ChunkId>,
    /// The snapshot's name, in errors.
    name: String,
    /// Its short id, in messages.
    short: String,
}

impl<'a> SnapshotTrees<'a> {
    pub(crate) fn new(repo: &'a Repository<Indexed>, r: &SnapshotRef) -> Result<Self> {
        let snap = repo.load_snapshot(r)?;
        Self::of(repo, &r.name.to_hex(), snap)
    }

    /// The trees of `snap`, loaded already, named `name`.
    pub(crate) fn of(repo: &'a Repository<Indexed>, name: &str, snap: Snapshot) -> Result<Self> {
        let name = name.to_owned();
        let reader = TreeReader::new(
            &*repo.store,
            &repo.keys,
            &repo.state.index,
            repo.cache.as_deref(),
        );
        let mut trees = SnapshotTrees {
            reader,
            built: HashMap::new(),
            root: snap.root.clone(),
            short: name[..8].to_owned(),
            name,
        };
        if snap.root.is_empty() {
            trees.build(repo, snap)?;
        }
        Ok(trees)
    }

    /// Builds the trees of a snapshot that lists its nodes (versions 1 and 2).
    fn build(&mut self, repo: &Repository<Indexed>, snap: Snapshot) -> Result<()> {
        let mut builder = TreeBuilder::new(&repo.keys);
        let built = &mut self.built;
        let mut store = |id: ChunkId, plain: Vec<u8>| -> std::result::Result<(), TreeFailure> {
            built.insert(id, plain);
            Ok(())
        };
        for node in snap.nodes {
            builder
                .push(node, &mut store)
                .map_err(|e| e.into_repo(&self.name))?;
        }
        self.root = builder
            .finish(&mut store)
            .map_err(|e| e.into_repo(&self.name))?;
        Ok(())
    }

    /// The entries of the directory whose tree is `parts`.
    pub(crate) fn dir(&mut self, parts: &[ChunkId]) -> Result<Tree> {
        crate::interrupt::check()?;
        if self.built.is_empty() {
            return self.reader.read_dir(parts, &self.name);
        }
        let mut dir = Tree::default();
        for id in parts {
            let plain = self.built.get(id).expect("built with the snapshot");
            let part = Tree::decode(plain).and_then(|part| dir.append_part(part));
            part.map_err(|e| TreeFailure::from(e).into_repo(&self.name))?;
        }
        Ok(dir)
    }

    /// Finds `path` (as [`snapshot_path`] gives it).
    pub(crate) fn locate(&mut self, path: &[u8]) -> Result<Located> {
        if path.is_empty() {
            return Ok(Located::Root);
        }
        let mut parts = self.root.clone();
        let mut at: Vec<u8> = Vec::new();
        let names: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
        for (i, name) in names.iter().enumerate() {
            let tree = self.dir(&parts)?;
            let found = tree
                .entries
                .binary_search_by(|e| e.name.as_slice().cmp(name))
                .ok()
                .map(|k| tree.entries[k].clone());
            let not_there = |nearest: &[u8]| RepoError::PathNotInSnapshot {
                path: display_path(path),
                snapshot: self.short.clone(),
                nearest: display_path(nearest),
            };
            let Some(entry) = found else {
                return Err(not_there(&at));
            };
            at = join(&at, name);
            if i + 1 == names.len() {
                return Ok(Located::Entry(at, Box::new(entry)));
            }
            match entry.kind {
                EntryKind::Dir(p) => parts = p,
                _ => return Err(not_there(&at)),
            }
        }
        unreachable!("a path has a last name")
    }

    /// Visits the entries under the directory whose tree is `parts` and whose path is
    /// `prefix`, depth-first, parents first; `each` says whether to go into a
    /// directory.
    pub(crate) fn walk(
        &mut self,
        prefix: &[u8],
        parts: &[ChunkId],
        each: &mut dyn FnMut(&[u8], &TreeEntry) -> Result<bool>,
    ) -> Result<()> {
        let top = self.dir(parts)?.entries.into_iter();
        let mut open = vec![(prefix.to_vec(), top)];
        while let Some((dir, entries)) = open.last_mut() {
            let Some(entry) = entries.next() else {
                open.pop();
                continue;
            };
            let path = join(dir, &entry.name);
            let descend = each(&path, &entry)?;
            if let (true, EntryKind::Dir(parts)) = (descend, &entry.kind) {
                let entries = self.dir(parts)?.entries.into_iter();
                open.push((path, entries));
            }
        }
        Ok(())
    }
}

/// `find`'s patterns: globs (`*`, `?`, `[...]`, `{a,b}`; `**` across directories).
/// A pattern without `/` is matched against entry names, one with `/` against paths
/// from `/` (`/chats/**/*.db`).
pub struct FindPatterns {
    names: globset::GlobSet,
    paths: globset::GlobSet,
}

impl FindPatterns {
    /// The patterns, `ignore_case` or not; a bad one is named with its position.
    pub fn new(patterns: &[String], ignore_case: bool) -> Result<Self> {
        let (mut names, mut paths) = (
            globset::GlobSetBuilder::new(),
            globset::GlobSetBuilder::new(),
        );
        for pattern in patterns {
            let glob = globset::GlobBuilder::new(pattern)
                .case_insensitive(ignore_case)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| {
                    let at = crate::exclude::likely_position(pattern)
                        .map_or(String::new(), |i| format!(" at character {}", i + 1));
                    RepoError::Usage(format!(
                        "pattern {pattern:?} is not valid{at}: {}. Escape a literal [, {{, * or ? with \\",
                        e.kind()
                    ))
                })?;
            match pattern.contains('/') {
                true => paths.add(glob),
                false => names.add(glob),
            };
        }
        let built = |b: globset::GlobSetBuilder| {
            b.build()
                .map_err(|e| RepoError::Usage(format!("the patterns are not valid: {e}")))
        };
        Ok(FindPatterns {
            names: built(names)?,
            paths: built(paths)?,
        })
    }

    /// True when the entry at `path` (from `/`), named `name`, matches a pattern.
    pub fn matches(&self, path: &str, name: &[u8]) -> bool {
        self.paths.is_match(path) || self.names.is_match(std::ffi::OsStr::from_bytes(name))
    }
}

/// What `diff` found changed at one path (restic's letters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Modification {
    /// `+`: only in the second snapshot.
    #[serde(rename = "+")]
    Added,
    /// `-`: only in the first.
    #[serde(rename = "-")]
    Removed,
    /// `M`: its content changed (a file's chunks, a link's target).
    #[serde(rename = "M")]
    Content,
    /// `U`: only its metadata changed (mode, times, owner, attributes).
    #[serde(rename = "U")]
    Metadata,
    /// `T`: a different kind of entry now (a file became a directory).
    #[serde(rename = "T")]
    Kind,
}

impl Modification {
    /// Its letter.
    pub fn letter(self) -> char {
        match self {
            Modification::Added => '+',
            Modification::Removed => '-',
            Modification::Content => 'M',
            Modification::Metadata => 'U',
            Modification::Kind => 'T',
        }
    }
}

/// One changed path.
#[derive(Clone, Debug, Serialize)]
pub struct Difference {
    /// What changed.
    pub modifier: Modification,
    /// The path, from `/`.
    pub path: String,
    /// The entry's kind in the second snapshot (in the first for a removal).
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// Totals of a `diff`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DiffSummary {
    /// Entries only in the second snapshot.
    pub added: u64,
    /// Entries only in the first.
    pub removed: u64,
    /// Entries whose content changed.
    pub changed: u64,
    /// Entries whose metadata alone changed.
    pub metadata_changed: u64,
    /// Entries of another kind now.
    pub kind_changed: u64,
    /// Bytes of the chunks of added and changed files that the first snapshot's
    /// versions of the removed and changed files do not hold: what the second
    /// snapshot added, from chunk lists (no data read).
    pub bytes_added: u64,
    /// Likewise the other way: the first snapshot's bytes the second dropped.
    pub bytes_removed: u64,
}

/// One directory of both snapshots being compared.
struct Pair {
    path: Vec<u8>,
    old: std::iter::Peekable<std::vec::IntoIter<TreeEntry>>,
    new: std::iter::Peekable<std::vec::IntoIter<TreeEntry>>,
}

/// Chunk sets of what a diff saw change.
#[derive(Default)]
struct Changed {
    old: HashSet<ChunkId>,
    new: HashSet<ChunkId>,
}

impl Repository<Indexed> {
    /// `ls`: the entry at `path` of snapshot `r` and, for a directory, its entries
    /// (all below it with `recursive`), to `each` in order. The root lists the
    /// backed-up paths.
    pub fn ls(
        &self,
        r: &SnapshotRef,
        path: &str,
        recursive: bool,
        each: &mut dyn FnMut(&ListedEntry) -> Result<()>,
    ) -> Result<()> {
        let mut trees = SnapshotTrees::new(self, r)?;
        let (prefix, parts) = match trees.locate(&snapshot_path(path))? {
            Located::Root => (Vec::new(), trees.root.clone()),
            Located::Entry(at, entry) => {
                each(&ListedEntry::of(&at, &entry))?;
                match entry.kind {
                    EntryKind::Dir(parts) => (at, parts),
                    _ => return Ok(()),
                }
            }
        };
        trees.walk(&prefix, &parts, &mut |path, entry| {
            each(&ListedEntry::of(path, entry))?;
            Ok(recursive)
        })
    }

    /// `find`: the entries of snapshot `r` that match `patterns`, to `each` in order.
    pub fn find(
        &self,
        r: &SnapshotRef,
        patterns: &FindPatterns,
        each: &mut dyn FnMut(&ListedEntry) -> Result<()>,
    ) -> Result<()> {
        let mut trees = SnapshotTrees::new(self, r)?;
        let root = trees.root.clone();
        trees.walk(&[], &root, &mut |path, entry| {
            let shown = display_path(path);
            if patterns.matches(&shown, &entry.name) {
                each(&ListedEntry::of(path, entry))?;
            }
            Ok(true)
        })
    }

    /// `diff`: what changed from snapshot `old` to snapshot `new`, path by path in
    /// order, to `each`. Directories whose trees are the same in both are not read.
    pub fn diff(
        &self,
        old: &SnapshotRef,
        new: &SnapshotRef,
        each: &mut dyn FnMut(&Difference) -> Result<()>,
    ) -> Result<DiffSummary> {
        let mut a = SnapshotTrees::new(self, old)?;
        let mut b = SnapshotTrees::new(self, new)?;
        let mut summary = DiffSummary::default();
        let mut changed = Changed::default();
        let (root_a, root_b) = (a.root.clone(), b.root.clone());
        // Built trees (an earlier version's snapshot) are named by the same key:
        // the same directory has the same parts either way.
        if root_a != root_b {
            let mut open = vec![Pair {
                path: Vec::new(),
                old: a.dir(&root_a)?.entries.into_iter().peekable(),
                new: b.dir(&root_b)?.entries.into_iter().peekable(),
            }];
            while let Some(pair) = open.last_mut() {
                let next = match (pair.old.peek(), pair.new.peek()) {
                    (None, None) => {
                        open.pop();
                        continue;
                    }
                    (Some(x), Some(y)) if x.name == y.name => (pair.old.next(), pair.new.next()),
                    (Some(x), Some(y)) if x.name < y.name => (pair.old.next(), None),
                    (Some(_), None) => (pair.old.next(), None),
                    _ => (None, pair.new.next()),
                };
                let dir = pair.path.clone();
                if let Some(deeper) = self.compare(
                    &dir,
                    next,
                    (&mut a, &mut b),
                    &mut summary,
                    &mut changed,
                    each,
                )? {
                    open.push(deeper);
                }
            }
        }
        let bytes = |ids: &mut dyn Iterator<Item = &ChunkId>| -> u64 {
            ids.filter_map(|id| self.state.index.get(id))
                .map(|loc| u64::from(loc.blob.raw_length))
                .sum()
        };
        summary.bytes_added = bytes(&mut changed.new.difference(&changed.old));
        summary.bytes_removed = bytes(&mut changed.old.difference(&changed.new));
        Ok(summary)
    }

    /// Compares the entries of one name in directory `dir` of both snapshots (either
    /// may be missing), reports what changed, and returns the pair of directories to
    /// go into next, if any.
    fn compare(
        &self,
        dir: &[u8],
        (old, new): (Option<TreeEntry>, Option<TreeEntry>),
        (a, b): (&mut SnapshotTrees, &mut SnapshotTrees),
        summary: &mut DiffSummary,
        changed: &mut Changed,
        each: &mut dyn FnMut(&Difference) -> Result<()>,
    ) -> Result<Option<Pair>> {
        let name = old
            .as_ref()
            .or(new.as_ref())
            .expect("one side")
            .name
            .clone();
        let path = join(dir, &name);
        let mut report = |modifier, kind, summary: &mut DiffSummary| {
            match modifier {
                Modification::Added => summary.added += 1,
                Modification::Removed => summary.removed += 1,
                Modification::Content => summary.changed += 1,
                Modification::Metadata => summary.metadata_changed += 1,
                Modification::Kind => summary.kind_changed += 1,
            }
            each(&Difference {
                modifier,
                path: display_path(&path),
                kind,
            })
        };
        let empty = || Vec::new().into_iter().peekable();
        let dir_parts = |e: &Option<TreeEntry>| match e.as_ref().map(|e| &e.kind) {
            Some(EntryKind::Dir(parts)) => Some(parts.clone()),
            _ => None,
        };
        let (old_dir, new_dir) = (dir_parts(&old), dir_parts(&new));
        match (&old, &new) {
            (Some(o), None) => {
                changed.old.extend(chunks(&o.kind));
                report(Modification::Removed, kind_name(&o.kind), summary)?;
            }
            (None, Some(n)) => {
                changed.new.extend(chunks(&n.kind));
                report(Modification::Added, kind_name(&n.kind), summary)?;
            }
            (Some(o), Some(n)) => {
                let (ko, kn) = (kind_name(&o.kind), kind_name(&n.kind));
                let content = match (&o.kind, &n.kind) {
                    (EntryKind::Dir(_), EntryKind::Dir(_)) => false,
                    (x, y) => x != y,
                };
                // A directory's time changes with its entries, which are reported.
                let metadata = o.mode != n.mode
                    || o.meta != n.meta
                    || (ko != "dir" && o.mtime_ns != n.mtime_ns);
                if ko != kn {
                    changed.old.extend(chunks(&o.kind));
                    changed.new.extend(chunks(&n.kind));
                    report(Modification::Kind, kn, summary)?;
                } else if content {
                    changed.old.extend(chunks(&o.kind));
                    changed.new.extend(chunks(&n.kind));
                    report(Modification::Content, kn, summary)?;
                } else if metadata {
                    report(Modification::Metadata, kn, summary)?;
                }
            }
            (None, None) => unreachable!("one side"),
        }
        if old_dir == new_dir {
            return Ok(None);
        }
        let old_entries = match &old_dir {
            Some(parts) => a.dir(parts)?.entries.into_iter().peekable(),
            None => empty(),
        };
        let new_entries = match &new_dir {
            Some(parts) => b.dir(parts)?.entries.into_iter().peekable(),
            None => empty(),
        };
        Ok(Some(Pair {
            path,
            old: old_entries,
            new: new_entries,
        }))
    }

    /// `dump`: the file at `path` of snapshot `r` to `out`, or a directory (the root
    /// for `/`) as a tar stream of everything under it. Returns the entry's kind.
    pub fn dump(&self, r: &SnapshotRef, path: &str, out: &mut dyn Write) -> Result<&'static str> {
        let mut trees = SnapshotTrees::new(self, r)?;
        let mut reader = BaseReader::new(&*self.store, &self.keys, &self.state.index);
        let target = |source| RepoError::Output {
            what: "standard output".into(),
            source,
        };
        match trees.locate(&snapshot_path(path))? {
            Located::Entry(at, entry) if !matches!(entry.kind, EntryKind::Dir(_)) => {
                let kind = kind_name(&entry.kind);
                match &entry.kind {
                    EntryKind::File(c) | EntryKind::SqliteFile(c) => {
                        let mut content = Content::new(&mut reader, c, entry.size, &at);
                        io::copy(&mut content, out).map_err(|e| repo_error(e, &target))?;
                    }
                    EntryKind::Symlink(t) => out.write_all(t).map_err(target)?,
                    _ => {
                        return Err(RepoError::Usage(format!(
                            "{} is a {kind}: there is no content to dump",
                            display_path(&at)
                        )))
                    }
                }
                out.flush().map_err(target)?;
                Ok(kind)
            }
            located => {
                let (prefix, parts, top) = match located {
                    Located::Root => (Vec::new(), trees.root.clone(), None),
                    Located::Entry(at, entry) => match &entry.kind {
                        EntryKind::Dir(parts) => (at.clone(), parts.clone(), Some((at, entry))),
                        _ => unreachable!("handled above"),
                    },
                };
                let mut tar = tar::Builder::new(out);
                tar.mode(tar::HeaderMode::Complete);
                // Paths in the archive start at the directory dumped (its own name).
                let strip = prefix.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
                if let Some((at, entry)) = top {
                    append(&mut tar, &at[strip..], &entry, &mut reader, &target)?;
                }
                trees.walk(&prefix, &parts, &mut |p, entry| {
                    append(&mut tar, &p[strip..], entry, &mut reader, &target)?;
                    Ok(true)
                })?;
                tar.into_inner()
                    .and_then(|out| out.flush())
                    .map_err(target)?;
                Ok("dir")
            }
        }
    }
}

/// Appends one entry to a tar stream.
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &[u8],
    e: &TreeEntry,
    reader: &mut BaseReader,
    target: &dyn Fn(io::Error) -> RepoError,
) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_mode(e.mode);
    h.set_uid(u64::from(e.meta.uid));
    h.set_gid(u64::from(e.meta.gid));
    // Names do not fit a GNU header when long; the builder writes them as extensions.
    let _ = h.set_username(&e.meta.user);
    let _ = h.set_groupname(&e.meta.group);
    h.set_mtime(e.mtime_ns.div_euclid(1_000_000_000).max(0) as u64);
    h.set_size(0);
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
    let written = match &e.kind {
        EntryKind::Dir(_) => {
            h.set_entry_type(tar::EntryType::Directory);
            tar.append_data(&mut h, path, io::empty())
        }
        EntryKind::File(c) | EntryKind::SqliteFile(c) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(e.size);
            let mut content = Content::new(reader, c, e.size, path.as_os_str().as_encoded_bytes());
            return tar
                .append_data(&mut h, path, &mut content)
                .map_err(|err| repo_error(err, target));
        }
        EntryKind::Symlink(t) => {
            h.set_entry_type(tar::EntryType::Symlink);
            let t = std::path::Path::new(std::ffi::OsStr::from_bytes(t));
            tar.append_link(&mut h, path, t)
        }
        EntryKind::Fifo => {
            h.set_entry_type(tar::EntryType::Fifo);
            tar.append_data(&mut h, path, io::empty())
        }
        EntryKind::CharDevice | EntryKind::BlockDevice => {
            h.set_entry_type(match e.kind {
                EntryKind::CharDevice => tar::EntryType::Char,
                _ => tar::EntryType::Block,
            });
            let rdev = e.meta.rdev;
            let _ = h.set_device_major(libc::major(rdev as libc::dev_t));
            let _ = h.set_device_minor(libc::minor(rdev as libc::dev_t));
            tar.append_data(&mut h, path, io::empty())
        }
    };
    written.map_err(target)
}

/// Chunks read per batch: packs are read once per batch, in ranges.
const DUMP_BATCH: usize = 64;

/// A file's content, read from its chunks a batch at a time, as a `Read`. A
/// repository error is returned inside the `io::Error` ([`repo_error`] takes it out).
pub(crate) struct Content<'r, 'a> {
    reader: &'r mut BaseReader<'a>,
    chunks: &'r [ChunkId],
    /// The next chunk to read, and the chunks read and not yet given out.
    next: usize,
    ready: std::collections::VecDeque<Vec<u8>>,
    at: usize,
    /// Bytes the file has, and bytes given out so far.
    size: u64,
    given: u64,
    path: String,
}

/// The repository error inside `e` if a [`Content`] put one there, else `other(e)`.
pub(crate) fn repo_error(e: io::Error, other: &dyn Fn(io::Error) -> RepoError) -> RepoError {
    if e.get_ref().is_some_and(|inner| inner.is::<RepoError>()) {
        let inner = e.into_inner().expect("checked above");
        return *inner.downcast::<RepoError>().expect("checked above");
    }
    other(e)
}

impl<'r, 'a> Content<'r, 'a> {
    pub(crate) fn new(
        reader: &'r mut BaseReader<'a>,
        chunks: &'r [ChunkId],
        size: u64,
        path: &[u8],
    ) -> Self {
        Content {
            reader,
            chunks,
            next: 0,
            ready: Default::default(),
            at: 0,
            size,
            given: 0,
            path: display_path(path),
        }
    }

    fn fill(&mut self) -> Result<()> {
        let batch = &self.chunks[self.next..(self.next + DUMP_BATCH).min(self.chunks.len())];
        let mut read = self.reader.read_chunks(batch)?;
        for id in batch {
            // A chunk twice in one batch is taken once and copied.
            let chunk = match read.get(id) {
                Some(c) => c.clone(),
                None => unreachable!("read_chunks returns every ID asked"),
            };
            self.ready.push_back(chunk);
        }
        read.clear();
        self.next += batch.len();
        Ok(())
    }
}

impl Read for Content<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.ready.front().is_none_or(|c| self.at == c.len()) {
            if self.ready.pop_front().is_some() {
                self.at = 0;
                continue;
            }
            if self.next == self.chunks.len() {
                if self.given != self.size {
                    return Err(io::Error::other(RepoError::Usage(format!(
                        "{}: its chunks hold {} bytes, its entry says {}: run `backlock check --read-data`",
                        self.path, self.given, self.size
                    ))));
                }
                return Ok(0);
            }
            self.fill().map_err(io::Error::other)?;
        }
        let chunk = self.ready.front().expect("checked above");
        let n = buf.len().min(chunk.len() - self.at);
        buf[..n].copy_from_slice(&chunk[self.at..self.at + n]);
        self.at += n;
        self.given += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_paths_name_snapshot_paths() {
        assert_eq!(snapshot_path("/"), b"");
        assert_eq!(snapshot_path(""), b"");
        assert_eq!(snapshot_path("/chats//2024/./a.txt/"), b"chats/2024/a.txt");
        assert_eq!(snapshot_path("chats"), b"chats");
    }
}
