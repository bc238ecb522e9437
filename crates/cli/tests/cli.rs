//! The `backlock` command as a user and a script see it: outputs, exit codes, and
//! faults injected into real processes.

use backlock_testkit::tree;
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_backlock"));
        c.args(args)
            .env("BACKLOCK_HOME", self.path("home"))
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("BACKLOCK_REPO", self.path("repo"))
            .env("BACKLOCK_KEY_FILE", self.path("key"))
            .stdin(std::process::Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `init --yes --json`, saving the printed key to the key file.
    fn init(&self) -> String {
        let out = self.ok(&["init", "--key-only", "--yes", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let key = v["key"].as_str().unwrap().to_string();
        std::fs::write(self.path("key"), &key).unwrap();
        key
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn init_prints_key_once_and_everything_works_from_scripts() {
    let env = Env::new();
    let key = env.init();
    assert_eq!(key.split(' ').count(), 16);
    // The key is in no file of the repository.
    for f in tree::list_files(&env.path("repo")) {
        if f.is_file() {
            let data = std::fs::read(&f).unwrap();
            let raw = key.replace(' ', "");
            assert!(!data.windows(raw.len()).any(|w| w == raw.as_bytes()));
        }
    }
    let src = tree::write_sample(env.dir.path(), 1);
    let summary: serde_json::Value =
        serde_json::from_str(&env.ok(&["backup", "--json", src.to_str().unwrap()])).unwrap();
    for field in [
        "files",
        "bytes_read",
        "bytes_new",
        "bytes_stored",
        "dedup_ratio",
        "seconds",
    ] {
        assert!(summary.get(field).is_some(), "summary lacks {field}");
    }
    let list: serde_json::Value = serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    env.ok(&[
        "restore",
        "latest",
        "--target",
        env.path("out").to_str().unwrap(),
    ]);
    tree::assert_same(&src, &env.path("out/chat"));
    assert!(env.ok(&["check", "--read-data"]).contains("no errors"));
    // A second init on the same repository is refused and shows no new key.
    let again = env.run(&["init", "--key-only", "--yes", "--json"]);
    assert!(!again.status.success());
    let error: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(error["error"], "error");
    assert!(error.get("key").is_none(), "{error}");
}

#[test]
fn keys_come_only_from_files_or_prompts() {
    let env = Env::new();
    let out = env.run(&["init", "--key-only"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--yes --json"), "{}", stderr(&out));
    assert!(!env.path("repo").exists());
    env.init();
    let out = env.run(&["snapshots", "--key", "0000"]);
    assert_eq!(out.status.code(), Some(2));
    let out = env
        .cmd(&["snapshots"])
        .env_remove("BACKLOCK_KEY_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--key-file"), "{}", stderr(&out));
}

#[test]
fn malformed_key_names_the_position_and_wrong_key_writes_nothing() {
    let env = Env::new();
    let key = env.init();
    let src = tree::write_sample(env.dir.path(), 2);
    env.ok(&["backup", src.to_str().unwrap()]);
    let target = env.path("target");
    let mut bad = key.clone();
    bad.replace_range(12..13, "z");
    std::fs::write(env.path("key"), &bad).unwrap();
    let out = env.run(&["restore", "--target", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("position 13"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains(&key[..4]),
        "the key leaked into an error"
    );
    std::fs::write(env.path("key"), "0123 ".repeat(16)).unwrap();
    let out = env.run(&["restore", "--target", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("this key does not open this repository"));
    assert!(!target.exists());
}

#[test]
fn damage_and_rollback_get_their_exit_codes() {
    let env = Env::new();
    env.init();
    let src = tree::write_sample(env.dir.path(), 3);
    env.ok(&["backup", src.to_str().unwrap()]);
    env.ok(&["backup", src.to_str().unwrap()]);
    let snaps: Vec<_> = std::fs::read_dir(env.path("repo/snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let newest = snaps
        .iter()
        .max_by_key(|p| p.file_name().unwrap().to_string_lossy()[16..].to_string())
        .unwrap();
    let saved = std::fs::read(newest).unwrap();
    std::fs::remove_file(newest).unwrap();
    let out = env.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("older state"));
    let mut flipped = saved.clone();
    flipped[60] ^= 1;
    std::fs::write(newest, flipped).unwrap();
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(4));
    let name = newest.file_name().unwrap().to_string_lossy().to_string();
    assert!(stderr(&out).contains(&name), "{}", stderr(&out));
    let out = env.run(&[
        "restore",
        "latest",
        "--target",
        env.path("t").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert!(!env.path("t").exists());
}

/// Backups killed with SIGKILL at many instants: the previous snapshot still restores
/// bit for bit, check finds nothing wrong, and the next backup completes.
fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Issue 18 (4): one unreadable file no longer stops the backup of everything else.
/// It is named, the snapshot is committed and marked incomplete, `snapshots` says so,
/// and the command exits with 12.
#[test]
fn an_unreadable_file_is_left_out_named_and_the_snapshot_marked_incomplete() {
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    env.init();
    let src = tree::write_sample(env.dir.path(), 5);
    env.ok(&["backup", src.to_str().unwrap()]);
    let secret = src.join("Media/Images/locked.jpg");
    std::fs::write(&secret, b"cannot read me").unwrap();
    chmod(&secret, 0o000);
    // Root reads anything, so run the backup as an unprivileged user when we are root.
    let as_root = unsafe_free_geteuid() == 0;
    for entry in walk_all(env.dir.path()) {
        if entry != secret {
            chmod(&entry, if entry.is_dir() { 0o777 } else { 0o666 });
        }
    }
    chmod(env.dir.path(), 0o777);
    let mut cmd = env.cmd(&["backup", "--json", src.to_str().unwrap()]);
    if as_root {
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(12), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not backed up: chat/Media/Images/locked.jpg"),
        "{}",
        stderr(&out)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary["skipped"][0]["path"],
        "chat/Media/Images/locked.jpg"
    );

    let list: serde_json::Value = serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["incomplete"], true, "{list:?}");
    assert_eq!(list[1]["skipped"], 1);
    assert!(env.ok(&["snapshots"]).contains("[incomplete: 1 left out]"));
    assert!(env.ok(&["check", "--read-data"]).contains("no errors"));
    // Everything else is in the snapshot.
    std::fs::remove_file(&secret).unwrap();
    let target = env.path("restored");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    tree::assert_same(&src, &target.join("chat"));
}

/// Issue 18 (4): a chat attachment that starts with SQLite's header but is cut short
/// (a half-downloaded `.db` document) used to stop every backup. It is stored as
/// plain bytes with a warning, and restores as those bytes.
#[test]
fn a_malformed_sqlite_attachment_is_stored_as_bytes_and_backups_go_on() {
    let env = Env::new();
    env.init();
    let src = tree::write_sample(env.dir.path(), 14);
    let whole = std::fs::read(src.join("msgstore.db")).unwrap();
    let document = src.join("Media/Documents/export.db");
    std::fs::create_dir_all(document.parent().unwrap()).unwrap();
    let mut cut = whole[..whole.len() / 3].to_vec();
    cut.extend_from_slice(&tree::random_bytes(3, 5000));
    std::fs::write(&document, &cut).unwrap();

    let out = env.run(&["backup", src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("export.db") && stderr(&out).contains("stored as plain bytes"),
        "{}",
        stderr(&out)
    );
    let target = env.path("restored");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    tree::assert_same(&src, &target.join("chat"));
    assert!(std::fs::read(target.join("chat/Media/Documents/export.db")).unwrap() == cut);
}

/// Issue 18 (4): a file deleted between the listing and its read (a chat app
/// clearing its cache) is left out as vanished; the rest is committed.
#[test]
fn a_file_that_vanishes_during_the_backup_is_left_out_as_vanished() {
    use std::io::Write;
    let env = Env::new();
    env.init();
    let src = tree::write_sample(env.dir.path(), 15);
    let cache = src.join("Media/cache.tmp");
    std::fs::write(&cache, b"gone soon").unwrap();
    let (mut child, mut err) =
        paused_at_walked(&mut env.cmd(&["backup", "--json", src.to_str().unwrap()]));
    std::fs::remove_file(&cache).unwrap();
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert_eq!(out.status.code(), Some(12), "{rest}");
    assert!(
        rest.contains("chat/Media/cache.tmp: vanished during the backup"),
        "{rest}"
    );
    let target = env.path("restored");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    tree::assert_same(&src, &target.join("chat"));
}

/// Starts a backup `cmd` that pauses once its pipeline is up and the source listed
/// (before any file is read); returns it paused (a line on its stdin lets it go on),
/// with the rest of its stderr.
fn paused_at_walked(
    cmd: &mut std::process::Command,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStderr>,
) {
    let mut child = cmd
        .env(
            backlock_repo::testhook::PAUSE_VAR,
            backlock_repo::testhook::step::BACKUP_WALKED,
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut err, &mut line).unwrap();
    assert!(line.contains("paused at backup:walked"), "{line}");
    (child, err)
}

/// The thread budget caps every pool: paused once the pipeline is up (before the
/// first file is read), a backup under `BACKLOCK_THREADS=1` runs one compression
/// worker and one uploader; under `--threads 3`, three workers and two uploaders (all
/// a local disk takes). Both backups then complete.
#[test]
fn the_thread_budget_caps_every_pool() {
    use std::io::Write;
    let env = Env::new();
    env.init();
    let src = tree::write_sample(env.dir.path(), 3);
    for (flag, budget, expected) in [(None, "1", (1, 1)), (Some("--threads"), "3", (3, 2))] {
        let mut args = vec!["backup", src.to_str().unwrap()];
        let mut cmd = match flag {
            Some(flag) => {
                args.extend([flag, budget]);
                env.cmd(&args)
            }
            None => {
                let mut cmd = env.cmd(&args);
                cmd.env("BACKLOCK_THREADS", budget);
                cmd
            }
        };
        let (mut child, _err) = paused_at_walked(&mut cmd);
        let read_names = || -> Vec<String> {
            std::fs::read_dir(format!("/proc/{}/task", child.id()))
                .unwrap()
                // A thread that ended meanwhile (the walk, done listing) has no name.
                .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
                .map(|n| n.trim().to_owned())
                .collect()
        };
        // A thread takes its name once it runs: wait until only the main thread
        // still has the process's.
        let mut names = read_names();
        for _ in 0..500 {
            if names.iter().filter(|n| *n == "backlock").count() == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            names = read_names();
        }
        let count = |name: &str| names.iter().filter(|n| *n == name).count();
        let threads = (count("bl-worker"), count("bl-upload"));
        child.stdin.take().unwrap().write_all(b"\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "budget {budget}");
        assert_eq!(threads, expected, "threads under a budget of {budget}");
    }
}

fn walk_all(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(p).unwrap() {
        let path = e.unwrap().path();
        if std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
        {
            continue;
        }
        if path.is_dir() {
            out.extend(walk_all(&path));
        }
        out.push(path);
    }
    out
}

fn unsafe_free_geteuid() -> u32 {
    // /proc/self/status has the effective uid second on its Uid: line.
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

/// `init` without `--yes` shows the key, warns, and creates the repository only after
/// the user types back its last group, on a real terminal (a pty from script(1)).
#[test]
fn interactive_init_requires_typing_back_the_last_group() {
    use std::io::{BufRead, BufReader, Read, Write};
    let env = Env::new();
    let repo = env.path("repo");
    let line = format!(
        "{} init --key-only --repo {}",
        env!("CARGO_BIN_EXE_backlock"),
        repo.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("BACKLOCK_HOME", env.path("home"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let (mut seen, mut key) = (String::new(), None::<String>);
    let mut byte = [0u8; 1];
    // Read until the prompt, remembering the displayed key (16 groups of 4 hex digits).
    while !seen.ends_with("last group of 4 digits: ") {
        assert_eq!(
            out.read(&mut byte).unwrap(),
            1,
            "output ended early: {seen}"
        );
        seen.push(byte[0] as char);
        if byte[0] == b'\n' {
            let last = seen.lines().last().unwrap_or("").trim().to_string();
            if last.split(' ').count() == 16 && last.split(' ').all(|g| g.len() == 4) {
                key = Some(last);
            }
        }
    }
    let key = key.expect("the key was shown");
    assert!(
        seen.contains("can never be restored"),
        "no warning in {seen}"
    );
    assert!(
        !repo.join("config").exists(),
        "repository created before confirmation"
    );
    stdin.write_all(b"0000\n").unwrap();
    let mut rest = String::new();
    while !rest.contains("That is not the last group") {
        let mut l = String::new();
        assert!(
            out.read_line(&mut l).unwrap() > 0,
            "no retry prompt: {rest}"
        );
        rest.push_str(&l);
    }
    let last_group = key.rsplit(' ').next().unwrap().to_string();
    stdin
        .write_all(format!("{last_group}\n").as_bytes())
        .unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(repo.join("config").exists());
    std::fs::write(env.path("key"), &key).unwrap();
    env.ok(&["snapshots"]);
}

/// `cmd` run under a soft limit of `limit` open descriptors.
fn with_descriptor_limit(cmd: &Command, limit: usize) -> Command {
    let mut limited = Command::new("sh");
    limited
        .arg("-c")
        .arg(format!("ulimit -Sn {limit} && exec \"$0\" \"$@\""))
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(std::process::Stdio::null());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => limited.env(k, v),
            None => limited.env_remove(k),
        };
    }
    limited
}

/// Issue 18 (0): a folder of 40 times more files than the process may hold open (a
/// phone's media folder holds tens of thousands) backs up and restores under that
/// limit, every file exact.
#[test]
fn forty_times_more_files_than_open_descriptors_back_up_and_restore() {
    const LIMIT: usize = 128;
    let env = Env::new();
    env.init();
    let src = env.path("chat");
    for d in 0..40 {
        let dir = src.join(format!("Media/Voice/{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..128 {
            std::fs::write(
                dir.join(format!("PTT-{f:03}.opus")),
                format!("voice {d} {f}\n"),
            )
            .unwrap();
        }
    }
    let run = |args: &[&str]| {
        let out = with_descriptor_limit(&env.cmd(args), LIMIT)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    };
    run(&["backup", src.to_str().unwrap()]);
    let target = env.path("restored");
    run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    tree::assert_same(&src, &target.join("chat"));
}

fn snapshot_list(env: &Env) -> (Vec<serde_json::Value>, String) {
    let out = env.run(&["snapshots", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (rows.as_array().unwrap().clone(), stderr(&out))
}

/// Issue 18 (1): whoever can write to the store drops 200 random bytes in as the
/// newest snapshot (sequence 255). Every command passes over the object and names it;
/// `forget --keep-last 1` keeps the newest real snapshot instead of it; `prune`
/// deletes nothing while it is there; `repair snapshots --yes` removes it and nothing
/// else.
#[test]
fn a_fabricated_newest_snapshot_never_displaces_a_real_one() {
    let env = Env::new();
    env.init();
    let src = tree::write_sample(env.dir.path(), 6);
    env.ok(&["backup", src.to_str().unwrap()]);
    std::fs::write(src.join("notes.txt"), b"a later note").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let fake = "aaaaaaaaaaaaaaaa00000000000000ff";
    std::fs::write(
        env.path("repo/snapshots").join(fake),
        tree::random_bytes(77, 200),
    )
    .unwrap();

    let (rows, warned) = snapshot_list(&env);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(warned.contains(fake), "{warned}");

    let out = env.run(&["backup", "--json", src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(fake));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["seq"], 3, "{summary}");

    let out = env.run(&["forget", "--keep-last", "1", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (rows, _) = snapshot_list(&env);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], summary["snapshot"], "forget kept {rows:?}");

    let prune = env.run(&["prune"]);
    assert_eq!(prune.status.code(), Some(4), "{}", stderr(&prune));
    assert!(stderr(&prune).contains(fake));
    let asked = env.run(&["repair", "snapshots"]);
    assert_eq!(asked.status.code(), Some(2), "{}", stderr(&asked));
    assert!(env.path("repo/snapshots").join(fake).exists());
    let repaired = env.ok(&["repair", "snapshots", "--yes", "--json"]);
    assert!(repaired.contains(fake), "{repaired}");
    assert!(!env.path("repo/snapshots").join(fake).exists());

    env.ok(&["prune"]);
    assert!(env.ok(&["check", "--read-data"]).contains("no errors"));
    let target = env.path("restored");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    tree::assert_same(&src, &target.join("chat"));
}

/// Issue 18 (1): a power loss between a snapshot's put and its flush leaves it cut
/// short under its final name (the device never recorded it). The next backup takes
/// the newest authentic snapshot as its parent, `restore latest` restores that, and
/// `check` names the damaged object.
#[test]
fn a_snapshot_cut_short_by_a_power_loss_is_passed_over() {
    let env = Env::new();
    env.init();
    let src = tree::write_sample(env.dir.path(), 8);
    env.ok(&["backup", src.to_str().unwrap()]);
    let (before, _) = snapshot_list(&env);
    let first = env.path("first");
    env.ok(&["restore", "latest", "--target", first.to_str().unwrap()]);
    std::fs::write(src.join("notes.txt"), b"written before the power cut").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    // The second snapshot's bytes never reached the disk; the device never
    // recorded it.
    let (rows, _) = snapshot_list(&env);
    let cut = rows[1]["id"].as_str().unwrap().to_string();
    let path = env.path("repo/snapshots").join(&cut);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // The device's state and cache, not synced, went with the power.
    std::fs::remove_dir_all(env.path("home")).unwrap();
    std::fs::remove_dir_all(env.path("cache")).unwrap();

    let target = env.path("restored");
    let out = env.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&cut), "{}", stderr(&out));
    tree::assert_same(&env.path("first"), &target);
    assert_eq!(snapshot_list(&env).0, before);

    let check = env.run(&["check"]);
    assert_eq!(check.status.code(), Some(4));
    assert!(stderr(&check).contains(&cut), "{}", stderr(&check));
    let out = env.run(&["backup", "--json", src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["seq"], 2, "{summary}");
}

/// Issue 18 (6): a new phone has no record of the repository, so nothing on it can
/// tell an older snapshot from the newest. Before writing anything, restore names the
/// snapshot's number and date, and on a device that never saw the repository says so.
#[test]
fn a_new_phone_is_shown_which_snapshot_it_restores_before_anything_is_written() {
    let env = Env::new();
    env.init();
    let src = tree::write_sample(env.dir.path(), 9);
    env.ok(&["backup", src.to_str().unwrap()]);
    env.ok(&["backup", src.to_str().unwrap()]);

    let target = env.path("on-the-old-phone");
    let out = env.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("(#2), taken "), "{said}");
    assert!(!said.contains("not seen this repository"), "{said}");

    let target = env.path("on-a-new-phone");
    let out = env
        .cmd(&[
            "restore",
            "latest",
            "--json",
            "--target",
            target.to_str().unwrap(),
        ])
        .env("BACKLOCK_HOME", env.path("new-phone"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("(#2), taken "), "{said}");
    assert!(said.contains("not seen this repository before"), "{said}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["seq"], 2, "{summary}");
    assert!(
        summary["time_unix"].as_i64().unwrap() > 1_700_000_000,
        "{summary}"
    );
}

/// Issue 18: after a refusal the user is not locked out of their own data. The store
/// dropped the newest snapshot; `restore` refuses (rollback), and `restore
/// --accept-older` restores what the store has, says so, and records it.
#[test]
fn after_a_rollback_the_user_can_still_restore_what_the_store_has() {
    let env = Env::new();
    env.init();
    let src = tree::write_sample(env.dir.path(), 10);
    env.ok(&["backup", src.to_str().unwrap()]);
    let first = env.path("first");
    env.ok(&["restore", "latest", "--target", first.to_str().unwrap()]);
    std::fs::write(src.join("notes.txt"), b"newer").unwrap();
    let newest: serde_json::Value =
        serde_json::from_str(&env.ok(&["backup", "--json", src.to_str().unwrap()])).unwrap();
    let newest = newest["snapshot"].as_str().unwrap().to_string();
    std::fs::remove_file(env.path("repo/snapshots").join(&newest)).unwrap();

    let target = env.path("restored");
    let refused = env.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(5), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("--accept-older"),
        "{}",
        stderr(&refused)
    );
    assert!(!target.exists());

    let out = env.run(&[
        "restore",
        "latest",
        "--accept-older",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("although this device has seen #2"),
        "{}",
        stderr(&out)
    );
    tree::assert_same(&first, &target);
    let state = tree::list_files(&env.path("home/repos"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap();
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
    assert_eq!(state["newest_seq"], 2, "{state}");
    assert_eq!(state["accepted_older"][0]["seq"], 1, "{state}");
    assert_eq!(state["accepted_older"][0]["seen"], 2, "{state}");
}

#[test]
fn the_object_cache_lives_under_xdg_cache_home_and_no_cache_keeps_none() {
    let env = Env::new();
    env.init();
    let src = tree::write_sample(env.dir.path(), 2);
    let backup = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["backup", "--json"];
        args.extend_from_slice(extra);
        args.push(src.to_str().unwrap());
        serde_json::from_str(&env.ok(&args)).unwrap()
    };
    let cache = env.path("cache/backlock");
    backup(&["--no-cache"]);
    assert!(!cache.exists(), "--no-cache wrote a cache");
    // The first cached run fetches the index object and parent the last one wrote...
    let first = backup(&[]);
    assert!(first["requests"]["get"].as_u64().unwrap() >= 2, "{first}");
    let repo_dirs: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(repo_dirs.len(), 1, "one directory per repository");
    // ...and the next fetches neither: only the config and the index set.
    let warm = backup(&[]);
    let gets = warm["requests"]["get"].as_u64().unwrap();
    assert!(
        gets <= first["requests"]["get"].as_u64().unwrap() - 2,
        "{warm}"
    );
    // A size that is not one is refused before anything runs.
    let out = env
        .cmd(&["snapshots"])
        .env("BACKLOCK_CACHE_MAX_MIB", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("BACKLOCK_CACHE_MAX_MIB"),
        "{}",
        stderr(&out)
    );
    // The store alone still restores everything.
    env.ok(&[
        "restore",
        "--no-cache",
        "latest",
        "--target",
        env.path("out").to_str().unwrap(),
    ]);
    tree::assert_same(&src, &env.path("out/chat"));
}

/// Restored by a user who is not root, files another user owned become the
/// restorer's: the restore says so, and setuid and setgid do not survive (a program
/// must not run as whoever restores it).
#[test]
fn a_restore_as_nobody_says_which_owners_it_could_not_set() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !backlock_testkit::running_as_root() {
        eprintln!("not root: cannot back up files of another owner");
        return;
    }
    let env = Env::new();
    env.init();
    let src = env.path("app");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("tool"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(src.join("tool"), std::fs::Permissions::from_mode(0o6755)).unwrap();
    std::os::unix::fs::chown(src.join("tool"), Some(1234), Some(5678)).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    // nobody may read and lock the repository and read the key; it writes only its
    // own state, cache and target.
    let chmod = std::process::Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(env.dir.path())
        .status()
        .unwrap();
    assert!(chmod.success());
    let nobody = env.path("nobody");
    std::fs::create_dir(&nobody).unwrap();
    std::os::unix::fs::chown(&nobody, Some(65534), Some(65534)).unwrap();
    let target = nobody.join("restored");
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_backlock"))
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .env("BACKLOCK_HOME", nobody.join("home"))
        .env("XDG_CACHE_HOME", nobody.join("cache"))
        .env("BACKLOCK_REPO", env.path("repo"))
        .env("BACKLOCK_KEY_FILE", env.path("key"))
        .stdin(std::process::Stdio::null());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("owner of") && stderr(&out).contains("not restored"),
        "{}",
        stderr(&out)
    );
    let tool = std::fs::metadata(target.join("app/tool")).unwrap();
    assert_eq!((tool.uid(), tool.gid()), (65534, 65534));
    assert_eq!(tool.permissions().mode() & 0o7777, 0o755);
    assert_eq!(
        std::fs::read(target.join("app/tool")).unwrap(),
        b"#!/bin/sh\n"
    );
}
