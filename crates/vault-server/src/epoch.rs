//! Sealing under the current epoch's key, so that what the vault erases becomes
//! unreadable from every old copy of its disk once the epoch ends (docs/VAULT.md
//! §Crypto-erasure).
//!
//! The node's key store ([`Sealer::epoch_keys`]) holds one AES-256 key per epoch. The
//! log and the root of the record key tree are sealed under the newest one; at the end of
//! each epoch the replica makes the next key, seals what is live again under it, and
//! destroys the old key inside the token. A copy of the data directory taken at any time
//! then opens only while the key of its epoch lives.
//!
//! Sealed layout (version 2): `0x02 ‖ epoch (u64 BE) ‖ nonce (12) ‖ ciphertext ‖ tag (16)`,
//! AES-256-GCM under the epoch's key with the caller's context as associated data.
//! Version 1 values (sealed under the node key by earlier releases) still open.

use crate::seal::{EpochKeys, SealError, Sealer};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use zeroize::Zeroizing;

/// Sealed format version of a value under an epoch key.
const VERSION: u8 = 2;
/// The version 1 layout's version byte, which epoch keys seal in.
const NODE_KEY_VERSION: u8 = 1;
const EPOCH_BYTES: usize = 8;

/// A [`Sealer`] that seals under the current epoch's key and opens values of any epoch
/// whose key still exists (and version 1 values, under the node key).
pub struct EpochSealer {
    node: Arc<dyn Sealer>,
    current: AtomicU64,
}

impl fmt::Debug for EpochSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EpochSealer")
            .field("node", &self.node.describe())
            .field("current", &self.current())
            .finish()
    }
}

impl EpochSealer {
    /// Seals under the newest epoch key of `node`, making epoch 1's if there is none.
    pub fn open(node: Arc<dyn Sealer>) -> Result<Self, SealError> {
        let keys = node.epoch_keys();
        let current = match keys.list()?.last() {
            Some(&newest) => newest,
            None => {
                keys.create(1)?;
                1
            }
        };
        Ok(Self {
            node,
            current: AtomicU64::new(current),
        })
    }

    /// The epoch new values are sealed in.
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }

    /// The node's sealer (for values that are not sealed per epoch).
    pub fn node(&self) -> &Arc<dyn Sealer> {
        &self.node
    }

    /// Makes the next epoch's key and seals new values under it. Returns the new epoch.
    /// Values of the old epoch still open until [`Self::destroy_before`].
    pub fn advance(&self) -> Result<u64, SealError> {
        let next = self.current() + 1;
        self.node.epoch_keys().create(next)?;
        self.current.store(next, Ordering::Release);
        Ok(next)
    }

    /// The epochs before the current one whose keys still exist.
    pub fn stale(&self) -> Result<Vec<u64>, SealError> {
        let current = self.current();
        let mut epochs = self.node.epoch_keys().list()?;
        epochs.retain(|&e| e < current);
        Ok(epochs)
    }

    /// Destroys the keys of every epoch before the current one. Call only once nothing
    /// live is sealed under them.
    pub fn destroy_before_current(&self) -> Result<Vec<u64>, SealError> {
        let stale = self.stale()?;
        for &epoch in &stale {
            self.node.epoch_keys().destroy(epoch)?;
        }
        Ok(stale)
    }
}

impl Sealer for EpochSealer {
    fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let epoch = self.current();
        let inner = self.node.epoch_keys().seal(epoch, context, plaintext)?;
        let mut out = Vec::with_capacity(inner.len() + EPOCH_BYTES);
        out.push(VERSION);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&inner[1..]);
        Ok(out)
    }

    fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        open_any(&*self.node, context, sealed)
    }

    fn describe(&self) -> String {
        format!("epoch {} keys of {}", self.current(), self.node.describe())
    }

    fn epoch_keys(&self) -> &dyn EpochKeys {
        self.node.epoch_keys()
    }
}

/// Opens a value of either layout with `node`'s keys: version 1 under its node key,
/// version 2 under the key of the value's epoch.
pub fn open_any(
    node: &dyn Sealer,
    context: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    match sealed.first() {
        Some(&NODE_KEY_VERSION) => node.open(context, sealed),
        Some(&VERSION) => {
            let epoch = sealed
                .get(1..1 + EPOCH_BYTES)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or(SealError::Truncated { len: sealed.len() })?;
            let mut inner = Vec::with_capacity(sealed.len() - EPOCH_BYTES);
            inner.push(NODE_KEY_VERSION);
            inner.extend_from_slice(&sealed[1 + EPOCH_BYTES..]);
            node.epoch_keys().open(epoch, context, &inner)
        }
        Some(&version) => Err(SealError::UnknownVersion { version }),
        None => Err(SealError::Truncated { len: 0 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::KeyFileSealer;

    fn sealer(dir: &std::path::Path) -> EpochSealer {
        EpochSealer::open(Arc::new(
            KeyFileSealer::open_or_create(dir.join("node.key")).unwrap(),
        ))
        .unwrap()
    }

    #[test]
    fn a_value_opens_until_its_epoch_key_is_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealer(dir.path());
        assert_eq!(s.current(), 1);
        let old = s.seal(b"ctx", b"record").unwrap();
        assert_eq!(old[0], VERSION);
        assert_eq!(old[1..9], 1u64.to_be_bytes());
        let legacy = s.node().seal(b"ctx", b"legacy").unwrap();

        assert_eq!(s.advance().unwrap(), 2);
        let new = s.seal(b"ctx", b"record").unwrap();
        assert_eq!(new[1..9], 2u64.to_be_bytes());
        assert_eq!(s.open(b"ctx", &old).unwrap().as_slice(), b"record");
        assert!(matches!(
            s.open(b"other", &new),
            Err(SealError::Unauthentic)
        ));

        assert_eq!(s.destroy_before_current().unwrap(), vec![1]);
        assert!(matches!(
            s.open(b"ctx", &old),
            Err(SealError::EpochGone { epoch: 1 })
        ));
        // A fresh process (keys loaded from the files) agrees.
        let again = sealer(dir.path());
        assert_eq!(again.current(), 2);
        assert!(matches!(
            again.open(b"ctx", &old),
            Err(SealError::EpochGone { epoch: 1 })
        ));
        assert_eq!(again.open(b"ctx", &new).unwrap().as_slice(), b"record");
        assert_eq!(again.open(b"ctx", &legacy).unwrap().as_slice(), b"legacy");
        // The destroyed key's file is gone; the live one remains.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.contains(&"node.key.epoch-2".to_owned()), "{names:?}");
        assert!(!names.contains(&"node.key.epoch-1".to_owned()), "{names:?}");
    }

    #[test]
    fn damaged_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealer(dir.path());
        let sealed = s.seal(b"ctx", b"x").unwrap();
        assert!(matches!(
            s.open(b"ctx", &sealed[..5]),
            Err(SealError::Truncated { .. })
        ));
        assert!(matches!(
            s.open(b"ctx", &[9, 0, 0]),
            Err(SealError::UnknownVersion { version: 9 })
        ));
        let mut other_epoch = sealed.clone();
        other_epoch[8] = 7;
        assert!(matches!(
            s.open(b"ctx", &other_epoch),
            Err(SealError::EpochGone { epoch: 7 })
        ));
    }
}
