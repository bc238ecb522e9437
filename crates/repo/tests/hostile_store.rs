//! The repository against a store that lies (`backlock_testkit::hostile`): each test is
//! named after the attack, and each checks that nothing backed up is lost and every
//! deviation is caught or passed over.

use backlock_core::{envelope::ObjectKind, ids::ObjectName, key::BackupKey};
use backlock_repo::{BackupOptions, DeviceHome, RepoError, Repository};
use backlock_store::ObjectStore;
use backlock_testkit::{hostile::HostileStore, tree};
use std::path::Path;
use std::sync::Arc;

struct Setup {
    dir: tempfile::TempDir,
    key: BackupKey,
    store: Arc<HostileStore>,
}

impl Setup {
    fn new() -> Self {
        let s = Setup {
            dir: tempfile::tempdir().unwrap(),
            key: BackupKey::generate(),
            store: Arc::new(HostileStore::new()),
        };
        Repository::init(s.store.clone(), &s.key, s.home()).unwrap();
        s
    }

    fn home(&self) -> DeviceHome {
        DeviceHome::new(self.dir.path().join("home"))
    }

    fn open(&self) -> Repository {
        Repository::open(self.store.clone(), &self.key, self.home()).unwrap()
    }

    fn backup(&self, src: &Path) -> Result<backlock_repo::BackupSummary, RepoError> {
        self.open().load_index()?.backup(&BackupOptions {
            paths: vec![src.to_path_buf()],
            hostname: "test".into(),
            ..Default::default()
        })
    }

    fn restore_latest_matches(&self, src: &Path, tag: &str) {
        let repo = self.open().load_index().unwrap();
        let latest = repo.find_snapshot("latest").unwrap();
        let target = self.dir.path().join(tag);
        repo.restore(&latest, &target).unwrap();
        tree::assert_same(src, &target.join(src.file_name().unwrap()));
        let report = self.open().check(true).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }
}

/// The process dies between the new snapshot's put and its flush, and the power goes:
/// the snapshot is gone (or cut short under its name). The next backup takes the
/// newest snapshot that opens as its parent and commits; nothing is lost.
#[test]
fn a_power_loss_between_a_snapshots_put_and_its_flush_loses_nothing() {
    for cut_short in [false, true] {
        let s = Setup::new();
        let src = tree::write_sample(s.dir.path(), 31);
        s.backup(&src).unwrap();
        std::fs::write(src.join("notes.txt"), b"the day's change").unwrap();
        s.store.fail_flush_after_put_of(ObjectKind::Snapshot);
        assert!(s.backup(&src).is_err());
        assert_eq!(s.store.power_loss(cut_short), 1, "cut_short {cut_short}");
        // The dead process's lock: on a real host its missing PID releases it (this
        // test's process lives on, so it is removed here).
        for lock in s.store.list(ObjectKind::Lock).unwrap() {
            s.store.delete(ObjectKind::Lock, &lock.name).unwrap();
        }

        let again = s.backup(&src).unwrap();
        assert_eq!(again.seq, 2);
        assert_eq!(again.ignored_snapshots.len(), usize::from(cut_short));
        // `check` names the cut-short object until `repair snapshots` removes it.
        let removed = s.open().remove_unauthentic_snapshots().unwrap();
        assert_eq!(removed.len(), usize::from(cut_short));
        s.restore_latest_matches(&src, &format!("restored-{cut_short}"));
    }
}

/// The store lists a snapshot name it does not hold (a phantom, or one deleted behind
/// a stale listing): every command passes over it, forget counts it not, and `repair
/// snapshots` clears it.
#[test]
fn a_listed_snapshot_the_store_does_not_hold_is_passed_over() {
    let s = Setup::new();
    let src = tree::write_sample(s.dir.path(), 32);
    s.backup(&src).unwrap();
    let phantom = ObjectName::for_snapshot(99).to_hex();
    s.store.list_phantom(ObjectKind::Snapshot, &phantom);

    let next = s.backup(&src).unwrap();
    assert_eq!(next.seq, 2);
    assert_eq!(next.ignored_snapshots[0].name, phantom);
    let forgot = s.open().forget_keep_last(1).unwrap();
    assert_eq!((forgot.removed.len(), forgot.kept), (1, 1));
    assert_eq!(forgot.ignored[0].name, phantom);
    let removed = s.open().remove_unauthentic_snapshots().unwrap();
    assert_eq!(removed[0].name, phantom);
    s.restore_latest_matches(&src, "restored");
}

/// The store keeps serving the listing of before the newest backup (a stale listing,
/// or a rollback of the bucket's index of names): the device that made the backup
/// refuses it as a rollback instead of backing up on an older parent.
#[test]
fn a_stale_snapshot_listing_is_caught_as_a_rollback() {
    let s = Setup::new();
    let src = tree::write_sample(s.dir.path(), 33);
    s.backup(&src).unwrap();
    s.store.freeze_listing(ObjectKind::Snapshot).unwrap();
    std::fs::write(src.join("notes.txt"), b"newer").unwrap();
    s.backup(&src).unwrap();
    match s.backup(&src) {
        Err(RepoError::Rollback { seen: 2, served: 1 }) => {}
        other => panic!("a stale listing was accepted: {other:?}"),
    }
    s.store.fresh_listing(ObjectKind::Snapshot);
    s.restore_latest_matches(&src, "restored");
}

impl Setup {
    /// `forget --keep-last 1`, then `prune`.
    fn forget_and_prune(&self) {
        self.open().forget_keep_last(1).unwrap();
        self.open().load_index_exclusive().unwrap().prune().unwrap();
    }

    /// The same repository seen from a device that never saw it (a new phone).
    fn fresh_device(&self) -> Setup {
        Setup {
            dir: tempfile::tempdir_in(self.dir.path()).unwrap(),
            key: BackupKey::from_bytes(*self.key.expose_secret()),
            store: self.store.clone(),
        }
    }
}

/// The attack: back up a file, remove it, back up, forget, prune (its pack
/// is deleted); then the store serves every deleted index object again, and every
/// deleted index set too, and the file comes back. A backup that trusted the replayed
/// index would store nothing ("0.0 MiB new") and reference a pack that is gone.
/// Checked from the device that pruned and from a device that never saw the store.
#[test]
fn replayed_index_objects_never_make_a_backup_reference_deleted_packs() {
    for fresh in [false, true] {
        let s = Setup::new();
        let src = tree::write_sample(s.dir.path(), 34);
        let attachment = src.join("Media/Images/IMG-2.jpg");
        std::fs::write(&attachment, tree::random_bytes(3400, 900_000)).unwrap();
        s.backup(&src).unwrap();
        let kept = std::fs::read(&attachment).unwrap();
        std::fs::remove_file(&attachment).unwrap();
        s.backup(&src).unwrap();
        s.forget_and_prune();

        let replayed = s.store.replay_deleted(ObjectKind::Index);
        assert!(replayed >= 1, "the prune deleted index objects to replay");
        s.store.replay_deleted(ObjectKind::IndexSet);
        std::fs::write(&attachment, &kept).unwrap();
        let device = if fresh { s.fresh_device() } else { s };
        let summary = device.backup(&src).unwrap();
        assert!(
            summary.bytes_new >= kept.len() as u64 / 2,
            "fresh {fresh}: the attachment's data was not stored again ({} bytes new)",
            summary.bytes_new
        );
        device.restore_latest_matches(&src, &format!("restored-{fresh}"));
    }
}

/// The store hides every index set (so that, were the listing of index objects to
/// count again, its replayed ones would): a repository whose config says it has sets
/// is not backed up or pruned on, even by a device that never saw it.
#[test]
fn hiding_every_index_set_is_refused_not_taken_for_an_old_repository() {
    let s = Setup::new();
    let src = tree::write_sample(s.dir.path(), 35);
    s.backup(&src).unwrap();
    std::fs::write(src.join("notes.txt"), b"changed").unwrap();
    s.backup(&src).unwrap();
    s.forget_and_prune();
    s.store.replay_deleted(ObjectKind::Index);
    for set in s.store.held(ObjectKind::IndexSet) {
        s.store.drop_object(ObjectKind::IndexSet, &set);
    }
    for device in [&s, &s.fresh_device()] {
        match device.backup(&src) {
            Err(RepoError::IndexRollback { served: 0, .. }) => {}
            other => panic!("a store hiding its index sets was trusted: {other:?}"),
        }
        match device.open().load_index_exclusive().unwrap().prune() {
            Err(RepoError::IndexRollback { .. }) => {}
            other => panic!("prune trusted a store hiding its index sets: {other:?}"),
        }
        let report = device.open().check(false).unwrap();
        assert!(
            report.errors.iter().any(|e| e.contains("older index sets")),
            "{:?}",
            report.errors
        );
    }
}

/// A stale listing of index sets after a prune (the old sets listed, the new one
/// not): the device that pruned refuses to build on it.
#[test]
fn a_stale_index_set_listing_after_a_prune_is_caught_as_a_rollback() {
    let s = Setup::new();
    let src = tree::write_sample(s.dir.path(), 36);
    s.backup(&src).unwrap();
    std::fs::write(src.join("notes.txt"), b"changed").unwrap();
    s.backup(&src).unwrap();
    s.store.freeze_listing(ObjectKind::IndexSet).unwrap();
    s.store.freeze_listing(ObjectKind::Index).unwrap();
    s.forget_and_prune();
    s.store.replay_deleted(ObjectKind::Index);
    s.store.replay_deleted(ObjectKind::IndexSet);
    match s.backup(&src) {
        Err(RepoError::IndexRollback { seen, served }) if served < seen => {}
        other => panic!("a stale listing of index sets was accepted: {other:?}"),
    }
    s.store.fresh_listing(ObjectKind::IndexSet);
    s.store.fresh_listing(ObjectKind::Index);
}

/// The store drops an index object the live set names: `check` reports it, the next
/// backup warns and stores the chunks it listed again, and nothing is lost.
#[test]
fn a_dropped_index_object_is_reported_and_its_chunks_stored_again() {
    let s = Setup::new();
    let src = tree::write_sample(s.dir.path(), 37);
    s.backup(&src).unwrap();
    for index in s.store.held(ObjectKind::Index) {
        s.store.drop_object(ObjectKind::Index, &index);
    }
    let report = s.open().check(false).unwrap();
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains("is missing from the store")),
        "{:?}",
        report.errors
    );
    let again = s.backup(&src).unwrap();
    assert!(
        again
            .warnings
            .iter()
            .any(|w| w.contains("missing from the store")),
        "{:?}",
        again.warnings
    );
    assert!(again.bytes_new > 3_000_000, "{} bytes new", again.bytes_new);
    let repo = s.open().load_index().unwrap();
    let latest = repo.find_snapshot("latest").unwrap();
    let target = s.dir.path().join("restored");
    repo.restore(&latest, &target).unwrap();
    tree::assert_same(&src, &target.join("chat"));
}
