//! What the `migrate` and `rotate` tests share: a key-only repository in a temporary
//! directory, driven through the `backlock` binary, and a strict tree comparison.
#![allow(dead_code)]

use backlock_testkit::tree;
use std::{
    io::{BufRead, BufReader},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
};

/// A device (`home`), a repository (`repo`) and its key file (`key`).
pub struct Env {
    pub dir: tempfile::TempDir,
    /// More environment for every command (store credentials).
    pub extra: Vec<(&'static str, String)>,
}

impl Env {
    /// `init --key-only --yes --json`, the key saved to the key file; returns the key.
    pub fn new() -> (Env, String) {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
            extra: Vec::new(),
        };
        let out = env.ok(&["init", "--key-only", "--yes", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let key = v["key"].as_str().unwrap().to_string();
        std::fs::write(env.path("key"), &key).unwrap();
        (env, key)
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_backlock"));
        c.args(args)
            .env_remove(backlock_repo::testhook::PAUSE_VAR)
            .env("BACKLOCK_HOME", self.path("home"))
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("BACKLOCK_REPO", self.path("repo"))
            .env("BACKLOCK_KEY_FILE", self.path("key"))
            .stdin(Stdio::null());
        for (k, v) in &self.extra {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Starts `args` paused at `step` (`backlock_repo::testhook`); returns once it
    /// waits there, its stdin open so the test can let it go on, or kill it, and its
    /// stdout kept for `wait_with_output`.
    pub fn spawn_paused(&self, args: &[&str], step: &str) -> Child {
        let mut child = self
            .cmd(args)
            .env(backlock_repo::testhook::PAUSE_VAR, step)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let marker = format!("paused at {step}");
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains(&marker) => break,
                Some(Ok(_)) => {}
                _ => panic!("{args:?} ended before {step}: {:?}", child.wait()),
            }
        }
        // Keep draining stderr so the child never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        child
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every entry, bit for bit: names, kinds, modes, symlink targets, contents (SQLite
/// sidecars included, no header masked).
pub fn assert_identical(a: &Path, b: &Path) {
    let rel = |root: &Path| -> Vec<PathBuf> {
        tree::list_files(root)
            .into_iter()
            .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
            .collect()
    };
    let (ra, rb) = (rel(a), rel(b));
    assert_eq!(
        ra,
        rb,
        "different entries in {} and {}",
        a.display(),
        b.display()
    );
    for r in ra {
        let (pa, pb) = (a.join(&r), b.join(&r));
        let (ma, mb) = (
            std::fs::symlink_metadata(&pa).unwrap(),
            std::fs::symlink_metadata(&pb).unwrap(),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{}", r.display());
        if ma.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&pa).unwrap(),
                std::fs::read_link(&pb).unwrap()
            );
        } else {
            assert_eq!(ma.mode(), mb.mode(), "mode of {}", r.display());
        }
        if ma.is_file() {
            assert!(
                std::fs::read(&pa).unwrap() == std::fs::read(&pb).unwrap(),
                "{} differs",
                r.display()
            );
        }
    }
}

/// Files and symlinks under `root`.
pub fn count_files(root: &Path) -> usize {
    tree::list_files(root)
        .iter()
        .filter(|p| !std::fs::symlink_metadata(p).unwrap().is_dir())
        .count()
}
