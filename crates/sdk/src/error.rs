//! The one error type every language sees: each variant says what the app should do.

use backlock_repo::RepoError;
use backlock_store::StoreError;

/// Why an operation failed. Each message says what is wrong and what to do, and
/// never holds a secret. New variants may be added; none is renamed.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key does not open this repository: ask for it again.
    #[error("{message}")]
    WrongKey {
        /// What happened.
        message: String,
    },
    /// The password was wrong; `attempts_left` more before the vault erases the key.
    #[error("{message}")]
    WrongPassword {
        /// Guesses left.
        attempts_left: u32,
        /// What happened.
        message: String,
    },
    /// Too many wrong passwords: the vault erased the key for good. Tell the user
    /// the backup cannot be opened without the 64-digit key.
    #[error("{message}")]
    Locked {
        /// What happened.
        message: String,
    },
    /// The vault holds no key for this account (never enabled, or deleted).
    #[error("{message}")]
    NoKey {
        /// What happened.
        message: String,
    },
    /// The vault presents another public key than the one given or pinned: something
    /// else answered. Send it nothing; tell the user.
    #[error("{message}")]
    WrongVault {
        /// What happened.
        message: String,
    },
    /// The vault cannot be reached or has no majority: retry later.
    #[error("{message}")]
    VaultUnavailable {
        /// What happened.
        message: String,
    },
    /// The repository is damaged (objects missing or not authentic): run `check`,
    /// restore what still restores.
    #[error("{message}")]
    Damaged {
        /// What happened.
        message: String,
    },
    /// The store serves older data than this device has seen (rolled back, or a
    /// replay): do not trust it; restore from another copy or accept it knowingly.
    #[error("{message}")]
    RolledBack {
        /// What happened.
        message: String,
    },
    /// Another backup or prune holds the repository: retry later.
    #[error("{message}")]
    Busy {
        /// What happened.
        message: String,
    },
    /// The store or the local disk failed (unreachable, full, refused): retry later.
    #[error("{message}")]
    Storage {
        /// What happened.
        message: String,
    },
    /// The operation was cancelled; what it wrote is consistent and the next run
    /// goes on from it.
    #[error("{message}")]
    Cancelled {
        /// What happened.
        message: String,
    },
    /// The app asked for something impossible (a path that does not exist, a target
    /// that is not empty, a malformed key): fix the request.
    #[error("{message}")]
    Invalid {
        /// What happened.
        message: String,
    },
    /// The progress callback failed (raised an exception); the operation stopped.
    #[error("{message}")]
    Callback {
        /// What happened.
        message: String,
    },
    /// Anything else: report it.
    #[error("{message}")]
    Other {
        /// What happened.
        message: String,
    },
}

impl From<RepoError> for Error {
    fn from(e: RepoError) -> Self {
        let message = e.to_string();
        match e {
            RepoError::WrongKey => Error::WrongKey { message },
            RepoError::Interrupted => Error::Cancelled {
                message: "cancelled; what was stored is kept, and the next backup goes on from it"
                    .into(),
            },
            RepoError::Damaged { .. }
            | RepoError::UnauthenticSnapshots { .. }
            | RepoError::NewestDamaged { .. }
            | RepoError::NotARepository { .. } => Error::Damaged { message },
            RepoError::Rollback { .. } | RepoError::IndexRollback { .. } => {
                Error::RolledBack { message }
            }
            RepoError::Locked { .. } => Error::Busy { message },
            RepoError::Store(StoreError::NotFound { .. }) => Error::Damaged { message },
            RepoError::Store(_)
            | RepoError::Target { .. }
            | RepoError::Output { .. }
            | RepoError::Scratch { .. }
            | RepoError::Device { .. } => Error::Storage { message },
            RepoError::Usage(_)
            | RepoError::TargetNotEmpty { .. }
            | RepoError::SnapshotNotFound { .. }
            | RepoError::NoSnapshots
            | RepoError::PathNotInSnapshot { .. }
            | RepoError::AlreadyExists { .. }
            | RepoError::Source { .. } => Error::Invalid { message },
            _ => Error::Other { message },
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::from(RepoError::Store(e))
    }
}

/// An exception the app's callback raised that is not one of ours.
impl From<uniffi::UnexpectedUniFFICallbackError> for Error {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Error::Callback {
            message: format!("the app's callback failed: {}", e.reason),
        }
    }
}

impl Error {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid {
            message: message.into(),
        }
    }
}
