//! `import-whatsapp` and `export-whatsapp`: WhatsApp's end-to-end encrypted backups
//! (crypt15, the 64-digit key) into snapshots and back (docs/WHATSAPP.md).

use crate::{exit, mib, password_mode, print_json, RepoArgs};
use anyhow::{bail, Context, Result};
use backlock_core::format::WhatsAppSource;
use backlock_repo::{BackupOptions, Repository};
use backlock_whatsapp::{backup_name, header, BackupName, Crypt15Error, KeyError, WhatsAppKey};
use clap::Args;
use sha2::{Digest, Sha256};
use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
};
use zeroize::Zeroizing;

/// WhatsApp's 64-digit key, from one of two kinds of file (never an argument).
#[derive(Args)]
pub(crate) struct WaKeyArgs {
    /// WhatsApp's key file, `encrypted_backup.key` (the app's own copy of the
    /// 64-digit key).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "wa_key_hex_file",
        conflicts_with = "wa_key_hex_file"
    )]
    wa_key: Option<PathBuf>,
    /// A file holding the 64-digit key as WhatsApp showed it (64 hex digits; spaces
    /// and dashes allowed).
    #[arg(long, value_name = "FILE")]
    wa_key_hex_file: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct ImportArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    key: WaKeyArgs,
    /// Backup files (`msgstore.db.crypt15`) or folders of them (the app's
    /// `Databases` folder), imported oldest first; one imported before is skipped.
    #[arg(required = true, value_name = "BACKUP")]
    backups: Vec<PathBuf>,
    /// The host name to record instead of this machine's.
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
}

#[derive(Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    key: WaKeyArgs,
    /// Snapshot id (or a unique prefix), or `latest`.
    snapshot: String,
    /// The database in the snapshot (`msgstore.db`), from its root.
    path: String,
    /// The crypt15 file to write; it must not exist.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Copy the header fields (app version, account digits, features) from this
    /// crypt15 file instead of from the snapshot's import (for a database that was
    /// not imported from WhatsApp).
    #[arg(long, value_name = "FILE")]
    header_from: Option<PathBuf>,
}

/// A WhatsApp backup that cannot be imported, and which file (exit 3 for a wrong
/// key, 13 for the rest).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub(crate) struct BadBackup {
    pub(crate) path: String,
    #[source]
    pub(crate) source: Crypt15Error,
}

fn bad(path: &Path, source: Crypt15Error) -> anyhow::Error {
    BadBackup {
        path: path.display().to_string(),
        source,
    }
    .into()
}

fn read_key(args: &WaKeyArgs) -> Result<WhatsAppKey> {
    let (path, hex) = match (&args.wa_key, &args.wa_key_hex_file) {
        (Some(p), _) => (p, false),
        (None, Some(p)) => (p, true),
        (None, None) => bail!(exit::Usage(
            "no WhatsApp key given: pass --wa-key FILE or --wa-key-hex-file FILE".into()
        )),
    };
    let bytes = Zeroizing::new(fs::read(path).map_err(|e| {
        exit::BadKey(format!(
            "cannot read the WhatsApp key file {}: {e}",
            path.display()
        ))
    })?);
    let key = match hex {
        false => WhatsAppKey::from_key_file(&bytes),
        true => std::str::from_utf8(&bytes)
            .map_err(|_| KeyError::NotAKeyFile {
                why: "it is not text".into(),
            })
            .and_then(WhatsAppKey::from_typed),
    };
    key.map_err(|e| {
        let hint = match hex {
            false => "give the app's encrypted_backup.key, or the 64 digits with --wa-key-hex-file",
            true => "the file must hold the 64 hex digits WhatsApp showed, and nothing else",
        };
        exit::BadKey(format!("{}: {e}; {hint}", path.display())).into()
    })
}

/// One backup file to import.
struct Candidate {
    path: PathBuf,
    name: BackupName,
    /// The snapshot's time: the day in the name (the file's own time when it falls on
    /// that day), else the file's modification time.
    time_ns: i64,
}

fn file_time_ns(meta: &fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| jiff::Timestamp::try_from(t).ok())
        .and_then(|t| i64::try_from(t.as_nanosecond()).ok())
        .unwrap_or(0)
}

fn candidate(path: &Path) -> Result<Candidate> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = backup_name(&file_name);
    let modified = file_time_ns(&meta);
    // A name whose date does not exist (the 30th of February) counts as undated.
    let day = name
        .date
        .and_then(|(y, m, d)| jiff::civil::Date::new(y, m, d).ok());
    let time_ns = match day {
        Some(day) => {
            let same_day = jiff::Timestamp::from_nanosecond(i128::from(modified))
                .ok()
                .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date() == day)
                .unwrap_or(false);
            match same_day {
                true => modified,
                false => day
                    .to_zoned(jiff::tz::TimeZone::UTC)
                    .ok()
                    .and_then(|z| i64::try_from(z.timestamp().as_nanosecond()).ok())
                    .unwrap_or(modified),
            }
        }
        None => modified,
    };
    Ok(Candidate {
        path: path.to_path_buf(),
        name,
        time_ns,
    })
}

/// The files to import, oldest first; a folder gives its `.crypt15` files, and
/// says which older backups in it it leaves out.
fn candidates(args: &[PathBuf]) -> Result<Vec<Candidate>> {
    let mut out = Vec::new();
    for arg in args {
        if !arg.is_dir() {
            out.push(candidate(arg)?);
            continue;
        }
        let mut found = 0;
        let entries =
            fs::read_dir(arg).with_context(|| format!("cannot list {}", arg.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot list {}", arg.display()))?
                .path();
            let file_name = path.file_name().unwrap_or_default().to_string_lossy();
            match backup_name(&file_name).crypt {
                Some(15) if path.is_file() => {
                    out.push(candidate(&path)?);
                    found += 1;
                }
                Some(v) => eprintln!(
                    "left out: {}: a crypt{v} backup (only crypt15, the end-to-end encrypted backups, can be imported)",
                    path.display()
                ),
                None => {}
            }
        }
        if found == 0 {
            bail!(exit::Usage(format!(
                "{} holds no .crypt15 backup: give the folder WhatsApp keeps its database backups in (Databases), or the files",
                arg.display()
            )));
        }
    }
    // Two backups of one day come in the order of their counters (`.2.` before `.10.`).
    out.sort_by(|a, b| {
        (a.time_ns, a.name.counter, &a.path).cmp(&(b.time_ns, b.name.counter, &b.path))
    });
    out.dedup_by(|a, b| a.path == b.path);
    Ok(out)
}

/// What one file's import did, for `--json`.
#[derive(serde::Serialize)]
struct Imported {
    file: String,
    snapshot: Option<String>,
    seq: Option<u64>,
    skipped: bool,
    database_bytes: u64,
    bytes_new: u64,
    bytes_stored: u64,
}

pub(crate) fn import(args: ImportArgs) -> Result<()> {
    let key = read_key(&args.key)?;
    let todo = candidates(&args.backups)?;
    // Every header is read before anything is written: a crypt14 file or one that is
    // not a backup at all stops the import here.
    for c in &todo {
        let mut start = vec![0u8; 2 + 255];
        let n = read_prefix(&c.path, &mut start)?;
        if let Err(e) = backlock_whatsapp::read_header(&start[..n]) {
            return Err(bad(&c.path, e));
        }
    }
    let hostname = match &args.host {
        Some(h) if h.trim().is_empty() => bail!(exit::Usage(
            "--host is empty: give the name to record, or leave it out for this machine's".into()
        )),
        Some(h) => h.clone(),
        None => crate::hostname(),
    };
    let repo = &args.repo;
    let repo_key = password_mode::resolve_key(&repo.repo, repo.key_file.as_deref(), &repo.vault)?;
    let store = crate::store_for(repo)?;
    let cache = crate::object_cache(repo.no_cache)?;
    let open = || -> Result<Repository> {
        Ok(
            Repository::open(store.clone(), &repo_key, crate::device_home()?)?
                .with_cache(cache.as_ref()),
        )
    };
    // What was imported before, by the SHA-256 of its file.
    let mut seen = BTreeMap::new();
    let ignored = open()?.authentic_snapshots(|s, snap| {
        if let Ok(Some(w)) = snap.whatsapp() {
            seen.insert(w.sha256, s.name.to_hex());
        }
        Ok(())
    })?;
    crate::warn_ignored(&ignored);
    let mut report = Vec::new();
    for (i, c) in todo.iter().enumerate() {
        let file =
            fs::read(&c.path).with_context(|| format!("cannot read {}", c.path.display()))?;
        let sha256: [u8; 32] = Sha256::digest(&file).into();
        let file_name = c.path.file_name().unwrap_or_default().to_string_lossy();
        if let Some(id) = seen.get(&sha256) {
            if !repo.json {
                println!("{file_name}: imported before, as snapshot {}", &id[..8]);
            }
            report.push(Imported {
                file: c.path.display().to_string(),
                snapshot: Some(id.clone()),
                seq: None,
                skipped: true,
                database_bytes: 0,
                bytes_new: 0,
                bytes_stored: 0,
            });
            continue;
        }
        let opened = backlock_whatsapp::open(&key, &file).map_err(|e| {
            let e = bad(&c.path, e);
            match i {
                0 => e,
                _ => e.context(format!(
                    "the {i} file(s) before it were imported; fix or remove this one and run the import again (what was imported is skipped)"
                )),
            }
        })?;
        drop(file);
        // The database is written where only this user can read it, checked by
        // SQLite, backed up, and removed with the folder.
        let scratch = tempfile::Builder::new()
            .prefix("backlock-whatsapp-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .context("cannot create a temporary folder for the database")?;
        let db_path = scratch.path().join(&c.name.database);
        let database_bytes =
            write_database(&opened.compressed, &db_path).map_err(|e| bad(&c.path, e))?;
        drop(opened.compressed);
        backlock_whatsapp::check_database(&db_path).map_err(|e| bad(&c.path, e))?;
        let recorded = std::path::absolute(&c.path).unwrap_or_else(|_| c.path.clone());
        let opts = BackupOptions {
            paths: vec![db_path.clone()],
            hostname: hostname.clone(),
            recorded_paths: Some(vec![recorded.display().to_string()]),
            time_unix_ns: Some(c.time_ns),
            whatsapp: Some(WhatsAppSource {
                file: file_name.to_string(),
                sha256,
                features: opened.header.features,
                prefix: opened.header.prefix.clone(),
            }),
            ..Default::default()
        };
        let r = open()?;
        let repo_id = r.id();
        let summary = r.load_index()?.backup(&opts)?;
        seen.insert(sha256, summary.snapshot.clone());
        password_mode::leave_anchor(
            &repo.vault,
            &repo_key,
            &repo_id,
            &summary.snapshot,
            summary.seq,
        );
        if !repo.json {
            println!(
                "{file_name}: snapshot {} (#{}) saved: {} database, {} new, {} uploaded",
                &summary.snapshot[..8],
                summary.seq,
                mib(database_bytes),
                mib(summary.bytes_new),
                mib(summary.bytes_stored),
            );
        }
        report.push(Imported {
            file: c.path.display().to_string(),
            snapshot: Some(summary.snapshot),
            seq: Some(summary.seq),
            skipped: false,
            database_bytes,
            bytes_new: summary.bytes_new,
            bytes_stored: summary.bytes_stored,
        });
    }
    if repo.json {
        print_json(&report);
    }
    Ok(())
}

/// Up to `buf.len()` bytes from the start of `path`.
fn read_prefix(path: &Path, buf: &mut [u8]) -> Result<usize> {
    use std::io::Read;
    let mut f = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    Ok(n)
}

fn write_database(compressed: &[u8], path: &Path) -> Result<u64, Crypt15Error> {
    let io = |e: std::io::Error| Crypt15Error::Io(format!("{}: {e}", path.display()));
    let file = std::os::unix::fs::OpenOptionsExt::mode(
        fs::OpenOptions::new().write(true).create_new(true),
        0o600,
    )
    .open(path)
    .map_err(io)?;
    let mut out = std::io::BufWriter::new(file);
    let n = backlock_whatsapp::inflate(compressed, &mut out)?;
    out.into_inner()
        .map_err(|e| io(e.into_error()))?
        .flush()
        .map_err(io)?;
    Ok(n)
}

pub(crate) fn export(args: ExportArgs) -> Result<()> {
    let key = read_key(&args.key)?;
    if args.out.exists() {
        bail!(exit::Usage(format!(
            "{} exists: give --out a new file name (an export never replaces a backup)",
            args.out.display()
        )));
    }
    let reference = match &args.header_from {
        Some(path) => {
            let mut start = vec![0u8; 2 + 255];
            let n = read_prefix(path, &mut start)?;
            let h = backlock_whatsapp::read_header(&start[..n]).map_err(|e| bad(path, e))?;
            Some((h.features, h.prefix))
        }
        None => None,
    };
    let r = crate::open(&args.repo)?.load_index()?;
    let found = match args.snapshot.as_str() {
        "latest" => {
            let (latest, ignored) = r.latest()?;
            crate::warn_ignored(&ignored);
            latest
        }
        id => r.find_snapshot(id)?,
    };
    let snap = r.load_snapshot(&found)?;
    let imported = snap.whatsapp()?;
    let (features, prefix) = match (reference, imported) {
        (Some(h), _) => h,
        (None, Some(w)) => (w.features, w.prefix),
        (None, None) => {
            eprintln!(
                "note: snapshot {} was not imported from WhatsApp: the header gets the key type only (no app version or account digits); give --header-from FILE.crypt15 to copy them from one of the phone's backups",
                &found.name.to_hex()[..8]
            );
            // No feature table, so no marker that says there is one.
            (false, header::minimal_prefix())
        }
    };
    let mut database = Zeroizing::new(Vec::new());
    let kind = r.dump(&found, &args.path, &mut *database)?;
    if kind != "file" || !database.starts_with(b"SQLite format 3\0") {
        bail!(exit::Usage(format!(
            "{} in snapshot {} is not a SQLite database: WhatsApp's backups hold databases (msgstore.db)",
            args.path,
            &found.name.to_hex()[..8]
        )));
    }
    let compressed = backlock_whatsapp::deflate(&mut database.as_slice())
        .context("cannot compress the database")?;
    let sealed = backlock_whatsapp::seal(&key, features, &prefix, &compressed)
        .map_err(|e| bad(&args.out, e))?;
    write_new(&args.out, &sealed)?;
    if args.repo.json {
        print_json(&serde_json::json!({
            "out": args.out.display().to_string(),
            "snapshot": found.name.to_hex(),
            "database_bytes": database.len(),
            "bytes": sealed.len(),
        }));
    } else {
        println!(
            "{}: {} of snapshot {} ({} database) as crypt15, {}",
            args.out.display(),
            args.path,
            &found.name.to_hex()[..8],
            mib(database.len() as u64),
            mib(sealed.len() as u64)
        );
    }
    Ok(())
}

/// Writes `bytes` to the new file `path` whole or not at all: a temporary file beside
/// it, synced, then linked in place (never replacing a file that appeared meanwhile).
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let output = |e: std::io::Error| backlock_repo::RepoError::Output {
        what: path.display().to_string(),
        source: e,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".backlock-export-")
        .tempfile_in(dir)
        .map_err(output)?;
    tmp.write_all(bytes).map_err(output)?;
    tmp.as_file().sync_all().map_err(output)?;
    tmp.persist_noclobber(path).map_err(|e| output(e.error))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
