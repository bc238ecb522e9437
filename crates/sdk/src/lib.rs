//! backlock for apps (docs/SDK.md): a [`Device`] (its state directory) opens or
//! creates a [`Repository`] at a location, which backs up, lists, restores and checks.
//! Every type here is exported to Python, Kotlin and Swift through UniFFI; long
//! operations block the calling thread (run them on a worker), report progress to a
//! [`ProgressListener`] and stop when their [`CancelToken`] is cancelled.
#![forbid(unsafe_code)]

uniffi::setup_scaffolding!("backlock");

mod cancel;
mod device;
mod error;
mod key_store;
mod repository;
mod vault;

pub use cancel::CancelToken;
pub use device::Device;
pub use error::Error;
pub use key_store::KeyStore;
pub use repository::{
    BackupSummary, CheckReport, Progress, ProgressListener, Repository, RestoreSummary,
    SnapshotInfo,
};
pub use vault::{
    connect, AccountToken, ConnectError, RecoverError, Recovered, Session, VaultConfig,
};
