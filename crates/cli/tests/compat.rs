//! Every build reads what earlier format versions wrote: the committed fixture
//! repositories restore exactly as their manifests say, check clean, and take new
//! backups from this build.

use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(version: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{version}"))
}

/// `path kind-or-mode hash` lines of the tree under `root`, as the manifest has them.
fn manifest_of(prefix: &str, root: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for path in backlock_testkit::tree::list_files(root) {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).unwrap();
            lines.push(format!("{prefix} {rel} link {}", target.display()));
        } else if meta.is_file() {
            let hash = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
            let mode = meta.permissions().mode() & 0o7777;
            lines.push(format!("{prefix} {rel} {mode:o} {hash}"));
        }
    }
    lines.sort();
    lines
}

/// Restores every snapshot of fixture `version` as its manifest says, checks it, and
/// backs up on top of it with this build; returns the copy of the repository.
fn read_and_extend(version: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(fixture(version).join("repo"))
        .arg(&repo)
        .status()
        .unwrap();
    assert!(copied.success());
    let cmd = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_backlock"));
        c.args(args)
            .env("BACKLOCK_HOME", dir.path().join("home"))
            .env("BACKLOCK_REPO", &repo)
            .env("BACKLOCK_KEY_FILE", fixture(version).join("key"));
        c
    };
    let ok = |args: &[&str]| {
        let out = cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let list: serde_json::Value = serde_json::from_str(&ok(&["snapshots", "--json"])).unwrap();
    let ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2);
    let expected = std::fs::read_to_string(fixture(version).join("manifest.txt")).unwrap();
    let mut got = Vec::new();
    for id in &ids {
        let target = dir.path().join(format!("restored-{}", &id[..8]));
        ok(&["restore", id, "--target", target.to_str().unwrap()]);
        got.extend(manifest_of(&id[..8], &target));
    }
    let mut expected: Vec<String> = expected.lines().map(str::to_owned).collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    assert!(ok(&["check", "--read-data"]).contains("no errors"));

    // This build goes on from there: a new backup on top, restored exactly.
    let src = dir
        .path()
        .join("restored-".to_owned() + &ids[1][..8])
        .join("chat");
    std::fs::write(src.join("notes.txt"), "written by a later build\n").unwrap();
    let out: serde_json::Value =
        serde_json::from_str(&ok(&["backup", "--json", src.to_str().unwrap()])).unwrap();
    assert_eq!(out["seq"], 3, "{out}");
    // Written as this build writes: a version-3 snapshot, its directories as trees.
    let newest = repo
        .join("snapshots")
        .join(out["snapshot"].as_str().unwrap());
    assert_eq!(std::fs::read(newest).unwrap()[0], 3);
    let target = dir.path().join("after");
    ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    backlock_testkit::tree::assert_same(&src, &target.join("chat"));
    (dir, repo)
}

/// The format version byte of the config object of `repo`.
fn config_version(repo: &Path) -> u8 {
    std::fs::read(repo.join("config")).unwrap()[0]
}

fn index_sets(repo: &Path) -> usize {
    std::fs::read_dir(repo.join("indexsets")).map_or(0, |d| d.count())
}

#[test]
fn a_repository_written_by_format_version_1_is_read_and_extended() {
    // Writer level 1: no index set, a version-1 config.
    assert_eq!(config_version(&fixture("v1").join("repo")), 1);
    assert_eq!(index_sets(&fixture("v1").join("repo")), 0);
    let (_dir, repo) = read_and_extend("v1");
    // The first backup adopted every index object into an index set, then raised the
    // writer level, so that older builds no longer change it.
    assert_eq!(index_sets(&repo), 1);
    assert_eq!(config_version(&repo), 2);
}

#[test]
fn a_repository_written_by_writer_level_2_is_read_and_extended() {
    assert_eq!(config_version(&fixture("v2").join("repo")), 2);
    assert_eq!(index_sets(&fixture("v2").join("repo")), 1);
    let (_dir, repo) = read_and_extend("v2");
    // The backup's set superseded the fixture's.
    assert_eq!(index_sets(&repo), 1);
}

#[test]
fn a_repository_of_version_3_snapshots_is_read_and_extended() {
    let snapshots = fixture("v3").join("repo/snapshots");
    for entry in std::fs::read_dir(snapshots).unwrap() {
        assert_eq!(std::fs::read(entry.unwrap().path()).unwrap()[0], 3);
    }
    let (_dir, repo) = read_and_extend("v3");
    assert_eq!(index_sets(&repo), 1);
}
