//! `import-whatsapp` and `export-whatsapp` against the interop peer: wa-crypt-tools
//! (PyPI, GPLv3), installed by `scripts/test` in a venv at test time, never vendored.
//! Its `waencrypt` makes the backups we import, its `wadecrypt` opens what we export,
//! and the public samples in its source distribution are imported as they are.

mod common;

use common::{stderr, Env};
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// The venv's `bin` directory (`waencrypt`, `wadecrypt`, `wacreatekey`, `python`).
const TOOLS_VAR: &str = "BACKLOCK_WA_CRYPT_TOOLS";
/// The `tests/res` folder of wa-crypt-tools' source distribution.
const SAMPLES_VAR: &str = "BACKLOCK_WA_SAMPLES";

struct Peer {
    bin: PathBuf,
    samples: PathBuf,
}

impl Peer {
    /// The peer `scripts/test` installed; without it a loud skip, or a failure when
    /// the run requires every tool (CI).
    fn find() -> Option<Peer> {
        let (Some(bin), Some(samples)) =
            (std::env::var_os(TOOLS_VAR), std::env::var_os(SAMPLES_VAR))
        else {
            assert!(
                !backlock_testkit::servers::required(),
                "{TOOLS_VAR} and {SAMPLES_VAR} must name wa-crypt-tools (scripts/test installs it)"
            );
            eprintln!("SKIPPED: wa-crypt-tools is not installed (run scripts/test)");
            return None;
        };
        Some(Peer {
            bin: bin.into(),
            samples: samples.into(),
        })
    }

    fn run(&self, tool: &str, args: &[&Path]) -> std::process::Output {
        let out = Command::new(self.bin.join(tool))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{tool} {args:?}: {}", stderr(&out));
        out
    }

    /// The key file the peer writes for the 64 hex digits `hex` (its `-o` fails in
    /// 0.1.0, so it writes its default name in a folder of its own).
    fn key_file(&self, hex: &str, out: &Path) {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new(self.bin.join("wacreatekey"))
            .args(["--hex", hex, "-y"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", stderr(&status));
        fs::rename(dir.path().join("encrypted_backup.key"), out).unwrap();
        assert_eq!(fs::metadata(out).unwrap().len(), 59);
    }

    /// The header of a crypt15 file as the peer's protobuf classes read it: the
    /// feature marker, key type, IV and every field of the app's info, as JSON.
    fn header(&self, file: &Path) -> serde_json::Value {
        let script = r#"
import json, sys
from google.protobuf.json_format import MessageToDict
from wa_crypt_tools.proto import backup_prefix_pb2
data = open(sys.argv[1], "rb").read()
features = data[1] == 1
start = 2 if features else 1
prefix = backup_prefix_pb2.BackupPrefix()
prefix.ParseFromString(data[start:start + data[0]])
print(json.dumps({
    "features": features,
    "key_type": prefix.key_type,
    "has_key_type": prefix.HasField("key_type"),
    "iv": prefix.c15_iv.IV.hex(),
    "info": MessageToDict(prefix.info, preserving_proto_field_name=True),
    "info_fields": [f.name for f, _ in prefix.info.ListFields()],
}))
"#;
        let out = Command::new(self.bin.join("python"))
            .args(["-c", script])
            .arg(file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

const HEX_KEY: &str = "5c0c7cb8e1dfa6b2b81fd4a5f0c3a5b7cfb0e2a1d26c3e8f7a9b1c2d3e4f5a6b";

/// A chat database of `rows` messages, as SQLite writes it (rollback journal, so the
/// file alone is the whole database).
fn chat_db(path: &Path, rows: std::ops::Range<u32>) {
    let db = rusqlite::Connection::open(path).unwrap();
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS message (_id INTEGER PRIMARY KEY, chat TEXT, body TEXT, ts INTEGER);
         CREATE INDEX IF NOT EXISTS message_chat ON message(chat, ts);",
    )
    .unwrap();
    let tx = db.unchecked_transaction().unwrap();
    for i in rows {
        tx.execute(
            "INSERT INTO message (_id, chat, body, ts) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![
                i,
                format!("chat-{}", i % 17),
                format!(
                    "message {i}: {}",
                    "lorem ipsum dolor sit amet ".repeat((i % 9) as usize + 1)
                ),
                1_700_000_000 + i64::from(i) * 60
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// `export-whatsapp latest PATH --wa-key KEY --out OUT EXTRA...`.
fn export(env: &Env, key: &Path, path: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "export-whatsapp",
        "latest",
        path,
        "--wa-key",
        key.to_str().unwrap(),
    ];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(extra);
    env.run(&args)
}

fn succeeded(out: std::process::Output) {
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The command failed with `code`, saying `message`.
fn refused(out: &std::process::Output, code: i32, message: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", stderr(out));
    assert!(stderr(out).contains(message), "{}", stderr(out));
}

fn snapshots(env: &Env) -> Vec<serde_json::Value> {
    serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap()
}

fn dump(env: &Env, snapshot: &str, path: &str) -> Vec<u8> {
    let out = env.run(&["dump", snapshot, path]);
    assert!(out.status.success(), "{}", stderr(&out));
    out.stdout
}

/// The peer's key file and a file of the same key as 64 digits.
fn keys(env: &Env, peer: &Peer) -> (PathBuf, PathBuf) {
    let key = env.path("encrypted_backup.key");
    peer.key_file(HEX_KEY, &key);
    let hex = env.path("wa-key.txt");
    fs::write(
        &hex,
        HEX_KEY
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(" "),
    )
    .unwrap();
    (key, hex)
}

/// A repository, the peer's key (as its key file and as digits), a chat database and
/// the peer's crypt15 backup of it.
struct OneBackup {
    peer: Peer,
    env: Env,
    key: PathBuf,
    hex: PathBuf,
    db: PathBuf,
    enc: PathBuf,
}

impl OneBackup {
    fn new(rows: std::ops::Range<u32>) -> Option<OneBackup> {
        let peer = Peer::find()?;
        let (env, _) = Env::new();
        let (key, hex) = keys(&env, &peer);
        let db = env.path("msgstore.db");
        chat_db(&db, rows);
        let enc = env.path("msgstore.db.crypt15");
        peer.run("waencrypt", &[&key, &db, &enc]);
        Some(OneBackup {
            peer,
            env,
            key,
            hex,
            db,
            enc,
        })
    }
}

#[test]
fn what_waencrypt_writes_imports_byte_for_byte_and_what_we_export_wadecrypt_opens() {
    let Some(OneBackup {
        peer,
        env,
        key,
        hex,
        db,
        enc,
    }) = OneBackup::new(0..3000)
    else {
        return;
    };
    let out = env.run(&[
        "import-whatsapp",
        "--wa-key-hex-file",
        hex.to_str().unwrap(),
        "--json",
        enc.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = snapshots(&env);
    assert_eq!(list.len(), 1);
    assert_eq!(dump(&env, "latest", "msgstore.db"), fs::read(&db).unwrap());
    // A name with a date that does not exist counts as undated (and this file's
    // content was imported already).
    let odd = env.path("msgstore-2023-02-30.1.db.crypt15");
    fs::copy(&enc, &odd).unwrap();
    let out = env.run(&[
        "import-whatsapp",
        "--wa-key",
        key.to_str().unwrap(),
        odd.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported before"));

    // Exported, it opens with the peer's reader to the same database, under a fresh
    // IV and with every other field of the imported header.
    let exported = env.path("export.crypt15");
    succeeded(export(&env, &key, "msgstore.db", &exported, &[]));
    let back = env.path("back.db");
    peer.run("wadecrypt", &[&key, &exported, &back]);
    assert_eq!(fs::read(&back).unwrap(), fs::read(&db).unwrap());
    let (before, after) = (peer.header(&enc), peer.header(&exported));
    assert_ne!(before["iv"], after["iv"], "a fresh IV");
    assert_eq!(after["iv"].as_str().unwrap().len(), 32);
    for field in [
        "features",
        "key_type",
        "has_key_type",
        "info",
        "info_fields",
    ] {
        assert_eq!(before[field], after[field], "{field}");
    }
    assert!(
        !before["info_fields"].as_array().unwrap().is_empty(),
        "the peer's backup has app info to copy: {before}"
    );

    // Another export of the same snapshot has another IV (never reused under the key).
    let again = env.path("again.crypt15");
    succeeded(export(&env, &key, "/msgstore.db", &again, &[]));
    assert_ne!(peer.header(&again)["iv"], after["iv"]);
    // An existing file is never replaced.
    let out = export(&env, &key, "msgstore.db", &again, &[]);
    refused(&out, 2, "exists");
}

#[test]
fn the_public_samples_import_and_the_older_formats_are_refused() {
    let Some(peer) = Peer::find() else { return };
    let (env, _) = Env::new();
    let res = &peer.samples;
    let key = res.join("encrypted_backup.key");
    let import = |args: &[&Path]| {
        let mut all = vec![
            "import-whatsapp".to_string(),
            "--wa-key".into(),
            key.display().to_string(),
        ];
        all.extend(args.iter().map(|p| p.display().to_string()));
        env.run(&all.iter().map(String::as_str).collect::<Vec<_>>())
    };
    for (sample, what) in [
        ("msgstore.db.crypt14", "crypt14 backup"),
        ("msgstore-noexpiry.db.crypt14", "crypt14 backup"),
        ("msgstore.db.crypt12", "crypt12 (or older) backup"),
    ] {
        let out = import(&[&res.join(sample)]);
        refused(&out, 13, what);
        refused(&out, 13, "only end-to-end encrypted backups (crypt15");
    }
    // The crypt14 sample's key file is not the 64-digit key.
    let out = env.run(&[
        "import-whatsapp",
        "--wa-key",
        res.join("key").to_str().unwrap(),
        res.join("msgstore.db.crypt15").to_str().unwrap(),
    ]);
    refused(&out, 3, "key file of crypt12/crypt14");
    assert!(snapshots(&env).is_empty(), "nothing was written");

    // The folder: its crypt15 imports, the older ones are named and left out.
    let out = import(&[res]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("msgstore.db.crypt14: a crypt14 backup"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        dump(&env, "latest", "msgstore.db"),
        fs::read(res.join("msgstore.db")).unwrap()
    );
    let list = snapshots(&env);
    assert_eq!(list.len(), 1);
    let wa = &list[0]["whatsapp"];
    assert_eq!(wa["file"], "msgstore.db.crypt15");
    assert_eq!(
        wa["jid_suffix"],
        peer.header(&res.join("msgstore.db.crypt15"))["info"]["jidSuffix"]
    );
    assert!(
        wa["app_version"].as_str().unwrap().starts_with("2."),
        "{wa}"
    );
}

/// Flips one byte of `file` at `at` into a copy named `name`.
fn flipped(env: &Env, file: &[u8], at: usize, name: &str) -> PathBuf {
    let mut bytes = file.to_vec();
    bytes[at] ^= 0x20;
    let path = env.path(name);
    fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn damage_and_a_wrong_key_each_get_their_own_error_before_anything_is_written() {
    let Some(OneBackup {
        peer,
        env,
        key,
        enc,
        ..
    }) = OneBackup::new(0..500)
    else {
        return;
    };
    let file = fs::read(&enc).unwrap();
    let header_len = usize::from(file[0]) + 2;
    // A temporary folder of this test's own: the other tests import at the same time.
    let scratch_root = env.path("tmp");
    fs::create_dir(&scratch_root).unwrap();
    let import = |path: &Path, key: &Path| {
        env.cmd(&["import-whatsapp", "--wa-key", key.to_str().unwrap()])
            .arg(path)
            .env("TMPDIR", &scratch_root)
            .output()
            .unwrap()
    };
    let cases = [
        // The app version inside the info: only the MD5 covers the header.
        (
            flipped(&env, &file, header_len - 1, "header.crypt15"),
            13,
            "MD5 checksum does not match although",
        ),
        // The IV: the tag fails too.
        (
            flipped(&env, &file, 10, "iv.crypt15"),
            13,
            "neither its MD5 checksum nor its AES-GCM tag",
        ),
        (
            flipped(&env, &file, header_len + 100, "data.crypt15"),
            13,
            "neither its MD5 checksum nor its AES-GCM tag",
        ),
        (
            flipped(&env, &file, file.len() - 20, "tag.crypt15"),
            13,
            "neither its MD5 checksum nor its AES-GCM tag",
        ),
        (
            flipped(&env, &file, file.len() - 3, "md5.crypt15"),
            13,
            "MD5 checksum does not match although",
        ),
        // A header field that no longer parses.
        (
            flipped(&env, &file, 4, "proto.crypt15"),
            13,
            "header is damaged",
        ),
    ];
    for (path, code, message) in &cases {
        let out = import(path, &key);
        assert!(stderr(&out).contains(&path.display().to_string()));
        refused(&out, *code, message);
    }
    let truncated = env.path("truncated.crypt15");
    fs::write(&truncated, &file[..file.len() / 2]).unwrap();
    let out = import(&truncated, &key);
    refused(&out, 13, "damaged or truncated");
    let short = env.path("short.crypt15");
    fs::write(&short, &file[..header_len + 8]).unwrap();
    let out = import(&short, &key);
    refused(&out, 13, "ends early");

    let wrong = env.path("wrong.key");
    peer.key_file(&HEX_KEY.replace('5', "6"), &wrong);
    let out = import(&enc, &wrong);
    refused(&out, 3, "this key does not open this WhatsApp backup");

    // A multi-file backup (stickers, wallpapers): a ZIP, no zlib, no MD5, the tag
    // last. The peer's `--multi-file` writes a single-file layout in 0.1.0, so the
    // file is made with its Python libraries: the header of a backup it wrote, then
    // AES-GCM of its sample ZIP under the file key (RFC 5869 by hand).
    let multi = env.path("stickers.crypt15");
    let script = r#"
import hashlib, hmac, sys
from Cryptodome.Cipher import AES
from wa_crypt_tools.proto import backup_prefix_pb2
key = bytes.fromhex(sys.argv[1])
prk = hmac.new(b"\0" * 32, key, hashlib.sha256).digest()
file_key = hmac.new(prk, b"backup encryption\x01", hashlib.sha256).digest()
data = open(sys.argv[2], "rb").read()
start = 2 if data[1] == 1 else 1
header = data[:start + data[0]]
prefix = backup_prefix_pb2.BackupPrefix()
prefix.ParseFromString(header[start:])
ct, tag = AES.new(file_key, AES.MODE_GCM, nonce=prefix.c15_iv.IV).encrypt_and_digest(open(sys.argv[3], "rb").read())
open(sys.argv[4], "wb").write(header + ct + tag)
"#;
    let out = Command::new(peer.bin.join("python"))
        .args(["-c", script, HEX_KEY])
        .args([&enc, &peer.samples.join("test9.zip"), &multi])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = import(&multi, &key);
    refused(&out, 13, "multi-file crypt15 backup");

    // A sound crypt15 of something that is not a database.
    let text = env.path("notes.txt");
    fs::write(&text, "not a database\n".repeat(100)).unwrap();
    let notdb = env.path("notes.db.crypt15");
    peer.run("waencrypt", &[&key, &text, &notdb]);
    let out = import(&notdb, &key);
    refused(&out, 13, "not a sound SQLite database");

    assert!(
        snapshots(&env).is_empty(),
        "no failed import wrote a snapshot"
    );
    let scratch: Vec<_> = fs::read_dir(&scratch_root).unwrap().collect();
    assert!(
        scratch.is_empty(),
        "no database left in a temporary folder: {scratch:?}"
    );
}

#[test]
fn a_folder_of_dated_backups_imports_as_a_series_oldest_first_deduplicated() {
    let Some(peer) = Peer::find() else { return };
    let (env, _) = Env::new();
    let (key, _) = keys(&env, &peer);
    let phone = env.path("Databases");
    fs::create_dir(&phone).unwrap();
    let db = env.path("msgstore.db");
    // Four nights: the database grows by a few hundred messages each day; the newest
    // backup has no date in its name.
    let names = [
        "msgstore-2024-05-01.1.db.crypt15",
        "msgstore-2024-05-02.1.db.crypt15",
        "msgstore-2024-05-03.1.db.crypt15",
        "msgstore.db.crypt15",
    ];
    let mut databases = Vec::new();
    for (day, name) in names.iter().enumerate() {
        let day = day as u32;
        let start = if day == 0 { 0 } else { 4000 + (day - 1) * 400 };
        chat_db(&db, start..4000 + day * 400);
        let enc = phone.join(name);
        peer.run("waencrypt", &[&key, &db, &enc]);
        databases.push(fs::read(&db).unwrap());
    }
    let import_folder = || -> Vec<serde_json::Value> {
        let args = [
            "import-whatsapp",
            "--wa-key",
            key.to_str().unwrap(),
            "--json",
        ];
        let out = env.run(&[&args[..], &[phone.to_str().unwrap()]].concat());
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let report = import_folder();
    let list = snapshots(&env);
    assert_eq!(list.len(), 4);
    for (i, s) in list.iter().enumerate() {
        assert_eq!(s["whatsapp"]["file"], names[i], "oldest first");
        assert_eq!(
            dump(&env, s["id"].as_str().unwrap(), "msgstore.db"),
            databases[i]
        );
    }
    assert!(
        list[0]["time"].as_str().unwrap().starts_with("2024-05-01"),
        "{}",
        list[0]
    );
    assert!(
        list[2]["time"].as_str().unwrap().starts_with("2024-05-03"),
        "{}",
        list[2]
    );
    // Each night uploads what changed (runs of changed pages, stored as deltas of
    // their previous versions), not the database again.
    for r in &report[1..] {
        let (stored, total) = (
            r["bytes_stored"].as_u64().unwrap(),
            r["database_bytes"].as_u64().unwrap(),
        );
        assert!(
            stored * 5 < total,
            "a later night uploaded {stored} of {total} bytes: {r}"
        );
    }
    // Run again (a nightly job over the same folder): everything is skipped.
    let report = import_folder();
    assert!(report.iter().all(|r| r["skipped"] == true), "{report:?}");
    assert_eq!(snapshots(&env).len(), 4);

    // A database that was not imported exports with the header of a file given.
    let plain = env.path("plain");
    fs::create_dir(&plain).unwrap();
    fs::copy(&db, plain.join("msgstore.db")).unwrap();
    env.ok(&["backup", plain.to_str().unwrap()]);
    let exported = env.path("plain.crypt15");
    let reference = phone.join(names[0]);
    succeeded(export(
        &env,
        &key,
        "plain/msgstore.db",
        &exported,
        &["--header-from", reference.to_str().unwrap()],
    ));
    let back = env.path("plain-back.db");
    peer.run("wadecrypt", &[&key, &exported, &back]);
    assert_eq!(fs::read(&back).unwrap(), fs::read(&db).unwrap());
    assert_eq!(
        peer.header(&exported)["info"],
        peer.header(&reference)["info"]
    );
}
