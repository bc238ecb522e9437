//! Restore: into a staging directory beside the target, every chunk authenticated and
//! checked against its ID, then renamed onto the target. A failure removes the staging
//! directory, so nothing partial is ever left under the target's name.

use crate::{
    bases::bad_base,
    error::{RepoError, Result},
    index::{decode_chunk, open_blob_at, Location},
    Indexed, Repository, SnapshotRef,
};
use backlock_core::{
    envelope::{ObjectKind, PackOpener, HEADER_LEN},
    format::{BlobEntry, Node, NodeKind, Snapshot},
    ids::{ChunkId, ObjectName},
    FormatError,
};
use serde::Serialize;
use std::{
    collections::HashMap,
    ffi::OsStr,
    fs::{self, File, OpenOptions},
    os::unix::{ffi::OsStrExt, fs::FileExt, fs::PermissionsExt},
    path::{Component, Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant, UNIX_EPOCH},
};

/// Ranges closer than this are fetched in one read.
const COALESCE_GAP: u64 = 1 << 20;

/// What a restore did.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreSummary {
    /// The snapshot restored.
    pub snapshot: String,
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Where one chunk's bytes go.
type Targets = Vec<(usize, u64)>;

/// The blobs to restore from each pack, by sequence number.
type Plan = HashMap<ObjectName, HashMap<u32, (BlobEntry, Targets)>>;

/// The base plaintext of a blob (`None` for a whole blob).
type BaseOf<'a> = dyn Fn(&BlobEntry) -> Result<Option<Vec<u8>>> + Sync + 'a;

fn add(plan: &mut Plan, loc: &Location, target: (usize, u64)) {
    plan.entry(loc.pack)
        .or_default()
        .entry(loc.blob.seq)
        .or_insert_with(|| (loc.blob, Vec::new()))
        .1
        .push(target);
}

/// Converts a snapshot path into a relative path that cannot escape the target.
fn safe_rel(raw: &[u8]) -> Option<PathBuf> {
    let p = Path::new(OsStr::from_bytes(raw));
    let ok = !raw.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then(|| p.to_path_buf())
}

fn set_times_and_mode(path: &Path, node: &Node) -> std::io::Result<()> {
    let mtime = UNIX_EPOCH + Duration::from_nanos(node.mtime_ns.max(0) as u64);
    let f = File::open(path)?;
    f.set_modified(mtime)?;
    fs::set_permissions(path, fs::Permissions::from_mode(node.mode & 0o7777))
}

impl Repository<Indexed> {
    /// Restores snapshot `r` into `target`, which must not exist or be empty.
    pub fn restore(&self, r: &SnapshotRef, target: &Path) -> Result<RestoreSummary> {
        let start = Instant::now();
        let snap = self.load_snapshot(r)?;
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
        let restored = self.restore_into(&snap, &staging, &scratch);
        let _ = fs::remove_file(&scratch);
        match restored {
            Ok((files, bytes)) => {
                fs::rename(&staging, target).map_err(|e| {
                    let _ = fs::remove_dir_all(&staging);
                    to_target(e)
                })?;
                Ok(RestoreSummary {
                    snapshot: r.name.to_hex(),
                    files,
                    bytes,
                    seconds: start.elapsed().as_secs_f64(),
                })
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                Err(e)
            }
        }
    }

    /// Writes the files of `snap` under `root` in two passes: every whole blob (and
    /// each delta's base), then the deltas, decoded against bases read back from where
    /// the first pass wrote them (a restored file, or `scratch`).
    fn restore_into(&self, snap: &Snapshot, root: &Path, scratch: &Path) -> Result<(u64, u64)> {
        let to_target = |source| RepoError::Target {
            path: root.to_path_buf(),
            source,
        };
        let malformed = |detail: String| RepoError::Damaged {
            kind: "snapshot",
            name: format!("#{}", snap.seq),
            source: FormatError::Malformed {
                what: "snapshot",
                detail,
            },
        };
        let mut paths = Vec::with_capacity(snap.nodes.len() + 1);
        let (mut whole, mut deltas) = (Plan::new(), Plan::new());
        // Where the first pass writes each whole chunk: (file, offset, length).
        let mut placed: HashMap<ChunkId, (usize, u64, u32)> = HashMap::new();
        let (mut files, mut bytes) = (0, 0);
        for (i, node) in snap.nodes.iter().enumerate() {
            let rel = safe_rel(&node.path).ok_or_else(|| malformed("unsafe path".into()))?;
            let path = root.join(rel);
            match &node.kind {
                NodeKind::Dir => fs::create_dir_all(&path).map_err(to_target)?,
                NodeKind::Symlink(t) => {
                    std::os::unix::fs::symlink(OsStr::from_bytes(t), &path).map_err(to_target)?
                }
                NodeKind::File | NodeKind::SqliteFile => {
                    let f = File::create(&path).map_err(to_target)?;
                    let mut offset = 0u64;
                    for id in &node.chunks {
                        let loc = self.state.index.get(id).ok_or_else(|| {
                            bad_base(id, "a chunk of this snapshot is in no index object")
                        })?;
                        if loc.blob.base.is_some() {
                            add(&mut deltas, loc, (i, offset));
                        } else {
                            add(&mut whole, loc, (i, offset));
                            placed
                                .entry(*id)
                                .or_insert((i, offset, loc.blob.raw_length));
                        }
                        offset += loc.blob.raw_length as u64;
                    }
                    if offset != node.size {
                        return Err(malformed(format!(
                            "file size {} != chunk total {offset}",
                            node.size
                        )));
                    }
                    f.set_len(offset).map_err(to_target)?;
                    files += 1;
                    bytes += offset;
                }
            }
            paths.push(path);
        }
        // Bases no restored file holds go to the scratch file.
        paths.push(scratch.to_path_buf());
        let mut scratch_len = 0u64;
        for blob in deltas.values().flat_map(|b| b.values().map(|(e, _)| e)) {
            let base = blob.base.expect("only deltas are planned here");
            if placed.contains_key(&base) {
                continue;
            }
            let loc = self
                .state
                .index
                .get(&base)
                .ok_or_else(|| bad_base(&base, "a delta's base is in no index object"))?;
            if loc.blob.base.is_some() {
                return Err(bad_base(&base, "a delta's base is itself a delta"));
            }
            add(&mut whole, loc, (paths.len() - 1, scratch_len));
            placed.insert(base, (paths.len() - 1, scratch_len, loc.blob.raw_length));
            scratch_len += loc.blob.raw_length as u64;
        }
        if scratch_len > 0 {
            File::create_new(scratch)
                .and_then(|f| f.set_len(scratch_len))
                .map_err(to_target)?;
        }

        self.run_plan(whole, &paths, &|_| Ok(None))?;
        let read_base = |blob: &BlobEntry| -> Result<Option<Vec<u8>>> {
            let base = blob.base.expect("only deltas are planned here");
            let (file, offset, len) = placed[&base];
            let mut buf = vec![0u8; len as usize];
            File::open(&paths[file])
                .and_then(|f| f.read_exact_at(&mut buf, offset))
                .map_err(|source| RepoError::Target {
                    path: paths[file].clone(),
                    source,
                })?;
            Ok(Some(buf))
        };
        self.run_plan(deltas, &paths, &read_base)?;

        // Metadata last, deepest first, so directory times are not bumped afterwards.
        for (node, path) in snap.nodes.iter().zip(&paths).rev() {
            if !matches!(node.kind, NodeKind::Symlink(_)) {
                set_times_and_mode(path, node).map_err(to_target)?;
            }
        }
        Ok((files, bytes))
    }

    /// Restores the blobs of `plan`, a few packs at a time.
    fn run_plan(&self, plan: Plan, paths: &[PathBuf], base: &BaseOf<'_>) -> Result<()> {
        let queue = Mutex::new(plan.into_iter().collect::<Vec<_>>());
        let failure: Mutex<Option<RepoError>> = Mutex::new(None);
        let threads = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 4);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    if failure.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                        return;
                    }
                    let Some((pack, blobs)) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop()
                    else {
                        return;
                    };
                    if let Err(e) = self.restore_pack(pack, blobs, paths, base) {
                        failure
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
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

    fn restore_pack(
        &self,
        pack: ObjectName,
        blobs: HashMap<u32, (BlobEntry, Targets)>,
        paths: &[PathBuf],
        base_of: &BaseOf<'_>,
    ) -> Result<()> {
        let name = pack.to_hex();
        let damaged = |e| RepoError::damaged(ObjectKind::Pack, &name, e);
        let header = self
            .store
            .get_range(ObjectKind::Pack, &name, 0, HEADER_LEN as u64)?;
        let opener = PackOpener::new(&self.keys, &name, &header).map_err(damaged)?;
        let mut blobs: Vec<_> = blobs.into_values().collect();
        blobs.sort_by_key(|(b, _)| b.offset);
        let mut open_files: HashMap<usize, File> = HashMap::new();
        let mut i = 0;
        while i < blobs.len() {
            // Coalesce neighbouring blobs into one ranged read.
            let start = blobs[i].0.offset;
            let mut end = start + blobs[i].0.length as u64;
            let mut j = i + 1;
            while j < blobs.len()
                && blobs[j].0.offset <= end + COALESCE_GAP
                && blobs[j].0.offset + blobs[j].0.length as u64 - start <= 64 << 20
            {
                end = end.max(blobs[j].0.offset + blobs[j].0.length as u64);
                j += 1;
            }
            let data = self
                .store
                .get_range(ObjectKind::Pack, &name, start, end - start)?;
            for (blob, targets) in &blobs[i..j] {
                let encoded = open_blob_at(&opener, &name, &data, start, blob)?;
                let base = base_of(blob)?;
                let chunk = decode_chunk(&self.keys, &name, &encoded, blob, base.as_deref())?;
                for &(file, offset) in targets {
                    let f = match open_files.entry(file) {
                        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(OpenOptions::new().write(true).open(&paths[file]).map_err(
                                |source| RepoError::Target {
                                    path: paths[file].clone(),
                                    source,
                                },
                            )?)
                        }
                    };
                    f.write_all_at(&chunk, offset)
                        .map_err(|source| RepoError::Target {
                            path: paths[file].clone(),
                            source,
                        })?;
                }
            }
            i = j;
        }
        Ok(())
    }
}
