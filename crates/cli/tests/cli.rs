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

#[test]
fn unreadable_source_file_is_named_and_nothing_is_committed() {
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
    let mut cmd = env.cmd(&["backup", src.to_str().unwrap()]);
    if as_root {
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("locked.jpg") && stderr(&out).contains("No snapshot was written"),
        "{}",
        stderr(&out)
    );
    let list: serde_json::Value = serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(env.ok(&["check", "--read-data"]).contains("no errors"));
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
