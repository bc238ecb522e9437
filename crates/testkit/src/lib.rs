//! Test helpers shared by backlock's crates: sample trees, tree comparison, the
//! object-store conformance suite every backend must pass, real storage servers on
//! loopback, a fault-injecting HTTP proxy, a store that lies on command, a vault fleet of real processes with a
//! partitioning proxy, and timing that follows the machine's speed (polls with a
//! deadline, kill instants from a measured run).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod fault_proxy;
pub mod fleet;
pub mod hostile;
pub mod partition;
pub mod recording;
pub mod servers;
pub mod store_suite;
pub mod timing;
pub mod tree;

/// Whether the tests run as root (`/proc/self` belongs to the effective user): what a
/// restore may set (owners, device nodes) depends on it.
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
