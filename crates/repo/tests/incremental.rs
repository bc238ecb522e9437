//! A backup on top of a parent reads only what changed: the walk follows the parent's
//! trees directory by directory, batch after batch, and a parent whose trees the store
//! lost costs a full read, never data.

use backlock_core::{envelope::ObjectKind, key::BackupKey};
use backlock_repo::{BackupOptions, BackupSummary, DeviceHome, Repository};
use backlock_store::{FsStore, ObjectStore};
use backlock_testkit::tree;
use std::{fs, path::Path, sync::Arc};

struct Repo {
    store: Arc<FsStore>,
    key: BackupKey,
    home: DeviceHome,
    opts: BackupOptions<'static>,
    /// Index entries each command holds in memory (`None`: the default).
    in_memory: Option<usize>,
}

impl Repo {
    fn new(dir: &Path, src: &Path) -> Self {
        let store = Arc::new(FsStore::new(dir.join("repo")));
        let key = BackupKey::generate();
        let home = DeviceHome::new(dir.join("home"));
        Repository::init(store.clone(), &key, home.clone()).unwrap();
        let opts = BackupOptions {
            paths: vec![src.to_path_buf()],
            hostname: "test".into(),
            ..Default::default()
        };
        Repo {
            store,
            key,
            home,
            opts,
            in_memory: None,
        }
    }

    fn open_only(&self) -> Repository {
        let repo = Repository::open(self.store.clone(), &self.key, self.home.clone()).unwrap();
        match self.in_memory {
            Some(entries) => repo.with_index_in_memory(entries),
            None => repo,
        }
    }

    fn open(&self) -> Repository<backlock_repo::Indexed> {
        self.open_only().load_index().unwrap()
    }

    fn backup(&self) -> BackupSummary {
        self.open().backup(&self.opts).unwrap()
    }

    /// Restores the latest snapshot under `target`; checks it equals `src`.
    fn restores_as(&self, src: &Path, target: &Path) {
        let repo = self.open();
        repo.restore(&repo.find_snapshot("latest").unwrap(), target)
            .unwrap();
        tree::assert_same(src, &target.join(src.file_name().unwrap()));
    }
}

/// Files in each of [`write_tree`]'s 60 directories: 9,000 in all, more entries than a
/// backup hands its producers at once (and than a restore writes at once), so trees
/// are followed across batches.
const PER_DIR: u64 = 150;

fn write_tree(src: &Path, per_dir: u64) -> u64 {
    let mut files = 0;
    for d in 0..60 {
        let dir = src
            .join(format!("chat{:02}/media", d % 6))
            .join(format!("d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..per_dir {
            fs::write(
                dir.join(format!("f{f:03}.bin")),
                format!("{d}/{f}").repeat(20),
            )
            .unwrap();
            files += 1;
        }
    }
    files
}

#[test]
fn a_backup_reads_only_what_changed_across_directories_and_batches() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("app");
    let files = write_tree(&src, PER_DIR);
    let repo = Repo::new(dir.path(), &src);
    let first = repo.backup();
    assert_eq!((first.files, first.files_unchanged), (files, 0));

    // Changes at the start, in the middle and at the end of the walk, one file gone,
    // a directory of new files, and a file where a directory was.
    let changed: &[(&str, &[u8])] = &[
        ("chat00/media/d00/f000.bin", b"first, changed"),
        ("chat03/media/d33/f117.bin", b"middle, changed"),
        ("chat05/media/d59/f149.bin", b"last, changed"),
        ("chat01/new/a.bin", b"new a"),
        ("chat01/new/b.bin", b"new b"),
    ];
    for (path, body) in changed {
        let path = src.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, body).unwrap();
    }
    fs::remove_file(src.join("chat02/media/d02/f050.bin")).unwrap();
    fs::remove_dir_all(src.join("chat04/media/d10")).unwrap();
    fs::write(src.join("chat04/media/d10"), b"a file now").unwrap();
    let changed_bytes: u64 = changed.iter().map(|(_, b)| b.len() as u64).sum::<u64>() + 10;

    let second = repo.backup();
    let now = files + 2 - 1 - PER_DIR + 1;
    assert_eq!(second.files, now);
    assert_eq!(second.files_unchanged, now - 6, "{second:?}");
    assert_eq!(second.bytes_read, changed_bytes);

    // Nothing changed: nothing read.
    let third = repo.backup();
    assert_eq!((third.files_unchanged, third.bytes_read), (now, 0));

    // A restore holds one batch of files at a time: a hard link whose first name was
    // restored batches earlier, and a database whose changed pages are deltas of a
    // version no restored file holds, come back exactly.
    let db = src.join("zz/msgstore.db");
    fs::create_dir_all(db.parent().unwrap()).unwrap();
    tree::write_db(&db, 3000, 1);
    let first = src.join("chat00/media/d00/f001.bin");
    fs::hard_link(&first, src.join("zz/link-to-first.bin")).unwrap();
    repo.backup();
    let conn = rusqlite::Connection::open(&db).unwrap();
    tree::insert_messages(&conn, 300, 2);
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .unwrap();
    drop(conn);
    repo.backup();
    let target = dir.path().join("restored");
    repo.restores_as(&src, &target);
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    assert_eq!(
        inode(&target.join("app/chat00/media/d00/f001.bin")),
        inode(&target.join("app/zz/link-to-first.bin"))
    );
}

/// The store lost the pack of the parent's trees: the next backup cannot tell what
/// changed, so it reads every file again and says so; `check` names the lost pack
/// (the index still lists its trees, so the new snapshot's unchanged directories
/// point there until the index is repaired).
#[test]
fn a_parent_whose_trees_are_lost_costs_a_full_read_not_data() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("app");
    let files = write_tree(&src, 5);
    let repo = Repo::new(dir.path(), &src);
    repo.backup();
    let opened = repo.open();
    let snap = opened
        .load_snapshot(&opened.find_snapshot("latest").unwrap())
        .unwrap();
    let tree_pack = opened.index().get(&snap.root[0]).unwrap().pack;
    repo.store
        .delete(ObjectKind::Pack, &tree_pack.to_hex())
        .unwrap();
    drop(opened);

    let second = repo.backup();
    assert_eq!((second.files, second.files_unchanged), (files, 0));
    assert!(
        second
            .warnings
            .iter()
            .any(|w| w.contains("previous snapshot's directories cannot be read")),
        "{:?}",
        second.warnings
    );
    let report = Repository::open(repo.store.clone(), &repo.key, repo.home.clone())
        .unwrap()
        .check(false)
        .unwrap();
    let lost = tree_pack.to_hex();
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains(&lost) && e.contains("missing")),
        "{:?}",
        report.errors
    );
}

/// An index larger than a command may hold in memory is kept in a scratch file: every
/// command (backup with and without changes, deltas, restore, check reading every
/// blob, forget and prune) gives the answers it gives with the index in memory.
#[test]
fn an_index_larger_than_memory_serves_every_command_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("app");
    write_tree(&src, 5);
    let db = src.join("zz/msgstore.db");
    fs::create_dir_all(db.parent().unwrap()).unwrap();
    tree::write_db(&db, 1500, 1);
    let mut repo = Repo::new(dir.path(), &src);
    // 300 files, their trees and a database's chunks: several runs of 64.
    repo.in_memory = Some(64);
    let first = repo.backup();
    assert!(repo.open().index().is_spilled());
    assert!(repo.open().index().len() > 300);

    fs::write(src.join("chat03/media/d33/f002.bin"), b"changed").unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    tree::insert_messages(&conn, 200, 2);
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .unwrap();
    drop(conn);
    let second = repo.backup();
    assert_eq!(second.files_unchanged, first.files - 2, "{second:?}");
    // Nothing changed: only the database is read (a live database is always read
    // through SQLite; its pages are found in the index).
    let third = repo.backup();
    let db_len = fs::metadata(&db).unwrap().len();
    assert_eq!(
        (third.files_unchanged, third.bytes_read),
        (first.files - 1, db_len)
    );
    assert_eq!(third.bytes_new, 0, "{third:?}");

    repo.restores_as(&src, &dir.path().join("restored"));
    let report = repo.open_only().check(true).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.blobs_read > 300);

    // Forget all but the newest and prune: what is left restores as before.
    repo.open_only().forget_keep_last(1).unwrap();
    let pruned = repo
        .open_only()
        .load_index_exclusive()
        .unwrap()
        .prune()
        .unwrap();
    assert!(pruned.index_objects_replaced > 0, "{pruned:?}");
    // What only the forgotten snapshots used goes, though the set of chunks in use
    // was on disk too: a set that answered "in use" for everything would free nothing.
    assert!(
        pruned.packs_deleted + pruned.packs_repacked > 0,
        "{pruned:?}"
    );
    assert!(repo.open().index().is_spilled());
    repo.restores_as(&src, &dir.path().join("after-prune"));
    let report = repo.open_only().check(true).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    // A key rotation under the same limit: the chunks in use (deltas' bases too) are
    // found in the spilled set and re-sealed a group of packs at a time, and the new key
    // restores and reads back every blob.
    let new_key = BackupKey::generate();
    let rotated = repo.open_only().rotate_key(&new_key).unwrap();
    assert!(rotated.chunks > 300, "{rotated:?}");
    repo.key = new_key;
    assert!(repo.open().index().is_spilled());
    repo.restores_as(&src, &dir.path().join("after-rotate"));
    let report = repo.open_only().check(true).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}
