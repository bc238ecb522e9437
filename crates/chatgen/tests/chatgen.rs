//! End-to-end checks of `generate` and `simulate_day` on small folders.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use backlock_chatgen::{generate, pages_changed, simulate_day, ChatGenError, ChatSpec, DB_FILE};
use rusqlite::Connection;

const PAGE: usize = 4096;

fn small() -> ChatSpec {
    ChatSpec {
        seed: 7,
        db_bytes: 2_000_000,
        media_bytes: 3_000_000,
    }
}

/// Every file under `root` by relative path, with its bytes.
fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("under root").to_path_buf();
                out.insert(rel, std::fs::read(&path).expect("read file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn integrity(db: &Path) -> String {
    let conn = Connection::open(db).expect("open db");
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

#[test]
fn generate_is_deterministic_and_sized() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let sa = generate(&a, &small()).expect("generate a");
    let sb = generate(&b, &small()).expect("generate b");
    assert_eq!(sa, sb);
    let (fa, fb) = (files(&a), files(&b));
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
    for (path, bytes) in &fa {
        assert!(
            fb[path] == *bytes,
            "{} differs between runs",
            path.display()
        );
    }

    // Only the database and media: the WAL is checkpointed and removed.
    let db_len = fa[Path::new(DB_FILE)].len() as u64;
    assert_eq!(db_len, sa.db_bytes);
    let want = small().db_bytes as f64;
    assert!(
        (db_len as f64 - want).abs() <= want * 0.05,
        "db is {db_len} bytes, wanted {want} ±5%"
    );
    assert_eq!(db_len % PAGE as u64, 0);
    let media: Vec<_> = fa.iter().filter(|(p, _)| p.starts_with("Media")).collect();
    assert_eq!(
        fa.len(),
        media.len() + 1,
        "unexpected files: {:?}",
        fa.keys()
    );
    assert_eq!(media.len() as u64, sa.media_files);
    let media_total: u64 = media.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(media_total, small().media_bytes);
    assert_eq!(sa.media_bytes, small().media_bytes);

    assert_eq!(integrity(&a.join(DB_FILE)), "ok");
    let conn = Connection::open(a.join(DB_FILE)).expect("open");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
    let messages: i64 = conn
        .query_row("SELECT count(*) FROM message", [], |r| r.get(0))
        .expect("count");
    assert_eq!(messages as u64, sa.messages);
}

#[test]
fn forwarded_media_are_byte_identical_copies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("chat");
    let s = generate(&dir, &small()).expect("generate");
    assert!(s.duplicate_media_files >= 1, "{s:?}");

    let conn = Connection::open(dir.join(DB_FILE)).expect("open");
    let mut st = conn
        .prepare("SELECT file_hash, file_path, file_size FROM media ORDER BY _id")
        .expect("prepare");
    let rows: Vec<(String, String, i64)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(rows.len() as u64, s.media_files);
    let mut by_hash: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (hash, path, size) in &rows {
        let bytes = std::fs::read(dir.join(path)).expect("media file named in the db exists");
        assert_eq!(bytes.len() as i64, *size);
        by_hash.entry(hash).or_default().push(path);
    }
    let dup_groups: Vec<_> = by_hash.values().filter(|v| v.len() > 1).collect();
    let dups: usize = dup_groups.iter().map(|v| v.len() - 1).sum();
    assert_eq!(dups as u64, s.duplicate_media_files);
    for group in dup_groups {
        let first = std::fs::read(dir.join(group[0])).expect("read");
        for other in &group[1..] {
            assert_ne!(group[0], *other);
            assert!(std::fs::read(dir.join(other)).expect("read") == first);
        }
    }
}

#[test]
fn media_look_like_their_format() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("chat");
    generate(
        &dir,
        &ChatSpec {
            seed: 3,
            db_bytes: 1_000_000,
            media_bytes: 40_000_000,
        },
    )
    .expect("generate");
    let mut seen = 0;
    for (path, bytes) in files(&dir) {
        let name = path.to_string_lossy().into_owned();
        if name.ends_with(".jpg") {
            assert!(bytes.starts_with(&[0xFF, 0xD8, 0xFF, 0xE0]), "{name}");
            assert!(name.contains("WhatsApp Images/IMG-"), "{name}");
        } else if name.ends_with(".opus") {
            assert!(bytes.starts_with(b"OggS"), "{name}");
            assert!(name.contains("WhatsApp Voice Notes/"), "{name}");
        } else if name.ends_with(".mp4") {
            assert_eq!(&bytes[4..8], b"ftyp", "{name}");
        } else if name.ends_with(".pdf") {
            assert!(bytes.starts_with(b"%PDF-"), "{name}");
        } else {
            assert_eq!(name, DB_FILE);
            continue;
        }
        seen += 1;
    }
    assert!(seen > 10);
}

#[test]
fn generate_refuses_a_non_empty_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("keep.txt"), b"mine").expect("write");
    let err = generate(tmp.path(), &small()).expect_err("must refuse");
    assert!(matches!(err, ChatGenError::DirNotEmpty { .. }), "{err}");
    assert_eq!(
        std::fs::read(tmp.path().join("keep.txt")).expect("read"),
        b"mine"
    );
}

#[test]
fn simulate_day_needs_a_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = simulate_day(tmp.path(), 1).expect_err("no store");
    assert!(matches!(err, ChatGenError::NoDatabase { .. }), "{err}");
}

#[test]
fn a_day_changes_a_scattered_tenth_of_the_pages() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("chat");
    let spec = ChatSpec {
        seed: 11,
        db_bytes: 8_000_000,
        media_bytes: 1_000_000,
    };
    generate(&dir, &spec).expect("generate");
    let db = dir.join(DB_FILE);
    let before = tmp.path().join("before.db");
    std::fs::copy(&db, &before).expect("copy");

    let day = simulate_day(&dir, 1).expect("day");
    assert!(day.new_messages >= 100, "{day:?}");
    assert!(day.updated_rows >= 100, "{day:?}");
    assert!(day.new_media_files >= 2, "{day:?}");

    let (changed, total) = pages_changed(&before, &db, PAGE).expect("pages_changed");
    assert_eq!((changed, total), (day.db_pages_changed, day.db_pages));
    let frac = changed as f64 / total as f64;
    assert!(
        (0.05..=0.25).contains(&frac),
        "{changed}/{total} = {frac:.3}"
    );
    let before_pages = std::fs::metadata(&before).expect("stat").len() / PAGE as u64;
    assert!(
        total < before_pages * 11 / 10,
        "grew from {before_pages} to {total} pages"
    );

    // Scattered: many separate runs of changed pages, not one appended region.
    let (a, b) = (
        std::fs::read(&before).expect("read"),
        std::fs::read(&db).expect("read"),
    );
    let mut runs = 0;
    let mut prev_changed = false;
    for (i, page) in b.chunks(PAGE).enumerate() {
        let old = a.get(i * PAGE..(i + 1) * PAGE);
        let is_changed = old != Some(page);
        if is_changed && !prev_changed {
            runs += 1;
        }
        prev_changed = is_changed;
    }
    assert!(
        runs > changed / 4,
        "{changed} changed pages in only {runs} runs"
    );

    assert_eq!(integrity(&db), "ok");
    // No -wal/-shm and no temporary copy left next to the store.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "Media" && n != DB_FILE)
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");

    // A second day works on the result, even with the same seed.
    let day2 = simulate_day(&dir, 1).expect("day 2");
    assert!(day2.db_pages_changed > 0);
    assert_eq!(integrity(&db), "ok");
}

#[test]
fn pages_changed_counts_differences_and_growth() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let base = vec![7u8; PAGE * 4];
    std::fs::write(&a, &base).expect("write");
    std::fs::write(&b, &base).expect("write");
    assert_eq!(pages_changed(&a, &b, PAGE).expect("same"), (0, 4));

    let mut grown = base.clone();
    grown[PAGE + 5] = 0;
    grown.extend_from_slice(&[1u8; PAGE + 10]);
    std::fs::write(&b, &grown).expect("write");
    // Page 1 edited, pages 4 and 5 (partial) new.
    assert_eq!(pages_changed(&a, &b, PAGE).expect("grown"), (3, 6));
    // Shrunk: only pages of b count.
    assert_eq!(pages_changed(&b, &a, PAGE).expect("shrunk"), (1, 4));
    assert!(pages_changed(&a, &b, 0).is_err());
}

#[test]
fn scaled_splits_fifteen_percent_to_the_db() {
    let s = ChatSpec::scaled(1_000_000_000, 5);
    assert_eq!(s.db_bytes, 150_000_000);
    assert_eq!(s.db_bytes + s.media_bytes, 1_000_000_000);
    assert_eq!(s.seed, 5);
    let d = ChatSpec::demo();
    assert_eq!((d.db_bytes, d.media_bytes), (60_000_000, 240_000_000));
}
