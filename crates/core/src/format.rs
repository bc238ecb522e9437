//! Plaintext encodings of config, index and snapshot objects (docs/FORMAT.md §Objects).
//!
//! Each is `codec byte || payload` like a blob, where the payload is the postcard
//! encoding of the struct below, zstd-compressed under codec 1. Field order is the
//! wire order: never reorder; add fields only with a format version bump.

use crate::{
    blob::{CODEC_RAW, CODEC_ZSTD, ZSTD_LEVEL},
    chunker::ChunkerParams,
    error::FormatError,
    ids::{ChunkId, ObjectName},
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

/// The config object's name.
pub const CONFIG_NAME: &str = "config";
/// Largest object payload (its postcard encoding, decompressed) a reader accepts
/// (a snapshot of ~10 million files), and so the largest a writer may write
/// (docs/FORMAT.md §Objects).
pub const MAX_OBJECT_PLAINTEXT: u64 = 2 << 30;

/// Refuses to write a `what` whose payload of `size` bytes a reader would refuse.
pub fn check_size(what: &'static str, size: u64, limit: u64) -> Result<(), FormatError> {
    match size <= limit {
        true => Ok(()),
        false => Err(FormatError::TooLarge { what, size, limit }),
    }
}

/// The postcard length of `value`.
fn payload_len<T: Serialize>(value: &T) -> u64 {
    postcard::experimental::serialized_size(value).expect("postcard sizes any value") as u64
}

/// The postcard length of a varint `n`.
fn varint_len(n: u64) -> u64 {
    (64 - n.max(1).leading_zeros() as u64).div_ceil(7)
}

/// Repository parameters, written by `init`; rewritten only to raise
/// `writer_level` (docs/FORMAT.md §Compatibility) or by a key rotation.
/// Version 1 when `writer_level` is 1, version 2 (which adds it) when the
/// compression is `auto`, else version 3 (which adds that).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Random repository identifier; the device keys its state by it.
    pub repo_id: ObjectName,
    /// Chunk size bounds for general files.
    pub chunker: ChunkerParams,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: i64,
    /// The lowest repository level a build must write to change this repository
    /// (back up, forget, prune, rotate); reading needs no level. 1 for a version-1
    /// config.
    pub writer_level: u32,
    /// How new chunks are compressed (`init --compression`); `auto` before version 3.
    pub compression: Compression,
}

/// How a repository compresses new chunks (docs/FORMAT.md §Objects, config field 8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    /// zstd at a fast level where a sample shows the chunk compresses; database pages
    /// as deltas of their previous version.
    #[default]
    Auto,
    /// Nothing compressed, no deltas: every chunk stored as it is.
    Off,
    /// As `auto`, at zstd's highest level: smaller, several times slower to write.
    Max,
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Compression::Auto),
            "off" => Ok(Compression::Off),
            "max" => Ok(Compression::Max),
            other => Err(format!(
                "{other:?} is not a compression: use auto, off or max"
            )),
        }
    }
}

/// The repository level this build writes: 2 = index objects are live only when an
/// index set names them (docs/FORMAT.md §Index sets).
pub const WRITER_LEVEL: u32 = 2;

impl Config {
    /// The format version this config is sealed as.
    pub fn version(&self) -> u8 {
        match (self.writer_level, self.compression) {
            (_, Compression::Off | Compression::Max) => crate::envelope::CONFIG_VERSION_COMPRESSION,
            (0 | 1, _) => crate::envelope::FORMAT_VERSION,
            _ => crate::envelope::CONFIG_VERSION_LEVEL,
        }
    }

    /// The postcard encoding (the codec-0 payload) and the version it belongs to.
    pub fn to_postcard(&self) -> (u8, Vec<u8>) {
        let v1 = wire::ConfigV1 {
            repo_id: self.repo_id,
            chunker: self.chunker,
            pack_size: self.pack_size,
            created_unix: self.created_unix,
        };
        let expect = "postcard encoding into a Vec cannot fail";
        let raw = match self.version() {
            crate::envelope::FORMAT_VERSION => postcard::to_allocvec(&v1).expect(expect),
            crate::envelope::CONFIG_VERSION_LEVEL => {
                postcard::to_allocvec(&(v1, self.writer_level)).expect(expect)
            }
            _ => postcard::to_allocvec(&(v1, self.writer_level, self.compression)).expect(expect),
        };
        (self.version(), raw)
    }

    /// The object plaintext ([`encode`]) and the version to seal it as.
    pub fn encode(&self) -> (u8, Vec<u8>) {
        let (version, raw) = self.to_postcard();
        (
            version,
            compress_if_shorter([&[CODEC_RAW][..], &raw].concat()),
        )
    }

    /// Decodes the plaintext of a config object of format `version`.
    pub fn decode(version: u8, plain: &[u8]) -> Result<Self, FormatError> {
        let (v1, writer_level, compression) = match version {
            crate::envelope::FORMAT_VERSION => (
                decode::<wire::ConfigV1>(plain, "config")?,
                1,
                Compression::Auto,
            ),
            crate::envelope::CONFIG_VERSION_LEVEL => {
                let (v1, level) = decode::<(wire::ConfigV1, u32)>(plain, "config")?;
                (v1, level, Compression::Auto)
            }
            _ => decode::<(wire::ConfigV1, u32, Compression)>(plain, "config")?,
        };
        Ok(Config {
            repo_id: v1.repo_id,
            chunker: v1.chunker,
            pack_size: v1.pack_size,
            created_unix: v1.created_unix,
            writer_level,
            compression,
        })
    }
}

/// The live index objects (kind 6, docs/FORMAT.md §Index sets): written by each
/// backup and prune, named like a snapshot by its sequence number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSet {
    /// 1 for the first set, else the newest listed set's + 1; equals the name's.
    pub seq: u64,
    /// Raised by each prune and key rotation; only sets of the highest epoch count.
    pub epoch: u64,
    /// Every index object live when it was written, sorted.
    pub indexes: Vec<ObjectName>,
}

/// One index object: which blobs each listed pack holds. Encoded with
/// [`IndexFile::encode`]: version 1 when no blob names a base, else version 2.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexFile {
    /// Packs described by this index object.
    pub packs: Vec<PackEntry>,
}

/// The blobs of one pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackEntry {
    /// The pack object's name.
    pub pack: ObjectName,
    /// Blobs in the pack (all of them, or the live ones after a prune).
    pub blobs: Vec<BlobEntry>,
}

/// Where one chunk is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobEntry {
    /// The chunk's ID.
    pub id: ChunkId,
    /// The blob's number in its pack (its nonce).
    pub seq: u32,
    /// Offset of the sealed blob in the pack object.
    pub offset: u64,
    /// Sealed length (codec byte, payload, tag).
    pub length: u32,
    /// Length of the chunk's plaintext.
    pub raw_length: u32,
    /// For a delta blob (codec 2), the chunk it was encoded against; that chunk's
    /// own blob is never a delta. Index version 2 only.
    pub base: Option<ChunkId>,
}

/// The wire forms of index objects: `B` is [`BlobV1`] in version 1 and
/// [`BlobEntry`]'s fields in order (with `base` last) in version 2.
mod wire {
    use super::*;

    /// The fields of a version-1 config, in wire order (version 2 appends
    /// `writer_level`).
    #[derive(Serialize, Deserialize)]
    pub struct ConfigV1 {
        pub repo_id: ObjectName,
        pub chunker: ChunkerParams,
        pub pack_size: u32,
        pub created_unix: i64,
    }

    #[derive(Serialize, Deserialize)]
    pub struct Index<B> {
        pub packs: Vec<Pack<B>>,
    }

    #[derive(Serialize, Deserialize)]
    pub struct Pack<B> {
        pub pack: ObjectName,
        pub blobs: Vec<B>,
    }

    #[derive(Serialize, Deserialize)]
    pub struct BlobV1 {
        pub id: ChunkId,
        pub seq: u32,
        pub offset: u64,
        pub length: u32,
        pub raw_length: u32,
    }

    /// Version 2: the version-1 fields, then `base` (postcard encodes a tuple as its
    /// fields in order, exactly like a struct).
    pub type BlobV2 = (BlobV1, Option<ChunkId>);

    impl From<&BlobEntry> for BlobV1 {
        fn from(b: &BlobEntry) -> Self {
            BlobV1 {
                id: b.id,
                seq: b.seq,
                offset: b.offset,
                length: b.length,
                raw_length: b.raw_length,
            }
        }
    }

    impl BlobV1 {
        pub fn with_base(self, base: Option<ChunkId>) -> BlobEntry {
            BlobEntry {
                id: self.id,
                seq: self.seq,
                offset: self.offset,
                length: self.length,
                raw_length: self.raw_length,
                base,
            }
        }
    }
}

impl IndexFile {
    /// The format version this index needs: 2 when a blob names a base, else 1.
    pub fn version(&self) -> u8 {
        let deltas = self
            .packs
            .iter()
            .any(|p| p.blobs.iter().any(|b| b.base.is_some()));
        if deltas {
            crate::envelope::INDEX_VERSION_DELTAS
        } else {
            crate::envelope::FORMAT_VERSION
        }
    }

    /// The object plaintext ([`encode`]) and the version to seal it as.
    pub fn encode(&self) -> (u8, Vec<u8>) {
        let (version, raw) = self.raw_plaintext();
        (version, compress_if_shorter(raw))
    }

    /// The postcard encoding (the codec-0 payload) and the version it belongs to.
    pub fn to_postcard(&self) -> (u8, Vec<u8>) {
        let (version, mut raw) = self.raw_plaintext();
        raw.remove(0);
        (version, raw)
    }

    /// `CODEC_RAW || postcard` and the version it belongs to.
    fn raw_plaintext(&self) -> (u8, Vec<u8>) {
        let version = self.version();
        let raw = if version == crate::envelope::FORMAT_VERSION {
            raw_plaintext(&self.to_wire(|b: &BlobEntry| wire::BlobV1::from(b)))
        } else {
            raw_plaintext(&self.to_wire(|b| (wire::BlobV1::from(b), b.base)))
        };
        (version, raw)
    }

    /// The postcard length of one pack's entry at `version`.
    fn pack_len(pack: &PackEntry, version: u8) -> u64 {
        let one = IndexFile {
            packs: vec![PackEntry {
                pack: pack.pack,
                blobs: Vec::new(),
            }],
        };
        let per_blob = |b: &BlobEntry| match version == crate::envelope::FORMAT_VERSION {
            true => payload_len(&wire::BlobV1::from(b)),
            false => payload_len(&(wire::BlobV1::from(b), b.base)),
        };
        // The empty pack's entry (its name and a zero count), then the blobs with
        // their count.
        payload_len(&one.to_wire(|b: &BlobEntry| wire::BlobV1::from(b))) - 1 - 1
            + varint_len(pack.blobs.len() as u64)
            + pack.blobs.iter().map(per_blob).sum::<u64>()
    }

    /// Splits into index objects whose payloads are at most `limit` bytes each, packs
    /// kept whole and in order.
    pub fn split_within(self, limit: u64) -> Result<Vec<IndexFile>, FormatError> {
        let version = self.version();
        let mut out = Vec::new();
        let mut current = IndexFile::default();
        // The payload: the count of packs (a varint), then each pack's entry.
        let mut entries = 0;
        let total = |count: usize, entries: u64| varint_len(count as u64) + entries;
        for pack in self.packs {
            let len = Self::pack_len(&pack, version);
            check_size("index entry of one pack", total(1, len), limit)?;
            if total(current.packs.len() + 1, entries + len) > limit {
                out.push(std::mem::take(&mut current));
                entries = 0;
            }
            entries += len;
            current.packs.push(pack);
        }
        if !current.packs.is_empty() || out.is_empty() {
            out.push(current);
        }
        Ok(out)
    }

    /// Decodes the plaintext of an index object of format `version`.
    pub fn decode(version: u8, plain: &[u8]) -> Result<Self, FormatError> {
        let index = if version == crate::envelope::FORMAT_VERSION {
            let w: wire::Index<wire::BlobV1> = decode(plain, "index")?;
            Self::from_wire(w, |b| b.with_base(None))
        } else {
            let w: wire::Index<wire::BlobV2> = decode(plain, "index")?;
            Self::from_wire(w, |(b, base)| b.with_base(base))
        };
        Ok(index)
    }

    fn to_wire<B>(&self, blob: impl Fn(&BlobEntry) -> B) -> wire::Index<B> {
        wire::Index {
            packs: self
                .packs
                .iter()
                .map(|p| wire::Pack {
                    pack: p.pack,
                    blobs: p.blobs.iter().map(&blob).collect(),
                })
                .collect(),
        }
    }

    fn from_wire<B>(w: wire::Index<B>, blob: impl Fn(B) -> BlobEntry) -> Self {
        IndexFile {
            packs: w
                .packs
                .into_iter()
                .map(|p| PackEntry {
                    pack: p.pack,
                    blobs: p.blobs.into_iter().map(&blob).collect(),
                })
                .collect(),
        }
    }
}

/// One backup. Encoded with [`Snapshot::encode`]: version 3 when it has a `root`
/// (every snapshot this build writes), else version 1 when `meta` is empty and
/// version 2 when not (docs/FORMAT.md §Objects, §Trees).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// 1 for the first snapshot, parent's + 1 after; a device refuses to go back.
    pub seq: u64,
    /// The newest snapshot when this one was made.
    pub parent: Option<ObjectName>,
    /// Creation time, nanoseconds since the Unix epoch.
    pub time_unix_ns: i64,
    /// The device's host name.
    pub hostname: String,
    /// The paths given to `backup`, as typed.
    pub paths: Vec<String>,
    /// Named fields added after version 1, each value in the encoding its key's
    /// section of docs/FORMAT.md gives (§Snapshot metadata). A reader skips keys it
    /// does not know, so later features add keys, not snapshot layouts.
    pub meta: BTreeMap<String, Vec<u8>>,
    /// Every directory, file and link, parents before children: what a version 1 or
    /// 2 snapshot holds, or what its trees hold once read. Not encoded in version 3.
    pub nodes: Vec<Node>,
    /// Version 3: the parts of the root tree, whose entries are the backed-up paths
    /// (§Trees). Empty in earlier versions.
    pub root: Vec<ChunkId>,
}

/// The metadata key of an incomplete snapshot: what the backup could not store.
pub const META_INCOMPLETE: &str = "incomplete";
/// The metadata key of a snapshot's totals (every version-3 snapshot has it), so
/// that listing snapshots needs none of their trees.
pub const META_SUMMARY: &str = "summary";

/// The metadata key of a snapshot's tags (`backup --tag`), for `snapshots --tag`
/// and `forget --keep-tag`.
pub const META_TAGS: &str = "tags";

/// The metadata key of a snapshot made by `copy`: which repository and snapshot it
/// is a copy of, so that a second copy skips it.
pub const META_ORIGINAL: &str = "original";

/// The metadata key of a snapshot `repair snapshots` rewrote: the name of the
/// snapshot it replaces (same sequence number), so a repair stopped before deleting
/// that one finishes instead of rewriting it again.
pub const META_REPLACES: &str = "replaces";

/// The metadata key of a snapshot `import-whatsapp` made from one of WhatsApp's
/// backup files: that file, and its header to write back on export.
pub const META_WHATSAPP: &str = "whatsapp";

/// The WhatsApp backup a snapshot was imported from (docs/FORMAT.md §Snapshot
/// metadata). Its header is not secret (the app stores it in the clear).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhatsAppSource {
    /// The backup file's name (`msgstore-2024-05-01.1.db.crypt15`).
    pub file: String,
    /// SHA-256 of the whole file, so that importing it again is skipped.
    pub sha256: [u8; 32],
    /// The header's feature-table marker byte was present.
    pub features: bool,
    /// The header's protobuf `BackupPrefix` exactly as stored (its IV included).
    pub prefix: Vec<u8>,
}

/// Where a copied snapshot came from (docs/FORMAT.md §Snapshot metadata).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Original {
    /// The source repository's `repo_id`.
    pub repo: ObjectName,
    /// The snapshot's name there.
    pub snapshot: ObjectName,
}

/// A snapshot's totals (docs/FORMAT.md §Snapshot metadata).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Regular and SQLite files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Bytes of all files.
    pub bytes: u64,
}

impl Summary {
    /// The totals of `nodes`.
    pub fn of(nodes: &[Node]) -> Self {
        let mut s = Summary::default();
        for n in nodes {
            s.add(n);
        }
        s
    }

    /// Counts `node` in.
    pub fn add(&mut self, node: &Node) {
        match node.kind {
            NodeKind::Dir => self.dirs += 1,
            NodeKind::File | NodeKind::SqliteFile => {
                self.files += 1;
                self.bytes += node.size;
            }
            _ => {}
        }
    }
}

/// One entry a backup could not store (docs/FORMAT.md §Snapshot metadata).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Its path, as a node's.
    pub path: Vec<u8>,
    /// Why (an OS error, "vanished during the backup").
    pub reason: String,
}

/// Snapshot layouts on the wire, by format version: the fields of [`Snapshot`] in
/// order, version 2 adding `meta` before `nodes` (§Objects), version 3 replacing
/// `nodes` by `root` (§Trees).
mod snapshot_wire {
    use super::*;

    /// A node as versions 1 and 2 encode it.
    #[derive(Serialize, Deserialize)]
    pub struct NodeV1 {
        pub path: Vec<u8>,
        pub kind: KindV1,
        pub mode: u32,
        pub mtime_ns: i64,
        pub size: u64,
        pub inode: u64,
        pub ctime_ns: i64,
        pub chunks: Vec<ChunkId>,
    }

    /// The node kinds versions 1 and 2 know.
    #[derive(Serialize, Deserialize)]
    pub enum KindV1 {
        Dir,
        File,
        SqliteFile,
        Symlink(Vec<u8>),
    }

    impl NodeV1 {
        /// `node` as versions 1 and 2 encode it, or `None` for a kind they lack.
        pub fn of(node: &Node) -> Option<Self> {
            let kind = match &node.kind {
                NodeKind::Dir => KindV1::Dir,
                NodeKind::File => KindV1::File,
                NodeKind::SqliteFile => KindV1::SqliteFile,
                NodeKind::Symlink(t) => KindV1::Symlink(t.clone()),
                NodeKind::Fifo | NodeKind::CharDevice | NodeKind::BlockDevice => return None,
            };
            Some(NodeV1 {
                path: node.path.clone(),
                kind,
                mode: node.mode,
                mtime_ns: node.mtime_ns,
                size: node.size,
                inode: node.inode,
                ctime_ns: node.ctime_ns,
                chunks: node.chunks.clone(),
            })
        }

        pub fn into_node(self) -> Node {
            Node {
                path: self.path,
                kind: match self.kind {
                    KindV1::Dir => NodeKind::Dir,
                    KindV1::File => NodeKind::File,
                    KindV1::SqliteFile => NodeKind::SqliteFile,
                    KindV1::Symlink(t) => NodeKind::Symlink(t),
                },
                mode: self.mode,
                mtime_ns: self.mtime_ns,
                size: self.size,
                inode: self.inode,
                ctime_ns: self.ctime_ns,
                chunks: self.chunks,
                more: NodeMeta::default(),
            }
        }
    }

    #[derive(Serialize)]
    pub struct V1Ref<'a> {
        pub seq: u64,
        pub parent: &'a Option<ObjectName>,
        pub time_unix_ns: i64,
        pub hostname: &'a str,
        pub paths: &'a [String],
        pub nodes: &'a [NodeV1],
    }

    #[derive(Serialize)]
    pub struct V2Ref<'a> {
        pub seq: u64,
        pub parent: &'a Option<ObjectName>,
        pub time_unix_ns: i64,
        pub hostname: &'a str,
        pub paths: &'a [String],
        pub meta: &'a BTreeMap<String, Vec<u8>>,
        pub nodes: &'a [NodeV1],
    }

    #[derive(Serialize)]
    pub struct V3Ref<'a> {
        pub seq: u64,
        pub parent: &'a Option<ObjectName>,
        pub time_unix_ns: i64,
        pub hostname: &'a str,
        pub paths: &'a [String],
        pub meta: &'a BTreeMap<String, Vec<u8>>,
        pub root: &'a [ChunkId],
    }

    #[derive(Deserialize)]
    pub struct V1 {
        pub seq: u64,
        pub parent: Option<ObjectName>,
        pub time_unix_ns: i64,
        pub hostname: String,
        pub paths: Vec<String>,
        pub nodes: Vec<NodeV1>,
    }

    #[derive(Deserialize)]
    pub struct V2 {
        pub seq: u64,
        pub parent: Option<ObjectName>,
        pub time_unix_ns: i64,
        pub hostname: String,
        pub paths: Vec<String>,
        pub meta: BTreeMap<String, Vec<u8>>,
        pub nodes: Vec<NodeV1>,
    }

    #[derive(Deserialize)]
    pub struct V3 {
        pub seq: u64,
        pub parent: Option<ObjectName>,
        pub time_unix_ns: i64,
        pub hostname: String,
        pub paths: Vec<String>,
        pub meta: BTreeMap<String, Vec<u8>>,
        pub root: Vec<ChunkId>,
    }
}

impl Snapshot {
    /// The format version this snapshot is encoded as: 3 with a root tree; else 2
    /// when it carries metadata, 1 when not.
    pub fn version(&self) -> u8 {
        match (self.root.is_empty(), self.meta.is_empty()) {
            (false, _) => crate::envelope::SNAPSHOT_VERSION_TREES,
            (true, true) => crate::envelope::FORMAT_VERSION,
            (true, false) => crate::envelope::SNAPSHOT_VERSION_META,
        }
    }

    /// The object plaintext ([`encode`]) and the version to seal it as.
    pub fn encode(&self) -> (u8, Vec<u8>) {
        let (version, raw) = self.raw_plaintext();
        (version, compress_if_shorter(raw))
    }

    /// The postcard encoding (the codec-0 payload) and the version it belongs to.
    pub fn to_postcard(&self) -> (u8, Vec<u8>) {
        let (version, mut raw) = self.raw_plaintext();
        raw.remove(0);
        (version, raw)
    }

    /// The nodes as versions 1 and 2 encode them. Panics on a kind they lack: only
    /// tests and vectors write those versions now.
    fn nodes_v1(&self) -> Vec<snapshot_wire::NodeV1> {
        self.nodes
            .iter()
            .map(|n| {
                snapshot_wire::NodeV1::of(n)
                    .expect("versions 1 and 2 hold only dirs, files and links")
            })
            .collect()
    }

    fn raw_plaintext(&self) -> (u8, Vec<u8>) {
        let version = self.version();
        let raw = match version {
            crate::envelope::SNAPSHOT_VERSION_TREES => raw_plaintext(&self.v3_ref()),
            crate::envelope::FORMAT_VERSION => raw_plaintext(&snapshot_wire::V1Ref {
                seq: self.seq,
                parent: &self.parent,
                time_unix_ns: self.time_unix_ns,
                hostname: &self.hostname,
                paths: &self.paths,
                nodes: &self.nodes_v1(),
            }),
            _ => raw_plaintext(&snapshot_wire::V2Ref {
                seq: self.seq,
                parent: &self.parent,
                time_unix_ns: self.time_unix_ns,
                hostname: &self.hostname,
                paths: &self.paths,
                meta: &self.meta,
                nodes: &self.nodes_v1(),
            }),
        };
        (version, raw)
    }

    fn v3_ref(&self) -> snapshot_wire::V3Ref<'_> {
        snapshot_wire::V3Ref {
            seq: self.seq,
            parent: &self.parent,
            time_unix_ns: self.time_unix_ns,
            hostname: &self.hostname,
            paths: &self.paths,
            meta: &self.meta,
            root: &self.root,
        }
    }

    /// Decodes the plaintext of a snapshot object of format `version`.
    pub fn decode(version: u8, plain: &[u8]) -> Result<Self, FormatError> {
        let nodes = |nodes: Vec<snapshot_wire::NodeV1>| {
            nodes
                .into_iter()
                .map(snapshot_wire::NodeV1::into_node)
                .collect()
        };
        Ok(match version {
            crate::envelope::FORMAT_VERSION => {
                let w: snapshot_wire::V1 = decode(plain, "snapshot")?;
                Snapshot {
                    seq: w.seq,
                    parent: w.parent,
                    time_unix_ns: w.time_unix_ns,
                    hostname: w.hostname,
                    paths: w.paths,
                    meta: BTreeMap::new(),
                    nodes: nodes(w.nodes),
                    root: Vec::new(),
                }
            }
            crate::envelope::SNAPSHOT_VERSION_META => {
                let w: snapshot_wire::V2 = decode(plain, "snapshot")?;
                Snapshot {
                    seq: w.seq,
                    parent: w.parent,
                    time_unix_ns: w.time_unix_ns,
                    hostname: w.hostname,
                    paths: w.paths,
                    meta: w.meta,
                    nodes: nodes(w.nodes),
                    root: Vec::new(),
                }
            }
            _ => {
                let w: snapshot_wire::V3 = decode(plain, "snapshot")?;
                if w.root.is_empty() {
                    return Err(FormatError::Malformed {
                        what: "snapshot",
                        detail: "a version-3 snapshot without a root tree".into(),
                    });
                }
                Snapshot {
                    seq: w.seq,
                    parent: w.parent,
                    time_unix_ns: w.time_unix_ns,
                    hostname: w.hostname,
                    paths: w.paths,
                    meta: w.meta,
                    nodes: Vec::new(),
                    root: w.root,
                }
            }
        })
    }

    /// The length of the snapshot's payload, what a reader's limit applies to.
    pub fn payload_len(&self) -> u64 {
        match self.version() {
            crate::envelope::SNAPSHOT_VERSION_TREES => payload_len(&self.v3_ref()),
            _ => self.to_postcard().1.len() as u64,
        }
    }

    /// What the backup could not store; empty for a complete snapshot.
    pub fn skipped(&self) -> Result<Vec<Skipped>, FormatError> {
        match self.meta.get(META_INCOMPLETE) {
            None => Ok(Vec::new()),
            Some(v) => postcard::from_bytes(v).map_err(|e| FormatError::Malformed {
                what: "snapshot metadata",
                detail: format!("{META_INCOMPLETE}: {e}"),
            }),
        }
    }

    /// The snapshot's totals: recorded in version 3, counted from the nodes before.
    pub fn summary(&self) -> Result<Summary, FormatError> {
        match self.meta.get(META_SUMMARY) {
            None => Ok(Summary::of(&self.nodes)),
            Some(v) => postcard::from_bytes(v).map_err(|e| FormatError::Malformed {
                what: "snapshot metadata",
                detail: format!("{META_SUMMARY}: {e}"),
            }),
        }
    }

    /// Records the snapshot's totals.
    pub fn set_summary(&mut self, summary: &Summary) {
        self.meta.insert(
            META_SUMMARY.to_owned(),
            postcard::to_allocvec(summary).expect("postcard into a Vec cannot fail"),
        );
    }

    /// The snapshot's tags, ascending and each once; none before they existed.
    pub fn tags(&self) -> Result<Vec<String>, FormatError> {
        match self.meta.get(META_TAGS) {
            None => Ok(Vec::new()),
            Some(v) => postcard::from_bytes(v).map_err(|e| FormatError::Malformed {
                what: "snapshot metadata",
                detail: format!("{META_TAGS}: {e}"),
            }),
        }
    }

    /// Records `tags` (sorted and made unique here); none removes the key.
    pub fn set_tags(&mut self, tags: &[String]) {
        let mut tags = tags.to_vec();
        tags.sort();
        tags.dedup();
        match tags.is_empty() {
            true => self.meta.remove(META_TAGS),
            false => self.meta.insert(
                META_TAGS.to_owned(),
                postcard::to_allocvec(&tags).expect("postcard into a Vec cannot fail"),
            ),
        };
    }

    /// The snapshot it is a copy of, if `copy` made it.
    pub fn original(&self) -> Result<Option<Original>, FormatError> {
        self.meta
            .get(META_ORIGINAL)
            .map(|v| {
                postcard::from_bytes(v).map_err(|e| FormatError::Malformed {
                    what: "snapshot metadata",
                    detail: format!("{META_ORIGINAL}: {e}"),
                })
            })
            .transpose()
    }

    /// The snapshot this one replaces, if `repair snapshots` wrote it.
    pub fn replaces(&self) -> Option<ObjectName> {
        self.meta
            .get(META_REPLACES)
            .and_then(|v| postcard::from_bytes(v).ok())
    }

    /// Records the snapshot this one replaces.
    pub fn set_replaces(&mut self, name: &ObjectName) {
        self.meta.insert(
            META_REPLACES.to_owned(),
            postcard::to_allocvec(name).expect("postcard into a Vec cannot fail"),
        );
    }

    /// Records the snapshot it is a copy of.
    pub fn set_original(&mut self, original: &Original) {
        self.meta.insert(
            META_ORIGINAL.to_owned(),
            postcard::to_allocvec(original).expect("postcard into a Vec cannot fail"),
        );
    }

    /// The WhatsApp backup this snapshot was imported from, if any.
    pub fn whatsapp(&self) -> Result<Option<WhatsAppSource>, FormatError> {
        self.meta
            .get(META_WHATSAPP)
            .map(|v| {
                postcard::from_bytes(v).map_err(|e| FormatError::Malformed {
                    what: "snapshot metadata",
                    detail: format!("{META_WHATSAPP}: {e}"),
                })
            })
            .transpose()
    }

    /// Records the WhatsApp backup this snapshot was imported from.
    pub fn set_whatsapp(&mut self, source: &WhatsAppSource) {
        self.meta.insert(
            META_WHATSAPP.to_owned(),
            postcard::to_allocvec(source).expect("postcard into a Vec cannot fail"),
        );
    }

    /// Marks the snapshot incomplete, listing what was not stored.
    pub fn set_skipped(&mut self, skipped: &[Skipped]) {
        match skipped.is_empty() {
            true => self.meta.remove(META_INCOMPLETE),
            false => self.meta.insert(
                META_INCOMPLETE.to_owned(),
                postcard::to_allocvec(skipped).expect("postcard into a Vec cannot fail"),
            ),
        };
    }
}

/// A file system entry in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Path relative to the snapshot root, `/`-separated raw bytes.
    pub path: Vec<u8>,
    /// What it is.
    pub kind: NodeKind,
    /// Unix permission bits.
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Size in bytes (files).
    pub size: u64,
    /// Change-detection fields: inode and ctime. A file whose size, mtime, inode and
    /// ctime match the parent snapshot is not read again.
    pub inode: u64,
    /// ctime, nanoseconds.
    pub ctime_ns: i64,
    /// The file's chunks in order (files only).
    pub chunks: Vec<ChunkId>,
    /// What snapshots record since version 3 (owner, links, extended attributes);
    /// the default in nodes of earlier snapshots, which did not.
    pub more: NodeMeta,
}

/// The metadata a node carries since snapshot version 3 (docs/FORMAT.md §Trees).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// Owner's user ID.
    pub uid: u32,
    /// Group ID.
    pub gid: u32,
    /// The owner's user name where the backing-up system knew it, else empty. Shared
    /// (encoded as a string): a million files of one owner hold one copy.
    pub user: Arc<str>,
    /// The group's name where known, else empty.
    pub group: Arc<str>,
    /// The file system's device number, for files with more than one hard link
    /// (with `inode`, it tells which are links of one file); else 0.
    pub device: u64,
    /// Hard links to the file (`st_nlink`) when more than one, else 0.
    pub links: u64,
    /// The device a character or block device node stands for (`st_rdev`); else 0.
    pub rdev: u64,
    /// Extended attributes (POSIX ACLs among them), by name in ascending order.
    pub xattrs: Vec<Xattr>,
    /// The file had holes: its all-zero chunks are restored as holes.
    pub sparse: bool,
}

/// One extended attribute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Its name, namespace included (`user.x`, `system.posix_acl_access`).
    pub name: Vec<u8>,
    /// Its value.
    pub value: Vec<u8>,
}

/// Entry kinds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A live SQLite database, read through SQLite under one read transaction and
    /// chunked by page.
    SqliteFile,
    /// A symbolic link and its target.
    Symlink(Vec<u8>),
    /// A named pipe (version 3).
    Fifo,
    /// A character device node (version 3); `more.rdev` names the device.
    CharDevice,
    /// A block device node (version 3); `more.rdev` names the device.
    BlockDevice,
}

impl Node {
    /// True for regular and SQLite files.
    pub fn is_file(&self) -> bool {
        matches!(self.kind, NodeKind::File | NodeKind::SqliteFile)
    }
}

/// A lock object's content (docs/FORMAT.md §Locks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// Exclusive (prune) or shared (backup, check).
    pub exclusive: bool,
    /// Host that holds it.
    pub hostname: String,
    /// Process that holds it.
    pub pid: u32,
    /// When it was taken or last refreshed, seconds since the Unix epoch.
    pub time_unix: i64,
}

/// Prefix of a rotation marker's name; the key ID it is sealed under follows in hex
/// (docs/FORMAT.md §Key rotation).
pub const ROTATION_PREFIX: &str = "rotation-";

/// The objects of one key generation (docs/FORMAT.md §Key rotation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSet {
    /// Pack objects.
    pub packs: Vec<ObjectName>,
    /// Index objects.
    pub indexes: Vec<ObjectName>,
    /// Snapshot objects.
    pub snapshots: Vec<ObjectName>,
}

/// A key rotation in progress: a config-kind object named
/// `rotation-<key_id hex>`, one sealed under each of the two keys
/// (docs/FORMAT.md §Key rotation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// The key ID being replaced.
    pub old_key_id: [u8; 16],
    /// The key ID replacing it.
    pub new_key_id: [u8; 16],
    /// The objects written under the old key (hidden from the new key's readers).
    pub old: ObjectSet,
    /// The objects written under the new key (hidden from the old key's readers).
    pub new: ObjectSet,
}

/// Encodes an object's plaintext: `codec byte || zstd(postcard(value))`.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    compress_if_shorter(raw_plaintext(value))
}

/// `CODEC_RAW || postcard(value)`, in one allocation of the exact size: a snapshot
/// of a large database is megabytes of chunk IDs, and every spare copy of it is
/// peak memory.
fn raw_plaintext<T: Serialize>(value: &T) -> Vec<u8> {
    let expect = "postcard encoding into a Vec cannot fail";
    let size = postcard::experimental::serialized_size(value).expect(expect);
    let mut out = Vec::with_capacity(1 + size);
    out.push(CODEC_RAW);
    postcard::to_extend(value, out).expect(expect)
}

/// The object plaintext `raw` (`CODEC_RAW || payload`), compressed when that is
/// shorter. The frame is the one `zstd::bulk::compress` makes at [`ZSTD_LEVEL`].
fn compress_if_shorter(raw: Vec<u8>) -> Vec<u8> {
    let payload = &raw[1..];
    let mut z = vec![0u8; 1 + zstd::zstd_safe::compress_bound(payload.len())];
    z[0] = CODEC_ZSTD;
    match zstd::bulk::compress_to_buffer(payload, &mut z[1..], ZSTD_LEVEL) {
        Ok(n) if n < payload.len() => {
            z.truncate(1 + n);
            z
        }
        _ => raw,
    }
}

/// Decodes an object's plaintext as `what`; never panics on arbitrary bytes.
pub fn decode<T: DeserializeOwned>(plain: &[u8], what: &'static str) -> Result<T, FormatError> {
    let malformed = |detail: String| FormatError::Malformed { what, detail };
    let too_large = |size: u64| FormatError::TooLarge {
        what,
        size,
        limit: MAX_OBJECT_PLAINTEXT,
    };
    let raw = match plain.split_first() {
        Some((&CODEC_RAW, rest)) if rest.len() as u64 > MAX_OBJECT_PLAINTEXT => {
            return Err(too_large(rest.len() as u64))
        }
        Some((&CODEC_RAW, rest)) => rest.to_vec(),
        Some((&CODEC_ZSTD, rest)) => {
            let mut out = Vec::new();
            zstd::stream::read::Decoder::new(rest)
                .map_err(|e| malformed(e.to_string()))?
                .take(MAX_OBJECT_PLAINTEXT + 1)
                .read_to_end(&mut out)
                .map_err(|e| malformed(e.to_string()))?;
            if out.len() as u64 > MAX_OBJECT_PLAINTEXT {
                return Err(too_large(out.len() as u64));
            }
            out
        }
        Some((&c, _)) => return Err(malformed(format!("unknown codec {c}"))),
        None => return Err(malformed("empty".into())),
    };
    let (value, rest) = postcard::take_from_bytes(&raw).map_err(|e| malformed(e.to_string()))?;
    // Canonical encodings only: trailing bytes mean a writer we do not understand.
    if !rest.is_empty() {
        return Err(malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

/// Decoders on arbitrary bytes, for the fuzz targets.
#[doc(hidden)]
pub mod fuzz {
    use super::*;
    /// Runs every decoder of repository objects on `data`; must never panic.
    pub fn decode_all(data: &[u8]) {
        let _ = Config::decode(1, data);
        let _ = Config::decode(2, data);
        let _ = decode::<IndexSet>(data, "index set");
        let _ = IndexFile::decode(1, data);
        let _ = IndexFile::decode(2, data);
        let _ = Snapshot::decode(1, data);
        let _ = Snapshot::decode(2, data).map(|s| s.skipped());
        let _ = Snapshot::decode(3, data).map(|s| s.summary());
        let _ = crate::tree::Tree::decode(data);
        let _ = decode::<Lock>(data, "lock");
        let _ = crate::blob::decode(data, 1 << 20, None);
        let (base, blob) = data.split_at(data.len() / 2);
        let _ = crate::blob::decode(blob, 1 << 20, Some(base));
        let _ = crate::chunker::sqlite_page_size(data);
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    fn index_of(packs: u8, blobs: u8) -> IndexFile {
        IndexFile {
            packs: (0..packs)
                .map(|p| PackEntry {
                    pack: ObjectName([p; 16]),
                    blobs: (0..blobs)
                        .map(|b| BlobEntry {
                            id: ChunkId([b; 32]),
                            seq: b as u32,
                            offset: 34 + 1000 * b as u64,
                            length: 1000,
                            raw_length: 4000,
                            base: (b % 3 == 0).then_some(ChunkId([p; 32])),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn an_index_split_within_a_limit_keeps_every_pack_in_order_and_each_part_fits() {
        let whole = index_of(40, 9);
        let whole_len = whole.to_postcard().1.len() as u64;
        for limit in [whole_len, whole_len - 1, 2000, 700] {
            let parts = whole.clone().split_within(limit).unwrap();
            for part in &parts {
                assert!(part.to_postcard().1.len() as u64 <= limit, "limit {limit}");
            }
            let rejoined: Vec<PackEntry> = parts.into_iter().flat_map(|p| p.packs).collect();
            assert_eq!(rejoined, whole.packs, "limit {limit}");
        }
        assert_eq!(whole.clone().split_within(whole_len).unwrap().len(), 1);
        assert!(whole.clone().split_within(whole_len - 1).unwrap().len() > 1);
        // One pack's entry alone over the limit cannot be split: refused.
        assert!(matches!(
            whole.split_within(100),
            Err(FormatError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_snapshots_payload_length_is_its_encodings() {
        let mut snap = Snapshot {
            seq: 7,
            hostname: "phone".into(),
            paths: vec!["/data".into()],
            ..Snapshot::default()
        };
        assert_eq!(snap.payload_len(), snap.to_postcard().1.len() as u64);
        snap.set_skipped(&[Skipped {
            path: b"a".to_vec(),
            reason: "gone".into(),
        }]);
        assert_eq!(snap.payload_len(), snap.to_postcard().1.len() as u64);
    }

    #[test]
    fn readers_refuse_a_payload_over_the_limit_with_its_size() {
        assert!(check_size("x", MAX_OBJECT_PLAINTEXT, MAX_OBJECT_PLAINTEXT).is_ok());
        assert_eq!(
            check_size("x", MAX_OBJECT_PLAINTEXT + 1, MAX_OBJECT_PLAINTEXT),
            Err(FormatError::TooLarge {
                what: "x",
                size: MAX_OBJECT_PLAINTEXT + 1,
                limit: MAX_OBJECT_PLAINTEXT
            })
        );
    }

    /// docs/FORMAT.md §Snapshot metadata, `tags`: byte for byte.
    #[test]
    fn the_whatsapp_source_is_stored_as_documented() {
        let mut snap = Snapshot::default();
        let source = WhatsAppSource {
            file: "m.crypt15".into(),
            sha256: [0xAB; 32],
            features: true,
            prefix: vec![8, 1],
        };
        snap.set_whatsapp(&source);
        let mut expected = b"\x09m.crypt15".to_vec();
        expected.extend_from_slice(&[0xAB; 32]);
        expected.extend_from_slice(b"\x01\x02\x08\x01");
        assert_eq!(snap.meta[META_WHATSAPP], expected);
        assert_eq!(snap.whatsapp().unwrap(), Some(source));
    }

    #[test]
    fn tags_are_stored_sorted_once_each_as_documented() {
        let mut snap = Snapshot::default();
        snap.set_tags(&["wifi".into(), "daily".into(), "wifi".into()]);
        assert_eq!(snap.meta[META_TAGS], b"\x02\x05daily\x04wifi");
        assert_eq!(snap.tags().unwrap(), ["daily", "wifi"]);
        snap.set_tags(&[]);
        assert!(!snap.meta.contains_key(META_TAGS));
        assert!(snap.tags().unwrap().is_empty());
    }

    /// docs/FORMAT.md §Snapshot metadata, `original`: byte for byte.
    #[test]
    fn an_original_is_stored_as_documented() {
        let mut snap = Snapshot::default();
        let original = Original {
            repo: ObjectName([0xaa; 16]),
            snapshot: ObjectName([0xbb; 16]),
        };
        snap.set_original(&original);
        assert_eq!(snap.meta[META_ORIGINAL], [[0xaa; 16], [0xbb; 16]].concat());
        assert_eq!(snap.original().unwrap(), Some(original));
        assert_eq!(Snapshot::default().original().unwrap(), None);
    }
}
