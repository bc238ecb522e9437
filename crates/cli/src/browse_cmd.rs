//! `ls`, `find`, `diff` and `dump`: looking into snapshots without restoring them.

use crate::{
    format_time, open, snapshots_cmd::snapshot_json, snapshots_cmd::SelectArgs, warn_ignored,
    RepoArgs,
};
use anyhow::Result;
use backlock_repo::{
    browse::{Difference, FindPatterns, ListedEntry},
    select::SnapshotInfo,
    Indexed, Repository, SnapshotRef,
};
use clap::Args;
use serde_json::json;
use std::io::Write;

#[derive(Args)]
pub(crate) struct LsArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Snapshot id (or a unique prefix), or `latest`.
    snapshot: String,
    /// The directory or file to list, from the snapshot's root (`/`: the backed-up
    /// paths, by their last names).
    #[arg(default_value = "/")]
    path: String,
    /// Also list what is inside the subdirectories.
    #[arg(long, short = 'R')]
    recursive: bool,
    /// Show type and mode, owner, group, size and modification time.
    #[arg(long, short = 'l')]
    long: bool,
}

#[derive(Args)]
pub(crate) struct FindArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Globs (`*`, `?`, `[...]`, `{a,b}`); one without `/` matches entry names, one
    /// with `/` paths from the snapshot's root (`/chats/**/*.db`).
    #[arg(required = true)]
    pattern: Vec<String>,
    /// Search only this snapshot (id, prefix or `latest`). Repeatable.
    #[arg(long, short = 's', value_name = "ID")]
    snapshot: Vec<String>,
    /// Match without regard to case.
    #[arg(long, short = 'i')]
    ignore_case: bool,
    /// Show type and mode, owner, group, size and modification time.
    #[arg(long, short = 'l')]
    long: bool,
    #[command(flatten)]
    select: SelectArgs,
}

#[derive(Args)]
pub(crate) struct DiffArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// The older snapshot.
    first: String,
    /// The newer snapshot.
    second: String,
}

#[derive(Args)]
pub(crate) struct DumpArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Snapshot id (or a unique prefix), or `latest`.
    snapshot: String,
    /// A file (written as it is) or a directory (written as a tar archive; `/` for
    /// the whole snapshot), from the snapshot's root.
    path: String,
}

/// The snapshot `id` names, with what it says of itself.
fn snapshot(r: &Repository<Indexed>, id: &str) -> Result<(SnapshotRef, SnapshotInfo)> {
    let found = match id {
        "latest" => {
            let (latest, ignored) = r.latest()?;
            warn_ignored(&ignored);
            latest
        }
        _ => r.find_snapshot(id)?,
    };
    let snap = r.load_snapshot(&found)?;
    Ok((found, SnapshotInfo::of(found, &snap)))
}

pub(crate) fn ls(args: &LsArgs) -> Result<()> {
    let r = open(&args.repo)?.load_index()?;
    let (found, info) = snapshot(&r, &args.snapshot)?;
    let json = args.repo.json;
    let mut out = std::io::stdout().lock();
    if json {
        let mut head = snapshot_json(&info);
        head["struct_type"] = "snapshot".into();
        writeln!(out, "{head}")?;
    }
    r.ls(&found, &args.path, args.recursive, &mut |e| {
        let line = match (json, args.long) {
            (true, _) => entry_json(e).to_string(),
            (false, true) => long_line(e),
            (false, false) => e.path.clone(),
        };
        writeln!(out, "{line}").map_err(output_error)
    })?;
    Ok(())
}

pub(crate) fn find(args: &FindArgs) -> Result<()> {
    let patterns = FindPatterns::new(&args.pattern, args.ignore_case)?;
    let r = open(&args.repo)?.load_index()?;
    // Newest first, as restic lists what it finds.
    let mut chosen = crate::snapshots_cmd::chosen(&r, &args.snapshot, &args.select)?;
    chosen.reverse();
    let json = args.repo.json;
    let mut out = std::io::stdout().lock();
    let mut found = 0u64;
    for info in &chosen {
        let mut first = true;
        r.find(&info.snapshot_ref(), &patterns, &mut |e| {
            found += 1;
            let line = if json {
                let mut row = entry_json(e);
                row["snapshot"] = info.id.clone().into();
                row.to_string()
            } else {
                let mut line = String::new();
                if first {
                    line = format!(
                        "found in snapshot {} (#{}) of {} UTC:\n",
                        &info.id[..8],
                        info.seq,
                        format_time(info.time_unix_ns.div_euclid(1_000_000_000))
                    );
                }
                line.push_str(&match args.long {
                    true => format!("  {}", long_line(e)),
                    false => format!("  {}", e.path),
                });
                line
            };
            first = false;
            writeln!(out, "{line}").map_err(output_error)
        })?;
    }
    if !json && found == 0 {
        eprintln!(
            "nothing matches {} in {} snapshot(s)",
            args.pattern.join(" "),
            chosen.len()
        );
    }
    Ok(())
}

pub(crate) fn diff(args: &DiffArgs) -> Result<()> {
    let r = open(&args.repo)?.load_index()?;
    let (first, first_info) = snapshot(&r, &args.first)?;
    let (second, second_info) = snapshot(&r, &args.second)?;
    let json = args.repo.json;
    if !json {
        println!(
            "comparing snapshot {} to snapshot {}:",
            &first_info.id[..8],
            &second_info.id[..8]
        );
    }
    let mut out = std::io::stdout().lock();
    let summary = r.diff(&first, &second, &mut |d: &Difference| {
        let line = match json {
            true => json!({
                "message_type": "change",
                "path": d.path,
                "modifier": d.modifier,
                "type": d.kind,
            })
            .to_string(),
            false => format!("{}    {}", d.modifier.letter(), d.path),
        };
        writeln!(out, "{line}").map_err(output_error)
    })?;
    drop(out);
    if json {
        let mut stats = serde_json::to_value(&summary)?;
        stats["message_type"] = "statistics".into();
        stats["source_snapshot"] = first_info.id.into();
        stats["target_snapshot"] = second_info.id.into();
        println!("{stats}");
    } else {
        println!(
            "\n{} added, {} removed, {} changed, {} with metadata changed, {} of another kind\nadded: {}, removed: {} (chunks of the changed files)",
            summary.added,
            summary.removed,
            summary.changed,
            summary.metadata_changed,
            summary.kind_changed,
            crate::mib(summary.bytes_added),
            crate::mib(summary.bytes_removed)
        );
    }
    Ok(())
}

pub(crate) fn dump(args: &DumpArgs) -> Result<()> {
    let r = open(&args.repo)?.load_index()?;
    let (found, _) = snapshot(&r, &args.snapshot)?;
    let mut out = std::io::stdout().lock();
    r.dump(&found, &args.path, &mut out)?;
    Ok(())
}

fn output_error(source: std::io::Error) -> backlock_repo::RepoError {
    backlock_repo::RepoError::Output {
        what: "standard output".into(),
        source,
    }
}

/// restic's `ls --json` node.
fn entry_json(e: &ListedEntry) -> serde_json::Value {
    let name = e.path.rsplit('/').next().unwrap_or_default();
    let mut row = json!({
        "struct_type": "node",
        "name": name,
        "type": e.kind,
        "path": e.path,
        "uid": e.uid,
        "gid": e.gid,
        "user": e.user,
        "group": e.group,
        "size": e.size,
        "mode": e.mode,
        "permissions": mode_string(e),
        "mtime": jiff::Timestamp::from_nanosecond(i128::from(e.mtime_ns))
            .map(|t| t.to_string())
            .unwrap_or_default(),
    });
    if let Some(t) = &e.link_target {
        row["link_target"] = t.clone().into();
    }
    row
}

/// `drwxr-xr-x`, as `ls -l` writes it.
fn mode_string(e: &ListedEntry) -> String {
    let kind = match e.kind {
        "dir" => 'd',
        "symlink" => 'l',
        "fifo" => 'p',
        "chardev" => 'c',
        "blockdev" => 'b',
        _ => '-',
    };
    let mut s = String::from(kind);
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        let bit = 0o400 >> i;
        s.push(if e.mode & bit != 0 { c } else { '-' });
    }
    // setuid, setgid and sticky show in the execute places.
    let mut chars: Vec<char> = s.chars().collect();
    for (flag, at, set, unset) in [
        (0o4000, 3, 's', 'S'),
        (0o2000, 6, 's', 'S'),
        (0o1000, 9, 't', 'T'),
    ] {
        if e.mode & flag != 0 {
            chars[at] = if chars[at] == 'x' { set } else { unset };
        }
    }
    chars.into_iter().collect()
}

fn long_line(e: &ListedEntry) -> String {
    let who = |name: &str, id: u32| match name {
        "" => id.to_string(),
        n => n.to_owned(),
    };
    let mut line = format!(
        "{} {:>8} {:>8} {:>12} {} {}",
        mode_string(e),
        who(&e.user, e.uid),
        who(&e.group, e.gid),
        e.size,
        format_time(e.mtime_ns.div_euclid(1_000_000_000)),
        e.path
    );
    if let Some(t) = &e.link_target {
        line.push_str(" -> ");
        line.push_str(t);
    }
    line
}
