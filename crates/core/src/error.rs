//! Errors of decoding and authenticating repository objects.

/// Why an object could not be read. Never contains secret material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// The object was written by a newer backlock.
    #[error("written by a newer backlock (format version {found}, this build reads version {newest}): upgrade backlock")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
        /// The newest version this build reads for the object's kind.
        newest: u8,
    },
    /// The object is not of the kind it is stored as (swapped by the store).
    #[error("object kind mismatch (expected {expected}, found {found}): the store swapped or replaced this object")]
    KindMismatch {
        /// The kind the caller asked for.
        expected: &'static str,
        /// The kind byte found.
        found: u8,
    },
    /// The key does not match the repository's key id.
    #[error("this key does not open this repository")]
    WrongKey,
    /// Authentication failed: the bytes were changed, truncated or moved.
    #[error("authentication failed: the object was modified, truncated or swapped")]
    Tampered,
    /// The object is too short to hold its header.
    #[error("truncated: {len} bytes is shorter than the {min}-byte minimum")]
    Truncated {
        /// Length seen.
        len: usize,
        /// Minimum length.
        min: usize,
    },
    /// An object's payload is over the limit every reader enforces.
    #[error("{what} of {size} bytes is over the {limit}-byte limit of an object")]
    TooLarge {
        /// Which structure.
        what: &'static str,
        /// Its payload's length (at least; a reader stops counting past the limit).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Authenticated plaintext did not decode (a bug or a format mismatch).
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which structure.
        what: &'static str,
        /// Decoder detail (never secret).
        detail: String,
    },
}
