//! The engine's promises, each a test that fails if the promise is broken.

use backlock_core::{envelope::ObjectKind, key::BackupKey};
use backlock_repo::{BackupOptions, DeviceHome, RepoError, Repository};
use backlock_store::{FsStore, MemoryStore, ObjectStore};
use backlock_testkit::{timing, tree};
use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    sync::Arc,
};

struct Fixture {
    dir: tempfile::TempDir,
    key: BackupKey,
    store: Arc<dyn ObjectStore>,
    mem: Option<MemoryStore>,
}

impl Fixture {
    fn memory() -> Self {
        let mem = MemoryStore::new();
        Self::with(Arc::new(mem.clone()), Some(mem))
    }

    fn fs() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FsStore::new(dir.path().join("repo")));
        let mut f = Self::with(store, None);
        f.dir = dir;
        f
    }

    fn with(store: Arc<dyn ObjectStore>, mem: Option<MemoryStore>) -> Self {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
            key: BackupKey::generate(),
            store,
            mem,
        };
        Repository::init(f.store.clone(), &f.key, f.home()).unwrap();
        f
    }

    fn home(&self) -> DeviceHome {
        DeviceHome::new(self.dir.path().join("home"))
    }

    fn open(&self) -> Repository {
        Repository::open(self.store.clone(), &self.key, self.home()).unwrap()
    }

    /// Opened, under a shared lock, indexed.
    fn repo(&self) -> Repository<backlock_repo::Indexed> {
        self.open().load_index().unwrap()
    }

    /// Opened, under the exclusive lock, indexed: ready to prune.
    fn pruner(&self) -> Repository<backlock_repo::Indexed> {
        self.open().load_index_exclusive().unwrap()
    }

    fn backup(&self, src: &Path) -> backlock_repo::BackupSummary {
        let opts = BackupOptions {
            paths: vec![src.to_path_buf()],
            hostname: "test".into(),
            ..Default::default()
        };
        self.repo().backup(&opts).unwrap()
    }

    /// A fresh `app` folder for the test's files, and the path of its `msgstore.db`.
    fn app(&self) -> (PathBuf, PathBuf) {
        let src = self.dir.path().join("app");
        std::fs::create_dir(&src).unwrap();
        let db = src.join("msgstore.db");
        (src, db)
    }

    /// The node at `path` in the newest snapshot.
    fn latest_node(&self, path: &str) -> backlock_core::format::Node {
        let repo = self.repo();
        let refs = repo.snapshot_refs().unwrap();
        let snapshot = repo.load_snapshot_nodes(refs.last().unwrap()).unwrap();
        snapshot
            .nodes
            .into_iter()
            .find(|n| n.path == path.as_bytes())
            .unwrap()
    }

    fn restore_latest(&self, target: &Path) -> Result<backlock_repo::RestoreSummary, RepoError> {
        let repo = Repository::open(self.store.clone(), &self.key, self.home())?.load_index()?;
        let r = repo.find_snapshot("latest")?;
        repo.restore(&r, target)
    }
}

#[test]
fn backup_restore_round_trip_is_exact() {
    let f = Fixture::memory();
    let src = tree::write_sample(f.dir.path(), 1);
    let s = f.backup(&src);
    assert_eq!(s.seq, 1);
    let target = f.dir.path().join("restored");
    f.restore_latest(&target).unwrap();
    tree::assert_same(&src, &target.join("chat"));
}

#[test]
fn duplicates_and_unchanged_files_cost_nothing() {
    let f = Fixture::memory();
    let src = tree::write_sample(f.dir.path(), 2);
    let first = f.backup(&src);
    // The forwarded photo is stored once.
    assert!(first.bytes_new < first.bytes_total - 600_000, "{first:?}");
    let second = f.backup(&src);
    assert_eq!(second.seq, 2);
    assert_eq!(second.bytes_new, 0, "{second:?}");
    assert!(second.files_unchanged >= 5, "{second:?}");
}

#[test]
fn sqlite_day_stores_about_the_pages_that_changed() {
    let f = Fixture::memory();
    let (src, db) = f.app();
    tree::write_db(&db, 60_000, 3);
    f.backup(&src);
    let before = std::fs::read(&db).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    tree::insert_messages(&conn, 300, 4);
    conn.execute("UPDATE message SET status = 2 WHERE id % 1999 = 0", [])
        .unwrap();
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .unwrap();
    drop(conn);
    let after = std::fs::read(&db).unwrap();
    let changed = |size: usize| {
        after
            .chunks(size)
            .enumerate()
            .filter(|(i, p)| before.chunks(size).nth(*i) != Some(*p))
            .count()
    };
    // A database is chunked in runs of pages (16 KiB of 4 KiB pages).
    let (pages, runs) = (
        changed(4096),
        changed(backlock_core::chunker::DATABASE_CHUNK),
    );
    let day = f.backup(&src);
    // Page-aware chunks: new bytes are the changed runs of pages, not the whole file,
    // and what is stored (deltas, snapshot and index) is less than the changed pages.
    assert!(
        day.bytes_new <= (runs * backlock_core::chunker::DATABASE_CHUNK) as u64,
        "changed {runs} runs of pages, new {}",
        day.bytes_new
    );
    assert!(
        day.bytes_stored < (pages * 4096) as u64,
        "changed {pages} pages, stored {day:?}"
    );
    assert!(day.bytes_stored * 20 < after.len() as u64, "{day:?}");
}

#[test]
fn live_sqlite_writer_still_yields_consistent_snapshot() {
    let f = Fixture::fs();
    let (src, db) = f.app();
    tree::write_db(&db, 20_000, 5);
    let stop = AtomicBool::new(false);
    let written = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.busy_timeout(timing::PATIENCE).unwrap();
            while !stop.load(Ordering::Relaxed) {
                tree::insert_messages(&conn, 50, 100 + written.load(Ordering::Relaxed));
                written.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Each backup starts after the writer committed again, however the two
        // threads are scheduled.
        for round in 1..=3 {
            timing::wait_until("the writer commits", || {
                written.load(Ordering::Relaxed) >= round
            });
            f.backup(&src);
        }
        stop.store(true, Ordering::Relaxed);
    });
    let target = f.dir.path().join("restored");
    f.restore_latest(&target).unwrap();
    assert!(!target.join("app/msgstore.db-wal").exists());
    let conn = rusqlite::Connection::open(target.join("app/msgstore.db")).unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM message", [], |r| r.get(0))
        .unwrap();
    assert!(rows >= 20_000);
}

#[test]
fn a_database_restores_as_its_own_bytes_pending_write_ahead_log_included() {
    let f = Fixture::fs();
    let (src, db) = f.app();
    tree::write_db(&db, 5_000, 7);
    // The app stays open with transactions only in its write-ahead log.
    let app = rusqlite::Connection::open(&db).unwrap();
    app.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    tree::insert_messages(&app, 500, 8);
    let wal = src.join("msgstore.db-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0, "no pending WAL");
    f.backup(&src);
    // What the backup stored is the database the app has once it checkpoints: the
    // same bytes, header included (no copy rewrote counters).
    app.pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .unwrap();
    drop(app);
    let target = f.dir.path().join("restored");
    f.restore_latest(&target).unwrap();
    let restored = std::fs::read(target.join("app/msgstore.db")).unwrap();
    assert!(
        restored == std::fs::read(&db).unwrap(),
        "restored database differs"
    );
    assert!(!target.join("app/msgstore.db-wal").exists());
}

#[test]
fn wrong_key_is_named_and_writes_nothing() {
    let f = Fixture::memory();
    let src = tree::write_sample(f.dir.path(), 6);
    f.backup(&src);
    let other = BackupKey::generate();
    let err = Repository::open(f.store.clone(), &other, f.home())
        .err()
        .unwrap();
    assert!(matches!(err, RepoError::WrongKey));
    assert_eq!(
        err.to_string().split(':').next().unwrap(),
        "this key does not open this repository"
    );
}

fn assert_restore_fails_cleanly(f: &Fixture, object: &str) {
    let target = f.dir.path().join("target");
    let err = f.restore_latest(&target).unwrap_err().to_string();
    assert!(err.contains(object), "error {err:?} does not name {object}");
    assert!(!target.exists(), "partial restore left at target");
    let leftovers: Vec<_> = std::fs::read_dir(f.dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("backlock-partial")
        })
        .collect();
    assert!(leftovers.is_empty(), "staging directory left behind");
}

fn check_errors(f: &Fixture) -> Vec<String> {
    Repository::open(f.store.clone(), &f.key, f.home())
        .unwrap()
        .check(true)
        .unwrap()
        .errors
}

#[test]
fn every_kind_of_damage_is_caught_and_named() {
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 3] = [
        ("flipped", |d| {
            let i = d.len() / 2;
            d[i] ^= 0x40
        }),
        ("truncated", |d| d.truncate(d.len() - 100)),
        ("emptied", |d| d.clear()),
    ];
    for kind in [ObjectKind::Pack, ObjectKind::Index, ObjectKind::Snapshot] {
        for (what, damage) in damages {
            let f = Fixture::memory();
            let src = tree::write_sample(f.dir.path(), 7);
            f.backup(&src);
            let victim = f.store.list(kind).unwrap()[0].name.clone();
            f.mem.as_ref().unwrap().tamper(kind, &victim, damage);
            let errors = check_errors(&f);
            assert!(
                errors.iter().any(|e| e.contains(&victim)),
                "{what} {kind:?}: {errors:?}"
            );
            assert_restore_fails_cleanly(&f, &victim);
        }
    }
}

#[test]
fn swapped_and_deleted_objects_are_caught() {
    let f = Fixture::memory();
    let src = tree::write_sample(f.dir.path(), 8);
    f.backup(&src);
    std::fs::write(src.join("new.txt"), tree::random_bytes(9, 2_000_000)).unwrap();
    f.backup(&src);
    // Swap: serve the older snapshot's bytes under the newest one's name.
    let mut snaps = f.store.list(ObjectKind::Snapshot).unwrap();
    snaps.sort_by(|a, b| a.name[16..].cmp(&b.name[16..]));
    let old = f.store.get(ObjectKind::Snapshot, &snaps[0].name).unwrap();
    f.store
        .put(ObjectKind::Snapshot, &snaps[1].name, &old)
        .unwrap();
    assert!(check_errors(&f).iter().any(|e| e.contains(&snaps[1].name)));
    assert_restore_fails_cleanly(&f, &snaps[1].name);

    let f = Fixture::memory();
    let src = tree::write_sample(f.dir.path(), 8);
    f.backup(&src);
    let pack = f.store.list(ObjectKind::Pack).unwrap()[0].name.clone();
    f.store.delete(ObjectKind::Pack, &pack).unwrap();
    assert!(check_errors(&f)
        .iter()
        .any(|e| e.contains(&pack) && e.contains("missing")));
    assert_restore_fails_cleanly(&f, &pack);
}

#[test]
fn store_serving_an_older_snapshot_is_caught() {
    let f = Fixture::memory();
    let src = tree::write_sample(f.dir.path(), 10);
    f.backup(&src);
    f.backup(&src);
    // The store "loses" the newest snapshot, serving the older one as newest.
    let snaps = f.store.list(ObjectKind::Snapshot).unwrap();
    let newest = snaps.iter().max_by_key(|o| &o.name[16..]).unwrap();
    f.store.delete(ObjectKind::Snapshot, &newest.name).unwrap();
    let repo = Repository::open(f.store.clone(), &f.key, f.home()).unwrap();
    assert!(matches!(
        repo.snapshot_refs(),
        Err(RepoError::Rollback { seen: 2, served: 1 })
    ));
    // A new phone (fresh device state) cannot know, and restores the older one.
    let fresh = DeviceHome::new(f.dir.path().join("new-phone"));
    assert!(Repository::open(f.store.clone(), &f.key, fresh)
        .unwrap()
        .snapshot_refs()
        .is_ok());
}

#[test]
fn forget_and_prune_free_space_and_keep_the_rest_restorable() {
    let f = Fixture::fs();
    let src = tree::write_sample(f.dir.path(), 11);
    f.backup(&src);
    std::fs::remove_file(src.join("Media/Video/deep/er/VID-1.mp4")).unwrap();
    std::fs::write(src.join("other.bin"), tree::random_bytes(1012, 1_500_000)).unwrap();
    f.backup(&src);
    let size = |s: &Arc<dyn ObjectStore>| {
        s.list(ObjectKind::Pack)
            .unwrap()
            .iter()
            .map(|o| o.size)
            .sum::<u64>()
    };
    let before = size(&f.store);
    let forgot = f.open().forget_keep_last(1).unwrap();
    assert_eq!((forgot.removed.len(), forgot.kept), (1, 1));
    let pruned = f.pruner().prune().unwrap();
    let after = size(&f.store);
    assert!(
        after + 2_500_000 < before,
        "{before} -> {after}: {pruned:?}"
    );
    assert!(check_errors(&f).is_empty());
    let target = f.dir.path().join("restored");
    f.restore_latest(&target).unwrap();
    tree::assert_same(&src, &target.join("chat"));
    assert!(f.open().forget_keep_last(0).is_err());
}

#[test]
fn full_restore_target_reports_and_leaves_nothing() {
    // A real full disk: a 2 MiB tmpfs (needs root, which CI has).
    let f = Fixture::memory();
    let src = tree::write_sample(f.dir.path(), 13);
    f.backup(&src);
    let mnt = f.dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "this test needs root to mount a small tmpfs");
    let target = mnt.join("restore");
    let err = f.restore_latest(&target).unwrap_err();
    let leftover = tree::list_files(&mnt);
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    assert!(matches!(err, RepoError::Target { .. }), "{err}");
    assert!(err.to_string().contains("free space"), "{err}");
    assert!(leftover.is_empty(), "left {leftover:?}");
}

#[test]
fn full_store_fails_backup_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("store");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "this test needs root to mount a small tmpfs");
    let result = std::panic::catch_unwind(|| {
        let f = Fixture::with(Arc::new(FsStore::new(mnt.join("repo"))), None);
        let small = f.dir.path().join("small");
        std::fs::create_dir(&small).unwrap();
        std::fs::write(small.join("a.txt"), b"first backup").unwrap();
        f.backup(&small);
        let big = tree::write_sample(f.dir.path(), 14);
        std::fs::write(big.join("huge.bin"), tree::random_bytes(15, 8_000_000)).unwrap();
        let opts = BackupOptions {
            paths: vec![big.clone()],
            ..Default::default()
        };
        let err = f.repo().backup(&opts).unwrap_err();
        assert!(err.to_string().contains("full"), "{err}");
        // The first snapshot still restores.
        let target = f.dir.path().join("restored");
        f.restore_latest(&target).unwrap();
        assert_eq!(
            std::fs::read(target.join("small/a.txt")).unwrap(),
            b"first backup"
        );
    });
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    result.unwrap();
}

#[test]
fn prune_and_backup_never_overlap() {
    use backlock_core::{envelope, format, kdf::RepoKeys};
    let f = Fixture::fs();
    let src = tree::write_sample(f.dir.path(), 20);
    f.backup(&src);
    // A running backup (shared lock) blocks prune, but not another backup or a check.
    let running = f.open().lock(false).unwrap();
    assert!(matches!(
        f.open().load_index_exclusive(),
        Err(RepoError::Locked { .. })
    ));
    f.backup(&src);
    assert!(check_errors(&f).is_empty());
    drop(running);
    // A running prune (exclusive lock) blocks backups and checks.
    let pruning = f.open().lock(true).unwrap();
    let opts = BackupOptions {
        paths: vec![src.clone()],
        ..Default::default()
    };
    assert!(matches!(
        f.open().load_index(),
        Err(RepoError::Locked { .. })
    ));
    let check = Repository::open(f.store.clone(), &f.key, f.home())
        .unwrap()
        .check(false);
    assert!(matches!(check, Err(RepoError::Locked { .. })));
    drop(pruning);
    f.pruner().prune().unwrap();
    assert!(
        f.store.list(ObjectKind::Lock).unwrap().is_empty(),
        "an operation kept its lock"
    );

    // Another device's exclusive lock: honoured while fresh, ignored after an hour.
    let keys = RepoKeys::derive(&f.key);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // Issue 18 (3): a container with the same host name, whose process this one cannot
    // see in /proc, is another holder too: its lock is not taken for a dead one.
    let same_name_elsewhere = format!("{} [another-boot pid:[1]]", backlock_repo::hostname());
    for (holder, age, blocks) in [
        ("other-phone".to_string(), 0, true),
        (backlock_repo::hostname(), 0, true),
        (same_name_elsewhere, 0, true),
        (
            "other-phone".to_string(),
            backlock_repo::STALE_AFTER_SECS + 60,
            false,
        ),
    ] {
        let lock = format::Lock {
            exclusive: true,
            hostname: holder,
            pid: u32::MAX - 1,
            time_unix: now - age,
        };
        let name = "0123456789abcdef0123456789abcdef";
        let sealed = envelope::seal(&keys, ObjectKind::Lock, name, &format::encode(&lock));
        f.store.put(ObjectKind::Lock, name, &sealed).unwrap();
        let result = f.open().load_index().and_then(|r| r.backup(&opts));
        assert_eq!(
            matches!(result, Err(RepoError::Locked { .. })),
            blocks,
            "age {age}: {result:?}"
        );
        f.store.delete(ObjectKind::Lock, name).unwrap();
    }
    // A lock left by a dead process on this host is cleaned up by the next operation.
    let dead = format::Lock {
        exclusive: true,
        hostname: backlock_repo::holder_identity(),
        pid: u32::MAX - 1,
        time_unix: now,
    };
    let name = "fedcba9876543210fedcba9876543210";
    f.store
        .put(
            ObjectKind::Lock,
            name,
            &envelope::seal(&keys, ObjectKind::Lock, name, &format::encode(&dead)),
        )
        .unwrap();
    f.backup(&src);
    assert!(f.store.list(ObjectKind::Lock).unwrap().is_empty());
}

/// `unlock` removes what no running operation holds (a lock not refreshed for an
/// hour, one that does not open under the key) and leaves a fresh one of another
/// host, which only `--remove-all` removes; a backup the fresh one blocked then runs.
#[test]
fn unlock_removes_stale_and_made_up_locks_and_leaves_live_ones() {
    use backlock_core::{envelope, format, kdf::RepoKeys};
    let f = Fixture::memory();
    let src = tree::write_sample(f.dir.path(), 3);
    f.backup(&src);
    let keys = RepoKeys::derive(&f.key);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let put = |name: &str, holder: &str, age: i64| {
        let lock = format::Lock {
            exclusive: true,
            hostname: holder.into(),
            pid: 4242,
            time_unix: now - age,
        };
        let sealed = envelope::seal(&keys, ObjectKind::Lock, name, &format::encode(&lock));
        f.store.put(ObjectKind::Lock, name, &sealed).unwrap();
    };
    let (stale, fresh, forged) = (
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
        "33333333333333333333333333333333",
    );
    put(stale, "old-laptop", backlock_repo::STALE_AFTER_SECS + 60);
    put(fresh, "other-phone", 10);
    f.store
        .put(ObjectKind::Lock, forged, b"not a lock")
        .unwrap();
    // A made-up lock object stops every operation until it is removed.
    assert!(f.open().load_index().is_err());

    let (removed, left) = f.open().unlock(false).unwrap();
    let names = |v: &[backlock_repo::LockInfo]| {
        let mut n: Vec<String> = v.iter().map(|l| l.name.clone()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&removed), [stale, forged]);
    assert_eq!(names(&left), [fresh]);
    assert_eq!(left[0].host, "other-phone");
    let blocked = f.open().load_index().and_then(|r| {
        r.backup(&BackupOptions {
            paths: vec![src.clone()],
            ..Default::default()
        })
    });
    assert!(
        matches!(blocked, Err(RepoError::Locked { .. })),
        "{blocked:?}"
    );

    let (removed, left) = f.open().unlock(true).unwrap();
    assert_eq!(names(&removed), [fresh]);
    assert!(left.is_empty());
    f.backup(&src);
    assert!(f.store.list(ObjectKind::Lock).unwrap().is_empty());
}

/// `check --read-data-subset n/m`: the groups 1/m to m/m read every pack once
/// between them, and a pack damaged in the store is caught by its group's run and
/// by no other.
#[test]
fn read_data_subsets_cover_every_pack_once_and_find_the_damaged_one() {
    use backlock_repo::DataSubset;
    let f = Fixture::memory();
    let src = tree::write_sample(f.dir.path(), 2);
    for i in 0..4 {
        std::fs::write(
            src.join(format!("Media/v{i}.mp4")),
            tree::random_bytes(40 + i, 3_000_000),
        )
        .unwrap();
    }
    f.backup(&src);
    let packs = f.store.list(ObjectKind::Pack).unwrap();
    assert!(packs.len() >= 3, "{}", packs.len());
    let read = |n| {
        f.open()
            .check_reading(DataSubset::Group { n, m: 3 })
            .unwrap()
    };
    let counts: Vec<usize> = (1..=3).map(|n| read(n).packs_read).collect();
    assert_eq!(counts.iter().sum::<usize>(), packs.len(), "{counts:?}");
    assert_eq!(
        f.open().check_reading(DataSubset::All).unwrap().packs_read,
        packs.len()
    );
    assert_eq!(
        f.open()
            .check_reading(DataSubset::Nothing)
            .unwrap()
            .packs_read,
        0
    );

    // One byte flipped in the middle of the largest pack.
    let victim = packs.iter().max_by_key(|p| p.size).unwrap().name.clone();
    let mut data = f.store.get(ObjectKind::Pack, &victim).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 1;
    f.store.put(ObjectKind::Pack, &victim, &data).unwrap();
    let found: Vec<bool> = (1..=3)
        .map(|n| read(n).errors.iter().any(|e| e.contains(&victim)))
        .collect();
    assert_eq!(found.iter().filter(|&&x| x).count(), 1, "{found:?}");
    assert!(
        f.open().check(false).unwrap().errors.is_empty(),
        "the structure is intact"
    );

    assert_eq!("2/7".parse(), Ok(DataSubset::Group { n: 2, m: 7 }));
    assert_eq!("12.5%".parse(), Ok(DataSubset::Percent(12.5)));
    for bad in ["0/3", "4/3", "x/3", "0%", "101%", "half"] {
        let e = bad.parse::<DataSubset>().unwrap_err();
        assert!(e.contains(&format!("{bad:?}")), "{e}");
    }
}

/// Data → index → snapshot, each made durable before the next names it: every pack an
/// index names was put before a flush that precedes the index, and the snapshot is put
/// after a flush that follows the last index, then flushed itself.
#[test]
fn commit_order_makes_each_step_durable_before_the_next() {
    use backlock_core::{envelope, format, kdf::RepoKeys};
    use backlock_testkit::recording::{Op, RecordingStore};
    let rec = Arc::new(RecordingStore::new());
    let f = Fixture::with(rec.clone(), None);
    let src = tree::write_sample(f.dir.path(), 30);
    // Enough data for several periodic index objects as well as the final one.
    for i in 0..5 {
        std::fs::write(
            src.join(format!("Media/big-{i}.bin")),
            tree::random_bytes(300 + i, 12_000_000),
        )
        .unwrap();
    }
    f.backup(&src);
    let log = rec.log();
    let keys = RepoKeys::derive(&f.key);
    let last_flush_before = |i: usize| {
        log[..i]
            .iter()
            .rposition(|o| *o == Op::Flush)
            .expect("a flush")
    };
    let put_at = |kind, name: &str| {
        log.iter()
            .position(|o| *o == Op::Put(kind, name.to_string()))
            .unwrap()
    };
    let (mut indexes, mut snapshots) = (0, 0);
    for (i, op) in log.iter().enumerate() {
        match op {
            Op::Put(ObjectKind::Index, name) => {
                indexes += 1;
                let sealed = rec.inner.get(ObjectKind::Index, name).unwrap();
                let (v, plain) =
                    envelope::open_versioned(&keys, ObjectKind::Index, name, &sealed).unwrap();
                let file = format::IndexFile::decode(v, &plain).unwrap();
                for pack in file.packs {
                    assert!(put_at(ObjectKind::Pack, &pack.pack.to_hex()) < last_flush_before(i));
                }
            }
            Op::Put(ObjectKind::Snapshot, _) => {
                snapshots += 1;
                let last_index = log[..i]
                    .iter()
                    .rposition(|o| matches!(o, Op::Put(ObjectKind::Index, _)))
                    .unwrap();
                assert!(
                    last_index < last_flush_before(i),
                    "snapshot put before its index was flushed"
                );
                assert!(log[i + 1..].contains(&Op::Flush), "snapshot never flushed");
            }
            _ => {}
        }
    }
    assert!(
        indexes >= 2 && snapshots == 1,
        "{indexes} indexes, {snapshots} snapshots"
    );
}

/// A database's new page list is written over its parent's list as the pages are
/// read: one that shrank or grew since the parent restores exact, as do the snapshots
/// before it.
#[test]
fn a_database_that_shrank_or_grew_since_its_parent_restores_exact() {
    let f = Fixture::memory();
    let (src, db) = f.app();
    tree::write_db(&db, 20_000, 5);
    let shrink = |conn: &rusqlite::Connection| {
        conn.execute("DELETE FROM message WHERE id % 3 <> 0", [])
            .unwrap();
        conn.execute_batch("VACUUM").unwrap();
    };
    let grow = |conn: &rusqlite::Connection| tree::insert_messages(conn, 8_000, 6);
    let mut versions = vec![(f.backup(&src).snapshot, std::fs::read(&db).unwrap())];
    for change in [&shrink as &dyn Fn(&rusqlite::Connection), &grow] {
        let conn = rusqlite::Connection::open(&db).unwrap();
        change(&conn);
        conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
            .unwrap();
        drop(conn);
        versions.push((f.backup(&src).snapshot, std::fs::read(&db).unwrap()));
    }
    let sizes: Vec<usize> = versions.iter().map(|(_, bytes)| bytes.len()).collect();
    assert!(sizes[1] < sizes[0] && sizes[2] > sizes[1], "{sizes:?}");
    let repo = f.repo();
    for (i, (name, bytes)) in versions.iter().enumerate() {
        let target = f.dir.path().join(format!("restored-{i}"));
        repo.restore(&repo.find_snapshot(name).unwrap(), &target)
            .unwrap();
        let restored = std::fs::read(target.join("app/msgstore.db")).unwrap();
        assert!(restored == *bytes, "snapshot {i} ({name}) differs");
    }
}

/// A day of chatting in the database, checkpointed; returns the pages it changed.
fn chat_for_a_day(db: &Path, seed: u64) -> u64 {
    let before = std::fs::read(db).unwrap();
    let conn = rusqlite::Connection::open(db).unwrap();
    tree::insert_messages(&conn, 300, seed);
    conn.execute("UPDATE message SET status = 2 WHERE id % 997 = 0", [])
        .unwrap();
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .unwrap();
    drop(conn);
    let after = std::fs::read(db).unwrap();
    after
        .chunks(4096)
        .enumerate()
        .filter(|(i, p)| before.chunks(4096).nth(*i) != Some(*p))
        .count() as u64
}

/// Changed pages are stored as deltas of their previous version (docs/FORMAT.md
/// §Blobs, codec 2), a fraction of their compressed size; every snapshot restores bit
/// for bit, `check --read-data` decodes every delta, and pruning the snapshot that
/// first stored a base keeps that base, because a live delta needs it.
#[test]
fn changed_pages_are_stored_as_deltas_and_their_bases_outlive_prune() {
    let f = Fixture::fs();
    let (src, db) = f.app();
    tree::write_db(&db, 60_000, 3);
    let first = f.backup(&src);
    let changed = chat_for_a_day(&db, 4);
    let day = f.backup(&src);
    // Stored whole, the new pages would cost what the first backup's pages cost
    // (compressed) per byte; as deltas they cost less than half of that, snapshot
    // and index included.
    let whole = day.bytes_new as f64 * first.bytes_stored as f64 / first.bytes_new as f64;
    eprintln!(
        "{changed} pages changed: stored {} bytes, whole pages would be {whole:.0}",
        day.bytes_stored
    );
    assert!((day.bytes_stored as f64) < whole / 2.0, "{day:?}");
    let day2_changed = chat_for_a_day(&db, 5);
    let day2 = f.backup(&src);
    eprintln!(
        "day 2: changed {day2_changed}, stored {}",
        day2.bytes_stored
    );

    let report = Repository::open(f.store.clone(), &f.key, f.home())
        .unwrap()
        .check(true)
        .unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    let target = f.dir.path().join("r1");
    f.restore_latest(&target).unwrap();
    tree::assert_same(&src, &target.join("app"));

    // Only the newest snapshot stays; the first one stored the bases.
    f.open().forget_keep_last(1).unwrap();
    f.pruner().prune().unwrap();
    let report = Repository::open(f.store.clone(), &f.key, f.home())
        .unwrap()
        .check(true)
        .unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    let target = f.dir.path().join("r2");
    f.restore_latest(&target).unwrap();
    tree::assert_same(&src, &target.join("app"));

    // A new key re-seals deltas and bases alike.
    let new_key = BackupKey::generate();
    Repository::open(f.store.clone(), &f.key, f.home())
        .unwrap()
        .rotate_key(&new_key)
        .unwrap();
    let repo = Repository::open(f.store.clone(), &new_key, f.home())
        .unwrap()
        .load_index()
        .unwrap();
    let target = f.dir.path().join("r3");
    repo.restore(&repo.find_snapshot("latest").unwrap(), &target)
        .unwrap();
    tree::assert_same(&src, &target.join("app"));
}

/// A store that drops the index objects of the backup that stored the bases of later
/// deltas: `check` says that the deltas the newest snapshot needs have bases no index
/// lists, besides the chunks of the first snapshot that no index lists.
#[test]
fn check_finds_deltas_whose_bases_no_index_lists() {
    let f = Fixture::fs();
    let (src, db) = f.app();
    tree::write_db(&db, 20_000, 3);
    f.backup(&src);
    let first: Vec<String> = f
        .store
        .list(ObjectKind::Index)
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    chat_for_a_day(&db, 4);
    f.backup(&src);
    let clean = f.open().check(false).unwrap();
    assert!(clean.errors.is_empty(), "{clean:?}");
    for name in &first {
        f.store.delete(ObjectKind::Index, name).unwrap();
    }
    let report = f.open().check(false).unwrap();
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains("stored as deltas of a chunk no index lists")),
        "{report:?}"
    );
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains("chunks that no index lists")),
        "{report:?}"
    );
}

/// Producers take files largest first and in parallel; the snapshot still lists
/// every entry once, in walk order (a directory before what it holds).
#[test]
fn snapshot_nodes_keep_walk_order_whatever_order_files_are_read_in() {
    let f = Fixture::memory();
    let src = f.dir.path().join("chat");
    let mut expected = vec!["chat".to_string()];
    for d in ["a", "b", "c"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
        expected.push(format!("chat/{d}"));
        for (i, name) in ["f", "g", "h", "i", "j"].iter().enumerate() {
            // Sizes rise and fall against name order, so largest-first differs from it.
            let len = 1000 + ((i * 7919 + d.len() * 104_729) % 300_000);
            let data: Vec<u8> = (0..len).map(|k| (k * 31 + i) as u8).collect();
            std::fs::write(src.join(d).join(name), data).unwrap();
            expected.push(format!("chat/{d}/{name}"));
        }
    }
    f.backup(&src);
    let repo = f.repo();
    let refs = repo.snapshot_refs().unwrap();
    let snapshot = repo.load_snapshot_nodes(refs.last().unwrap()).unwrap();
    let paths: Vec<String> = snapshot
        .nodes
        .iter()
        .map(|n| String::from_utf8(n.path.clone()).unwrap())
        .collect();
    assert_eq!(paths, expected);
    let target = f.dir.path().join("restored");
    f.restore_latest(&target).unwrap();
    tree::assert_same(&src, &target.join("chat"));
}

/// A database is cut into runs of whole pages, whatever its page size: 16 KiB runs of
/// small pages, one chunk per page of 16 KiB or more, a short last run; each restores
/// as its own bytes.
#[test]
fn databases_are_cut_into_runs_of_whole_pages_of_any_size() {
    let f = Fixture::memory();
    let src = f.dir.path().join("app");
    std::fs::create_dir(&src).unwrap();
    let sizes = [512usize, 4096, 65536];
    for page in sizes {
        let db = src.join(format!("p{page}.db"));
        let conn = rusqlite::Connection::open(&db).unwrap();
        // The page size sticks once the first table is written.
        conn.pragma_update(None, "page_size", page as i64).unwrap();
        conn.execute_batch("CREATE TABLE pad(x)").unwrap();
        drop(conn);
        let seed = page as u64;
        tree::write_db(&db, 3_001, seed);
    }
    f.backup(&src);
    let mut short_last_runs = 0;
    for page in sizes {
        let bytes = std::fs::read(src.join(format!("p{page}.db"))).unwrap();
        assert_eq!(backlock_core::chunker::sqlite_page_size(&bytes), Some(page));
        let node = f.latest_node(&format!("app/p{page}.db"));
        let run = page.max(backlock_core::chunker::DATABASE_CHUNK);
        assert_eq!(node.size, bytes.len() as u64, "page size {page}");
        assert_eq!(
            node.chunks.len(),
            bytes.len().div_ceil(run),
            "page size {page}"
        );
        short_last_runs += usize::from(bytes.len() % run != 0);
    }
    assert!(short_last_runs > 0, "no database ends in a short run");
    let target = f.dir.path().join("restored");
    f.restore_latest(&target).unwrap();
    for page in sizes {
        let name = format!("p{page}.db");
        assert!(
            std::fs::read(target.join("app").join(&name)).unwrap()
                == std::fs::read(src.join(&name)).unwrap(),
            "{name} differs"
        );
    }
}

/// A changed run is stored as a delta only of a parent chunk covering the same bytes.
/// After the page size changes (VACUUM), the parent's chunk at each position covers
/// other bytes, so no delta is tried, and none is stored.
#[test]
fn a_delta_base_covers_the_same_bytes_as_its_run() {
    let f = Fixture::memory();
    let (src, db) = f.app();
    tree::write_db(&db, 20_000, 9);
    f.backup(&src);
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA journal_mode=DELETE; PRAGMA page_size=65536; VACUUM;")
        .unwrap();
    drop(conn);
    let bytes = std::fs::read(&db).unwrap();
    assert_eq!(
        backlock_core::chunker::sqlite_page_size(&bytes),
        Some(65536)
    );
    f.backup(&src);
    let node = f.latest_node("app/msgstore.db");
    assert_eq!(node.chunks.len(), bytes.len().div_ceil(65536));
    let repo = f.repo();
    for id in &node.chunks {
        let blob = repo.index().get(id).unwrap().blob;
        if let Some(base) = blob.base {
            let base_len = repo.index().get(&base).unwrap().blob.raw_length;
            assert_eq!(base_len, blob.raw_length, "a delta against other bytes");
        }
    }
    let target = f.dir.path().join("restored");
    f.restore_latest(&target).unwrap();
    assert!(std::fs::read(target.join("app/msgstore.db")).unwrap() == bytes);
}

/// Seals `snapshot` as the newest snapshot object, as a device holding the key (or a
/// crafted backup) would write it.
fn commit_crafted(f: &Fixture, snapshot: &backlock_core::format::Snapshot) {
    use backlock_core::{envelope, ids::ObjectName, kdf::RepoKeys};
    let keys = RepoKeys::derive(&f.key);
    let name = ObjectName::for_snapshot(snapshot.seq).to_hex();
    let (version, plain) = snapshot.encode();
    let sealed = envelope::seal_as(&keys, (ObjectKind::Snapshot, version), &name, &plain);
    f.store.put(ObjectKind::Snapshot, &name, &sealed).unwrap();
}

/// Issue 18 (5): a snapshot with a symlink `chat/escape` pointing outside the target,
/// and a file `chat/escape/owned.txt` after it. Restore must not write through the
/// link: nothing appears outside the target, and nothing is left under its name.
#[test]
fn a_crafted_symlink_never_lets_restore_write_outside_its_target() {
    use backlock_core::format::{Node, NodeKind};
    let f = Fixture::fs();
    let src = tree::write_sample(f.dir.path(), 3);
    f.backup(&src);
    let outside = f.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();

    let repo = f.repo();
    let refs = repo.snapshot_refs().unwrap();
    let mut snap = repo.load_snapshot_nodes(refs.last().unwrap()).unwrap();
    // Crafted as a snapshot of nodes (version 2), which this build still reads.
    snap.root.clear();
    let notes = snap
        .nodes
        .iter()
        .find(|n| n.path == b"chat/notes.txt")
        .unwrap()
        .clone();
    let link = Node {
        path: b"chat/escape".to_vec(),
        kind: NodeKind::Symlink(outside.as_os_str().as_encoded_bytes().to_vec()),
        size: 0,
        chunks: Vec::new(),
        ..notes.clone()
    };
    let through = Node {
        path: b"chat/escape/owned.txt".to_vec(),
        ..notes
    };
    let at = snap
        .nodes
        .iter()
        .position(|n| n.path == b"chat/notes.txt")
        .unwrap();
    snap.nodes.insert(at, through);
    snap.nodes.insert(at, link);
    snap.seq += 1;
    commit_crafted(&f, &snap);

    let target = f.dir.path().join("restored");
    let e = f.restore_latest(&target).unwrap_err();
    assert!(matches!(e, RepoError::Target { .. }), "{e}");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "restore wrote through a symlink into {}",
        outside.display()
    );
    assert!(!target.exists());
}

/// Restore creates a file by its first write: a snapshot naming one path twice (only
/// a version-1 or -2 list of nodes can) is refused, never two files merged into one.
#[test]
fn a_crafted_snapshot_naming_a_path_twice_is_refused() {
    let f = Fixture::fs();
    let src = tree::write_sample(f.dir.path(), 3);
    f.backup(&src);
    let repo = f.repo();
    let refs = repo.snapshot_refs().unwrap();
    let mut snap = repo.load_snapshot_nodes(refs.last().unwrap()).unwrap();
    snap.root.clear();
    let at = snap
        .nodes
        .iter()
        .position(|n| n.path == b"chat/notes.txt")
        .unwrap();
    let again = snap.nodes[at].clone();
    snap.nodes.insert(at + 1, again);
    snap.seq += 1;
    commit_crafted(&f, &snap);

    let target = f.dir.path().join("restored");
    let e = f.restore_latest(&target).unwrap_err();
    assert!(
        matches!(e, RepoError::Damaged { .. }) && e.to_string().contains("listed twice"),
        "{e}"
    );
    assert!(!target.exists());
}

/// Issue 18 (5): setuid and setgid are restored only with the owner: a restored
/// program must not run as whoever restores it. Run as root here, the owner is
/// restored (and so are the bits); the CLI test `cli.rs` restores as `nobody`.
#[test]
fn restore_keeps_setuid_and_setgid_only_with_the_owner() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::fs();
    let (src, _) = f.app();
    let tool = src.join("tool");
    std::fs::write(&tool, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o6755)).unwrap();
    let sticky = src.join("shared");
    std::fs::create_dir(&sticky).unwrap();
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
    f.backup(&src);
    let target = f.dir.path().join("restored");
    f.restore_latest(&target).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let root = backlock_testkit::running_as_root();
    assert_eq!(
        mode(&target.join("app/tool")),
        if root { 0o6755 } else { 0o755 }
    );
    assert_eq!(mode(&target.join("app/shared")), 0o1777);
}

/// A snapshot a newer backlock wrote (it authenticates, with a version this build does
/// not read) stops the backup with "upgrade backlock"; one that only claims a newer
/// version (it does not authenticate) is passed over like any made-up object.
#[test]
fn a_newer_writers_snapshot_stops_the_backup_and_a_made_up_one_does_not() {
    use backlock_core::{envelope, ids::ObjectName, kdf::RepoKeys};
    let f = Fixture::memory();
    let src = tree::write_sample(f.dir.path(), 16);
    f.backup(&src);
    let keys = RepoKeys::derive(&f.key);
    let salt = [7u8; envelope::SALT_LEN];

    let made_up = ObjectName::for_snapshot(40).to_hex();
    let mut bytes =
        envelope::seal_any_version(&keys, (ObjectKind::Snapshot, 9), &made_up, b"\0x", &salt);
    *bytes.last_mut().unwrap() ^= 1;
    f.store.put(ObjectKind::Snapshot, &made_up, &bytes).unwrap();
    let s = f.backup(&src);
    assert_eq!(s.seq, 2);
    assert_eq!(s.ignored_snapshots.len(), 1, "{:?}", s.ignored_snapshots);

    let newer = ObjectName::for_snapshot(50).to_hex();
    let bytes = envelope::seal_any_version(&keys, (ObjectKind::Snapshot, 9), &newer, b"\0x", &salt);
    f.store.put(ObjectKind::Snapshot, &newer, &bytes).unwrap();
    let opts = BackupOptions {
        paths: vec![src.clone()],
        ..Default::default()
    };
    let e = f.repo().backup(&opts).unwrap_err();
    assert!(matches!(e, RepoError::Newer { .. }), "{e}");
    assert!(e.to_string().contains("upgrade backlock"), "{e}");
}

/// Issue 18 (7): the writer never writes an object the reader would refuse. With a
/// small limit (as 2 GiB is to the index of a large repository), a backup whose index
/// cannot be written within it is refused before anything names it, and prune writes
/// its index in as many objects as keep each within it, every snapshot still
/// restoring. (A snapshot is its root tree now, a few hundred bytes whatever it holds.)
#[test]
fn objects_over_the_readers_limit_are_split_or_never_written() {
    let f = Fixture::memory();
    let (src, _) = f.app();
    for i in 0..6 {
        std::fs::write(
            src.join(format!("VID-{i}.mp4")),
            tree::random_bytes(60 + i, 10_000_000),
        )
        .unwrap();
    }
    let first = f.backup(&src);
    let keys = backlock_core::kdf::RepoKeys::derive(&f.key);
    let index_files = || -> Vec<backlock_core::format::IndexFile> {
        f.store
            .list(ObjectKind::Index)
            .unwrap()
            .iter()
            .map(|info| {
                let sealed = f.store.get(ObjectKind::Index, &info.name).unwrap();
                let (version, plain) = backlock_core::envelope::open_versioned(
                    &keys,
                    ObjectKind::Index,
                    &info.name,
                    &sealed,
                )
                .unwrap();
                backlock_core::format::IndexFile::decode(version, &plain).unwrap()
            })
            .collect()
    };
    // The index's whole payload, and the largest one pack's entry takes.
    let files = index_files();
    let whole: u64 = files.iter().map(|i| i.to_postcard().1.len() as u64).sum();
    let largest = files
        .iter()
        .flat_map(|i| &i.packs)
        .map(|p| {
            backlock_core::format::IndexFile {
                packs: vec![p.clone()],
            }
            .to_postcard()
            .1
            .len() as u64
        })
        .max()
        .unwrap();
    let index_objects = || f.store.list(ObjectKind::Index).unwrap().len();
    let opts = BackupOptions {
        paths: vec![src.clone()],
        hostname: "test".into(),
        ..Default::default()
    };

    // No pack's entry fits: refused, nothing committed.
    std::fs::write(src.join("note.txt"), b"one more").unwrap();
    let e = f
        .open()
        .with_object_limit(10)
        .load_index()
        .unwrap()
        .backup(&opts)
        .unwrap_err();
    assert!(matches!(e, RepoError::TooLarge { .. }), "{e}");
    assert_eq!(f.repo().snapshot_refs().unwrap().len(), 1);

    // Prune under a limit that the whole index exceeds: several index objects, each
    // within the limit, and everything restores.
    let limit = largest.max(whole / 3);
    assert!(limit < whole);
    let second = f
        .open()
        .with_object_limit(limit)
        .load_index()
        .unwrap()
        .backup(&opts)
        .unwrap();
    assert!(second.seq > first.seq);
    f.open()
        .with_object_limit(limit)
        .load_index_exclusive()
        .unwrap()
        .prune()
        .unwrap();
    assert!(index_objects() > 1, "prune wrote one index object");
    for file in index_files() {
        assert!(file.to_postcard().1.len() as u64 <= limit);
    }
    let target = f.dir.path().join("restored");
    f.restore_latest(&target).unwrap();
    tree::assert_same(&src, &target.join("app"));
}

/// A newer build raised the repository's writer level above this build's: this build
/// refuses to back up, forget, prune or rotate there ("upgrade backlock"), and
/// changes nothing; it still lists, checks and restores.
#[test]
fn a_repository_a_newer_writer_raised_is_read_but_never_changed() {
    use backlock_core::{envelope, format, kdf::RepoKeys};
    let f = Fixture::memory();
    let src = tree::write_sample(f.dir.path(), 17);
    f.backup(&src);
    let keys = RepoKeys::derive(&f.key);
    let sealed = f
        .store
        .get(ObjectKind::Config, format::CONFIG_NAME)
        .unwrap();
    let (version, plain) =
        envelope::open_versioned(&keys, ObjectKind::Config, format::CONFIG_NAME, &sealed).unwrap();
    let mut config = format::Config::decode(version, &plain).unwrap();
    assert_eq!(config.writer_level, format::WRITER_LEVEL);
    config.writer_level = format::WRITER_LEVEL + 1;
    let (version, plain) = config.encode();
    let raised = envelope::seal_as(
        &keys,
        (ObjectKind::Config, version),
        format::CONFIG_NAME,
        &plain,
    );
    f.store
        .put(ObjectKind::Config, format::CONFIG_NAME, &raised)
        .unwrap();
    let before = stored_objects(&*f.store);

    let refused = |e: RepoError| {
        assert!(matches!(e, RepoError::UpgradeNeeded { .. }), "{e}");
        assert!(e.to_string().contains("upgrade backlock"), "{e}");
    };
    let opts = BackupOptions {
        paths: vec![src.clone()],
        ..Default::default()
    };
    refused(f.repo().backup(&opts).unwrap_err());
    refused(f.open().forget_keep_last(1).unwrap_err());
    refused(f.pruner().prune().unwrap_err());
    refused(f.open().rotate_key(&BackupKey::generate()).unwrap_err());
    assert_eq!(stored_objects(&*f.store), before);

    assert!(f.open().check(true).unwrap().errors.is_empty());
    let target = f.dir.path().join("restored");
    f.restore_latest(&target).unwrap();
    tree::assert_same(&src, &target.join("chat"));
}

/// Every object the store holds but locks, with its bytes.
fn stored_objects(store: &dyn ObjectStore) -> Vec<(String, String, Vec<u8>)> {
    let mut out = Vec::new();
    for kind in ObjectKind::ALL {
        if kind == ObjectKind::Lock {
            continue;
        }
        for o in store.list(kind).unwrap() {
            let bytes = store.get(kind, &o.name).unwrap();
            out.push((kind.as_str().to_owned(), o.name, bytes));
        }
    }
    out
}

/// Progress arrives one report at a time and never goes back, however many producers
/// read at once (a progress bar that jumps back, or a listener called from two threads
/// at once, is what an app would see otherwise); the last report is the whole backup.
#[test]
fn progress_reports_never_overlap_or_go_back() {
    let f = Fixture::memory();
    let src = f.dir.path().join("chat");
    std::fs::create_dir(&src).unwrap();
    let mut total = 0u64;
    for i in 0..64u64 {
        let data = tree::random_bytes(i, 40_000 + (i as usize * 9_973) % 200_000);
        total += data.len() as u64;
        std::fs::write(src.join(format!("m{i:02}.jpg")), data).unwrap();
    }
    let inside = AtomicBool::new(false);
    let overlapped = AtomicBool::new(false);
    let reports = std::sync::Mutex::new(Vec::new());
    let on = |p: backlock_repo::Progress| {
        if inside.swap(true, Ordering::SeqCst) {
            overlapped.store(true, Ordering::SeqCst);
        }
        // A listener that takes a moment (a UI thread hop) widens any race.
        std::thread::yield_now();
        reports.lock().unwrap().push(p);
        inside.store(false, Ordering::SeqCst);
    };
    let opts = BackupOptions {
        paths: vec![src.clone()],
        hostname: "test".into(),
        progress: Some(&on),
        ..Default::default()
    };
    f.repo().backup(&opts).unwrap();
    assert!(!overlapped.load(Ordering::SeqCst), "two reports at once");
    let reports = reports.into_inner().unwrap();
    // Reports that would have overlapped are skipped, but some come before the last.
    assert!(reports.len() >= 2, "{} reports", reports.len());
    for pair in reports.windows(2) {
        assert!(pair[0].bytes_done <= pair[1].bytes_done, "{pair:?}");
        assert!(pair[0].files_done <= pair[1].files_done, "{pair:?}");
    }
    let last = reports.last().unwrap();
    assert_eq!((last.bytes_done, last.files_done), (total, 64));
    assert_eq!((last.bytes_total, last.files_total), (total, 64));
}
