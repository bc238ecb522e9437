//! `backlock migrate`: move off an unencrypted backup (docs/STORES.md §Migrating).

use crate::{device_home, hostname, mib, password_mode, print_json, RepoArgs};
use anyhow::Result;
use backlock_migrate::{MigrateError, Source, Target};

/// Runs the migration from `from` into the repository of `args`.
pub(crate) fn run(args: &RepoArgs, from: &str) -> Result<()> {
    let key = password_mode::resolve_key(&args.repo, args.key_file.as_deref(), &args.vault)?;
    let settings = backlock_store_cloud::Settings::from_env()?;
    let local = matches!(
        args.repo
            .to_str()
            .map(backlock_store_cloud::Location::parse),
        Some(Ok(backlock_store_cloud::Location::Local(_))) | None
    );
    let target = Target {
        store: crate::store_for(args)?,
        key: &key,
        home: device_home()?,
        local_path: local.then(|| args.repo.clone()),
        hostname: hostname(),
    };
    let source = Source::open(from, &settings).map_err(unwrap)?;
    let json = args.json;
    let summary = backlock_migrate::migrate(&source, &target, &mut |path| {
        if !json {
            println!("deleted {path}");
        }
    })
    .map_err(unwrap)?;
    if json {
        print_json(&summary);
    } else if summary.finished_earlier {
        println!(
            "{} was already migrated into snapshot {} (#{}) and its files deleted; removed {} empty folder(s) left behind",
            summary.source,
            &summary.snapshot[..8],
            summary.seq,
            summary.dirs_deleted
        );
    } else {
        println!(
            "migrated {} into snapshot {} (#{}): {} files ({}) restored and compared bit for bit with the source, then {} files and {} folders deleted in {:.1} s",
            summary.source,
            &summary.snapshot[..8],
            summary.seq,
            summary.files_verified,
            mib(summary.bytes_verified),
            summary.deleted.len(),
            summary.dirs_deleted,
            summary.seconds
        );
    }
    if !summary.kept.is_empty() {
        for path in &summary.kept {
            eprintln!("kept {path}: it changed after the verification");
        }
        anyhow::bail!(
            "{} file(s) changed after the verification and were kept: run `backlock migrate` again to move them",
            summary.kept.len()
        );
    }
    Ok(())
}

/// Lets the exit codes see the repository and store errors inside.
fn unwrap(e: MigrateError) -> anyhow::Error {
    match e {
        MigrateError::Repo(r) => r.into(),
        MigrateError::Store(s) => s.into(),
        MigrateError::Open(o) => o.into(),
        other => other.into(),
    }
}
