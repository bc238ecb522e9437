//! What of a snapshot a restore writes (`SNAPSHOT:PATH`, `--include`, `--exclude`),
//! and `--verify`, which reads every restored file back.
//!
//! The nodes come from the snapshot's trees in walk order, a directory at a time. A
//! directory that is neither included nor excluded is held back until something
//! under it is included, so the directories written are exactly the ones a restored
//! entry needs; what is held is the directories open along one path.

use crate::{
    browse::{snapshot_path, Located, SnapshotTrees},
    error::{RepoError, Result},
    exclude::PathPatterns,
    Indexed, Repository,
};
use backlock_core::{
    format::{Node, NodeKind},
    tree::EntryKind,
};
use std::{
    fs::File,
    io::{BufReader, Read},
    path::Path,
};

/// What to restore of a snapshot, and how.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Only this path of the snapshot (from its root), restored at the target's root
    /// (`SNAPSHOT:PATH`): a directory's entries, or a file under its name.
    pub subpath: Option<String>,
    /// Only what these match, with the directories it is in.
    pub include: Option<PathPatterns>,
    /// Not what these match (a directory with all under it).
    pub exclude: Option<PathPatterns>,
    /// Read every restored file back and check each chunk against its ID.
    pub verify: bool,
}

impl RestoreOptions {
    /// True when the whole snapshot is restored as it is, unchecked.
    pub(crate) fn is_whole(&self) -> bool {
        self.subpath.is_none() && self.include.is_none() && self.exclude.is_none() && !self.verify
    }
}

/// True when `path` is `dir` or under it.
fn is_under(path: &[u8], dir: &[u8]) -> bool {
    path.starts_with(dir) && (path.len() == dir.len() || path[dir.len()] == b'/')
}

/// The selection as the nodes go by.
struct Selection<'o> {
    opts: &'o RestoreOptions,
    /// Directories not written yet that what comes next may be in, outermost first,
    /// each with its path in the snapshot.
    held: Vec<(Node, Vec<u8>)>,
    /// The snapshot path of an excluded directory being passed over.
    skipping: Option<Vec<u8>>,
    /// Entries given on.
    given: u64,
}

impl Selection<'_> {
    /// Takes `node`, whose path in the snapshot is `full`, and gives on what is to
    /// be restored.
    fn offer(
        &mut self,
        node: Node,
        full: Vec<u8>,
        emit: &mut dyn FnMut(Node) -> Result<()>,
    ) -> Result<()> {
        if let Some(dir) = &self.skipping {
            if is_under(&full, dir) {
                return Ok(());
            }
            self.skipping = None;
        }
        while self.held.last().is_some_and(|(_, d)| !is_under(&full, d)) {
            self.held.pop();
        }
        let is_dir = node.kind == NodeKind::Dir;
        if self
            .opts
            .exclude
            .as_ref()
            .is_some_and(|x| x.matches(&full, is_dir))
        {
            if is_dir {
                self.skipping = Some(full);
            }
            return Ok(());
        }
        let included = match &self.opts.include {
            None => true,
            Some(i) => i.matches(&full, is_dir),
        };
        if !included {
            if is_dir {
                self.held.push((node, full));
            }
            return Ok(());
        }
        for (dir, _) in self.held.drain(..) {
            self.given += 1;
            emit(dir)?;
        }
        self.given += 1;
        emit(node)
    }
}

impl Repository<Indexed> {
    /// Gives the nodes of `trees` that `opts` selects to `each`, in walk order, with
    /// paths from the target's root; returns how many.
    pub(crate) fn selected_nodes(
        &self,
        trees: &mut SnapshotTrees,
        opts: &RestoreOptions,
        each: &mut dyn FnMut(Node) -> Result<()>,
    ) -> Result<u64> {
        let sub = snapshot_path(opts.subpath.as_deref().unwrap_or(""));
        let mut selection = Selection {
            opts,
            held: Vec::new(),
            skipping: None,
            given: 0,
        };
        // The snapshot path of what is restored at the target's root.
        let (base, parts) = match trees.locate(&sub)? {
            Located::Root => (Vec::new(), trees.root.clone()),
            Located::Entry(at, entry) => match &entry.kind {
                EntryKind::Dir(parts) => (at, parts.clone()),
                _ => {
                    // One file (or link), under its own name.
                    let name = entry.name.clone();
                    let (node, _) = (*entry).into_node(name);
                    selection.offer(node, at, each)?;
                    return Ok(selection.given);
                }
            },
        };
        let strip = if base.is_empty() { 0 } else { base.len() + 1 };
        trees.walk(&base, &parts, &mut |full, entry| {
            let (node, _) = entry.clone().into_node(full[strip..].to_vec());
            selection.offer(node, full.to_vec(), each)?;
            Ok(true)
        })?;
        Ok(selection.given)
    }

    /// `--verify`: reads the regular file `node` back from `path` and checks each
    /// chunk against its ID, and that nothing follows the last.
    pub(crate) fn verify_file(&self, path: &Path, node: &Node, buf: &mut Vec<u8>) -> Result<()> {
        let index = &self.state.index;
        let differs = |offset| RepoError::VerifyFailed {
            path: String::from_utf8_lossy(&node.path).into_owned(),
            offset,
        };
        let target = |source| RepoError::Target {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(target)?;
        // The tree was made durable first: dropping its clean pages makes these reads
        // come from the disk, not from what was just written in memory.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
        let mut file = BufReader::with_capacity(1 << 20, file);
        let mut offset = 0u64;
        for id in &node.chunks {
            let len = index
                .get(id)
                .map(|loc| loc.blob.raw_length as usize)
                .ok_or_else(|| {
                    crate::bases::bad_base(id, "a restored chunk is in no index object")
                })?;
            buf.resize(len, 0);
            match file.read_exact(buf) {
                Ok(()) if id.verify(&self.keys, buf) => offset += len as u64,
                Ok(()) => return Err(differs(offset)),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(differs(offset))
                }
                Err(e) => return Err(target(e)),
            }
        }
        match file.read(&mut [0u8; 1]).map_err(target)? {
            0 => Ok(()),
            _ => Err(differs(offset)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_means_itself_or_below_a_slash() {
        assert!(is_under(b"a/b", b"a"));
        assert!(is_under(b"a", b"a"));
        assert!(!is_under(b"ab", b"a"));
        assert!(!is_under(b"a", b"a/b"));
    }
}
