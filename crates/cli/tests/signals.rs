//! SIGINT and SIGTERM stop `backup`, `restore` and `prune` cleanly: exit code 130, the
//! repository lock released, nothing half-written under a final name, and the next run
//! finishes the job.

use backlock_repo::testhook::step;
use backlock_testkit::tree;
use std::io::Write;
use std::process::{Child, Command, Output};

mod common;

use common::{stderr, Env};

/// The documented exit code of an operation stopped by a signal.
const INTERRUPTED: i32 = 130;

fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Lets a paused process go on to its next step, where it sees the signal.
fn release(mut child: Child) -> Output {
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    child.wait_with_output().unwrap()
}

fn assert_stopped_cleanly(env: &Env, out: &Output, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(INTERRUPTED),
        "{what}: {:?} {}",
        out.status,
        stderr(out)
    );
    assert!(
        tree::list_files(&env.path("repo/locks")).is_empty(),
        "{what} left its lock"
    );
    assert!(
        env.ok(&["check", "--read-data"]).contains("no errors"),
        "{what}"
    );
}

#[test]
fn a_signal_stops_backup_restore_and_prune_cleanly() {
    let (env, _) = Env::new();
    let src = tree::write_sample(env.dir.path(), 21);
    env.ok(&["backup", src.to_str().unwrap()]);
    std::fs::write(
        src.join("Media/VID-big.mp4"),
        tree::random_bytes(5, 8_000_000),
    )
    .unwrap();
    let snapshots = || env.ok(&["snapshots", "--json"]).matches("\"id\"").count();

    // A backup holding its lock gets SIGTERM: it stops before its next file.
    let backup = env.spawn_paused(&["backup", src.to_str().unwrap()], step::LOCKED);
    signal(&backup, "TERM");
    assert_stopped_cleanly(&env, &release(backup), "backup");
    assert_eq!(snapshots(), 1, "an interrupted backup committed a snapshot");

    // A restore gets SIGINT (Ctrl-C): nothing under the target's name, no staging left.
    let target = env.path("restored");
    let restore = env.spawn_paused(
        &["restore", "latest", "--target", target.to_str().unwrap()],
        step::LOCKED,
    );
    signal(&restore, "INT");
    assert_stopped_cleanly(&env, &release(restore), "restore");
    assert!(!target.exists());
    assert!(
        !tree::list_files(env.dir.path())
            .iter()
            .any(|p| p.to_string_lossy().contains("backlock-partial")),
        "restore left its staging directory"
    );

    // A prune that has planned its work gets SIGTERM before it deletes anything.
    env.ok(&["backup", src.to_str().unwrap()]);
    env.ok(&["forget", "--keep-last", "1"]);
    let prune = env.spawn_paused(&["prune"], step::PRUNE_PLANNED);
    signal(&prune, "TERM");
    assert_stopped_cleanly(&env, &release(prune), "prune");

    // The next runs finish the job.
    env.ok(&["prune"]);
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    tree::assert_same(&src, &target.join("chat"));
}
