//! Exit codes: scripts can tell what went wrong without parsing messages.

use backlock_repo::RepoError;
use backlock_store::StoreError;

pub(crate) const HELP: &str = "Exit codes: 0 ok, 1 error, 2 usage, 3 wrong or malformed key, \
4 damaged repository, 5 store rolled back, 6 store or target I/O (full, unreachable), \
7 repository in use by another backup or prune (try again later).\n\
Environment: BACKLOCK_REPO, BACKLOCK_KEY_FILE, BACKLOCK_HOME (device state; default: XDG data dir).";

/// A usage error (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Usage(pub String);

/// `check` found damage (exit 4).
#[derive(Debug, thiserror::Error)]
#[error("{0} problem(s) found: some snapshots cannot be fully restored")]
pub(crate) struct Damage(pub usize);

/// A key that could not be read or parsed (exit 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadKey(pub String);

/// Maps an error chain to the documented exit code.
pub(crate) fn code_for(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if cause.is::<Usage>() {
            return 2;
        }
        if cause.is::<BadKey>() {
            return 3;
        }
        if cause.is::<Damage>() {
            return 4;
        }
        let store = match cause.downcast_ref::<RepoError>() {
            Some(RepoError::WrongKey) => return 3,
            Some(RepoError::Damaged { .. }) => return 4,
            Some(RepoError::Rollback { .. }) => return 5,
            Some(RepoError::Target { .. }) => return 6,
            Some(RepoError::Locked { .. }) => return 7,
            Some(RepoError::Store(s)) => Some(s),
            Some(
                RepoError::Usage(_)
                | RepoError::TargetNotEmpty { .. }
                | RepoError::SnapshotNotFound { .. },
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
