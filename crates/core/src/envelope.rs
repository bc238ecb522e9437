//! The object envelope (docs/FORMAT.md §Envelope).
//!
//! ```text
//! header  = version (1 byte, = 1) || kind (1 byte) || salt (32 random bytes)
//! config  = header || key_id (16 bytes) || AES-256-GCM(k, nonce 0, aad, plaintext)
//! index, snapshot = header || AES-256-GCM(k, nonce 0, aad, plaintext)
//! pack    = header || blob_0 || blob_1 || ...,  blob_i = AES-256-GCM(k, nonce i, aad_i, p_i)
//! k       = HKDF-SHA256(salt, object master key, "backlock/v1/object-key")
//! aad     = header [|| key_id] || name;  aad_i = header || name || u32be(i) || chunk_id
//! ```
//! Binding kind and name into the AAD means the store cannot swap two objects, and a
//! fresh salt per object gives every object its own key, so nonces never repeat.

use crate::{error::FormatError, ids::ChunkId, kdf::RepoKeys};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use rand::RngCore;
use subtle::ConstantTimeEq;

/// Format version, the first byte of every object (§Envelope).
pub const FORMAT_VERSION: u8 = 1;
/// The version of index objects that name the bases of delta blobs
/// (docs/FORMAT.md §Compatibility); every other object stays version 1.
pub const INDEX_VERSION_DELTAS: u8 = 2;
/// The version of snapshot objects that carry metadata (docs/FORMAT.md §Snapshot
/// metadata); a snapshot without any stays version 1.
pub const SNAPSHOT_VERSION_META: u8 = 2;
/// The version of snapshot objects whose entries are trees (docs/FORMAT.md §Trees).
pub const SNAPSHOT_VERSION_TREES: u8 = 3;
/// The version of config objects that record a writer level (docs/FORMAT.md
/// §Compatibility); a config of level 1 stays version 1.
pub const CONFIG_VERSION_LEVEL: u8 = 2;
/// The version of config objects that record a compression other than `auto`
/// (docs/FORMAT.md §Objects); an `auto` config stays version 2.
pub const CONFIG_VERSION_COMPRESSION: u8 = 3;

/// The newest version this build reads for objects of `kind`.
pub fn newest_version(kind: ObjectKind) -> u8 {
    match kind {
        ObjectKind::Index => INDEX_VERSION_DELTAS,
        ObjectKind::Snapshot => SNAPSHOT_VERSION_TREES,
        ObjectKind::Config => CONFIG_VERSION_COMPRESSION,
        _ => FORMAT_VERSION,
    }
}
/// Length of the random per-object salt.
pub const SALT_LEN: usize = 32;
/// Length of the common header: version, kind, salt.
pub const HEADER_LEN: usize = 2 + SALT_LEN;
/// Length of the AES-GCM tag appended to every sealed message.
pub const TAG_LEN: usize = 16;

/// What an object is. The discriminant is the kind byte (§Envelope).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// Repository parameters; one per repository, named `config`.
    Config = 1,
    /// A list of packs and the blobs in them.
    Index = 2,
    /// One backup: its sequence number, parent and file tree.
    Snapshot = 3,
    /// Encrypted chunk blobs.
    Pack = 4,
    /// A lock held by a running backup, check or prune (docs/FORMAT.md §Locks).
    Lock = 5,
    /// Which index objects are live (docs/FORMAT.md §Index sets).
    IndexSet = 6,
}

impl ObjectKind {
    /// Every kind, in commit order.
    pub const ALL: [ObjectKind; 6] = [
        ObjectKind::Config,
        ObjectKind::Pack,
        ObjectKind::Index,
        ObjectKind::IndexSet,
        ObjectKind::Snapshot,
        ObjectKind::Lock,
    ];

    /// Lowercase name, as errors name the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Config => "config",
            ObjectKind::Index => "index",
            ObjectKind::Snapshot => "snapshot",
            ObjectKind::Pack => "pack",
            ObjectKind::Lock => "lock",
            ObjectKind::IndexSet => "index set",
        }
    }
}

fn aead_key(keys: &RepoKeys, salt: &[u8]) -> LessSafeKey {
    let raw = keys.object_key(salt);
    // A 32-byte key is always valid for AES-256-GCM.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &*raw).expect("32-byte AES-256 key"))
}

fn nonce(counter: u32) -> Nonce {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn header(version: u8, kind: ObjectKind, salt: &[u8; SALT_LEN]) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN + 64);
    h.push(version);
    h.push(kind as u8);
    h.extend_from_slice(salt);
    h
}

fn random_salt() -> [u8; SALT_LEN] {
    let mut salt = [0u8; SALT_LEN];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    salt
}

/// Checks version and kind, returning the version and the salt. Rejects before any
/// decryption.
fn parse_header(expected: ObjectKind, data: &[u8]) -> Result<(u8, &[u8]), FormatError> {
    let min = HEADER_LEN
        + if expected == ObjectKind::Pack {
            0
        } else {
            TAG_LEN
        };
    let newest = newest_version(expected);
    let version = data.first().copied().unwrap_or(FORMAT_VERSION);
    // Version first, so a newer object says "upgrade" even if it is short.
    if version == 0 || version > newest {
        return Err(FormatError::UnsupportedVersion {
            found: version,
            newest,
        });
    }
    if data.len() < min {
        return Err(FormatError::Truncated {
            len: data.len(),
            min,
        });
    }
    if data[1] != expected as u8 {
        return Err(FormatError::KindMismatch {
            expected: expected.as_str(),
            found: data[1],
        });
    }
    Ok((version, &data[2..HEADER_LEN]))
}

/// Seals a single-message object (config, index, snapshot) under a fresh salt.
pub fn seal(keys: &RepoKeys, kind: ObjectKind, name: &str, plaintext: &[u8]) -> Vec<u8> {
    seal_with_salt(keys, kind, name, plaintext, &random_salt())
}

/// [`seal`] as format `version` (≤ [`newest_version`] of `kind`).
pub fn seal_as(
    keys: &RepoKeys,
    (kind, version): (ObjectKind, u8),
    name: &str,
    plaintext: &[u8],
) -> Vec<u8> {
    seal_with_salt_as(keys, (kind, version), name, plaintext, &random_salt())
}

/// [`seal`] with a caller-chosen salt: for known-answer vectors only. Reusing a salt
/// for two different plaintexts under one name breaks confidentiality.
pub fn seal_with_salt(
    keys: &RepoKeys,
    kind: ObjectKind,
    name: &str,
    plaintext: &[u8],
    salt: &[u8; SALT_LEN],
) -> Vec<u8> {
    seal_with_salt_as(keys, (kind, FORMAT_VERSION), name, plaintext, salt)
}

/// [`seal_with_salt`] as format `version`.
pub fn seal_with_salt_as(
    keys: &RepoKeys,
    (kind, version): (ObjectKind, u8),
    name: &str,
    plaintext: &[u8],
    salt: &[u8; SALT_LEN],
) -> Vec<u8> {
    assert!(
        (1..=newest_version(kind)).contains(&version),
        "no format version {version} for {} objects",
        kind.as_str()
    );
    seal_any_version(keys, (kind, version), name, plaintext, salt)
}

/// [`seal_with_salt_as`] for any version byte, newer than this build's included: for
/// tests of the compatibility rule (a newer writer's object still authenticates under
/// the version-1 envelope) only.
#[doc(hidden)]
pub fn seal_any_version(
    keys: &RepoKeys,
    (kind, version): (ObjectKind, u8),
    name: &str,
    plaintext: &[u8],
    salt: &[u8; SALT_LEN],
) -> Vec<u8> {
    assert!(kind != ObjectKind::Pack, "packs are sealed with PackSealer");
    let mut head = header(version, kind, salt);
    if kind == ObjectKind::Config {
        head.extend_from_slice(keys.key_id());
    }
    // One allocation of the final size: a snapshot can be megabytes.
    let mut out = Vec::with_capacity(head.len() + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&head);
    out.extend_from_slice(plaintext);
    let body_start = head.len();
    let mut aad = head;
    aad.extend_from_slice(name.as_bytes());
    let tag = aead_key(keys, salt)
        .seal_in_place_separate_tag(nonce(0), Aad::from(&aad), &mut out[body_start..])
        .expect("AES-GCM sealing of an in-memory buffer cannot fail");
    out.extend_from_slice(tag.as_ref());
    out
}

/// Opens a single-message object stored as `name`, authenticating kind and name.
pub fn open(
    keys: &RepoKeys,
    kind: ObjectKind,
    name: &str,
    data: &[u8],
) -> Result<Vec<u8>, FormatError> {
    open_versioned(keys, kind, name, data).map(|(_, plain)| plain)
}

/// [`open`], also returning the object's format version (authenticated: it is part
/// of the header, which is associated data).
pub fn open_versioned(
    keys: &RepoKeys,
    kind: ObjectKind,
    name: &str,
    data: &[u8],
) -> Result<(u8, Vec<u8>), FormatError> {
    let (version, salt) = parse_header(kind, data)?;
    open_body(keys, kind, name, data, salt).map(|body| (version, body))
}

/// Whether `data`, whose version is newer than this build reads, authenticates under
/// the version-1 envelope, which every later version keeps for single-message objects
/// (docs/FORMAT.md §Compatibility): `true` means a newer backlock wrote it, `false`
/// that nobody holding the key did (made up, or damaged).
pub fn is_authentic_newer(keys: &RepoKeys, kind: ObjectKind, name: &str, data: &[u8]) -> bool {
    let newer = data.first().is_some_and(|&v| v > newest_version(kind));
    newer
        && kind != ObjectKind::Pack
        && data.len() >= HEADER_LEN + TAG_LEN
        && data[1] == kind as u8
        && open_body(keys, kind, name, data, &data[2..HEADER_LEN]).is_ok()
}

/// Authenticates and decrypts a single-message object whose header was checked.
fn open_body(
    keys: &RepoKeys,
    kind: ObjectKind,
    name: &str,
    data: &[u8],
    salt: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let mut aad_len = HEADER_LEN;
    if kind == ObjectKind::Config {
        let id_end = HEADER_LEN + crate::kdf::KEY_ID_LEN;
        if data.len() < id_end + TAG_LEN {
            return Err(FormatError::Truncated {
                len: data.len(),
                min: id_end + TAG_LEN,
            });
        }
        if !bool::from(data[HEADER_LEN..id_end].ct_eq(keys.key_id())) {
            return Err(FormatError::WrongKey);
        }
        aad_len = id_end;
    }
    let mut aad = data[..aad_len].to_vec();
    aad.extend_from_slice(name.as_bytes());
    let mut body = data[aad_len..].to_vec();
    let plain_len = aead_key(keys, salt)
        .open_in_place(nonce(0), Aad::from(&aad), &mut body)
        .map_err(|_| FormatError::Tampered)?
        .len();
    body.truncate(plain_len);
    Ok(body)
}

/// Where a sealed blob sits in its pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobPlace {
    /// The blob's number in its pack (its nonce).
    pub seq: u32,
    /// Byte offset of the sealed blob from the start of the pack object.
    pub offset: u64,
    /// Length of the sealed blob, tag included.
    pub length: u32,
}

/// Builds one pack object, blob by blob.
pub struct PackSealer {
    key: LessSafeKey,
    aad_prefix: Vec<u8>,
    buf: Vec<u8>,
    next_seq: u32,
}

impl PackSealer {
    /// Starts a pack that will be stored as `name`.
    pub fn new(keys: &RepoKeys, name: &str, capacity: usize) -> Self {
        Self::with_salt(keys, name, capacity, &random_salt())
    }

    /// [`PackSealer::new`] with a chosen salt: for known-answer vectors only.
    pub fn with_salt(keys: &RepoKeys, name: &str, capacity: usize, salt: &[u8; SALT_LEN]) -> Self {
        Self::start(keys, name, Vec::with_capacity(capacity), salt)
    }

    /// [`PackSealer::new`] writing into `buf` (cleared first): a finished pack's
    /// buffer handed back for reuse, so packs do not cost a fresh allocation each.
    pub fn with_buffer(keys: &RepoKeys, name: &str, buf: Vec<u8>) -> Self {
        Self::start(keys, name, buf, &random_salt())
    }

    fn start(keys: &RepoKeys, name: &str, mut buf: Vec<u8>, salt: &[u8; SALT_LEN]) -> Self {
        buf.clear();
        buf.extend_from_slice(&header(FORMAT_VERSION, ObjectKind::Pack, salt));
        let mut aad_prefix = buf.clone();
        aad_prefix.extend_from_slice(name.as_bytes());
        PackSealer {
            key: aead_key(keys, salt),
            aad_prefix,
            buf,
            next_seq: 0,
        }
    }

    /// Seals `plaintext` (an encoded blob, see [`crate::blob`]) as the next blob.
    pub fn push(&mut self, id: &ChunkId, plaintext: &[u8]) -> BlobPlace {
        self.push_parts(id, &[plaintext])
    }

    /// [`PackSealer::push`] of the concatenation of `parts`, copied once, straight
    /// into the pack.
    pub fn push_parts(&mut self, id: &ChunkId, parts: &[&[u8]]) -> BlobPlace {
        let seq = self.next_seq;
        self.next_seq += 1;
        let offset = self.buf.len();
        for part in parts {
            self.buf.extend_from_slice(part);
        }
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(seq),
                Aad::from(blob_aad(&self.aad_prefix, seq, id)),
                &mut self.buf[offset..],
            )
            .expect("AES-GCM sealing of an in-memory buffer cannot fail");
        self.buf.extend_from_slice(tag.as_ref());
        BlobPlace {
            seq,
            offset: offset as u64,
            length: (self.buf.len() - offset) as u32,
        }
    }

    /// Bytes in the pack so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when no blob was pushed.
    pub fn is_empty(&self) -> bool {
        self.next_seq == 0
    }

    /// The finished pack object.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

fn blob_aad(prefix: &[u8], seq: u32, id: &ChunkId) -> Vec<u8> {
    let mut aad = Vec::with_capacity(prefix.len() + 36);
    aad.extend_from_slice(prefix);
    aad.extend_from_slice(&seq.to_be_bytes());
    aad.extend_from_slice(&id.0);
    aad
}

/// Opens blobs of one pack, given the pack's header bytes.
pub struct PackOpener {
    key: LessSafeKey,
    aad_prefix: Vec<u8>,
}

impl PackOpener {
    /// Reads the header (the first [`HEADER_LEN`] bytes or more) of pack `name`.
    pub fn new(keys: &RepoKeys, name: &str, header_bytes: &[u8]) -> Result<Self, FormatError> {
        let (_, salt) = parse_header(ObjectKind::Pack, header_bytes)?;
        let mut aad_prefix = header_bytes[..HEADER_LEN].to_vec();
        aad_prefix.extend_from_slice(name.as_bytes());
        Ok(PackOpener {
            key: aead_key(keys, salt),
            aad_prefix,
        })
    }

    /// Authenticates and decrypts one sealed blob; returns its encoded plaintext.
    pub fn open_blob(&self, seq: u32, id: &ChunkId, sealed: &[u8]) -> Result<Vec<u8>, FormatError> {
        let mut buf = sealed.to_vec();
        let len = self.open_blob_in_place(seq, id, &mut buf)?.len();
        buf.truncate(len);
        Ok(buf)
    }

    /// [`open_blob`](Self::open_blob) decrypting in `sealed` itself: returns the
    /// encoded blob, a prefix of `sealed`. Saves a copy of every restored byte.
    pub fn open_blob_in_place<'a>(
        &self,
        seq: u32,
        id: &ChunkId,
        sealed: &'a mut [u8],
    ) -> Result<&'a [u8], FormatError> {
        if sealed.len() < TAG_LEN {
            return Err(FormatError::Truncated {
                len: sealed.len(),
                min: TAG_LEN,
            });
        }
        let plain = self
            .key
            .open_in_place(
                nonce(seq),
                Aad::from(blob_aad(&self.aad_prefix, seq, id)),
                sealed,
            )
            .map_err(|_| FormatError::Tampered)?;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::BackupKey;

    fn keys() -> RepoKeys {
        RepoKeys::derive(&BackupKey::from_bytes([7; 32]))
    }

    #[test]
    fn every_byte_flip_is_detected() {
        let k = keys();
        let sealed = seal(&k, ObjectKind::Index, "n", b"some index bytes");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                open(&k, ObjectKind::Index, "n", &bad).is_err(),
                "flip at {i}"
            );
        }
        for len in 0..sealed.len() {
            assert!(open(&k, ObjectKind::Index, "n", &sealed[..len]).is_err());
        }
    }

    #[test]
    fn name_and_kind_are_bound() {
        let k = keys();
        let sealed = seal(&k, ObjectKind::Snapshot, "a", b"x");
        assert_eq!(
            open(&k, ObjectKind::Snapshot, "b", &sealed),
            Err(FormatError::Tampered)
        );
        assert!(matches!(
            open(&k, ObjectKind::Index, "a", &sealed),
            Err(FormatError::KindMismatch { .. })
        ));
    }

    #[test]
    fn config_tells_wrong_key_from_damage() {
        let k = keys();
        let other = RepoKeys::derive(&BackupKey::from_bytes([8; 32]));
        let sealed = seal(&k, ObjectKind::Config, "config", b"cfg");
        assert_eq!(
            open(&other, ObjectKind::Config, "config", &sealed),
            Err(FormatError::WrongKey)
        );
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            open(&k, ObjectKind::Config, "config", &bad),
            Err(FormatError::Tampered)
        );
    }

    #[test]
    fn newer_version_asks_for_upgrade() {
        let k = keys();
        let mut sealed = seal(&k, ObjectKind::Snapshot, "n", b"x");
        sealed[0] = 4;
        assert_eq!(
            open(&k, ObjectKind::Snapshot, "n", &sealed),
            Err(FormatError::UnsupportedVersion {
                found: 4,
                newest: 3
            })
        );
        let mut lock = seal(&k, ObjectKind::Lock, "n", b"x");
        lock[0] = 2;
        assert_eq!(
            open(&k, ObjectKind::Lock, "n", &lock),
            Err(FormatError::UnsupportedVersion {
                found: 2,
                newest: 1
            })
        );
        // Index objects have a version 2; it is authenticated like the rest.
        let v2 = seal_as(&k, (ObjectKind::Index, 2), "n", b"x");
        assert_eq!(
            open_versioned(&k, ObjectKind::Index, "n", &v2),
            Ok((2, b"x".to_vec()))
        );
        let mut downgraded = v2.clone();
        downgraded[0] = 1;
        assert_eq!(
            open(&k, ObjectKind::Index, "n", &downgraded),
            Err(FormatError::Tampered)
        );
        let mut newer = v2;
        newer[0] = 3;
        assert_eq!(
            open(&k, ObjectKind::Index, "n", &newer),
            Err(FormatError::UnsupportedVersion {
                found: 3,
                newest: 2
            })
        );
    }

    #[test]
    fn pack_blobs_cannot_be_moved() {
        let k = keys();
        let (a, b) = (ChunkId([1; 32]), ChunkId([2; 32]));
        let mut p = PackSealer::new(&k, "p", 0);
        let pa = p.push(&a, b"alpha");
        let pb = p.push(&b, b"beta");
        let pack = p.finish();
        let o = PackOpener::new(&k, "p", &pack).unwrap();
        let slice =
            |pl: BlobPlace| &pack[pl.offset as usize..pl.offset as usize + pl.length as usize];
        assert_eq!(o.open_blob(pa.seq, &a, slice(pa)).unwrap(), b"alpha");
        assert_eq!(o.open_blob(pb.seq, &b, slice(pb)).unwrap(), b"beta");
        assert!(o.open_blob(pa.seq, &a, slice(pb)).is_err());
        assert!(o.open_blob(pb.seq, &a, slice(pb)).is_err());
        assert!(PackOpener::new(&k, "q", &pack)
            .unwrap()
            .open_blob(pa.seq, &a, slice(pa))
            .is_err());
    }
}
