//! A hook for tests that stop a process at a named step (with SIGKILL, or to change
//! its input before it goes on). Inert unless [`PAUSE_VAR`] names the step.

/// The step at which [`pause`] stops: the process prints `backlock: paused at STEP`
/// on stderr and waits for a line (or end of input) on stdin.
pub const PAUSE_VAR: &str = "BACKLOCK_TEST_PAUSE_AT";

/// Stops at `step` if [`PAUSE_VAR`] names it.
pub fn pause(step: &str) {
    if std::env::var(PAUSE_VAR).is_ok_and(|v| v == step) {
        eprintln!("backlock: paused at {step}");
        let _ = std::io::stdin().read_line(&mut String::new());
    }
}

/// The named steps of the engine's operations, each just after a commit became
/// durable, in the order an operation reaches them. Kill tests iterate these lists, so
/// a step added here is tested at once.
pub mod step {
    /// Any command that loads the index: its lock is taken, the index not read yet.
    pub const LOCKED: &str = "locked";
    /// Prune: the index loaded and what is in use computed; nothing written or
    /// deleted yet.
    pub const PRUNE_PLANNED: &str = "prune:planned";
    /// Prune: the new index and the index set of a new epoch naming it are written and
    /// flushed; no old index object or pack deleted yet.
    pub const PRUNE_INDEXED: &str = "prune:indexed";
    /// Every step of a prune.
    pub const PRUNE: [&str; 2] = [PRUNE_PLANNED, PRUNE_INDEXED];

    /// Backup: the first batch of the source listed (all of a small one); no file read yet.
    pub const BACKUP_WALKED: &str = "backup:walked";
    /// Backup: every pack indexed and flushed; the snapshot not yet written.
    pub const BACKUP_INDEXED: &str = "backup:indexed";
    /// Backup: the snapshot written and flushed; the device has not recorded it yet.
    pub const BACKUP_COMMITTED: &str = "backup:committed";
    /// Every step of a backup.
    pub const BACKUP: [&str; 2] = [BACKUP_INDEXED, BACKUP_COMMITTED];

    /// Restore with `--verify`: every file written to the staging directory and made
    /// durable; nothing read back yet, nothing renamed onto the target.
    pub const RESTORE_WRITTEN: &str = "restore:written";

    /// `repair snapshots`: a snapshot's replacement written and flushed; the snapshot
    /// it replaces not deleted yet.
    pub const REPAIR_REWRITTEN: &str = "repair:rewritten";

    /// Rotation: every pack in use re-sealed under the new key.
    pub const ROTATE_PACKS_WRITTEN: &str = "rotate:packs-written";
    /// Rotation: the markers naming both generations are written.
    pub const ROTATE_MARKED: &str = "rotate:marked";
    /// Rotation: the new generation's index and snapshots are written.
    pub const ROTATE_WRITTEN: &str = "rotate:written";
    /// Rotation: the new generation verified under the new key.
    pub const ROTATE_VERIFIED: &str = "rotate:verified";
    /// Rotation: the config opens with the new key only (the switch).
    pub const ROTATE_COMMITTED: &str = "rotate:committed";
    /// Rotation: the first object of the old generation is deleted.
    pub const ROTATE_DELETING: &str = "rotate:deleting";
    /// Every step of a rotation.
    pub const ROTATE: [&str; 6] = [
        ROTATE_PACKS_WRITTEN,
        ROTATE_MARKED,
        ROTATE_WRITTEN,
        ROTATE_VERIFIED,
        ROTATE_COMMITTED,
        ROTATE_DELETING,
    ];
}
