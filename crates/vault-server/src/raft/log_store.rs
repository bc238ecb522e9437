//! The Raft log: one sealed file per entry, so purging an entry deletes its bytes.
//!
//! Layout under the data directory:
//! - `log/<index, 20 digits>`: one entry, sealed with context `"backlock vault log" ‖ index`.
//! - `vote`, `committed`, `purged`: small sealed files, each replaced atomically.
//!
//! A B-tree file would keep freed pages (and with them erased records), so the log is
//! plain files: deleting an entry's file is what makes an erased record leave the disk.

use super::files::{self, FileError};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::seal::Sealer;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader, StorageIOError};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Seal context prefix of a log entry; the big-endian index follows.
pub(crate) const LOG_CONTEXT: &[u8] = b"backlock vault log";
pub(crate) const VOTE_CONTEXT: &[u8] = b"backlock vault vote";
pub(crate) const COMMITTED_CONTEXT: &[u8] = b"backlock vault committed";
pub(crate) const PURGED_CONTEXT: &[u8] = b"backlock vault purged";

/// Digits of a log file name: every `u64` fits, and names sort like indexes.
const INDEX_DIGITS: usize = 20;

/// The vault's Raft log store (and, cloned, its log reader).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    log_dir: PathBuf,
    sealer: Arc<dyn Sealer>,
    index: Mutex<LogIndex>,
}

/// What is on disk, kept in memory so lookups need no directory scan.
#[derive(Default)]
struct LogIndex {
    entries: BTreeMap<u64, LogId>,
    last_purged: Option<LogId>,
    committed: Option<LogId>,
}

impl LogStore {
    /// Opens (or creates) the log under `dir`, finishing any purge or truncation a crash
    /// interrupted. Does blocking file I/O.
    #[allow(
        clippy::result_large_err,
        reason = "openraft's error type, as its storage traits return it"
    )]
    pub fn open(dir: &Path, sealer: Arc<dyn Sealer>) -> Result<Self, StorageError> {
        let shared = Shared {
            dir: dir.to_path_buf(),
            log_dir: dir.join("log"),
            sealer,
            index: Mutex::new(LogIndex::default()),
        };
        let index = shared
            .load()
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        *shared.lock() = index;
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// The last commit point written to disk.
    pub(crate) fn committed(&self) -> Option<LogId> {
        self.shared.lock().committed
    }

    /// Runs blocking file work off the async runtime's threads.
    async fn blocking<T, F>(&self, work: F) -> Result<T, FileError>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T, FileError> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || work(&shared))
            .await
            .unwrap_or_else(|join| {
                Err(FileError::io(
                    Path::new("log"),
                    io::Error::other(join.to_string()),
                ))
            })
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, LogIndex> {
        self.index
            .lock()
            .expect("log index lock poisoned by a panic")
    }

    fn entry_path(&self, index: u64) -> PathBuf {
        self.log_dir
            .join(format!("{index:0width$}", width = INDEX_DIGITS))
    }

    fn load(&self) -> Result<LogIndex, FileError> {
        files::create_private_dir(&self.log_dir)?;
        files::remove_temp_files(&self.dir)?;
        files::remove_temp_files(&self.log_dir)?;
        let last_purged: Option<LogId> =
            files::read_sealed(&*self.sealer, &self.dir.join("purged"), PURGED_CONTEXT)?;
        let mut on_disk = Vec::new();
        for item in fs::read_dir(&self.log_dir).map_err(|e| FileError::io(&self.log_dir, e))? {
            let item = item.map_err(|e| FileError::io(&self.log_dir, e))?;
            let name = item.file_name();
            let index = name
                .to_str()
                .filter(|n| n.len() == INDEX_DIGITS)
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| {
                    FileError::io(
                        &item.path(),
                        io::Error::other(
                            "not a log entry file; move it out of the vault's log directory",
                        ),
                    )
                })?;
            on_disk.push(index);
        }
        on_disk.sort_unstable();

        // Acknowledged entries form one run from just after the purge point. Anything
        // before it is an interrupted purge; anything after a gap was never acknowledged
        // (a crash mid-append). Both are deleted: purged bytes must not linger.
        let first = last_purged.as_ref().map_or(0, |p| p.index + 1);
        let mut expected = first;
        let mut entries = BTreeMap::new();
        let mut stale = Vec::new();
        for index in on_disk {
            if index < first || index != expected {
                stale.push(index);
                continue;
            }
            let path = self.entry_path(index);
            let entry: Entry = files::read_sealed(&*self.sealer, &path, &log_context(index))?
                .ok_or_else(|| FileError::io(&path, io::ErrorKind::NotFound.into()))?;
            entries.insert(index, entry.log_id);
            expected += 1;
        }
        for index in stale.iter().rev() {
            files::remove_if_present(&self.entry_path(*index))?;
        }
        if !stale.is_empty() {
            files::sync_dir(&self.log_dir)?;
        }
        let committed: Option<Option<LogId>> = files::read_sealed(
            &*self.sealer,
            &self.dir.join("committed"),
            COMMITTED_CONTEXT,
        )?;
        Ok(LogIndex {
            entries,
            last_purged,
            committed: committed.flatten(),
        })
    }

    /// Writes a batch of entries; durable (directory synced once) on return.
    fn write_entries(&self, entries: &[Entry]) -> Result<Vec<LogId>, FileError> {
        let mut ids = Vec::with_capacity(entries.len());
        for entry in entries {
            let index = entry.log_id.index;
            files::write_sealed(
                &*self.sealer,
                &self.entry_path(index),
                &log_context(index),
                entry,
            )?;
            ids.push(entry.log_id);
        }
        files::sync_dir(&self.log_dir)?;
        Ok(ids)
    }

    fn read_entries(&self, indexes: &[u64]) -> Result<Vec<Entry>, FileError> {
        indexes
            .iter()
            .map(|&index| {
                let path = self.entry_path(index);
                files::read_sealed(&*self.sealer, &path, &log_context(index))?
                    .ok_or_else(|| FileError::io(&path, io::ErrorKind::NotFound.into()))
            })
            .collect()
    }
}

/// The seal context of a log store file, by its path relative to the data directory.
pub(crate) fn seal_context(relative: &Path) -> Option<Vec<u8>> {
    let name = relative.file_name()?.to_str()?;
    let parent = relative.parent()?;
    if parent == Path::new("log") && name.len() == INDEX_DIGITS {
        return name.parse().ok().map(log_context);
    }
    if parent != Path::new("") {
        return None;
    }
    match name {
        "vote" => Some(VOTE_CONTEXT.to_vec()),
        "committed" => Some(COMMITTED_CONTEXT.to_vec()),
        "purged" => Some(PURGED_CONTEXT.to_vec()),
        _ => None,
    }
}

fn log_context(index: u64) -> Vec<u8> {
    let mut context = LOG_CONTEXT.to_vec();
    context.extend_from_slice(&index.to_be_bytes());
    context
}

fn io_error(subject: ErrorSubject<u64>, verb: ErrorVerb, e: &FileError) -> StorageError {
    StorageIOError::new(subject, verb, e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let indexes: Vec<u64> = self
            .shared
            .lock()
            .entries
            .range(range)
            .map(|(i, _)| *i)
            .collect();
        self.blocking(move |shared| shared.read_entries(&indexes))
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let index = self.shared.lock();
        let last_purged_log_id = index.last_purged;
        let last_log_id = index
            .entries
            .values()
            .next_back()
            .copied()
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.blocking(move |s| {
            files::write_sealed_durably(&*s.sealer, &s.dir.join("vote"), VOTE_CONTEXT, &vote)
        })
        .await
        .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, &e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.blocking(|s| files::read_sealed(&*s.sealer, &s.dir.join("vote"), VOTE_CONTEXT))
            .await
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Read, &e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.blocking(move |s| {
            files::write_sealed_durably(
                &*s.sealer,
                &s.dir.join("committed"),
                COMMITTED_CONTEXT,
                &committed,
            )
        })
        .await
        .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        self.shared.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.blocking(|s| {
            let committed: Option<Option<LogId>> =
                files::read_sealed(&*s.sealer, &s.dir.join("committed"), COMMITTED_CONTEXT)?;
            Ok(committed.flatten())
        })
        .await
        .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Read, &e))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let written = self.blocking(move |s| s.write_entries(&entries)).await;
        match written {
            Ok(ids) => {
                let mut index = self.shared.lock();
                for id in ids {
                    index.entries.insert(id.index, id);
                }
                drop(index);
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let doomed: Vec<u64> = self
            .shared
            .lock()
            .entries
            .range(log_id.index..)
            .map(|(i, _)| *i)
            .collect();
        let removed = doomed.clone();
        self.blocking(move |s| {
            // Newest first, so a crash leaves a contiguous log.
            for index in removed.iter().rev() {
                files::remove_if_present(&s.entry_path(*index))?;
            }
            files::sync_dir(&s.log_dir)
        })
        .await
        .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        let mut index = self.shared.lock();
        for i in doomed {
            index.entries.remove(&i);
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let doomed: Vec<u64> = self
            .shared
            .lock()
            .entries
            .range(..=log_id.index)
            .map(|(i, _)| *i)
            .collect();
        let removed = doomed.clone();
        self.blocking(move |s| {
            // Record the purge point first: if we crash midway, opening finishes the job.
            files::write_sealed_durably(
                &*s.sealer,
                &s.dir.join("purged"),
                PURGED_CONTEXT,
                &log_id,
            )?;
            for index in &removed {
                files::remove_if_present(&s.entry_path(*index))?;
            }
            files::sync_dir(&s.log_dir)
        })
        .await
        .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        let mut index = self.shared.lock();
        for i in doomed {
            index.entries.remove(&i);
        }
        index.last_purged = Some(log_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::KeyFileSealer;
    use openraft::CommittedLeaderId;

    fn open(root: &Path) -> LogStore {
        let sealer = Arc::new(KeyFileSealer::open_or_create(root.join("node.key")).unwrap());
        LogStore::open(&root.join("data"), sealer).unwrap()
    }

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    fn files_in(store: &LogStore) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&store.shared.log_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn reopening_finishes_an_interrupted_purge() {
        let root = tempfile::tempdir().unwrap();
        let store = open(root.path());
        store
            .shared
            .write_entries(&(0..6).map(blank).collect::<Vec<_>>())
            .unwrap();
        // Crash after the purge point was recorded, before the files were deleted.
        let purged = blank(2).log_id;
        files::write_sealed_durably(
            &*store.shared.sealer,
            &store.shared.dir.join("purged"),
            PURGED_CONTEXT,
            &purged,
        )
        .unwrap();
        drop(store);
        let store = open(root.path());
        assert_eq!(files_in(&store).len(), 3, "entries 0..=2 are deleted");
        let index = store.shared.lock();
        assert_eq!(index.last_purged, Some(purged));
        assert_eq!(
            index.entries.keys().copied().collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
    }

    #[test]
    fn reopening_drops_unacknowledged_entries_after_a_gap_and_temp_files() {
        let root = tempfile::tempdir().unwrap();
        let store = open(root.path());
        store
            .shared
            .write_entries(&(0..6).map(blank).collect::<Vec<_>>())
            .unwrap();
        fs::remove_file(store.shared.entry_path(3)).unwrap();
        fs::write(
            store.shared.log_dir.join("00000000000000000009.tmp"),
            b"half",
        )
        .unwrap();
        drop(store);
        let store = open(root.path());
        assert_eq!(
            files_in(&store),
            vec![
                "00000000000000000000",
                "00000000000000000001",
                "00000000000000000002"
            ]
        );
        assert_eq!(store.shared.lock().entries.len(), 3);
    }

    #[test]
    fn a_foreign_file_in_the_log_directory_is_reported() {
        let root = tempfile::tempdir().unwrap();
        let store = open(root.path());
        fs::write(store.shared.log_dir.join("notes.txt"), b"x").unwrap();
        drop(store);
        let sealer = Arc::new(KeyFileSealer::open_or_create(root.path().join("node.key")).unwrap());
        let err = LogStore::open(&root.path().join("data"), sealer)
            .err()
            .unwrap();
        assert!(err.to_string().contains("not a log entry file"), "{err}");
    }

    #[test]
    fn an_entry_moved_to_another_index_does_not_open() {
        let root = tempfile::tempdir().unwrap();
        let store = open(root.path());
        store.shared.write_entries(&[blank(0), blank(1)]).unwrap();
        fs::copy(store.shared.entry_path(0), store.shared.entry_path(1)).unwrap();
        drop(store);
        let sealer = Arc::new(KeyFileSealer::open_or_create(root.path().join("node.key")).unwrap());
        let err = LogStore::open(&root.path().join("data"), sealer)
            .err()
            .unwrap();
        assert!(err.to_string().contains("does not open"), "{err}");
    }
}
