//! backlock-vault-server: the Backup Key Vault.
//!
//! - [`state`]: the replicated state machine, where guesses are counted.
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod state;
