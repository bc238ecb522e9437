//! The verification: a restored tree against the source, every file bit for bit,
//! streamed block by block (memory stays at two blocks whatever the file sizes).

use crate::source::{read_up_to, scan_dir, Entry, Kind, Manifest, Source};
use crate::MigrateError;
use std::{fs, path::Path};

/// Why the restore is not the source.
#[derive(Debug)]
pub(crate) struct Mismatch {
    /// The entry that differs, relative to the source root.
    pub rel: String,
    /// How.
    pub detail: String,
}

/// What the verification covered.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Verified {
    pub files: u64,
    pub bytes: u64,
}

/// Compares `restored` (the restore of the source's top folder) with `manifest`,
/// reading every file's content from `source` again. With `subset`, entries of the
/// restore that the source no longer has are allowed (an earlier run deleted them
/// after verifying them).
pub(crate) fn compare(
    source: &Source,
    manifest: &Manifest,
    restored: &Path,
    subset: bool,
) -> Result<Result<Verified, Mismatch>, MigrateError> {
    let mut got = Vec::new();
    scan_dir(restored, Path::new(""), &mut got)?;
    if subset {
        let wanted: std::collections::HashSet<_> = manifest.iter().map(|e| &e.rel).collect();
        got.retain(|e| wanted.contains(&e.rel));
    }
    // A store has no directories of its own: only the restore's files count.
    if matches!(source, Source::Cloud(_)) {
        got.retain(|e| e.kind != Kind::Dir);
    }
    let mut verified = Verified::default();
    let mut got = got.into_iter();
    for want in manifest {
        let Some(have) = got.next() else {
            return Ok(Err(mismatch(want, "is missing from the restore")));
        };
        if have.rel != want.rel {
            return Ok(Err(Mismatch {
                rel: have.rel.display().to_string(),
                detail: format!("is in the restore, {} expected", want.rel.display()),
            }));
        }
        if have.kind != want.kind {
            return Ok(Err(mismatch(
                want,
                "is another kind of entry in the restore",
            )));
        }
        let local = matches!(source, Source::Local(_));
        if local && want.kind != Kind::Dir && have.mode != want.mode {
            return Ok(Err(mismatch(
                want,
                &format!(
                    "has mode {:o} in the restore, {:o} in the source",
                    have.mode, want.mode
                ),
            )));
        }
        if have.size != want.size {
            return Ok(Err(mismatch(
                want,
                &format!(
                    "has {} bytes in the restore, {} in the source",
                    have.size, want.size
                ),
            )));
        }
        if want.kind == Kind::File {
            let restored_file = restored.join(&want.rel);
            let mine = fs::File::open(&restored_file).map_err(|e| MigrateError::Work {
                path: restored_file.clone(),
                source: e,
            })?;
            if let Some(at) = first_difference(source, want, mine, &restored_file)? {
                return Ok(Err(mismatch(
                    want,
                    &format!("differs from the restore at byte {at}"),
                )));
            }
            verified.files += 1;
            verified.bytes += want.size;
        }
    }
    if let Some(extra) = got.next() {
        return Ok(Err(Mismatch {
            rel: extra.rel.display().to_string(),
            detail: "is in the restore but not in the source".into(),
        }));
    }
    Ok(Ok(verified))
}

fn mismatch(e: &Entry, detail: &str) -> Mismatch {
    Mismatch {
        rel: e.rel.display().to_string(),
        detail: detail.to_string(),
    }
}

/// The offset of the first byte where the source's file and the restored one differ.
fn first_difference(
    source: &Source,
    e: &Entry,
    mut restored: fs::File,
    path: &Path,
) -> Result<Option<u64>, MigrateError> {
    let work = |err| MigrateError::Work {
        path: path.to_path_buf(),
        source: err,
    };
    let mut offset = 0u64;
    for block in source.blocks(e)? {
        let theirs = block?;
        let mine = read_up_to(&mut restored, theirs.len()).map_err(work)?;
        if mine != theirs {
            let at = mine
                .iter()
                .zip(&theirs)
                .position(|(x, y)| x != y)
                .unwrap_or(mine.len());
            return Ok(Some(offset + at as u64));
        }
        offset += mine.len() as u64;
    }
    // The restore must end where the source does.
    let more = read_up_to(&mut restored, 1).map_err(work)?.len();
    Ok((more > 0).then_some(offset))
}
