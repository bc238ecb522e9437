//! SIGINT and SIGTERM as a request to stop cleanly.
//!
//! The `backlock` command points the signals at [`flag`]; long operations look at it
//! between steps (a backup between chunks and packs, a restore between packs, prune
//! and check between packs) and stop with [`RepoError::Interrupted`], so their locks
//! are released and nothing is left half-written. Inert unless a signal arrives.

use crate::error::{RepoError, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// The flag the signal handlers set.
pub fn flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(Arc::default).clone()
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    flag().load(Ordering::Relaxed)
}

/// `Err(Interrupted)` once a stop was requested.
pub fn check() -> Result<()> {
    match requested() {
        true => Err(RepoError::Interrupted),
        false => Ok(()),
    }
}
