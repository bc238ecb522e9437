//! Every backend passes the same conformance suite.

use backlock_store::{FsStore, MemoryStore};
use std::sync::Arc;

#[test]
fn memory_store_conforms() {
    backlock_testkit::store_suite::run_all(Arc::new(MemoryStore::new()));
}

#[test]
fn fs_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    backlock_testkit::store_suite::run_all(Arc::new(FsStore::new(dir.path().join("repo"))));
    // Atomic puts leave nothing behind in tmp/.
    let tmp = std::fs::read_dir(dir.path().join("repo/tmp"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(tmp, 0);
}
