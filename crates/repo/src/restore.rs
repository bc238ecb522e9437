//! Restore: into a staging directory beside the target, every chunk authenticated and
//! checked against its ID, made durable, then renamed onto the target. A failure
//! removes the staging directory, so nothing partial is ever left under the target's
//! name.
//!
//! Nothing outside the staging directory is ever created, opened or changed, whatever
//! the snapshot says: paths are relative with no `..`, no open follows a symlink in its
//! last component, and symlinks are created last, after every file and directory, so
//! no path written through can cross one (a link `A` beside a directory `a/` on a
//! case-folding file system fails to be created instead of redirecting `a/`). Files
//! are created and written by several threads; metadata (owner where this user may,
//! extended attributes, mode, times: `metadata.rs`) is applied last, files first and
//! directories deepest first. setuid and setgid stay only where the recorded owner
//! was set: a restored program must not run as whoever restores it.

use crate::{
    bases::bad_base,
    browse::SnapshotTrees,
    error::{RepoError, Result},
    index::{decode_chunk, open_blob_in, Slot},
    metadata::{self, NotRestored},
    restore_select::RestoreOptions,
    Indexed, Repository, SnapshotRef,
};
use backlock_core::{
    blob::BlobDecoder,
    envelope::{ObjectKind, PackOpener, HEADER_LEN},
    format::{BlobEntry, Node, NodeKind, Snapshot},
    ids::ObjectName,
    threads::{at_most, budget, spawn_named},
    FormatError,
};
use serde::Serialize;
use std::{
    collections::{HashMap, HashSet, VecDeque},
    ffi::OsStr,
    fs::{self, File, OpenOptions},
    os::unix::{ffi::OsStrExt, fs::FileExt, fs::OpenOptionsExt},
    path::{Component, Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::Instant,
};

/// Ranges closer than this are fetched in one read.
const COALESCE_GAP: u64 = 1 << 20;

/// How many packs ahead of the one being restored the store is asked to fetch.
const PREFETCH_PACKS: usize = 4;

/// What a restore did.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreSummary {
    /// The snapshot restored.
    pub snapshot: String,
    /// Its sequence number.
    pub seq: u64,
    /// When it was taken, seconds since the Unix epoch.
    pub time_unix: i64,
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// What could not be put back, one line per kind (ownership when not run as
    /// root, device nodes, extended attributes the file system refuses).
    pub not_restored: Vec<String>,
    /// Files read back and checked chunk by chunk (`--verify`; 0 without).
    pub verified: u64,
}

/// One chunk to write: its blob, and the file and offset it goes to.
#[derive(Clone, Copy)]
struct Piece {
    slot: Slot,
    /// The blob's place in read order ([`crate::index::Index::read_order`]), looked up
    /// once: a large index is read from disk.
    order: (u32, u64),
    file: u32,
    offset: u64,
}

/// Where the plaintext of a delta's base can be read back: (slot, file, offset).
type Placed = Vec<(Slot, u32, u64)>;

/// The base plaintext of a blob (`None` for a whole blob).
type BaseOf<'a> = dyn Fn(&BlobEntry) -> Result<Option<Vec<u8>>> + Sync + 'a;

/// Converts a snapshot path into a relative path that cannot escape the target.
fn safe_rel(raw: &[u8]) -> Option<PathBuf> {
    let p = Path::new(OsStr::from_bytes(raw));
    let ok = !raw.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then(|| p.to_path_buf())
}

/// Opens an existing restored entry without following a symlink in its last
/// component.
fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Makes the staged tree durable before it takes the target's name: one `syncfs` of
/// its file system (not an fsync per file), so a power loss after the rename can
/// never leave full-length, zero-filled files under their final names.
fn sync_tree(staging: &Path) -> std::io::Result<()> {
    let dir = File::open(staging)?;
    rustix::fs::syncfs(&dir).map_err(std::io::Error::from)
}

/// Makes a rename in `parent` durable.
fn sync_dir(parent: &Path) -> std::io::Result<()> {
    File::open(parent)?.sync_all()
}

impl Repository<Indexed> {
    /// Restores snapshot `r` into `target`, which must not exist or be empty.
    pub fn restore(&self, r: &SnapshotRef, target: &Path) -> Result<RestoreSummary> {
        self.restore_announced(r, target, &|_| {})
    }

    /// [`Self::restore`], telling `announce` which snapshot it is about to write (its
    /// sequence and date) once the snapshot authenticated, before anything is written:
    /// on a new phone nothing else vouches that it is the newest.
    pub fn restore_announced(
        &self,
        r: &SnapshotRef,
        target: &Path,
        announce: &dyn Fn(&Snapshot),
    ) -> Result<RestoreSummary> {
        self.restore_with(r, target, announce, &RestoreOptions::default())
    }

    /// [`Self::restore_announced`], restoring what `opts` selects (a sub-path, include
    /// and exclude patterns), and reading it all back first with `opts.verify`.
    pub fn restore_with(
        &self,
        r: &SnapshotRef,
        target: &Path,
        announce: &dyn Fn(&Snapshot),
        opts: &RestoreOptions,
    ) -> Result<RestoreSummary> {
        let start = Instant::now();
        let mut snap = self.load_snapshot(r)?;
        announce(&snap);
        if let Ok(mut entries) = fs::read_dir(target) {
            if entries.next().is_some() {
                return Err(RepoError::TargetNotEmpty {
                    path: target.to_path_buf(),
                });
            }
        } else if target.exists() {
            return Err(RepoError::TargetNotEmpty {
                path: target.to_path_buf(),
            });
        }
        let to_target = |source| RepoError::Target {
            path: target.to_path_buf(),
            source,
        };
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = target
            .file_name()
            .map_or("restore".into(), |n| n.to_string_lossy().into_owned());
        let staging = parent.join(format!(
            ".{base}.backlock-partial-{}",
            ObjectName::random().short()
        ));
        fs::create_dir(&staging).map_err(to_target)?;
        // Bases of deltas that no restored file holds are staged here.
        // (Named after the staging directory, random part included, so a restore
        // killed before removing it never stands in the way of the next one.)
        let mut scratch = staging.clone().into_os_string();
        scratch.push(".bases");
        let scratch = PathBuf::from(scratch);
        let restored = self.restore_into(&mut snap, &r.name.to_hex(), &staging, &scratch, opts);
        let _ = fs::remove_file(&scratch);
        match restored {
            Ok((files, bytes, not_restored, verified)) => {
                sync_tree(&staging)
                    .and_then(|()| fs::rename(&staging, target))
                    .map_err(|e| {
                        let _ = fs::remove_dir_all(&staging);
                        to_target(e)
                    })?;
                sync_dir(&parent).map_err(|e| {
                    let _ = fs::remove_dir_all(target);
                    to_target(e)
                })?;
                Ok(RestoreSummary {
                    snapshot: r.name.to_hex(),
                    seq: snap.seq,
                    time_unix: snap.time_unix_ns.div_euclid(1_000_000_000),
                    files,
                    bytes,
                    seconds: start.elapsed().as_secs_f64(),
                    not_restored,
                    verified,
                })
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                Err(e)
            }
        }
    }

    /// Writes the entries of `snap` (`name`) under `root`, as its trees are read,
    /// files in batches (see [`Restorer`]).
    fn restore_into(
        &self,
        snap: &mut Snapshot,
        name: &str,
        root: &Path,
        scratch: &Path,
        opts: &RestoreOptions,
    ) -> Result<(u64, u64, Vec<String>, u64)> {
        let mut restorer = Restorer {
            repo: self,
            root,
            scratch,
            seq: snap.seq,
            recorded: !snap.root.is_empty(),
            batch: Vec::new(),
            linked: HashMap::new(),
            dirs: Vec::new(),
            last: Vec::new(),
            files: 0,
            bytes: 0,
            missed: NotRestored::default(),
        };
        // Files are created by their first write, so a path named twice would be
        // merged: refused instead. Trees cannot name one twice (a directory's names
        // ascend); nodes of an earlier version are checked here.
        let mut seen = HashSet::new();
        if let Some(node) = snap.nodes.iter().find(|n| !seen.insert(&n.path)) {
            return Err(restorer.malformed(format!(
                "{} is listed twice",
                String::from_utf8_lossy(&node.path)
            )));
        }
        drop(seen);
        if opts.is_whole() {
            crate::trees::for_each_node(
                &*self.store,
                &self.keys,
                &self.state.index,
                self.cache.as_deref(),
                name,
                snap,
                &mut |node| restorer.push(node),
            )?;
            let (files, bytes, missed) = restorer.finish()?;
            return Ok((files, bytes, missed, 0));
        }
        let mut trees = SnapshotTrees::of(self, name, snap.clone())?;
        let given = self.selected_nodes(&mut trees, opts, &mut |node| restorer.push(node))?;
        if given == 0 {
            return Err(RepoError::Usage(format!(
                "nothing in snapshot {} matches what was asked (the path and --include/--exclude): nothing was written. See what it holds with `backlock ls {} / --recursive`",
                &name[..8],
                &name[..8]
            )));
        }
        let (files, bytes, missed) = restorer.finish()?;
        let mut verified = 0;
        if opts.verify {
            sync_tree(root).map_err(|source| RepoError::Target {
                path: root.to_path_buf(),
                source,
            })?;
            crate::testhook::pause(crate::testhook::step::RESTORE_WRITTEN);
            let mut buf = Vec::new();
            self.selected_nodes(&mut trees, opts, &mut |node| {
                if matches!(node.kind, NodeKind::File | NodeKind::SqliteFile) {
                    let rel = safe_rel(&node.path).expect("restored above, so safe");
                    self.verify_file(&root.join(rel), &node, &mut buf)?;
                    verified += 1;
                }
                Ok(())
            })?;
        }
        Ok((files, bytes, missed, verified))
    }

    /// Finds where the first pass writes the base of each delta, sorted by slot. A
    /// base that no restored file holds is added to `whole`, written to file `scratch`;
    /// returns the scratch file's length too.
    fn place_bases(
        &self,
        whole: &mut Vec<Piece>,
        deltas: &[Piece],
        scratch: usize,
    ) -> Result<(Placed, u64)> {
        let index = &self.state.index;
        let mut needed = Vec::new();
        for delta in deltas {
            let base = index.location(delta.slot).blob.base;
            let base = base.expect("a delta blob names its base");
            let slot = index
                .slot(&base)
                .ok_or_else(|| bad_base(&base, "a delta's base is in no index object"))?;
            if index.is_delta(slot) {
                return Err(bad_base(&base, "a delta's base is itself a delta"));
            }
            needed.push(slot);
        }
        needed.sort_unstable();
        needed.dedup();
        let mut placed: Placed = whole
            .iter()
            .filter(|p| needed.binary_search(&p.slot).is_ok())
            .map(|p| (p.slot, p.file, p.offset))
            .collect();
        placed.sort_by_key(|&(slot, ..)| slot);
        placed.dedup_by_key(|&mut (slot, ..)| slot);
        let held = placed.len();
        let mut scratch_len = 0u64;
        for slot in needed {
            if placed[..held]
                .binary_search_by_key(&slot, |&(s, ..)| s)
                .is_err()
            {
                let piece = Piece {
                    slot,
                    order: index.read_order(slot),
                    file: scratch as u32,
                    offset: scratch_len,
                };
                whole.push(piece);
                placed.push((slot, piece.file, piece.offset));
                scratch_len += index.raw_length(slot) as u64;
            }
        }
        placed.sort_by_key(|&(slot, ..)| slot);
        Ok((placed, scratch_len))
    }

    /// Restores `pieces` pack by pack, in the order the packs were written, on a few
    /// threads.
    fn run_plan(
        &self,
        mut pieces: Vec<Piece>,
        paths: &[PathBuf],
        holes: &[bool],
        base: &BaseOf<'_>,
    ) -> Result<()> {
        pieces.sort_unstable_by_key(|p| (p.order, p.file, p.offset));
        let packs: Vec<&[Piece]> = pieces.chunk_by(|a, b| a.order.0 == b.order.0).collect();
        let next = AtomicUsize::new(0);
        let failure: Mutex<Option<RepoError>> = Mutex::new(None);
        let threads = at_most(budget().clamp(2, 4));
        let writing = file_locks(paths.len());
        std::thread::scope(|s| {
            for _ in 0..threads {
                spawn_named(s, "bl-restore", || {
                    let fail = |e| {
                        failure
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                    };
                    let mut decoder = BlobDecoder::new();
                    let mut data = Vec::new();
                    loop {
                        if failure.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                            return;
                        }
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(pack) = packs.get(k) else {
                            return;
                        };
                        if let Err(e) = crate::interrupt::check() {
                            return fail(e);
                        }
                        // The disk fetches the packs that come next while this one is
                        // decrypted, checked and written.
                        if let Some(ahead) = packs.get(k + PREFETCH_PACKS) {
                            self.prefetch(ahead);
                        }
                        if let Err(e) = self.restore_pack(
                            &mut decoder,
                            &mut data,
                            pack,
                            (paths, &writing),
                            holes,
                            base,
                        ) {
                            return fail(e);
                        }
                    }
                });
            }
        });
        match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Asks the store to start reading the part of a pack that `pieces` need.
    fn prefetch(&self, pieces: &[Piece]) {
        let index = &self.state.index;
        let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
        let pack = index.location(first.slot).pack.to_hex();
        let end = index.location(last.slot).blob;
        let end = end.offset + end.length as u64;
        self.store.prefetch(ObjectKind::Pack, &pack, 0, end);
    }

    /// Restores the pieces of one pack, sorted by offset, reading into `data` (the
    /// thread's buffer, reused from pack to pack).
    fn restore_pack(
        &self,
        decoder: &mut BlobDecoder,
        data: &mut Vec<u8>,
        pieces: &[Piece],
        (paths, writing): (&[PathBuf], &[Mutex<()>]),
        holes: &[bool],
        base_of: &BaseOf<'_>,
    ) -> Result<()> {
        let index = &self.state.index;
        let name = index.location(pieces[0].slot).pack.to_hex();
        let damaged = |e| RepoError::damaged(ObjectKind::Pack, &name, e);
        // Each blob once, with every piece it fills.
        let blobs: Vec<&[Piece]> = pieces.chunk_by(|a, b| a.slot == b.slot).collect();
        let entries: Vec<BlobEntry> = blobs
            .iter()
            .map(|group| index.location(group[0].slot).blob)
            .collect();
        let entry = |i: usize| entries[i];
        // Neighbouring blobs are fetched in one ranged read: (blobs, start, end).
        let mut reads = Vec::new();
        let mut i = 0;
        while i < blobs.len() {
            let start = entry(i).offset;
            let mut end = start + entry(i).length as u64;
            let mut j = i + 1;
            while j < blobs.len() {
                let b = entry(j);
                if b.offset > end + COALESCE_GAP || b.offset + b.length as u64 - start > 64 << 20 {
                    break;
                }
                end = end.max(b.offset + b.length as u64);
                j += 1;
            }
            reads.push((i..j, start, end));
            i = j;
        }
        // The pack's header comes with the first read when that starts close to it.
        let header_in_first = reads[0].1 <= HEADER_LEN as u64 + COALESCE_GAP;
        let opener = if header_in_first {
            reads[0].1 = 0;
            self.store
                .get_range_into(ObjectKind::Pack, &name, 0, reads[0].2, data)?;
            PackOpener::new(&self.keys, &name, data)
        } else {
            let header = self
                .store
                .get_range(ObjectKind::Pack, &name, 0, HEADER_LEN as u64)?;
            PackOpener::new(&self.keys, &name, &header)
        }
        .map_err(damaged)?;
        let mut out = Writer::new(paths, writing);
        for (k, (range, start, end)) in reads.into_iter().enumerate() {
            if k > 0 || !header_in_first {
                self.store
                    .get_range_into(ObjectKind::Pack, &name, start, end - start, data)?;
            }
            for (group, &blob) in blobs[range.clone()].iter().zip(&entries[range]) {
                let base = base_of(&blob)?;
                let encoded = open_blob_in(&opener, &name, data, start, &blob)?;
                let chunk =
                    decode_chunk(decoder, &self.keys, &name, encoded, &blob, base.as_deref())?;
                for piece in *group {
                    match holes[piece.file as usize] {
                        true => write_sparse(&mut out, piece.file, piece.offset, &chunk)?,
                        false => out.write(piece.file, piece.offset, &chunk)?,
                    }
                }
            }
        }
        out.flush()?;
        Ok(())
    }
}

/// Files restored at once: their nodes, paths and pieces are all a restore holds of
/// them, whatever the snapshot's size.
const BATCH_FILES: usize = 8192;

/// Restores a snapshot's nodes as they come, in walk order: directories at once,
/// files in batches of [`BATCH_FILES`] (created, then written pack by pack in two
/// passes, every whole blob and each delta's base, then the deltas decoded against
/// bases read back from where the first pass wrote them: a file of the batch, or the
/// scratch file; then their metadata), and last what must come last: symlinks and
/// special files once nothing more is written through a path, then directories'
/// metadata, deepest first, so their times are not bumped afterwards.
struct Restorer<'a> {
    repo: &'a Repository<Indexed>,
    root: &'a Path,
    scratch: &'a Path,
    seq: u64,
    /// The snapshot records owners and attributes (version 3).
    recorded: bool,
    /// Files of the batch being gathered, with their paths.
    batch: Vec<(Node, PathBuf)>,
    /// The first path restored of each file with several hard links.
    linked: HashMap<(u64, u64), PathBuf>,
    dirs: Vec<(Node, PathBuf)>,
    /// Symlinks and special files.
    last: Vec<(Node, PathBuf)>,
    files: u64,
    bytes: u64,
    missed: NotRestored,
}

impl Restorer<'_> {
    fn malformed(&self, detail: String) -> RepoError {
        RepoError::Damaged {
            kind: "snapshot",
            name: format!("#{}", self.seq),
            source: FormatError::Malformed {
                what: "snapshot",
                detail,
            },
        }
    }

    fn to_target(&self, source: std::io::Error) -> RepoError {
        RepoError::Target {
            path: self.root.to_path_buf(),
            source,
        }
    }

    /// Takes the next node of the walk.
    fn push(&mut self, node: Node) -> Result<()> {
        crate::interrupt::check()?;
        let rel = safe_rel(&node.path).ok_or_else(|| self.malformed("unsafe path".into()))?;
        let path = self.root.join(rel);
        match &node.kind {
            NodeKind::Dir => {
                fs::create_dir_all(&path).map_err(|e| self.to_target(e))?;
                self.dirs.push((node, path));
            }
            NodeKind::Symlink(_)
            | NodeKind::Fifo
            | NodeKind::CharDevice
            | NodeKind::BlockDevice => self.last.push((node, path)),
            NodeKind::File | NodeKind::SqliteFile => {
                self.batch.push((node, path));
                if self.batch.len() >= BATCH_FILES {
                    self.restore_batch()?;
                }
            }
        }
        Ok(())
    }

    /// Creates, writes and sets the metadata of the files gathered.
    fn restore_batch(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        let repo = self.repo;
        let index = &repo.state.index;
        let mut paths = Vec::with_capacity(batch.len() + 1);
        // Files whose all-zero chunks are left as holes.
        let mut holes = Vec::with_capacity(batch.len() + 1);
        let (mut whole, mut deltas) = (Vec::new(), Vec::new());
        // Files to create (number and length), and names of files already restored.
        let mut creates: Vec<(usize, u64)> = Vec::new();
        let mut links: Vec<(PathBuf, usize)> = Vec::new();
        for (i, (node, path)) in batch.iter().enumerate() {
            paths.push(path.clone());
            holes.push(node.more.sparse);
            self.files += 1;
            if node.more.links > 1 {
                let key = (node.more.device, node.inode);
                if let Some(first) = self.linked.get(&key) {
                    // Another name of a file already restored: a link to it, as it was.
                    links.push((first.clone(), i));
                    continue;
                }
                self.linked.insert(key, path.clone());
            }
            let mut offset = 0u64;
            for id in &node.chunks {
                let (slot, entry) = index.lookup(id).ok_or_else(|| {
                    bad_base(id, "a chunk of this snapshot is in no index object")
                })?;
                let piece = Piece {
                    slot,
                    order: (entry.pack, entry.offset),
                    file: i as u32,
                    offset,
                };
                match entry.base != 0 {
                    true => deltas.push(piece),
                    false => whole.push(piece),
                }
                offset += entry.raw_length as u64;
            }
            if offset != node.size {
                return Err(
                    self.malformed(format!("file size {} != chunk total {offset}", node.size))
                );
            }
            creates.push((i, offset));
            self.bytes += offset;
        }
        paths.push(self.scratch.to_path_buf());
        holes.push(false);
        // A file with content is created by the first write of it (one open per
        // file, not two: on a small file the opens are most of the cost). An empty
        // one is made here, and one with holes at its full length, as a hole at its
        // end writes nothing.
        creates.retain(|&(i, len)| len == 0 || holes[i]);
        in_parallel(&creates, |&(i, len)| {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&paths[i])?;
            match holes[i] {
                true => file.set_len(len),
                false => Ok(()),
            }
        })
        .map_err(|e| self.to_target(e))?;
        let (placed, scratch_len) = repo.place_bases(&mut whole, &deltas, paths.len() - 1)?;
        if scratch_len > 0 {
            let _ = fs::remove_file(self.scratch);
            File::create_new(self.scratch)
                .and_then(|f| f.set_len(scratch_len))
                .map_err(|e| self.to_target(e))?;
        }
        repo.run_plan(whole, &paths, &holes, &|_| Ok(None))?;
        let read_base = |blob: &BlobEntry| -> Result<Option<Vec<u8>>> {
            let base = blob.base.expect("only deltas are planned here");
            let (slot, file, offset) = index
                .slot(&base)
                .and_then(|s| placed.binary_search_by_key(&s, |&(s, ..)| s).ok())
                .map(|at| placed[at])
                .ok_or_else(|| bad_base(&base, "a delta's base is in no index object"))?;
            let path = &paths[file as usize];
            let mut buf = vec![0u8; index.raw_length(slot) as usize];
            open_nofollow(path)
                .and_then(|f| f.read_exact_at(&mut buf, offset))
                .map_err(|source| RepoError::Target {
                    path: path.clone(),
                    source,
                })?;
            Ok(Some(buf))
        };
        repo.run_plan(deltas, &paths, &holes, &read_base)?;
        // Every file of the batch exists now.
        for (first, i) in &links {
            fs::hard_link(first, &paths[*i]).map_err(|e| self.to_target(e))?;
        }
        // Setting a file's metadata leaves its directory's times alone: files on
        // several threads, as soon as they are written.
        apply_all(&batch, self.recorded, &mut self.missed).map_err(|e| self.to_target(e))
    }

    /// Restores the last batch, then symlinks, special files and directories'
    /// metadata; returns the files and bytes written and what could not be restored.
    fn finish(mut self) -> Result<(u64, u64, Vec<String>)> {
        self.restore_batch()?;
        let mut missed = std::mem::take(&mut self.missed);
        for (node, path) in &self.last {
            match &node.kind {
                NodeKind::Symlink(t) => std::os::unix::fs::symlink(OsStr::from_bytes(t), path)
                    .map_err(|e| self.to_target(e))?,
                _ => metadata::make_special(path, node, &mut missed)
                    .map_err(|e| self.to_target(e))?,
            }
        }
        apply_all(&self.last, self.recorded, &mut missed).map_err(|e| self.to_target(e))?;
        for (node, path) in self.dirs.iter().rev() {
            metadata::apply(path, node, self.recorded, &mut missed)
                .map_err(|e| self.to_target(e))?;
        }
        Ok((self.files, self.bytes, missed.into_lines()))
    }
}

/// Sets the metadata of `entries` on several threads, noting in `missed` what this
/// user may not set.
fn apply_all(
    entries: &[(Node, PathBuf)],
    recorded: bool,
    missed: &mut NotRestored,
) -> std::io::Result<()> {
    let all = Mutex::new(std::mem::take(missed));
    let done = in_parallel(entries, |(node, path)| {
        let mut mine = NotRestored::default();
        let done = metadata::apply(path, node, recorded, &mut mine);
        all.lock().unwrap_or_else(|p| p.into_inner()).merge(mine);
        done
    });
    *missed = all.into_inner().unwrap_or_else(|p| p.into_inner());
    done
}

/// Threads that create files and set metadata: file system calls on small files
/// wait on the kernel, not the CPU, and overlap.
const META_THREADS: usize = 4;

/// Runs `each` on every item on [`META_THREADS`] threads; the first error wins.
fn in_parallel<T: Sync>(
    items: &[T],
    each: impl Fn(&T) -> std::io::Result<()> + Sync,
) -> std::io::Result<()> {
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<std::io::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..at_most(META_THREADS).min(items.len()) {
            spawn_named(s, "bl-meta", || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { return };
                if let Err(e) = each(item) {
                    failure
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                    // The others stop at their next item.
                    next.store(items.len(), Ordering::Relaxed);
                    return;
                }
            });
        }
    });
    match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Holes are restored block by block: a file system allocates whole blocks.
const HOLE_BLOCK: u64 = 4096;

/// Writes `data` at `offset` of a file that had holes, leaving out the blocks that are
/// all zeros: the file was made at its full length, and a hole reads as zeros.
fn write_sparse(out: &mut Writer, file: u32, offset: u64, data: &[u8]) -> Result<()> {
    let mut run: Option<usize> = None;
    let mut at = 0usize;
    while at < data.len() {
        // To the next block boundary of the file.
        let next = ((offset + at as u64) / HOLE_BLOCK + 1) * HOLE_BLOCK - offset;
        let end = (next as usize).min(data.len());
        let zeros = data[at..end].iter().all(|&b| b == 0);
        match (zeros, run) {
            (true, Some(start)) => {
                out.write(file, offset + start as u64, &data[start..at])?;
                run = None;
            }
            (false, None) => run = Some(at),
            _ => {}
        }
        at = end;
    }
    if let Some(start) = run {
        out.write(file, offset + start as u64, &data[start..])?;
    }
    Ok(())
}

/// One lock per file of a batch, held while a restoring thread writes to it.
///
/// The kernel takes a file's inode lock for each write, and a second writer of the same
/// file (two threads filling one large database from different packs) spins on it in
/// the kernel while the first copies its bytes: CPU time for nothing. Waiting here
/// sleeps instead.
fn file_locks(files: usize) -> Vec<Mutex<()>> {
    (0..files).map(|_| Mutex::new(())).collect()
}

/// Writes restored chunks into the target files. Chunks that continue one another in
/// a file (a database's runs of pages, stored in order) are gathered into one write: a
/// system call per chunk cost a restore of 4 KiB pages more than copying them.
///
/// It keeps at most [`OPEN_FILES`] files open, so a pack holding thousands of small
/// files restores under any descriptor limit: a pack's pieces come in file order, so
/// the file closed to make room is almost never needed again.
struct Writer<'a> {
    paths: &'a [PathBuf],
    /// [`file_locks`] of `paths`.
    writing: &'a [Mutex<()>],
    /// Open files, least recently opened first.
    files: VecDeque<(u32, File)>,
    /// A run of small chunks not yet written: file, offset, bytes.
    run: (u32, u64, Vec<u8>),
}

/// Chunks smaller than this are gathered into runs.
const GATHER_BELOW: usize = 64 << 10;
/// Files a writer (one per restoring thread) keeps open at once.
const OPEN_FILES: usize = 8;
/// A run is written once it reaches this size.
const RUN_MAX: usize = 1 << 20;

impl<'a> Writer<'a> {
    fn new(paths: &'a [PathBuf], writing: &'a [Mutex<()>]) -> Self {
        Writer {
            paths,
            writing,
            files: VecDeque::with_capacity(OPEN_FILES),
            run: (0, 0, Vec::new()),
        }
    }

    fn write(&mut self, file: u32, offset: u64, chunk: &[u8]) -> Result<()> {
        let (run_file, run_offset, run) = &self.run;
        let continues = *run_file == file && *run_offset + run.len() as u64 == offset;
        if !run.is_empty() && (!continues || run.len() + chunk.len() > RUN_MAX) {
            self.flush()?;
        }
        if chunk.len() >= GATHER_BELOW {
            return self.write_at(file, offset, chunk);
        }
        if self.run.2.is_empty() {
            self.run.0 = file;
            self.run.1 = offset;
        }
        self.run.2.extend_from_slice(chunk);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let (file, offset, mut run) = std::mem::take(&mut self.run);
        if !run.is_empty() {
            self.write_at(file, offset, &run)?;
        }
        run.clear();
        self.run.2 = run;
        Ok(())
    }

    fn write_at(&mut self, file: u32, offset: u64, bytes: &[u8]) -> Result<()> {
        let path = &self.paths[file as usize];
        let target = |source| RepoError::Target {
            path: path.clone(),
            source,
        };
        let at = match self.files.iter().position(|(f, _)| *f == file) {
            Some(at) => at,
            None => {
                if self.files.len() == OPEN_FILES {
                    self.files.pop_front();
                }
                // Created here unless made already (see `restore_batch`).
                let opened = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path);
                self.files.push_back((file, opened.map_err(target)?));
                self.files.len() - 1
            }
        };
        let _writing = self.writing[file as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.files[at].1.write_all_at(bytes, offset).map_err(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathered_writes_land_where_each_chunk_belongs() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("f{i}"))).collect();
        let mut want = vec![vec![0u8; 4 << 20]; 2];
        for p in &paths {
            File::create(p).unwrap().set_len(4 << 20).unwrap();
        }
        let writing = file_locks(paths.len());
        let mut out = Writer::new(&paths, &writing);
        let mut put = |out: &mut Writer, file: u32, offset: u64, len: usize, fill: u8| {
            let chunk = vec![fill; len];
            out.write(file, offset, &chunk).unwrap();
            want[file as usize][offset as usize..offset as usize + len].copy_from_slice(&chunk);
        };
        // A run of pages past RUN_MAX, a gap, the other file, a large chunk that
        // continues a run, and a page before the run it follows.
        for i in 0..300u64 {
            put(&mut out, 0, i * 4096, 4096, (i % 251) as u8 + 1);
        }
        put(&mut out, 0, 2 << 20, 4096, 7);
        put(&mut out, 1, 0, 512, 8);
        put(&mut out, 1, 512, 100 << 10, 9);
        put(&mut out, 1, (1 << 20) + 4096, 4096, 10);
        put(&mut out, 1, 1 << 20, 4096, 11);
        out.flush().unwrap();
        for (p, w) in paths.iter().zip(&want) {
            assert!(fs::read(p).unwrap() == *w, "{} differs", p.display());
        }
    }
}
