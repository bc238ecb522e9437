//! backlock-migrate: moving off an unencrypted backup (docs/STORES.md §Migrating).
//!
//! [`migrate`] makes an encrypted snapshot of a plain copy of a chat folder (a local
//! directory or files under a store URL), restores that snapshot into a work
//! directory, compares every file bit for bit with the source read again, and only
//! then deletes the source, file by file, then its empty directories. Killed at any
//! instant it has deleted nothing before the comparison passed; run again, it
//! finishes the job.
//!
//! The steps, and the named points a test can stop it at ([`PAUSE_VAR`]):
//!
//! | step | after it |
//! |------|----------|
//! | scan the source (the manifest) | |
//! | back it up verbatim (a store source is first downloaded into the work directory) | `after-backup` |
//! | restore the snapshot into the work directory | `after-restore` |
//! | scan again: anything changed since the manifest stops here | |
//! | compare every entry, contents re-read from the source | |
//! | scan again; write the journal (verified) | `verified` |
//! | delete each file still as verified (a changed one is kept) | `deleting` (after the first) |
//! | delete the empty directories, then the journal | |
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

mod compare;
mod source;

pub use source::Source;

use backlock_core::key::BackupKey;
use backlock_repo::{testhook::pause, BackupOptions, DeviceHome, RepoError, Repository};
use backlock_store::{ObjectStore, StoreError};
use serde::{Deserialize, Serialize};
use source::{Kind, Manifest};
use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

/// Test hook: the step (see the table above) at which to stop.
pub use backlock_repo::testhook::PAUSE_VAR;

const AFTER_BACKUP: &str = "after-backup";
const AFTER_RESTORE: &str = "after-restore";
const VERIFIED: &str = "verified";
const DELETING: &str = "deleting";
/// The named steps of a migration, in the order it reaches them (the table above).
pub const STEPS: [&str; 4] = [AFTER_BACKUP, AFTER_RESTORE, VERIFIED, DELETING];

/// Why a migration stopped. Unless the variant says otherwise, nothing was deleted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// The source does not exist.
    #[error("the unencrypted backup {location} does not exist: check the path given to --from")]
    SourceMissing {
        /// Where we looked.
        location: String,
    },
    /// The source is not a plain copy of a chat folder.
    #[error("{location} is not an unencrypted backup backlock can migrate: {reason}. Nothing was deleted")]
    NotAChatFolder {
        /// The location.
        location: String,
        /// What is wrong with it, and what to do.
        reason: String,
    },
    /// The source changed after the backup began.
    #[error("the unencrypted backup changed while it was being migrated ({path} {what}): nothing was deleted. Stop whatever writes to it and run `backlock migrate` again")]
    SourceChanged {
        /// The entry that changed.
        path: String,
        /// How.
        what: String,
    },
    /// The restore differs from the source although the source did not change.
    #[error("the restore of snapshot {snapshot} does not match the unencrypted backup: {path} {detail}. Nothing was deleted; run `backlock check --read-data` and report this")]
    VerifyFailed {
        /// The snapshot.
        snapshot: String,
        /// The entry.
        path: String,
        /// How it differs.
        detail: String,
    },
    /// A source file could not be read.
    #[error("cannot read {path} from the unencrypted backup: {source}. Nothing was deleted; fix access to it and run `backlock migrate` again")]
    SourceIo {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The work directory (download, restore) could not be written.
    #[error("cannot use the migration's work space at {path}: {source}. Nothing was deleted; free space under BACKLOCK_HOME and run `backlock migrate` again")]
    Work {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Deleting a verified file failed: the snapshot is verified, the rest stays.
    #[error("cannot delete {path}: {source}. The encrypted snapshot is verified; fix the permission and run `backlock migrate` again to delete the rest")]
    Delete {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The store holding the source failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The source URL could not be opened.
    #[error(transparent)]
    Open(#[from] backlock_store_cloud::OpenError),
    /// The repository failed (wrong key, not initialised, damaged, …).
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// What a migration did.
#[derive(Clone, Debug, Serialize)]
pub struct MigrateSummary {
    /// The source, as shown to people.
    pub source: String,
    /// The verified snapshot.
    pub snapshot: String,
    /// Its sequence number.
    pub seq: u64,
    /// Files compared bit for bit with the source.
    pub files_verified: u64,
    /// Their bytes.
    pub bytes_verified: u64,
    /// Files (and symlinks) deleted from the source, as shown to people.
    pub deleted: Vec<String>,
    /// Directories deleted.
    pub dirs_deleted: u64,
    /// Files kept because they changed after the verification.
    pub kept: Vec<String>,
    /// True when an earlier run had verified and deleted everything; this one only
    /// cleaned up after it.
    pub finished_earlier: bool,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Where the repository is and how to open it.
pub struct Target<'a> {
    /// Its store.
    pub store: Arc<dyn ObjectStore>,
    /// The backup key.
    pub key: &'a BackupKey,
    /// This device's state; the journal and work directory live under it.
    pub home: DeviceHome,
    /// The store's location on this machine when it is a local directory (checked
    /// not to overlap the source).
    pub local_path: Option<PathBuf>,
    /// The device's name, stored in the snapshot.
    pub hostname: String,
}

/// What the device remembers between a verification and the end of the deletion.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    source: String,
    repo_id: String,
    snapshot: String,
    seq: u64,
}

/// Refuses a source that holds the repository or this device's state, or lies inside
/// the repository, or is a backlock repository itself.
fn check_overlap(source: &Source, target: &Target) -> Result<(), MigrateError> {
    let refuse = |reason: String| {
        Err(MigrateError::NotAChatFolder {
            location: source.location(),
            reason,
        })
    };
    match source {
        Source::Local(root) => {
            let inside = |p: &Path| {
                p.canonicalize()
                    .is_ok_and(|p| p.starts_with(root) || root.starts_with(&p))
            };
            if target.local_path.as_deref().is_some_and(inside) {
                return refuse(
                    "it overlaps the repository; migrate into a repository outside it".into(),
                );
            }
            if inside(target.home.root()) {
                return refuse("it holds this device's backlock state (BACKLOCK_HOME); move that elsewhere first".into());
            }
            if root.join("config").is_file() && root.join("packs").is_dir() {
                return refuse("it is a backlock repository, which is already encrypted".into());
            }
        }
        Source::Cloud(_) => {
            let (a, b) = (source.location() + "/", target.store.location() + "/");
            if a.starts_with(&b) || b.starts_with(&a) {
                return refuse("it overlaps the repository; use separate prefixes".into());
            }
        }
    }
    Ok(())
}

/// The first entry that differs between two scans.
fn changed(before: &Manifest, now: &Manifest) -> Option<MigrateError> {
    let change = |path: &Path, what: &str| MigrateError::SourceChanged {
        path: path.display().to_string(),
        what: what.into(),
    };
    for (i, b) in before.iter().enumerate() {
        match now.get(i) {
            None => return Some(change(&b.rel, "was removed")),
            Some(n) if n.rel != b.rel => {
                let (what, path) = if before.iter().any(|e| e.rel == n.rel) {
                    ("was removed", &b.rel)
                } else {
                    ("appeared", &n.rel)
                };
                return Some(change(path, what));
            }
            Some(n) if n != b => return Some(change(&b.rel, "was modified")),
            Some(_) => {}
        }
    }
    now.get(before.len()).map(|n| change(&n.rel, "appeared"))
}

/// Moves `source` into the repository: snapshot, verified restore, then deletion.
/// `on_deleted` is called with each path as soon as it is deleted.
pub fn migrate(
    source: &Source,
    target: &Target,
    on_deleted: &mut dyn FnMut(&str),
) -> Result<MigrateSummary, MigrateError> {
    let start = Instant::now();
    // The key and the repository first: a wrong key or a missing repository stops
    // here, before the source is touched.
    let repo = Repository::open(target.store.clone(), target.key, target.home.clone())?;
    check_overlap(source, target)?;
    let tag = blake3::hash(source.location().as_bytes()).to_hex();
    let dir = target.home.root().join("migrate");
    let journal_path = dir.join(format!("{}.json", &tag[..32]));
    let work = dir.join(format!("{}.work", &tag[..32]));
    let journal: Option<Journal> = std::fs::read(&journal_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|j: &Journal| j.repo_id == repo.id() && j.source == source.location());

    let manifest = match source.scan() {
        Ok(m) => m,
        Err(MigrateError::SourceIo { source: e, .. }) if e.kind() == io::ErrorKind::NotFound => {
            if journal.is_none() {
                return Err(MigrateError::SourceMissing {
                    location: source.location(),
                });
            }
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let files = manifest.iter().filter(|e| e.kind != Kind::Dir).count();
    if files == 0 {
        // An earlier run verified everything and was stopped while deleting.
        if let Some(j) = journal {
            let dirs = source.delete_dirs(&manifest)?;
            let _ = std::fs::remove_file(&journal_path);
            return Ok(MigrateSummary {
                source: source.location(),
                snapshot: j.snapshot,
                seq: j.seq,
                files_verified: 0,
                bytes_verified: 0,
                deleted: Vec::new(),
                dirs_deleted: dirs.len() as u64,
                kept: Vec::new(),
                finished_earlier: true,
                seconds: start.elapsed().as_secs_f64(),
            });
        }
        return Err(MigrateError::NotAChatFolder {
            location: source.location(),
            reason: "it holds no files".into(),
        });
    }

    let work_error = |path: &Path, e| MigrateError::Work {
        path: path.to_path_buf(),
        source: e,
    };
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(|e| work_error(&work, e))?;
    }
    std::fs::create_dir_all(&work).map_err(|e| work_error(&work, e))?;
    // After a run stopped while deleting, what is left is checked against the snapshot
    // it verified, so no second, partial snapshot is made.
    let verified_earlier = journal.filter(|j| repo.find_snapshot(&j.snapshot).is_ok());
    let subset = verified_earlier.is_some();
    let steps = Steps {
        source,
        target,
        manifest: &manifest,
        work: &work,
        journal_path: &journal_path,
    };
    let result = match steps.run(repo, verified_earlier, on_deleted) {
        // Changed since that snapshot: a new one, as for a first run.
        Err(MigrateError::VerifyFailed { .. }) if subset => {
            let repo = Repository::open(target.store.clone(), target.key, target.home.clone())?;
            let _ = std::fs::remove_file(&journal_path);
            steps.run(repo, None, on_deleted)
        }
        other => other,
    };
    let _ = std::fs::remove_dir_all(&work);
    let mut summary = result?;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// One run's inputs.
struct Steps<'a> {
    source: &'a Source,
    target: &'a Target<'a>,
    manifest: &'a Manifest,
    work: &'a Path,
    journal_path: &'a Path,
}

/// The snapshot a run verifies against.
struct Made {
    snapshot: String,
    seq: u64,
}

impl Steps<'_> {
    /// Backs up (or takes the snapshot an earlier run verified), restores, verifies,
    /// then deletes.
    fn run(
        &self,
        repo: Repository,
        verified_earlier: Option<Journal>,
        on_deleted: &mut dyn FnMut(&str),
    ) -> Result<MigrateSummary, MigrateError> {
        let (source, manifest, work) = (self.source, self.manifest, self.work);
        let subset = verified_earlier.is_some();
        let backup = match verified_earlier {
            Some(j) => Made {
                snapshot: j.snapshot,
                seq: j.seq,
            },
            None => {
                let staged = source.staged(manifest, &work.join("stage"))?;
                let b = repo.load_index()?.backup(&BackupOptions {
                    paths: vec![staged],
                    hostname: self.target.hostname.clone(),
                    verbatim: true,
                    recorded_paths: Some(vec![source.location()]),
                    ..Default::default()
                })?;
                pause(AFTER_BACKUP);
                Made {
                    snapshot: b.snapshot,
                    seq: b.seq,
                }
            }
        };
        let target = self.target;
        let repo = Repository::open(target.store.clone(), target.key, target.home.clone())?
            .load_index()?;
        // `repo` holds its shared lock until the source is gone: no prune frees the
        // snapshot's data meanwhile.
        let snapshot = repo.find_snapshot(&backup.snapshot)?;
        let restored = work.join("restore");
        if restored.exists() {
            std::fs::remove_dir_all(&restored).map_err(|e| MigrateError::Work {
                path: restored.clone(),
                source: e,
            })?;
        }
        repo.restore(&snapshot, &restored)?;
        let _ = std::fs::remove_dir_all(work.join("stage"));
        pause(AFTER_RESTORE);
        self.verify_and_delete(
            &repo,
            backup,
            &restored.join(source.top_name()),
            subset,
            on_deleted,
        )
    }

    fn verify_and_delete(
        &self,
        repo: &Repository<backlock_repo::Indexed>,
        backup: Made,
        top: &Path,
        subset: bool,
        on_deleted: &mut dyn FnMut(&str),
    ) -> Result<MigrateSummary, MigrateError> {
        let (source, manifest, journal_path) = (self.source, self.manifest, self.journal_path);
        if let Some(e) = changed(manifest, &source.scan()?) {
            return Err(e);
        }
        let verified = match compare::compare(source, manifest, top, subset)? {
            Ok(v) => v,
            Err(m) => {
                // A source modified in place keeps its size but not its times or ETag.
                if let Some(e) = changed(manifest, &source.scan()?) {
                    return Err(e);
                }
                return Err(MigrateError::VerifyFailed {
                    snapshot: backup.snapshot,
                    path: m.rel,
                    detail: m.detail,
                });
            }
        };
        if let Some(e) = changed(manifest, &source.scan()?) {
            return Err(e);
        }
        let journal = Journal {
            source: source.location(),
            repo_id: repo.id(),
            snapshot: backup.snapshot.clone(),
            seq: backup.seq,
        };
        backlock_repo::device::write_atomically(
            journal_path,
            &serde_json::to_vec_pretty(&journal).expect("plain struct serialises"),
        )
        .map_err(|e| MigrateError::Work {
            path: journal_path.to_path_buf(),
            source: e,
        })?;
        pause(VERIFIED);

        let mut deleted = Vec::new();
        let mut kept = Vec::new();
        for e in manifest.iter().filter(|e| e.kind != Kind::Dir) {
            // Only what is still exactly as verified goes.
            match source.stat(&e.rel)? {
                Some(now) if now == *e => {
                    source.delete_file(&e.rel)?;
                    let shown = source.show(&e.rel);
                    on_deleted(&shown);
                    deleted.push(shown);
                    if deleted.len() == 1 {
                        pause(DELETING);
                    }
                }
                Some(_) => kept.push(source.show(&e.rel)),
                None => {}
            }
        }
        let dirs = source.delete_dirs(manifest)?;
        if kept.is_empty() {
            let _ = std::fs::remove_file(journal_path);
        }
        Ok(MigrateSummary {
            source: source.location(),
            snapshot: backup.snapshot,
            seq: backup.seq,
            files_verified: verified.files,
            bytes_verified: verified.bytes,
            deleted,
            dirs_deleted: dirs.len() as u64,
            kept,
            finished_earlier: false,
            seconds: 0.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use source::Entry;

    fn entry(rel: &str, version: &str) -> Entry {
        Entry {
            rel: rel.into(),
            kind: Kind::File,
            size: 1,
            mode: 0o644,
            version: version.into(),
        }
    }

    #[test]
    fn a_scan_names_what_changed() {
        let before = vec![entry("a", "1"), entry("b", "1")];
        assert!(changed(&before, &before.clone()).is_none());
        let what = |now: Vec<Entry>| match changed(&before, &now) {
            Some(MigrateError::SourceChanged { path, what }) => format!("{path} {what}"),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            what(vec![entry("a", "1"), entry("b", "2")]),
            "b was modified"
        );
        assert_eq!(what(vec![entry("a", "1")]), "b was removed");
        assert_eq!(what(vec![entry("b", "1")]), "a was removed");
        assert_eq!(
            what(vec![entry("a", "1"), entry("ab", "1"), entry("b", "1")]),
            "ab appeared"
        );
        assert_eq!(
            what(vec![entry("a", "1"), entry("b", "1"), entry("c", "1")]),
            "c appeared"
        );
    }
}
