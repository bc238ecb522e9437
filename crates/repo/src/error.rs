//! What can go wrong in the engine, each variant saying what to do.

use backlock_core::FormatError;
use backlock_store::StoreError;
use std::path::PathBuf;

/// Errors of repository operations. Never carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// A path that a snapshot does not hold (`ls`, `dump`, `restore SNAPSHOT:PATH`).
    #[error("{path} is not in snapshot {snapshot}: the nearest path it holds is {nearest}; list it with `backlock ls {snapshot} {nearest}`")]
    PathNotInSnapshot {
        /// The path asked for.
        path: String,
        /// The snapshot's short id.
        snapshot: String,
        /// The deepest of its parents that the snapshot holds (`/` for its root).
        nearest: String,
    },
    /// The key opens no object here.
    #[error(
        "this key does not open this repository: check you used the key saved for this backup"
    )]
    WrongKey,
    /// No config object at the location.
    #[error("no backlock repository at {location}: run `backlock init` first, or check the path")]
    NotARepository {
        /// Where we looked.
        location: String,
    },
    /// `init` on a location that holds a repository.
    #[error("a backlock repository already exists at {location}")]
    AlreadyExists {
        /// The location.
        location: String,
    },
    /// An object failed authentication or decoding.
    #[error("{kind} object {name} is damaged: {source}. Run `backlock check --read-data` to list every damaged object")]
    Damaged {
        /// Its kind.
        kind: &'static str,
        /// Its name.
        name: String,
        /// What was wrong.
        #[source]
        source: FormatError,
    },
    /// Listed snapshot objects do not authenticate, and the operation would need them
    /// gone first (prune would free data a damaged real snapshot may still need).
    #[error("{count} snapshot object(s) do not authenticate (first: {first}: {reason}). Nothing was deleted: run `backlock check`, then `backlock repair snapshots` to remove them")]
    UnauthenticSnapshots {
        /// How many.
        count: usize,
        /// The first one's name.
        first: String,
        /// Why it does not authenticate.
        reason: String,
    },
    /// The newest snapshot this device has seen is listed but does not authenticate.
    #[error("the newest snapshot this device has seen (#{seen}) does not open: snapshot object {name}: {reason}. Run `backlock check --read-data`; to restore the newest snapshot that opens: `backlock restore latest --accept-older --target DIR`")]
    NewestDamaged {
        /// Its sequence number, as this device recorded it.
        seen: u64,
        /// The object that claims it.
        name: String,
        /// Why it does not open.
        reason: String,
    },
    /// An object to write is over the size every reader accepts; nothing was
    /// committed.
    #[error("{source}: no snapshot was written. Back up fewer files at once (several folders in separate snapshots)")]
    TooLarge {
        /// The object and its size.
        #[source]
        source: FormatError,
    },
    /// SIGINT or SIGTERM arrived and the operation stopped cleanly.
    #[error("stopped by a signal (SIGINT or SIGTERM): the repository lock is released and nothing was left half-written; run the command again to finish")]
    Interrupted,
    /// An object written by a newer backlock (it authenticates under this key).
    #[error("{kind} object {name} was {source}")]
    Newer {
        /// Its kind.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The version found and the newest this build reads.
        #[source]
        source: FormatError,
    },
    /// The store served an older state than this device has seen.
    #[error("the store is serving an older state than this device has seen: newest snapshot there is #{served}, this device saw #{seen}. The store rolled back or lost snapshots; do not prune, and check the store. To restore what it has anyway: `backlock restore latest --accept-older --target DIR`")]
    Rollback {
        /// Newest sequence number the device recorded.
        seen: u64,
        /// Newest sequence number the store lists.
        served: u64,
    },
    /// The store served older index sets than this device has seen: a writer
    /// building on them could reference packs a prune deleted.
    #[error("the store is serving older index sets than this device has seen: the newest there is #{served}, this device saw #{seen}. The store rolled back or lost index objects; nothing was written. Do not back up or prune here until the store is checked (`backlock check`); restoring still works")]
    IndexRollback {
        /// Newest index set sequence number the device recorded.
        seen: u64,
        /// Newest one the store lists (0: none).
        served: u64,
    },
    /// A newer backlock raised the repository's writer level above this build's.
    #[error("this repository was changed by a newer backlock (repository level {level}, this build writes level {supported}): upgrade backlock to back up, forget, prune or rotate here; restore, snapshots and check still work")]
    UpgradeNeeded {
        /// The config's writer level.
        level: u32,
        /// This build's.
        supported: u32,
    },
    /// A snapshot id matched nothing.
    #[error("no snapshot matches {id:?}: run `backlock snapshots` to list them")]
    SnapshotNotFound {
        /// What the user gave.
        id: String,
    },
    /// The repository holds no snapshot.
    #[error("the repository has no snapshot yet: run `backlock backup` first")]
    NoSnapshots,
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A source file could not be read; nothing was committed.
    #[error("cannot read {path}: {source}. No snapshot was written; fix access to the file (or exclude it) and run the backup again")]
    Source {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A SQLite database could not be captured.
    #[error("cannot capture SQLite database {path}: {detail}. No snapshot was written")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// SQLite's message.
        detail: String,
        /// It stayed locked by a writer (rather than being unreadable as a database).
        busy: bool,
    },
    /// The restore target could not be written; nothing was left under its name.
    #[error("cannot write the restore to {path}: {source}. Nothing was left under the target name; {}, then run the restore again", target_advice(.source))]
    Target {
        /// The target.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `restore --verify` read back other bytes than the snapshot holds.
    #[error("the restored file {path} differs from the snapshot from byte {offset} on: the disk under the target gave back other data than was written. Nothing was left under the target name; check that disk, then restore again")]
    VerifyFailed {
        /// The file, from the target's root.
        path: String,
        /// Where the first chunk that differs starts.
        offset: u64,
    },
    /// Where `dump` writes could not be written.
    #[error("cannot write to {what}: {source}")]
    Output {
        /// What it writes to.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The restore target is not empty.
    #[error("restore target {path} exists and is not empty: choose a new or empty directory")]
    TargetNotEmpty {
        /// The target.
        path: PathBuf,
    },
    /// The scratch file of an index too large for memory could not be written.
    #[error("cannot write the index's scratch file in {path}: {source}. A repository this large keeps its index on disk (64 bytes per chunk): free space there, or point the cache (XDG_CACHE_HOME) or, with --no-cache, TMPDIR at a disk with room, and run the command again")]
    Scratch {
        /// The directory of the scratch file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The device's own state (under BACKLOCK_HOME) could not be read or written.
    #[error("cannot use this device's backlock state at {path}: {source}")]
    Device {
        /// The state file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key rotation started by another process on this device keeps its new key
    /// there already.
    #[error("a key rotation of this repository is already running on this device (its new key is kept at {path}): wait for it to end, then run `backlock rotate-key` again")]
    KeyAlreadyKept {
        /// The kept key's file.
        path: PathBuf,
    },
    /// Another operation holds a conflicting lock.
    #[error("the repository is in use by {holder} (lock refreshed {age_secs} s ago): wait for it to finish and try again; a lock whose process is gone expires after an hour")]
    Locked {
        /// Who holds it.
        holder: String,
        /// Seconds since it was taken or refreshed.
        age_secs: i64,
    },
    /// Invalid input from the caller.
    #[error("{0}")]
    Usage(String),
}

impl RepoError {
    pub(crate) fn damaged(
        kind: backlock_core::envelope::ObjectKind,
        name: &str,
        source: FormatError,
    ) -> Self {
        if source == FormatError::WrongKey {
            return RepoError::WrongKey;
        }
        RepoError::Damaged {
            kind: kind.as_str(),
            name: name.to_string(),
            source,
        }
    }
}

/// Result alias.
pub type Result<T, E = RepoError> = std::result::Result<T, E>;

/// What to do about a restore target that could not be written, by its cause.
fn target_advice(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::StorageFull | K::QuotaExceeded => "free space on the target's disk",
        K::PermissionDenied | K::ReadOnlyFilesystem => {
            "choose a target you may write to, or fix its permissions"
        }
        K::AlreadyExists | K::NotADirectory | K::IsADirectory => {
            "the snapshot names an entry twice or a file below a file: check the repository with `backlock check`"
        }
        _ => match e.raw_os_error() {
            Some(libc::EMFILE) | Some(libc::ENFILE) => {
                "raise the open-file limit (`ulimit -n`)"
            }
            _ => "fix what the error names",
        },
    }
}
