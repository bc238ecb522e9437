//! The key tree that records' secrets are sealed under at rest (docs/VAULT.md
//! §Crypto-erasure).
//!
//! Each record (one registration of one account) has its own random leaf key. Leaves
//! hang in buckets under a fixed tree of random node keys: the root, 256 upper nodes and
//! 65,536 lower nodes, created as accounts arrive. Each node's children (their ids and
//! keys) are sealed together under the node's key; the root key itself is kept only in
//! the key root file, sealed under the current epoch key (`epoch.rs`).
//!
//! Erasing a record deletes its leaf and replaces the keys on the path to it (its lower
//! node, that node's upper node, the root): the old copies of those nodes, in any old
//! copy of the disk, open only with old path keys, which exist only inside old copies,
//! whose root opens only with an old epoch key. Once that epoch key is destroyed the
//! erased record opens nowhere, even with the live token and the live disk. The work is
//! the path: two sets of at most 256 keys and one bucket (accounts / 65,536) sealed
//! again, never every record.
//!
//! A keyed hash (its key random per replica) picks an account's bucket, so nobody can
//! crowd one bucket to make its erasures slow.

// Replicas keep the tree as rows of their database now (`records.rs`); this in-memory
// form reads the version 2 snapshot files of the release before, and its writing half
// makes such files in tests.
#![cfg_attr(not(test), allow(dead_code))]

use crate::seal::{open_with, seal_with, SealError};
use aws_lc_rs::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

/// Associated data of a node's sealed children: this, then the level and the prefix.
const NODE_CONTEXT: &[u8] = b"backlock vault key tree";
/// Associated data of a record's sealed secrets: this, then the account.
const RECORD_CONTEXT: &[u8] = b"backlock vault record";

const KEY_LEN: usize = 32;

/// A random AES-256 key of the tree.
#[derive(Clone)]
pub(crate) struct TreeKey(Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for TreeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TreeKey(REDACTED)")
    }
}

impl TreeKey {
    pub(crate) fn random() -> Result<Self, SealError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(key.as_mut_slice()).map_err(|_| SealError::Random)?;
        Ok(Self(key))
    }

    pub(crate) fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(*bytes))
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, self.0.as_slice())
                .expect("a 32-byte key suits AES-256-GCM"),
        )
    }

    pub(crate) fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        seal_with(&self.aead(), context, plaintext)
    }

    pub(crate) fn open(
        &self,
        context: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        open_with(&self.aead(), context, sealed)
    }
}

/// A node: its key and, until its key or children change, its sealed children.
struct Node {
    key: TreeKey,
    sealed: Option<Vec<u8>>,
}

impl Node {
    fn new() -> Result<Self, SealError> {
        Ok(Self {
            key: TreeKey::random()?,
            sealed: None,
        })
    }

    /// A new key: what was sealed under the old one stays sealed under it.
    fn rekey(&mut self) -> Result<(), SealError> {
        *self = Self::new()?;
        Ok(())
    }
}

/// Which registration of an account a leaf seals: its record id and generation (a
/// replacement bumps the generation, so it never inherits the old leaf, even under the
/// same record id).
pub(crate) type Registration = ([u8; 16], u64);

/// One record's leaf: which registration it seals, under which key.
struct Leaf {
    registration: Registration,
    key: TreeKey,
}

/// The tree as it is written inside the snapshot file. Every key in it is sealed.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredTree {
    /// Names the root key in the key root file; new whenever the root key is.
    pub(crate) id: [u8; 16],
    /// The bucket hash's key (not secret: it only spreads accounts).
    placement: [u8; 32],
    root: Vec<u8>,
    upper: Vec<(u8, Vec<u8>)>,
    lower: Vec<(u16, Vec<u8>)>,
}

/// What the tree could not do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TreeError {
    /// A node or record does not open under the key the tree holds for it.
    #[error("the record key tree does not open ({what}): {source}")]
    Seal {
        /// Which part.
        what: String,
        /// Why.
        source: SealError,
    },
    /// A node opened but its contents do not decode.
    #[error("the record key tree is damaged ({0})")]
    Decode(String),
}

/// The key tree of one replica's records.
pub(crate) struct KeyTree {
    id: [u8; 16],
    placement: [u8; 32],
    root: Node,
    upper: BTreeMap<u8, Node>,
    lower: BTreeMap<u16, Node>,
    buckets: HashMap<u16, BTreeMap<String, Leaf>>,
}

impl fmt::Debug for KeyTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyTree")
            .field("id", &hex::encode(self.id))
            .field("leaves", &self.leaves())
            .finish_non_exhaustive()
    }
}

pub(crate) fn random_array<const N: usize>() -> Result<[u8; N], SealError> {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out).map_err(|_| SealError::Random)?;
    Ok(out)
}

pub(crate) fn node_context(level: u8, prefix: u16) -> Vec<u8> {
    let mut context = NODE_CONTEXT.to_vec();
    context.push(level);
    context.extend_from_slice(&prefix.to_be_bytes());
    context
}

pub(crate) fn record_context(account: &str) -> Vec<u8> {
    let mut context = RECORD_CONTEXT.to_vec();
    context.extend_from_slice(account.as_bytes());
    context
}

fn seal_error(what: impl Into<String>) -> impl FnOnce(SealError) -> TreeError {
    let what = what.into();
    move |source| TreeError::Seal { what, source }
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, TreeError> {
    postcard::from_bytes(bytes).map_err(|e| TreeError::Decode(format!("{what}: {e}")))
}

impl KeyTree {
    /// An empty tree with a fresh root key.
    pub(crate) fn new() -> Result<Self, SealError> {
        Ok(Self {
            id: random_array()?,
            placement: random_array()?,
            root: Node::new()?,
            upper: BTreeMap::new(),
            lower: BTreeMap::new(),
            buckets: HashMap::new(),
        })
    }

    /// The id that names the root key.
    pub(crate) fn id(&self) -> [u8; 16] {
        self.id
    }

    /// The root key, to be kept sealed under the epoch key.
    pub(crate) fn root_key(&self) -> &TreeKey {
        &self.root.key
    }

    /// How many records have a leaf.
    pub(crate) fn leaves(&self) -> usize {
        self.buckets.values().map(BTreeMap::len).sum()
    }

    fn bucket(&self, account: &str) -> u16 {
        let hash = blake3::keyed_hash(&self.placement, account.as_bytes());
        u16::from_be_bytes([hash.as_bytes()[0], hash.as_bytes()[1]])
    }

    /// Gives `account`'s `registration` a leaf, replacing (and erasing) the leaf of an
    /// earlier registration. Returns whether anything was erased.
    pub(crate) fn put(
        &mut self,
        account: &str,
        registration: Registration,
    ) -> Result<bool, SealError> {
        let bucket = self.bucket(account);
        let existing = self
            .buckets
            .get(&bucket)
            .and_then(|b| b.get(account))
            .map(|leaf| leaf.registration);
        if existing == Some(registration) {
            return Ok(false);
        }
        let erased = existing.is_some() && self.erase(account)?;
        let upper = (bucket >> 8) as u8;
        if let std::collections::btree_map::Entry::Vacant(slot) = self.upper.entry(upper) {
            slot.insert(Node::new()?);
            self.root.sealed = None;
        }
        if let std::collections::btree_map::Entry::Vacant(slot) = self.lower.entry(bucket) {
            slot.insert(Node::new()?);
            self.upper.get_mut(&upper).expect("inserted above").sealed = None;
        }
        self.lower.get_mut(&bucket).expect("inserted above").sealed = None;
        self.buckets.entry(bucket).or_default().insert(
            account.to_owned(),
            Leaf {
                registration,
                key: TreeKey::random()?,
            },
        );
        Ok(erased)
    }

    /// Deletes `account`'s leaf and replaces every key on the path to it. Returns
    /// whether it had one.
    pub(crate) fn erase(&mut self, account: &str) -> Result<bool, SealError> {
        let bucket = self.bucket(account);
        let removed = self
            .buckets
            .get_mut(&bucket)
            .and_then(|b| b.remove(account))
            .is_some();
        if !removed {
            return Ok(false);
        }
        let upper = (bucket >> 8) as u8;
        for node in [self.lower.get_mut(&bucket), self.upper.get_mut(&upper)]
            .into_iter()
            .flatten()
        {
            node.rekey()?;
        }
        self.root.rekey()?;
        self.id = random_array()?;
        Ok(true)
    }

    /// Brings the leaves in line with the records `(account, registration)` that exist:
    /// erases every leaf whose registration is gone, adds the missing ones. Returns how
    /// many were erased.
    pub(crate) fn reconcile<'a>(
        &mut self,
        records: impl Iterator<Item = (&'a str, Registration)> + Clone,
    ) -> Result<usize, SealError> {
        let live: HashMap<&str, Registration> = records.clone().collect();
        let gone: Vec<String> = self
            .buckets
            .values()
            .flat_map(|b| b.iter())
            .filter(|(account, leaf)| live.get(account.as_str()) != Some(&leaf.registration))
            .map(|(account, _)| account.clone())
            .collect();
        for account in &gone {
            self.erase(account)?;
        }
        for (account, registration) in records {
            self.put(account, registration)?;
        }
        Ok(gone.len())
    }

    fn leaf(&self, account: &str) -> Option<&Leaf> {
        self.buckets.get(&self.bucket(account))?.get(account)
    }

    /// Seals `account`'s secrets under its leaf key.
    pub(crate) fn seal_record(&self, account: &str, secrets: &[u8]) -> Result<Vec<u8>, TreeError> {
        let leaf = self.leaf(account).ok_or_else(|| {
            TreeError::Decode(format!("no leaf for a record of account {account:?}"))
        })?;
        leaf.key
            .seal(&record_context(account), secrets)
            .map_err(seal_error(format!("sealing a record of {account:?}")))
    }

    /// Opens `account`'s secrets with its leaf key.
    pub(crate) fn open_record(
        &self,
        account: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TreeError> {
        let leaf = self.leaf(account).ok_or_else(|| {
            TreeError::Decode(format!("no leaf for the record of account {account:?}"))
        })?;
        leaf.key
            .open(&record_context(account), sealed)
            .map_err(seal_error(format!("the record of {account:?}")))
    }

    /// The tree for the snapshot file. Only nodes whose key or children changed since
    /// the last call are sealed again.
    pub(crate) fn store(&mut self) -> Result<StoredTree, SealError> {
        for (&prefix, node) in &mut self.lower {
            if node.sealed.is_none() {
                let children: Vec<(&str, Registration, &[u8; KEY_LEN])> = self
                    .buckets
                    .get(&prefix)
                    .into_iter()
                    .flatten()
                    .map(|(account, leaf)| (account.as_str(), leaf.registration, leaf.key.bytes()))
                    .collect();
                let plain = Zeroizing::new(postcard::to_allocvec(&children).expect("encodes"));
                node.sealed = Some(node.key.seal(&node_context(2, prefix), &plain)?);
            }
        }
        for (&prefix, node) in &mut self.upper {
            if node.sealed.is_none() {
                let first = u16::from(prefix) << 8;
                let children: Vec<(u16, &[u8; KEY_LEN])> = self
                    .lower
                    .range(first..=first | 0xff)
                    .map(|(&id, child)| (id, child.key.bytes()))
                    .collect();
                let plain = Zeroizing::new(postcard::to_allocvec(&children).expect("encodes"));
                node.sealed = Some(node.key.seal(&node_context(1, prefix.into()), &plain)?);
            }
        }
        if self.root.sealed.is_none() {
            let children: Vec<(u8, &[u8; KEY_LEN])> = self
                .upper
                .iter()
                .map(|(&id, child)| (id, child.key.bytes()))
                .collect();
            let plain = Zeroizing::new(postcard::to_allocvec(&children).expect("encodes"));
            self.root.sealed = Some(self.root.key.seal(&node_context(0, 0), &plain)?);
        }
        let sealed = |node: &Node| node.sealed.clone().expect("sealed above");
        Ok(StoredTree {
            id: self.id,
            placement: self.placement,
            root: sealed(&self.root),
            upper: self.upper.iter().map(|(&p, n)| (p, sealed(n))).collect(),
            lower: self.lower.iter().map(|(&p, n)| (p, sealed(n))).collect(),
        })
    }

    /// Opens a stored tree with its root key.
    pub(crate) fn load(stored: StoredTree, root_key: TreeKey) -> Result<Self, TreeError> {
        let opened = root_key
            .open(&node_context(0, 0), &stored.root)
            .map_err(seal_error("its root"))?;
        // Decoded copies of keys are wiped once taken.
        let mut children: Vec<(u8, [u8; KEY_LEN])> = decode("its root", &opened)?;
        let mut upper_keys: BTreeMap<u8, TreeKey> = children
            .iter()
            .map(|(id, key)| (*id, TreeKey::from_bytes(key)))
            .collect();
        children.iter_mut().for_each(|(_, key)| key.zeroize());
        let mut tree = Self {
            id: stored.id,
            placement: stored.placement,
            root: Node {
                key: root_key,
                sealed: Some(stored.root),
            },
            upper: BTreeMap::new(),
            lower: BTreeMap::new(),
            buckets: HashMap::new(),
        };
        let mut lower_keys = BTreeMap::new();
        for (prefix, sealed) in stored.upper {
            let key = upper_keys.remove(&prefix).ok_or_else(|| {
                TreeError::Decode(format!("upper node {prefix} is not in the root"))
            })?;
            let what = format!("upper node {prefix}");
            let opened = key
                .open(&node_context(1, prefix.into()), &sealed)
                .map_err(seal_error(what.clone()))?;
            let mut children: Vec<(u16, [u8; KEY_LEN])> = decode(&what, &opened)?;
            for (id, child) in &mut children {
                lower_keys.insert(*id, TreeKey::from_bytes(child));
                child.zeroize();
            }
            tree.upper.insert(
                prefix,
                Node {
                    key,
                    sealed: Some(sealed),
                },
            );
        }
        for (prefix, sealed) in stored.lower {
            let key = lower_keys.remove(&prefix).ok_or_else(|| {
                TreeError::Decode(format!("lower node {prefix} is in no upper node"))
            })?;
            let what = format!("lower node {prefix}");
            let opened = key
                .open(&node_context(2, prefix), &sealed)
                .map_err(seal_error(what.clone()))?;
            let mut leaves: Vec<(String, Registration, [u8; KEY_LEN])> = decode(&what, &opened)?;
            let bucket = tree.buckets.entry(prefix).or_default();
            for (account, registration, key) in &mut leaves {
                bucket.insert(
                    std::mem::take(account),
                    Leaf {
                        registration: *registration,
                        key: TreeKey::from_bytes(key),
                    },
                );
                key.zeroize();
            }
            tree.lower.insert(
                prefix,
                Node {
                    key,
                    sealed: Some(sealed),
                },
            );
        }
        Ok(tree)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored_bytes(tree: &mut KeyTree) -> Vec<u8> {
        postcard::to_allocvec(&tree.store().unwrap()).unwrap()
    }

    fn reload(bytes: &[u8], root: &TreeKey) -> Result<KeyTree, TreeError> {
        KeyTree::load(postcard::from_bytes(bytes).unwrap(), root.clone())
    }

    #[test]
    fn records_open_after_a_reload_with_the_root_key() {
        let mut tree = KeyTree::new().unwrap();
        for n in 0..300u32 {
            tree.put(&format!("account-{n}"), ([n as u8; 16], 1))
                .unwrap();
        }
        let sealed = tree.seal_record("account-7", b"secrets of 7").unwrap();
        let bytes = stored_bytes(&mut tree);
        let back = reload(&bytes, tree.root_key()).unwrap();
        assert_eq!(back.leaves(), 300);
        assert_eq!(back.id(), tree.id());
        assert_eq!(
            back.open_record("account-7", &sealed).unwrap().as_slice(),
            b"secrets of 7"
        );
        // Bound to the account.
        assert!(back.open_record("account-8", &sealed).is_err());
        // Putting the same registration again changes nothing.
        let id = tree.id();
        assert!(!tree.put("account-7", ([7; 16], 1)).unwrap());
        assert_eq!(tree.id(), id);
    }

    #[test]
    fn an_erased_record_opens_neither_from_the_old_tree_nor_with_the_new_keys() {
        let mut tree = KeyTree::new().unwrap();
        tree.put("alice", ([1; 16], 1)).unwrap();
        tree.put("bob", ([2; 16], 1)).unwrap();
        let alice = tree.seal_record("alice", b"alice's secrets").unwrap();
        let old_bytes = stored_bytes(&mut tree);
        let old_root = tree.root_key().clone();
        let old_id = tree.id();

        assert!(tree.erase("alice").unwrap());
        assert!(!tree.erase("alice").unwrap());
        assert_ne!(tree.id(), old_id, "a new root key gets a new id");
        let new_bytes = stored_bytes(&mut tree);
        // The old tree with the old root key still opens it (the epoch key guards that).
        let old = reload(&old_bytes, &old_root).unwrap();
        assert_eq!(
            old.open_record("alice", &alice).unwrap().as_slice(),
            b"alice's secrets"
        );
        // The old tree does not open with the new root key: every key on the path is new.
        assert!(matches!(
            reload(&old_bytes, tree.root_key()),
            Err(TreeError::Seal { .. })
        ));
        // And the new tree has no leaf for alice.
        let new = reload(&new_bytes, tree.root_key()).unwrap();
        assert!(new.open_record("alice", &alice).is_err());
        assert_eq!(new.leaves(), 1);
        // Bob's leaf key survived: his record opens from the new tree.
        let bob = tree.seal_record("bob", b"bob's").unwrap();
        assert_eq!(new.open_record("bob", &bob).unwrap().as_slice(), b"bob's");
    }

    #[test]
    fn a_new_registration_erases_the_old_one_and_reconcile_follows_the_records() {
        let mut tree = KeyTree::new().unwrap();
        tree.put("carol", ([1; 16], 1)).unwrap();
        let first = tree.seal_record("carol", b"first").unwrap();
        assert!(
            tree.put("carol", ([2; 16], 1)).unwrap(),
            "the old registration is erased"
        );
        assert!(tree.open_record("carol", &first).is_err());

        // A replacement under the same record id is a new registration all the same.
        let second = tree.seal_record("carol", b"second").unwrap();
        assert!(tree.put("carol", ([2; 16], 2)).unwrap());
        assert!(tree.open_record("carol", &second).is_err());
        tree.put("carol", ([2; 16], 1)).unwrap();

        tree.put("dave", ([3; 16], 1)).unwrap();
        let records = [("carol", ([2u8; 16], 1)), ("erin", ([4u8; 16], 1))];
        assert_eq!(
            tree.reconcile(records.iter().copied()).unwrap(),
            1,
            "dave went"
        );
        assert_eq!(tree.leaves(), 2);
        assert!(tree.leaf("dave").is_none() && tree.leaf("erin").is_some());
    }

    #[test]
    fn only_changed_nodes_are_sealed_again() {
        let mut tree = KeyTree::new().unwrap();
        for n in 0..2000u32 {
            tree.put(&format!("a{n}"), ([1; 16], 1)).unwrap();
        }
        let before = tree.store().unwrap();
        tree.erase("a5").unwrap();
        let after = tree.store().unwrap();
        let changed = before
            .lower
            .iter()
            .zip(&after.lower)
            .filter(|(b, a)| b.1 != a.1)
            .count();
        assert_eq!(changed, 1, "one lower node sealed again");
        let changed = before
            .upper
            .iter()
            .zip(&after.upper)
            .filter(|(b, a)| b.1 != a.1)
            .count();
        assert_eq!(changed, 1, "one upper node sealed again");
        assert_ne!(before.root, after.root);
    }

    #[test]
    fn erasing_replaces_every_key_on_the_path_and_only_those() {
        let mut tree = KeyTree::new().unwrap();
        for n in 0..2000u32 {
            tree.put(&format!("a{n}"), ([1; 16], 1)).unwrap();
        }
        let bucket = tree.bucket("a5");
        let upper = (bucket >> 8) as u8;
        let old = tree.store().unwrap();
        let old_lower = old
            .lower
            .iter()
            .find(|(p, _)| *p == bucket)
            .unwrap()
            .1
            .clone();
        let old_upper = old
            .upper
            .iter()
            .find(|(p, _)| *p == upper)
            .unwrap()
            .1
            .clone();
        let keep = old
            .lower
            .iter()
            .find(|(p, _)| *p != bucket)
            .unwrap()
            .clone();
        tree.erase("a5").unwrap();
        // The old nodes on the path open with none of the new keys...
        assert!(tree.lower[&bucket]
            .key
            .open(&node_context(2, bucket), &old_lower)
            .is_err());
        assert!(tree.upper[&upper]
            .key
            .open(&node_context(1, upper.into()), &old_upper)
            .is_err());
        assert!(tree.root.key.open(&node_context(0, 0), &old.root).is_err());
        // ...while a node off the path keeps its key.
        assert!(tree.lower[&keep.0]
            .key
            .open(&node_context(2, keep.0), &keep.1)
            .is_ok());
    }

    #[test]
    fn debug_shows_no_key() {
        let tree = KeyTree::new().unwrap();
        let shown = format!("{tree:?} {:?}", tree.root_key());
        assert!(!shown.contains(&hex::encode(tree.root_key().bytes())));
        assert!(shown.contains("REDACTED"));
    }
}
