//! Snapshot data on its way between replicas, kept on disk rather than in memory.
//!
//! A [`Spool`] is a file in the data directory holding a snapshot stream sealed chunk
//! by chunk (AES-256-GCM, each chunk's index in its context) under a key that exists
//! only in this process's memory: the stream carries records' secrets in clear, and
//! the file must not (an erased record leaves no readable copy in the data
//! directory). The file is removed when the spool is dropped; one left by a crash is
//! unreadable without its key, and the next start removes it (its name ends in
//! `.tmp`). Memory is one chunk.
//!
//! [`SnapshotFile`] is what openraft reads, writes and seeks. A snapshot to send is
//! made lazily: the database's pinned read transaction is written into a spool only
//! when openraft first reads it, since a start asks for the current snapshot only for
//! its name.

use super::files::TMP_SUFFIX;
use super::keytree::{random_array, TreeKey};
use crate::seal::OVERHEAD;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use zeroize::Zeroizing;

/// Plaintext bytes per sealed chunk.
pub(crate) const SPOOL_CHUNK: usize = 1 << 20;
/// Sealed chunks' context, followed by the chunk's index.
const CONTEXT: &[u8] = b"backlock vault snapshot spool";

/// The chunk in memory.
struct Chunk {
    index: u64,
    plain: Zeroizing<Vec<u8>>,
    dirty: bool,
}

/// A file of sealed chunks read and written as one plain byte stream.
pub(crate) struct Spool {
    file: File,
    path: PathBuf,
    key: TreeKey,
    /// Plain bytes held.
    len: u64,
    pos: u64,
    chunk: Option<Chunk>,
}

impl Spool {
    /// A new, empty spool in `dir`.
    pub(crate) fn create(dir: &Path) -> io::Result<Self> {
        let key = TreeKey::random().map_err(io::Error::other)?;
        let name: [u8; 8] = random_array().map_err(io::Error::other)?;
        let name: String = name.iter().map(|b| format!("{b:02x}")).collect();
        let path = dir.join(format!("snapshot-{name}{TMP_SUFFIX}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Self {
            file,
            path,
            key,
            len: 0,
            pos: 0,
            chunk: None,
        })
    }

    /// The file's path.
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Plain bytes held.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    fn context(index: u64) -> Vec<u8> {
        let mut context = CONTEXT.to_vec();
        context.extend(index.to_le_bytes());
        context
    }

    fn slot(index: u64) -> u64 {
        index * (SPOOL_CHUNK + OVERHEAD) as u64
    }

    /// Seals the chunk in memory into its slot if it changed.
    fn store(&mut self) -> io::Result<()> {
        let Some(chunk) = self.chunk.as_mut().filter(|c| c.dirty) else {
            return Ok(());
        };
        let sealed = self
            .key
            .seal(&Self::context(chunk.index), &chunk.plain)
            .map_err(io::Error::other)?;
        self.file.write_all_at(&sealed, Self::slot(chunk.index))?;
        chunk.dirty = false;
        Ok(())
    }

    /// Makes chunk `index` the one in memory.
    fn load(&mut self, index: u64) -> io::Result<&mut Chunk> {
        if self.chunk.as_ref().is_none_or(|c| c.index != index) {
            self.store()?;
            let start = index * SPOOL_CHUNK as u64;
            let plain = if start < self.len {
                let n = (self.len - start).min(SPOOL_CHUNK as u64) as usize;
                let mut sealed = vec![0u8; n + OVERHEAD];
                self.file.read_exact_at(&mut sealed, Self::slot(index))?;
                self.key.open(&Self::context(index), &sealed).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: chunk {index} does not open ({e}): the file was changed",
                            self.path.display()
                        ),
                    )
                })?
            } else {
                Zeroizing::new(Vec::with_capacity(SPOOL_CHUNK))
            };
            self.chunk = Some(Chunk {
                index,
                plain,
                dirty: false,
            });
        }
        Ok(self.chunk.as_mut().expect("loaded above"))
    }
}

impl Read for Spool {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || out.is_empty() {
            return Ok(0);
        }
        let index = self.pos / SPOOL_CHUNK as u64;
        let offset = (self.pos % SPOOL_CHUNK as u64) as usize;
        let chunk = self.load(index)?;
        let n = out.len().min(chunk.plain.len() - offset);
        out[..n].copy_from_slice(&chunk.plain[offset..offset + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Spool {
    /// Writes at the position, which is at most the end: a spool has no holes.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let index = self.pos / SPOOL_CHUNK as u64;
        let offset = (self.pos % SPOOL_CHUNK as u64) as usize;
        let chunk = self.load(index)?;
        let n = data.len().min(SPOOL_CHUNK - offset);
        if chunk.plain.len() < offset + n {
            chunk.plain.resize(offset + n, 0);
        }
        chunk.plain[offset..offset + n].copy_from_slice(&data[..n]);
        chunk.dirty = true;
        self.pos += n as u64;
        self.len = self.len.max(self.pos);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.store()
    }
}

impl Seek for Spool {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(n) if n <= self.len => {
                self.pos = n;
                Ok(n)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a seek past the end of the snapshot ({} bytes)", self.len),
            )),
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// What makes a snapshot's spool when it is first read.
type Make = Box<dyn FnOnce() -> io::Result<Spool> + Send>;

enum State {
    Lazy(Option<Make>),
    Making(tokio::task::JoinHandle<io::Result<Spool>>),
    Ready(Spool),
    Failed(io::ErrorKind, String),
}

/// Snapshot data as openraft sees it: a [`Spool`], made on first use if lazy.
///
/// Reads and writes are plain file I/O of at most one chunk (1 MiB) inside the poll:
/// short next to the network round trip each chunk of a snapshot costs.
pub struct SnapshotFile {
    state: State,
    seek: Option<SeekFrom>,
}

impl SnapshotFile {
    /// Data that `make` writes into a spool when it is first read or sought.
    pub(crate) fn lazy(make: impl FnOnce() -> io::Result<Spool> + Send + 'static) -> Self {
        Self {
            state: State::Lazy(Some(Box::new(make))),
            seek: None,
        }
    }

    /// Data in `spool`.
    pub(crate) fn ready(spool: Spool) -> Self {
        Self {
            state: State::Ready(spool),
            seek: None,
        }
    }

    /// The spool, made now if it is lazy (blocking: call off the async runtime's
    /// threads).
    pub(crate) fn into_spool(self) -> io::Result<Spool> {
        match self.state {
            State::Lazy(Some(make)) => make(),
            State::Ready(spool) => Ok(spool),
            State::Lazy(None) | State::Making(_) => {
                Err(io::Error::other("the snapshot's data is still being made"))
            }
            State::Failed(kind, msg) => Err(io::Error::new(kind, msg)),
        }
    }

    fn poll_spool(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut Spool>> {
        loop {
            match &mut self.state {
                State::Lazy(make) => {
                    let make = make.take().expect("a lazy spool is made once");
                    self.state = State::Making(tokio::task::spawn_blocking(make));
                }
                State::Making(handle) => {
                    let made = ready!(Pin::new(handle).poll(cx));
                    self.state = match made {
                        Ok(Ok(spool)) => State::Ready(spool),
                        Ok(Err(e)) => State::Failed(e.kind(), e.to_string()),
                        Err(e) => State::Failed(io::ErrorKind::Other, e.to_string()),
                    };
                }
                State::Ready(_) | State::Failed(..) => break,
            }
        }
        Poll::Ready(match &mut self.state {
            State::Ready(spool) => Ok(spool),
            State::Failed(kind, msg) => Err(io::Error::new(*kind, msg.clone())),
            _ => unreachable!("the loop ends on a made spool"),
        })
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let spool = ready!(self.get_mut().poll_spool(cx))?;
        let n = spool.read(buf.initialize_unfilled())?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let spool = ready!(self.get_mut().poll_spool(cx))?;
        Poll::Ready(spool.write(data))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let spool = ready!(self.get_mut().poll_spool(cx))?;
        Poll::Ready(spool.flush())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(self: Pin<&mut Self>, to: SeekFrom) -> io::Result<()> {
        self.get_mut().seek = Some(to);
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let this = self.get_mut();
        let to = this.seek.take();
        let spool = match this.poll_spool(cx) {
            Poll::Ready(spool) => spool?,
            Poll::Pending => {
                this.seek = to;
                return Poll::Pending;
            }
        };
        Poll::Ready(match to {
            Some(to) => spool.seek(to),
            None => Ok(spool.pos),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn a_spool_reads_back_what_was_written_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let data = bytes(2 * SPOOL_CHUNK + 12_345);
        let mut spool = Spool::create(dir.path()).unwrap();
        for piece in data.chunks(100_003) {
            spool.write_all(piece).unwrap();
        }
        spool.flush().unwrap();
        assert_eq!(spool.len(), data.len() as u64);
        spool.seek(SeekFrom::Start(0)).unwrap();
        let mut back = Vec::new();
        spool.read_to_end(&mut back).unwrap();
        assert!(back == data);
        // Overwriting inside an earlier chunk keeps the rest (a resent chunk).
        spool.seek(SeekFrom::Start(SPOOL_CHUNK as u64 - 3)).unwrap();
        spool.write_all(&[1, 2, 3, 4, 5, 6]).unwrap();
        spool.seek(SeekFrom::Start(0)).unwrap();
        let mut back = Vec::new();
        spool.read_to_end(&mut back).unwrap();
        let mut expected = data.clone();
        expected[SPOOL_CHUNK - 3..SPOOL_CHUNK + 3].copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        assert!(back == expected);
        assert!(spool.seek(SeekFrom::Start(data.len() as u64 + 1)).is_err());
        let path = spool.path().to_path_buf();
        drop(spool);
        assert!(!path.exists(), "a dropped spool left its file");
    }

    /// The file never holds what was written in clear, and a changed byte is an
    /// error on reading, not different data.
    #[test]
    fn a_spool_file_holds_no_plaintext_and_refuses_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let secret = b"password-file-of-alice-9f2c71";
        let mut data = bytes(SPOOL_CHUNK + 500);
        data[SPOOL_CHUNK - 10..SPOOL_CHUNK - 10 + secret.len()].copy_from_slice(secret);
        data[40..40 + secret.len()].copy_from_slice(secret);
        let mut spool = Spool::create(dir.path()).unwrap();
        spool.write_all(&data).unwrap();
        spool.flush().unwrap();
        let on_disk = fs::read(spool.path()).unwrap();
        assert!(
            !on_disk.windows(secret.len()).any(|w| w == secret),
            "the spool file holds a secret in clear"
        );
        let mut changed = on_disk.clone();
        changed[100] ^= 1;
        fs::write(spool.path(), &changed).unwrap();
        spool.chunk = None;
        spool.seek(SeekFrom::Start(0)).unwrap();
        let err = spool.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    /// openraft's use: the sender seeks to the end for the length and reads from
    /// offsets; the receiver writes chunks, sometimes again from an earlier offset.
    #[tokio::test]
    async fn a_lazy_snapshot_file_is_made_on_first_read_and_streams() {
        let dir = tempfile::tempdir().unwrap();
        let data = bytes(SPOOL_CHUNK * 2 + 77);
        let (made_in, expected) = (dir.path().to_path_buf(), data.clone());
        let made = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = made.clone();
        let mut sent = SnapshotFile::lazy(move || {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            let mut spool = Spool::create(&made_in)?;
            spool.write_all(&expected)?;
            spool.flush()?;
            Ok(spool)
        });
        let never = SnapshotFile::lazy(|| panic!("an unread lazy snapshot was made"));
        drop(never);
        assert!(!made.load(std::sync::atomic::Ordering::SeqCst));
        let end = sent.seek(SeekFrom::End(0)).await.unwrap();
        assert_eq!(end, data.len() as u64);
        let mut received = SnapshotFile::ready(Spool::create(dir.path()).unwrap());
        let mut offset = 0u64;
        while offset < end {
            sent.seek(SeekFrom::Start(offset)).await.unwrap();
            let mut piece = vec![0u8; 700_000];
            let n = sent.read(&mut piece).await.unwrap();
            received.seek(SeekFrom::Start(offset)).await.unwrap();
            received.write_all(&piece[..n]).await.unwrap();
            if offset == 700_000 {
                // A resent piece.
                received.seek(SeekFrom::Start(offset)).await.unwrap();
                received.write_all(&piece[..n]).await.unwrap();
            }
            offset += n as u64;
        }
        received.shutdown().await.unwrap();
        let mut spool = received.into_spool().unwrap();
        spool.seek(SeekFrom::Start(0)).unwrap();
        let mut back = Vec::new();
        spool.read_to_end(&mut back).unwrap();
        assert!(back == data);
    }
}
