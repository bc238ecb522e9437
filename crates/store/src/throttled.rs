//! A store whose transfers are held to a rate (`--limit-upload`, `--limit-download`),
//! so a backup does not take a shared link's whole bandwidth.
//!
//! Each direction is a virtual clock: a transfer of `n` bytes moves it on by
//! `n / rate`, from now if it is behind, and the caller returns no sooner than the
//! clock. Every thread shares it, so the limit holds for the process, however many
//! uploads run at once; over any stretch longer than one transfer, the bytes moved
//! stay within the rate.

use crate::{ObjectInfo, ObjectKind, ObjectStore, StoreError};
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// One direction's limit.
struct Rate {
    bytes_per_sec: u64,
    /// When the transfers so far would have ended at the rate.
    clock: Mutex<Option<Instant>>,
}

impl Rate {
    fn new(kib_per_sec: Option<u64>) -> Option<Self> {
        kib_per_sec.map(|kib| Rate {
            bytes_per_sec: kib.saturating_mul(1024).max(1),
            clock: Mutex::new(None),
        })
    }

    /// Accounts `bytes` moved by a transfer that began at `began`, and waits until
    /// the clock reaches their end.
    fn pass(&self, began: Instant, bytes: usize) {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let until = {
            let mut clock = self.clock.lock().unwrap_or_else(|p| p.into_inner());
            let from = clock.map_or(began, |c| c.max(began));
            let until = from + cost;
            *clock = Some(until);
            until
        };
        if let Some(wait) = until.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// Wraps a store, limiting what goes up and what comes down.
pub struct Throttled<S> {
    inner: S,
    up: Option<Rate>,
    down: Option<Rate>,
}

impl<S> Throttled<S> {
    /// `inner`, with uploads and downloads held to so many KiB/s (`None`: no limit).
    pub fn new(inner: S, upload_kib: Option<u64>, download_kib: Option<u64>) -> Self {
        Throttled {
            inner,
            up: Rate::new(upload_kib),
            down: Rate::new(download_kib),
        }
    }
}

fn pass(rate: &Option<Rate>, began: Instant, bytes: usize) {
    if let Some(rate) = rate {
        rate.pass(began, bytes);
    }
}

impl<S: ObjectStore> ObjectStore for Throttled<S> {
    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StoreError> {
        let began = Instant::now();
        self.inner.put(kind, name, data)?;
        pass(&self.up, began, data.len());
        Ok(())
    }
    fn put_owned(
        &self,
        kind: ObjectKind,
        name: &str,
        data: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (began, len) = (Instant::now(), data.len());
        let back = self.inner.put_owned(kind, name, data)?;
        pass(&self.up, began, len);
        Ok(back)
    }
    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StoreError> {
        let began = Instant::now();
        let data = self.inner.get(kind, name)?;
        pass(&self.down, began, data.len());
        Ok(data)
    }
    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let began = Instant::now();
        let data = self.inner.get_range(kind, name, offset, len)?;
        pass(&self.down, began, data.len());
        Ok(data)
    }
    fn get_range_into(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let began = Instant::now();
        self.inner.get_range_into(kind, name, offset, len, buf)?;
        pass(&self.down, began, buf.len());
        Ok(())
    }
    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(kind)
    }
    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StoreError> {
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

    /// The limit is a floor on time, whatever the threads: 512 KiB up on four
    /// threads at 1 MiB/s takes at least half a second; downloads are held apart.
    /// (Only the lower bound is checked: a slow machine is slower, never faster.)
    #[test]
    fn transfers_take_at_least_their_bytes_over_the_rate() {
        let store = Throttled::new(MemoryStore::new(), Some(1024), Some(2048));
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..4 {
                let store = &store;
                s.spawn(move || {
                    for i in 0..4 {
                        store
                            .put(ObjectKind::Pack, &format!("{t}-{i}"), &[0u8; 32 << 10])
                            .unwrap();
                    }
                });
            }
        });
        assert!(
            start.elapsed() >= Duration::from_millis(490),
            "{:?}",
            start.elapsed()
        );
        let start = Instant::now();
        for t in 0..4 {
            for i in 0..4 {
                store.get(ObjectKind::Pack, &format!("{t}-{i}")).unwrap();
            }
        }
        // 512 KiB at 2 MiB/s.
        assert!(
            start.elapsed() >= Duration::from_millis(240),
            "{:?}",
            start.elapsed()
        );
        let unlimited = Throttled::new(MemoryStore::new(), None, None);
        unlimited.put(ObjectKind::Pack, "x", &[1; 10]).unwrap();
        assert_eq!(unlimited.get(ObjectKind::Pack, "x").unwrap(), [1; 10]);
    }
}
