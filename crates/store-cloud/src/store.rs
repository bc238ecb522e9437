//! [`CloudStore`]: the [`ObjectStore`] trait over an OpenDAL operator.
//!
//! The trait is synchronous and the engine calls it from its own threads; OpenDAL is
//! async. Every store shares one small tokio runtime ([`runtime`]); a call spawns
//! its request there and waits on a channel, which works from any thread, inside
//! another runtime or not.
//!
//! Layers, innermost first: a concurrency limit (bounded requests in flight, and so
//! bounded memory), a timeout on every attempt, and retries with exponential backoff
//! and jitter on errors OpenDAL marks temporary (time-outs, connection resets, 5xx,
//! throttling). Retries sit outside the timeout so each attempt gets its own deadline.

use backlock_store::{ObjectInfo, ObjectKind, ObjectStore, StoreError};
use opendal::{
    layers::{ConcurrentLimitLayer, RetryLayer, TimeoutLayer},
    ErrorKind, Operator,
};
use std::{
    future::Future,
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

/// How hard a cloud store tries, and how much it does at once.
#[derive(Clone, Debug)]
pub struct Options {
    /// Requests in flight at most, over every thread using the store.
    pub max_in_flight: usize,
    /// Attempts after the first for a failure that may pass.
    pub retries: usize,
    /// First backoff delay (doubled each retry, with jitter).
    pub min_delay: Duration,
    /// Longest backoff delay.
    pub max_delay: Duration,
    /// Deadline for one attempt of a read, write or list step.
    pub io_timeout: Duration,
    /// Deadline for one attempt of any other request (stat, rename, delete).
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_in_flight: 8,
            retries: 8,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(20),
            io_timeout: Duration::from_secs(60),
            timeout: Duration::from_secs(60),
        }
    }
}

impl Options {
    /// The defaults, overridden by `BACKLOCK_STORE_CONNECTIONS`,
    /// `BACKLOCK_STORE_RETRIES` and `BACKLOCK_STORE_TIMEOUT` (seconds).
    pub fn from_settings(s: &crate::Settings) -> Result<Self, crate::OpenError> {
        let mut o = Options::default();
        let num = |name: &str| -> Result<Option<u64>, crate::OpenError> {
            s.get(name)
                .map(|v| {
                    v.expose()
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| crate::OpenError::BadSetting {
                            name: name.to_string(),
                            problem: "is not a whole number".into(),
                        })
                })
                .transpose()
        };
        if let Some(n) = num("BACKLOCK_STORE_CONNECTIONS")? {
            o.max_in_flight = n.clamp(1, 256) as usize;
        }
        if let Some(n) = num("BACKLOCK_STORE_RETRIES")? {
            o.retries = n.min(100) as usize;
        }
        if let Some(n) = num("BACKLOCK_STORE_TIMEOUT")? {
            o.io_timeout = Duration::from_secs(n.max(1));
            o.timeout = o.io_timeout;
        }
        Ok(o)
    }
}

/// The one runtime every cloud store runs its requests on.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(backlock_core::threads::at_most(2))
            .thread_name("backlock-store")
            .enable_all()
            .build()
            .expect("the OS refused to start the store's I/O threads")
    })
}

tokio::task_local! {
    /// Retries made for the request running in this task (set by the retry layer's
    /// notification). OpenDAL marks every error that leaves the retry layer
    /// "persistent", so this is how a failure that was worth retrying is told apart.
    static RETRIES: std::cell::Cell<u32>;
}

/// Runs one store request on the shared runtime and waits for it; returns the
/// result and how many times it was retried.
pub(crate) fn block_on<T: Send + 'static>(
    fut: impl Future<Output = opendal::Result<T>> + Send + 'static,
) -> (opendal::Result<T>, u32) {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(RETRIES.scope(std::cell::Cell::new(0), async move {
        let result = fut.await;
        let _ = tx.send((result, RETRIES.with(|c| c.get())));
    }));
    rx.recv()
        .expect("the store's I/O task ended without an answer")
}

/// OpenDAL's HTTP transport, installed once per process before any store is built.
pub(crate) fn install_http_transport() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(opendal::install_default);
}

/// How objects reach their final name atomically.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PutMode {
    /// The service commits a whole upload or nothing (S3, GCS, Azure, drives).
    Direct,
    /// Upload under `tmp/`, then rename into place (SFTP, WebDAV).
    ViaRename,
}

/// Counters a test or a progress line can read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Attempts retried after a failure that may pass.
    pub retries: AtomicU64,
}

/// A repository in a cloud store.
pub struct CloudStore {
    op: Operator,
    max_in_flight: usize,
    location: String,
    put_mode: PutMode,
    stats: Arc<Stats>,
    /// Values that must never appear in an error message.
    secrets: Arc<Vec<crate::settings::Value>>,
}

impl std::fmt::Debug for CloudStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudStore")
            .field("location", &self.location)
            .field("put_mode", &self.put_mode)
            .finish_non_exhaustive()
    }
}

/// Names are generated by backlock; anything else could escape the prefix.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The object layout, the same as the local store's: `config`, `packs/ab/NAME`,
/// `index/NAME`, `snapshots/NAME`, `locks/NAME`. A repository copied between a
/// local directory and a bucket with any sync tool stays a repository.
fn kind_dir(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Config => "",
        ObjectKind::Pack => "packs/",
        ObjectKind::Index => "index/",
        ObjectKind::Snapshot => "snapshots/",
        ObjectKind::Lock => "locks/",
        ObjectKind::IndexSet => "indexsets/",
    }
}

impl CloudStore {
    pub(crate) fn new(
        op: Operator,
        location: String,
        put_mode: PutMode,
        options: &Options,
        secrets: Vec<crate::settings::Value>,
    ) -> Self {
        let stats = Arc::new(Stats::default());
        let counter = stats.clone();
        let op = op
            .layer(ConcurrentLimitLayer::new(options.max_in_flight))
            .layer(
                TimeoutLayer::new()
                    .with_timeout(options.timeout)
                    .with_io_timeout(options.io_timeout),
            )
            .layer(
                RetryLayer::new()
                    .with_jitter()
                    .with_factor(2.0)
                    .with_min_delay(options.min_delay)
                    .with_max_delay(options.max_delay)
                    .with_max_times(options.retries)
                    .with_notify(move |e: opendal::layers::RetryEvent<'_>| {
                        counter.retries.fetch_add(1, Ordering::Relaxed);
                        let _ = RETRIES.try_with(|c| c.set(c.get() + 1));
                        tracing::warn!(
                            "store request failed ({}), retry {} in {:.1} s",
                            e.err.kind(),
                            e.attempt,
                            e.retry_after.as_secs_f64()
                        );
                    }),
            );
        CloudStore {
            op,
            max_in_flight: options.max_in_flight,
            location,
            put_mode,
            stats,
            secrets: Arc::new(secrets),
        }
    }

    /// Retry counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// The OpenDAL operator, with its layers (tests use it to play a misbehaving
    /// store: write a half object under a final name, say).
    pub fn operator(&self) -> &Operator {
        &self.op
    }

    fn path(&self, kind: ObjectKind, name: &str) -> Result<String, StoreError> {
        if !valid_name(name) {
            return Err(StoreError::Io {
                what: format!("{} ({name:?})", self.location),
                source: io::Error::new(io::ErrorKind::InvalidInput, "invalid object name"),
            });
        }
        Ok(match kind {
            ObjectKind::Pack => format!("packs/{}/{name}", &name[..2.min(name.len())]),
            _ => format!("{}{name}", kind_dir(kind)),
        })
    }

    #[cfg(test)]
    pub(crate) fn scrub_for_test(&self, text: String) -> String {
        self.scrub(text)
    }

    /// Removes secret values and URL query strings (which may carry tokens).
    fn scrub(&self, text: String) -> String {
        let mut out = text;
        for s in self.secrets.iter() {
            if s.expose().len() >= 4 {
                out = out.replace(s.expose(), "REDACTED");
            }
        }
        let mut clean = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(i) = rest.find('?') {
            let (head, tail) = rest.split_at(i);
            clean.push_str(head);
            let in_url = head
                .rsplit(char::is_whitespace)
                .next()
                .is_some_and(|w| w.contains("://"));
            if in_url {
                clean.push_str("?…");
                let end = tail
                    .find(|c: char| c.is_whitespace() || c == '"' || c == ')' || c == ',')
                    .unwrap_or(tail.len());
                rest = &tail[end..];
            } else {
                clean.push('?');
                rest = &tail[1..];
            }
        }
        clean.push_str(rest);
        clean
    }

    fn error(&self, kind: ObjectKind, name: &str, failure: (opendal::Error, u32)) -> StoreError {
        self.error_on(kind.as_str(), name, failure)
    }

    /// The [`StoreError`] for a failed request on `what` `name` ("pack 0a1b…",
    /// "file Media/IMG-1.jpg").
    pub(crate) fn error_on(
        &self,
        what: &'static str,
        name: &str,
        (e, retries): (opendal::Error, u32),
    ) -> StoreError {
        let detail = self.scrub(e.to_string());
        if e.kind() == ErrorKind::NotFound {
            return StoreError::NotFound {
                kind: what,
                name: name.to_string(),
            };
        }
        // Retried means OpenDAL judged it temporary (time-out, reset, 5xx, throttling)
        // and it outlived every retry.
        if retries > 0 || e.is_temporary() || e.kind() == ErrorKind::RateLimited {
            return StoreError::Transient {
                location: self.location.clone(),
                detail: if retries > 0 {
                    format!("gave up after {} attempts: {detail}", retries + 1)
                } else {
                    detail
                },
            };
        }
        let (io_kind, advice) = match e.kind() {
            ErrorKind::PermissionDenied => (
                io::ErrorKind::PermissionDenied,
                "the store refused access: check the credentials and that they may read, write, list and delete under this location",
            ),
            ErrorKind::ConfigInvalid => (
                io::ErrorKind::InvalidInput,
                "the store settings are invalid: check the URL and the variables in the README",
            ),
            ErrorKind::Unsupported => (
                io::ErrorKind::Unsupported,
                "this store does not support an operation backlock needs",
            ),
            _ => (
                io::ErrorKind::Other,
                "the store failed: check the message, the store's status and the credentials, then try again",
            ),
        };
        StoreError::Io {
            what: format!("{} ({what} {name})", self.location),
            source: io::Error::new(io_kind, format!("{advice} ({detail})")),
        }
    }

    /// One ranged read of `path`, with the retries it took.
    pub(crate) fn read_at(
        &self,
        path: String,
        offset: u64,
        len: u64,
    ) -> (opendal::Result<Vec<u8>>, u32) {
        let op = self.op.clone();
        block_on(async move {
            op.read_with(&path)
                .range(offset..offset.saturating_add(len))
                .await
                .map(|b| b.to_vec())
        })
    }

    /// Stores `data`, which becomes the request body.
    fn put_body(&self, kind: ObjectKind, name: &str, data: Vec<u8>) -> Result<(), StoreError> {
        let path = self.path(kind, name)?;
        let op = self.op.clone();
        let (result, retries) = match self.put_mode {
            PutMode::Direct => block_on(async move { op.write(&path, data).await.map(|_| ()) }),
            PutMode::ViaRename => block_on(Self::put_via_rename(op, path, data)),
        };
        result.map_err(|e| self.error(kind, name, (e, retries)))
    }

    async fn put_via_rename(op: Operator, path: String, data: Vec<u8>) -> opendal::Result<()> {
        let tmp = format!("tmp/{}.tmp", hex::encode(rand::random::<[u8; 12]>()));
        let result = async {
            op.write(&tmp, data).await?;
            op.rename(&tmp, &path).await
        }
        .await;
        if result.is_err() {
            let _ = op.delete(&tmp).await;
        }
        result
    }
}

impl ObjectStore for CloudStore {
    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StoreError> {
        self.put_body(kind, name, data.to_vec())
    }

    /// The pack buffer becomes the request body: no copy of a pack per upload.
    fn put_owned(
        &self,
        kind: ObjectKind,
        name: &str,
        data: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.put_body(kind, name, data).map(|()| None)
    }

    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(kind, name)?;
        let op = self.op.clone();
        let (result, retries) = block_on(async move { op.read(&path).await.map(|b| b.to_vec()) });
        result.map_err(|e| self.error(kind, name, (e, retries)))
    }

    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let (result, retries) = self.read_at(self.path(kind, name)?, offset, len);
        match result {
            Ok(data) => Ok(data),
            // The object exists and ends before `offset`.
            Err(e) if e.kind() == ErrorKind::RangeNotSatisfied => Ok(Vec::new()),
            Err(e) if e.kind() == ErrorKind::NotFound || retries > 0 => {
                Err(self.error(kind, name, (e, retries)))
            }
            // Some services (SFTP) refuse a range that runs past the end instead of
            // returning what there is: clamp it to the object's size and read again.
            Err(e) => {
                let path = self.path(kind, name)?;
                let op = self.op.clone();
                let (clamped, retries) = block_on(async move {
                    let size = op.stat(&path).await?.content_length();
                    if offset >= size {
                        return Ok(None);
                    }
                    let end = offset.saturating_add(len).min(size);
                    op.read_with(&path)
                        .range(offset..end)
                        .await
                        .map(|b| Some(b.to_vec()))
                });
                match clamped {
                    Ok(Some(data)) if (data.len() as u64) < len => Ok(data),
                    Ok(None) => Ok(Vec::new()),
                    // The range was inside the object: the first error stands.
                    Ok(Some(_)) => Err(self.error(kind, name, (e, 0))),
                    Err(e) => Err(self.error(kind, name, (e, retries))),
                }
            }
        }
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StoreError> {
        let op = self.op.clone();
        if kind == ObjectKind::Config {
            let (result, retries) = block_on(async move { op.stat("config").await });
            return match result {
                Ok(m) => Ok(vec![ObjectInfo {
                    name: "config".into(),
                    size: m.content_length(),
                }]),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(self.error(kind, "config", (e, retries))),
            };
        }
        let dir = kind_dir(kind);
        let (result, retries) = block_on(async move { op.list_with(dir).recursive(true).await });
        let entries = match result {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(self.error(kind, dir.trim_end_matches('/'), (e, retries))),
        };
        let mut out: Vec<ObjectInfo> = entries
            .into_iter()
            .filter(|e| e.metadata().is_file() && valid_name(e.name()))
            .map(|e| ObjectInfo {
                name: e.name().to_string(),
                size: e.metadata().content_length(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        Ok(out)
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StoreError> {
        let path = self.path(kind, name)?;
        let op = self.op.clone();
        match block_on(async move { op.delete(&path).await }) {
            (Ok(()), _) => Ok(()),
            (Err(e), _) if e.kind() == ErrorKind::NotFound => Ok(()),
            (Err(e), retries) => Err(self.error(kind, name, (e, retries))),
        }
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    /// As many uploads as requests may be in flight: cloud puts wait on the network.
    fn max_concurrent_puts(&self) -> usize {
        self.max_in_flight
    }
}
