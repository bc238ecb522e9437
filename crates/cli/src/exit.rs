//! Exit codes: scripts can tell what went wrong without parsing messages.

use backlock_repo::RepoError;
use backlock_store::StoreError;

pub(crate) const HELP: &str = "Exit codes: 0 ok, 1 error, 2 usage, 3 wrong or malformed key (or no key in the vault), \
4 damaged repository, 5 store rolled back, 6 store or target I/O (full, unreachable), \
7 repository in use by another backup or prune (try again later), 8 wrong password (attempts left), \
9 locked: the vault destroyed the key after too many wrong passwords, 10 vault unavailable, \
11 the vault is not the one this device pinned, 12 snapshot saved incomplete, \
13 a WhatsApp backup that cannot be imported (damaged, or not crypt15).\n\
Environment: BACKLOCK_REPO, BACKLOCK_KEY_FILE, BACKLOCK_HOME (device state; default: XDG data dir), \
BACKLOCK_VAULT, BACKLOCK_VAULT_DATA, BACKLOCK_ACCOUNT, BACKLOCK_TOKEN, BACKLOCK_PASSWORD_FILE, BACKLOCK_VAULT_KEY.\n\
Stores: BACKLOCK_CREDENTIALS (credentials file; default ~/.config/backlock/credentials), AWS_* for s3://, \
BACKLOCK_WEBDAV_PASSWORD, BACKLOCK_SFTP_KEY, BACKLOCK_SFTP_KNOWN_HOSTS, BACKLOCK_STORE_CONNECTIONS, \
BACKLOCK_STORE_RETRIES, BACKLOCK_STORE_TIMEOUT; the README lists every store's variables.";

/// A password-mode failure, each with its own exit code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VaultFailure {
    /// Exit 8.
    #[error("wrong password — {attempts_left} attempts left")]
    WrongPassword { attempts_left: u32 },
    /// Exit 9.
    #[error("too many wrong passwords: the vault has destroyed the key, and this backup can never be recovered with a password")]
    Locked,
    /// Exit 3.
    #[error("no backup key is registered for this account in the vault; check --account, or restore with the 64-digit key")]
    NoKey,
    /// Exit 10.
    #[error("the vault is unavailable: {0}; check the vault address and try again later")]
    Unavailable(String),
    /// Exit 10 too: the vault is up but refuses more requests for now.
    #[error("{0}")]
    Busy(String),
    /// Exit 11.
    #[error("{0}")]
    WrongServer(String),
    /// Exit 1.
    #[error("{0}")]
    Other(String),
}

/// A usage error (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Usage(pub String);

/// `check` found damage (exit 4).
#[derive(Debug, thiserror::Error)]
#[error("{0} problem(s) found: some snapshots cannot be fully restored")]
pub(crate) struct Damage(pub usize);

/// The backup committed a snapshot that leaves entries out (exit 12).
#[derive(Debug, thiserror::Error)]
#[error("snapshot {snapshot} was saved but is incomplete: {count} entr(y/ies) could not be read (listed above). Fix access to them, or exclude them, and back up again")]
pub(crate) struct Incomplete {
    /// The snapshot's short id.
    pub snapshot: String,
    /// How many entries it left out.
    pub count: usize,
}

/// A key that could not be read or parsed (exit 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadKey(pub String);

/// The error and its causes, each cause once: a message that already says its cause
/// (most of ours do, to put the advice after it) is not followed by it again.
pub(crate) fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// With `--json`, failures are also a JSON object on stdout: `error` (a stable code),
/// `message`, and for a wrong password `attempts_left`.
pub(crate) fn print_json_error(e: &anyhow::Error) {
    let vault = e.chain().find_map(|c| c.downcast_ref::<VaultFailure>());
    let (code, attempts_left) = match vault {
        Some(VaultFailure::WrongPassword { attempts_left }) => {
            ("wrong_password", Some(*attempts_left))
        }
        Some(VaultFailure::Locked) => ("locked", Some(0)),
        Some(VaultFailure::NoKey) => ("no_key", None),
        Some(VaultFailure::Unavailable(_)) => ("vault_unavailable", None),
        Some(VaultFailure::Busy(_)) => ("vault_busy", None),
        Some(VaultFailure::WrongServer(_)) => ("wrong_vault", None),
        _ => ("error", None),
    };
    let mut out =
        serde_json::json!({"error": code, "exit_code": code_for(e), "message": message(e)});
    if let Some(n) = attempts_left {
        out["attempts_left"] = n.into();
    }
    println!("{out}");
}

/// Maps an error chain to the documented exit code.
pub(crate) fn code_for(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if cause.is::<Usage>() || cause.is::<backlock_store_cloud::OpenError>() {
            return 2;
        }
        if cause.is::<BadKey>() {
            return 3;
        }
        if cause.is::<Damage>() {
            return 4;
        }
        if cause.is::<Incomplete>() {
            return 12;
        }
        if let Some(b) = cause.downcast_ref::<crate::whatsapp_cmd::BadBackup>() {
            return match b.source {
                backlock_whatsapp::Crypt15Error::WrongKey => 3,
                backlock_whatsapp::Crypt15Error::Io(_) => 6,
                _ => 13,
            };
        }
        if let Some(m) = cause.downcast_ref::<backlock_migrate::MigrateError>() {
            use backlock_migrate::MigrateError as M;
            return match m {
                M::SourceMissing { .. } | M::NotAChatFolder { .. } => 2,
                M::VerifyFailed { .. } => 4,
                M::Work { .. } => 6,
                _ => 1,
            };
        }
        if let Some(v) = cause.downcast_ref::<VaultFailure>() {
            return match v {
                VaultFailure::WrongPassword { .. } => 8,
                VaultFailure::Locked => 9,
                VaultFailure::NoKey => 3,
                VaultFailure::Unavailable(_) | VaultFailure::Busy(_) => 10,
                VaultFailure::WrongServer(_) => 11,
                VaultFailure::Other(_) => 1,
            };
        }
        let store = match cause.downcast_ref::<RepoError>() {
            Some(RepoError::WrongKey) => return 3,
            Some(RepoError::Interrupted) => return crate::INTERRUPTED_EXIT,
            Some(
                RepoError::Damaged { .. }
                | RepoError::UnauthenticSnapshots { .. }
                | RepoError::NewestDamaged { .. }
                | RepoError::Newer { .. }
                | RepoError::UpgradeNeeded { .. },
            ) => return 4,
            Some(RepoError::Rollback { .. } | RepoError::IndexRollback { .. }) => return 5,
            Some(
                RepoError::Target { .. }
                | RepoError::Output { .. }
                | RepoError::VerifyFailed { .. },
            ) => return 6,
            Some(RepoError::Locked { .. } | RepoError::KeyAlreadyKept { .. }) => return 7,
            Some(RepoError::Store(s)) => Some(s),
            Some(
                RepoError::Usage(_)
                | RepoError::TargetNotEmpty { .. }
                | RepoError::SnapshotNotFound { .. }
                | RepoError::PathNotInSnapshot { .. },
            ) => return 2,
            Some(_) => return 1,
            None => cause.downcast_ref::<StoreError>(),
        };
        if let Some(s) = store {
            // A missing object is damage to the repository, not a passing fault.
            return if matches!(s, StoreError::NotFound { .. }) {
                4
            } else {
                6
            };
        }
    }
    1
}
