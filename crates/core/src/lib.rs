//! backlock-core: the pieces of the backlock repository format that need no I/O.
//!
//! - [`key`]: the 256-bit backup key, its 64-digit display and parsing.
//! - [`kdf`]: every subkey derived from the backup key, one HKDF label each.
//! - [`envelope`]: the versioned, authenticated object envelope (kind and name bound).
//! - [`chunker`]: keyed content-defined chunking and SQLite page chunking.
//! - [`blob`]: per-chunk compression codec.
//! - [`format`]: the encodings of config, index and snapshot objects.
//! - [`tree`]: directories as blobs, and the walk that reads them back.
//!
//! The byte-level specification is `docs/FORMAT.md`; each constant cites its section.
//!
//! ```
//! use backlock_core::{key::BackupKey, kdf::RepoKeys, envelope::{ObjectKind, seal, open}};
//! let key = BackupKey::generate();
//! let keys = RepoKeys::derive(&key);
//! let sealed = seal(&keys, ObjectKind::Snapshot, "0123", b"hello");
//! assert_eq!(open(&keys, ObjectKind::Snapshot, "0123", &sealed).unwrap(), b"hello");
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod blob;
pub mod chunker;
pub mod envelope;
pub mod error;
pub mod format;
pub mod ids;
pub mod kdf;
pub mod key;
pub mod threads;
pub mod tree;

pub use error::FormatError;
