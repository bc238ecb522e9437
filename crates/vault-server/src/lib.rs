//! backlock-vault-server: the Backup Key Vault.
//!
//! - [`state`]: the replicated state machine, where guesses are counted.
//! - [`raft`]: openraft storage, network and the [`raft::VaultNode`] that runs it.
//! - [`seal`]: the HSM interface that seals everything at rest.
//! - [`service`]: request handling: tokens, counting before KE2, release after KE3.
//! - [`api`]: the HTTP API, served by [`http`] within limits; [`run`]: a whole vault on a
//!   socket.
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod api;
#[cfg(feature = "bench-fill")]
pub mod bench_fill;
pub mod counter;
pub mod epoch;
pub mod fleet;
pub mod fleet_config;
pub mod fleet_tls;
pub mod http;
pub mod members;
pub mod metrics;
pub mod pkcs11;
pub mod raft;
mod rate_limit;
pub mod run;
pub mod seal;
pub mod secrets;
pub mod service;
pub mod state;
