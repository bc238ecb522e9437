//! The local object cache saves requests and is never trusted: each test attacks it
//! (damage, another repository's copies, a store rolled back behind it, objects the
//! store dropped) and checks that what a command does is what the store alone says.

use backlock_core::{envelope::ObjectKind, key::BackupKey};
use backlock_repo::{BackupOptions, DeviceHome, ObjectCache, RepoError, Repository};
use backlock_store::{Counted, FsStore, ObjectStore};
use backlock_testkit::tree;
use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

/// A repository in a local directory, reached through a request counter, with a
/// device state and a cache directory of its own.
struct Device {
    dir: tempfile::TempDir,
    key: BackupKey,
    store: Arc<Counted<FsStore>>,
}

impl Device {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Counted::new(FsStore::new(dir.path().join("repo"))));
        let key = BackupKey::generate();
        let home = DeviceHome::new(dir.path().join("home"));
        Repository::init(store.clone(), &key, home).unwrap();
        Device { dir, key, store }
    }

    fn cache_root(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn open(&self, cache: Option<&Path>) -> Repository {
        let cache = cache.map(|root| ObjectCache::new(root, 1 << 30));
        Repository::open(
            self.store.clone(),
            &self.key,
            DeviceHome::new(self.dir.path().join("home")),
        )
        .unwrap()
        .with_cache(cache.as_ref())
    }

    fn src(&self) -> PathBuf {
        let src = self.dir.path().join("src");
        if !src.exists() {
            tree::write_sample(&src, 7);
        }
        src
    }

    fn backup(&self, cache: Option<&Path>) -> backlock_repo::BackupSummary {
        let opts = BackupOptions {
            paths: vec![self.src()],
            hostname: "test".into(),
            ..Default::default()
        };
        self.open(cache)
            .load_index()
            .unwrap()
            .backup(&opts)
            .unwrap()
    }

    /// Restores the newest snapshot and checks it equals the source.
    fn restores_the_source(&self, cache: Option<&Path>) {
        let repo = self.open(cache).load_index().unwrap();
        let (latest, _) = repo.latest().unwrap();
        let target = tempfile::tempdir().unwrap();
        let out = target.path().join("out");
        repo.restore(&latest, &out).unwrap();
        tree::assert_same(&self.src(), &out.join("src"));
    }

    /// Whole-object GETs so far: index objects, snapshots and packs of trees (file
    /// data is read in ranges).
    fn object_gets(&self) -> u64 {
        [ObjectKind::Index, ObjectKind::Snapshot, ObjectKind::Pack]
            .iter()
            .map(|k| self.store.counts_of(*k).get)
            .sum()
    }

    /// The cached files of `kind`.
    fn cached(&self, kind: &str) -> Vec<PathBuf> {
        let repo_id = self.open(None).id();
        tree::list_files(&self.cache_root().join(repo_id).join(kind))
    }
}

/// Makes a new file in the source, so the next backup writes new objects.
fn change(src: &Path, n: u64) {
    fs::write(
        src.join(format!("new-{n}.bin")),
        tree::random_bytes(n, 300_000),
    )
    .unwrap();
}

#[test]
fn a_backup_with_a_warm_cache_fetches_only_what_another_device_wrote() {
    let phone = Device::new();
    let cache = phone.cache_root();
    phone.backup(Some(&cache));
    change(&phone.src(), 1);
    phone.backup(Some(&cache));
    let indexes = phone.store.list(ObjectKind::Index).unwrap().len() as u64;
    assert!(indexes >= 2);

    // This device wrote every object: none is fetched, however many there are.
    let before = phone.object_gets();
    phone.backup(Some(&cache));
    assert_eq!(phone.object_gets() - before, 0);

    // Without the cache, every index object and the parent are fetched.
    let before = phone.object_gets();
    phone.backup(None);
    assert!(phone.object_gets() - before > indexes);

    // A backup made elsewhere (no cache): this device fetches what it wrote (its index
    // object, snapshot and pack of trees), once.
    change(&phone.src(), 2);
    phone.backup(None);
    let before = phone.object_gets();
    phone.backup(Some(&cache));
    let first = phone.object_gets() - before;
    assert!(
        (1..=4).contains(&first),
        "{first} GETs for one backup's objects"
    );
    let before = phone.object_gets();
    phone.backup(Some(&cache));
    assert_eq!(phone.object_gets() - before, 0);
    phone.restores_the_source(Some(&cache));
}

#[test]
fn a_damaged_cached_copy_is_fetched_again_and_replaced() {
    let phone = Device::new();
    let cache = phone.cache_root();
    phone.backup(Some(&cache));
    let copies: Vec<PathBuf> = ["index", "snapshot", "pack"]
        .iter()
        .flat_map(|k| phone.cached(k))
        .collect();
    assert!(copies.len() >= 2);
    for (i, path) in copies.iter().enumerate() {
        let mut bytes = fs::read(path).unwrap();
        match i % 2 {
            0 => *bytes.last_mut().unwrap() ^= 1,
            _ => bytes.truncate(bytes.len() / 2),
        }
        fs::write(path, bytes).unwrap();
    }
    let before = phone.object_gets();
    phone.restores_the_source(Some(&cache));
    assert_eq!(phone.object_gets() - before, copies.len() as u64);
    // Each copy is the store's object again.
    for path in &copies {
        let parent = path.parent().unwrap();
        let kind = if parent.ends_with("index") {
            ObjectKind::Index
        } else if parent.ends_with("pack") {
            ObjectKind::Pack
        } else {
            ObjectKind::Snapshot
        };
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            fs::read(path).unwrap(),
            phone.store.get(kind, name).unwrap()
        );
    }
}

#[test]
fn another_repositorys_copies_under_the_same_cache_are_never_taken_for_this_ones() {
    let (a, b) = (Device::new(), Device::new());
    // One cache directory for both, as for two repositories of one user.
    let cache = a.cache_root();
    a.backup(Some(&cache));
    b.backup(Some(&cache));
    assert_ne!(a.open(None).id(), b.open(None).id());
    // Put a's copies in place of b's, name for name.
    let b_repo = cache.join(b.open(None).id());
    for kind in ["index", "snapshot", "pack"] {
        let theirs = tree::list_files(&cache.join(a.open(None).id()).join(kind));
        let ours = tree::list_files(&b_repo.join(kind));
        assert!(!ours.is_empty());
        for (i, path) in ours.iter().enumerate() {
            fs::copy(&theirs[i % theirs.len()], path).unwrap();
        }
    }
    b.restores_the_source(Some(&cache));
    a.restores_the_source(Some(&cache));
}

#[test]
fn a_store_rolled_back_behind_the_cache_is_still_caught() {
    let phone = Device::new();
    let cache = phone.cache_root();
    phone.backup(Some(&cache));
    let old = phone.dir.path().join("old-repo");
    tree::copy_dir(&phone.dir.path().join("repo"), &old);
    change(&phone.src(), 3);
    phone.backup(Some(&cache));
    // The store serves yesterday's objects; the cache holds today's.
    let repo_dir = phone.dir.path().join("repo");
    fs::remove_dir_all(&repo_dir).unwrap();
    tree::copy_dir(&old, &repo_dir);
    let repo = phone.open(Some(&cache));
    assert!(matches!(
        repo.newest_snapshot(),
        Err(RepoError::Rollback { .. })
    ));
    let opts = BackupOptions {
        paths: vec![phone.src()],
        ..Default::default()
    };
    let backup = phone.open(Some(&cache)).load_index().unwrap().backup(&opts);
    assert!(
        matches!(backup, Err(RepoError::IndexRollback { .. })),
        "{:?}",
        backup.err()
    );
}

#[test]
fn a_cache_older_than_the_store_costs_requests_and_nothing_else() {
    let phone = Device::new();
    let cache = phone.cache_root();
    phone.backup(Some(&cache));
    let old_cache = phone.dir.path().join("old-cache");
    tree::copy_dir(&cache, &old_cache);
    change(&phone.src(), 4);
    phone.backup(Some(&cache));
    // The device's cache comes back from an old copy of the disk.
    fs::remove_dir_all(&cache).unwrap();
    tree::copy_dir(&old_cache, &cache);
    let before = phone.object_gets();
    phone.restores_the_source(Some(&cache));
    assert!(phone.object_gets() > before);
}

#[test]
fn an_object_the_store_dropped_counts_as_missing_though_the_cache_has_it() {
    let phone = Device::new();
    let cache = phone.cache_root();
    phone.backup(Some(&cache));
    let dropped = phone.store.list(ObjectKind::Index).unwrap()[0].name.clone();
    phone.store.delete(ObjectKind::Index, &dropped).unwrap();
    change(&phone.src(), 5);
    let summary = phone.backup(Some(&cache));
    assert!(
        summary
            .warnings
            .iter()
            .any(|w| w.contains(&dropped) && w.contains("missing from the store")),
        "{:?}",
        summary.warnings
    );
    // Its chunks were stored again: the newest snapshot restores without it.
    phone.restores_the_source(None);
    // And its copy is gone from the cache.
    assert!(!phone.cached("index").iter().any(|p| p.ends_with(&dropped)));
}

/// Trees are read from a cached pack one at a time, each authenticated on its own: a
/// byte changed inside one tree (not at the pack's end, where the whole-pack reads were
/// attacked) is caught when that tree is read, the pack is fetched again, and the
/// backup still finds every unchanged file.
#[test]
fn a_tree_changed_inside_its_cached_pack_is_caught_and_fetched_again() {
    let phone = Device::new();
    let cache = phone.cache_root();
    let src = phone.src();
    // Many directories: many trees in one pack of trees.
    for d in 0..40 {
        let dir = src.join(format!("chat{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("note.txt"), format!("chat {d}")).unwrap();
    }
    phone.backup(Some(&cache));
    // What a backup with nothing changed finds (the sample's database is always read).
    let control = phone.backup(Some(&cache));
    assert!(control.files_unchanged > 40, "{control:?}");
    // The first backup's trees and those the second changed: each pack is read.
    let packs = phone.cached("pack");
    assert!(!packs.is_empty());
    for pack in &packs {
        let mut bytes = fs::read(pack).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        fs::write(pack, bytes).unwrap();
    }

    let before = phone.object_gets();
    let second = phone.backup(Some(&cache));
    assert_eq!(
        second.files_unchanged, control.files_unchanged,
        "{second:?}"
    );
    assert!(second.warnings.is_empty(), "{:?}", second.warnings);
    assert_eq!(phone.object_gets() - before, packs.len() as u64);
    for pack in &packs {
        let name = pack.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            fs::read(pack).unwrap(),
            phone.store.get(ObjectKind::Pack, name).unwrap()
        );
    }
    phone.restores_the_source(Some(&cache));
}
