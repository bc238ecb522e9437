//! The everyday commands a restic user reaches for: exclusions, tags and hosts,
//! `--dry-run`, `snapshots` filters, `forget` policies, `ls`, `find`, `diff` and
//! `dump`, driven through the `backlock` binary. Output shapes are pinned with insta
//! snapshots (tests/snapshots), the parts that vary from run to run replaced first.

mod common;

use common::{stderr, Env};
use serde_json::Value;
use std::{
    fs,
    path::Path,
    time::{Duration, SystemTime},
};

/// A fixed time for every entry under `root`, so listings do not vary.
fn settle_times(root: &Path) {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut all = backlock_testkit::tree::list_files(root);
    all.push(root.to_path_buf());
    for p in all {
        if !fs::symlink_metadata(&p).unwrap().file_type().is_symlink() {
            fs::File::open(&p).unwrap().set_modified(t).unwrap();
        }
    }
}

/// The snapshots, oldest first.
fn snapshots(env: &Env, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["snapshots", "--json"];
    args.extend_from_slice(extra);
    let v: Value = serde_json::from_str(&env.ok(&args)).unwrap();
    v.as_array().unwrap().clone()
}

/// Runs `args`, which must fail with exit `code` and say `needle` on stderr.
fn refused(env: &Env, args: &[&str], code: i32, needle: &str) {
    let out = env.run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
}

/// Deletes the largest pack of the repository (a store that lost it); returns its path.
fn lose_largest_pack(env: &Env) -> std::path::PathBuf {
    let lost = backlock_testkit::tree::list_files(&env.path("repo/packs"))
        .into_iter()
        .filter(|p| p.is_file())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    fs::remove_file(&lost).unwrap();
    lost
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `out` with the temporary directory, snapshot ids and owners replaced.
fn normalised(env: &Env, out: &str) -> String {
    let mut out = out.replace(&env.dir.path().display().to_string(), "[tmp]");
    for s in snapshots(env, &[]) {
        let id = s["id"].as_str().unwrap();
        let seq = s["seq"].as_u64().unwrap();
        out = out.replace(id, &format!("[id #{seq}]"));
        out = out.replace(&id[..12], &format!("[id #{seq}]"));
        out = out.replace(&id[..8], &format!("[id #{seq}]"));
    }
    out
}

/// A chat-like tree: messages, media, a cache, temporary files, a big file and a
/// folder marked not to be backed up.
fn chat_tree(root: &Path) -> std::path::PathBuf {
    let src = root.join("chats");
    for d in ["db", "media/2024", "media/.thumbcache", "tmp", "private"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    fs::write(src.join("db/msgstore.txt"), b"hello\nworld\n").unwrap();
    fs::write(src.join("media/2024/IMG-1.jpg"), vec![7u8; 3000]).unwrap();
    fs::write(src.join("media/2024/VID-1.mp4"), vec![9u8; 300_000]).unwrap();
    fs::write(src.join("media/.thumbcache/t1"), b"thumb").unwrap();
    fs::write(src.join("tmp/upload.part"), b"partial").unwrap();
    fs::write(src.join("db/journal.tmp"), b"j").unwrap();
    fs::write(src.join("private/.nobackup"), b"").unwrap();
    fs::write(src.join("private/secret.txt"), b"s").unwrap();
    settle_times(&src);
    src
}

fn ls_paths(env: &Env, snapshot: &str) -> Vec<String> {
    json_lines(&env.ok(&["ls", snapshot, "/", "--recursive", "--json"]))
        .into_iter()
        .filter(|v| v["struct_type"] == "node")
        .map(|v| v["path"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn exclusions_leave_out_what_they_name_and_a_bad_pattern_writes_nothing() {
    let (env, _) = Env::new();
    let src = chat_tree(env.dir.path());
    let list = env.path("exclude.txt");
    fs::write(
        &list,
        "# caches are rebuilt by the app\n.thumbcache/\n\n/**/tmp\n",
    )
    .unwrap();
    let summary: Value = serde_json::from_str(&env.ok(&[
        "backup",
        "--json",
        "--exclude",
        "*.tmp",
        "--exclude-file",
        list.to_str().unwrap(),
        "--exclude-larger-than",
        "100K",
        "--exclude-if-present",
        ".nobackup",
        src.to_str().unwrap(),
    ]))
    .unwrap();
    // journal.tmp, .thumbcache, tmp, VID-1.mp4 and private.
    assert_eq!(summary["excluded"], 5, "{summary}");
    insta::assert_snapshot!(ls_paths(&env, "latest").join("\n"));

    // A bad pattern is named with where it was given and where it is wrong, and
    // nothing is written.
    let before = snapshots(&env, &[]).len();
    let out = env.run(&[
        "backup",
        "--exclude",
        "*.tmp",
        "--exclude",
        "media/[z-a]",
        src.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!(stderr(&out).trim());
    fs::write(&list, "ok/\nbad{\n").unwrap();
    refused(
        &env,
        &[
            "backup",
            "--exclude-file",
            list.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
        2,
        "exclude.txt line 2",
    );
    let out = env.run(&[
        "backup",
        "--exclude-larger-than",
        "12 parsecs",
        src.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(snapshots(&env, &[]).len(), before);
}

#[test]
fn tags_hosts_and_paths_are_recorded_and_select_snapshots() {
    let (env, _) = Env::new();
    let src = chat_tree(env.dir.path());
    let other = env.path("other");
    fs::create_dir_all(&other).unwrap();
    let s = src.to_str().unwrap();
    env.ok(&["backup", "--tag", "daily,wifi", "--host", "phone", s]);
    env.ok(&["backup", "--tag", "monthly", s]);
    // A relative path is recorded absolute.
    let out = env
        .cmd(&["backup", "other"])
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let all = snapshots(&env, &[]);
    assert_eq!(all[0]["tags"], serde_json::json!(["daily", "wifi"]));
    assert_eq!(all[0]["host"], "phone");
    assert_eq!(
        all[2]["paths"],
        serde_json::json!([other.display().to_string()])
    );

    let seqs = |extra: &[&str]| -> Vec<u64> {
        snapshots(&env, extra)
            .iter()
            .map(|s| s["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(seqs(&["--host", "phone"]), [1]);
    assert_eq!(seqs(&["--tag", "wifi,daily"]), [1]);
    assert_eq!(seqs(&["--tag", "wifi,monthly"]), Vec::<u64>::new());
    assert_eq!(seqs(&["--tag", "wifi", "--tag", "monthly"]), [1, 2]);
    assert_eq!(seqs(&["--tag", ""]), [3]);
    assert_eq!(seqs(&["--path", s]), [1, 2]);
    let out = env
        .cmd(&["snapshots", "--json", "--path", "other"])
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);

    refused(&env, &["backup", "--tag", "a,,b", s], 2, "empty tag");
}

#[test]
fn a_dry_run_lists_what_would_be_stored_and_writes_nothing() {
    let (env, _) = Env::new();
    let src = chat_tree(env.dir.path());
    let s = src.to_str().unwrap();
    env.ok(&["backup", "--exclude", "*.tmp", s]);
    fs::write(src.join("db/msgstore.txt"), b"hello\nworld\nagain\n").unwrap();
    fs::write(src.join("media/2024/IMG-2.jpg"), vec![1u8; 10]).unwrap();
    let files = |root: &Path| {
        let mut v: Vec<_> = backlock_testkit::tree::list_files(root)
            .into_iter()
            .map(|p| (p.clone(), fs::read(&p).ok()))
            .collect();
        v.sort();
        v
    };
    let (repo_before, home_before) = (files(&env.path("repo")), files(&env.path("home")));
    let out = env.ok(&[
        "backup",
        "--dry-run",
        "--exclude",
        "*.tmp",
        "--exclude",
        ".thumbcache",
        s,
    ]);
    assert_eq!(
        files(&env.path("repo")),
        repo_before,
        "the repository is untouched"
    );
    assert_eq!(
        files(&env.path("home")),
        home_before,
        "and so is the device's state"
    );
    insta::assert_snapshot!(normalised(&env, &out));
    let lines = json_lines(&env.ok(&["backup", "--dry-run", "--json", s]));
    let last = lines.last().unwrap();
    // Changed msgstore.txt, new IMG-2.jpg, and journal.tmp, left out before.
    assert_eq!(
        (last["dry_run"].clone(), last["files_to_read"].clone()),
        (true.into(), 3.into()),
        "{last}"
    );
    assert_eq!(
        lines[0],
        serde_json::json!({"path": "chats", "kind": "dir", "size": 0, "status": "unchanged"})
    );
}

/// Snapshots on a calendar (`backup --time`): the policy keeps what restic's would,
/// says why, and refuses to run without a rule.
#[test]
fn forget_keeps_what_the_policy_names_and_says_why() {
    let (env, _) = Env::new();
    let src = chat_tree(env.dir.path());
    let s = src.to_str().unwrap();
    // Noon on each of ten days in March 2024, two on the last day, one on another
    // host.
    for day in 1..=10 {
        let time = format!("2024-03-{day:02}T12:00:00Z");
        env.ok(&["backup", "--time", &time, "--host", "phone", s]);
    }
    env.ok(&[
        "backup",
        "--time",
        "2024-03-10T18:00:00Z",
        "--tag",
        "keep",
        "--host",
        "phone",
        s,
    ]);
    env.ok(&[
        "backup",
        "--time",
        "2024-03-10T19:00:00Z",
        "--host",
        "laptop",
        s,
    ]);

    refused(&env, &["forget"], 2, "would delete every snapshot");
    assert_eq!(snapshots(&env, &[]).len(), 12);

    let out = env.ok(&[
        "forget",
        "--keep-daily",
        "3",
        "--keep-weekly",
        "2",
        "--keep-tag",
        "keep",
        "--dry-run",
    ]);
    assert_eq!(snapshots(&env, &[]).len(), 12, "a dry run deletes nothing");
    insta::assert_snapshot!(normalised(&env, &out));

    let json: Value = serde_json::from_str(&env.ok(&[
        "forget",
        "--keep-daily",
        "3",
        "--keep-weekly",
        "2",
        "--keep-tag",
        "keep",
        "--json",
    ]))
    .unwrap();
    let groups = json["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "grouped by host and paths");
    assert_eq!(json["removed"].as_array().unwrap().len(), 7);
    let kept = |g: &Value| -> Vec<u64> {
        g["keep"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["seq"].as_u64().unwrap())
            .collect()
    };
    // Newest first: the tagged one, also the newest of its day and of its ISO week;
    // Mar 10 noon is neither; Mar 9 and 8 are days; Mar 3 (a Sunday) ends the week
    // before. Mar 2 and 1 are left out: no rule has room left for the oldest.
    assert_eq!(
        groups[0]["group"],
        serde_json::json!({"host": "laptop", "paths": [s]})
    );
    assert_eq!(kept(&groups[1]), [11, 9, 8, 3]);
    assert_eq!(
        groups[1]["keep"][0]["reasons"],
        serde_json::json!(["has tags [keep]", "daily snapshot", "weekly snapshot"])
    );
    assert_eq!(kept(&groups[0]), [12]);
    let left: Vec<u64> = snapshots(&env, &[])
        .iter()
        .map(|s| s["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(left, [3, 8, 9, 11, 12]);

    // By id; never the newest.
    let id = |seq: usize| {
        snapshots(&env, &[])
            .iter()
            .find(|s| s["seq"] == seq)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let third = id(3);
    let out = env.ok(&["forget", &third[..10]]);
    assert!(out.contains(&format!("removed {}", &third[..8])), "{out}");
    refused(&env, &["forget", &id(12)], 2, "the repository's newest");
    let left: Vec<u64> = snapshots(&env, &[])
        .iter()
        .map(|s| s["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(left, [8, 9, 11, 12]);

    // --prune frees what they held in the same run, and the rest still restores.
    let json: Value = serde_json::from_str(&env.ok(&[
        "forget",
        "--keep-last",
        "1",
        "--group-by",
        "",
        "--prune",
        "--json",
    ]))
    .unwrap();
    assert!(
        json["prune"]["index_objects_replaced"].as_u64().unwrap() >= 1,
        "{json}"
    );
    let left: Vec<u64> = snapshots(&env, &[])
        .iter()
        .map(|s| s["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(left, [12]);
    env.ok(&[
        "restore",
        "latest",
        "--target",
        env.path("out").to_str().unwrap(),
    ]);
    env.ok(&["check", "--read-data"]);
}

#[test]
fn ls_find_diff_and_dump_read_snapshots_without_restoring_them() {
    let (env, _) = Env::new();
    let src = chat_tree(env.dir.path());
    let s = src.to_str().unwrap();
    std::os::unix::fs::symlink("db/msgstore.txt", src.join("latest-db")).unwrap();
    env.ok(&["backup", "--time", "2024-05-01T08:00:00Z", s]);
    fs::write(src.join("db/msgstore.txt"), b"hello\nworld\nagain\n").unwrap();
    fs::remove_file(src.join("tmp/upload.part")).unwrap();
    fs::write(src.join("media/2024/IMG-2.jpg"), vec![1u8; 10]).unwrap();
    fs::set_permissions(
        src.join("media/2024/IMG-1.jpg"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    settle_times(&src);
    env.ok(&["backup", "--time", "2024-05-02T08:00:00Z", s]);

    insta::assert_snapshot!(env.ok(&["ls", "latest"]));
    insta::assert_snapshot!(env.ok(&["ls", "latest", "/chats/media", "-R"]));
    let long = env.ok(&["ls", "latest", "chats/media/2024", "--long"]);
    let modes: Vec<&str> = long.lines().map(|l| &l[..10]).collect();
    assert_eq!(
        modes,
        ["drwxr-xr-x", "-rw-------", "-rw-r--r--", "-rw-r--r--"],
        "{long}"
    );
    assert!(
        long.contains(" 300000 2023-11-14 22:13:20 /chats/media/2024/VID-1.mp4"),
        "{long}"
    );
    let link = env.ok(&["ls", "latest", "/chats/latest-db", "-l"]);
    assert!(
        link.trim_end()
            .ends_with("/chats/latest-db -> db/msgstore.txt"),
        "{link}"
    );
    // --json: the snapshot, then one node per line.
    let mut lines = json_lines(&env.ok(&["ls", "latest", "/chats/db", "--json"]));
    for l in &mut lines {
        for owner in ["uid", "gid", "user", "group"] {
            if l.get(owner).is_some() {
                l[owner] = "[owner]".into();
            }
        }
        for varies in ["id", "short_id", "time_unix", "paths", "host"] {
            if l.get(varies).is_some() {
                l[varies] = "[varies]".into();
            }
        }
    }
    insta::assert_json_snapshot!(lines);

    // find: newest first, names or paths.
    let found = env.ok(&["find", "*.JPG", "--ignore-case"]);
    insta::assert_snapshot!(normalised(&env, &found));
    let found = json_lines(&env.ok(&["find", "/chats/*/msgstore.txt", "--json"]));
    assert_eq!(found.len(), 2);
    assert_eq!(found[0]["size"], 18);
    assert_eq!(found[1]["size"], 12);
    let out = env.run(&["find", "a/[z-a]"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("\"a/[z-a]\" is not valid at character 3"),
        "{}",
        stderr(&out)
    );

    // diff: by trees, with the bytes of the changed files.
    let all = snapshots(&env, &[]);
    let (first, second) = (
        all[0]["id"].as_str().unwrap(),
        all[1]["id"].as_str().unwrap(),
    );
    insta::assert_snapshot!(normalised(&env, &env.ok(&["diff", first, second])));
    let lines = json_lines(&env.ok(&["diff", first, second, "--json"]));
    let stats = lines.last().unwrap();
    assert_eq!(
        (
            stats["added"].as_u64(),
            stats["removed"].as_u64(),
            stats["changed"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{stats}"
    );
    // The new message file's chunk (18 bytes) and the new image (10 bytes).
    assert_eq!(stats["bytes_added"], 28, "{stats}");
    assert_eq!(stats["bytes_removed"], 12 + 7, "{stats}");
    assert_eq!(env.ok(&["diff", first, first]), format!("comparing snapshot {} to snapshot {}:\n\n0 added, 0 removed, 0 changed, 0 with metadata changed, 0 of another kind\nadded: 0.0 MiB, removed: 0.0 MiB (chunks of the changed files)\n", &first[..8], &first[..8]));

    // dump: a file as it is, from either snapshot; a directory as tar.
    assert_eq!(
        env.ok(&["dump", "latest", "/chats/db/msgstore.txt"]),
        "hello\nworld\nagain\n"
    );
    assert_eq!(
        env.ok(&["dump", first, "chats/db/msgstore.txt"]),
        "hello\nworld\n"
    );
    let tar = env
        .cmd(&["dump", "latest", "/chats/media"])
        .output()
        .unwrap();
    assert!(tar.status.success(), "{}", stderr(&tar));
    let unpacked = env.path("unpacked");
    fs::create_dir_all(&unpacked).unwrap();
    tar_x(&tar.stdout, &unpacked);
    common::assert_identical(&unpacked.join("media"), &src.join("media"));
    let out = env.run(&["dump", "latest", "/chats/media/2025/IMG-9.jpg"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    insta::assert_snapshot!(normalised(&env, stderr(&out).trim()));
}

/// Unpacks a tar stream with the system's tar.
fn tar_x(data: &[u8], into: &Path) {
    use std::io::Write;
    let mut child = std::process::Command::new("tar")
        .args(["-x", "-p", "-C", into.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    assert!(child.wait().unwrap().success());
}

/// A database backed up through SQLite, changed, backed up again (its pages stored
/// as deltas against the first): `dump` gives back what `restore` does.
#[test]
fn dump_of_a_database_stored_as_deltas_is_what_restore_writes() {
    let (env, _) = Env::new();
    let src = env.path("app");
    fs::create_dir_all(&src).unwrap();
    let db = src.join("msgstore.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=DELETE; CREATE TABLE m(id INTEGER PRIMARY KEY, body TEXT);",
    )
    .unwrap();
    for i in 0..3000 {
        conn.execute(
            "INSERT INTO m(body) VALUES (?1)",
            [format!("message {i} {}", "x".repeat(i % 97))],
        )
        .unwrap();
    }
    let s = src.to_str().unwrap();
    env.ok(&["backup", s]);
    conn.execute("UPDATE m SET body = 'edited' WHERE id % 50 = 0", [])
        .unwrap();
    drop(conn);
    env.ok(&["backup", s]);
    let target = env.path("restored");
    env.ok(&[
        "restore",
        "latest",
        "--verify",
        "--target",
        target.to_str().unwrap(),
    ]);
    let dumped = env
        .cmd(&["dump", "latest", "/app/msgstore.db"])
        .output()
        .unwrap();
    assert!(dumped.status.success(), "{}", stderr(&dumped));
    assert!(dumped.stdout == fs::read(target.join("app/msgstore.db")).unwrap());
}

/// A prefix that two snapshots share is refused with both named.
#[test]
fn an_ambiguous_snapshot_prefix_lists_the_snapshots_it_matches() {
    let (env, _) = Env::new();
    let src = chat_tree(env.dir.path());
    // Seventeen snapshots: two share a first hex digit.
    for _ in 0..17 {
        env.ok(&["backup", src.to_str().unwrap()]);
    }
    let all = snapshots(&env, &[]);
    let mut by_digit: std::collections::BTreeMap<char, Vec<&str>> = Default::default();
    for s in &all {
        let id = s["id"].as_str().unwrap();
        by_digit
            .entry(id.chars().next().unwrap())
            .or_default()
            .push(id);
    }
    let (digit, ids) = by_digit.iter().find(|(_, v)| v.len() > 1).unwrap();
    let out = env.run(&["ls", &digit.to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for id in ids {
        assert!(err.contains(&id[..12]), "{err}");
    }
}

/// `ID:PATH`, `--include` and `--exclude` restore a part of a snapshot, with the
/// directories it is in and nothing else; a selection of nothing writes nothing.
#[test]
fn restore_writes_the_part_asked_for_and_nothing_when_nothing_matches() {
    let (env, _) = Env::new();
    let src = chat_tree(env.dir.path());
    env.ok(&["backup", src.to_str().unwrap()]);
    let restored = |args: &[&str], name: &str| -> Vec<String> {
        let target = env.path(name);
        let mut all = vec!["restore"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--target", target.to_str().unwrap()]);
        env.ok(&all);
        let mut v: Vec<String> = backlock_testkit::tree::list_files(&target)
            .iter()
            .map(|p| p.strip_prefix(&target).unwrap().display().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        restored(&["latest:/chats/media/2024"], "sub"),
        ["IMG-1.jpg", "VID-1.mp4"]
    );
    assert_eq!(
        fs::read(env.path("sub/VID-1.mp4")).unwrap(),
        fs::read(src.join("media/2024/VID-1.mp4")).unwrap()
    );
    assert_eq!(
        restored(&["latest:chats/db/msgstore.txt"], "one"),
        ["msgstore.txt"]
    );
    assert_eq!(
        restored(&["--include", "*.jpg", "--include", "/chats/db"], "inc"),
        [
            "chats",
            "chats/db",
            "chats/db/journal.tmp",
            "chats/db/msgstore.txt",
            "chats/media",
            "chats/media/2024",
            "chats/media/2024/IMG-1.jpg"
        ]
    );
    assert_eq!(
        restored(
            &[
                "--exclude",
                "/chats/media",
                "--exclude",
                "*.tmp",
                "--exclude",
                "private/"
            ],
            "exc"
        ),
        [
            "chats",
            "chats/db",
            "chats/db/msgstore.txt",
            "chats/tmp",
            "chats/tmp/upload.part"
        ]
    );

    let target = env.path("none");
    refused(
        &env,
        &[
            "restore",
            "--include",
            "*.docx",
            "--target",
            target.to_str().unwrap(),
        ],
        2,
        "nothing was written",
    );
    assert!(!target.exists());
    assert!(fs::read_dir(env.dir.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("backlock-partial")));
    refused(
        &env,
        &[
            "restore",
            "latest:/chats/nope",
            "--target",
            target.to_str().unwrap(),
        ],
        2,
        "the nearest path it holds is /chats",
    );
    let out = env.run(&[
        "restore",
        "--include",
        "a/[z-a]",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--include #1"), "{}", stderr(&out));
}

/// `--verify` reads every file back: a disk that returns other bytes than were
/// written (one flipped here between the write and the read-back) fails the
/// restore, and nothing is left under the target's name.
#[test]
fn restore_verify_catches_a_file_changed_on_disk_after_it_was_written() {
    let (env, _) = Env::new();
    let src = chat_tree(env.dir.path());
    env.ok(&["backup", src.to_str().unwrap()]);
    let target = env.path("out");
    let summary: Value = serde_json::from_str(&env.ok(&[
        "restore",
        "--verify",
        "--json",
        "--target",
        target.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(summary["verified"], 8, "{summary}");
    common::assert_identical(&target.join("chats"), &src);

    let target = env.path("out2");
    let args = [
        "restore",
        "--verify",
        "--json",
        "--target",
        target.to_str().unwrap(),
    ];
    let child = env.spawn_paused(&args, backlock_repo::testhook::step::RESTORE_WRITTEN);
    let staging = fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".out2.backlock-partial-")
        })
        .expect("the staging directory");
    let video = staging.join("chats/media/2024/VID-1.mp4");
    let mut bytes = fs::read(&video).unwrap();
    bytes[200_000] ^= 1;
    fs::write(&video, &bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(6));
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("chats/media/2024/VID-1.mp4 differs from the snapshot"),
        "{message}"
    );
    assert!(!target.exists());
    assert!(!staging.exists());
}

/// `unlock` with nothing to do says so; `--remove-all` asks, and refuses without a
/// terminal unless `--yes`.
#[test]
fn unlock_reports_and_remove_all_asks_first() {
    let (env, _) = Env::new();
    assert_eq!(env.ok(&["unlock"]), "no locks\n");
    refused(&env, &["unlock", "--remove-all"], 2, "--yes");
    let v: Value =
        serde_json::from_str(&env.ok(&["unlock", "--remove-all", "--yes", "--json"])).unwrap();
    assert_eq!(v, serde_json::json!({"removed": [], "left": []}));
}

/// `--limit-upload` and `--limit-download` hold a command's transfers to the rate:
/// 600 KB of incompressible data at 1 MiB/s takes at least half a second each way
/// (a floor only: a slow machine is slower, never faster); 0 is refused.
#[test]
fn transfers_are_held_to_the_limits() {
    let (env, _) = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(
        src.join("noise"),
        backlock_testkit::tree::random_bytes(7, 600_000),
    )
    .unwrap();
    let start = std::time::Instant::now();
    env.ok(&["backup", "--limit-upload", "1024", src.to_str().unwrap()]);
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    let start = std::time::Instant::now();
    let target = env.path("out");
    let out = env
        .cmd(&[
            "restore",
            "--no-cache",
            "--target",
            target.to_str().unwrap(),
        ])
        .env("BACKLOCK_LIMIT_DOWNLOAD", "1024")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    let out = env.run(&["snapshots", "--limit-download", "0"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `check --read-data-subset` reads a part of the packs: the two halves read them all.
#[test]
fn check_reads_a_subset_of_the_packs() {
    let (env, _) = Env::new();
    let src = chat_tree(env.dir.path());
    env.ok(&["backup", src.to_str().unwrap()]);
    let packs = |subset: &str| -> u64 {
        let v: Value =
            serde_json::from_str(&env.ok(&["check", "--json", "--read-data-subset", subset]))
                .unwrap();
        assert!(v["errors"].as_array().unwrap().is_empty(), "{v}");
        v["packs_read"].as_u64().unwrap()
    };
    let all: Value = serde_json::from_str(&env.ok(&["check", "--json", "--read-data"])).unwrap();
    assert_eq!(
        packs("1/2") + packs("2/2"),
        all["packs_read"].as_u64().unwrap()
    );
    assert_eq!(packs("100%"), all["packs_read"].as_u64().unwrap());
    refused(
        &env,
        &["check", "--read-data-subset", "3/2"],
        2,
        "1 ≤ n ≤ m",
    );
}

/// `stats`: each snapshot's size and what it added; a snapshot the same as the one
/// before adds nothing, and the totals show the deduplication.
#[test]
fn stats_counts_what_each_snapshot_added() {
    let (env, _) = Env::new();
    let src = env.path("src");
    fs::create_dir_all(src.join("a")).unwrap();
    fs::write(
        src.join("a/one"),
        backlock_testkit::tree::random_bytes(1, 200_000),
    )
    .unwrap();
    let s = src.to_str().unwrap();
    env.ok(&["backup", s]);
    env.ok(&["backup", s]);
    // A copy of the same content, and 100 KB of new content.
    fs::write(
        src.join("copy"),
        backlock_testkit::tree::random_bytes(1, 200_000),
    )
    .unwrap();
    fs::write(
        src.join("new"),
        backlock_testkit::tree::random_bytes(2, 100_000),
    )
    .unwrap();
    env.ok(&["backup", s]);
    let v: Value = serde_json::from_str(&env.ok(&["stats", "--json"])).unwrap();
    let added: Vec<u64> = v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["new_bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(added, [200_000, 0, 100_000], "{v}");
    assert_eq!(v["logical_bytes"], 200_000 + 200_000 + 500_000);
    assert_eq!(v["unique_bytes"], 300_000);
    assert_eq!(v["dedup_ratio"], 3.0);
    assert!(v["repository_bytes"].as_u64().unwrap() > 300_000, "{v}");
    // One snapshot, counted alone.
    let one: Value = serde_json::from_str(&env.ok(&["stats", "latest", "--json"])).unwrap();
    assert_eq!(one["unique_bytes"], 300_000);
    assert_eq!(one["snapshots"][0]["files"], 3);
    let text = env.ok(&["stats"]);
    assert!(
        text.contains("3 snapshot(s): 0.9 MiB of files, 0.3 MiB after deduplication (3.00x)"),
        "{text}"
    );
}

/// A store that lost a pack: `check` names the damage; without a repair the next
/// backup would point at the lost chunks again. `repair index` drops what the lost
/// pack held, the next backup stores it again from disk, and that snapshot restores
/// whole; so does the older one, whose chunks are the same.
#[test]
fn repair_index_after_a_lost_pack_lets_the_next_backup_heal() {
    let (env, _) = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(
        src.join("video.mp4"),
        backlock_testkit::tree::random_bytes(3, 2_000_000),
    )
    .unwrap();
    fs::write(src.join("note.txt"), b"small").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    // The largest pack holds the video.
    let lost = lose_largest_pack(&env);
    let out = env.run(&["check"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{lost:?} {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );

    let repaired: Value = serde_json::from_str(&env.ok(&["repair", "index", "--json"])).unwrap();
    let name = lost.file_name().unwrap().to_str().unwrap();
    assert_eq!(
        repaired["packs_missing"],
        serde_json::json!([name]),
        "{repaired}"
    );
    assert!(
        repaired["blobs_dropped"].as_u64().unwrap() >= 1,
        "{repaired}"
    );

    let again: Value =
        serde_json::from_str(&env.ok(&["backup", "--json", src.to_str().unwrap()])).unwrap();
    assert!(
        again["bytes_new"].as_u64().unwrap() >= 2_000_000,
        "the lost chunks are stored again: {again}"
    );
    let target = env.path("out");
    env.ok(&[
        "restore",
        "latest",
        "--verify",
        "--target",
        target.to_str().unwrap(),
    ]);
    common::assert_identical(&target.join("src"), &src);
    // The chunks stored again are the ones the first snapshot lost (same content,
    // same IDs): it is whole again too.
    env.ok(&["check", "--read-data"]);
    let target = env.path("first");
    let first = snapshots(&env, &[])[0]["id"].as_str().unwrap().to_owned();
    env.ok(&["restore", &first, "--target", target.to_str().unwrap()]);
    common::assert_identical(&target.join("src"), &src);
}

/// `backup --stdin`: a stream (a database dump, say) stored as one file, read back
/// by `dump` and `restore` exactly; the same stream again adds nothing.
#[test]
fn backup_stdin_stores_a_stream_as_a_file() {
    use std::io::Write;
    let (env, _) = Env::new();
    let data: Vec<u8> = (0..40_000u32)
        .flat_map(|i| format!("INSERT INTO m VALUES({i});\n").into_bytes())
        .collect();
    let backup = || -> Value {
        let mut child = env
            .cmd(&["backup", "--stdin", "--stdin-filename", "db.sql", "--json"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&data).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let first = backup();
    assert_eq!(first["bytes_total"], data.len());
    let second = backup();
    assert_eq!(second["bytes_new"], 0, "{second}");
    let dumped = env.cmd(&["dump", "latest", "/db.sql"]).output().unwrap();
    assert!(dumped.stdout == data);
    assert_eq!(
        snapshots(&env, &[])[0]["paths"],
        serde_json::json!(["stdin:db.sql"])
    );
    let target = env.path("out");
    env.ok(&[
        "restore",
        "latest",
        "--verify",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert!(fs::read(target.join("db.sql")).unwrap() == data);
    let out = env.run(&["backup", "--stdin", "somewhere"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "paths and --stdin exclude each other"
    );
}

/// `init --compression`: recorded in the config (version 3 unless `auto`), and what
/// the chunks take: `off` stores text as it is, `max` no more than `auto`.
#[test]
fn init_compression_is_recorded_and_applied() {
    let text: Vec<u8> = (0..60_000u32)
        .flat_map(|i| format!("message {i}: see you at {} o'clock\n", i % 24).into_bytes())
        .collect();
    let stored = |mode: &str| -> (f64, u8) {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
            extra: Vec::new(),
        };
        let out = env.ok(&[
            "init",
            "--key-only",
            "--yes",
            "--json",
            "--compression",
            mode,
        ]);
        let v: Value = serde_json::from_str(&out).unwrap();
        fs::write(env.path("key"), v["key"].as_str().unwrap()).unwrap();
        let src = env.path("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("chat.txt"), &text).unwrap();
        env.ok(&["backup", src.to_str().unwrap()]);
        let target = env.path("out");
        env.ok(&["restore", "--verify", "--target", target.to_str().unwrap()]);
        assert!(fs::read(target.join("src/chat.txt")).unwrap() == text);
        let stats: Value = serde_json::from_str(&env.ok(&["stats", "--json"])).unwrap();
        let version = fs::read(env.path("repo/config")).unwrap()[0];
        (stats["compression_ratio"].as_f64().unwrap(), version)
    };
    let (off, auto, max) = (stored("off"), stored("auto"), stored("max"));
    assert!(off.0 <= 1.0, "{off:?}");
    assert!(auto.0 > 3.0, "{auto:?}");
    assert!(max.0 >= auto.0, "{max:?} {auto:?}");
    assert_eq!((off.1, auto.1, max.1), (3, 2, 3));
    let (env, _) = Env::new();
    let out = env.run(&["init", "--key-only", "--yes", "--compression", "fast"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `copy` from a local repository into one on S3 (SeaweedFS on loopback): each
/// snapshot keeps its time, host, paths and tags, deduplicates against what the
/// target holds, restores bit for bit and passes `check --read-data`; a second copy
/// skips what is there; a wrong source key names the source.
#[test]
fn copy_between_a_local_and_an_s3_repository() {
    let Some(server) = backlock_testkit::servers::S3Server::start() else {
        return;
    };
    let (mut env, _) = Env::new();
    env.extra = server.env();
    let src = chat_tree(env.dir.path());
    let s = src.to_str().unwrap();
    env.ok(&[
        "backup",
        "--tag",
        "first",
        "--host",
        "phone",
        "--time",
        "2024-06-01T10:00:00Z",
        s,
    ]);
    fs::write(src.join("db/msgstore.txt"), b"hello\nworld\nagain\n").unwrap();
    env.ok(&["backup", "--tag", "second", s]);

    let url = server.url("copies");
    let out: Value =
        serde_json::from_str(&env.ok(&["init", "--key-only", "--yes", "--json", "--repo", &url]))
            .unwrap();
    let s3_key = env.path("s3-key");
    fs::write(&s3_key, out["key"].as_str().unwrap()).unwrap();
    let on_s3 = |args: &[&str]| -> String {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--repo", &url, "--key-file", s3_key.to_str().unwrap()]);
        env.ok(&all)
    };
    // What the target holds already: the second snapshot's data, backed up natively.
    on_s3(&["backup", s]);
    let local = env.path("repo");
    let local_key = env.path("key");
    let copy = |args: &[&str]| -> Value {
        let mut all = vec![
            "copy",
            "--json",
            "--from-repo",
            local.to_str().unwrap(),
            "--from-key-file",
            local_key.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        serde_json::from_str(&on_s3(&all)).unwrap()
    };
    let first = copy(&[]);
    let copied = first["copied"].as_array().unwrap();
    assert_eq!(copied.len(), 2, "{first}");
    let new: u64 = copied
        .iter()
        .map(|c| c["bytes_new"].as_u64().unwrap())
        .sum();
    let total: u64 = copied
        .iter()
        .map(|c| c["bytes_total"].as_u64().unwrap())
        .sum();
    assert!(
        new * 10 < total,
        "deduplicated against the target: {new} of {total}"
    );
    let again = copy(&[]);
    assert_eq!(again["copied"], serde_json::json!([]));
    assert_eq!(again["skipped"].as_array().unwrap().len(), 2);

    let theirs = snapshots(&env, &[]);
    let ours: Vec<Value> = serde_json::from_str::<Value>(&on_s3(&["snapshots", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()[1..]
        .to_vec();
    for (a, b) in theirs.iter().zip(&ours) {
        for field in ["time", "host", "paths", "tags", "files", "bytes"] {
            assert_eq!(a[field], b[field], "{field}");
        }
    }
    let target = env.path("from-s3");
    on_s3(&[
        "restore",
        "latest",
        "--verify",
        "--target",
        target.to_str().unwrap(),
    ]);
    common::assert_identical(&target.join("chats"), &src);
    on_s3(&["check", "--read-data"]);

    // The target's key is a real key, of another repository.
    let wrong = &s3_key;
    let out = env
        .cmd(&[
            "copy",
            "--repo",
            &url,
            "--key-file",
            s3_key.to_str().unwrap(),
            "--from-repo",
            local.to_str().unwrap(),
            "--from-key-file",
            wrong.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains(&format!("the source repository {}", local.display())),
        "{}",
        stderr(&out)
    );
}

/// `--one-file-system`: a file system mounted inside the source (a tmpfs here; needs
/// root, which CI has) is stored as an empty mount point, and without the flag it is
/// backed up like any directory.
#[test]
fn one_file_system_stops_at_mount_points() {
    let (env, _) = Env::new();
    let src = env.path("src");
    let mnt = src.join("mounted");
    fs::create_dir_all(&mnt).unwrap();
    fs::write(src.join("here.txt"), b"here").unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "this test needs root to mount a small tmpfs");
    let written = fs::write(mnt.join("elsewhere.txt"), b"elsewhere");
    let s = src.to_str().unwrap();
    let one = env.run(&["backup", "--one-file-system", s]);
    let one_list = ls_paths(&env, "latest");
    let all = env.run(&["backup", s]);
    let all_list = ls_paths(&env, "latest");
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    written.unwrap();
    assert!(
        one.status.success() && all.status.success(),
        "{}{}",
        stderr(&one),
        stderr(&all)
    );
    assert_eq!(one_list, ["/src", "/src/here.txt", "/src/mounted"]);
    assert_eq!(
        all_list,
        [
            "/src",
            "/src/here.txt",
            "/src/mounted",
            "/src/mounted/elsewhere.txt"
        ]
    );
}

/// The JSON every command prints, reduced to its shape (field names and the type of
/// each value): scripts rely on these names, so a change shows here.
#[test]
fn json_output_shapes_are_stable() {
    fn shape(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
            }
            Value::Array(a) => Value::Array(a.first().map(shape).into_iter().collect()),
            Value::String(_) => "string".into(),
            Value::Number(_) => "number".into(),
            Value::Bool(_) => "bool".into(),
            Value::Null => "null".into(),
        }
    }
    let (env, _) = Env::new();
    let src = chat_tree(env.dir.path());
    let s = src.to_str().unwrap();
    let mut shapes = serde_json::Map::new();
    let mut one = |name: &str, args: &[&str]| {
        let out = env.ok(args);
        shapes.insert(name.into(), shape(&serde_json::from_str(&out).unwrap()));
    };
    one("backup", &["backup", "--json", "--tag", "t", s]);
    fs::write(src.join("db/msgstore.txt"), b"changed").unwrap();
    env.ok(&["backup", s]);
    one("snapshots", &["snapshots", "--json"]);
    one("stats", &["stats", "--json"]);
    one(
        "forget --dry-run",
        &["forget", "--json", "--keep-last", "1", "--dry-run"],
    );
    one("check", &["check", "--json", "--read-data-subset", "1/2"]);
    one(
        "restore",
        &[
            "restore",
            "--json",
            "--verify",
            "--target",
            env.path("out").to_str().unwrap(),
        ],
    );
    one("unlock", &["unlock", "--json"]);
    one("repair index", &["repair", "index", "--json"]);
    let mut lines = |name: &str, args: &[&str]| {
        let out = env.ok(args);
        let all: Vec<Value> = json_lines(&out).iter().map(shape).collect();
        // One line of each shape, in order.
        let mut seen: Vec<Value> = Vec::new();
        for v in all {
            if !seen.contains(&v) {
                seen.push(v);
            }
        }
        shapes.insert(name.into(), Value::Array(seen));
    };
    lines("ls (lines)", &["ls", "latest", "/chats/db", "--json"]);
    lines("find (lines)", &["find", "*.txt", "--json"]);
    lines(
        "backup --dry-run (lines)",
        &["backup", "--dry-run", "--json", s],
    );
    let all = snapshots(&env, &[]);
    lines(
        "diff (lines)",
        &[
            "diff",
            "--json",
            all[0]["id"].as_str().unwrap(),
            all[1]["id"].as_str().unwrap(),
        ],
    );
    insta::assert_json_snapshot!(Value::Object(shapes));
}

/// A store that lost the pack of a video two snapshots share: `repair snapshots`
/// asks, then writes each in place (same number, time and paths) without the video,
/// naming it as lost; `check` is clean again, the rest restores, and a second run
/// finds nothing to do.
#[test]
fn repair_snapshots_rewrites_what_names_lost_data() {
    let (env, _) = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(
        src.join("video.mp4"),
        backlock_testkit::tree::random_bytes(5, 2_000_000),
    )
    .unwrap();
    fs::write(src.join("note.txt"), b"first").unwrap();
    let s = src.to_str().unwrap();
    env.ok(&["backup", "--tag", "kept", s]);
    fs::write(src.join("note.txt"), b"second").unwrap();
    env.ok(&["backup", s]);
    let before = snapshots(&env, &[]);
    lose_largest_pack(&env);
    assert_eq!(env.run(&["check"]).status.code(), Some(4));

    refused(&env, &["repair", "snapshots"], 2, "--yes");
    assert_eq!(
        snapshots(&env, &[]),
        before,
        "nothing changed without --yes"
    );
    let out: Value =
        serde_json::from_str(&env.ok(&["repair", "snapshots", "--yes", "--json"])).unwrap();
    let rewritten = out["rewritten"].as_array().unwrap();
    assert_eq!(rewritten.len(), 2, "{out}");
    // The first backup's note shared the video's pack; the second's is in its own.
    let lost: Vec<u64> = rewritten
        .iter()
        .map(|w| w["lost"].as_u64().unwrap())
        .collect();
    assert_eq!(lost, [2, 1], "{out}");
    env.ok(&["check", "--read-data"]);

    let after = snapshots(&env, &[]);
    for ((a, b), (left, files)) in before.iter().zip(&after).zip([(2, 0), (1, 1)]) {
        for same in ["seq", "time", "host", "paths", "tags"] {
            assert_eq!(a[same], b[same], "{same}");
        }
        assert_ne!(a["id"], b["id"]);
        assert_eq!(
            (b["skipped"].as_u64(), b["files"].as_u64()),
            (Some(left), Some(files))
        );
    }
    let target = env.path("out");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(fs::read(target.join("src/note.txt")).unwrap(), b"second");
    assert!(!target.join("src/video.mp4").exists());
    assert!(env.ok(&["snapshots"]).contains("[incomplete: 2 left out]"));
    assert!(env
        .ok(&["repair", "snapshots"])
        .contains("nothing to repair"));
}

/// `repair snapshots` killed after writing a replacement and before deleting the
/// snapshot it replaces: the next run deletes that one and writes no third.
#[test]
fn a_repair_killed_midway_finishes_on_the_next_run() {
    let (env, _) = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(
        src.join("video.mp4"),
        backlock_testkit::tree::random_bytes(6, 2_000_000),
    )
    .unwrap();
    fs::write(src.join("note.txt"), b"kept").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    lose_largest_pack(&env);
    let step = backlock_repo::testhook::step::REPAIR_REWRITTEN;
    let mut child = env.spawn_paused(&["repair", "snapshots", "--yes"], step);
    child.kill().unwrap();
    child.wait().unwrap();
    let both = snapshots(&env, &[]);
    assert_eq!(both.len(), 2, "the replacement and the replaced, both #1");
    let out: Value =
        serde_json::from_str(&env.ok(&["repair", "snapshots", "--yes", "--json"])).unwrap();
    let left = snapshots(&env, &[]);
    assert_eq!(left.len(), 1, "{out}");
    assert_eq!(out["rewritten"][0]["snapshot"], left[0]["id"], "{out}");
    assert!(
        both.iter().any(|s| s["id"] == left[0]["id"]),
        "no third snapshot was written"
    );
    env.ok(&["check"]);
}

/// Whatever the rules keep, the repository's newest snapshot stays: devices check the
/// store against it. A rule that keeps none of them (a tag nobody has) still leaves it.
#[test]
fn forget_never_removes_the_newest_snapshot() {
    let (env, _) = Env::new();
    let src = chat_tree(env.dir.path());
    let s = src.to_str().unwrap();
    env.ok(&["backup", s]);
    env.ok(&["backup", s]);
    let out: Value =
        serde_json::from_str(&env.ok(&["forget", "--keep-tag", "no-such-tag", "--json"])).unwrap();
    assert_eq!(out["removed"].as_array().unwrap().len(), 1, "{out}");
    let kept = &out["groups"][0]["keep"][0];
    assert_eq!(kept["seq"], 2, "{out}");
    assert!(
        kept["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("newest in the repository"),
        "{out}"
    );
    assert_eq!(snapshots(&env, &[]).len(), 1);
}
