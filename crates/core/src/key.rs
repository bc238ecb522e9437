//! The backup key K: 32 random bytes shown as 64 hex digits (docs/FORMAT.md §Keys).

use rand::RngCore;
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of the backup key in bytes.
pub const KEY_LEN: usize = 32;

/// The backup key. Zeroized on drop; `Debug` never prints it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct BackupKey([u8; KEY_LEN]);

impl fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BackupKey(REDACTED)")
    }
}

/// Why a typed key was rejected. Holds positions and counts only, never key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyParseError {
    /// A character that is neither a hex digit, a space nor a dash.
    #[error("the key has an invalid character at position {position}: only hex digits 0-9 and a-f, spaces and dashes are allowed")]
    InvalidCharacter {
        /// 1-based character position in the input as typed.
        position: usize,
    },
    /// Too few or too many hex digits.
    #[error("the key has {found} hex digits; a backup key has exactly 64")]
    WrongLength {
        /// Number of hex digits seen.
        found: usize,
    },
}

impl BackupKey {
    /// A fresh key from the operating system's RNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        BackupKey(bytes)
    }

    /// Wraps raw key bytes (tests, vectors, vault recovery).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        BackupKey(bytes)
    }

    /// The raw key bytes. Callers must not log or persist them unencrypted.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key as 16 groups of 4 lowercase hex digits separated by spaces.
    pub fn to_display(&self) -> Zeroizing<String> {
        let hex = Zeroizing::new(hex::encode(self.0));
        let mut out = Zeroizing::new(String::with_capacity(79));
        for (i, group) in hex.as_bytes().chunks(4).enumerate() {
            if i > 0 {
                out.push(' ');
            }
            // Hex digits are ASCII, so each group is valid UTF-8.
            out.push_str(std::str::from_utf8(group).unwrap_or_default());
        }
        out
    }

    /// Parses a key typed by a person: any case, spaces and dashes allowed anywhere.
    pub fn parse(input: &str) -> Result<Self, KeyParseError> {
        let mut digits = Zeroizing::new(Vec::with_capacity(64));
        for (i, c) in input.trim_end_matches(['\n', '\r']).chars().enumerate() {
            match c {
                ' ' | '-' => {}
                c if c.is_ascii_hexdigit() => digits.push(c.to_ascii_lowercase() as u8),
                _ => return Err(KeyParseError::InvalidCharacter { position: i + 1 }),
            }
        }
        if digits.len() != 2 * KEY_LEN {
            return Err(KeyParseError::WrongLength {
                found: digits.len(),
            });
        }
        let mut bytes = [0u8; KEY_LEN];
        hex::decode_to_slice(&*digits, &mut bytes).map_err(|_| KeyParseError::WrongLength {
            found: digits.len(),
        })?;
        Ok(BackupKey(bytes))
    }

    /// The last group of four digits, used to confirm the user saved the key.
    pub fn last_group(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(&self.0[KEY_LEN - 2..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_sixteen_groups_and_round_trips() {
        let key = BackupKey::from_bytes(core::array::from_fn(|i| i as u8 * 7));
        let shown = key.to_display();
        assert_eq!(shown.split(' ').count(), 16);
        assert!(shown.split(' ').all(|g| g.len() == 4));
        assert_eq!(
            BackupKey::parse(&shown).unwrap().expose_secret(),
            key.expose_secret()
        );
    }

    #[test]
    fn parse_accepts_case_spaces_and_dashes() {
        let key = BackupKey::from_bytes([0xab; 32]);
        let typed = "ABAB-abab ".repeat(8);
        assert_eq!(
            BackupKey::parse(&typed).unwrap().expose_secret(),
            key.expose_secret()
        );
    }

    #[test]
    fn parse_names_position_of_bad_character() {
        let mut typed = "0".repeat(64);
        typed.replace_range(9..10, "g");
        assert_eq!(
            BackupKey::parse(&typed).unwrap_err(),
            KeyParseError::InvalidCharacter { position: 10 }
        );
        assert_eq!(
            BackupKey::parse("abcd ef").unwrap_err(),
            KeyParseError::WrongLength { found: 6 }
        );
    }

    #[test]
    fn debug_never_prints_key() {
        let key = BackupKey::from_bytes([0x5a; 32]);
        let dbg = format!("{key:?}");
        assert!(!dbg.contains("5a5a") && dbg.contains("REDACTED"));
    }
}
