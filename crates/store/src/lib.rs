//! backlock-store: where repository objects live.
//!
//! The trait is deliberately narrow: whole-object put (atomic: a reader sees all of it
//! or nothing), get, ranged get, list and delete, keyed by [`ObjectKind`] and name.
//! Everything a store holds is already encrypted and authenticated by the repository
//! layer, so a store only has to keep bytes, never to be trusted with them.
#![forbid(unsafe_code)]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

mod counted;
mod fs;
mod memory;
mod throttled;

pub use backlock_core::envelope::ObjectKind;
pub use counted::{Counted, RequestCounts};
pub use fs::FsStore;
pub use memory::MemoryStore;
pub use throttled::Throttled;

/// An object listed by [`ObjectStore::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Why a store operation failed, and whether trying again may help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The object does not exist.
    #[error("{kind} object {name} is missing from the store")]
    NotFound {
        /// Its kind.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The store has no space left; nothing was written.
    #[error("the store at {location} is full: free space there and run the command again")]
    NoSpace {
        /// The store's location.
        location: String,
    },
    /// A failure that may pass (time-out, connection reset, throttling).
    #[error(
        "the store at {location} did not answer ({detail}): check it is reachable and try again"
    )]
    Transient {
        /// The store's location.
        location: String,
        /// What happened.
        detail: String,
    },
    /// Any other I/O error.
    #[error("store I/O failed on {what}: {source}")]
    Io {
        /// The object or path involved.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A place that keeps repository objects.
///
/// Commit order relies on two promises: a put is atomic (a reader never sees part of an
/// object under its name), and every put that returned before [`ObjectStore::flush`]
/// was called survives a power loss once `flush` returns.
pub trait ObjectStore: Send + Sync {
    /// Stores `data` as `kind`/`name`. Atomic: on error or crash, no partial object is
    /// visible under `name`.
    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StoreError>;
    /// [`put`](Self::put) of a buffer the caller gives up. A store that sends an owned
    /// request body (a cloud store) takes it instead of copying it and returns `None`;
    /// the others return it unchanged, for the caller to fill again.
    fn put_owned(
        &self,
        kind: ObjectKind,
        name: &str,
        data: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.put(kind, name, &data)?;
        Ok(Some(data))
    }
    /// Reads a whole object.
    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StoreError>;
    /// Reads `len` bytes at `offset`; fewer when the object is shorter.
    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError>;
    /// [`get_range`](Self::get_range) into `buf`, replacing its contents. A reader of
    /// many ranges passes the same buffer each time, so a store that reads into it (a
    /// local disk) allocates and faults in its pages once, not once per range.
    fn get_range_into(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        *buf = self.get_range(kind, name, offset, len)?;
        Ok(())
    }
    /// Lists every object of a kind.
    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StoreError>;
    /// Deletes an object; deleting a missing object is not an error.
    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StoreError>;
    /// Where the store is, for messages (never includes credentials).
    fn location(&self) -> String;
    /// Makes every completed put durable. Stores whose puts are durable when they
    /// return (memory, cloud object stores) need not override it.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// How many puts a writer should keep in flight: two overlap a local disk's
    /// latency; a cloud store, whose requests wait on the network, says more (its
    /// own limit on requests in flight).
    fn max_concurrent_puts(&self) -> usize {
        2
    }
    /// Hints that `len` bytes at `offset` of an object will be read soon, so a store
    /// that can start reading early (a local disk) does. Only a hint: nothing fails.
    fn prefetch(&self, _kind: ObjectKind, _name: &str, _offset: u64, _len: u64) {}
}

impl<S: ObjectStore + ?Sized> ObjectStore for std::sync::Arc<S> {
    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StoreError> {
        (**self).put(kind, name, data)
    }
    fn put_owned(
        &self,
        kind: ObjectKind,
        name: &str,
        data: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).put_owned(kind, name, data)
    }
    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StoreError> {
        (**self).get(kind, name)
    }
    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        (**self).get_range(kind, name, offset, len)
    }
    fn get_range_into(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        (**self).get_range_into(kind, name, offset, len, buf)
    }
    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StoreError> {
        (**self).list(kind)
    }
    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StoreError> {
        (**self).delete(kind, name)
    }
    fn location(&self) -> String {
        (**self).location()
    }
    fn flush(&self) -> Result<(), StoreError> {
        (**self).flush()
    }
    fn max_concurrent_puts(&self) -> usize {
        (**self).max_concurrent_puts()
    }
    fn prefetch(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) {
        (**self).prefetch(kind, name, offset, len)
    }
}
