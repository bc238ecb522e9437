//! Sample directory trees and a strict comparison of two trees.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::{
    collections::BTreeMap,
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
    let text: Vec<u8> = (0..40_000).flat_map(|i| format!("message {i} see you later\n").into_bytes()).collect();
    fs::write(dir.join("notes.txt"), &text).unwrap();
    let photo = random_bytes(seed, 700_000);
    fs::write(dir.join("Media/Images/IMG-1.jpg"), &photo).unwrap();
    fs::write(dir.join("Media/Images/IMG-1-forwarded.jpg"), &photo).unwrap();
    fs::write(dir.join("Media/Video/deep/er/VID-1.mp4"), random_bytes(seed + 1, 3_000_000)).unwrap();
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
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE").unwrap();
}

/// Inserts `rows` chat-like messages in one transaction.
pub fn insert_messages(conn: &rusqlite::Connection, rows: u64, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let words = ["hey", "see", "you", "at", "eight", "lunch", "photo", "ok", "thanks", "love", "coming", "home"];
    conn.execute_batch("BEGIN").unwrap();
    {
        let mut stmt = conn.prepare_cached("INSERT INTO message(chat, ts, status, body) VALUES (?1, ?2, ?3, ?4)").unwrap();
        for _ in 0..rows {
            let n = 3 + rng.next_u32() as usize % 20;
            let body: Vec<&str> = (0..n).map(|_| words[rng.next_u32() as usize % words.len()]).collect();
            stmt.execute((rng.next_u32() % 50, (rng.next_u64() % 1_000_000) as i64, 1, body.join(" "))).unwrap();
        }
    }
    conn.execute_batch("COMMIT").unwrap();
}

/// What a tree entry looks like, for comparison.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// Directory with its mode.
    Dir(u32),
    /// File with its mode, mtime (seconds) and content.
    File(u32, i64, Vec<u8>),
    /// SQLite database: mode and content with the header fields SQLite's online backup
    /// rewrites (change counter, schema cookie, version-valid-for, library version)
    /// masked out; every page and every other header byte must match.
    Sqlite(u32, Vec<u8>),
    /// Symlink target.
    Link(PathBuf),
}

/// Reads a tree into a map of relative path → entry.
pub fn read_tree(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    visit(root, root, &mut out);
    out
}

fn visit(root: &Path, p: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
    let meta = fs::symlink_metadata(p).unwrap();
    let rel = p.strip_prefix(root).unwrap().to_path_buf();
    let mode = meta.mode() & 0o7777;
    if meta.is_dir() {
        out.insert(rel, Entry::Dir(mode));
        for e in fs::read_dir(p).unwrap() {
            visit(root, &e.unwrap().path(), out);
        }
    } else if meta.file_type().is_symlink() {
        out.insert(rel, Entry::Link(fs::read_link(p).unwrap()));
    } else {
        let name = p.file_name().unwrap().to_string_lossy();
        if name.ends_with("-wal") || name.ends_with("-shm") {
            return;
        }
        let data = fs::read(p).unwrap();
        if data.starts_with(b"SQLite format 3\0") {
            out.insert(rel, Entry::Sqlite(mode, mask_sqlite_header(data)));
        } else {
            out.insert(rel, Entry::File(mode, meta.mtime(), data));
        }
    }
}

/// Masks the SQLite header fields that an online backup legitimately rewrites.
pub fn mask_sqlite_header(mut data: Vec<u8>) -> Vec<u8> {
    for range in [24..28, 40..44, 92..100] {
        if data.len() >= range.end {
            data[range].fill(0);
        }
    }
    data
}

/// Asserts two trees are the same: names, kinds, modes, mtimes and bytes.
pub fn assert_same(a: &Path, b: &Path) {
    let (ta, tb) = (read_tree(a), read_tree(b));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>(), "different entries");
    for (k, v) in &ta {
        let w = &tb[k];
        if v != w {
            let bytes = |e: &Entry| match e {
                Entry::File(m, t, d) => Some((*m, *t, d.clone())),
                Entry::Sqlite(m, d) => Some((*m, 0, d.clone())),
                _ => None,
            };
            let detail = match (bytes(v), bytes(w)) {
                (Some((m1, t1, a)), Some((m2, t2, b))) => {
                    let first = a.iter().zip(b.iter()).position(|(x, y)| x != y);
                    format!("modes {m1:o}/{m2:o}, mtimes {t1}/{t2}, lengths {}/{}, first differing byte {first:?}", a.len(), b.len())
                }
                _ => format!("{v:?} vs {w:?}").chars().take(300).collect(),
            };
            panic!("{} differs: {detail}", k.display());
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
