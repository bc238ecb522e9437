//! `backlock rotate-key` as real processes: snapshots restore bit for bit under the
//! new key, the old key opens no object left in the store, and SIGKILL at every step
//! leaves a repository that one of the two keys opens completely.

use backlock_core::{
    envelope::{self, ObjectKind, PackOpener, HEADER_LEN},
    format::IndexFile,
    kdf::RepoKeys,
    key::BackupKey,
};
use backlock_repo::testhook::step;
use backlock_testkit::timing::{spread, Kill, RunClock};
use backlock_testkit::tree;
use std::path::{Path, PathBuf};

mod common;

use common::{assert_identical, stderr, Env};

/// A repository with two snapshots, each restored once as the reference.
fn with_two_snapshots() -> (Env, String) {
    let (env, key) = Env::new();
    let src = tree::write_sample(env.dir.path(), 5);
    env.ok(&["backup", src.to_str().unwrap()]);
    std::fs::write(
        src.join("Media/VID-2.mp4"),
        tree::random_bytes(9, 2_000_000),
    )
    .unwrap();
    std::fs::remove_file(src.join("notes.txt")).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    for (i, id) in env.snapshot_ids().iter().enumerate() {
        env.ok(&[
            "restore",
            id,
            "--target",
            env.path(&format!("reference-{i}")).to_str().unwrap(),
        ]);
    }
    (env, key)
}

/// What the rotation tests add to the shared environment.
trait RotateEnv {
    fn snapshot_ids(&self) -> Vec<String>;
    fn assert_whole(&self, tag: &str);
    fn rotate_json(&self) -> serde_json::Value;
}

impl RotateEnv for Env {
    fn snapshot_ids(&self) -> Vec<String> {
        let list: serde_json::Value =
            serde_json::from_str(&self.ok(&["snapshots", "--json"])).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// With the key in the key file: every snapshot restores exactly as before, and
    /// `check --read-data` finds nothing wrong.
    fn assert_whole(&self, tag: &str) {
        let ids = self.snapshot_ids();
        assert_eq!(ids.len(), 2, "{tag}");
        for (i, id) in ids.iter().enumerate() {
            let out = self.path(&format!("{tag}-{i}"));
            self.ok(&["restore", id, "--target", out.to_str().unwrap()]);
            assert_identical(&self.path(&format!("reference-{i}")), &out);
            std::fs::remove_dir_all(out).unwrap();
        }
        let check = self.ok(&["check", "--read-data"]);
        assert!(check.contains("no errors"), "{tag}: {check}");
    }

    fn rotate_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["rotate-key", "--yes", "--json"])).unwrap()
    }
}

/// Every object file in the repository, with its kind and name.
fn objects(repo: &Path) -> Vec<(ObjectKind, String, PathBuf)> {
    let mut out = Vec::new();
    for p in tree::list_files(repo) {
        if !p.is_file() {
            continue;
        }
        let rel = p.strip_prefix(repo).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let kind = match top {
            "packs" => ObjectKind::Pack,
            "index" => ObjectKind::Index,
            "snapshots" => ObjectKind::Snapshot,
            "locks" => ObjectKind::Lock,
            "tmp" => continue,
            _ => ObjectKind::Config,
        };
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        out.push((kind, name, p));
    }
    out
}

/// Tries every object in the store with `keys`; returns how many it opens. Packs are
/// tried blob by blob at the places the new index gives.
fn objects_opened(repo: &Path, keys: &RepoKeys, new_keys: &RepoKeys) -> usize {
    let all = objects(repo);
    let mut places = Vec::new();
    for (kind, name, path) in &all {
        if *kind == ObjectKind::Index {
            let sealed = std::fs::read(path).unwrap();
            let (v, plain) =
                envelope::open_versioned(new_keys, ObjectKind::Index, name, &sealed).unwrap();
            let index = IndexFile::decode(v, &plain).unwrap();
            for p in index.packs {
                places.extend(p.blobs.into_iter().map(|b| (p.pack.to_hex(), b)));
            }
        }
    }
    let mut opened = 0;
    for (kind, name, path) in &all {
        let data = std::fs::read(path).unwrap();
        if *kind == ObjectKind::Pack {
            let opener = PackOpener::new(keys, name, &data[..HEADER_LEN]).unwrap();
            for (_, b) in places.iter().filter(|(p, _)| p == name) {
                let sealed = &data[b.offset as usize..(b.offset + b.length as u64) as usize];
                // The chunk ID under either key: the old key opens a blob under neither.
                if opener.open_blob(b.seq, &b.id, sealed).is_ok() {
                    opened += 1;
                }
            }
        } else if envelope::open(keys, *kind, name, &data).is_ok() {
            opened += 1;
        }
    }
    opened
}

#[test]
fn rotated_repository_restores_bit_for_bit_and_the_old_key_opens_nothing() {
    let (env, old_key) = with_two_snapshots();
    let before: Vec<String> = objects(&env.path("repo"))
        .into_iter()
        .map(|o| o.1)
        .collect();
    let v = env.rotate_json();
    let new_key = v["key"].as_str().unwrap().to_string();
    assert_ne!(new_key, old_key);
    assert_eq!(v["summary"]["snapshots"], 2, "{v}");
    assert!(
        v["summary"]["objects_deleted"].as_u64().unwrap() >= 4,
        "{v}"
    );

    // The old key is refused, as a wrong key.
    let out = env.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    std::fs::write(env.path("key"), &new_key).unwrap();
    env.assert_whole("after");

    // Nothing from before is left but the (rewritten) config.
    let after: Vec<String> = objects(&env.path("repo"))
        .into_iter()
        .map(|o| o.1)
        .collect();
    for name in &after {
        assert!(
            name == "config" || !before.contains(name),
            "{name} survived"
        );
    }
    let old = RepoKeys::derive(&BackupKey::parse(&old_key).unwrap());
    let new = RepoKeys::derive(&BackupKey::parse(&new_key).unwrap());
    assert_eq!(objects_opened(&env.path("repo"), &old, &new), 0);
    // … while the new key opens every one of them (the test is not vacuous).
    let total_blobs_and_objects = objects_opened(&env.path("repo"), &new, &new);
    assert!(
        total_blobs_and_objects > after.len(),
        "{total_blobs_and_objects}"
    );

    // Backups go on, deduplicating against the rotated data; the device state
    // (newest snapshot seen) carried over.
    let src = env.path("chat");
    let summary: serde_json::Value =
        serde_json::from_str(&env.ok(&["backup", "--json", src.to_str().unwrap()])).unwrap();
    assert_eq!(summary["seq"], 3, "{summary}");
    assert_eq!(summary["files_unchanged"].as_u64(), Some(5), "{summary}");
}

#[test]
fn rotate_key_asks_for_confirmation_or_yes() {
    let (env, _) = with_two_snapshots();
    let out = env.run(&["rotate-key"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--yes --json"), "{}", stderr(&out));
    env.assert_whole("unchanged");
    std::fs::write(env.path("key"), "11".repeat(32)).unwrap();
    let out = env.run(&["rotate-key", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

/// SIGKILL paused at each step: before the switch the old key opens everything, after
/// it the new key (kept on the device until the rotation finished) does; the re-run
/// finishes and shows the same new key, and the old key then opens nothing.
#[test]
fn sigkill_at_each_step_leaves_one_key_opening_everything() {
    for at in step::ROTATE {
        let (env, old_key) = with_two_snapshots();
        let mut child = env.spawn_paused(&["rotate-key", "--yes", "--json"], at);
        child.kill().unwrap();
        child.wait().unwrap();

        let switched = matches!(at, step::ROTATE_COMMITTED | step::ROTATE_DELETING);
        if switched {
            let out = env.run(&["snapshots"]);
            assert_eq!(out.status.code(), Some(3), "{at}: old key still opens");
            // The new key is on the device until the rotation finishes.
            assert_eq!(tree::list_files(&env.path("home/keys")).len(), 1, "{at}");
            let kept = pending_key(&env).expect("switched without keeping the new key");
            std::fs::write(env.path("key"), kept.to_display().as_str()).unwrap();
        }
        env.assert_whole(&format!("killed-{}", at.replace(':', "-")));
        std::fs::write(env.path("key"), &old_key).unwrap();

        let v = env.rotate_json();
        let new_key = v["key"].as_str().unwrap().to_string();
        assert_eq!(v["summary"]["finished_earlier"], switched, "{at}: {v}");
        std::fs::write(env.path("key"), &new_key).unwrap();
        env.assert_whole(&format!("final-{}", at.replace(':', "-")));
        assert!(tree::list_files(&env.path("home/keys")).is_empty(), "{at}");
        let old = RepoKeys::derive(&BackupKey::parse(&old_key).unwrap());
        let new = RepoKeys::derive(&BackupKey::parse(&new_key).unwrap());
        assert_eq!(objects_opened(&env.path("repo"), &old, &new), 0, "{at}");
        assert!(
            !objects(&env.path("repo"))
                .iter()
                .any(|(_, n, _)| n.starts_with("rotation-")),
            "{at}: a marker is left"
        );
    }
}

/// `backlock ARGS` on the device whose home is `home`, in password mode: no key
/// file, the embedded vault shared by every device of the test.
fn password_mode(env: &Env, home: &str, args: &[&str]) -> std::process::Command {
    let mut c = env.cmd(args);
    c.env_remove("BACKLOCK_KEY_FILE")
        .env("BACKLOCK_HOME", env.path(home))
        .env("BACKLOCK_VAULT_DATA", env.path("embedded-vault"));
    c
}

/// Password mode: the device keeps the key, and the vault is given the new key in
/// place of the old one behind the password chosen during the rotation; a new phone
/// restores with that password, and the device backs up on without asking.
#[test]
fn password_mode_rotation_re_wraps_the_new_key_in_the_vault() {
    let env = Env {
        dir: tempfile::tempdir().unwrap(),
        extra: Vec::new(),
    };
    let run = |home: &str, args: &[&str]| password_mode(&env, home, args).output().unwrap();
    let ok = |home: &str, args: &[&str]| {
        let out = run(home, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    std::fs::write(env.path("pw-old"), "tulip garden 42").unwrap();
    std::fs::write(env.path("pw-new"), "orchid meadow 77").unwrap();
    let (old_pw, new_pw) = (env.path("pw-old"), env.path("pw-new"));
    let (old_pw, new_pw) = (old_pw.to_str().unwrap(), new_pw.to_str().unwrap());
    ok(
        "phone1",
        &["init", "--password", "--password-file", old_pw, "--yes"],
    );
    let src = tree::write_sample(env.dir.path(), 3);
    ok("phone1", &["backup", src.to_str().unwrap()]);

    let v: serde_json::Value = serde_json::from_str(&ok(
        "phone1",
        &["rotate-key", "--yes", "--json", "--password-file", new_pw],
    ))
    .unwrap();
    assert_eq!(v["vault_updated"], true, "{v}");
    assert_eq!(v["summary"]["snapshots"], 1, "{v}");

    // The old password no longer opens anything; the new one restores on a new phone.
    let restore = |home: &str, pw: &str, target: &str| {
        run(
            home,
            &[
                "restore",
                "--account",
                "local",
                "--password-file",
                pw,
                "--target",
                env.path(target).to_str().unwrap(),
            ],
        )
    };
    let out = restore("phone2", old_pw, "with-old");
    assert!(!out.status.success());
    assert!(!env.path("with-old").exists());
    let out = restore("phone3", new_pw, "with-new");
    assert!(out.status.success(), "{}", stderr(&out));
    // A live database is captured (docs/FORMAT.md §SQLite databases): page for page.
    tree::assert_same(&src, &env.path("with-new/chat"));
    // The device now keeps the new key: backups need no key and no password.
    ok("phone1", &["backup", src.to_str().unwrap()]);
    // The key shown is the one the vault gave phone3.
    std::fs::write(env.path("key"), v["key"].as_str().unwrap()).unwrap();
    let check = env.cmd(&["check"]).output().unwrap();
    assert!(check.status.success(), "{}", stderr(&check));
}

/// Password mode, SIGKILL at random instants: whatever a rotation was doing (keys,
/// re-sealing, the vault's record, the device's copy), running it again finishes
/// it; then the new password restores everything on a new phone, the previous
/// password restores nothing, and the device backs up on without asking.
#[test]
fn password_mode_rotation_killed_anywhere_is_finished_by_the_next_run() {
    let env = Env {
        dir: tempfile::tempdir().unwrap(),
        extra: Vec::new(),
    };
    let cmd = |home: &str, args: &[&str]| password_mode(&env, home, args);
    let ok = |home: &str, args: &[&str]| {
        let out = cmd(home, args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    };
    let password = |round: usize| {
        let path = env.path(&format!("pw-{round}"));
        std::fs::write(&path, format!("orchid meadow {round} of 77")).unwrap();
        path.to_str().unwrap().to_string()
    };
    // On a new phone each time: a fresh device home, restoring into `tag`.
    let restores = |pw: &str, tag: &str| {
        let target = env.path(tag);
        let home = format!("{tag}-phone");
        let out = cmd(
            &home,
            &["restore", "--account", "local", "--password-file", pw],
        )
        .args(["--target", target.to_str().unwrap()])
        .output()
        .unwrap();
        match out.status.success() {
            true => Some(target),
            false => {
                assert!(
                    !target.exists(),
                    "a failed restore left {}",
                    target.display()
                );
                None
            }
        }
    };
    let first = password(0);
    ok(
        "phone",
        &["init", "--password", "--password-file", &first, "--yes"],
    );
    let src = tree::write_sample(env.dir.path(), 3);
    ok("phone", &["backup", src.to_str().unwrap()]);

    // The clock: one whole rotation of this repository on this machine.
    let (mut clock, out) = RunClock::measure(&mut cmd(
        "phone",
        &["rotate-key", "--yes", "--json", "--password-file", &first],
    ));
    assert!(out.status.success(), "{}", stderr(&out));

    let fractions = spread(8);
    let mut landed = 0;
    for (round, fraction) in fractions.iter().copied().enumerate() {
        let (old_pw, new_pw) = (password(round), password(round + 1));
        let rotate = ["rotate-key", "--yes", "--json", "--password-file", &new_pw];
        // A try that ends before its kill rotates to the new password: as good a
        // start for the next try as any.
        let hit = clock.kill_mid_run(|| cmd("phone", &rotate), fraction, |_| {});
        landed += usize::from(hit);
        ok("phone", &rotate);
        let restored = restores(&new_pw, &format!("new-{round}"))
            .expect("the new password restores after the rotation finished");
        tree::assert_same(&src, &restored.join("chat"));
        assert!(
            restores(&old_pw, &format!("old-{round}")).is_none(),
            "round {round}: the previous password still restores"
        );
        ok("phone", &["backup", src.to_str().unwrap()]);
    }
    assert_eq!(
        landed,
        fractions.len(),
        "a rotation kept ending before its kill (clock {:?})",
        clock.typical()
    );
}

/// SIGKILL at random instants, round after round: every time, the key the device
/// last saw or the new key it keeps opens every snapshot, restoring bit for bit.
#[test]
fn sigkill_at_random_instants_leaves_one_key_opening_everything() {
    let (env, _) = with_two_snapshots();
    let rotate = || env.cmd(&["rotate-key", "--yes", "--json"]);
    // A run that finished printed the new key: from then on it is the key.
    let take_key = |kill: &Kill| {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&kill.output.stdout) {
            std::fs::write(env.path("key"), v["key"].as_str().unwrap()).unwrap();
        }
    };
    // The clock: one whole rotation of this repository on this machine.
    let (mut clock, out) = RunClock::measure(&mut rotate());
    assert!(out.status.success(), "{}", stderr(&out));
    take_key(&Kill {
        landed: false,
        output: out,
    });

    let fractions = spread(10);
    let mut landed = 0;
    for (round, fraction) in fractions.iter().copied().enumerate() {
        landed += usize::from(clock.kill_mid_run(rotate, fraction, take_key));
        if env.run(&["snapshots"]).status.code() == Some(3) {
            // Switched: the new key is the one this device keeps until it finishes.
            let kept = pending_key(&env).expect("switched without keeping the new key");
            std::fs::write(env.path("key"), kept.to_display().as_str()).unwrap();
        }
        env.assert_whole(&format!("round-{round}"));
    }
    assert_eq!(
        landed,
        fractions.len(),
        "a rotation kept ending before its kill (clock {:?})",
        clock.typical()
    );
    let v = env.rotate_json();
    std::fs::write(env.path("key"), v["key"].as_str().unwrap()).unwrap();
    env.assert_whole("final");
    // Finished: no copy of any key is left on the device, not even one a killed
    // save wrote to a temporary file.
    assert_eq!(
        tree::list_files(&env.path("home/keys")),
        Vec::<PathBuf>::new()
    );
}

/// The new key this device keeps while a rotation of the test repository runs.
fn pending_key(env: &Env) -> Option<BackupKey> {
    let repo = std::path::absolute(env.path("repo")).unwrap();
    let home = backlock_repo::DeviceHome::new(env.path("home"));
    home.load_key(&format!("{} (key rotation in progress)", repo.display()))
        .unwrap()
}

/// Killed after the rotation ended but before the device forgot the kept new key:
/// the next run, with the new key, reports the rotation finished and shows that key,
/// instead of refusing it as "the current key".
#[test]
fn a_run_stopped_after_the_end_of_a_rotation_is_finished_by_the_next_run() {
    let (env, _) = with_two_snapshots();
    let v = env.rotate_json();
    let key = v["key"].as_str().unwrap();
    std::fs::write(env.path("key"), key).unwrap();
    let repo = std::path::absolute(env.path("repo")).unwrap();
    backlock_repo::DeviceHome::new(env.path("home"))
        .save_key(
            &format!("{} (key rotation in progress)", repo.display()),
            &BackupKey::parse(key).unwrap(),
        )
        .unwrap();

    let again = env.rotate_json();
    assert_eq!(again["key"], key, "{again}");
    assert_eq!(again["summary"]["finished_earlier"], true, "{again}");
    assert!(pending_key(&env).is_none());
    env.assert_whole("after");
}
