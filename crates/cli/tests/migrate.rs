//! `backlock migrate` as real processes: the unencrypted copy is deleted only after a
//! restore of the new snapshot matched it bit for bit; SIGKILL at named points and at
//! random instants never deletes anything earlier, and a re-run finishes the job.

use backlock_testkit::{
    servers::{S3Server, WebDavServer},
    timing::{spread, RunClock},
    tree,
};
use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

mod common;

use common::{assert_identical, count_files, stderr, Env};

/// What the migration tests add to the shared environment.
trait MigrateEnv {
    fn source(&self) -> (PathBuf, PathBuf);
    fn restore_latest(&self, name: &str) -> PathBuf;
    fn migrate_paused(&self, from: &Path, step: &str) -> Child;
}

impl MigrateEnv for Env {
    /// A chat folder (WAL database with its sidecars, media, a symlink, an empty
    /// file) and an exact copy of it to compare with later.
    fn source(&self) -> (PathBuf, PathBuf) {
        let src = tree::write_sample(&self.path("old-backup"), 7);
        leave_wal(&src.join("msgstore.db"));
        let reference = self.path("reference");
        copy_tree(&src, &reference);
        (src, reference)
    }

    /// Restores the newest snapshot and returns its top folder.
    fn restore_latest(&self, name: &str) -> PathBuf {
        let out = self.path(name);
        self.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
        out.join("chat")
    }

    /// Starts `migrate` paused at `step`.
    fn migrate_paused(&self, from: &Path, step: &str) -> Child {
        self.spawn_paused(&["migrate", "--from", from.to_str().unwrap()], step)
    }
}

/// Leaves committed transactions in `path`'s WAL, not checkpointed into the database,
/// as a copy of a phone's folder taken while the app ran would.
fn leave_wal(path: &Path) {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    tree::insert_messages(&conn, 200, 99);
    // Closing checkpoints and removes the WAL: keep both files as they were open.
    let (db, log) = (std::fs::read(path).unwrap(), std::fs::read(&wal).unwrap());
    drop(conn);
    std::fs::write(path, db).unwrap();
    std::fs::write(&wal, log).unwrap();
}

fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .args(["-a", from.to_str().unwrap(), to.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn migrate_verifies_then_deletes_and_the_snapshot_restores_bit_for_bit() {
    let (env, _) = Env::new();
    let (src, reference) = env.source();
    assert!(src.join("msgstore.db-wal").metadata().unwrap().len() > 0);
    let files = count_files(&src);
    let out = env.ok(&["migrate", "--from", src.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["deleted"].as_array().unwrap().len(), files, "{v}");
    assert!(v["files_verified"].as_u64().unwrap() >= 6, "{v}");
    assert!(v["bytes_verified"].as_u64().unwrap() > 4_000_000, "{v}");
    assert_eq!(v["kept"].as_array().unwrap().len(), 0);
    assert!(!src.exists(), "the source folder is left behind");
    assert!(
        env.path("old-backup").exists(),
        "the parent folder was removed"
    );
    // The database, its uncheckpointed WAL and everything else, exactly.
    assert_identical(&reference, &env.restore_latest("restored"));
    assert!(env.ok(&["check", "--read-data"]).contains("no errors"));
    // No journal, no work directory left on the device.
    assert_eq!(count_files(&env.path("home/migrate")), 0);
}

#[test]
fn migrate_prints_each_deleted_path_and_a_summary() {
    let (env, _) = Env::new();
    let (src, _) = env.source();
    let files = count_files(&src);
    let out = env.ok(&["migrate", "--from", src.to_str().unwrap()]);
    let deleted: Vec<_> = out.lines().filter(|l| l.starts_with("deleted ")).collect();
    assert_eq!(deleted.len(), files, "{out}");
    assert!(deleted
        .iter()
        .any(|l| l.ends_with("/chat/Media/Video/deep/er/VID-1.mp4")));
    let last = out.lines().last().unwrap();
    assert!(last.contains("compared bit for bit"), "{last}");
}

/// SIGKILL while paused at each named step: before the verification passed nothing is
/// deleted; at any step a re-run finishes the job and the snapshot restores exactly.
#[test]
fn sigkill_at_each_step_never_deletes_before_verification() {
    for step in backlock_migrate::STEPS {
        let (env, _) = Env::new();
        let (src, reference) = env.source();
        let mut child = env.migrate_paused(&src, step);
        child.kill().unwrap();
        child.wait().unwrap();
        if step == "deleting" {
            // One file went, after the journal recorded the verified snapshot.
            assert_eq!(count_files(&src), count_files(&reference) - 1, "{step}");
            assert_identical(&reference, &env.restore_latest("killed"));
        } else {
            assert_identical(&reference, &src);
        }
        let out = env.ok(&["migrate", "--from", src.to_str().unwrap(), "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["kept"].as_array().unwrap().len(), 0, "{step}: {v}");
        assert!(!src.exists(), "{step}: source left behind");
        assert_identical(&reference, &env.restore_latest("final"));
    }
}

/// Killed after every file was deleted but before the folders: the re-run only tidies.
#[test]
fn rerun_after_every_file_was_deleted_removes_the_folders_left() {
    let (env, _) = Env::new();
    let (src, reference) = env.source();
    // Simulate the kill just before the directories go: the journal is written at
    // `verified`; delete the files by hand as the killed run would have.
    let mut child = env.migrate_paused(&src, "verified");
    child.kill().unwrap();
    child.wait().unwrap();
    for f in tree::list_files(&src) {
        if !std::fs::symlink_metadata(&f).unwrap().is_dir() {
            std::fs::remove_file(f).unwrap();
        }
    }
    let out = env.ok(&["migrate", "--from", src.to_str().unwrap()]);
    assert!(out.contains("already migrated"), "{out}");
    assert!(!src.exists());
    assert_identical(&reference, &env.restore_latest("final"));
    // Now there is neither a folder nor a journal: a plain "does not exist".
    let again = env.run(&["migrate", "--from", src.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("does not exist"),
        "{}",
        stderr(&again)
    );
}

/// SIGKILL at instants spread over a migration measured first, each round a new
/// migration: whenever anything is missing from the source, the newest snapshot
/// already restores the whole original exactly, and a re-run finishes the job.
#[test]
fn sigkill_at_random_instants_never_loses_a_file() {
    // A chat folder with enough media that a migration does some work.
    let big_source = |env: &Env| {
        let (src, _) = env.source();
        for i in 0..4 {
            std::fs::write(
                src.join(format!("Media/VID-{i}.mp4")),
                tree::random_bytes(40 + i, 6_000_000),
            )
            .unwrap();
        }
        let reference = env.path("reference-big");
        copy_tree(&src, &reference);
        (src, reference)
    };
    let migrate = |env: &Env, src: &Path| env.cmd(&["migrate", "--from", src.to_str().unwrap()]);
    // The clock: one whole migration of the same folder on this machine.
    let (measured, _) = Env::new();
    let (src, _) = big_source(&measured);
    let (mut clock, out) = RunClock::measure(&mut migrate(&measured, &src));
    assert!(out.status.success(), "{}", stderr(&out));

    let fractions = spread(8);
    let mut landed = 0;
    for (round, fraction) in fractions.iter().copied().enumerate() {
        // A try that ends before its kill finished its migration: the next try
        // starts a new one.
        let mut current = None;
        let hit = clock.kill_mid_run(
            || {
                let (env, _) = Env::new();
                let (src, reference) = big_source(&env);
                let cmd = migrate(&env, &src);
                current = Some((env, src, reference));
                cmd
            },
            fraction,
            |_| {},
        );
        landed += usize::from(hit);
        let (env, src, reference) = current.unwrap();
        if src.exists() && count_files(&src) == count_files(&reference) {
            assert_identical(&reference, &src);
        } else {
            let restored = env.restore_latest(&format!("round-{round}"));
            assert_identical(&reference, &restored);
        }
        if src.exists() {
            env.ok(&["migrate", "--from", src.to_str().unwrap()]);
        }
        assert!(!src.exists(), "round {round}: the source is left behind");
        assert_identical(&reference, &env.restore_latest("final"));
    }
    assert_eq!(
        landed,
        fractions.len(),
        "a migration kept ending before its kill (clock {:?})",
        clock.typical()
    );
}

/// A change made to the source while `migrate` waits.
type Change = fn(&Path);

/// The source changes after the backup and before the verification: refused, and
/// nothing is deleted.
#[test]
fn source_changed_between_backup_and_verification_deletes_nothing() {
    let changes: [(&str, Change); 3] = [
        ("was modified", |src| {
            let p = src.join("notes.txt");
            let mut data = std::fs::read(&p).unwrap();
            data[10] ^= 1;
            std::fs::write(p, data).unwrap();
        }),
        ("appeared", |src| {
            std::fs::write(src.join("Media/new.jpg"), b"new").unwrap()
        }),
        ("was removed", |src| {
            std::fs::remove_file(src.join("empty")).unwrap()
        }),
    ];
    for (what, change) in changes {
        let (env, _) = Env::new();
        let (src, _) = env.source();
        let mut child = env.migrate_paused(&src, "after-restore");
        change(&src);
        let after = env.path("after-change");
        copy_tree(&src, &after);
        child.stdin.take().unwrap().write_all(b"\n").unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(1), "{what}");
        assert_identical(&after, &src);
        // The message says what changed, from the same run.
        let out = env.run(&["migrate", "--from", src.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let (env, _) = Env::new();
    let (src, _) = env.source();
    let mut child = env
        .cmd(&["migrate", "--from", src.to_str().unwrap()])
        .env(backlock_migrate::PAUSE_VAR, "after-backup")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("paused at after-backup"), "{line}");
    std::fs::write(src.join("notes.txt"), b"rewritten").unwrap();
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert!(
        rest.contains("changed while it was being migrated"),
        "{rest}"
    );
    assert!(rest.contains("notes.txt"), "{rest}");
    assert!(rest.contains("nothing was deleted"), "{rest}");
    assert_eq!(std::fs::read(src.join("notes.txt")).unwrap(), b"rewritten");
}

#[test]
fn bad_input_is_explained_and_deletes_nothing() {
    let (env, _) = Env::new();
    let (src, reference) = env.source();
    let missing = env.path("no-such-folder");
    let file = env.path("a-file");
    std::fs::write(&file, b"x").unwrap();
    std::fs::create_dir_all(env.path("home")).unwrap();
    std::fs::write(env.path("home/state"), b"x").unwrap();
    let empty = env.path("empty-folder");
    std::fs::create_dir_all(empty.join("sub")).unwrap();
    for (from, code, expect) in [
        (missing.as_path(), 2, "does not exist"),
        (file.as_path(), 2, "not a folder"),
        (empty.as_path(), 2, "holds no files"),
        (env.path("repo").as_path(), 2, "overlaps the repository"),
        (env.path("home").as_path(), 2, "backlock state"),
    ] {
        let out = env.run(&["migrate", "--from", from.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}: {}",
            from.display(),
            stderr(&out)
        );
        assert!(stderr(&out).contains(expect), "{}", stderr(&out));
    }
    assert!(file.exists() && empty.join("sub").is_dir());
    // A repository inside the source: refused before anything is read.
    let inner = env.path("old-backup/chat/repo-inside");
    let out = env
        .cmd(&["init", "--key-only", "--yes", "--json"])
        .env("BACKLOCK_REPO", &inner)
        .output()
        .unwrap();
    assert!(out.status.success());
    let key_inner: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    std::fs::write(env.path("key-inner"), key_inner["key"].as_str().unwrap()).unwrap();
    let out = env
        .cmd(&["migrate", "--from", src.to_str().unwrap()])
        .env("BACKLOCK_REPO", &inner)
        .env("BACKLOCK_KEY_FILE", env.path("key-inner"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("overlaps the repository"));
    std::fs::remove_dir_all(&inner).unwrap();

    // Repository not initialised, and a wrong key.
    let out = env
        .cmd(&["migrate", "--from", src.to_str().unwrap()])
        .env("BACKLOCK_REPO", env.path("not-a-repo"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("backlock init"), "{}", stderr(&out));
    std::fs::write(env.path("wrong-key"), "00".repeat(32)).unwrap();
    let out = env
        .cmd(&["migrate", "--from", src.to_str().unwrap(), "--json"])
        .env("BACKLOCK_KEY_FILE", env.path("wrong-key"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not open"), "{}", stderr(&out));
    let error: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error["exit_code"], 3);
    assert_identical(&reference, &src);
    assert!(env.ok(&["snapshots", "--json"]).trim() == "[]");
}

/// Uploads the regular files under `src` to `url`; returns the store and what it holds.
fn upload(
    url: &str,
    settings: &backlock_store_cloud::Settings,
    src: &Path,
) -> (backlock_store_cloud::CloudStore, Vec<(String, Vec<u8>)>) {
    let store = backlock_store_cloud::open_cloud(
        &backlock_store_cloud::Location::parse(url).unwrap(),
        settings,
        &backlock_store_cloud::Options::default(),
    )
    .unwrap();
    let mut uploaded = Vec::new();
    for f in tree::list_files(src) {
        if std::fs::symlink_metadata(&f).unwrap().is_file() {
            let rel = f.strip_prefix(src).unwrap().to_str().unwrap().to_string();
            put(&store, &rel, std::fs::read(&f).unwrap());
            uploaded.push((rel, std::fs::read(&f).unwrap()));
        }
    }
    (store, uploaded)
}

fn put(store: &backlock_store_cloud::CloudStore, path: &str, data: Vec<u8>) {
    let (op, path) = (store.operator().clone(), path.to_string());
    backlock_store_cloud::runtime()
        .block_on(async move { op.write(&path, data).await })
        .unwrap();
}

/// The unencrypted backup in a real store: refused while it changes, killed while
/// deleting and run again, then every object gone and the snapshot restoring what
/// the store held, byte for byte; a neighbouring prefix untouched.
fn migrate_from_a_store(server_env: Vec<(&'static str, String)>, url: String, neighbour: String) {
    let (mut env, _) = Env::new();
    env.extra = server_env.clone();
    let settings = server_env
        .iter()
        .fold(backlock_store_cloud::Settings::empty(), |s, (k, v)| {
            s.with(k, v)
        });
    let (src, _) = env.source();
    let (store, mut held) = upload(&url, &settings, &src);
    let (neighbour, kept) = upload(&neighbour, &settings, &src.join("Media"));
    let from = ["migrate", "--from", url.as_str(), "--json"];

    // Rewritten between the backup and the verification: nothing is deleted.
    let mut child = env.spawn_paused(&from, "after-restore");
    let notes = held.iter_mut().find(|(p, _)| p == "notes.txt").unwrap();
    notes.1 = b"rewritten in the store".to_vec();
    put(&store, "notes.txt", notes.1.clone());
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(1));
    assert_eq!(store.tree_list().unwrap().files.len(), held.len());

    // Killed after the first deletion: the re-run deletes the rest.
    let mut child = env.spawn_paused(&from, "deleting");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(store.tree_list().unwrap().files.len(), held.len() - 1);
    let out = env.ok(&from);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["deleted"].as_array().unwrap().len(),
        held.len() - 1,
        "{v}"
    );
    assert!(v["deleted"][0].as_str().unwrap().starts_with(&url), "{v}");
    for (name, value) in &server_env {
        if name.contains("SECRET") || name.contains("PASSWORD") {
            assert!(!out.contains(value.as_str()), "{name} in the output");
        }
    }
    let left = store.tree_list().unwrap();
    assert!(left.files.is_empty() && left.dirs.is_empty(), "{left:?}");
    assert_eq!(neighbour.tree_list().unwrap().files.len(), kept.len());

    // The snapshot names where the data came from, not the download folder, and
    // restores exactly what the store held.
    let list: serde_json::Value = serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap();
    let newest = list.as_array().unwrap().last().unwrap();
    assert_eq!(newest["paths"][0], url.as_str(), "{list}");
    let restored = env.restore_latest("restored");
    for (rel, data) in &held {
        assert!(std::fs::read(restored.join(rel)).unwrap() == *data, "{rel}");
    }
    assert_eq!(count_files(&restored), held.len());
}

#[test]
fn migrate_from_an_s3_url() {
    let Some(server) = S3Server::start() else {
        return;
    };
    migrate_from_a_store(
        server.env(),
        server.url("plain/chat"),
        server.url("plain/chat2"),
    );
}

/// WebDAV has directories: they go too, once empty.
#[test]
fn migrate_from_a_webdav_url() {
    let Some(server) = WebDavServer::start() else {
        return;
    };
    migrate_from_a_store(
        server.env(),
        server.url("plain/chat"),
        server.url("plain/chat2"),
    );
}
