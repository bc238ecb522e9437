//! `backlock backup`: flags as restic names them.

use crate::{exit, mib, password_mode, print_json, with_requests, RepoArgs};
use anyhow::{bail, Result};
use backlock_repo::{
    exclude::{parse_size, Excludes, ExcludesBuilder},
    select::tag_list,
    BackupOptions, Indexed, Repository,
};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::{io::IsTerminal, path::PathBuf};

#[derive(Args)]
pub(crate) struct BackupArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Directories and files to back up.
    #[arg(required_unless_present = "stdin", conflicts_with = "stdin")]
    paths: Vec<PathBuf>,
    /// Back up standard input, read to its end, as one file (`sqlite3 db .dump |
    /// backlock backup --stdin --stdin-filename db.sql`).
    #[arg(long)]
    stdin: bool,
    /// The name of the file --stdin stores.
    #[arg(long, value_name = "NAME", default_value = "stdin", requires = "stdin")]
    stdin_filename: String,
    /// Leave out what matches PATTERN (gitignore syntax, against absolute paths:
    /// `*.tmp` anywhere, `cache/` directories of that name, `/home/ann/.cache` only
    /// there; `!PATTERN` takes back). Repeatable.
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Read --exclude patterns from FILE, one per line (`#` comments). Repeatable.
    #[arg(long, value_name = "FILE")]
    exclude_file: Vec<PathBuf>,
    /// Leave out files larger than SIZE (bytes, or with K, M, G, T: 500M).
    #[arg(long, value_name = "SIZE")]
    exclude_larger_than: Option<String>,
    /// Leave out every directory that holds an entry named NAME (such as .nobackup).
    /// Repeatable.
    #[arg(long, value_name = "NAME")]
    exclude_if_present: Vec<String>,
    /// Do not cross into other file systems: their mount points are stored empty.
    #[arg(long, short = 'x')]
    one_file_system: bool,
    /// Tag the snapshot (`--tag a,b` gives two). Repeatable.
    #[arg(long, value_name = "TAG")]
    tag: Vec<String>,
    /// The host name to record instead of this machine's.
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// The time to record instead of now: `2024-11-01 22:08:41` in this machine's
    /// time zone, or RFC 3339 (`2024-11-01T21:08:41Z`).
    #[arg(long, value_name = "TIME")]
    time: Option<String>,
    /// Walk as the backup would and print each entry it would store (new, changed
    /// or unchanged since the last snapshot) and the totals; read no file content
    /// and write nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
}

pub(crate) fn run(args: BackupArgs) -> Result<()> {
    let excludes = excludes(&args)?;
    let tags = tags(&args.tag)?;
    let hostname = match &args.host {
        Some(h) if h.trim().is_empty() => bail!(exit::Usage(
            "--host is empty: give the name to record, or leave it out for this machine's".into()
        )),
        Some(h) => h.clone(),
        None => crate::hostname(),
    };
    let time_unix_ns = args.time.as_deref().map(parse_time).transpose()?;
    if args.stdin && std::io::stdin().is_terminal() {
        bail!(exit::Usage(
            "--stdin reads standard input, which is a terminal here: pipe the data in (`… | backlock backup --stdin --stdin-filename NAME`)".into()
        ));
    }
    let repo = &args.repo;
    let key = password_mode::resolve_key(&repo.repo, repo.key_file.as_deref(), &repo.vault)?;
    let store = std::sync::Arc::new(backlock_store::Counted::new(crate::store_for(repo)?));
    let r = Repository::open(store.clone(), &key, crate::device_home()?)?
        .with_cache(crate::object_cache(repo.no_cache)?.as_ref());
    let repo_id = r.id();
    let opts = BackupOptions {
        paths: args.paths.clone(),
        hostname,
        tags,
        excludes,
        time_unix_ns,
        stdin: args.stdin.then(|| args.stdin_filename.clone()),
        ..Default::default()
    };
    if args.dry_run {
        return dry_run(r.load_index()?, &opts, repo.json);
    }
    let summary = backup(r.load_index()?, opts, !repo.json)?;
    crate::warn_ignored(&summary.ignored_snapshots);
    for w in &summary.warnings {
        eprintln!("warning: {w}");
    }
    for k in &summary.skipped {
        eprintln!("not backed up: {}: {}", k.path, k.reason);
    }
    if repo.json {
        print_json(&with_requests(&summary, &store)?);
    } else {
        let excluded = match summary.excluded {
            0 => String::new(),
            n => format!(" ({n} excluded)"),
        };
        println!(
            "snapshot {} (#{}) saved: {} files{excluded}, {} read, {} new, {} uploaded, in {:.1} s",
            &summary.snapshot[..8],
            summary.seq,
            summary.files,
            mib(summary.bytes_read),
            mib(summary.bytes_new),
            mib(summary.bytes_stored),
            summary.seconds
        );
    }
    password_mode::leave_anchor(&repo.vault, &key, &repo_id, &summary.snapshot, summary.seq);
    if !summary.skipped.is_empty() {
        bail!(exit::Incomplete {
            snapshot: summary.snapshot[..8].to_owned(),
            count: summary.skipped.len(),
        });
    }
    Ok(())
}

/// The exclusion flags as rules; a bad pattern names itself and where it was given.
fn excludes(args: &BackupArgs) -> Result<Excludes> {
    let mut b = ExcludesBuilder::default();
    for (i, p) in args.exclude.iter().enumerate() {
        b.pattern(p, &format!("--exclude #{}", i + 1))?;
    }
    for file in &args.exclude_file {
        b.file(file)?;
    }
    if let Some(size) = &args.exclude_larger_than {
        let bytes =
            parse_size(size).map_err(|e| exit::Usage(format!("--exclude-larger-than: {e}")))?;
        b.larger_than(bytes);
    }
    for name in &args.exclude_if_present {
        b.if_present(name)?;
    }
    b.one_file_system(args.one_file_system);
    Ok(b.build()?)
}

/// `--time`: RFC 3339, or a civil time in this machine's time zone.
fn parse_time(text: &str) -> Result<i64> {
    let stamp = text.trim().parse::<jiff::Timestamp>().or_else(|_| {
        let tz = jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC);
        text.trim()
            .parse::<jiff::civil::DateTime>()
            .and_then(|civil| civil.to_zoned(tz))
            .map(|z| z.timestamp())
    });
    match stamp.ok().and_then(|t| i64::try_from(t.as_nanosecond()).ok()) {
        Some(ns) => Ok(ns),
        None => bail!(exit::Usage(format!(
            "--time {text:?} is not a time: write 2024-11-01 22:08:41 (this machine's time zone) or 2024-11-01T21:08:41Z"
        ))),
    }
}

/// `--tag` values split at commas; an empty tag is refused.
fn tags(args: &[String]) -> Result<Vec<String>> {
    let mut tags = Vec::new();
    for arg in args {
        for tag in tag_list(arg) {
            if tag.is_empty() {
                bail!(exit::Usage(format!(
                    "--tag {arg:?} holds an empty tag: give names separated by commas"
                )));
            }
            tags.push(tag);
        }
    }
    Ok(tags)
}

fn dry_run(r: Repository<Indexed>, opts: &BackupOptions, json: bool) -> Result<()> {
    let plan = r.plan_backup(opts, &mut |e| {
        if json {
            println!("{}", serde_json::to_string(e).expect("entries serialise"));
        } else {
            let status = match e.status {
                backlock_repo::Change::New => "new",
                backlock_repo::Change::Changed => "changed",
                backlock_repo::Change::Unchanged => "unchanged",
            };
            let size = match e.kind {
                "file" => mib(e.size),
                _ => String::new(),
            };
            println!("{status:<9} {:<7} {size:>12}  {}", e.kind, e.path);
        }
    })?;
    for k in &plan.skipped {
        eprintln!("would not be backed up: {}: {}", k.path, k.reason);
    }
    if json {
        let mut out = serde_json::to_value(&plan)?;
        out["dry_run"] = true.into();
        println!("{out}");
    } else {
        println!(
            "dry run, nothing written: would store {} files ({}), {} directories, {} other entries; {} files new or changed ({}) would be read; {} excluded",
            plan.files,
            mib(plan.bytes_total),
            plan.dirs,
            plan.others,
            plan.files_to_read,
            mib(plan.bytes_to_read),
            plan.excluded
        );
    }
    Ok(())
}

fn backup(
    r: Repository<Indexed>,
    opts: BackupOptions,
    show_progress: bool,
) -> Result<backlock_repo::BackupSummary> {
    let bar = (show_progress && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} {bar:30} {bytes_per_sec} eta {eta} ({msg} files)",
            )
            .expect("static template"),
        );
        b
    });
    let on_progress = |p: backlock_repo::Progress| {
        if let Some(b) = &bar {
            b.set_length(p.bytes_total);
            b.set_position(p.bytes_done);
            b.set_message(format!("{}/{}", p.files_done, p.files_total));
        }
    };
    // A shorter-lived copy of the options, which may borrow the bar.
    let mut opts: BackupOptions<'_> = opts;
    opts.progress = Some(&on_progress);
    let summary = r.backup(&opts);
    drop(opts);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(summary?)
}
