//! The Raft log: one sealed file per entry, so purging an entry deletes its bytes.
//!
//! Layout under the data directory:
//! - `log/<index, 20 digits>`: one entry, sealed with context `"backlock vault log" ‖ index`.
//! - `vote`, `committed`, `purged`: small sealed files, each replaced atomically.
//!
//! A B-tree file would keep freed pages (and with them erased records), so the log is
//! plain files: deleting an entry's file is what makes an erased record leave the disk.
//!
//! Group commit: [`RaftLogStorage::append`] puts the entries in memory and queues them
//! for one long-lived writer thread, then returns (openraft's storage-v2 contract: the
//! callback, not the return, says "durable"). The writer takes every queued job at once,
//! writes each entry to its own file (temporary name, rename, no per-file fsync), makes
//! the whole group durable with one `syncfs(2)`, and only then completes the callbacks,
//! in order. Truncation and purge go through the same queue, so they are ordered with
//! the writes before them. Every entry that has not been purged stays in memory too, so
//! openraft's reads (replication, apply) never go back to the disk; purge (after each
//! snapshot) is what bounds that memory.

use super::files::{self, FileError};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::seal::Sealer;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader, StorageIOError};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File};
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// Seal context prefix of a log entry; the big-endian index follows.
pub(crate) const LOG_CONTEXT: &[u8] = b"backlock vault log";
pub(crate) const VOTE_CONTEXT: &[u8] = b"backlock vault vote";
pub(crate) const COMMITTED_CONTEXT: &[u8] = b"backlock vault committed";
pub(crate) const PURGED_CONTEXT: &[u8] = b"backlock vault purged";

/// Entries between writes of the `committed` hint while running (see
/// [`Writer::write_committed`]).
const COMMITTED_EVERY: u64 = 1024;

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
    /// Delete these entry files (newest first) and flush.
    Truncate {
        doomed: Vec<u64>,
        reply: oneshot::Sender<Result<(), FileError>>,
    },
    /// Record the purge point durably, then delete these entry files and flush.
    Purge {
        log_id: LogId,
        doomed: Vec<u64>,
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
    pub fn open(dir: &Path, sealer: Arc<dyn Sealer>) -> Result<Self, StorageError> {
        let read_error = |e: &FileError| io_error(ErrorSubject::Logs, ErrorVerb::Read, e);
        let log_dir = dir.join("log");
        let index = load(dir, &log_dir, &*sealer).map_err(|e| read_error(&e))?;
        let log_dir_handle =
            File::open(&log_dir).map_err(|e| read_error(&FileError::io(&log_dir, e)))?;
        let (jobs, queue) = mpsc::channel();
        let writer = Writer {
            dir: dir.to_path_buf(),
            log_dir: log_dir.clone(),
            log_dir_handle,
            sealer: sealer.clone(),
            failed: None,
        };
        let writer = std::thread::Builder::new()
            .name("vault-log-writer".to_owned())
            .spawn(move || writer.run(&queue))
            .map_err(|e| read_error(&FileError::io(&log_dir, e)))?;
        Ok(Self {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                log_dir,
                sealer,
                index: Mutex::new(index),
                jobs: Some(jobs),
                writer: Some(writer),
            }),
        })
    }

    /// The last commit point openraft reported (written to disk lazily).
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
    /// point) and queues the job that deletes their files; the future says when it is
    /// done.
    fn queue_removal(
        &self,
        range: impl RangeBounds<u64>,
        job: impl FnOnce(Vec<u64>, oneshot::Sender<Result<(), FileError>>) -> Job,
    ) -> impl std::future::Future<Output = Result<(), FileError>> + Send + 'static {
        let (reply, done) = oneshot::channel();
        let sent = {
            let mut index = self.shared.lock();
            let doomed: Vec<u64> = index.entries.range(range).map(|(i, _)| *i).collect();
            for i in &doomed {
                index.entries.remove(i);
            }
            let job = job(doomed, reply);
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
    fn lock(&self) -> MutexGuard<'_, LogIndex> {
        self.index
            .lock()
            .expect("log index lock poisoned by a panic")
    }

    #[cfg(test)]
    fn entry_path(&self, index: u64) -> PathBuf {
        entry_path(&self.log_dir, index)
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
            &self.log_dir,
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

fn entry_path(log_dir: &Path, index: u64) -> PathBuf {
    log_dir.join(format!("{index:0width$}", width = INDEX_DIGITS))
}

/// Reads the log (every entry, unsealed) from disk and deletes what a crash left over.
fn load(dir: &Path, log_dir: &Path, sealer: &dyn Sealer) -> Result<LogIndex, FileError> {
    files::create_private_dir(log_dir)?;
    files::remove_temp_files(dir)?;
    files::remove_temp_files(log_dir)?;
    let last_purged: Option<LogId> =
        files::read_sealed(sealer, &dir.join("purged"), PURGED_CONTEXT)?;
    let mut on_disk = Vec::new();
    for item in fs::read_dir(log_dir).map_err(|e| FileError::io(log_dir, e))? {
        let item = item.map_err(|e| FileError::io(log_dir, e))?;
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
    // (a crash mid-append). Both are deleted: purged bytes must not linger. An empty
    // file also ends the run: entry files are not fsynced one by one, so a crash before
    // the group's flush can leave a renamed file whose data never reached the disk; it
    // was never acknowledged (acknowledgement waits for the flush), nor was anything
    // after it.
    let first = last_purged.as_ref().map_or(0, |p| p.index + 1);
    let mut expected = Some(first);
    let mut entries = BTreeMap::new();
    let mut stale = Vec::new();
    for index in on_disk {
        if index < first || Some(index) != expected {
            stale.push(index);
            continue;
        }
        let path = entry_path(log_dir, index);
        if is_empty(&path)? {
            stale.push(index);
            expected = None;
            continue;
        }
        let entry: Entry = files::read_sealed(sealer, &path, &log_context(index))?
            .ok_or_else(|| FileError::io(&path, io::ErrorKind::NotFound.into()))?;
        entries.insert(index, entry);
        expected = Some(index + 1);
    }
    for index in stale.iter().rev() {
        files::remove_if_present(&entry_path(log_dir, *index))?;
    }
    if !stale.is_empty() {
        files::sync_dir(log_dir)?;
    }
    let committed_path = dir.join("committed");
    // `committed` is written without fsync (see `Writer::write_committed`): an empty
    // file is a crash before its data reached the disk, and means "unknown", as a
    // missing one does.
    let committed: Option<Option<LogId>> = if is_empty(&committed_path)? {
        None
    } else {
        files::read_sealed(sealer, &committed_path, COMMITTED_CONTEXT)?
    };
    Ok(LogIndex {
        entries,
        last_purged,
        committed: committed.flatten(),
    })
}

/// Whether `path` exists and holds no bytes.
fn is_empty(path: &Path) -> Result<bool, FileError> {
    match fs::metadata(path) {
        Ok(meta) => Ok(meta.len() == 0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(FileError::io(path, e)),
    }
}

/// Writes each entry to its own file (temporary name, then rename), without flushing:
/// the caller flushes the whole group once.
fn write_entry_files(
    sealer: &dyn Sealer,
    log_dir: &Path,
    entries: &[Entry],
) -> Result<(), FileError> {
    for entry in entries {
        let index = entry.log_id.index;
        files::write_sealed_unsynced(
            sealer,
            &entry_path(log_dir, index),
            &log_context(index),
            entry,
        )?;
    }
    Ok(())
}

/// The writer thread's state: it alone writes and deletes entry files.
struct Writer {
    dir: PathBuf,
    log_dir: PathBuf,
    /// The log directory, open for `syncfs`.
    log_dir_handle: File,
    sealer: Arc<dyn Sealer>,
    /// The first failure: after it nothing more is written or acknowledged (a later
    /// entry must never be durable after an earlier one was lost).
    failed: Option<String>,
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
                            if let Err(e) =
                                write_entry_files(&*self.sealer, &self.log_dir, &entries)
                            {
                                self.fail(&e);
                            }
                        }
                        waiting.push(done);
                    }
                    Job::Committed(value) => committed = value,
                    Job::Truncate { doomed, reply } => {
                        self.flush(&mut waiting);
                        let result = self.checked(|w| w.truncate(&doomed));
                        let _ = reply.send(result);
                    }
                    Job::Purge {
                        log_id,
                        doomed,
                        reply,
                    } => {
                        self.flush(&mut waiting);
                        let result = self.checked(|w| w.purge(log_id, &doomed));
                        let _ = reply.send(result);
                    }
                }
            }
            self.flush(&mut waiting);
            let index = |id: Option<LogId>| id.map_or(0, |id| id.index + 1);
            if index(committed) >= index(written) + COMMITTED_EVERY
                && self.write_committed(committed)
            {
                written = committed;
            }
        }
        // The store was dropped, every queued entry is flushed: leave the last commit
        // point on disk.
        if committed != written && self.write_committed(committed) {
            if let Err(e) = self.sync() {
                tracing::warn!("cannot flush the vault's commit point: {e}");
            }
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
            return Err(FileError::io(&self.log_dir, e));
        }
        let result = work(self);
        if let Err(e) = &result {
            self.fail(e);
        }
        result
    }

    fn sync(&self) -> Result<(), FileError> {
        files::sync_filesystem(&self.log_dir_handle, &self.log_dir)
    }

    /// Makes the written entries durable with one flush, then completes their appends.
    fn flush(&mut self, waiting: &mut Vec<Done>) {
        if waiting.is_empty() {
            return;
        }
        if self.failed.is_none() {
            if let Err(e) = self.sync() {
                self.fail(&e);
            }
        }
        for done in waiting.drain(..) {
            done(self.failure().map_or(Ok(()), Err));
        }
    }

    fn truncate(&mut self, doomed: &[u64]) -> Result<(), FileError> {
        // Newest first, and flushed before any later append is written, so a crash
        // never leaves old entries after new ones.
        for index in doomed.iter().rev() {
            files::remove_if_present(&entry_path(&self.log_dir, *index))?;
        }
        self.sync()
    }

    fn purge(&mut self, log_id: LogId, doomed: &[u64]) -> Result<(), FileError> {
        // Record the purge point durably first: if we crash midway, opening finishes
        // the job (and without it, a log missing its first entries would not open).
        files::write_sealed_durably(
            &*self.sealer,
            &self.dir.join("purged"),
            PURGED_CONTEXT,
            &log_id,
        )?;
        for index in doomed {
            files::remove_if_present(&entry_path(&self.log_dir, *index))?;
        }
        self.sync()
    }

    /// Writes the commit point without fsync; returns whether it was written. It is only
    /// a hint: openraft reapplies entries up to it at startup, and a stale (lower) or
    /// missing value is safe, since the leader re-establishes the commit point. So it is
    /// written only every [`COMMITTED_EVERY`] entries and on shutdown, never on the
    /// commit path, and always after the flush of the entries it covers (a follower's
    /// commit point may run ahead of its durable log), so it never points past the
    /// durable log; the next flush makes it durable.
    fn write_committed(&mut self, committed: Option<LogId>) -> bool {
        if self.failed.is_some() {
            return false;
        }
        match files::write_sealed_unsynced(
            &*self.sealer,
            &self.dir.join("committed"),
            COMMITTED_CONTEXT,
            &committed,
        ) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("cannot record the vault's commit point: {e}");
                false
            }
        }
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
        self.blocking(|s| files::read_sealed(&*s.sealer, &s.dir.join("vote"), VOTE_CONTEXT))
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
        let done = self.queue_removal(log_id.index.., |doomed, reply| Job::Truncate {
            doomed,
            reply,
        });
        done.await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let done = self.queue_removal(..=log_id.index, |doomed, reply| Job::Purge {
            log_id,
            doomed,
            reply,
        });
        done.await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))
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

    /// Writes entry files directly, as the writer thread does, and flushes them.
    fn write(store: &LogStore, entries: &[Entry]) {
        write_entry_files(&*store.shared.sealer, &store.shared.log_dir, entries).unwrap();
        files::sync_dir(&store.shared.log_dir).unwrap();
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
        write(&store, &(0..6).map(blank).collect::<Vec<_>>());
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
        write(&store, &(0..6).map(blank).collect::<Vec<_>>());
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
        write(&store, &[blank(0), blank(1)]);
        fs::copy(store.shared.entry_path(0), store.shared.entry_path(1)).unwrap();
        drop(store);
        let sealer = Arc::new(KeyFileSealer::open_or_create(root.path().join("node.key")).unwrap());
        let err = LogStore::open(&root.path().join("data"), sealer)
            .err()
            .unwrap();
        assert!(err.to_string().contains("does not open"), "{err}");
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
        assert_eq!(files_in(&store).len(), 50);
        drop(store);
        let store = open(root.path());
        assert_eq!(
            store
                .shared
                .lock()
                .entries
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            (0..50).collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_empty_entry_file_ends_the_log_on_reopen() {
        let root = tempfile::tempdir().unwrap();
        let store = open(root.path());
        write(&store, &(0..5).map(blank).collect::<Vec<_>>());
        // A crash after the rename, before the data reached the disk.
        fs::write(store.shared.entry_path(2), b"").unwrap();
        drop(store);
        let store = open(root.path());
        assert_eq!(
            files_in(&store),
            vec!["00000000000000000000", "00000000000000000001"]
        );
        assert_eq!(store.shared.lock().entries.len(), 2);
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
        assert_eq!(
            files_in(&store),
            vec![
                "00000000000000000002",
                "00000000000000000003",
                "00000000000000000004"
            ]
        );
        let read = store.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(
            read.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        drop(store);
        let mut store = open(root.path());
        assert_eq!(
            store
                .shared
                .lock()
                .entries
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert_eq!(store.read_committed().await.unwrap(), Some(blank(3).log_id));
    }
}
