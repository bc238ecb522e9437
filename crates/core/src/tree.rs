//! Trees (docs/FORMAT.md §Trees): a directory's entries as a blob, named and stored
//! like a chunk, so a directory that did not change is one reference to a blob the
//! repository already holds, and a snapshot object holds only its root.
//!
//! A tree's ID is the chunk ID of its encoding: the bytes are what they are, and
//! whether they are read as a tree or as file content is decided by what refers to
//! them (a directory entry or a file's chunk list), never by the blob.

use crate::{
    error::FormatError,
    format::{Node, NodeKind, NodeMeta},
    ids::ChunkId,
    kdf::RepoKeys,
};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Largest tree blob a reader accepts. Writers keep parts near [`PART_BYTES`]; only
/// one entry of a file with millions of chunks comes near this.
pub const MAX_TREE_BYTES: usize = 1 << 30;

/// A writer ends a part once it holds this many bytes of entries.
pub const PART_BYTES: usize = 1 << 20;

/// A writer may end a part after an entry whose name's hash is a boundary only once
/// the part holds this many entries.
const MIN_PART_ENTRIES: usize = 64;

/// One part of a directory: some of its entries, in ascending order of name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// The entries, each name greater than the one before.
    pub entries: Vec<TreeEntry>,
}

/// One entry of a directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Its name: raw bytes, not empty, no `/` or NUL, not `.` or `..`.
    pub name: Vec<u8>,
    /// What it is.
    pub kind: EntryKind,
    /// Unix permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Size in bytes (files; else 0).
    pub size: u64,
    /// Inode number (change detection; with `meta.device`, hard links).
    pub inode: u64,
    /// ctime, nanoseconds (change detection).
    pub ctime_ns: i64,
    /// Owner, links, device, extended attributes, holes.
    pub meta: NodeMeta,
}

/// What a tree entry is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A directory: the parts of its tree, in order (none when it is empty).
    Dir(Vec<ChunkId>),
    /// A regular file: its chunks in order.
    File(Vec<ChunkId>),
    /// A live SQLite database read through SQLite: its runs of pages in order.
    SqliteFile(Vec<ChunkId>),
    /// A symbolic link: its target.
    Symlink(Vec<u8>),
    /// A named pipe.
    Fifo,
    /// A character device node.
    CharDevice,
    /// A block device node.
    BlockDevice,
}

/// True for a name a directory entry may have.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

fn malformed(detail: impl Into<String>) -> FormatError {
    FormatError::Malformed {
        what: "tree",
        detail: detail.into(),
    }
}

impl Tree {
    /// Appends `part`, the next part of the same directory, whose names must all come
    /// after this tree's (a directory lists no name twice, across parts too).
    pub fn append_part(&mut self, part: Tree) -> Result<(), FormatError> {
        if let (Some(last), Some(first)) = (self.entries.last(), part.entries.first()) {
            if last.name >= first.name {
                return Err(malformed("a directory's parts out of order"));
            }
        }
        self.entries.extend(part.entries);
        Ok(())
    }

    /// The tree's plaintext: its postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("postcard into a Vec cannot fail")
    }

    /// Decodes a tree's plaintext; refuses trailing bytes, names a directory cannot
    /// hold, and entries out of order (which would let one path appear twice).
    pub fn decode(plain: &[u8]) -> Result<Self, FormatError> {
        if plain.len() > MAX_TREE_BYTES {
            return Err(FormatError::TooLarge {
                what: "tree",
                size: plain.len() as u64,
                limit: MAX_TREE_BYTES as u64,
            });
        }
        let (tree, rest): (Tree, _) =
            postcard::take_from_bytes(plain).map_err(|e| malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(malformed(format!("{} trailing bytes", rest.len())));
        }
        let mut last: Option<&[u8]> = None;
        for e in &tree.entries {
            if !valid_name(&e.name) {
                return Err(malformed(format!(
                    "entry name {:?} is not a name",
                    String::from_utf8_lossy(&e.name)
                )));
            }
            if last.is_some_and(|l| l >= e.name.as_slice()) {
                return Err(malformed("entries out of order or repeated"));
            }
            last = Some(&e.name);
        }
        Ok(tree)
    }
}

impl TreeEntry {
    /// The entry of `node` (its path's last part as name); a directory's parts are
    /// given.
    fn of(node: Node, parts: Vec<ChunkId>) -> Self {
        let name = match node.path.iter().rposition(|&b| b == b'/') {
            Some(at) => node.path[at + 1..].to_vec(),
            None => node.path,
        };
        let kind = match node.kind {
            NodeKind::Dir => EntryKind::Dir(parts),
            NodeKind::File => EntryKind::File(node.chunks),
            NodeKind::SqliteFile => EntryKind::SqliteFile(node.chunks),
            NodeKind::Symlink(t) => EntryKind::Symlink(t),
            NodeKind::Fifo => EntryKind::Fifo,
            NodeKind::CharDevice => EntryKind::CharDevice,
            NodeKind::BlockDevice => EntryKind::BlockDevice,
        };
        TreeEntry {
            name,
            kind,
            mode: node.mode,
            mtime_ns: node.mtime_ns,
            size: node.size,
            inode: node.inode,
            ctime_ns: node.ctime_ns,
            meta: node.more,
        }
    }

    /// The node at `path`, and a directory's parts.
    pub fn into_node(self, path: Vec<u8>) -> (Node, Vec<ChunkId>) {
        let mut parts = Vec::new();
        let mut chunks = Vec::new();
        let kind = match self.kind {
            EntryKind::Dir(p) => {
                parts = p;
                NodeKind::Dir
            }
            EntryKind::File(c) => {
                chunks = c;
                NodeKind::File
            }
            EntryKind::SqliteFile(c) => {
                chunks = c;
                NodeKind::SqliteFile
            }
            EntryKind::Symlink(t) => NodeKind::Symlink(t),
            EntryKind::Fifo => NodeKind::Fifo,
            EntryKind::CharDevice => NodeKind::CharDevice,
            EntryKind::BlockDevice => NodeKind::BlockDevice,
        };
        let node = Node {
            path,
            kind,
            mode: self.mode,
            mtime_ns: self.mtime_ns,
            size: self.size,
            inode: self.inode,
            ctime_ns: self.ctime_ns,
            chunks,
            more: self.meta,
        };
        (node, parts)
    }

    /// Roughly its encoded length, for cutting parts.
    fn weight(&self) -> usize {
        let listed = match &self.kind {
            EntryKind::Dir(ids) | EntryKind::File(ids) | EntryKind::SqliteFile(ids) => {
                32 * ids.len()
            }
            EntryKind::Symlink(t) => t.len(),
            _ => 0,
        };
        let xattrs: usize = self
            .meta
            .xattrs
            .iter()
            .map(|x| x.name.len() + x.value.len())
            .sum();
        64 + self.name.len() + listed + xattrs
    }
}

/// Whether a part may end after the entry named `name`: one name in 1024, chosen by
/// its hash, so that adding a file to a large directory changes one part, not every
/// part after it.
fn is_boundary(name: &[u8]) -> bool {
    let h = blake3::hash(name);
    u16::from_le_bytes([h.as_bytes()[0], h.as_bytes()[1]]) % 1024 == 0
}

/// Builds the trees of a walk: nodes in depth-first pre-order (parents before
/// children, as a backup's walk lists them), each directory's tree stored through
/// `store(id, plaintext)` once its last entry is in, deepest first. Returns the root
/// tree's parts, whose entries are the top-level nodes.
pub struct TreeBuilder<'k> {
    keys: &'k RepoKeys,
    /// The directories open along the current path, the root (path empty) first.
    open: Vec<(Option<Node>, Vec<TreeEntry>)>,
}

impl<'k> TreeBuilder<'k> {
    /// A builder whose trees are named under `keys`.
    pub fn new(keys: &'k RepoKeys) -> Self {
        TreeBuilder {
            keys,
            open: vec![(None, Vec::new())],
        }
    }

    fn open_path(&self) -> &[u8] {
        match &self.open.last().expect("the root stays open").0 {
            Some(dir) => &dir.path,
            None => b"",
        }
    }

    /// Adds the next node of the walk.
    pub fn push<E: From<FormatError>>(
        &mut self,
        node: Node,
        store: &mut impl FnMut(ChunkId, Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let parent_len = node.path.iter().rposition(|&b| b == b'/').unwrap_or(0);
        let name = &node.path[if parent_len == 0 { 0 } else { parent_len + 1 }..];
        if !valid_name(name) {
            return Err(malformed("a path with an empty, `.` or `..` part").into());
        }
        // Close the directories this node is not in.
        while self.open_path() != &node.path[..parent_len] {
            if self.open.len() == 1 {
                return Err(malformed("a node listed before its directory").into());
            }
            self.close(store)?;
        }
        match node.kind {
            NodeKind::Dir => self.open.push((Some(node), Vec::new())),
            _ => {
                let entry = TreeEntry::of(node, Vec::new());
                self.open.last_mut().expect("root").1.push(entry);
            }
        }
        Ok(())
    }

    /// Stores the innermost open directory's tree and adds it to its parent.
    fn close<E: From<FormatError>>(
        &mut self,
        store: &mut impl FnMut(ChunkId, Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let (dir, entries) = self.open.pop().expect("not the root");
        let parts = self.store_parts(entries, store)?;
        let dir = dir.expect("only the root has no node");
        let entry = TreeEntry::of(dir, parts);
        self.open.last_mut().expect("root").1.push(entry);
        Ok(())
    }

    /// Stores `entries` as one or more parts; returns their IDs.
    fn store_parts<E: From<FormatError>>(
        &self,
        mut entries: Vec<TreeEntry>,
        store: &mut impl FnMut(ChunkId, Vec<u8>) -> Result<(), E>,
    ) -> Result<Vec<ChunkId>, E> {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        if entries.windows(2).any(|w| w[0].name == w[1].name) {
            return Err(malformed("two entries of one name").into());
        }
        let mut parts = Vec::new();
        let mut part = Tree::default();
        let mut weight = 0;
        let count = entries.len();
        for (i, entry) in entries.into_iter().enumerate() {
            weight += entry.weight();
            let cut = weight >= PART_BYTES
                || (part.entries.len() + 1 >= MIN_PART_ENTRIES && is_boundary(&entry.name));
            part.entries.push(entry);
            if cut || i + 1 == count {
                let plain = std::mem::take(&mut part).encode();
                let id = ChunkId::compute(self.keys, &plain);
                store(id, plain)?;
                parts.push(id);
                weight = 0;
            }
        }
        Ok(parts)
    }

    /// Closes every directory; returns the root's parts.
    pub fn finish<E: From<FormatError>>(
        mut self,
        store: &mut impl FnMut(ChunkId, Vec<u8>) -> Result<(), E>,
    ) -> Result<Vec<ChunkId>, E> {
        while self.open.len() > 1 {
            self.close(store)?;
        }
        let (_, entries) = self.open.pop().expect("root");
        if entries.is_empty() {
            return Err(malformed("nothing to store").into());
        }
        self.store_parts(entries, store)
    }
}

/// One directory being read: its path, the parts not read yet, the entries of the
/// part being read, and the last name seen (names ascend across parts too).
struct Level {
    path: Vec<u8>,
    parts: VecDeque<ChunkId>,
    entries: std::vec::IntoIter<TreeEntry>,
    last: Option<Vec<u8>>,
}

/// Reads the trees under `root` in depth-first pre-order, giving each node to
/// `each`; `fetch(id)` returns a tree's plaintext, already checked to be the chunk of
/// that ID. The nodes come out as a version-1 snapshot lists them.
pub fn walk<E: From<FormatError>>(
    root: &[ChunkId],
    fetch: &mut impl FnMut(&ChunkId) -> Result<Vec<u8>, E>,
    each: &mut impl FnMut(Node) -> Result<(), E>,
) -> Result<(), E> {
    walk_entering(root, fetch, each, &mut |_| true)
}

/// [`walk`], entering only the directories (the root included) whose trees `enter`
/// accepts: a directory it refuses is still given to `each`, but nothing under it is
/// read. For a reader that has been through that tree already.
pub fn walk_entering<E: From<FormatError>>(
    root: &[ChunkId],
    fetch: &mut impl FnMut(&ChunkId) -> Result<Vec<u8>, E>,
    each: &mut impl FnMut(Node) -> Result<(), E>,
    enter: &mut impl FnMut(&[ChunkId]) -> bool,
) -> Result<(), E> {
    if !enter(root) {
        return Ok(());
    }
    let mut levels = vec![Level {
        path: Vec::new(),
        parts: root.iter().copied().collect(),
        entries: Vec::new().into_iter(),
        last: None,
    }];
    while let Some(level) = levels.last_mut() {
        let Some(entry) = level.entries.next() else {
            match level.parts.pop_front() {
                Some(id) => level.entries = Tree::decode(&fetch(&id)?)?.entries.into_iter(),
                None => {
                    levels.pop();
                }
            }
            continue;
        };
        if level.last.as_ref().is_some_and(|l| *l >= entry.name) {
            return Err(malformed("a directory's parts out of order").into());
        }
        level.last = Some(entry.name.clone());
        let mut path = level.path.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&entry.name);
        let (node, parts) = entry.into_node(path);
        let dir = matches!(node.kind, NodeKind::Dir).then(|| node.path.clone());
        each(node)?;
        if let Some(path) = dir.filter(|_| enter(&parts)) {
            levels.push(Level {
                path,
                parts: parts.into(),
                entries: Vec::new().into_iter(),
                last: None,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{format::Xattr, key::BackupKey};
    use std::collections::HashMap;

    fn node(path: &str, kind: NodeKind) -> Node {
        Node {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            mtime_ns: 5,
            size: 0,
            inode: 9,
            ctime_ns: 6,
            chunks: vec![],
            more: NodeMeta::default(),
        }
    }

    fn file(path: &str, chunk: u8) -> Node {
        Node {
            chunks: vec![ChunkId([chunk; 32])],
            size: 100,
            more: NodeMeta {
                uid: 1000,
                user: "ann".into(),
                xattrs: vec![Xattr {
                    name: b"user.tag".to_vec(),
                    value: vec![chunk],
                }],
                ..NodeMeta::default()
            },
            ..node(path, NodeKind::File)
        }
    }

    /// Builds the trees of `nodes`; returns the root and every stored tree.
    fn build(keys: &RepoKeys, nodes: &[Node]) -> (Vec<ChunkId>, HashMap<ChunkId, Vec<u8>>) {
        let mut stored = HashMap::new();
        let mut store = |id: ChunkId, plain: Vec<u8>| -> Result<(), FormatError> {
            assert_eq!(id, ChunkId::compute(keys, &plain));
            stored.insert(id, plain);
            Ok(())
        };
        let mut b = TreeBuilder::new(keys);
        for n in nodes {
            b.push(n.clone(), &mut store).unwrap();
        }
        let root = b.finish(&mut store).unwrap();
        (root, stored)
    }

    fn read(
        root: &[ChunkId],
        stored: &HashMap<ChunkId, Vec<u8>>,
    ) -> Result<Vec<Node>, FormatError> {
        let mut out = Vec::new();
        walk(
            root,
            &mut |id: &ChunkId| Ok(stored[id].clone()),
            &mut |n: Node| -> Result<(), FormatError> {
                out.push(n);
                Ok(())
            },
        )?;
        Ok(out)
    }

    fn sample() -> Vec<Node> {
        vec![
            node("app", NodeKind::Dir),
            node("app/Media", NodeKind::Dir),
            file("app/Media/a.jpg", 1),
            node("app/Media/empty", NodeKind::Dir),
            node("app/fifo", NodeKind::Fifo),
            node("app/link", NodeKind::Symlink(b"Media/a.jpg".to_vec())),
            file("app/msgstore.db", 2),
            file("notes.txt", 3),
        ]
    }

    #[test]
    fn a_walk_reads_back_every_node_in_order_with_all_its_metadata() {
        let keys = RepoKeys::derive(&BackupKey::from_bytes([7; 32]));
        let nodes = sample();
        let (root, stored) = build(&keys, &nodes);
        assert_eq!(read(&root, &stored).unwrap(), nodes);
        // Four directories (root, app, Media, empty) each one part; empty has none.
        assert_eq!(stored.len(), 3);
    }

    #[test]
    fn an_unchanged_directory_is_the_same_tree_and_a_change_reaches_the_root() {
        let keys = RepoKeys::derive(&BackupKey::from_bytes([7; 32]));
        let (root, first) = build(&keys, &sample());
        let mut changed = sample();
        changed[6] = file("app/msgstore.db", 4);
        let (root2, second) = build(&keys, &changed);
        assert_ne!(root, root2);
        // Media's tree is shared; app's and the root's are new.
        let shared = second.keys().filter(|id| first.contains_key(id)).count();
        assert_eq!(shared, 1);
    }

    #[test]
    fn a_large_directory_is_split_into_parts_that_read_back_as_one() {
        let keys = RepoKeys::derive(&BackupKey::from_bytes([7; 32]));
        let mut nodes = vec![node("big", NodeKind::Dir)];
        let mut names: Vec<String> = (0..20_000).map(|i| format!("f{i:05}")).collect();
        names.sort();
        nodes.extend(names.iter().map(|n| file(&format!("big/{n}"), 1)));
        let (root, stored) = build(&keys, &nodes);
        assert!(stored.len() > 10, "{} parts", stored.len());
        assert!(stored.values().all(|t| t.len() <= PART_BYTES + 4096));
        assert_eq!(read(&root, &stored).unwrap(), nodes);
        // One file added changes few parts: boundaries follow names, not positions.
        let mut more = nodes.clone();
        more.insert(2, file("big/f00000a", 1));
        let (_, again) = build(&keys, &more);
        let new = again.keys().filter(|id| !stored.contains_key(id)).count();
        assert!(new <= 3, "{new} new trees");
    }

    #[test]
    fn a_tree_naming_a_path_twice_or_escaping_is_refused() {
        let keys = RepoKeys::derive(&BackupKey::from_bytes([7; 32]));
        let entry = |name: &[u8]| TreeEntry::of(file("x", 1), vec![]).with_name(name);
        for names in [
            vec![&b"a"[..], b"a"],
            vec![b"b", b"a"],
            vec![b".."],
            vec![b"."],
            vec![b"a/b"],
            vec![b""],
            vec![b"a\0"],
        ] {
            let tree = Tree {
                entries: names.iter().map(|n| entry(n)).collect(),
            };
            assert!(Tree::decode(&tree.encode()).is_err(), "{names:?}");
        }
        // Parts that are each in order but overlap: refused by the walk.
        let a = Tree {
            entries: vec![entry(b"b")],
        }
        .encode();
        let b = Tree {
            entries: vec![entry(b"a")],
        }
        .encode();
        let (ia, ib) = (ChunkId::compute(&keys, &a), ChunkId::compute(&keys, &b));
        let stored = HashMap::from([(ia, a), (ib, b)]);
        assert!(read(&[ia, ib], &stored).is_err());
        assert!(read(&[ia, ia], &stored).is_err());
        // Trailing bytes.
        let mut plain = Tree {
            entries: vec![entry(b"a")],
        }
        .encode();
        plain.push(0);
        assert!(Tree::decode(&plain).is_err());
    }

    #[test]
    fn a_builder_refuses_a_node_before_its_directory() {
        let keys = RepoKeys::derive(&BackupKey::from_bytes([7; 32]));
        let mut b = TreeBuilder::new(&keys);
        let mut store = |_: ChunkId, _: Vec<u8>| -> Result<(), FormatError> { Ok(()) };
        assert!(b.push(file("a/b", 1), &mut store).is_err());
    }

    impl TreeEntry {
        fn with_name(mut self, name: &[u8]) -> Self {
            self.name = name.to_vec();
            self
        }
    }
}
