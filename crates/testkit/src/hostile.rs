//! A store that misbehaves on command, as a store (or anyone with write access to it)
//! may: serve an earlier version of an object, drop one, list a name that does not
//! exist or does not authenticate, serve a stale listing, and lose what was put since
//! the last flush (a power loss between a put and its flush).
//!
//! It keeps every version ever put of every object, so a test can replay any of them.
//! Until told otherwise it behaves as the memory store it wraps.

use backlock_store::{MemoryStore, ObjectInfo, ObjectKind, ObjectStore, StoreError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

type Key = (u8, String);

fn key(kind: ObjectKind, name: &str) -> Key {
    (kind as u8, name.to_owned())
}

#[derive(Default)]
struct Misbehaviour {
    /// Every version ever put, oldest first.
    history: HashMap<Key, Vec<Vec<u8>>>,
    /// Objects served (to `get` and `list`) as they are here, whatever the store holds.
    replayed: HashMap<Key, Vec<u8>>,
    /// Objects hidden from `get` and `list`.
    dropped: HashSet<Key>,
    /// Names listed although the store does not hold them (`get` fails: not found).
    phantom: HashSet<Key>,
    /// Listings served instead of the real one, by kind.
    stale: HashMap<u8, Vec<ObjectInfo>>,
    /// Puts not flushed yet, with what each replaced (`None`: nothing), oldest first.
    unflushed: Vec<(Key, ObjectKind, Option<Vec<u8>>)>,
    /// The next flush that follows a put of this kind fails (the process dies
    /// there, as at a power cut).
    fail_flush_after: Option<u8>,
    /// The process died at a failed flush: it writes nothing more until the power
    /// comes back ([`HostileStore::power_loss`]).
    dead: bool,
}

fn dead() -> StoreError {
    StoreError::Transient {
        location: "hostile memory store".into(),
        detail: "the process died before this flush".into(),
    }
}

/// A [`MemoryStore`] that lies on command.
#[derive(Default)]
pub struct HostileStore {
    inner: MemoryStore,
    state: Mutex<Misbehaviour>,
}

impl HostileStore {
    /// An empty, honest store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Misbehaviour> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many versions of `kind`/`name` were ever put.
    pub fn versions(&self, kind: ObjectKind, name: &str) -> usize {
        self.state()
            .history
            .get(&key(kind, name))
            .map_or(0, Vec::len)
    }

    /// Serves version `version` (0 = the first put) of `kind`/`name` from now on, even
    /// if the object was replaced or deleted since: a replay.
    pub fn replay(&self, kind: ObjectKind, name: &str, version: usize) {
        let mut st = self.state();
        let bytes = st.history[&key(kind, name)][version].clone();
        st.replayed.insert(key(kind, name), bytes);
        st.dropped.remove(&key(kind, name));
    }

    /// Serves again, as they last were, every object of `kind` that was put and is
    /// deleted now (what a bucket restored from an old copy, or a replica that missed
    /// the deletes, serves). Returns how many.
    pub fn replay_deleted(&self, kind: ObjectKind) -> usize {
        let here: HashSet<String> = match self.inner.list(kind) {
            Ok(listed) => listed.into_iter().map(|o| o.name).collect(),
            Err(_) => return 0,
        };
        let mut st = self.state();
        let gone: Vec<(Key, Vec<u8>)> = st
            .history
            .iter()
            .filter(|((k, name), _)| *k == kind as u8 && !here.contains(name))
            .filter_map(|(k, versions)| versions.last().map(|v| (k.clone(), v.clone())))
            .collect();
        for (k, bytes) in &gone {
            st.dropped.remove(k);
            st.replayed.insert(k.clone(), bytes.clone());
        }
        gone.len()
    }

    /// Names of the objects of `kind` the store holds now (whatever it serves).
    pub fn held(&self, kind: ObjectKind) -> Vec<String> {
        self.inner
            .list(kind)
            .map(|l| l.into_iter().map(|o| o.name).collect())
            .unwrap_or_default()
    }

    /// Hides `kind`/`name` from reads and listings.
    pub fn drop_object(&self, kind: ObjectKind, name: &str) {
        self.state().dropped.insert(key(kind, name));
    }

    /// Lists `kind`/`name` although it does not exist.
    pub fn list_phantom(&self, kind: ObjectKind, name: &str) {
        self.state().phantom.insert(key(kind, name));
    }

    /// Serves the listing of `kind` as it is now until [`Self::fresh_listing`]: objects
    /// deleted meanwhile stay listed, new ones are not.
    pub fn freeze_listing(&self, kind: ObjectKind) -> Result<(), StoreError> {
        let now = self.list(kind)?;
        self.state().stale.insert(kind as u8, now);
        Ok(())
    }

    /// Ends [`Self::freeze_listing`] for `kind`.
    pub fn fresh_listing(&self, kind: ObjectKind) {
        self.state().stale.remove(&(kind as u8));
    }

    /// Makes the first flush after a put of `kind` fail, as if the process died
    /// between that put and its flush.
    pub fn fail_flush_after_put_of(&self, kind: ObjectKind) {
        self.state().fail_flush_after = Some(kind as u8);
    }

    /// A power loss: every put since the last successful flush is undone (what it
    /// replaced comes back, a new object vanishes) or, with `cut_short`, left under its
    /// name with only its first half written. Returns how many puts were lost.
    pub fn power_loss(&self, cut_short: bool) -> usize {
        let lost: Vec<_> = {
            let mut st = self.state();
            st.dead = false;
            std::mem::take(&mut st.unflushed)
        };
        for ((_, name), kind, before) in lost.iter().rev() {
            let _ = match (before, cut_short) {
                (_, true) => self
                    .inner
                    .get(*kind, name)
                    .and_then(|b| self.inner.put(*kind, name, &b[..b.len() / 2])),
                (Some(bytes), false) => self.inner.put(*kind, name, bytes),
                (None, false) => self.inner.delete(*kind, name),
            };
        }
        lost.len()
    }
}

impl ObjectStore for HostileStore {
    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StoreError> {
        if self.state().dead {
            return Err(dead());
        }
        let before = self.inner.get(kind, name).ok();
        self.inner.put(kind, name, data)?;
        let mut st = self.state();
        st.history
            .entry(key(kind, name))
            .or_default()
            .push(data.to_vec());
        st.unflushed.push((key(kind, name), kind, before));
        Ok(())
    }

    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StoreError> {
        {
            let st = self.state();
            let k = key(kind, name);
            if let Some(bytes) = st.replayed.get(&k) {
                return Ok(bytes.clone());
            }
            if st.dropped.contains(&k) || st.phantom.contains(&k) {
                return Err(StoreError::NotFound {
                    kind: kind.as_str(),
                    name: name.to_owned(),
                });
            }
        }
        self.inner.get(kind, name)
    }

    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let whole = self.get(kind, name)?;
        let start = (offset as usize).min(whole.len());
        let end = start.saturating_add(len as usize).min(whole.len());
        Ok(whole[start..end].to_vec())
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StoreError> {
        let st = self.state();
        if let Some(stale) = st.stale.get(&(kind as u8)) {
            return Ok(stale.clone());
        }
        let mut listed: BTreeMap<String, u64> = self
            .inner
            .list(kind)?
            .into_iter()
            .map(|o| (o.name, o.size))
            .collect();
        for ((k, name), bytes) in &st.replayed {
            if *k == kind as u8 {
                listed.insert(name.clone(), bytes.len() as u64);
            }
        }
        for (k, name) in st.phantom.iter() {
            if *k == kind as u8 {
                listed.insert(name.clone(), 0);
            }
        }
        listed.retain(|name, _| !st.dropped.contains(&key(kind, name)));
        Ok(listed
            .into_iter()
            .map(|(name, size)| ObjectInfo { name, size })
            .collect())
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StoreError> {
        let mut st = self.state();
        if st.dead {
            return Err(dead());
        }
        // A delete is honoured, whatever was being served under the name.
        let k = key(kind, name);
        st.phantom.remove(&k);
        st.replayed.remove(&k);
        drop(st);
        self.inner.delete(kind, name)
    }

    fn location(&self) -> String {
        "hostile memory store".into()
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut st = self.state();
        let armed = st.fail_flush_after;
        if st.dead || armed.is_some_and(|k| st.unflushed.iter().any(|((kind, _), ..)| *kind == k)) {
            st.fail_flush_after = None;
            st.dead = true;
            return Err(dead());
        }
        st.unflushed.clear();
        Ok(())
    }
}
