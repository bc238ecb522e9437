//! A store that counts the requests made through it: what a command cost on a cloud
//! store, where each request is billed and waits on the network.

use crate::{ObjectInfo, ObjectKind, ObjectStore, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};

/// Requests made through a [`Counted`] store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Whole-object reads.
    pub get: u64,
    /// Ranged reads (parts of packs).
    pub get_range: u64,
    /// Writes.
    pub put: u64,
    /// Listings of a kind (one per call; a cloud store may page it into several).
    pub list: u64,
    /// Deletes.
    pub delete: u64,
}

/// Wraps a store and counts every request passed to it, by object kind.
pub struct Counted<S> {
    inner: S,
    /// By kind (its number), then request: get, get_range, put, list, delete.
    counters: [[AtomicU64; 5]; 8],
}

const GET: usize = 0;
const GET_RANGE: usize = 1;
const PUT: usize = 2;
const LIST: usize = 3;
const DELETE: usize = 4;

impl<S> Counted<S> {
    /// Counts the requests made to `inner` from now on.
    pub fn new(inner: S) -> Self {
        Counted {
            inner,
            counters: Default::default(),
        }
    }

    /// The requests made so far, of every kind.
    pub fn counts(&self) -> RequestCounts {
        let mut all = RequestCounts::default();
        for kind in ObjectKind::ALL {
            let n = self.counts_of(kind);
            all.get += n.get;
            all.get_range += n.get_range;
            all.put += n.put;
            all.list += n.list;
            all.delete += n.delete;
        }
        all
    }

    /// The requests made so far for objects of `kind`.
    pub fn counts_of(&self, kind: ObjectKind) -> RequestCounts {
        let c = &self.counters[kind as usize];
        let load = |i: usize| c[i].load(Ordering::Relaxed);
        RequestCounts {
            get: load(GET),
            get_range: load(GET_RANGE),
            put: load(PUT),
            list: load(LIST),
            delete: load(DELETE),
        }
    }

    fn bump(&self, kind: ObjectKind, request: usize) {
        self.counters[kind as usize][request].fetch_add(1, Ordering::Relaxed);
    }
}

impl<S: ObjectStore> ObjectStore for Counted<S> {
    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StoreError> {
        self.bump(kind, PUT);
        self.inner.put(kind, name, data)
    }
    fn put_owned(
        &self,
        kind: ObjectKind,
        name: &str,
        data: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.bump(kind, PUT);
        self.inner.put_owned(kind, name, data)
    }
    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StoreError> {
        self.bump(kind, GET);
        self.inner.get(kind, name)
    }
    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        self.bump(kind, GET_RANGE);
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
        self.bump(kind, GET_RANGE);
        self.inner.get_range_into(kind, name, offset, len, buf)
    }
    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StoreError> {
        self.bump(kind, LIST);
        self.inner.list(kind)
    }
    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StoreError> {
        self.bump(kind, DELETE);
        self.inner.delete(kind, name)
    }
    fn location(&self) -> String {
        self.inner.location()
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn max_concurrent_puts(&self) -> usize {
        self.inner.max_concurrent_puts()
    }
    fn prefetch(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) {
        self.inner.prefetch(kind, name, offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[test]
    fn every_request_is_counted_once() {
        let store = Counted::new(MemoryStore::new());
        store.put(ObjectKind::Pack, "a", b"0123").unwrap();
        store.put_owned(ObjectKind::Pack, "b", vec![1]).unwrap();
        store.get(ObjectKind::Pack, "a").unwrap();
        store.get_range(ObjectKind::Pack, "a", 1, 2).unwrap();
        let mut buf = Vec::new();
        store
            .get_range_into(ObjectKind::Pack, "a", 0, 1, &mut buf)
            .unwrap();
        store.list(ObjectKind::Pack).unwrap();
        store.delete(ObjectKind::Pack, "b").unwrap();
        store.list(ObjectKind::Index).unwrap();
        assert_eq!(store.counts_of(ObjectKind::Index).list, 1);
        assert_eq!(
            store.counts_of(ObjectKind::Snapshot),
            RequestCounts::default()
        );
        assert_eq!(
            store.counts(),
            RequestCounts {
                get: 1,
                get_range: 2,
                put: 2,
                list: 2,
                delete: 1
            }
        );
    }
}
