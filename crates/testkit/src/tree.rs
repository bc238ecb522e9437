//! Sample directory trees and a strict comparison of two trees.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// Deterministic random bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Writes a small tree with text, random media, a duplicate, an empty file, a nested
/// directory, a symlink and a SQLite database; returns its root.
pub fn write_sample(root: &Path, seed: u64) -> PathBuf {
    let dir = root.join("chat");
    fs::create_dir_all(dir.join("Media/Images")).unwrap();
    fs::create_dir_all(dir.join("Media/Video/deep/er")).unwrap();
    let text: Vec<u8> = (0..40_000)
        .flat_map(|i| format!("message {i} see you later\n").into_bytes())
        .collect();
    fs::write(dir.join("notes.txt"), &text).unwrap();
    let photo = random_bytes(seed, 700_000);
    fs::write(dir.join("Media/Images/IMG-1.jpg"), &photo).unwrap();
    fs::write(dir.join("Media/Images/IMG-1-forwarded.jpg"), &photo).unwrap();
    fs::write(
        dir.join("Media/Video/deep/er/VID-1.mp4"),
        random_bytes(seed + 1, 3_000_000),
    )
    .unwrap();
    fs::write(dir.join("empty"), b"").unwrap();
    fs::set_permissions(dir.join("notes.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("Media/Images/IMG-1.jpg", dir.join("latest.jpg")).unwrap();
    write_db(&dir.join("msgstore.db"), 3000, seed);
    dir
}

/// Creates a WAL-mode SQLite database with `rows` messages.
pub fn write_db(path: &Path, rows: u64, seed: u64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS message(id INTEGER PRIMARY KEY, chat INTEGER, ts INTEGER, status INTEGER, body TEXT);
         CREATE INDEX IF NOT EXISTS message_chat ON message(chat, ts);",
    )
    .unwrap();
    insert_messages(&conn, rows, seed);
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .unwrap();
}

/// Inserts `rows` chat-like messages in one transaction.
pub fn insert_messages(conn: &rusqlite::Connection, rows: u64, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let words = [
        "hey", "see", "you", "at", "eight", "lunch", "photo", "ok", "thanks", "love", "coming",
        "home",
    ];
    conn.execute_batch("BEGIN").unwrap();
    {
        let mut stmt = conn
            .prepare_cached("INSERT INTO message(chat, ts, status, body) VALUES (?1, ?2, ?3, ?4)")
            .unwrap();
        for _ in 0..rows {
            let n = 3 + rng.next_u32() as usize % 20;
            let body: Vec<&str> = (0..n)
                .map(|_| words[rng.next_u32() as usize % words.len()])
                .collect();
            stmt.execute((
                rng.next_u32() % 50,
                (rng.next_u64() % 1_000_000) as i64,
                1,
                body.join(" "),
            ))
            .unwrap();
        }
    }
    conn.execute_batch("COMMIT").unwrap();
}

/// Asserts two trees are the same: entries, kinds, modes, contents (SQLite databases
/// page for page, see `backlock_repo::verify`) and the mtimes of regular files.
pub fn assert_same(a: &Path, b: &Path) {
    if let Err(e) = backlock_repo::verify::compare_trees(a, b) {
        panic!("trees differ: {e}");
    }
    for entry in list_files(a) {
        let meta = fs::symlink_metadata(&entry).unwrap();
        if meta.is_file()
            && !entry.to_string_lossy().ends_with("-wal")
            && !entry.to_string_lossy().ends_with("-shm")
        {
            let other = b.join(entry.strip_prefix(a).unwrap());
            assert_eq!(
                meta.mtime(),
                fs::metadata(&other).unwrap().mtime(),
                "mtime of {}",
                entry.display()
            );
        }
    }
}

/// Lists every file under `dir` (for "nothing partial left behind" checks).
pub fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(list_files(&p));
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Copies the files under `from` to `to` (created), as a backup or a stolen disk would
/// hold them. A file that goes between the listing and its copy (a temporary file a
/// finishing write renamed) is not in the copy, as it would not be on such a disk.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            match fs::copy(&path, &target) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                copied => {
                    copied.unwrap();
                }
            }
        }
    }
}
