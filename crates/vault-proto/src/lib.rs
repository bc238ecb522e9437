//! backlock-vault-proto: what a device and the Backup Key Vault say to each other.
//!
//! - [`suite`]: the one OPAQUE cipher suite (ristretto255, 3DH, SHA-512, Argon2id).
//! - [`wire`]: versioned request and reply messages and the machine-readable errors.
//! - [`client`] and [`server`]: the two sides of OPAQUE as consuming step types.
//! - [`wrap`]: the backup key wrapped under the export key, released under the session key.
//! - [`token`]: account tokens the relay issues; [`owner`]: owner proofs from the key.
//! - [`password`]: the password type and its policy.
//! - [`bundle`]: the signed list of a fleet's replicas and key that devices pin.
//! - [`anchor`]: the newest backup, sealed under the key, that the vault keeps for a
//!   new phone.
//!
//! The specification is `docs/VAULT.md`; constants cite its sections.
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod anchor;
pub mod bundle;
pub mod client;
pub mod owner;
pub mod password;
pub mod receipt;
pub mod server;
pub mod suite;
pub mod token;
pub mod wire;
pub mod wrap;
