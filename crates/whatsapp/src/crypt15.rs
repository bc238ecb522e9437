//! Opening and sealing a crypt15 file: header, AES-256-GCM (128-bit nonce) of the
//! zlib-compressed database under the file key, the tag, then an MD5 of everything
//! before it.

use crate::{
    header::{self, Header, HeaderError, IV_LEN},
    key::WhatsAppKey,
};
use aes_gcm::{
    aead::{consts::U16, AeadInPlace, KeyInit},
    aes::Aes256,
    AesGcm, Nonce, Tag,
};
use md5::{Digest, Md5};
use rand::RngCore;
use std::io::Write;
use zeroize::Zeroizing;

/// AES-256-GCM with the 16-byte nonce crypt15 uses.
type Aes256Gcm16 = AesGcm<Aes256, U16>;

const TAG_LEN: usize = 16;
const MD5_LEN: usize = 16;

/// Why a backup file was not opened. Each says which check failed and what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Crypt15Error {
    /// Shorter than a header, a tag and a checksum.
    #[error("the file ends early ({len} bytes) for the header it starts with: it is truncated (copy it again from the phone), or not a WhatsApp backup")]
    Truncated {
        /// Its length.
        len: usize,
    },
    /// A crypt14 backup: encrypted under a key WhatsApp's server holds.
    #[error("this is a crypt14 backup, encrypted with a key WhatsApp's server holds: only end-to-end encrypted backups (crypt15, the 64-digit key) can be imported; turn on end-to-end encrypted backup in WhatsApp and import the .crypt15 file it makes")]
    Crypt14,
    /// A crypt12 (or older) backup.
    #[error("this is a crypt12 (or older) backup, encrypted with a key WhatsApp's server holds: only end-to-end encrypted backups (crypt15, the 64-digit key) can be imported; turn on end-to-end encrypted backup in WhatsApp and import the .crypt15 file it makes")]
    Crypt12,
    /// A multi-file backup (stickers, wallpapers): a ZIP, not a database.
    #[error("this is a multi-file crypt15 backup (a ZIP archive, such as stickers or wallpapers), not a database: only databases (msgstore, wa) can be imported")]
    MultiFile,
    /// The header does not parse.
    #[error("the header is damaged ({0}): this is not a readable crypt15 backup")]
    Header(String),
    /// The file is intact (its MD5 matches) but the key does not open it.
    #[error("this key does not open this WhatsApp backup (the file is intact: its MD5 checksum matches, the AES-GCM tag does not): use the 64-digit key of the account that made it")]
    WrongKey,
    /// The encrypted database authenticates but the MD5 does not match: the header
    /// (which only the MD5 covers) or the checksum itself was changed.
    #[error("the MD5 checksum does not match although the encrypted database authenticates: the header or the checksum at the end was changed; copy the file again from the phone")]
    Checksum,
    /// Neither the MD5 nor the tag matches.
    #[error("the file is damaged or truncated: neither its MD5 checksum nor its AES-GCM tag matches (a wrong key alone would leave the MD5 intact, unless this is a multi-file backup, which has none); copy it again from the phone")]
    Damaged,
    /// The decrypted data is not a zlib stream.
    #[error("the decrypted data is not a valid zlib stream ({0}): the backup was written damaged")]
    Zlib(String),
    /// The decompressed data is not a sound SQLite database.
    #[error("the decrypted file is not a sound SQLite database ({0})")]
    Sqlite(String),
    /// A header that cannot be written.
    #[error("cannot write the header: {0}")]
    Encode(String),
    /// Writing the decompressed database failed.
    #[error("cannot write the database: {0}")]
    Io(String),
}

/// A backup file opened: its header and the compressed database.
pub struct Opened {
    /// The header as stored.
    pub header: Header,
    /// The zlib stream (plaintext: the caller keeps it off disk until decompressed).
    pub compressed: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("header", &self.header)
            .field("compressed_len", &self.compressed.len())
            .finish()
    }
}

fn cipher(key: &WhatsAppKey) -> Aes256Gcm16 {
    Aes256Gcm16::new_from_slice(&*key.file_key()).expect("a 32-byte key")
}

/// The header at the start of `file` (257 bytes are enough), or why it is not a
/// crypt15 one: read before anything else, without the key.
pub fn read_header(file: &[u8]) -> Result<Header, Crypt15Error> {
    header::parse(file).map_err(|e| match e {
        HeaderError::Truncated => Crypt15Error::Truncated { len: file.len() },
        HeaderError::Crypt14 => Crypt15Error::Crypt14,
        HeaderError::Crypt12 => Crypt15Error::Crypt12,
        HeaderError::Damaged(why) => Crypt15Error::Header(why),
    })
}

/// Decrypts `file` with `key`, checking header, tag and MD5 (in that order of
/// blame: a file whose MD5 matches but whose tag does not was opened with the wrong
/// key).
pub fn open(key: &WhatsAppKey, file: &[u8]) -> Result<Opened, Crypt15Error> {
    let header = read_header(file)?;
    if file.len() < header.len + TAG_LEN + MD5_LEN {
        return Err(Crypt15Error::Truncated { len: file.len() });
    }
    let (checked, md5) = file.split_at(file.len() - MD5_LEN);
    let md5_ok = Md5::digest(checked).as_slice() == md5;
    let aes = cipher(key);
    let nonce = Nonce::<U16>::from_slice(&header.iv);
    let (ciphertext, tag) = checked[header.len..].split_at(checked.len() - header.len - TAG_LEN);
    let mut data = Zeroizing::new(ciphertext.to_vec());
    let tag_ok = aes
        .decrypt_in_place_detached(nonce, b"", &mut data, Tag::from_slice(tag))
        .is_ok();
    match (tag_ok, md5_ok) {
        (true, true) => Ok(Opened {
            header,
            compressed: data,
        }),
        (true, false) => Err(Crypt15Error::Checksum),
        (false, true) => Err(Crypt15Error::WrongKey),
        (false, false) => {
            // A multi-file backup has no MD5: its last 16 bytes are the tag.
            let (ciphertext, tag) = file[header.len..].split_at(file.len() - header.len - TAG_LEN);
            let mut data = Zeroizing::new(ciphertext.to_vec());
            match aes.decrypt_in_place_detached(nonce, b"", &mut data, Tag::from_slice(tag)) {
                Ok(()) => Err(Crypt15Error::MultiFile),
                Err(_) => Err(Crypt15Error::Damaged),
            }
        }
    }
}

/// Encrypts the zlib stream `compressed` into a crypt15 file under `key`, with a fresh
/// random IV and the header fields of `prefix` (all but its IV, which is replaced).
pub fn seal(
    key: &WhatsAppKey,
    features: bool,
    prefix: &[u8],
    compressed: &[u8],
) -> Result<Vec<u8>, Crypt15Error> {
    let mut iv = [0u8; IV_LEN];
    rand::rngs::OsRng.fill_bytes(&mut iv);
    seal_with_iv(key, features, prefix, &iv, compressed)
}

fn seal_with_iv(
    key: &WhatsAppKey,
    features: bool,
    prefix: &[u8],
    iv: &[u8; IV_LEN],
    compressed: &[u8],
) -> Result<Vec<u8>, Crypt15Error> {
    let mut out = header::encode(features, prefix, iv).map_err(Crypt15Error::Encode)?;
    let at = out.len();
    out.reserve(compressed.len() + TAG_LEN + MD5_LEN);
    out.extend_from_slice(compressed);
    let tag = cipher(key)
        .encrypt_in_place_detached(Nonce::<U16>::from_slice(iv), b"", &mut out[at..])
        .map_err(|_| {
            Crypt15Error::Encode("the database is too large for one GCM message".into())
        })?;
    out.extend_from_slice(&tag);
    let md5 = Md5::digest(&out);
    out.extend_from_slice(&md5);
    Ok(out)
}

/// Decompresses `compressed` into `out`; returns the bytes written. The stream must
/// end exactly where the data does.
pub fn inflate(compressed: &[u8], out: &mut dyn Write) -> Result<u64, Crypt15Error> {
    let mut z = flate2::read::ZlibDecoder::new(compressed);
    let written = std::io::copy(&mut z, out).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
            Crypt15Error::Zlib(e.to_string())
        }
        _ => Crypt15Error::Io(e.to_string()),
    })?;
    if z.total_in() != compressed.len() as u64 {
        return Err(Crypt15Error::Zlib(format!(
            "the stream ends after {} of {} bytes",
            z.total_in(),
            compressed.len()
        )));
    }
    Ok(written)
}

/// Compresses a database as the app does (zlib, level 1).
pub fn deflate(database: &mut dyn std::io::Read) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(1));
    std::io::copy(database, &mut z)?;
    z.finish().map(Zeroizing::new)
}

/// Checks that the file at `path` is a SQLite database that passes SQLite's own
/// `PRAGMA integrity_check`.
pub fn check_database(path: &std::path::Path) -> Result<(), Crypt15Error> {
    use rusqlite::{Connection, OpenFlags};
    let mut magic = [0u8; 16];
    let mut f = std::fs::File::open(path).map_err(|e| Crypt15Error::Io(e.to_string()))?;
    if std::io::Read::read_exact(&mut f, &mut magic).is_err() || &magic != b"SQLite format 3\0" {
        return Err(Crypt15Error::Sqlite(
            "it does not start with SQLite's header".into(),
        ));
    }
    let sqlite = |e: rusqlite::Error| Crypt15Error::Sqlite(e.to_string());
    let db = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite)?;
    let mut stmt = db.prepare("PRAGMA integrity_check").map_err(sqlite)?;
    let problems: Vec<String> = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .map_err(sqlite)?
        .collect::<Result<_, _>>()
        .map_err(sqlite)?;
    match problems.as_slice() {
        [ok] if ok == "ok" => Ok(()),
        _ => Err(Crypt15Error::Sqlite(format!(
            "PRAGMA integrity_check: {}",
            problems
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> WhatsAppKey {
        WhatsAppKey::from_bytes(core::array::from_fn(|i| i as u8))
    }

    fn sample() -> Vec<u8> {
        let compressed = deflate(&mut &b"SQLite format 3\0 and some pages"[..]).unwrap();
        seal_with_iv(
            &key(),
            true,
            &header::minimal_prefix(),
            &[7; IV_LEN],
            &compressed,
        )
        .unwrap()
    }

    /// A file sealed by this code with a fixed IV, byte for byte. The tag and MD5 were
    /// checked apart from this code: the file key by `hmac` (RFC 5869 by hand), the GCM
    /// by pycryptodomex's `AES.MODE_GCM` with a 16-byte nonce, the MD5 by `hashlib`.
    #[test]
    fn known_answer() {
        let file = seal_with_iv(
            &key(),
            true,
            &header::minimal_prefix(),
            &[7; IV_LEN],
            b"hello",
        )
        .unwrap();
        assert_eq!(
            hex::encode(&file),
            concat!(
                "160108011a120a10", // length 22, marker, key type 1, the IV's field
                "07070707070707070707070707070707",
                "cfff433997",                       // "hello"
                "a83fba610d264e23423b5df79e51f3cc", // tag
                "b88249b9086212612c8ebf9029b8a31b", // MD5
            )
        );
    }

    #[test]
    fn round_trip() {
        let file = sample();
        let opened = open(&key(), &file).unwrap();
        let mut db = Vec::new();
        inflate(&opened.compressed, &mut db).unwrap();
        assert_eq!(db, b"SQLite format 3\0 and some pages");
    }

    #[test]
    fn every_kind_of_damage_is_named() {
        let file = sample();
        let wrong = WhatsAppKey::from_bytes([1; 32]);
        assert_eq!(open(&wrong, &file).unwrap_err(), Crypt15Error::WrongKey);
        let h = header::parse(&file).unwrap();
        let flip = |at: usize| {
            let mut f = file.clone();
            f[at] ^= 0x01;
            open(&key(), &f).unwrap_err()
        };
        // The IV's last byte: header damage the tag notices too.
        assert_eq!(flip(h.len - 1), Crypt15Error::Damaged);
        // The key type: only the MD5 covers it.
        assert_eq!(flip(3), Crypt15Error::Checksum);
        assert_eq!(flip(h.len + 2), Crypt15Error::Damaged);
        assert_eq!(flip(file.len() - 20), Crypt15Error::Damaged);
        assert_eq!(flip(file.len() - 1), Crypt15Error::Checksum);
        assert_eq!(
            open(&key(), &file[..file.len() - 1]).unwrap_err(),
            Crypt15Error::Damaged
        );
        assert_eq!(
            open(&key(), &file[..h.len + 10]).unwrap_err(),
            Crypt15Error::Truncated { len: h.len + 10 }
        );
        // A multi-file backup: no MD5, its tag last.
        let mut multi = file[..file.len() - MD5_LEN].to_vec();
        let at = h.len;
        let tag = cipher(&key())
            .encrypt_in_place_detached(Nonce::<U16>::from_slice(&h.iv), b"", {
                let end = multi.len() - TAG_LEN;
                multi.truncate(end);
                &mut multi[at..]
            })
            .unwrap();
        multi.extend_from_slice(&tag);
        assert_eq!(open(&key(), &multi).unwrap_err(), Crypt15Error::MultiFile);
    }

    #[test]
    fn bad_zlib_and_trailing_bytes_are_refused() {
        assert!(matches!(
            inflate(b"not zlib", &mut Vec::new()),
            Err(Crypt15Error::Zlib(_))
        ));
        let mut z = deflate(&mut &b"abc"[..]).unwrap().to_vec();
        z.extend_from_slice(b"junk");
        assert!(matches!(
            inflate(&z, &mut Vec::new()),
            Err(Crypt15Error::Zlib(m)) if m.contains("ends after")
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Whatever the bytes, opening them returns, never panics.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = open(&key(), &bytes);
        }

        /// Nor do arbitrary headers in front of a sound body.
        #[test]
        fn arbitrary_headers_never_panic(n in any::<u8>(), marker in any::<bool>(),
                                         prefix in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = vec![n];
            if marker { bytes.push(1); }
            bytes.extend_from_slice(&prefix);
            bytes.extend_from_slice(&sample()[20..]);
            let _ = open(&key(), &bytes);
        }
    }
}
