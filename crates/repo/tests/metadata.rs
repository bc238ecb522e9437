//! What a file is besides its bytes comes back on restore: hard links as links,
//! holes as holes, extended attributes, named pipes, owners (as root), symlink times,
//! and a directory too large for one tree.

use backlock_core::key::BackupKey;
use backlock_repo::{BackupOptions, DeviceHome, Repository};
use backlock_store::FsStore;
use backlock_testkit::{running_as_root, tree};
use std::{
    fs,
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
};

/// Backs `src` up into a new repository and restores it; returns where.
fn round_trip(dir: &Path, src: &Path) -> (PathBuf, backlock_repo::RestoreSummary) {
    let store = Arc::new(FsStore::new(dir.join("repo")));
    let key = BackupKey::generate();
    let home = DeviceHome::new(dir.join("home"));
    Repository::init(store.clone(), &key, home.clone()).unwrap();
    let opts = BackupOptions {
        paths: vec![src.to_path_buf()],
        hostname: "test".into(),
        ..Default::default()
    };
    let open = || Repository::open(store.clone(), &key, home.clone()).unwrap();
    open().load_index().unwrap().backup(&opts).unwrap();
    let repo = open().load_index().unwrap();
    let target = dir.join("restored");
    let summary = repo
        .restore(&repo.find_snapshot("latest").unwrap(), &target)
        .unwrap();
    (target.join(src.file_name().unwrap()), summary)
}

#[test]
fn hard_links_across_directories_come_back_as_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("app");
    fs::create_dir_all(src.join("a")).unwrap();
    fs::create_dir_all(src.join("b")).unwrap();
    fs::write(src.join("a/photo.jpg"), tree::random_bytes(1, 200_000)).unwrap();
    fs::hard_link(src.join("a/photo.jpg"), src.join("b/forwarded.jpg")).unwrap();
    // Same bytes, another file: a copy stays a copy.
    fs::copy(src.join("a/photo.jpg"), src.join("b/copy.jpg")).unwrap();
    let (out, _) = round_trip(dir.path(), &src);
    tree::assert_same(&src, &out);
    let ino = |p: &str| fs::metadata(out.join(p)).unwrap().ino();
    assert_eq!(ino("a/photo.jpg"), ino("b/forwarded.jpg"));
    assert_ne!(ino("a/photo.jpg"), ino("b/copy.jpg"));
    assert_eq!(
        fs::metadata(out.join("b/forwarded.jpg")).unwrap().nlink(),
        2
    );
}

#[test]
fn holes_come_back_as_holes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("app");
    fs::create_dir_all(&src).unwrap();
    let sparse = src.join("disk.img");
    let f = fs::File::create(&sparse).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"boot sector", 0).unwrap();
    f.write_all_at(&tree::random_bytes(2, 100_000), 40 << 20)
        .unwrap();
    drop(f);
    let allocated = |p: &Path| fs::metadata(p).unwrap().blocks() * 512;
    assert!(allocated(&sparse) < 1 << 20, "the file system made no hole");
    // A file of zeros without holes stays allocated.
    fs::write(src.join("zeros.bin"), vec![0u8; 4 << 20]).unwrap();
    let (out, _) = round_trip(dir.path(), &src);
    tree::assert_same(&src, &out);
    assert!(
        allocated(&out.join("disk.img")) < 2 << 20,
        "{} bytes allocated",
        allocated(&out.join("disk.img"))
    );
    assert!(allocated(&out.join("zeros.bin")) >= 4 << 20);
}

#[test]
fn extended_attributes_named_pipes_and_symlink_times_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("app");
    fs::create_dir_all(&src).unwrap();
    let file = src.join("notes.txt");
    fs::write(&file, b"hello").unwrap();
    rustix::fs::setxattr(
        &file,
        "user.origin",
        b"camera",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("the test directory's file system keeps user xattrs");
    rustix::fs::setxattr(&src, "user.empty", b"", rustix::fs::XattrFlags::empty()).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_bits_truncate(0o640),
        0,
    )
    .unwrap();
    std::os::unix::fs::symlink("notes.txt", src.join("link")).unwrap();
    let old = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 5,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        src.join("link"),
        &old,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
    let (out, summary) = round_trip(dir.path(), &src);
    assert!(
        summary.not_restored.is_empty(),
        "{:?}",
        summary.not_restored
    );
    let mut value = [0u8; 64];
    let n = rustix::fs::getxattr(out.join("notes.txt"), "user.origin", &mut value[..]).unwrap();
    assert_eq!(&value[..n], b"camera");
    let n = rustix::fs::getxattr(&out, "user.empty", &mut value[..]).unwrap();
    assert_eq!(n, 0);
    let pipe = fs::symlink_metadata(out.join("pipe")).unwrap();
    assert!(pipe.file_type().is_fifo());
    assert_eq!(pipe.mode() & 0o7777, 0o640);
    let link = fs::symlink_metadata(out.join("link")).unwrap();
    assert_eq!((link.mtime(), link.mtime_nsec()), (1_000_000_000, 5));
}

#[test]
fn owners_come_back_when_restored_as_root() {
    if !running_as_root() {
        eprintln!("not root: ownership is restored only as root (cli.rs checks a user's restore)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("app");
    fs::create_dir_all(src.join("theirs")).unwrap();
    fs::write(src.join("theirs/tool"), b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::symlink("tool", src.join("theirs/link")).unwrap();
    for p in ["theirs", "theirs/tool"] {
        std::os::unix::fs::chown(src.join(p), Some(1234), Some(5678)).unwrap();
    }
    std::os::unix::fs::lchown(src.join("theirs/link"), Some(4321), Some(8765)).unwrap();
    let (out, summary) = round_trip(dir.path(), &src);
    assert!(
        summary.not_restored.is_empty(),
        "{:?}",
        summary.not_restored
    );
    let owner = |p: &str| {
        let m = fs::symlink_metadata(out.join(p)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner("theirs"), (1234, 5678));
    assert_eq!(owner("theirs/tool"), (1234, 5678));
    assert_eq!(owner("theirs/link"), (4321, 8765));
}

#[test]
fn a_directory_of_100_000_entries_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big");
    fs::create_dir_all(&src).unwrap();
    for i in 0..100_000u32 {
        // Every hundredth file has a byte of content, the rest are empty.
        let body: &[u8] = if i % 100 == 0 { &[7] } else { b"" };
        fs::write(src.join(format!("f{i:06}")), body).unwrap();
    }
    let (out, _) = round_trip(dir.path(), &src);
    assert_eq!(fs::read_dir(&out).unwrap().count(), 100_000);
    assert_eq!(fs::read(out.join("f000100")).unwrap(), [7]);
    assert!(fs::read(out.join("f099999")).unwrap().is_empty());
}

/// An unchanged directory costs nothing new: a backup after one file changed deep in
/// a tree of 200 directories stores that file's chunk and the trees on its path only.
#[test]
fn a_change_deep_in_the_tree_stores_only_the_trees_on_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("app");
    for d in 0..200 {
        let sub = src.join(format!("d{}/e{d}", d % 10));
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join("f.txt"), format!("file {d}")).unwrap();
    }
    let store = Arc::new(FsStore::new(dir.path().join("repo")));
    let key = BackupKey::generate();
    let home = DeviceHome::new(dir.path().join("home"));
    Repository::init(store.clone(), &key, home.clone()).unwrap();
    let opts = BackupOptions {
        paths: vec![src.clone()],
        ..Default::default()
    };
    let open = || Repository::open(store.clone(), &key, home.clone()).unwrap();
    open().load_index().unwrap().backup(&opts).unwrap();
    let before = open().load_index().unwrap().index().len();
    fs::write(src.join("d3/e13/f.txt"), b"changed").unwrap();
    open().load_index().unwrap().backup(&opts).unwrap();
    let after = open().load_index().unwrap().index().len();
    // The new chunk, and the trees of e13, d3, app and the root.
    assert_eq!(after - before, 1 + 4);
}
