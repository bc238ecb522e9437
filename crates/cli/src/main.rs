//! `backlock`: end-to-end encrypted backups of a chat app's data.
#![forbid(unsafe_code)]

mod backup_cmd;
mod browse_cmd;
mod demo;
mod exit;
mod fleet_bundle;
mod fleet_certs;
mod fleet_status;
mod key_input;
mod migrate_cmd;
mod password_mode;
mod rotate_cmd;
mod snapshots_cmd;
mod vault;
mod vault_cmd;
mod whatsapp_cmd;

use anyhow::{bail, Context, Result};
use backlock_core::key::BackupKey;
use backlock_repo::{
    exclude::PathPatterns, DeviceHome, ObjectCache, Repository, DEFAULT_CACHE_BYTES,
};
use backlock_store::{Counted, FsStore, ObjectStore};
use clap::{Args, Parser, Subcommand};
use std::{io::IsTerminal, path::PathBuf, sync::Arc};

/// End-to-end encrypted, deduplicating backups for chat apps.
#[derive(Parser)]
#[command(name = "backlock", version, about, after_help = exit::HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Run at most N threads in each pool of the work (reading, compressing,
    /// uploading, restoring): 1 for a phone backing up in the background (default:
    /// the machine's cores).
    #[arg(long, global = true, value_name = "N", env = "BACKLOCK_THREADS", value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: Option<u64>,
}

#[derive(Args, Clone)]
pub(crate) struct RepoArgs {
    /// Repository location: a local directory or a store URL (s3://BUCKET/PREFIX,
    /// webdav[s]://HOST/PATH, sftp://USER@HOST/PATH, gcs://, azblob://, gdrive://,
    /// onedrive://, dropbox://). Credentials come from the environment or the
    /// credentials file, never the URL.
    #[arg(long, env = "BACKLOCK_REPO")]
    pub(crate) repo: PathBuf,
    /// File holding the 64-digit backup key (otherwise: the key this device keeps, the
    /// password if a vault or account is named, or a prompt).
    #[arg(long, env = "BACKLOCK_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Print machine-readable JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Read index objects and snapshots from the store only, not from this device's
    /// cache of them ($XDG_CACHE_HOME/backlock), and keep nothing there.
    #[arg(long, env = "BACKLOCK_NO_CACHE")]
    no_cache: bool,
    /// Send at most KIB KiB/s to the store.
    #[arg(long, value_name = "KIB", env = "BACKLOCK_LIMIT_UPLOAD", value_parser = clap::value_parser!(u64).range(1..))]
    limit_upload: Option<u64>,
    /// Fetch at most KIB KiB/s from the store.
    #[arg(long, value_name = "KIB", env = "BACKLOCK_LIMIT_DOWNLOAD", value_parser = clap::value_parser!(u64).range(1..))]
    limit_download: Option<u64>,
    #[command(flatten)]
    vault: vault::VaultArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Create an encrypted repository and its backup key.
    Init {
        /// Repository location: a local directory or a store URL (see `backup --help`).
        #[arg(long, env = "BACKLOCK_REPO")]
        repo: PathBuf,
        /// Protect the backup with the 64-digit key alone (no vault).
        #[arg(long, conflicts_with = "password")]
        key_only: bool,
        /// Protect the key with a password held by the Backup Key Vault.
        #[arg(long)]
        password: bool,
        /// Skip the confirmation that the key is saved (scripts; use with --json).
        #[arg(long)]
        yes: bool,
        /// Print machine-readable JSON (the key is printed once, in it).
        #[arg(long)]
        json: bool,
        /// How new chunks are compressed: `auto` (zstd where a sample shows it pays,
        /// database pages as deltas), `off` (nothing: for data already compressed or
        /// a slow CPU), `max` (zstd's highest level: smaller, several times slower).
        /// Recorded in the repository.
        #[arg(long, value_name = "MODE", default_value = "auto")]
        compression: backlock_core::format::Compression,
        #[command(flatten)]
        vault: vault::VaultArgs,
    },
    /// Choose a new password (on the device that holds the key).
    ChangePassword {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Switch between the 64-digit key and a password.
    Switch {
        #[command(flatten)]
        repo: RepoArgs,
        /// Keep the 64-digit key yourself and delete the vault record.
        #[arg(
            long,
            required_unless_present = "to_password",
            conflicts_with = "to_password"
        )]
        to_key: bool,
        /// Put the key behind a password in the vault.
        #[arg(long)]
        to_password: bool,
        /// Skip the confirmation that the key is saved (scripts; use with --json).
        #[arg(long)]
        yes: bool,
    },
    /// Run or use the Backup Key Vault.
    #[command(subcommand)]
    Vault(vault_cmd::VaultCommand),
    /// Back up files and directories as a new snapshot (incremental).
    Backup(backup_cmd::BackupArgs),
    /// List snapshots, oldest first.
    Snapshots {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        select: snapshots_cmd::SelectArgs,
    },
    /// Sizes: of the snapshots' files, after deduplication, as stored, and what
    /// each snapshot added (oldest first; all snapshots, or those named).
    Stats {
        #[command(flatten)]
        repo: RepoArgs,
        /// Snapshots to count (ids, prefixes or `latest`); default: all.
        #[arg(value_name = "ID")]
        ids: Vec<String>,
        #[command(flatten)]
        select: snapshots_cmd::SelectArgs,
    },
    /// Copy snapshots from another repository into this one: re-encrypted under this
    /// key and deduplicated against what is here, streamed (no restore in between),
    /// each keeping its time, host, paths and tags; one copied before is skipped.
    Copy {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        copy: snapshots_cmd::CopyArgs,
    },
    /// List the entries of a snapshot's directory (the backed-up paths at `/`).
    Ls(browse_cmd::LsArgs),
    /// Which snapshots hold entries that match a pattern, newest first.
    Find(browse_cmd::FindArgs),
    /// What changed between two snapshots: `+` added, `-` removed, `M` content,
    /// `U` metadata only, `T` another kind; read from trees, no file content.
    Diff(browse_cmd::DiffArgs),
    /// Write a file of a snapshot to standard output, or a directory as a tar archive.
    Dump(browse_cmd::DumpArgs),
    /// Import WhatsApp's end-to-end encrypted backups (`.crypt15`, opened with the
    /// 64-digit key) as snapshots, oldest first, each dated as the backup.
    ImportWhatsapp(whatsapp_cmd::ImportArgs),
    /// Write a database of a snapshot as a WhatsApp `.crypt15` backup under the
    /// 64-digit key (with the header of the backup it was imported from).
    ExportWhatsapp(whatsapp_cmd::ExportArgs),
    /// Restore a snapshot into a new or empty directory.
    Restore {
        #[command(flatten)]
        repo: RepoArgs,
        /// Snapshot id (or a unique prefix), or `latest`; `ID:PATH` restores only
        /// PATH of it (from its root, as `ls` shows it) at the target's root.
        #[arg(default_value = "latest")]
        snapshot: String,
        /// Where to restore; must not exist or be empty.
        #[arg(long)]
        target: PathBuf,
        /// Only what matches PATTERN (gitignore syntax, against paths from the
        /// snapshot's root: `/chats/db`, `*.jpg`), with the directories it is in.
        /// Repeatable.
        #[arg(long, value_name = "PATTERN")]
        include: Vec<String>,
        /// Not what matches PATTERN (a directory with everything in it). Repeatable.
        #[arg(long, value_name = "PATTERN")]
        exclude: Vec<String>,
        /// Before the restore is put in place, read every file back from the disk and
        /// check each chunk against its ID.
        #[arg(long)]
        verify: bool,
        /// After a rollback or damage error: restore this snapshot (`latest`: the
        /// newest that opens) although this device has seen a newer one. Recorded in
        /// this device's state.
        #[arg(long)]
        accept_older: bool,
    },
    /// Verify that every snapshot can be restored.
    Check {
        #[command(flatten)]
        repo: RepoArgs,
        /// Also read and authenticate every stored chunk.
        #[arg(long, conflicts_with = "read_data_subset")]
        read_data: bool,
        /// Read and authenticate the chunks of a part of the packs: `n/m` (group n
        /// of m by name: run 1/7 to 7/7 on seven days to read everything once a week)
        /// or `P%` (a random part each run).
        #[arg(long, value_name = "SUBSET")]
        read_data_subset: Option<backlock_repo::DataSubset>,
    },
    /// Delete the snapshots a retention policy does not keep (their data is freed by
    /// `prune`, or `--prune`). Snapshots are grouped by host and paths, and each
    /// group keeps what any --keep-* rule keeps. The repository's newest snapshot is
    /// always kept.
    Forget {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        forget: snapshots_cmd::ForgetArgs,
    },
    /// Remove data no snapshot uses.
    Prune {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Move off an unencrypted backup: make an encrypted snapshot of it, restore that
    /// snapshot and compare every file bit for bit with the source, and only then
    /// delete the unencrypted files (each path is printed). Safe to kill and run again.
    Migrate {
        #[command(flatten)]
        repo: RepoArgs,
        /// The unencrypted backup: a folder, or a store URL like --repo (credentials
        /// from the environment or the credentials file).
        #[arg(long)]
        from: String,
    },
    /// Re-encrypt the repository under a new backup key, verify it, and only then
    /// delete what the old key could open. Shows the new key as `init --key-only`
    /// does. In password mode it asks for a password and the vault keeps the new key
    /// in place of the old one. Safe to kill: run it again to finish.
    RotateKey {
        #[command(flatten)]
        repo: RepoArgs,
        /// Skip the confirmation that the new key is saved (scripts; use with --json).
        #[arg(long)]
        yes: bool,
    },
    /// Remove locks left by operations that no longer run (killed, or on a machine
    /// that went away); `--remove-all` removes every lock.
    Unlock {
        #[command(flatten)]
        repo: RepoArgs,
        /// Every lock, even one whose holder may still run (asks first).
        #[arg(long)]
        remove_all: bool,
        /// With --remove-all: do not ask (scripts).
        #[arg(long)]
        yes: bool,
    },
    /// Remove what does not belong in the repository.
    Repair {
        #[command(subcommand)]
        what: Repair,
    },
    /// Tell the whole story on generated chat data in a temporary directory.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum Repair {
    /// Rebuild the index from every index object that still opens, keeping the
    /// chunks whose pack the store still has: after a pack or index object was lost,
    /// the next backup stores those chunks again instead of pointing at the hole, and
    /// `check` names the snapshots that lost data.
    Index {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Delete the snapshot objects that do not authenticate under this key (made up
    /// by whoever can write to the store, or cut short by a power loss; every other
    /// command already ignores them), then rewrite the snapshots that name data the
    /// store lost: the same number, time and paths, what can still be read, and the
    /// lost entries named in it as left out. Asks first.
    Snapshots {
        #[command(flatten)]
        repo: RepoArgs,
        /// Delete without asking (scripts).
        #[arg(long)]
        yes: bool,
    },
}

fn main() {
    // Before any thread starts: freed pipeline buffers must leave, not stay resident.
    backlock_allocator::return_freed_blocks();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("BACKLOCK_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        backlock_core::threads::set_budget(n as usize);
    }
    if let Err(e) = run(cli.command) {
        eprintln!("error: {}", exit::message(&e));
        // An incomplete backup already printed its summary, which says so.
        if json_requested() && !e.is::<exit::Incomplete>() {
            exit::print_json_error(&e);
        }
        std::process::exit(exit::code_for(&e));
    }
}

/// Whether the command line asked for JSON output.
fn json_requested() -> bool {
    std::env::args().skip(1).any(|a| a == "--json")
}

/// The device's state directory: `BACKLOCK_HOME`, else the XDG data directory.
pub(crate) fn device_home() -> Result<DeviceHome> {
    if let Some(h) = std::env::var_os("BACKLOCK_HOME") {
        return Ok(DeviceHome::new(h));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .context("cannot find a data directory: set BACKLOCK_HOME")?;
    Ok(DeviceHome::new(data.join("backlock")))
}

/// The store `--repo` names: a local directory, or a cloud store opened with the
/// credentials in the environment or the credentials file.
pub(crate) fn store_at(repo: &std::path::Path) -> Result<Arc<dyn ObjectStore>> {
    let Some(url) = repo.to_str() else {
        return Ok(Arc::new(FsStore::new(repo)));
    };
    let settings = backlock_store_cloud::Settings::from_env()?;
    Ok(backlock_store_cloud::open(url, &settings)?)
}

/// The store `args` names, held to its `--limit-upload` and `--limit-download`.
pub(crate) fn store_for(args: &RepoArgs) -> Result<Arc<dyn ObjectStore>> {
    store_limited(&args.repo, args)
}

/// The store at `location`, held to the limits `args` gives (a copy's source too).
pub(crate) fn store_limited(
    location: &std::path::Path,
    args: &RepoArgs,
) -> Result<Arc<dyn ObjectStore>> {
    let store = store_at(location)?;
    Ok(match (args.limit_upload, args.limit_download) {
        (None, None) => store,
        (up, down) => Arc::new(backlock_store::Throttled::new(store, up, down)),
    })
}

/// The cache of index objects and snapshots: `$XDG_CACHE_HOME/backlock` (else
/// `~/.cache/backlock`), at most `BACKLOCK_CACHE_MAX_MIB` MiB (default 2048). `None`
/// with `--no-cache`, or where there is no cache directory.
pub(crate) fn object_cache(no_cache: bool) -> Result<Option<ObjectCache>> {
    let root = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    let (false, Some(root)) = (no_cache, root) else {
        return Ok(None);
    };
    let max_bytes = match std::env::var("BACKLOCK_CACHE_MAX_MIB") {
        Ok(mib) => mib
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|m| m.checked_mul(1 << 20))
            .with_context(|| {
                format!("BACKLOCK_CACHE_MAX_MIB={mib:?} is not a size in MiB: set a whole number such as 2048")
            })?,
        Err(_) => DEFAULT_CACHE_BYTES,
    };
    Ok(Some(ObjectCache::new(root.join("backlock"), max_bytes)))
}

/// Opens the repository `args` names, reading through the cache unless `--no-cache`.
fn open(args: &RepoArgs) -> Result<Repository> {
    Ok(open_counted(args)?.0)
}

/// A store whose requests are counted, for `--json` summaries.
type CountedStore = Counted<Arc<dyn ObjectStore>>;

/// [`open`], with the counter of the requests made to the store.
fn open_counted(args: &RepoArgs) -> Result<(Repository, Arc<CountedStore>)> {
    let key = password_mode::resolve_key(&args.repo, args.key_file.as_deref(), &args.vault)?;
    let store = Arc::new(Counted::new(store_for(args)?));
    let repo = Repository::open(store.clone(), &key, device_home()?)?
        .with_cache(object_cache(args.no_cache)?.as_ref());
    Ok((repo, store))
}

/// `summary` as JSON with the requests made to the store (what a cloud store bills).
fn with_requests(
    summary: &impl serde::Serialize,
    store: &CountedStore,
) -> Result<serde_json::Value> {
    let mut out = serde_json::to_value(summary)?;
    let n = store.counts();
    out["requests"] = serde_json::json!({
        "get": n.get, "get_range": n.get_range, "put": n.put,
        "list": n.list, "delete": n.delete,
    });
    Ok(out)
}

/// Opens the repository `args` names to read everything from the store itself: what
/// checks the store (`check`, `repair`) must not take a cached copy for the store's.
fn open_uncached(args: &RepoArgs) -> Result<Repository> {
    let key = password_mode::resolve_key(&args.repo, args.key_file.as_deref(), &args.vault)?;
    Ok(Repository::open(store_for(args)?, &key, device_home()?)?)
}

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("summaries serialise")
    );
}

pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Exit code of an operation stopped by SIGINT or SIGTERM (README).
const INTERRUPTED_EXIT: i32 = 130;

/// Lets SIGINT and SIGTERM stop a repository operation cleanly
/// (`backlock_repo::interrupt`); a second signal ends the process at once.
fn stop_cleanly_on_signals() -> Result<()> {
    let flag = backlock_repo::interrupt::flag();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, INTERRUPTED_EXIT, flag.clone())?;
        signal_hook::flag::register(signal, flag.clone())?;
    }
    Ok(())
}

fn run(command: Command) -> Result<()> {
    // The operations that hold a repository lock while they work: key rotation and
    // migration are built to be killed at any instant and keep the default action.
    if matches!(
        command,
        Command::Backup(_)
            | Command::Copy { .. }
            | Command::Restore { .. }
            | Command::Check { .. }
            | Command::Forget { .. }
            | Command::Prune { .. }
            | Command::Repair { .. }
            | Command::ImportWhatsapp(_)
            | Command::ExportWhatsapp(_)
    ) {
        stop_cleanly_on_signals()?;
    }
    match command {
        Command::Init {
            repo,
            key_only,
            password,
            yes,
            json,
            compression,
            vault,
        } => {
            if password {
                password_mode::init(&repo, &vault, (yes, json), compression)
            } else {
                init(repo, key_only, (yes, json), compression)
            }
        }
        Command::ChangePassword { repo } => password_mode::change_password(
            &repo.repo,
            repo.key_file.as_deref(),
            &repo.vault,
            repo.json,
        ),
        Command::Switch {
            repo,
            to_key,
            to_password: _,
            yes,
        } => password_mode::switch(
            &repo.repo,
            repo.key_file.as_deref(),
            &repo.vault,
            to_key,
            yes,
            repo.json,
        ),
        Command::Vault(command) => vault_cmd::run(command),
        Command::Backup(args) => backup_cmd::run(args),
        Command::Snapshots { repo, select } => snapshots_cmd::list(&repo, &select),
        Command::Stats { repo, ids, select } => snapshots_cmd::stats(&repo, &ids, &select),
        Command::Copy { repo, copy } => snapshots_cmd::copy(&repo, &copy),
        Command::Ls(args) => browse_cmd::ls(&args),
        Command::Find(args) => browse_cmd::find(&args),
        Command::Diff(args) => browse_cmd::diff(&args),
        Command::Dump(args) => browse_cmd::dump(&args),
        Command::ImportWhatsapp(args) => whatsapp_cmd::import(args),
        Command::ExportWhatsapp(args) => whatsapp_cmd::export(args),
        Command::Repair {
            what: Repair::Snapshots { repo, yes },
        } => repair_snapshots(&repo, yes),
        Command::Repair {
            what: Repair::Index { repo },
        } => repair_index(&repo),
        Command::Restore {
            repo,
            snapshot,
            target,
            include,
            exclude,
            verify,
            accept_older,
        } => {
            // `ID:PATH`: a snapshot's sub-tree at the target's root.
            let (snapshot, subpath) = match snapshot.split_once(':') {
                Some((id, path)) => (id.to_owned(), Some(path.to_owned())),
                None => (snapshot, None),
            };
            let opts = backlock_repo::RestoreOptions {
                subpath,
                include: PathPatterns::new("--include", &include)?,
                exclude: PathPatterns::new("--exclude", &exclude)?,
                verify,
            };
            let (r, store) = open_counted(&repo)?;
            let r = r.load_index()?;
            let new_device = r.seen_seq()? == 0;
            let which = if accept_older {
                let (older, seen) = r.accept_older(&snapshot)?;
                if older.seq < seen {
                    eprintln!(
                        "warning: restoring snapshot {} (#{}) although this device has seen #{seen}: the store serves an older state, or the newer snapshots do not open. This choice is recorded in this device's state",
                        &older.name.to_hex()[..8],
                        older.seq
                    );
                }
                older
            } else if snapshot == "latest" {
                let (latest, ignored) = r.latest()?;
                warn_ignored(&ignored);
                latest
            } else {
                r.find_snapshot(&snapshot)?
            };
            // Before anything is written: on a new phone, the snapshot's date and number
            // are the only check that the store served the newest backup.
            let announce = |snap: &backlock_core::format::Snapshot| {
                eprintln!(
                    "restoring snapshot {} (#{}), taken {} UTC on {}",
                    &which.name.to_hex()[..8],
                    snap.seq,
                    format_time(snap.time_unix_ns.div_euclid(1_000_000_000)),
                    if snap.hostname.is_empty() {
                        "an unnamed host"
                    } else {
                        &snap.hostname
                    }
                );
                if new_device {
                    eprintln!(
                        "this device has not seen this repository before: check that this is your newest backup (the store could serve an older one)"
                    );
                }
            };
            let summary = r.restore_with(&which, &target, &announce, &opts)?;
            if repo.json {
                print_json(&with_requests(&summary, &store)?);
            } else {
                println!(
                    "restored snapshot {} into {}: {} files, {} in {:.1} s{}",
                    &summary.snapshot[..8],
                    target.display(),
                    summary.files,
                    mib(summary.bytes),
                    summary.seconds,
                    match verify {
                        true => format!("; {} files read back and verified", summary.verified),
                        false => String::new(),
                    }
                );
            }
            // Restored all the same: what this user may not set (owners, device nodes).
            for line in &summary.not_restored {
                eprintln!("warning: {line}");
            }
            Ok(())
        }
        Command::Check {
            repo,
            read_data,
            read_data_subset,
        } => {
            let subset = match (read_data, read_data_subset) {
                (_, Some(subset)) => subset,
                (true, None) => backlock_repo::DataSubset::All,
                (false, None) => backlock_repo::DataSubset::Nothing,
            };
            let read_data = subset != backlock_repo::DataSubset::Nothing;
            let report = open_uncached(&repo)?.check_reading(subset)?;
            if repo.json {
                print_json(&report);
            } else {
                println!(
                    "checked {} snapshots, {} index objects, {} packs{}",
                    report.snapshots,
                    report.index_objects,
                    report.packs,
                    if read_data {
                        format!(
                            ", {} chunks in {} packs authenticated",
                            report.blobs_read, report.packs_read
                        )
                    } else {
                        String::new()
                    }
                );
                for n in &report.notes {
                    println!("note: {n}");
                }
                for e in &report.errors {
                    eprintln!("damaged: {e}");
                }
            }
            if !report.errors.is_empty() {
                return Err(exit::Damage(report.errors.len()).into());
            }
            if !repo.json {
                println!("no errors: every snapshot can be restored");
            }
            Ok(())
        }
        Command::Forget { repo, forget } => snapshots_cmd::forget(&repo, &forget),
        Command::Prune { repo } => prune(&repo),
        Command::Unlock {
            repo,
            remove_all,
            yes,
        } => unlock(&repo, remove_all, yes),
        Command::Migrate { repo, from } => migrate_cmd::run(&repo, &from),
        Command::RotateKey { repo, yes } => rotate_cmd::run(&repo, yes),
        Command::Demo(args) => demo::run(args),
    }
}

fn init(
    repo: PathBuf,
    key_only: bool,
    (yes, json): (bool, bool),
    compression: backlock_core::format::Compression,
) -> Result<()> {
    if !key_only {
        bail!(exit::Usage(
            "choose how to protect the backup: --key-only (a 64-digit key you keep) or --password (the key behind a password in the Backup Key Vault)".into()
        ));
    }
    if !yes && !std::io::stdin().is_terminal() {
        bail!(exit::Usage("init must confirm that you saved the key: run it in a terminal, or pass --yes --json in scripts".into()));
    }
    let key = BackupKey::generate();
    let home = device_home()?;
    let store = store_at(&repo)?;
    // Refuse before showing a key that would never be used.
    if !store.list(backlock_store::ObjectKind::Config)?.is_empty() {
        return Err(backlock_repo::RepoError::AlreadyExists {
            location: store.location(),
        }
        .into());
    }
    if !yes {
        key_input::confirm_saved(&key)?;
    }
    let r = Repository::init_with(store, &key, home, compression)?;
    if json {
        let shown = key.to_display();
        print_json(&serde_json::json!({
            "repo": r.store().location(),
            "repo_id": r.id(),
            "key": shown.as_str(),
        }));
    } else {
        if yes {
            println!("Your backup key:\n\n    {}\n", key.to_display().as_str());
            println!("{}", key_input::LOST_KEY_WARNING);
        }
        println!(
            "created repository {} at {}",
            &r.id()[..8],
            r.store().location()
        );
    }
    Ok(())
}

/// `unlock`.
fn unlock(args: &RepoArgs, all: bool, yes: bool) -> Result<()> {
    let r = open_uncached(args)?;
    if all && !yes {
        if !std::io::stdin().is_terminal() {
            bail!(exit::Usage(
                "--remove-all also removes the locks of operations that may still run (a prune removing data a backup writes): pass --yes to confirm".into()
            ));
        }
        eprint!("Remove every lock, even of operations that may still run? Type yes: ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            bail!(exit::Usage("nothing was removed".into()));
        }
    }
    let (removed, left) = r.unlock(all)?;
    if args.json {
        print_json(&serde_json::json!({ "removed": removed, "left": left }));
        return Ok(());
    }
    for l in &removed {
        println!(
            "removed lock {} ({} on {}, pid {}): {}",
            &l.name[..8],
            l.kind,
            l.host,
            l.pid,
            l.why
        );
    }
    for l in &left {
        println!(
            "left lock {} ({} on {}, pid {}, {} s old): {}",
            &l.name[..8],
            l.kind,
            l.host,
            l.pid,
            l.age_secs,
            l.why
        );
    }
    if removed.is_empty() && left.is_empty() {
        println!("no locks");
    }
    Ok(())
}

/// `prune`.
fn prune(repo: &RepoArgs) -> Result<()> {
    let summary = open(repo)?.load_index_exclusive()?.prune()?;
    if repo.json {
        print_json(&summary);
    } else {
        print_pruned(&summary);
    }
    Ok(())
}

pub(crate) fn print_pruned(summary: &backlock_repo::PruneSummary) {
    println!(
        "pruned: {} packs deleted, {} repacked, {} freed",
        summary.packs_deleted,
        summary.packs_repacked,
        mib(summary.bytes_freed.max(0) as u64)
    );
}

pub(crate) fn hostname() -> String {
    backlock_repo::hostname()
}

/// Names, on stderr, each snapshot object a command passed over.
fn warn_ignored(ignored: &[backlock_repo::RejectedSnapshot]) {
    for bad in ignored {
        eprintln!("warning: {bad}");
    }
}

fn repair_index(args: &RepoArgs) -> Result<()> {
    let summary = open_uncached(args)?.repair_index()?;
    if args.json {
        print_json(&summary);
        return Ok(());
    }
    for bad in &summary.index_objects_unreadable {
        eprintln!("index object does not open: {bad}");
    }
    for pack in &summary.packs_missing {
        eprintln!("pack missing from the store: {pack}");
    }
    println!(
        "new index: {} chunks in {} packs, from {} index objects ({} replaced); {} chunks dropped (their pack is missing or shorter than the index said); {} packs no index object describes",
        summary.blobs_indexed,
        summary.packs_indexed,
        summary.index_objects_read,
        summary.index_objects_replaced,
        summary.blobs_dropped,
        summary.packs_undescribed
    );
    if summary.blobs_dropped > 0 || !summary.index_objects_unreadable.is_empty() {
        println!("run `backlock check` to see which snapshots lost data; the next backup stores again what it still finds on disk");
    }
    Ok(())
}

/// Asks to go on (`what` says what would happen), or takes `--yes`; refuses without a
/// terminal.
fn confirm(yes: bool, what: &str) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!(exit::Usage(format!("{what}: pass --yes to go on")));
    }
    eprint!("{what}. Type yes: ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!(exit::Usage("nothing was changed".into()));
    }
    Ok(())
}

fn repair_snapshots(args: &RepoArgs, yes: bool) -> Result<()> {
    // First the objects that do not authenticate: what names lost data is judged
    // among authentic snapshots only.
    let r = open_uncached(args)?;
    let found = r.authentic_snapshots(|_, _| Ok(()))?;
    let mut removed = Vec::new();
    if !found.is_empty() {
        for bad in &found {
            eprintln!("does not authenticate: {} ({})", bad.name, bad.reason);
        }
        confirm(
            yes,
            &format!("{} snapshot object(s) above would be deleted", found.len()),
        )?;
        removed = r.remove_unauthentic_snapshots()?;
        if !args.json {
            for bad in &removed {
                println!("removed {}", bad.name);
            }
        }
    }
    drop(r);
    let r = open_uncached(args)?.load_index_exclusive()?;
    let losing = r.snapshots_losing_data()?;
    let mut rewritten = Vec::new();
    if !losing.is_empty() {
        for l in &losing {
            eprintln!(
                "snapshot {} (#{}) names data the store lost: {} entr(y/ies)",
                &l.snapshot[..8],
                l.seq,
                l.lost.len()
            );
            for k in l.lost.iter().take(10) {
                eprintln!("  /{}: {}", k.path, k.reason);
            }
            if l.lost.len() > 10 {
                eprintln!("  … and {} more", l.lost.len() - 10);
            }
        }
        confirm(
            yes,
            &format!(
                "{} snapshot(s) above would be rewritten without what was lost (the same number, time and paths; the lost entries named in it)",
                losing.len()
            ),
        )?;
        rewritten = r.rewrite_snapshots(&losing)?;
        if !args.json {
            for w in &rewritten {
                println!(
                    "rewrote snapshot {} (#{}) as {}: {} entr(y/ies) lost",
                    &w.replaced[..8],
                    w.seq,
                    &w.snapshot[..8],
                    w.lost
                );
            }
        }
    }
    if args.json {
        print_json(&serde_json::json!({ "removed": removed, "rewritten": rewritten }));
    } else if removed.is_empty() && rewritten.is_empty() {
        println!("every snapshot authenticates and its data is in the store: nothing to repair");
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
pub(crate) fn format_time(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let (y, m, d) = backlock_chatgen::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}
