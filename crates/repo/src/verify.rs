//! Compares a restored tree with its source, as `demo` (and later `migrate`) must
//! before trusting a restore.
//!
//! Every file must match byte for byte, SQLite databases included: a backup stores a
//! database's own pages (docs/FORMAT.md §SQLite databases), so its restore equals the
//! source once the source's write-ahead log is checkpointed.

use std::{fs, os::unix::fs::MetadataExt, path::Path};

/// What a comparison covered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Regular files compared byte for byte.
    pub files: u64,
    /// SQLite databases compared byte for byte.
    pub databases: u64,
    /// Bytes compared.
    pub bytes: u64,
}

/// Compares trees `source` and `restored`: same entries, kinds, modes, symlink
/// targets and contents. SQLite sidecar files (`-wal`, `-shm`, `-journal`) of the
/// source are ignored: the captured database already contains what they hold.
pub fn compare_trees(source: &Path, restored: &Path) -> Result<VerifyReport, String> {
    let mut report = VerifyReport::default();
    compare(source, restored, Path::new(""), &mut report)?;
    Ok(report)
}

fn is_sidecar(name: &str) -> bool {
    ["-wal", "-shm", "-journal"]
        .iter()
        .any(|s| name.ends_with(s))
}

fn names(dir: &Path) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !is_sidecar(n))
        .collect();
    out.sort();
    Ok(out)
}

fn compare(a: &Path, b: &Path, rel: &Path, report: &mut VerifyReport) -> Result<(), String> {
    let show = |p: &Path| {
        if rel.as_os_str().is_empty() {
            ".".into()
        } else {
            p.display().to_string()
        }
    };
    let ma = fs::symlink_metadata(a).map_err(|e| format!("{}: {e}", a.display()))?;
    let mb = fs::symlink_metadata(b)
        .map_err(|_| format!("{} is missing from the restore", show(rel)))?;
    if ma.file_type() != mb.file_type() {
        return Err(format!(
            "{} is a different kind of entry after restore",
            show(rel)
        ));
    }
    if !ma.file_type().is_symlink() && ma.mode() & 0o7777 != mb.mode() & 0o7777 {
        return Err(format!(
            "{} has mode {:o}, expected {:o}",
            show(rel),
            mb.mode() & 0o7777,
            ma.mode() & 0o7777
        ));
    }
    if ma.is_dir() {
        let (na, nb) = (names(a)?, names(b)?);
        if na != nb {
            let extra: Vec<_> = nb.iter().filter(|n| !na.contains(n)).collect();
            let missing: Vec<_> = na.iter().filter(|n| !nb.contains(n)).collect();
            return Err(format!(
                "{}: missing {missing:?}, unexpected {extra:?}",
                show(rel)
            ));
        }
        for n in na {
            compare(&a.join(&n), &b.join(&n), &rel.join(&n), report)?;
        }
    } else if ma.file_type().is_symlink() {
        if fs::read_link(a).ok() != fs::read_link(b).ok() {
            return Err(format!(
                "symlink {} points elsewhere after restore",
                show(rel)
            ));
        }
    } else {
        let da = fs::read(a).map_err(|e| format!("{}: {e}", a.display()))?;
        let db = fs::read(b).map_err(|e| format!("{}: {e}", b.display()))?;
        let sqlite = backlock_core::chunker::sqlite_page_size(&da).is_some();
        if da != db {
            let first = da
                .iter()
                .zip(&db)
                .position(|(x, y)| x != y)
                .unwrap_or(da.len().min(db.len()));
            return Err(format!(
                "{} differs after restore (sizes {} and {}, first difference at byte {first})",
                show(rel),
                da.len(),
                db.len()
            ));
        }
        if sqlite {
            report.databases += 1;
        } else {
            report.files += 1;
        }
        report.bytes += da.len() as u64;
    }
    Ok(())
}
