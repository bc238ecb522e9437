//! Test helpers shared by backlock's crates: sample trees, tree comparison, and the
//! object-store conformance suite every backend must pass.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod recording;
pub mod store_suite;
pub mod tree;
