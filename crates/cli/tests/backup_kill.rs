//! `backlock backup` killed with SIGKILL at each named commit step and at instants
//! spread over a backup measured on this machine: the earlier snapshot restores
//! exactly, `check` finds nothing wrong, nothing half-written is left under a final
//! name, and the next backup finishes. `prune` killed at each of its steps too.

use backlock_repo::testhook::step;
use backlock_testkit::timing::{spread, RunClock};
use backlock_testkit::tree;
use std::path::{Path, PathBuf};

mod common;

use common::{stderr, Env};

/// A key-only repository with one snapshot of a sample folder, restored once as the
/// reference; then enough new media that the next backup writes many packs.
fn with_one_snapshot_and_new_media() -> (Env, PathBuf, String) {
    let (env, _) = Env::new();
    let src = tree::write_sample(env.dir.path(), 4);
    env.ok(&["backup", src.to_str().unwrap()]);
    let list: serde_json::Value = serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap();
    let first = list[0]["id"].as_str().unwrap().to_string();
    let reference = env.path("reference");
    env.ok(&["restore", &first, "--target", reference.to_str().unwrap()]);
    add_media(&src, 100);
    (env, src, first)
}

/// Six new 10 MB videos, their contents chosen by `seed`.
fn add_media(src: &Path, seed: u64) {
    for i in 0..6 {
        std::fs::write(
            src.join(format!("Media/VID-{seed}-{i}.mp4")),
            tree::random_bytes(seed + i, 10_000_000),
        )
        .unwrap();
    }
}

/// After a kill: the first snapshot restores exactly, `check` is clean, and no
/// temporary upload is left without its extension (a half-written object under a
/// final name).
fn assert_nothing_lost(env: &Env, first: &str, tag: &str) {
    let out = env.path(&format!("after-{tag}"));
    env.ok(&["restore", first, "--target", out.to_str().unwrap()]);
    tree::assert_same(&env.path("reference"), &out);
    std::fs::remove_dir_all(&out).unwrap();
    let check = env.run(&["check"]);
    assert!(check.status.success(), "{tag}: {}", stderr(&check));
    assert!(!tree::list_files(&env.path("repo/tmp"))
        .iter()
        .any(|p| p.extension().is_none()));
}

/// The next backup finishes and restores the source exactly; `check --read-data` and
/// `prune` find and remove only what the killed runs left.
fn assert_next_backup_finishes(env: &Env, src: &Path, tag: &str) {
    env.ok(&["backup", src.to_str().unwrap()]);
    assert!(env.ok(&["check", "--read-data"]).contains("no errors"));
    let out = env.path(&format!("final-{tag}"));
    env.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    tree::assert_same(src, &out.join("chat"));
    env.ok(&["prune"]);
    assert!(!env.ok(&["check", "--read-data"]).contains("note:"));
}

#[test]
fn sigkill_at_each_commit_step_loses_nothing() {
    for at in step::BACKUP {
        let (env, src, first) = with_one_snapshot_and_new_media();
        let mut child = env.spawn_paused(&["backup", src.to_str().unwrap()], at);
        child.kill().unwrap();
        child.wait().unwrap();
        let tag = at.replace(':', "-");
        assert_nothing_lost(&env, &first, &tag);
        let snapshots: serde_json::Value =
            serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap();
        // Killed once the snapshot was durable, the backup is there although the
        // device never recorded it.
        let expected = if at == step::BACKUP_COMMITTED { 2 } else { 1 };
        assert_eq!(snapshots.as_array().unwrap().len(), expected, "{at}");
        assert_next_backup_finishes(&env, &src, &tag);
    }
}

/// A prune killed after it planned, and after its new index and index set (before any
/// delete): the kept snapshot restores exactly, `check` is clean, and the next prune
/// finishes the job.
#[test]
fn sigkill_at_each_prune_step_loses_nothing() {
    for at in step::PRUNE {
        let (env, src, _) = with_one_snapshot_and_new_media();
        env.ok(&["backup", src.to_str().unwrap()]);
        for i in 0..3 {
            std::fs::remove_file(src.join(format!("Media/VID-100-{i}.mp4"))).unwrap();
        }
        env.ok(&["backup", src.to_str().unwrap()]);
        env.ok(&["forget", "--keep-last", "1"]);
        let mut child = env.spawn_paused(&["prune"], at);
        child.kill().unwrap();
        child.wait().unwrap();
        let tag = at.replace(':', "-");
        let out = env.path(&format!("latest-{tag}"));
        env.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
        tree::assert_same(&src, &out.join("chat"));
        let check = env.run(&["check", "--read-data"]);
        assert!(check.status.success(), "{tag}: {}", stderr(&check));
        assert_next_backup_finishes(&env, &src, &tag);
    }
}

#[test]
fn sigkill_at_instants_spread_over_a_backup_loses_nothing() {
    let (env, src, first) = with_one_snapshot_and_new_media();
    // The clock: the same backup into another repository, on this machine.
    let (measured, _) = Env::new();
    let (mut clock, out) = RunClock::measure(&mut measured.cmd(&["backup", src.to_str().unwrap()]));
    assert!(out.status.success(), "{}", stderr(&out));

    let fractions = spread(12);
    let mut landed = 0;
    let mut fresh = 1000;
    for (round, fraction) in fractions.iter().copied().enumerate() {
        let backup = || env.cmd(&["backup", src.to_str().unwrap()]);
        // A try that ends before its kill committed the new media: the next try
        // gets new media to back up.
        let hit = clock.kill_mid_run(backup, fraction, |kill| {
            if !kill.landed {
                fresh += 10;
                add_media(&src, fresh);
            }
        });
        landed += usize::from(hit);
        assert_nothing_lost(&env, &first, &format!("round-{round}"));
    }
    assert_eq!(
        landed,
        fractions.len(),
        "a backup kept ending before its kill (clock {:?})",
        clock.typical()
    );
    assert_next_backup_finishes(&env, &src, "after-rounds");
}
