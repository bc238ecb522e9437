//! A store that records every operation, to test the order of writes and flushes.

use backlock_store::{MemoryStore, ObjectInfo, ObjectKind, ObjectStore, StoreError};
use std::sync::Mutex;

/// One store operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A completed put.
    Put(ObjectKind, String),
    /// A completed delete.
    Delete(ObjectKind, String),
    /// A completed flush.
    Flush,
}

/// A memory store that logs puts, deletes and flushes in completion order.
#[derive(Default)]
pub struct RecordingStore {
    /// The objects.
    pub inner: MemoryStore,
    log: Mutex<Vec<Op>>,
}

impl RecordingStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The operations so far.
    pub fn log(&self) -> Vec<Op> {
        self.log.lock().unwrap().clone()
    }

    fn record(&self, op: Op) {
        self.log.lock().unwrap().push(op);
    }
}

impl ObjectStore for RecordingStore {
    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StoreError> {
        self.inner.put(kind, name, data)?;
        self.record(Op::Put(kind, name.to_string()));
        Ok(())
    }
    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StoreError> {
        self.inner.get(kind, name)
    }
    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        self.inner.get_range(kind, name, offset, len)
    }
    fn get_range_into(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        self.inner.get_range_into(kind, name, offset, len, buf)
    }
    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(kind)
    }
    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StoreError> {
        self.inner.delete(kind, name)?;
        self.record(Op::Delete(kind, name.to_string()));
        Ok(())
    }
    fn location(&self) -> String {
        "recording".into()
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.record(Op::Flush);
        Ok(())
    }
}
