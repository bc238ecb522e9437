//! The Raft log store: openraft's view of the log, over the segment files of [`Wal`].
//!
//! Layout under the data directory:
//! - `wal/`: the entries, in segment files (see [`super::wal`]).
//! - `vote`, `committed`, `purged`: small sealed files, each replaced atomically.
//!
//! Group commit: [`RaftLogStorage::append`] puts the entries in memory and queues them
//! for one long-lived writer thread, then returns (openraft's storage-v2 contract: the
//! callback, not the return, says "durable"). The writer takes every queued job at once,
//! appends the group's entries to the current segment, makes them durable with one
//! `fdatasync`, and only then completes the callbacks, in order. Truncation and purge go
//! through the same queue, so they are ordered with the writes before them. Every entry
//! that has not been purged stays in memory too, so openraft's reads (replication,
//! apply) never go back to the disk; purge (after each snapshot) is what bounds that
//! memory, and what removes erased records' bytes from the disk.

use super::files::{self, FileError};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use super::wal::{self, Wal};
use crate::epoch::EpochSealer;
use crate::seal::Sealer;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader, StorageIOError};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

pub(crate) const VOTE_CONTEXT: &[u8] = b"backlock vault vote";
pub(crate) const COMMITTED_CONTEXT: &[u8] = b"backlock vault committed";
pub(crate) const PURGED_CONTEXT: &[u8] = b"backlock vault purged";

/// The log's segment directory, under the data directory.
pub(crate) const WAL_DIR: &str = "wal";

/// Entries between writes of the `committed` hint while running (see
/// [`Writer::write_committed`]).
const COMMITTED_EVERY: u64 = 1024;

/// The vault's Raft log store (and, cloned, its log reader).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    sealer: Arc<dyn Sealer>,
    index: Mutex<LogIndex>,
    /// Index of the last entry made durable (0: none), as the writer last synced.
    durable: Arc<AtomicU64>,
    /// Queue of the writer thread; `None` only while dropping.
    jobs: Option<mpsc::Sender<Job>>,
    /// Joined on drop, so a reopened store never races the old writer.
    writer: Option<JoinHandle<()>>,
}

/// The log as openraft sees it: every entry appended and not purged or truncated,
/// including those the writer has not made durable yet.
#[derive(Default)]
struct LogIndex {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    committed: Option<LogId>,
}

/// Completes an append once its group is durable (or failed).
type Done = Box<dyn FnOnce(Result<(), io::Error>) + Send>;

/// Work for the writer thread, done in queue order.
enum Job {
    /// Write these entries; `done` runs after the group's flush.
    Append { entries: Vec<Entry>, done: Done },
    /// Record the commit point (a hint, see [`Writer::write_committed`]).
    Committed(Option<LogId>),
    /// Remove every entry from this index on, durably.
    Truncate {
        from: u64,
        reply: oneshot::Sender<Result<(), FileError>>,
    },
    /// Record the purge point durably, then remove every entry up to it from disk.
    Purge {
        log_id: LogId,
        reply: oneshot::Sender<Result<(), FileError>>,
    },
    /// Seal every segment again under the current epoch key (`epoch.rs`).
    Reseal {
        reply: oneshot::Sender<Result<(), FileError>>,
    },
}

impl LogStore {
    /// Opens (or creates) the log under `dir`, finishing any purge or truncation a crash
    /// interrupted, and starts its writer thread. Does blocking file I/O.
    #[allow(
        clippy::result_large_err,
        reason = "openraft's error type, as its storage traits return it"
    )]
    ///
    /// The segments are sealed under the current epoch key of `sealer`; the small files
    /// (`vote`, `committed`, `purged`), which hold no record, under its node key.
    pub fn open(dir: &Path, sealer: Arc<EpochSealer>) -> Result<Self, StorageError> {
        let read_error = |e: &FileError| io_error(ErrorSubject::Logs, ErrorVerb::Read, e);
        let (index, wal) = load(dir, &sealer).map_err(|e| read_error(&e))?;
        let sealer = sealer.node().clone();
        let last = last_index(&index);
        let durable = Arc::new(AtomicU64::new(last));
        let (jobs, queue) = mpsc::channel();
        let writer = Writer {
            dir: dir.to_path_buf(),
            wal,
            sealer: sealer.clone(),
            failed: None,
            written: last,
            durable: durable.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("vault-log-writer".to_owned())
            .spawn(move || writer.run(&queue))
            .map_err(|e| read_error(&FileError::io(dir, e)))?;
        Ok(Self {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                sealer,
                index: Mutex::new(index),
                durable,
                jobs: Some(jobs),
                writer: Some(writer),
            }),
        })
    }

    /// Seals every segment again under the current epoch key, durably, ordered with the
    /// appends queued before it.
    pub(crate) async fn reseal(&self) -> Result<(), FileError> {
        let (reply, done) = oneshot::channel();
        if self.shared.send(Job::Reseal { reply }).is_err() {
            return Err(self.shared.writer_gone());
        }
        done.await
            .unwrap_or_else(|_| Err(self.shared.writer_gone()))
    }

    /// The last commit point openraft reported (written to disk lazily).
    pub(crate) fn committed(&self) -> Option<LogId> {
        self.shared.lock().committed
    }

    /// The highest index that is both committed (as openraft last reported) and durable
    /// here: entries up to it are never truncated, so a later open of this log ends at
    /// or after it (`anchor.rs`).
    pub(crate) fn durable_committed(&self) -> u64 {
        let committed = self.shared.lock().committed.map_or(0, |id| id.index);
        committed.min(self.shared.durable.load(Ordering::Acquire))
    }

    /// The vote on disk, read now (blocking): for checks before Raft starts.
    pub(crate) fn vote(&self) -> Result<Option<Vote>, FileError> {
        self.shared.read_vote()
    }

    /// The index the log ends at, purged entries included (0: empty).
    pub(crate) fn last_index(&self) -> u64 {
        last_index(&self.shared.lock())
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

    /// Puts `entries` in memory and queues them for the writer; `done` runs once they
    /// are durable. Returns at once.
    fn submit_append(&self, entries: Vec<Entry>, done: Done) -> Result<(), FileError> {
        let mut index = self.shared.lock();
        for entry in &entries {
            index.entries.insert(entry.log_id.index, entry.clone());
        }
        // Queued under the lock, so the queue order is the order of the memory updates.
        let sent = self.shared.send(Job::Append { entries, done });
        drop(index);
        sent.map_err(|job| {
            let error = self.shared.writer_gone();
            if let Job::Append { done, .. } = job {
                done(Err(io::Error::other(error.to_string())));
            }
            error
        })
    }

    /// Drops the entries in `range` from memory (and, for a purge, moves the purge
    /// point) and queues `job`, which removes them from disk; the future says when it
    /// is done.
    fn queue_removal(
        &self,
        range: impl RangeBounds<u64>,
        job: impl FnOnce(oneshot::Sender<Result<(), FileError>>) -> Job,
    ) -> impl std::future::Future<Output = Result<(), FileError>> + Send + 'static {
        let (reply, done) = oneshot::channel();
        let sent = {
            let mut index = self.shared.lock();
            let doomed: Vec<u64> = index.entries.range(range).map(|(i, _)| *i).collect();
            for i in &doomed {
                index.entries.remove(i);
            }
            let job = job(reply);
            if let Job::Purge { log_id, .. } = &job {
                index.last_purged = Some(*log_id);
            }
            // Queued under the lock, like appends.
            self.shared.send(job).is_ok()
        };
        let gone = self.shared.writer_gone();
        async move {
            if !sent {
                return Err(gone);
            }
            done.await.unwrap_or(Err(gone))
        }
    }
}

impl Shared {
    fn read_vote(&self) -> Result<Option<Vote>, FileError> {
        files::read_sealed(&*self.sealer, &self.dir.join("vote"), VOTE_CONTEXT)
    }

    fn lock(&self) -> MutexGuard<'_, LogIndex> {
        self.index
            .lock()
            .expect("log index lock poisoned by a panic")
    }

    /// Queues `job`; gives it back if the writer thread is gone.
    fn send(&self, job: Job) -> Result<(), Job> {
        match &self.jobs {
            Some(jobs) => jobs.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    fn writer_gone(&self) -> FileError {
        FileError::io(
            &self.dir.join(WAL_DIR),
            io::Error::other("the log writer thread stopped"),
        )
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and exit.
        drop(self.jobs.take());
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("the vault log writer thread panicked");
            }
        }
    }
}

/// Reads the log from disk, finishing what a crash interrupted.
fn load(dir: &Path, sealer: &Arc<EpochSealer>) -> Result<(LogIndex, Wal), FileError> {
    files::create_private_dir(dir)?;
    files::remove_temp_files(dir)?;
    let node = sealer.node();
    let last_purged: Option<LogId> =
        files::read_sealed(&**node, &dir.join("purged"), PURGED_CONTEXT)?;
    let first_live = last_purged.as_ref().map_or(0, |p| p.index + 1);
    let (wal, live) = Wal::open(&dir.join(WAL_DIR), sealer.clone(), first_live)?;
    let entries = live.into_iter().map(|e| (e.log_id.index, e)).collect();
    let committed_path = dir.join("committed");
    // `committed` is written without fsync while running (see
    // `Writer::write_committed`): an empty file is a crash before its data reached the
    // disk, and means "unknown", as a missing one does.
    let committed: Option<Option<LogId>> = if is_empty(&committed_path)? {
        None
    } else {
        files::read_sealed(&**node, &committed_path, COMMITTED_CONTEXT)?
    };
    Ok((
        LogIndex {
            entries,
            last_purged,
            committed: committed.flatten(),
        },
        wal,
    ))
}

fn last_index(index: &LogIndex) -> u64 {
    index
        .entries
        .keys()
        .next_back()
        .copied()
        .or(index.last_purged.map(|id| id.index))
        .unwrap_or(0)
}

/// Whether `path` exists and holds no bytes.
fn is_empty(path: &Path) -> Result<bool, FileError> {
    match fs::metadata(path) {
        Ok(meta) => Ok(meta.len() == 0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(FileError::io(path, e)),
    }
}

/// The writer thread's state: it alone writes to the log's files.
struct Writer {
    dir: PathBuf,
    wal: Wal,
    sealer: Arc<dyn Sealer>,
    /// The first failure: after it nothing more is written or acknowledged (a later
    /// entry must never be durable after an earlier one was lost).
    failed: Option<String>,
    /// Index of the last entry written to the segment files (0: none).
    written: u64,
    /// Published after each sync: the index the disk holds up to.
    durable: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, queue: &mpsc::Receiver<Job>) {
        // The newest commit point openraft reported, and the one last written.
        let mut committed: Option<LogId> = None;
        let mut written: Option<LogId> = None;
        while let Ok(first) = queue.recv() {
            // Group commit: everything queued while the previous group was flushing.
            let mut group = vec![first];
            group.extend(queue.try_iter());
            let mut waiting: Vec<Done> = Vec::new();
            for job in group {
                match job {
                    Job::Append { entries, done } => {
                        if self.failed.is_none() {
                            match self.wal.append(&entries) {
                                Ok(()) => {
                                    if let Some(last) = entries.last() {
                                        self.written = last.log_id.index;
                                    }
                                }
                                Err(e) => self.fail(&e),
                            }
                        }
                        waiting.push(done);
                    }
                    Job::Committed(value) => committed = value,
                    Job::Truncate { from, reply } => {
                        self.flush(&mut waiting);
                        let result = self.checked(|w| w.wal.truncate(from));
                        if result.is_ok() {
                            self.written = self.written.min(from.saturating_sub(1));
                            self.durable.store(self.written, Ordering::Release);
                        }
                        let _ = reply.send(result);
                    }
                    Job::Purge { log_id, reply } => {
                        self.flush(&mut waiting);
                        let result = self.checked(|w| w.purge(log_id));
                        let _ = reply.send(result);
                    }
                    Job::Reseal { reply } => {
                        self.flush(&mut waiting);
                        let _ = reply.send(self.reseal());
                    }
                }
            }
            self.flush(&mut waiting);
            let index = |id: Option<LogId>| id.map_or(0, |id| id.index + 1);
            if index(committed) >= index(written) + COMMITTED_EVERY
                && self.write_committed(committed, false)
            {
                written = committed;
            }
        }
        // The store was dropped and every queued entry is flushed: leave the last commit
        // point on disk.
        if committed != written {
            self.write_committed(committed, true);
        }
    }

    fn fail(&mut self, e: &FileError) {
        tracing::error!("vault log write failed: {e}");
        self.failed.get_or_insert_with(|| e.to_string());
    }

    fn failure(&self) -> Option<io::Error> {
        self.failed.as_ref().map(|m| io::Error::other(m.clone()))
    }

    /// Runs `work` unless an earlier failure stopped the writer; records its failure.
    fn checked(
        &mut self,
        work: impl FnOnce(&mut Self) -> Result<(), FileError>,
    ) -> Result<(), FileError> {
        if let Some(e) = self.failure() {
            return Err(FileError::io(&self.dir.join(WAL_DIR), e));
        }
        let result = work(self);
        if let Err(e) = &result {
            self.fail(e);
        }
        result
    }

    /// Makes the written entries durable with one flush, then completes their appends.
    fn flush(&mut self, waiting: &mut Vec<Done>) {
        if waiting.is_empty() {
            return;
        }
        if self.failed.is_none() {
            match self.wal.sync() {
                Ok(()) => self.durable.store(self.written, Ordering::Release),
                Err(e) => self.fail(&e),
            }
        }
        for done in waiting.drain(..) {
            done(self.failure().map_or(Ok(()), Err));
        }
    }

    /// Seals the log again under the current epoch key. A failure (the token, a full
    /// disk) leaves each segment whole under one key or the other and the writer
    /// working: the end of the epoch is retried, the appends go on.
    fn reseal(&mut self) -> Result<(), FileError> {
        if let Some(e) = self.failure() {
            return Err(FileError::io(&self.dir.join(WAL_DIR), e));
        }
        let result = self.wal.reseal();
        if result.is_err() {
            if let Err(e) = self.wal.reopen_tail() {
                self.fail(&e);
            }
        }
        result
    }

    fn purge(&mut self, log_id: LogId) -> Result<(), FileError> {
        // Record the purge point durably first: if we crash midway, opening finishes
        // the job (and without it, a log missing its first entries would not open).
        files::write_sealed_durably(
            &*self.sealer,
            &self.dir.join("purged"),
            PURGED_CONTEXT,
            &log_id,
        )?;
        self.wal.purge(log_id.index + 1)
    }

    /// Writes the commit point, synced only if `durable`; returns whether it was
    /// written. It is only a hint: openraft reapplies entries up to it at startup, and a
    /// stale (lower) or missing value is safe, since the leader re-establishes the
    /// commit point. So it is written only every [`COMMITTED_EVERY`] entries and on
    /// shutdown, never on the commit path, and always after the flush of the entries it
    /// covers (a follower's commit point may run ahead of its durable log), so it never
    /// points past the durable log.
    fn write_committed(&mut self, committed: Option<LogId>, durable: bool) -> bool {
        if self.failed.is_some() {
            return false;
        }
        let path = self.dir.join("committed");
        let written = if durable {
            files::write_sealed_durably(&*self.sealer, &path, COMMITTED_CONTEXT, &committed)
        } else {
            files::write_sealed_unsynced(&*self.sealer, &path, COMMITTED_CONTEXT, &committed)
        };
        match written {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("cannot record the vault's commit point: {e}");
                false
            }
        }
    }
}

/// Unseals a log store file, by its path relative to the data directory: `None` if it
/// is not one of them.
pub(crate) fn unseal_file(
    sealer: &dyn Sealer,
    relative: &Path,
    bytes: &[u8],
) -> Option<Result<Vec<u8>, String>> {
    let name = relative.file_name()?.to_str()?;
    let parent = relative.parent()?;
    if parent == Path::new(WAL_DIR) {
        return wal::unseal_segment(sealer, name, bytes);
    }
    if parent != Path::new("") {
        return None;
    }
    let context = match name {
        "vote" => VOTE_CONTEXT,
        "committed" => COMMITTED_CONTEXT,
        "purged" => PURGED_CONTEXT,
        _ => return None,
    };
    Some(
        crate::epoch::open_any(sealer, context, bytes)
            .map(|plain| plain.to_vec())
            .map_err(|e| e.to_string()),
    )
}

fn io_error(subject: ErrorSubject<u64>, verb: ErrorVerb, e: &FileError) -> StorageError {
    StorageIOError::new(subject, verb, e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        // Served from memory: appended entries are there before they are durable (as
        // openraft expects), and apply never re-reads and unseals a file.
        Ok(self
            .shared
            .lock()
            .entries
            .range(range)
            .map(|(_, entry)| entry.clone())
            .collect())
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
            .map(|entry| entry.log_id)
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
        self.blocking(Shared::read_vote)
            .await
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Read, &e))
    }

    /// Records the commit point in memory and tells the writer, which writes it now and
    /// then after the entries it covers are durable, without a flush of its own (see
    /// [`Writer::write_committed`]): openraft awaits this on every commit, and a stale
    /// commit point is safe.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut index = self.shared.lock();
        index.committed = committed;
        let sent = self.shared.send(Job::Committed(committed));
        drop(index);
        sent.map_err(|_| {
            io_error(
                ErrorSubject::Store,
                ErrorVerb::Write,
                &self.shared.writer_gone(),
            )
        })
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.shared.lock().committed)
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
        self.submit_append(
            entries,
            Box::new(move |result| callback.log_io_completed(result)),
        )
        .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        let done = self.queue_removal(from.., |reply| Job::Truncate { from, reply });
        done.await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let done = self.queue_removal(..=log_id.index, |reply| Job::Purge { log_id, reply });
        done.await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::KeyFileSealer;
    use openraft::CommittedLeaderId;

    fn sealer(root: &Path) -> Arc<EpochSealer> {
        Arc::new(
            EpochSealer::open(Arc::new(
                KeyFileSealer::open_or_create(root.join("node.key")).unwrap(),
            ))
            .unwrap(),
        )
    }

    fn open(root: &Path) -> LogStore {
        LogStore::open(&root.join("data"), sealer(root)).unwrap()
    }

    fn wal_dir(root: &Path) -> PathBuf {
        root.join("data").join(WAL_DIR)
    }

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    /// Appends through the writer thread; the receiver yields once they are durable.
    fn append(store: &LogStore, entries: Vec<Entry>) -> mpsc::Receiver<Result<(), io::Error>> {
        let (tx, rx) = mpsc::channel();
        store
            .submit_append(
                entries,
                Box::new(move |result| {
                    let _ = tx.send(result);
                }),
            )
            .unwrap();
        rx
    }

    fn append_durably(store: &LogStore, entries: Vec<Entry>) {
        append(store, entries).recv().unwrap().unwrap();
    }

    fn indexes(store: &LogStore) -> Vec<u64> {
        store.shared.lock().entries.keys().copied().collect()
    }

    fn segments(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(wal_dir(root))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The power-cut layer itself: an append that was written but not synced is gone
    /// after the cut, one that was acknowledged is not.
    #[test]
    fn a_power_cut_drops_what_was_written_but_not_synced() {
        let root = tempfile::TempDir::new().unwrap();
        let mut wal = {
            let store = open(root.path());
            append_durably(&store, (0..3).map(blank).collect());
            drop(store);
            Wal::open(&wal_dir(root.path()), sealer(root.path()), 0)
                .unwrap()
                .0
        };
        wal.sync().unwrap();
        wal.append(&[blank(3), blank(4)]).unwrap();
        let dropped = super::super::power_cut::cut(&wal_dir(root.path()));
        assert!(dropped > 0);
        assert!(wal.sync().is_err(), "a dead machine syncs nothing");
        drop(wal);
        super::super::power_cut::restore(&wal_dir(root.path()));
        let store = open(root.path());
        assert_eq!(indexes(&store), vec![0, 1, 2]);
    }

    #[test]
    fn appends_are_visible_at_once_and_durable_when_acknowledged() {
        let root = tempfile::tempdir().unwrap();
        let store = open(root.path());
        let acks: Vec<_> = (0..50).map(|i| append(&store, vec![blank(i)])).collect();
        // In memory before the writer has necessarily written anything.
        assert_eq!(store.shared.lock().entries.len(), 50);
        for ack in acks {
            ack.recv().unwrap().unwrap();
        }
        drop(store);
        assert_eq!(indexes(&open(root.path())), (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_tail_is_cut_off_on_reopen() {
        let root = tempfile::tempdir().unwrap();
        let store = open(root.path());
        append_durably(&store, (0..5).map(blank).collect());
        drop(store);
        let segment = wal_dir(root.path()).join(&segments(root.path())[0]);
        let whole = fs::read(&segment).unwrap();
        // A crash mid-append: the last record is half written.
        fs::write(&segment, &whole[..whole.len() - 7]).unwrap();
        let store = open(root.path());
        assert_eq!(indexes(&store), vec![0, 1, 2, 3]);
        // The cut is durable and the log goes on from there.
        append_durably(&store, vec![blank(4), blank(5)]);
        drop(store);
        assert_eq!(indexes(&open(root.path())), (0..6).collect::<Vec<_>>());
    }

    #[test]
    fn a_record_that_does_not_open_is_damage_not_a_torn_write() {
        let root = tempfile::tempdir().unwrap();
        let store = open(root.path());
        append_durably(&store, (0..3).map(blank).collect());
        drop(store);
        // Another node's key: every record is whole but none opens. Opening must fail
        // rather than cut the log.
        let other = tempfile::tempdir().unwrap();
        let err = LogStore::open(&root.path().join("data"), sealer(other.path()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("does not open"), "{err}");
        assert_eq!(indexes(&open(root.path())), vec![0, 1, 2]);
    }

    #[test]
    fn a_record_moved_to_another_index_does_not_open() {
        let root = tempfile::tempdir().unwrap();
        let store = open(root.path());
        append_durably(&store, vec![blank(0)]);
        drop(store);
        let segment = wal_dir(root.path()).join(&segments(root.path())[0]);
        let record = fs::read(&segment).unwrap();
        // Entry 0's record repeated as entry 1.
        fs::write(&segment, [record.clone(), record].concat()).unwrap();
        let err = LogStore::open(&root.path().join("data"), sealer(root.path()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("does not open"), "{err}");
    }

    #[test]
    fn a_foreign_file_in_the_log_directory_is_reported() {
        let root = tempfile::tempdir().unwrap();
        drop(open(root.path()));
        fs::write(wal_dir(root.path()).join("notes.txt"), b"x").unwrap();
        let err = LogStore::open(&root.path().join("data"), sealer(root.path()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("not a log segment"), "{err}");
    }

    #[tokio::test]
    async fn purge_removes_purged_records_from_disk() {
        let root = tempfile::tempdir().unwrap();
        let mut store = open(root.path());
        append_durably(&store, (0..8).map(blank).collect());
        store.purge(blank(4).log_id).await.unwrap();
        assert_eq!(segments(root.path()), vec!["00000000000000000005"]);
        let sealer = sealer(root.path());
        let segment = wal_dir(root.path()).join("00000000000000000005");
        let plain = wal::unseal_segment(
            &*sealer,
            "00000000000000000005",
            &fs::read(segment).unwrap(),
        )
        .unwrap()
        .unwrap();
        let live: Vec<u8> = (5..8)
            .flat_map(|i| postcard::to_allocvec(&blank(i)).unwrap())
            .collect();
        assert_eq!(plain, live, "only entries 5..8 remain on disk");
        // Everything purged: the next entry starts a new, empty segment.
        store.purge(blank(7).log_id).await.unwrap();
        assert_eq!(segments(root.path()), vec!["00000000000000000008"]);
        append_durably(&store, vec![blank(8)]);
        drop(store);
        assert_eq!(indexes(&open(root.path())), vec![8]);
    }

    #[test]
    fn reopening_finishes_an_interrupted_purge() {
        let root = tempfile::tempdir().unwrap();
        let store = open(root.path());
        append_durably(&store, (0..6).map(blank).collect());
        // A crash after the purge point was recorded, before the segment was cut.
        files::write_sealed_durably(
            &*store.shared.sealer,
            &store.shared.dir.join("purged"),
            PURGED_CONTEXT,
            &blank(2).log_id,
        )
        .unwrap();
        drop(store);
        let store = open(root.path());
        assert_eq!(segments(root.path()), vec!["00000000000000000003"]);
        assert_eq!(store.shared.lock().last_purged, Some(blank(2).log_id));
        assert_eq!(indexes(&store), vec![3, 4, 5]);
    }

    #[test]
    fn reopening_after_a_purge_renamed_its_copy_keeps_one_copy() {
        let root = tempfile::tempdir().unwrap();
        let store = open(root.path());
        append_durably(&store, (0..6).map(blank).collect());
        drop(store);
        // A crash after the copy of entries 3..6 was renamed into place, before the old
        // segment was deleted.
        let dir = wal_dir(root.path());
        let sealer = sealer(root.path());
        let (mut wal, _) = Wal::open(&dir, sealer.clone(), 0).unwrap();
        let old = fs::read(dir.join("00000000000000000000")).unwrap();
        wal.purge(3).unwrap();
        drop(wal);
        fs::write(dir.join("00000000000000000000"), old).unwrap();
        files::write_sealed_durably(
            &**sealer.node(),
            &root.path().join("data").join("purged"),
            PURGED_CONTEXT,
            &blank(2).log_id,
        )
        .unwrap();
        let store = open(root.path());
        assert_eq!(segments(root.path()), vec!["00000000000000000003"]);
        assert_eq!(indexes(&store), vec![3, 4, 5]);
    }

    /// The end of an epoch: every segment sealed again under the next epoch key, so
    /// the log opens once the old key is destroyed; appends after it land in the new
    /// tail file, not in the unlinked old one.
    #[tokio::test]
    async fn a_resealed_log_opens_without_the_old_epoch_key_and_keeps_later_appends() {
        let root = tempfile::tempdir().unwrap();
        let sealer = sealer(root.path());
        let store = LogStore::open(&root.path().join("data"), sealer.clone()).unwrap();
        let big = |index: u64| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(super::super::types::Batch(vec![
                crate::state::Command::Erase {
                    account: "x".repeat(4000),
                    generation: index,
                    reason: crate::state::EraseReason::Owner,
                },
            ])),
        };
        append_durably(&store, (0..40).map(big).collect());
        assert!(segments(root.path()).len() > 1, "spans segments");
        let before = fs::read(wal_dir(root.path()).join("00000000000000000000")).unwrap();

        assert_eq!(sealer.advance().unwrap(), 2);
        store.reseal().await.unwrap();
        sealer.destroy_before_current().unwrap();
        let after = fs::read(wal_dir(root.path()).join("00000000000000000000")).unwrap();
        assert_ne!(before, after, "sealed again");
        append_durably(&store, (40..45).map(big).collect());
        drop(store);

        let store = LogStore::open(&root.path().join("data"), sealer.clone()).unwrap();
        assert_eq!(indexes(&store), (0..45).collect::<Vec<u64>>());
        // A copy of the old segment does not open any more.
        let copy = Wal::open(&root.path().join("copy"), sealer.clone(), 0);
        drop(copy);
        fs::write(
            root.path().join("copy").join("00000000000000000000"),
            &before,
        )
        .unwrap();
        assert!(Wal::open(&root.path().join("copy"), sealer, 0).is_err());
    }

    /// A log the release before crypto-erasure wrote (records in sealed layout 1, under
    /// the node key) opens, and moves to epoch keys when sealed again.
    #[tokio::test]
    async fn a_log_of_the_previous_release_opens() {
        let root = tempfile::tempdir().unwrap();
        let sealer = sealer(root.path());
        let wal_dir = wal_dir(root.path());
        let (mut wal, _) = Wal::open(&wal_dir, sealer.node().clone(), 0).unwrap();
        wal.append(&(0..5).map(blank).collect::<Vec<_>>()).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let first = wal_dir.join("00000000000000000000");
        assert_eq!(fs::read(&first).unwrap()[HEADER], 1, "layout 1");

        let store = LogStore::open(&root.path().join("data"), sealer.clone()).unwrap();
        assert_eq!(indexes(&store), vec![0, 1, 2, 3, 4]);
        store.reseal().await.unwrap();
        assert_eq!(
            fs::read(&first).unwrap()[HEADER],
            2,
            "layout 2 once sealed again"
        );
    }

    /// Length and check before each sealed record.
    const HEADER: usize = 12;

    #[test]
    fn segments_roll_over_and_truncation_spans_them() {
        let root = tempfile::tempdir().unwrap();
        let dir = wal_dir(root.path());
        let sealer = sealer(root.path());
        let (mut wal, _) = Wal::open(&dir, sealer.clone(), 0).unwrap();
        // Entries big enough that a few of them fill a segment.
        let big = |index: u64| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Membership(openraft::Membership::new(
                vec![(0..8_000u64).collect()],
                None,
            )),
        };
        for i in 0..30 {
            wal.append(&[big(i)]).unwrap();
        }
        wal.sync().unwrap();
        let firsts = wal.segment_firsts();
        assert!(firsts.len() >= 3, "{firsts:?}");
        // Truncate into the second segment: later segments go, the log goes on.
        let from = firsts[1] + 1;
        wal.truncate(from).unwrap();
        assert_eq!(wal.next_index(), from);
        wal.append(&[blank(from)]).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, entries) = Wal::open(&dir, sealer, 0).unwrap();
        let read: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(read, (0..=from).collect::<Vec<_>>());
        assert!(matches!(
            entries.last().unwrap().payload,
            openraft::EntryPayload::Blank
        ));
    }

    #[test]
    fn an_empty_committed_file_reads_as_unknown() {
        let root = tempfile::tempdir().unwrap();
        let store = open(root.path());
        fs::write(store.shared.dir.join("committed"), b"").unwrap();
        drop(store);
        assert_eq!(open(root.path()).committed(), None);
    }

    #[tokio::test]
    async fn truncate_and_purge_are_ordered_with_queued_appends() {
        let root = tempfile::tempdir().unwrap();
        let mut store = open(root.path());
        let first = append(&store, (0..6).map(blank).collect());
        store.truncate(blank(4).log_id).await.unwrap();
        first.recv().unwrap().unwrap();
        let second = append(&store, vec![blank(4)]);
        store.purge(blank(1).log_id).await.unwrap();
        second.recv().unwrap().unwrap();
        store.save_committed(Some(blank(3).log_id)).await.unwrap();
        let read = store.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(
            read.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        drop(store);
        let mut store = open(root.path());
        assert_eq!(indexes(&store), vec![2, 3, 4]);
        assert_eq!(store.read_committed().await.unwrap(), Some(blank(3).log_id));
    }
}
