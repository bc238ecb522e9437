//! WhatsApp's 64-digit key: the root key of its end-to-end encrypted backups, as the
//! app stores it (`encrypted_backup.key`) or as the user wrote it down (64 hex digits).

use backlock_core::key::BackupKey;
use hkdf::Hkdf;
use sha2::Sha256;
use std::fmt;
use zeroize::Zeroizing;

/// The root key's length, the same as backlock's own key.
pub const KEY_LEN: usize = 32;

/// The app's key file: Java's serialization of a `byte[]` of 32 bytes. Stream magic and
/// version, TC_ARRAY, the class descriptor of `[B` (name, serialVersionUID, flags
/// SC_SERIALIZABLE, no fields, end of block data, no superclass), then the length.
const KEY_FILE_PREFIX: [u8; 27] = [
    0xAC, 0xED, 0x00, 0x05, // STREAM_MAGIC, STREAM_VERSION
    0x75, // TC_ARRAY
    0x72, 0x00, 0x02, b'[', b'B', // TC_CLASSDESC, name "[B"
    0xAC, 0xF3, 0x17, 0xF8, 0x06, 0x08, 0x54, 0xE0, // serialVersionUID
    0x02, 0x00, 0x00, 0x78, 0x70, // flags, 0 fields, TC_ENDBLOCKDATA, TC_NULL
    0x00, 0x00, 0x00, 0x20, // array length 32
];

/// The key file's length.
pub const KEY_FILE_LEN: usize = KEY_FILE_PREFIX.len() + KEY_LEN;

/// HKDF-SHA256 `info` of the key that encrypts backup files.
const FILE_KEY_INFO: &[u8] = b"backup encryption";

/// WhatsApp's root key. Zeroized on drop; `Debug` never prints it.
pub struct WhatsAppKey(Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for WhatsAppKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WhatsAppKey(REDACTED)")
    }
}

/// Why a key could not be read. Says which bytes were wrong, never the key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The 158-byte key file of crypt12 and crypt14 backups (a key the server holds).
    #[error("this is the key file of crypt12/crypt14 backups ({len} bytes), not the 64-digit key of end-to-end encrypted (crypt15) backups")]
    OlderKeyFile {
        /// Its length.
        len: usize,
    },
    /// Not the serialized 32-byte array.
    #[error("this is not WhatsApp's encrypted_backup.key: {why}")]
    NotAKeyFile {
        /// What did not match.
        why: String,
    },
    /// The typed key is malformed.
    #[error(transparent)]
    Typed(#[from] backlock_core::key::KeyParseError),
}

impl WhatsAppKey {
    /// Wraps raw key bytes (tests, vectors).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        WhatsAppKey(Zeroizing::new(bytes))
    }

    /// Reads the app's `encrypted_backup.key`.
    pub fn from_key_file(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() == 158 && bytes.starts_with(&KEY_FILE_PREFIX[..4]) {
            return Err(KeyError::OlderKeyFile { len: bytes.len() });
        }
        if bytes.len() != KEY_FILE_LEN {
            return Err(KeyError::NotAKeyFile {
                why: format!(
                    "it is {} bytes, the key file is {KEY_FILE_LEN}",
                    bytes.len()
                ),
            });
        }
        if let Some(at) = (0..KEY_FILE_PREFIX.len()).find(|&i| bytes[i] != KEY_FILE_PREFIX[i]) {
            return Err(KeyError::NotAKeyFile {
                why: format!(
                    "byte {at} is {:#04x}, a serialized 32-byte array has {:#04x} there",
                    bytes[at], KEY_FILE_PREFIX[at]
                ),
            });
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&bytes[KEY_FILE_PREFIX.len()..]);
        Ok(WhatsAppKey(key))
    }

    /// Parses the 64 hex digits as typed, with the rules of backlock's own key (any
    /// case, spaces and dashes anywhere).
    pub fn from_typed(text: &str) -> Result<Self, KeyError> {
        let key = BackupKey::parse(text.trim())?;
        Ok(WhatsAppKey::from_bytes(*key.expose_secret()))
    }

    /// The key as the app's key file (what `from_key_file` reads).
    pub fn to_key_file(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(KEY_FILE_LEN));
        out.extend_from_slice(&KEY_FILE_PREFIX);
        out.extend_from_slice(&*self.0);
        out
    }

    /// The key that encrypts backup files: HKDF-SHA256 of the root key, no salt.
    pub(crate) fn file_key(&self) -> Zeroizing<[u8; KEY_LEN]> {
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        Hkdf::<Sha256>::new(None, &*self.0)
            .expand(FILE_KEY_INFO, &mut *out)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key file and file key of the root key 00 01 .. 1f. The file key was computed
    /// apart from this code (Python's `hmac`, RFC 5869 by hand):
    /// `prk = hmac(b"\0"*32, root, sha256); okm = hmac(prk, b"backup encryption\x01", sha256)`.
    #[test]
    fn known_answers() {
        let key = WhatsAppKey::from_bytes(core::array::from_fn(|i| i as u8));
        assert_eq!(
            hex::encode(*key.file_key()),
            "4e54c0777a7214dfdf0af5b6e153acfa2fbdac603fea6fd1630b824e5c29eef5"
        );
        let file = key.to_key_file();
        assert_eq!(
            hex::encode(&file[..KEY_FILE_PREFIX.len()]),
            "aced0005757200025b42acf317f8060854e0020000787000000020"
        );
        let back = WhatsAppKey::from_key_file(&file).unwrap();
        assert_eq!(*back.0, *key.0);
    }

    #[test]
    fn typed_keys_follow_backlocks_rules() {
        let key = WhatsAppKey::from_typed(
            "0001 0203 0405 0607 0809 0A0B 0C0D 0E0F-1011 1213 1415 1617 1819 1a1b 1c1d 1e1f\n",
        )
        .unwrap();
        assert_eq!(*key.0, core::array::from_fn::<u8, 32, _>(|i| i as u8));
        assert!(matches!(
            WhatsAppKey::from_typed("00"),
            Err(KeyError::Typed(_))
        ));
    }

    #[test]
    fn other_files_are_named_for_what_they_are() {
        let key = WhatsAppKey::from_bytes([7; 32]);
        let mut file = key.to_key_file().to_vec();
        file[10] ^= 1;
        let e = WhatsAppKey::from_key_file(&file).unwrap_err();
        assert!(e.to_string().contains("byte 10"), "{e}");
        let mut older = vec![0u8; 158];
        older[..4].copy_from_slice(&KEY_FILE_PREFIX[..4]);
        assert!(matches!(
            WhatsAppKey::from_key_file(&older),
            Err(KeyError::OlderKeyFile { len: 158 })
        ));
        assert!(WhatsAppKey::from_key_file(b"short")
            .unwrap_err()
            .to_string()
            .contains("5 bytes"));
    }

    #[test]
    fn debug_shows_no_key() {
        let key = WhatsAppKey::from_bytes([0xAB; 32]);
        assert_eq!(format!("{key:?}"), "WhatsAppKey(REDACTED)");
    }
}
