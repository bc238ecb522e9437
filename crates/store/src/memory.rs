//! An in-memory store for tests and the embedded demo.

use crate::{ObjectInfo, ObjectKind, ObjectStore, StoreError};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

type Objects = BTreeMap<(u8, String), Arc<Vec<u8>>>;

/// Objects in a map behind a mutex. Cloning shares the same objects.
#[derive(Clone, Default)]
pub struct MemoryStore {
    objects: Arc<Mutex<Objects>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Objects> {
        // A panic while holding the lock cannot leave the map half-updated.
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces an object's bytes as a misbehaving cloud might (tests).
    pub fn tamper(&self, kind: ObjectKind, name: &str, f: impl FnOnce(&mut Vec<u8>)) {
        if let Some(data) = self.lock().get_mut(&(kind as u8, name.to_string())) {
            f(Arc::make_mut(data));
        }
    }
}

impl ObjectStore for MemoryStore {
    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StoreError> {
        self.lock()
            .insert((kind as u8, name.to_string()), Arc::new(data.to_vec()));
        Ok(())
    }

    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StoreError> {
        self.lock()
            .get(&(kind as u8, name.to_string()))
            .map(|d| d.to_vec())
            .ok_or_else(|| StoreError::NotFound {
                kind: kind.as_str(),
                name: name.to_string(),
            })
    }

    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let data = self.get(kind, name)?;
        let start = (offset as usize).min(data.len());
        let end = start.saturating_add(len as usize).min(data.len());
        Ok(data[start..end].to_vec())
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StoreError> {
        Ok(self
            .lock()
            .iter()
            .filter(|((k, _), _)| *k == kind as u8)
            .map(|((_, name), d)| ObjectInfo {
                name: name.clone(),
                size: d.len() as u64,
            })
            .collect())
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StoreError> {
        self.lock().remove(&(kind as u8, name.to_string()));
        Ok(())
    }

    fn location(&self) -> String {
        "memory".into()
    }
}
