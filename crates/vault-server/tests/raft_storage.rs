//! openraft's own storage conformance suite, case by case, against the sealed stores.
//!
//! openraft 0.9.25's suite treats the log as a map in nine cases: they start an empty
//! log at index 1 or 2, or append out of order (1 into a log holding 3), which Raft
//! itself never does (a log starts at 0 or just after a purge point) and which our
//! segment log refuses ("entry N appended where entry M belongs"); openraft issues #282,
//! #952 and #1649 fix such cases upstream. Those nine are named at the end and not run;
//! every other case runs, each on a fresh data directory.

use backlock_vault_server::epoch::EpochSealer;
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
        let node: Arc<dyn Sealer> = Arc::new(
            KeyFileSealer::open_or_create(root.path().join("node.key")).expect("create a key file"),
        );
        let sealer = Arc::new(EpochSealer::open(node).expect("make an epoch key"));
        let data = root.path().join("data");
        let log = LogStore::open(&data, sealer.clone())?;
        let sm = StateMachineStore::open(&data, sealer)?;
        Ok((root, log, sm))
    }
}

type Cases = Suite<TypeConfig, LogStore, StateMachineStore, FreshSealedDir, TempDir>;

/// One `#[tokio::test]` per suite case, each on a fresh store.
macro_rules! suite_cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let (_dir, log, sm) = FreshSealedDir.build().await.unwrap();
            if let Err(e) = Cases::$case(log, sm).await {
                panic!("openraft suite case {} failed: {e}", stringify!($case));
            }
        }
    )*};
}

suite_cases!(
    last_membership_in_log_initial,
    get_membership_initial,
    get_membership_from_empty_log_and_sm,
    get_initial_state_without_init,
    get_initial_state_with_state,
    get_initial_state_last_log_gt_sm,
    get_initial_state_log_ids,
    save_vote,
    get_log_entries,
    limited_get_log_entries,
    try_get_log_entry,
    initial_logs,
    get_log_state,
    get_log_id,
    last_id_in_log,
    last_applied_state,
    purge_logs_upto_0,
    purge_logs_upto_5,
    purge_logs_upto_20,
    delete_logs_since_11,
    delete_logs_since_0,
    append_to_log,
    snapshot_meta,
    apply_single,
    apply_multiple,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_snapshot() {
    if let Err(e) = Cases::transfer_snapshot(&FreshSealedDir).await {
        panic!("openraft suite case transfer_snapshot failed: {e}");
    }
}

// Not run, for gapped or out-of-order appends (see the top of this file):
// last_membership_in_log, last_membership_in_log_multi_step,
// get_membership_from_log_and_empty_sm, get_membership_from_log_le_sm_last_applied,
// get_membership_from_log_gt_sm_last_applied_1, get_membership_from_log_gt_sm_last_applied_2,
// get_initial_state_membership_from_log_and_sm, get_initial_state_last_log_lt_sm,
// get_initial_state_re_apply_committed.
