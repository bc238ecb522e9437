//! Two processes on one repository: backup, prune and forget started together round
//! after round, some paused at the named steps where a race would do harm. Whatever
//! interleaving happens, every snapshot a backup reported restores bit for bit, and
//! `check --read-data` finds nothing wrong.

use backlock_repo::testhook::step;
use backlock_testkit::tree;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};

mod common;

use common::{stderr, Env};

/// Exit code of "the repository is in use by another operation: try again later".
const IN_USE: i32 = 7;

fn start(env: &Env, args: &[&str]) -> Child {
    env.cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Lets a process paused by [`Env::spawn_paused`] go on, and collects it.
fn release(mut child: Child) -> Output {
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    child.wait_with_output().unwrap()
}

/// It finished, or refused because the other held the lock; nothing else.
fn ok_or_in_use(what: &str, out: &Output) -> bool {
    match out.status.code() {
        Some(0) => true,
        Some(IN_USE) => false,
        other => panic!("{what} ended with {other:?}: {}", stderr(out)),
    }
}

fn copy_tree(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .args(["-a", from.to_str().unwrap(), to.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A new voice note in `src`, different each round.
fn chat_a_little(src: &Path, round: u64) {
    std::fs::write(
        src.join(format!("Media/PTT-{round}.opus")),
        tree::random_bytes(round, 200_000 + round as usize * 997),
    )
    .unwrap();
    std::fs::write(
        src.join("notes.txt"),
        format!("round {round}\n").repeat(500),
    )
    .unwrap();
}

fn backed_up_id(out: &Output) -> String {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["snapshot"].as_str().unwrap().to_string()
}

/// Restores snapshot `id` and compares it with `reference`.
fn assert_restores(env: &Env, id: &str, reference: &Path, tag: &str) {
    let target = env.path(&format!("restored-{tag}"));
    env.ok(&["restore", id, "--target", target.to_str().unwrap()]);
    tree::assert_same(reference, &target.join("chat"));
    std::fs::remove_dir_all(&target).unwrap();
}

/// Issue 18 (3): prune paused once it has read the index and decided what to delete,
/// while a backup runs to the end. Before prune took its lock ahead of the index, the
/// backup committed, and prune then replaced every index object by one written from
/// what it had read, dropping the backup's chunks: `check` failed and the snapshot
/// did not restore.
#[test]
fn a_backup_during_a_paused_prune_is_never_unindexed() {
    let (env, _) = Env::new();
    let src = tree::write_sample(env.dir.path(), 12);
    env.ok(&["backup", src.to_str().unwrap()]);
    chat_a_little(&src, 1);
    env.ok(&["backup", src.to_str().unwrap()]);
    env.ok(&["forget", "--keep-last", "1"]);

    for (round, at) in [(2, step::LOCKED), (3, step::PRUNE_PLANNED)] {
        let prune = env.spawn_paused(&["prune"], at);
        chat_a_little(&src, round);
        let reference = env.path(&format!("reference-{}", at.replace(':', "-")));
        copy_tree(&src, &reference);
        let backup = env.run(&["backup", "--json", src.to_str().unwrap()]);
        let committed = ok_or_in_use("backup", &backup);
        let pruned = release(prune);
        assert!(pruned.status.success(), "{at}: {}", stderr(&pruned));
        let id = if committed {
            backed_up_id(&backup)
        } else {
            backed_up_id(
                &env.cmd(&["backup", "--json", src.to_str().unwrap()])
                    .output()
                    .unwrap(),
            )
        };
        assert!(
            env.ok(&["check", "--read-data"]).contains("no errors"),
            "{at}"
        );
        assert_restores(&env, &id, &reference, at);
    }
}

/// Issue 18 (3): 50 rounds of backup and prune started together (forget too, every
/// fifth round), with a round in three paused at a named step so the lock is held
/// across the other's whole run. Every reported snapshot restores exactly.
#[test]
fn backup_prune_and_forget_racing_for_fifty_rounds_lose_nothing() {
    let (env, _) = Env::new();
    let src = tree::write_sample(env.dir.path(), 13);
    env.ok(&["backup", src.to_str().unwrap()]);
    let mut reported: Vec<(String, PathBuf)> = Vec::new();
    let mut refused = 0;
    for round in 0..50u64 {
        chat_a_little(&src, 100 + round);
        let reference = env.path(&format!("reference-{round}"));
        copy_tree(&src, &reference);
        let backup_args = ["backup", "--json", src.to_str().unwrap()];
        let (backup, prune) = match round % 3 {
            // Prune holds the exclusive lock, paused, while the backup runs.
            0 => {
                let at = [step::LOCKED, step::PRUNE_PLANNED][(round / 3 % 2) as usize];
                let prune = env.spawn_paused(&["prune"], at);
                let backup = env.run(&backup_args);
                (backup, release(prune))
            }
            // The backup holds its shared lock, paused, while prune runs.
            1 => {
                let at = [step::LOCKED, step::BACKUP_INDEXED][(round / 3 % 2) as usize];
                let backup = env.spawn_paused(&backup_args, at);
                let prune = env.run(&["prune"]);
                (release(backup), prune)
            }
            // Both at once, as the scheduler pleases.
            _ => {
                let (b, p) = (start(&env, &backup_args), start(&env, &["prune"]));
                (b.wait_with_output().unwrap(), p.wait_with_output().unwrap())
            }
        };
        if round % 5 == 4 {
            let forget = env.run(&["forget", "--keep-last", "3"]);
            ok_or_in_use("forget", &forget);
        }
        refused += usize::from(!ok_or_in_use("prune", &prune));
        if ok_or_in_use("backup", &backup) {
            reported.push((backed_up_id(&backup), reference));
        } else {
            refused += 1;
        }
    }
    println!(
        "{} backups reported, {refused} refusals as in use",
        reported.len()
    );
    assert!(!reported.is_empty());
    assert!(env.ok(&["check", "--read-data"]).contains("no errors"));
    let listed = env.ok(&["snapshots", "--json"]);
    for (id, reference) in &reported {
        if listed.contains(id.as_str()) {
            assert_restores(&env, id, reference, &id[..8]);
        }
    }
    // The newest reported snapshot was never forgotten: forget keeps three.
    let (newest, _) = reported.last().unwrap();
    assert!(listed.contains(newest.as_str()), "{listed}");
}
