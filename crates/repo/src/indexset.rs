//! Which index objects are live (docs/FORMAT.md §Index sets).
//!
//! A store can serve index objects that a prune deleted (a replay, a stale listing),
//! and a backup that trusted them would reference chunks whose packs are gone. So the
//! listing of index objects counts for nothing: each backup and prune writes an index
//! set, an authenticated and sequenced object naming every live index object, and
//! readers load exactly the index objects the sets of the highest epoch name. Each
//! prune (and key rotation) starts a new epoch, so no set it superseded counts again,
//! whatever the store serves; the device remembers the newest set it saw, so a store
//! that hides the newest sets is caught like a snapshot rollback.

use crate::{
    device::DeviceHome,
    error::{RepoError, Result},
    rotate::Hidden,
    Indexed, Repository,
};
use backlock_core::{
    envelope::{self, ObjectKind},
    format::{self, Config, IndexSet},
    ids::ObjectName,
    kdf::RepoKeys,
    FormatError,
};
use backlock_store::{ObjectStore, StoreError};
use std::collections::BTreeSet;

/// The live index objects, as the listed index sets say.
#[derive(Debug, Default)]
pub(crate) struct LiveIndexes {
    /// The highest epoch among the authentic sets (0: there is none).
    pub(crate) epoch: u64,
    /// The highest sequence number among them (0: there is none).
    pub(crate) seq: u64,
    /// The index objects to load, sorted.
    pub(crate) names: Vec<String>,
    /// The set objects read: the next set written supersedes them.
    pub(crate) sets: Vec<String>,
    /// Listed set objects that do not authenticate (made up, damaged, or sealed under
    /// the other key of a rotation in progress), with why. They never count.
    pub(crate) rejected: Vec<(String, String)>,
    /// No set is listed: a repository no build of writer level 2 has changed yet,
    /// whose every listed index object counts.
    pub(crate) legacy: bool,
    /// Set when the newest authentic set is older than this device has seen:
    /// `(seen, served)`. Writers refuse ([`Self::writable`]); readers report it.
    pub(crate) rolled_back: Option<(u64, u64)>,
    /// Index objects a set names that the store does not have (filled by the
    /// index load).
    pub(crate) missing: Vec<String>,
}

impl LiveIndexes {
    /// Reads every listed index set and works out the live index objects.
    pub(crate) fn load(
        store: &dyn ObjectStore,
        keys: &RepoKeys,
        hidden: &Hidden,
        home: &DeviceHome,
        config: &Config,
    ) -> Result<Self> {
        let repo_id = &config.repo_id.to_hex();
        let mut live = LiveIndexes::default();
        let mut read: Vec<(String, IndexSet)> = Vec::new();
        for info in store.list(ObjectKind::IndexSet)? {
            match read_set(store, keys, &info.name)? {
                Ok(set) => read.push((info.name, set)),
                Err(reason) => live.rejected.push((info.name, reason)),
            }
        }
        let seen = home.seen(repo_id)?.newest_index_set;
        if read.is_empty() {
            // A repository of writer level 2 always lists a set (init writes the
            // first): none is a store hiding them to have its index listing count.
            if seen > 0 || config.writer_level >= 2 {
                live.rolled_back = Some((seen, 0));
            }
            live.legacy = true;
            let listed = hidden.filter(store.list(ObjectKind::Index)?);
            live.names = listed.into_iter().map(|o| o.name).collect();
            live.names.sort();
            return Ok(live);
        }
        live.epoch = read.iter().map(|(_, s)| s.epoch).max().unwrap_or(0);
        live.seq = read.iter().map(|(_, s)| s.seq).max().unwrap_or(0);
        let mut names = BTreeSet::new();
        for (name, set) in read {
            // A set of an earlier epoch was superseded by a prune or a rotation that
            // may have deleted the index objects it names.
            if set.epoch == live.epoch {
                names.extend(set.indexes.iter().map(ObjectName::to_hex));
            }
            live.sets.push(name);
        }
        live.names = names.into_iter().collect();
        if live.seq < seen {
            live.rolled_back = Some((seen, live.seq));
        }
        Ok(live)
    }

    /// Records the newest set as seen by this device, unless the store rolled back.
    /// Not done by `check`, which a key rotation runs on its new generation before
    /// the switch: a set that may never be committed must not raise the mark.
    pub(crate) fn record(&self, home: &DeviceHome, repo_id: &str) -> Result<()> {
        match self.rolled_back {
            None if self.seq > 0 => home.record_index_set(repo_id, self.seq),
            _ => Ok(()),
        }
    }

    /// Fails unless a writer may build on these sets: the store did not roll them back.
    pub(crate) fn writable(&self) -> Result<()> {
        match self.rolled_back {
            Some((seen, served)) => Err(RepoError::IndexRollback { seen, served }),
            None => Ok(()),
        }
    }

    /// Writes (and flushes) the set that follows these: in the same epoch (a backup,
    /// adding the index objects it wrote to the live ones) or in the next (a prune or
    /// a rotation, naming only what it wrote). Returns the new set's name and seq.
    pub(crate) fn write_next(
        &self,
        store: &dyn ObjectStore,
        keys: &RepoKeys,
        indexes: BTreeSet<ObjectName>,
        next_epoch: bool,
    ) -> Result<(String, u64)> {
        let seq = self.seq + 1;
        let set = IndexSet {
            seq,
            epoch: self.epoch + u64::from(next_epoch),
            indexes: indexes.into_iter().collect(),
        };
        let plain = format::encode(&set);
        format::check_size(
            "index set",
            plain.len() as u64,
            format::MAX_OBJECT_PLAINTEXT,
        )
        .map_err(|source| RepoError::TooLarge { source })?;
        let name = ObjectName::for_snapshot(seq).to_hex();
        let sealed = envelope::seal(keys, ObjectKind::IndexSet, &name, &plain);
        // The index objects it names are durable before it is.
        store.flush()?;
        store.put(ObjectKind::IndexSet, &name, &sealed)?;
        store.flush()?;
        Ok((name, seq))
    }

    /// The live index objects as names, with `added`: what a backup's set names.
    pub(crate) fn with(&self, added: &[ObjectName]) -> BTreeSet<ObjectName> {
        let mut all: BTreeSet<ObjectName> = self
            .names
            .iter()
            .filter(|n| !self.missing.contains(n))
            .filter_map(|n| ObjectName::parse(n))
            .collect();
        all.extend(added.iter().copied());
        all
    }
}

/// Reads one set: `Ok(Err(reason))` when it does not count (does not authenticate,
/// its sequence number is not its name's, or it is gone since the listing); `Err` for
/// what must stop the command (an unreachable store).
fn read_set(
    store: &dyn ObjectStore,
    keys: &RepoKeys,
    name: &str,
) -> Result<std::result::Result<IndexSet, String>> {
    let sealed = match store.get(ObjectKind::IndexSet, name) {
        Ok(s) => s,
        Err(e @ StoreError::NotFound { .. }) => return Ok(Err(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    let set = envelope::open(keys, ObjectKind::IndexSet, name, &sealed)
        .and_then(|plain| format::decode::<IndexSet>(&plain, "index set"));
    Ok(match set {
        Ok(set) if ObjectName::parse(name).is_some_and(|n| n.snapshot_seq() == set.seq) => Ok(set),
        Ok(set) => Err(FormatError::Malformed {
            what: "index set",
            detail: format!("sequence {} does not match its name", set.seq),
        }
        .to_string()),
        Err(e) => Err(e.to_string()),
    })
}

impl LiveIndexes {
    /// What a command that goes on should say about the sets it read.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let missing = self.missing.iter().map(|name| {
            format!("index object {name}, which the index set names, is missing from the store: chunks only it listed are stored again; run `backlock check` to see which snapshots need them")
        });
        let rejected = self
            .rejected
            .iter()
            .map(|(name, reason)| format!("ignoring index set object {name}: {reason}"));
        missing.chain(rejected).collect()
    }
}

impl Repository<Indexed> {
    /// Writes the index set that adds `written` to the live index objects (a backup),
    /// then deletes the sets it supersedes.
    pub(crate) fn write_index_set(&self, written: &[ObjectName]) -> Result<()> {
        let live = &self.state.live;
        let (_, seq) = live.write_next(&*self.store, &self.keys, live.with(written), false)?;
        self.home.record_index_set(&self.id(), seq)?;
        self.raise_writer_level()?;
        // Not flushed here: a superseded set that came back would name a subset of the
        // new one. The snapshot's flush makes the deletes durable.
        delete_all(&*self.store, ObjectKind::IndexSet, &live.sets)
    }
}

/// Deletes `names` of `kind` (not flushed); one already gone is fine.
pub(crate) fn delete_all(
    store: &dyn ObjectStore,
    kind: ObjectKind,
    names: &[String],
) -> Result<()> {
    for name in names {
        match store.delete(kind, name) {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
