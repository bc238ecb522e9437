//! openraft's own storage conformance suite, run against the sealed file store.

use backlock_vault_server::raft::{LogStore, StateMachineStore, TypeConfig};
use backlock_vault_server::seal::{KeyFileSealer, Sealer};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use std::sync::Arc;
use tempfile::TempDir;

/// Opens a fresh data directory (and key) per test case; the guard deletes it.
struct FreshSealedDir;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for FreshSealedDir {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let root = tempfile::tempdir().expect("create a temp dir");
        let sealer: Arc<dyn Sealer> = Arc::new(
            KeyFileSealer::open_or_create(root.path().join("node.key")).expect("create a key file"),
        );
        let data = root.path().join("data");
        let log = LogStore::open(&data, sealer.clone())?;
        let sm = StateMachineStore::open(&data, sealer)?;
        Ok((root, log, sm))
    }
}

/// Takes about 12 s, most of it openraft's own fixed one-second sleeps.
#[test]
fn openraft_storage_suite_passes() {
    if let Err(e) = Suite::test_all(FreshSealedDir) {
        panic!("openraft storage suite failed: {e}");
    }
}
