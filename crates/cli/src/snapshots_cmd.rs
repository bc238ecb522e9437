//! `snapshots` and `forget`: which snapshots there are, and which to keep.

use crate::{exit, format_time, mib, open, print_json, warn_ignored, RepoArgs};
use anyhow::{bail, Result};
use backlock_repo::{
    retention::{GroupBy, GroupVerdicts, Keep, Policy, Within},
    select::{tag_list, SnapshotFilter, SnapshotInfo},
};
use clap::Args;
use serde_json::json;

/// `--host`, `--tag` and `--path`, as restic reads them.
#[derive(Args, Clone, Default)]
pub(crate) struct SelectArgs {
    /// Only snapshots of this host. Repeatable: any of them.
    #[arg(long, value_name = "HOST")]
    host: Vec<String>,
    /// Only snapshots with these tags (`--tag a,b`: both). Repeatable: any of the
    /// lists. `--tag ''`: snapshots without tags.
    #[arg(long, value_name = "TAGS")]
    tag: Vec<String>,
    /// Only snapshots that backed up this path (absolute, as `backup` records it;
    /// a relative one is taken from here). Repeatable: every one.
    #[arg(long, value_name = "PATH")]
    path: Vec<String>,
}

impl SelectArgs {
    pub(crate) fn filter(&self) -> SnapshotFilter {
        SnapshotFilter {
            hosts: self.host.clone(),
            tags: self.tag.iter().map(|t| tag_list(t)).collect(),
            paths: self
                .path
                .iter()
                .map(|p| match p.contains("://") {
                    true => p.clone(),
                    false => std::path::absolute(p)
                        .map_or_else(|_| p.clone(), |a| a.display().to_string()),
                })
                .collect(),
        }
    }
}

/// `snapshots`: oldest first, as a table or a JSON array.
pub(crate) fn list(args: &RepoArgs, select: &SelectArgs) -> Result<()> {
    let r = open(args)?;
    let filter = select.filter();
    let mut rows = Vec::new();
    let ignored = r.authentic_snapshots(|s, snap| {
        let info = SnapshotInfo::of(s, &snap);
        if !filter.matches(&info) {
            return Ok(());
        }
        // Recorded in the snapshot (version 3) or counted from its nodes: no tree read.
        let totals = snap.summary().unwrap_or_default();
        // A snapshot whose metadata does not decode still restores: say so.
        let skipped = snap.skipped().map(|k| k.len()).unwrap_or(usize::MAX);
        let mut row = snapshot_json(&info);
        row["files"] = totals.files.into();
        row["bytes"] = totals.bytes.into();
        row["incomplete"] = (skipped > 0).into();
        row["skipped"] = skipped.min(u32::MAX as usize).into();
        rows.push(row);
        Ok(())
    })?;
    warn_ignored(&ignored);
    if args.json {
        print_json(&rows);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no snapshots yet");
        return Ok(());
    }
    println!(
        "{:<10} {:>4}  {:<20} {:<12} {:>8} {:>12}  paths",
        "id", "seq", "time (UTC)", "host", "files", "size"
    );
    for row in &rows {
        let incomplete = match row["skipped"].as_u64().unwrap_or(0) {
            0 => String::new(),
            n => format!("  [incomplete: {n} left out]"),
        };
        println!(
            "{:<10} {:>4}  {:<20} {:<12} {:>8} {:>12}  {}{}{incomplete}",
            row["short_id"].as_str().unwrap_or_default(),
            row["seq"].as_u64().unwrap_or(0),
            format_time(row["time_unix"].as_i64().unwrap_or(0)),
            row["host"].as_str().unwrap_or_default(),
            row["files"].as_u64().unwrap_or(0),
            mib(row["bytes"].as_u64().unwrap_or(0)),
            joined(&row["paths"]),
            match joined(&row["tags"]) {
                t if t.is_empty() => t,
                t => format!("  tags: {}", t.replace(' ', ", ")),
            },
        );
    }
    println!("{} snapshot(s)", rows.len());
    Ok(())
}

/// The snapshots `ids` name (ids, prefixes, `latest`), or with none every one
/// `select` picks; oldest first, each once.
pub(crate) fn chosen(
    r: &backlock_repo::Repository<backlock_repo::Indexed>,
    ids: &[String],
    select: &SelectArgs,
) -> Result<Vec<SnapshotInfo>> {
    let mut chosen = Vec::new();
    if ids.is_empty() {
        let filter = select.filter();
        let ignored = r.authentic_snapshots(|s, snap| {
            let info = SnapshotInfo::of(s, &snap);
            if filter.matches(&info) {
                chosen.push(info);
            }
            Ok(())
        })?;
        warn_ignored(&ignored);
        return Ok(chosen);
    }
    for id in ids {
        let found = r.find_snapshot(id)?;
        let snap = r.load_snapshot(&found)?;
        chosen.push(SnapshotInfo::of(found, &snap));
    }
    chosen.sort_by_key(|s| s.seq);
    chosen.dedup_by_key(|s| s.seq);
    Ok(chosen)
}

/// `stats`: sizes, deduplication, and what each snapshot added.
pub(crate) fn stats(args: &RepoArgs, ids: &[String], select: &SelectArgs) -> Result<()> {
    let r = open(args)?.load_index()?;
    let chosen = chosen(&r, ids, select)?;
    let stats = r.stats(&chosen)?;
    if args.json {
        print_json(&stats);
        return Ok(());
    }
    println!(
        "{:<10} {:>4}  {:<20} {:>8} {:>12} {:>12}",
        "id", "seq", "time (UTC)", "files", "size", "added"
    );
    for s in &stats.snapshots {
        println!(
            "{:<10} {:>4}  {:<20} {:>8} {:>12} {:>12}",
            &s.info.id[..8],
            s.info.seq,
            format_time(s.info.time_unix_ns.div_euclid(1_000_000_000)),
            s.files,
            mib(s.logical_bytes),
            mib(s.new_bytes)
        );
    }
    println!(
        "{} snapshot(s): {} of files, {} after deduplication ({:.2}x), {} stored for them ({:.2}x compression); the repository holds {}",
        stats.snapshots.len(),
        mib(stats.logical_bytes),
        mib(stats.unique_bytes),
        stats.dedup_ratio,
        mib(stats.stored_chunk_bytes),
        stats.compression_ratio,
        mib(stats.repository_bytes)
    );
    Ok(())
}

/// `copy`'s source.
#[derive(Args)]
pub(crate) struct CopyArgs {
    /// The repository to copy from: a local directory or a store URL, as --repo.
    #[arg(long, value_name = "LOCATION", env = "BACKLOCK_FROM_REPO")]
    from_repo: std::path::PathBuf,
    /// File holding its 64-digit key (otherwise: the key this device keeps for it,
    /// or a prompt).
    #[arg(long, value_name = "FILE", env = "BACKLOCK_FROM_KEY_FILE")]
    from_key_file: Option<std::path::PathBuf>,
    /// For a source in password mode: file holding its password, to recover its key
    /// from the vault (the vault named by --vault or --vault-bundle, or the embedded
    /// one). One guess per run; this device keeps the key afterwards.
    #[arg(long, value_name = "FILE", env = "BACKLOCK_FROM_PASSWORD_FILE")]
    from_password_file: Option<std::path::PathBuf>,
    /// The source's vault account, if not --account's; a remote vault then takes its
    /// token from BACKLOCK_FROM_TOKEN.
    #[arg(long, value_name = "ID", env = "BACKLOCK_FROM_ACCOUNT")]
    from_account: Option<String>,
    /// Snapshots to copy (ids, prefixes or `latest`); default: every one the
    /// filters select.
    #[arg(value_name = "ID")]
    ids: Vec<String>,
    #[command(flatten)]
    select: SelectArgs,
}

/// `copy`: the source's snapshots not copied yet, oldest first, each a new snapshot
/// here.
pub(crate) fn copy(args: &RepoArgs, copy: &CopyArgs) -> Result<()> {
    use anyhow::Context;
    let from = copy.from_repo.display().to_string();
    let refused = || format!("the source repository {from}");
    let key = crate::password_mode::resolve_key(
        &copy.from_repo,
        copy.from_key_file.as_deref(),
        &source_vault(args, copy),
    )
    .with_context(refused)?;
    let source = backlock_repo::Repository::open(
        crate::store_limited(&copy.from_repo, args)?,
        &key,
        crate::device_home()?,
    )
    .with_context(refused)?
    .with_cache(crate::object_cache(args.no_cache)?.as_ref())
    .load_index()
    .with_context(refused)?;
    let source_id = backlock_core::ids::ObjectName::parse(&source.id()).expect("a repository id");
    let here = open(args).context("this repository")?.load_index()?;
    if here.id() == source.id() {
        bail!(exit::Usage(
            "--from-repo is this repository: copy from another one".into()
        ));
    }
    let copied = here.copied_from(&source_id)?;
    drop(here);
    let chosen = chosen(&source, &copy.ids, &copy.select).with_context(refused)?;
    let (mut done, mut skipped) = (Vec::new(), Vec::new());
    for info in &chosen {
        if copied.contains(&info.snapshot_ref().name) {
            if !args.json {
                println!(
                    "snapshot {} of {from} is here already: skipped",
                    &info.id[..8]
                );
            }
            skipped.push(info.id.clone());
            continue;
        }
        let made = open(args)?.load_index()?.copy_snapshot(&source, info)?;
        if !args.json {
            println!(
                "copied snapshot {} of {from} as {} (#{}): {} of files, {} new, {} uploaded",
                &info.id[..8],
                &made.snapshot[..8],
                made.seq,
                mib(made.bytes_total),
                mib(made.bytes_new),
                mib(made.bytes_stored)
            );
        }
        done.push(made);
    }
    if args.json {
        print_json(&json!({ "copied": done, "skipped": skipped }));
    } else if chosen.is_empty() {
        println!("no snapshot of {from} to copy");
    }
    Ok(())
}

/// The vault that holds the source's key, when the user names its password or account:
/// this command's vault, with the source's account and password file.
fn source_vault(args: &RepoArgs, copy: &CopyArgs) -> crate::vault::VaultArgs {
    if copy.from_password_file.is_none() && copy.from_account.is_none() {
        return Default::default();
    }
    let mut vault = args.vault.clone();
    vault.password_file = copy.from_password_file.clone();
    if let Some(account) = &copy.from_account {
        if vault.account.as_ref() != Some(account) {
            vault.token_var = Some("BACKLOCK_FROM_TOKEN");
        }
        vault.account = Some(account.clone());
    }
    if vault.account.is_none() && vault.vault.is_none() && vault.vault_bundle.is_none() {
        // The embedded vault's own account: what makes `given()` mean password mode.
        vault.account = Some(crate::vault::LOCAL_ACCOUNT.into());
    }
    vault
}

/// What every command prints of a snapshot: restic's names where they exist
/// (`id`, `short_id`, `time` in RFC 3339, `hostname` as `host`, `paths`, `tags`).
pub(crate) fn snapshot_json(s: &SnapshotInfo) -> serde_json::Value {
    let mut out = json!({
        "id": s.id,
        "short_id": &s.id[..8],
        "seq": s.seq,
        "time": jiff::Timestamp::from_nanosecond(i128::from(s.time_unix_ns))
            .map(|t| t.to_string())
            .unwrap_or_default(),
        "time_unix": s.time_unix_ns.div_euclid(1_000_000_000),
        "host": s.host,
        "paths": s.paths,
        "tags": s.tags,
    });
    if let Some(w) = &s.whatsapp {
        let info = backlock_whatsapp::header::info(&w.prefix);
        out["whatsapp"] = json!({
            "file": w.file,
            "sha256": hex::encode(w.sha256),
            "app_version": info.app_version,
            "jid_suffix": info.jid_suffix,
            "backup_version": info.backup_version,
        });
    }
    out
}

fn joined(list: &serde_json::Value) -> String {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// `forget`'s rules.
#[derive(Args, Clone)]
pub(crate) struct ForgetArgs {
    /// Snapshots to forget by id (or unique prefix), instead of a policy.
    #[arg(value_name = "ID")]
    ids: Vec<String>,
    /// Keep the N newest snapshots (`unlimited`: all).
    #[arg(long, short = 'l', value_name = "N")]
    keep_last: Option<Keep>,
    /// Keep the newest snapshot of each of the N newest hours that have one.
    #[arg(long, short = 'H', value_name = "N")]
    keep_hourly: Option<Keep>,
    /// Keep the newest snapshot of each of the N newest days that have one.
    #[arg(long, short = 'd', value_name = "N")]
    keep_daily: Option<Keep>,
    /// Keep the newest snapshot of each of the N newest ISO weeks that have one.
    #[arg(long, short = 'w', value_name = "N")]
    keep_weekly: Option<Keep>,
    /// Keep the newest snapshot of each of the N newest months that have one.
    #[arg(long, short = 'm', value_name = "N")]
    keep_monthly: Option<Keep>,
    /// Keep the newest snapshot of each of the N newest years that have one.
    #[arg(long, short = 'y', value_name = "N")]
    keep_yearly: Option<Keep>,
    /// Keep every snapshot within DURATION of the group's newest (1y6m, 7d, 36h).
    #[arg(long, value_name = "DURATION")]
    keep_within: Option<Within>,
    /// Keep every snapshot with these tags (`a,b`: both). Repeatable: any.
    #[arg(long, value_name = "TAGS")]
    keep_tag: Vec<String>,
    /// Apply the rules to each group of snapshots apart: a comma-separated list of
    /// host, paths and tags, or '' for one group.
    #[arg(long, short = 'g', value_name = "GROUP", default_value = "host,paths")]
    group_by: GroupBy,
    /// Print what would be removed, and why each kept snapshot is kept; delete
    /// nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Then remove the data no snapshot uses any more, as `prune` does.
    #[arg(long)]
    prune: bool,
    #[command(flatten)]
    select: SelectArgs,
}

impl ForgetArgs {
    fn policy(&self) -> Policy {
        Policy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self.keep_within.clone(),
            tags: self.keep_tag.iter().map(|t| tag_list(t)).collect(),
        }
    }
}

/// `forget`: applies the rules, prints the verdicts, and prunes if asked.
pub(crate) fn forget(args: &RepoArgs, forget: &ForgetArgs) -> Result<()> {
    let policy = forget.policy();
    if !forget.ids.is_empty() {
        if !policy.is_empty() || forget.dry_run {
            bail!(exit::Usage(
                "give snapshot ids or --keep-* rules (with --dry-run), not both".into()
            ));
        }
        let summary = open(args)?.forget_ids(&forget.ids)?;
        warn_ignored(&summary.ignored);
        let pruned = match forget.prune {
            true => Some(open(args)?.load_index_exclusive()?.prune()?),
            false => None,
        };
        if args.json {
            print_json(&json!({"removed": summary.removed, "prune": pruned}));
        } else {
            for id in &summary.removed {
                println!("removed {}", &id[..8]);
            }
            match &pruned {
                Some(p) => crate::print_pruned(p),
                None => println!("run `backlock prune` to free their data"),
            }
        }
        return Ok(());
    }
    if policy.is_empty() {
        bail!(exit::Usage(
            "no --keep-* rule given, and forget would delete every snapshot: give at least one, such as --keep-last 1 or --keep-daily 7 --keep-monthly 12".into()
        ));
    }
    if forget.dry_run && forget.prune {
        bail!(exit::Usage(
            "--dry-run with --prune: a dry run deletes nothing, so there is nothing to prune; drop one".into()
        ));
    }
    // Calendar days are this machine's, as restic's.
    let tz = jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC);
    let summary = open(args)?.forget(
        &policy,
        &forget.select.filter(),
        forget.group_by,
        &tz,
        forget.dry_run,
    )?;
    warn_ignored(&summary.ignored);
    // The data of what was removed, freed in the same run.
    let pruned = match forget.prune {
        true => Some(open(args)?.load_index_exclusive()?.prune()?),
        false => None,
    };
    if args.json {
        let groups: Vec<_> = summary.groups.iter().map(group_json).collect();
        let mut out = json!({
            "dry_run": summary.dry_run,
            "groups": groups,
            "removed": summary.removed,
        });
        if let Some(pruned) = &pruned {
            out["prune"] = serde_json::to_value(pruned)?;
        }
        print_json(&out);
    } else {
        for group in &summary.groups {
            print_group(group, summary.dry_run);
        }
        let verb = if summary.dry_run {
            "would remove"
        } else {
            "removed"
        };
        let gone = summary
            .groups
            .iter()
            .flat_map(|g| &g.snapshots)
            .filter(|(_, v)| !v.keep)
            .count();
        println!(
            "{verb} {gone} snapshot(s), kept {}{}",
            summary.kept,
            if summary.dry_run || forget.prune || gone == 0 {
                ""
            } else {
                "; run `backlock prune` to free their data"
            }
        );
    }
    if let (Some(pruned), false) = (&pruned, args.json) {
        crate::print_pruned(pruned);
    }
    Ok(())
}

fn group_json(g: &GroupVerdicts) -> serde_json::Value {
    let pick = |keep: bool| {
        g.snapshots
            .iter()
            .filter(|(_, v)| v.keep == keep)
            .map(|(s, v)| {
                let mut row = snapshot_json(s);
                if keep {
                    row["reasons"] = json!(v.reasons);
                }
                row
            })
            .collect::<Vec<_>>()
    };
    json!({ "group": g.group, "keep": pick(true), "remove": pick(false) })
}

fn print_group(g: &GroupVerdicts, dry_run: bool) {
    let mut what = Vec::new();
    if let Some(h) = &g.group.host {
        what.push(format!("host {h:?}"));
    }
    if let Some(p) = &g.group.paths {
        what.push(format!("paths [{}]", p.join(", ")));
    }
    if let Some(t) = &g.group.tags {
        what.push(format!("tags [{}]", t.join(", ")));
    }
    if !what.is_empty() {
        println!("snapshots of {}:", what.join(", "));
    }
    for (s, v) in &g.snapshots {
        let verdict = match (v.keep, dry_run) {
            (true, _) => "keep",
            (false, true) => "would remove",
            (false, false) => "removed",
        };
        let line = format!(
            "  {:<12} {}  {}  {}",
            verdict,
            &s.id[..8],
            format_time(s.time_unix_ns.div_euclid(1_000_000_000)),
            v.reasons.join(", ")
        );
        println!("{}", line.trim_end());
    }
}
